"""The `fedkd` command without Flower: presets, profiles, errors a newcomer meets, sweep resumption.

Nothing here starts a SuperLink: every error is raised before one would start.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedkd import cli
from fedkd.config import RunConfig, pyproject_defaults
from fedkd.experiments import presets, runner
from fedkd.launch import offline_env

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
    assert run_config == preset.values
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
    # FD and FedGen release counts or per-class sums: under DP-SGD they need output noise.
    for name in ("fd-fmnist-dir0.1-dp", "fedgen-fmnist-dir1.0-dp"):
        assert runner.resolve_config(presets.load_preset(name))[0].privacy.output_noise > 0
    # Runs differ only in algorithm, partition and privacy (and the algorithm's own keys).
    shared = {"num-server-rounds", "train.model", "train.local-steps", "data.num-partitions",
              "federation.min-nodes", "federation.min-replies"}
    values = {n: runner.resolve_config(presets.load_preset(n))[0].to_flat() for n in PRESETS if n != "tiny"}
    for key in shared:
        assert len({v[key] for v in values.values()}) == 1, key


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


# ----- errors a newcomer meets --------------------------------------------------------------
def test_unknown_preset_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "simulate", "fd-fmnist")
    assert rc == 2
    assert "unknown preset 'fd-fmnist'; valid names: " in err
    assert "fd-fmnist-dir0.1" in err and "tiny" in err


def test_unknown_profile_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "simulate", "tiny", "--profile", "tpu")
    assert rc == 2 and "unknown profile 'tpu'; valid names: cpu, gpu" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('algorithm="fedx"', "unknown algorithm 'fedx'; valid names: fd, fedavg, fedgen"),
        ('aggregation.rule="avg"', "unknown aggregation rule 'avg'; valid names: classwise, confidence, "),
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
