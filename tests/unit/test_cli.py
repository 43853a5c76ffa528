"""The `fedkd` command without Flower: presets, profiles, errors a newcomer meets, sweep resumption.

Nothing here starts a SuperLink: every error is raised before one would start.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedkd import cli
from fedkd.config import RunConfig, pyproject_defaults
from fedkd.experiments import presets, runner
from fedkd.runtime.launch import offline_env

APP_DIR = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (APP_DIR / "simulations" / "configs").glob("*.toml"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----- presets and profiles -------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_and_validates(name: str) -> None:
    preset = presets.load_preset(name)
    # Every key is a run-config key of pyproject.toml, with a value of the right type.
    assert set(preset.values) <= set(pyproject_defaults(APP_DIR / "pyproject.toml"))
    cfg, run_config = runner.resolve_config(preset)  # compose.build_config: every check
    # the runner adds only where a simulation on one machine keeps its clients' state, unless
    # the preset chose (synthetic-1m: "disk", one flat file per sampled client)
    assert run_config == {"federation.client-state": "run", **preset.values}
    assert runner.resolve_config(preset, one_machine=False)[1] == preset.values
    assert cfg.to_flat()["algorithm"] == preset.values["algorithm"]
    assert preset.description  # `fedkd presets` shows it
    # The same file works with `flwr run . <connection> --run-config <file>`.
    from flwr.common.config import parse_config_args

    assert parse_config_args([str(preset.path)]) == preset.values
    if name.endswith("-dp"):
        assert cfg.privacy.dp_sgd and cfg.privacy.target_epsilon > 0
    else:
        assert not cfg.privacy.enabled


def test_presets_cover_the_experiment_grid() -> None:
    for algorithm in ("fedavg", "fedgen", "fedgen-logits", "fd", "fedmd"):
        for alpha in (0.1, 1.0):
            for dp in (False, True):
                name = f"{algorithm}-fmnist-dir{alpha}" + ("-dp" if dp else "")
                cfg, _ = runner.resolve_config(presets.load_preset(name))
                assert (cfg.algorithm, cfg.data.dataset, cfg.data.partitioner, cfg.data.alpha,
                        cfg.privacy.dp_sgd) == (algorithm, "fashion-mnist", "dirichlet", alpha, dp)
    for algorithm in ("dsfl", "selective-fd"):  # the unlabeled-proxy presets
        for alpha in (0.1, 1.0):
            for dp in (False, True) if algorithm == "dsfl" else (False,):
                name = f"{algorithm}-fmnist-dir{alpha}" + ("-dp" if dp else "")
                cfg, _ = runner.resolve_config(presets.load_preset(name))
                assert (cfg.algorithm, cfg.data.alpha, cfg.privacy.dp_sgd,
                        cfg.data.public_labels) == (algorithm, alpha, dp, False)
    for dp in (False, True):  # data-free: the proxy set is synthesised by the clients
        name = "synthetic-proxy-fmnist-dir0.1" + ("-dp" if dp else "")
        cfg, _ = runner.resolve_config(presets.load_preset(name))
        assert (cfg.algorithm, cfg.privacy.dp_sgd, cfg.section("synthesis").method) == (
            "synthetic-proxy", dp, "inversion" if dp else "matching")
    # FD and FedGen release counts or per-class sums: under DP-SGD they need output noise.
    for name in ("fd-fmnist-dir0.1-dp", "fedgen-fmnist-dir1.0-dp"):
        assert runner.resolve_config(presets.load_preset(name))[0].privacy.output_noise > 0
    # Runs differ only in algorithm, partition and privacy (and the algorithm's own keys).
    shared = {"num-server-rounds", "train.model", "train.local-steps", "data.num-partitions",
              "federation.min-nodes", "federation.min-replies"}
    values = {n: runner.resolve_config(presets.load_preset(n))[0].to_flat() for n in PRESETS
              if n not in ("tiny", "main", "synthetic-1m")}  # the smoke test, make run's job
    # and the million-client scale preset have their own
    for key in shared:
        assert len({v[key] for v in values.values()}) == 1, key


def test_the_main_job_is_logit_only() -> None:
    # make run's preset: a global model from logits alone, on an unlabeled proxy set.
    from fedkd.algorithms import ALGORITHMS

    cfg, _ = runner.resolve_config(presets.load_preset("main"))
    assert not ALGORITHMS.get(cfg.algorithm).shares_weights
    assert cfg.data.dataset == "fashion-mnist" and cfg.data.public_labels is False


def test_tiny_preset_is_small() -> None:
    cfg, _ = runner.resolve_config(presets.load_preset("tiny"))
    assert cfg.data.dataset == "digits" and cfg.num_server_rounds <= 3
    assert cfg.data.num_partitions <= 3


def test_preset_by_path_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('algorithm = "fd"\n[data]\ndataset = "digits"\nnum-partitions = 4\n')
    preset = presets.load_preset(str(path))
    assert preset.name == "mine" and preset.values["data.num-partitions"] == 4
    cfg, run_config = runner.resolve_config(
        preset, presets.parse_sets(['train.model="mlp"', "data.alpha=0.3"]), seed=5, rounds=7,
        output_dir=tmp_path / "out", run_name="x")
    assert (cfg.seed, cfg.num_server_rounds, cfg.train.model, cfg.data.alpha) == (5, 7, "mlp", 0.3)
    assert run_config["output.dir"] == str((tmp_path / "out").resolve())
    assert run_config["output.run-name"] == "x"


def test_profiles() -> None:
    assert set(presets.profile_names()) >= {"cpu", "gpu"}
    cfg = RunConfig.from_flat({"data.num-partitions": 7})
    cpu = runner.federation_config(presets.load_profile("cpu"), cfg)
    assert cpu["num-supernodes"] == 7
    assert cpu["client-resources-num-cpus"] == 1 and cpu["client-resources-num-gpus"] == 0.0
    gpu = presets.load_profile("gpu")
    assert 0 < gpu.federation["client-resources-num-gpus"] < 1  # clients share one GPU
    for name in presets.profile_names():  # a profile's run-config keys are valid ones
        profile = presets.load_profile(name)
        runner.resolve_config(presets.load_preset("tiny"), profile.run_config)


def test_profile_run_config_comes_before_set(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("client-resources-num-cpus = 2\n[run-config]\ntrain.num-threads = 2\n"
                    "train.local-steps = 3\n")
    profile = presets.load_profile(str(path))
    assert profile.federation == {"client-resources-num-cpus": 2}
    assert profile.run_config == {"train.num-threads": 2, "train.local-steps": 3}
    overrides = {**profile.run_config, **presets.parse_sets(["train.local-steps=9"])}
    cfg, _ = runner.resolve_config(presets.load_preset("tiny"), overrides)
    assert (cfg.train.num_threads, cfg.train.local_steps) == (2, 9)
    path.write_text("[other]\nx = 1\n")
    with pytest.raises(presets.CliError, match="the only table is"):
        presets.load_profile(str(path))


def test_gpu_profile_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(presets.CliError, match=r"torch sees no CUDA GPU.*--profile cpu"):
        runner.federation_config(presets.load_profile("gpu"), RunConfig())


def test_on_a_ray_cluster_the_resources_ray_refuses_are_left_out() -> None:
    cfg = RunConfig.from_flat({"data.num-partitions": 7})
    assert "init-args-num-cpus" in runner.federation_config(presets.load_profile("cpu"), cfg)
    for name in ("cpu", "cluster"):
        fed = runner.federation_config(presets.load_profile(name), cfg, "127.0.0.1:6379")
        assert fed["num-supernodes"] == 7 and fed["client-resources-num-cpus"] == 1
        assert not set(runner.CLUSTER_REFUSED_KEYS) & set(fed)
    # a profile that sets them is refused, naming the key and the way out (no GPU check: the
    # cluster's nodes may have GPUs the head lacks)
    with pytest.raises(presets.CliError, match=r"gpu sets init-args-num-gpus, which Ray refuses "
                                               r"when it attaches to the cluster at h:1.*cluster"):
        runner.federation_config(presets.load_profile("gpu"), cfg, "h:1")


def test_ray_address_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cli.build_parser().parse_args(["simulate", "tiny"]).ray_address == "10.0.0.5:6379"
    assert cli.build_parser().parse_args(["sweep", "tiny", "--ray-address", "h:1"]).ray_address == "h:1"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cli.build_parser().parse_args(["simulate", "tiny"]).ray_address is None


def test_a_superlink_without_a_cluster_drops_an_inherited_ray_address(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fedkd.runtime.launch import SimulationSuperLink

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "RAY_ADDRESS" not in SimulationSuperLink(flwr_home=tmp_path).env
    on_cluster = SimulationSuperLink(flwr_home=tmp_path, ray_address="h:1").env
    assert on_cluster["RAY_ADDRESS"] == "h:1"
    # the workers of other machines import the app from this repository, at the same path
    assert on_cluster["PYTHONPATH"].split(os.pathsep)[0] == str(presets.APP_DIR)


# ----- errors a newcomer meets --------------------------------------------------------------
def test_unknown_preset_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "simulate", "fd-fmnist")
    assert rc == 2
    assert "unknown preset 'fd-fmnist'; valid names: " in err
    assert "fd-fmnist-dir0.1" in err and "tiny" in err


def test_unknown_profile_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--profile", "tpu")
    assert rc == 2 and "unknown profile 'tpu'; valid names: cluster, cpu, gpu" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('algorithm="fedx"', "unknown algorithm 'fedx'; valid names: dsfl, fd, fedavg, fedgen"),
        ('aggregation.rule="avg"', "unknown aggregation rule 'avg'; valid names: classwise, clipped-logit-mean, confidence, "),
        ('train.model="vgg"', "unknown model 'vgg'; valid names:"),
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("data.alpha", "override 'data.alpha' is not key=value"),
        ("train.model=mlp", "value is not TOML (quote strings"),
    ],
)
def test_invalid_settings_fail_before_flower_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, override: str, message: str
) -> None:
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--set", override, "--output-dir", str(tmp_path))
    assert rc == 2
    assert message in err
    assert not any(tmp_path.iterdir())  # nothing was started or written


def test_algorithm_checks_run_before_flower(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # FD under DP-SGD without output noise: the algorithm refuses, before anything starts.
    rc, _, err = run_cli(capsys, "simulate", "fd-fmnist-dir0.1", "--set", "privacy.dp-sgd=true",
                         "--output-dir", str(tmp_path))
    assert rc == 2 and "preset fd-fmnist-dir0.1:" in err and "privacy.output-noise" in err


# ----- one launcher: `fedkd simulate` and `make run` (python -m simulations.run) ------------------
class Started(Exception):
    """A Flower process would have started."""


class FakeSuperLink:
    """Stands in for :class:`fedkd.runtime.launch.SimulationSuperLink`: the run streams lines and writes
    ``metrics.jsonl`` as the ServerApp would, and ends with ``status``; nothing is started."""

    status = "finished:completed"
    made: list[FakeSuperLink] = []

    def __init__(self, port: int | None = None, flwr_home: Path | None = None,
                 log_path: Path | None = None, ray_address: str | None = None) -> None:
        self.ray_address = ray_address
        self.port, self.log_path, self.stopped = port, log_path, False
        FakeSuperLink.made.append(self)

    def start(self) -> FakeSuperLink:
        return self

    def stop(self) -> None:
        self.stopped = True

    def run_streaming(self, app_dir, run_config, federation, on_line, timeout) -> tuple[int, str]:
        self.run_config, self.federation = dict(run_config), dict(federation)
        run_dir = Path(run_config["output.dir"]) / run_config["output.run-name"]
        rounds = int(run_config.get("num-server-rounds", 2))
        for rnd in range(1, rounds + 1):
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps({"round": rnd, "global-accuracy": 0.5 + rnd / 10,
                                     "bytes-up-per-client": 1000, "wall-time-s": 1.0}) + "\n")
            on_line(f"INFO :      [fedkd] round {rnd}/{rounds} | global acc {0.5 + rnd / 10:.4f}")
            on_line("INFO :      some line of Flower's own")
        on_line("WARNING :   something to look at")
        return 7, self.status


@pytest.fixture()
def no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a SuperLink, or any process, raises :class:`Started`."""
    import fedkd.runtime.launch

    def refuse(*args: object, **kwargs: object) -> None:
        raise Started(f"a process was started: {args!r}")

    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture()
def fake_link(monkeypatch: pytest.MonkeyPatch) -> type[FakeSuperLink]:
    import fedkd.runtime.launch

    FakeSuperLink.made = []
    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", FakeSuperLink)
    return FakeSuperLink


FD_UNDER_DP_SGD = ["--set", 'algorithm="fd"', "--set", "privacy.dp-sgd=true",
                   "--set", "privacy.target-epsilon=8.0"]  # and no privacy.output-noise


def test_make_run_refuses_fd_under_dp_sgd_without_output_noise_before_any_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_process: None
) -> None:
    # Bug C: `make run` (python -m simulations.run) validated only RunConfig and failed inside
    # the running ServerApp. Now the algorithm's own checks refuse it before anything starts.
    from simulations import run as main_job

    rc = main_job.main([*FD_UNDER_DP_SGD, "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("error: ") and "privacy.output-noise" in err
    assert out == "" and not any(tmp_path.iterdir())


def test_fedkd_simulate_refuses_fd_under_dp_sgd_without_output_noise_before_any_process(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_process: None
) -> None:
    rc, out, err = run_cli(capsys, "simulate", "tiny", *FD_UNDER_DP_SGD,
                           "--output-dir", str(tmp_path))
    assert rc == 2
    assert err.startswith("error: preset tiny: ") and "privacy.output-noise" in err
    assert out == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize("entry", ["make run", "fedkd simulate"])
def test_with_output_noise_the_same_config_gets_to_the_superlink(
    tmp_path: Path, no_process: None, entry: str
) -> None:
    # The control for the two tests above: with privacy.output-noise the configuration passes,
    # and the run gets as far as starting the SuperLink, which `no_process` refuses.
    digits = ["--set", 'data.dataset="digits"', "--set", 'train.model="mlp"',
              "--set", "privacy.output-noise=5.0", "--output-dir", str(tmp_path)]
    with pytest.raises(Started):
        if entry == "make run":
            from simulations import run as main_job

            main_job.main([*FD_UNDER_DP_SGD, *digits, "--num-clients", "3"])
        else:
            cli.main(["simulate", "tiny", *FD_UNDER_DP_SGD, *digits])


def test_make_run_prints_server_lines_and_a_json_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_link: type[FakeSuperLink]
) -> None:
    from simulations import run as main_job

    rc = main_job.main(["--num-clients", "3", "--rounds", "2", "--cpus-per-client", "2",
                        "--set", 'data.dataset="digits"', "--set", 'train.model="mlp"',
                        "--output-dir", str(tmp_path), "--name", "it"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (link,) = fake_link.made
    assert link.stopped and link.log_path == tmp_path / "it" / "superlink.log"
    assert link.federation["num-supernodes"] == 3
    assert link.federation["client-resources-num-cpus"] == 2
    assert link.federation["client-resources-num-gpus"] == 0.0
    assert link.run_config["data.num-partitions"] == 3 and link.run_config["num-server-rounds"] == 2
    assert link.run_config["output.dir"] == str(tmp_path.resolve())
    lines = out.splitlines()
    assert lines[0] == (f"[fedkd] fedavg on digits: 3 clients, 2 rounds; outputs in "
                        f"{tmp_path.resolve() / 'it'}")
    partition = (tmp_path / "it" / "partition.txt").read_text()
    assert partition.strip() and partition.strip() in out  # the label histogram, printed
    assert "[fedkd] round 2/2 | global acc 0.7000" in out and "WARNING" in out
    assert "Flower's own" not in out  # only the ServerApp's lines and warnings
    assert "Flower's own" in (tmp_path / "it" / "run.log").read_text()  # ...but all are logged
    summary = json.loads(out[out.index("\n{") + 1:])
    assert summary["run-dir"] == str(tmp_path.resolve() / "it") and summary["rounds"] == 2
    assert summary["global-accuracy"] == pytest.approx(0.7)
    assert summary["bytes-up-per-client"] == 1000 and "total-wall-time-s" in summary


def test_make_run_names_the_run_after_algorithm_and_dataset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_link: type[FakeSuperLink]
) -> None:
    from simulations import run as main_job

    rc = main_job.main(["--num-clients", "2", "--rounds", "1", "--set", 'data.dataset="digits"',
                        "--set", 'train.model="mlp"', "--output-dir", str(tmp_path)])
    assert rc == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("fedavg-digits-")
    assert fake_link.made[0].run_config["output.run-name"] == run_dir.name


def test_fedkd_simulate_prints_progress_from_metrics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_link: type[FakeSuperLink]
) -> None:
    rc, out, err = run_cli(capsys, "simulate", "tiny", "--name", "t", "--output-dir", str(tmp_path))
    assert rc == 0, err
    assert "round 1/2 [##########----------] global acc 0.6000" in out
    assert "round 2/2 [####################] global acc 0.7000" in out
    assert "[fedkd] round" not in out and "WARNING" in out  # rounds from metrics.jsonl
    assert "[fedkd] done: 2 rounds" in out
    record = json.loads((tmp_path / "t" / "fedkd-run.json").read_text())
    assert record["preset"] == "tiny" and record["federation-config"]["num-supernodes"] == 3


@pytest.mark.parametrize("entry", ["make run", "fedkd simulate"])
def test_a_failed_run_status_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_link: type[FakeSuperLink],
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    # `flwr run` exits 0 even when the ServerApp failed: the status from `flwr ls` decides.
    monkeypatch.setattr(FakeSuperLink, "status", "finished:failed")
    if entry == "make run":
        from simulations import run as main_job

        rc = main_job.main(["--num-clients", "2", "--rounds", "1", "--name", "f",
                            "--set", 'data.dataset="digits"', "--set", 'train.model="mlp"',
                            "--output-dir", str(tmp_path)])
    else:
        rc = cli.main(["simulate", "tiny", "--name", "f", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error: run 7 ended with status 'finished:failed'; full log: " in err
    assert fake_link.made[0].stopped


def test_missing_dataset_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, _, err = run_cli(capsys, "simulate", "fedavg-fmnist-dir0.1", "--set",
                         f'data.data-dir="{tmp_path / "nowhere"}"', "--output-dir", str(tmp_path))
    assert rc == 2
    assert "apt-get install -y dataset-fashion-mnist" in err and "nowhere" in err


def test_port_in_use_names_the_port_and_the_way_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, _, err = run_cli(capsys, "simulate", "tiny", "--port", str(port),
                             "--output-dir", str(tmp_path))
    assert rc == 2
    assert f"port {port} on 127.0.0.1 is already in use; pass another --port" in err
    assert "leave --port out" in err


# ----- help, entry points -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "sweep", "report", "presets"])
def test_help_says_what_and_shows_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"fedkd {command}" in out


def test_presets_command_lists_presets_and_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "presets")
    assert rc == 0
    assert all(name in out for name in PRESETS)
    assert "profiles" in out and "gpu" in out


def test_console_script_and_python_dash_m(tmp_path: Path) -> None:
    with (APP_DIR / "pyproject.toml").open("rb") as fh:
        target = tomllib.load(fh)["project"]["scripts"]["fedkd"]
    module, _, func = target.partition(":")
    assert getattr(importlib.import_module(module), func) is cli.main
    proc = subprocess.run([sys.executable, "-m", "fedkd", "--help"], cwd=APP_DIR,
                          env=offline_env(tmp_path / "flwr-home"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "simulate" in proc.stdout and "sweep" in proc.stdout


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys)
    assert rc == 2 and "simulate" in err


# ----- progress -----------------------------------------------------------------------------------
def test_format_round() -> None:
    line = runner.format_round({"round": 3, "global-accuracy": 0.71234, "personalized-accuracy": 0.8,
                             "epsilon-max": 2.5, "bytes-up-per-client": 1500,
                             "wall-time-s": 12.34, "num-failures": 0}, total=10, width=10)
    assert line == ("round 3/10 [###-------] global acc 0.7123 | personal acc 0.8000 | eps 2.50 | "
                    "up 1.50 kB/client | 12.3 s")


def test_follower_prints_each_new_round_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"round": 1, "wall-time-s": 1.0}) + "\n")  # an earlier session's
    lines: list[str] = []
    follower = runner.MetricsFollower(path, total_rounds=3, emit=lines.append)
    assert follower.previous_rounds == 1
    with path.open("a") as fh:
        fh.write(json.dumps({"round": 2, "wall-time-s": 2.0}) + "\n")
        fh.write('{"round": 3, "wall')  # torn: not yet complete
    follower.poll()
    follower.poll()
    assert [ln.split(" [")[0] for ln in lines] == ["round 2/3"]
    with path.open("a") as fh:
        fh.write('-time-s": 3.0}\n')
    follower.poll()
    assert [ln.split(" [")[0] for ln in lines] == ["round 2/3", "round 3/3"]


# ----- sweep: resumable -------------------------------------------------------------------------
def fake_run(run_dir: Path, cfg: RunConfig, rounds: int, summary: bool) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"run-config": cfg.to_flat()}))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": r, "wall-time-s": 1.0}) + "\n" for r in range(1, rounds + 1)))
    if summary:
        (run_dir / "summary.json").write_text(json.dumps({"rounds": rounds}))


def test_run_state(tmp_path: Path) -> None:
    preset = presets.load_preset("tiny")

    def cfg_for(name: str, **kw) -> RunConfig:
        return runner.resolve_config(preset, output_dir=tmp_path, run_name=name, **kw)[0]

    assert runner.run_state(tmp_path / "a", cfg_for("a"))[0] == "new"
    fake_run(tmp_path / "b", cfg_for("b"), rounds=2, summary=True)
    assert runner.run_state(tmp_path / "b", cfg_for("b"))[0] == "done"
    fake_run(tmp_path / "c", cfg_for("c"), rounds=2, summary=False)  # every round, no summary
    assert runner.run_state(tmp_path / "c", cfg_for("c"))[0] == "done"
    fake_run(tmp_path / "d", cfg_for("d"), rounds=1, summary=False)
    assert runner.run_state(tmp_path / "d", cfg_for("d")) == ("partial", "1 of 2 rounds")
    # More rounds asked of a finished run: it continues after its checkpoint.
    assert runner.run_state(tmp_path / "b", cfg_for("b", rounds=4))[0] == "partial"
    state, detail = runner.run_state(tmp_path / "b", cfg_for("b", seed=9))
    assert state == "conflict" and "seed" in detail


def test_sweep_skips_finished_runs_and_refuses_other_configs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    preset = presets.load_preset("tiny")
    for seed in (0, 1):
        name = f"tiny-seed{seed}"
        cfg = runner.resolve_config(preset, seed=seed, output_dir=tmp_path, run_name=name)[0]
        fake_run(tmp_path / name, cfg, rounds=2, summary=True)
    rc, out, _ = run_cli(capsys, "sweep", "tiny", "--seeds", "0", "1", "--output-dir", str(tmp_path))
    assert rc == 0
    assert out.count("skipped, already done") == 2
    assert "0 completed, 2 skipped, 0 failed" in out
    # The same directories asked for with another setting: reported, not overwritten or skipped.
    rc, out, err = run_cli(capsys, "sweep", "tiny", "--seeds", "0", "--set", "train.local-steps=3",
                           "--output-dir", str(tmp_path))
    assert rc == 1 and "another configuration (train.local-steps)" in err
    assert (tmp_path / "tiny-seed0" / "summary.json").exists()


def test_sweep_validates_every_preset_before_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = run_cli(capsys, "sweep", "tiny", "nope", "--seeds", "0",
                           "--output-dir", str(tmp_path))
    assert rc == 2 and "unknown preset 'nope'" in err
    assert not any(tmp_path.iterdir())
