"""Impossible configurations are refused before anything starts, in one line with the way out;
a run that fails inside Flower says why; the run's logs hold each line once, without DEBUG lines
or colour codes (issue 26, items 8 and 9).

Nothing here starts Flower: the one subprocess runs ``python -m fedkd simulate`` on a refused
configuration, which exits before any SuperLink would start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd import cli
from fedkd.compose import build_config, check_federation_size, check_simulation
from fedkd.config import PrivacyConfig
from fedkd.errors import ConfigError
from fedkd.experiments import runner
from fedkd.experiments.presets import CliError, load_preset
from fedkd.runtime.launch import SimulationSuperLink, failure_cause, offline_env

APP_DIR = Path(__file__).resolve().parents[2]
# Opacus' RDP accountant at the huge noise multipliers these tests probe.
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
#: The tiny preset (digits, 3 clients, 2 rounds of 15 steps, min-nodes = min-replies = 3).
TINY = load_preset("tiny").values


def tiny(**overrides: object):  # -> RunConfig
    return build_config({**TINY, **overrides})


# ----- a. privacy.target-epsilon of 0 or below ---------------------------------------------------
TARGET_MESSAGE = (
    "privacy.target-epsilon must be > 0, got {v}: it is the epsilon DP-SGD's noise is calibrated "
    "to spend over the run (0, the default, means no target: DP-SGD then trains at "
    "privacy.noise-multiplier); give a positive target, or leave the key out to train at "
    "privacy.noise-multiplier")


@pytest.mark.parametrize("value", [0, 0.0, -1.0])
def test_a_target_epsilon_given_as_zero_or_below_is_refused(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        runner.check_given({"privacy.dp-sgd": True, "privacy.target-epsilon": value})
    assert str(err.value) == TARGET_MESSAGE.format(v=repr(value))
    # ...through the launcher too, with the preset named
    with pytest.raises(CliError) as err:
        runner.resolve_config(load_preset("tiny"), {"privacy.target-epsilon": value})
    assert str(err.value) == "preset tiny: " + TARGET_MESSAGE.format(v=repr(value))


def test_an_unset_or_positive_target_epsilon_passes() -> None:
    runner.check_given({"privacy.dp-sgd": True})  # the default 0: no target, noise-multiplier
    runner.check_given({"privacy.dp-sgd": True, "privacy.target-epsilon": 8.0})
    cfg, _ = runner.resolve_config(load_preset("tiny"), {"privacy.dp-sgd": True})
    assert cfg.privacy.target_epsilon == 0.0 and cfg.privacy.noise_multiplier == 1.0


# ----- b. a target epsilon no noise multiplier reaches ------------------------------------------
def test_b_an_unreachable_target_epsilon_is_refused_with_the_calibrations_reason() -> None:
    cfg = tiny(**{"privacy.dp-sgd": True, "privacy.target-epsilon": 1e-9})
    with pytest.raises(ConfigError) as err:
        check_simulation(cfg, 3)
    # digits, 3 iid clients: the smallest holds 345 training examples (batch 32: q = 1/11)
    assert str(err.value) == (
        "privacy.target-epsilon 1e-09 is out of reach: even noise multiplier 655360 spends "
        "epsilon 0.1029 over the planned run (2 rounds x 15 steps, sample rate 1/11 for the "
        "smallest client's 345 examples at batch 32; rdp accountant, delta 1e-05), and the "
        "clients' noise calibration would fail (The privacy budget is too low); raise "
        "privacy.target-epsilon above 0.103, or set privacy.noise-multiplier without a target")


def test_b_the_check_uses_the_smallest_simulated_clients_training_set() -> None:
    import dataclasses

    from fedkd.data.federated import load_federated

    cfg = tiny(**{"privacy.dp-sgd": True, "privacy.target-epsilon": 1e-9,
                  "data.partitioner": "dirichlet", "data.alpha": 0.3})
    data = load_federated(dataclasses.replace(cfg.data, num_partitions=5))
    smallest = min(len(data.client(p).train) for p in range(5))  # what each client trains on
    with pytest.raises(ConfigError, match=f"the smallest client's {smallest} examples"):
        check_simulation(cfg, 5)


def test_b_reachable_targets_pass() -> None:
    for overrides in ({"privacy.target-epsilon": 8.0},
                      {"privacy.target-epsilon": 0.2},  # small, but above RDP's floor 0.103
                      {"privacy.target-epsilon": 8.0, "privacy.accountant": "prv"}):
        cfg = tiny(**{"privacy.dp-sgd": True, **overrides})
        check_simulation(cfg, 3)  # (its cost is one accountant evaluation: no timing here)


def test_b_with_output_releases_the_same_search_decides() -> None:
    from fedkd.privacy import check_target_reachable
    from fedkd.privacy.dpsgd import calibration_floor, epsilon_of

    plan = dict(train_size=100, batch_size=32, steps_per_round=10, planned_rounds=5,
                releases_per_round=2)
    probe = PrivacyConfig(dp_sgd=True, target_epsilon=1.0, output_noise=100.0)
    alone = epsilon_of([(100.0, 1.0, 10)], 1e-5, "rdp")  # the 10 releases without training
    floor = calibration_floor(probe, 1 / 4, 10, 5, 2)
    assert alone < floor
    # Above what the releases alone spend, below what they spend with DP-SGD at any noise:
    # fedkd's own search (the one with releases) gives up, and says so.
    cfg = PrivacyConfig(dp_sgd=True, target_epsilon=(alone + floor) / 2, output_noise=100.0)
    with pytest.raises(ConfigError, match=r"spends epsilon 0\.1344 over the planned run \(5 rounds "
                       r"x 10 steps, sample rate 1/4 for the smallest client's 100 examples at "
                       r"batch 32, 10 output releases at noise 100; rdp accountant, delta 1e-05\), "
                       r"and the clients' noise calibration would fail \(cannot calibrate "
                       r"privacy.target-epsilon: noise multiplier > 1e\+06\); raise "
                       r"privacy.target-epsilon above 0\.135, or set"):
        check_target_reachable(cfg, **plan)
    check_target_reachable(PrivacyConfig(dp_sgd=True, target_epsilon=5.0, output_noise=100.0),
                           **plan)


@pytest.mark.parametrize("releases", [0, 3])
def test_b_the_floor_is_exactly_where_the_clients_calibration_gives_up(releases: int) -> None:
    # The check accepts a target at or above calibration_floor without calibrating; the clients'
    # own calibration (Opacus' get_noise_multiplier without releases, fedkd's search with them)
    # must agree on both sides of it.
    from opacus.accountants.utils import MAX_SIGMA

    from fedkd.privacy.dpsgd import (
        calibration_floor,
        largest_calibrated_sigma,
        planned_noise_multiplier,
    )

    assert largest_calibrated_sigma() == 655360.0 and MAX_SIGMA == 1e6
    base = PrivacyConfig(dp_sgd=True, target_epsilon=1.0, output_noise=1000.0)
    floor = calibration_floor(base, 1 / 8, 10, 4, releases)
    above = PrivacyConfig(dp_sgd=True, target_epsilon=floor * (1 + 1e-6), output_noise=1000.0)
    below = PrivacyConfig(dp_sgd=True, target_epsilon=floor * (1 - 1e-6), output_noise=1000.0)
    assert planned_noise_multiplier(above, 1 / 8, 10, 4, releases) <= largest_calibrated_sigma()
    with pytest.raises(ValueError):
        planned_noise_multiplier(below, 1 / 8, 10, 4, releases)


def test_b_no_opacus_for_a_simulation_check_without_dp() -> None:
    code = ("import sys; from fedkd.compose import build_config, check_simulation; "
            "from fedkd.experiments.presets import load_preset; "
            "check_simulation(build_config(load_preset('tiny').values), 3); "
            "print('opacus' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=APP_DIR, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# ----- c. a quorum the sampled fraction cannot meet --------------------------------------------
def test_c_min_replies_above_the_sampled_clients_is_refused() -> None:
    cfg = tiny(**{"federation.fraction-train": 0.5})  # min-replies 3 of ceil(0.5 x 3) = 2
    with pytest.raises(ConfigError) as err:
        check_federation_size(cfg, 3)
    assert str(err.value) == (
        "federation.min-replies (3) is more than the 2 of 3 clients sampled each round "
        "(federation.fraction-train 0.5 x 3, rounded up): every round would fail its quorum; "
        "set federation.min-replies to at most 2, or federation.fraction-train to at least 1")
    cfg = build_config({"federation.fraction-train": 0.25, "federation.min-nodes": 10,
                        "federation.min-replies": 4})
    with pytest.raises(ConfigError, match=r"more than the 3 of 10 clients sampled each round .* "
                                          r"federation.fraction-train to at least 0\.4$"):
        check_federation_size(cfg, 10)


def test_c_min_nodes_above_the_simulated_clients_is_refused() -> None:
    cfg = tiny(**{"federation.min-nodes": 4})
    with pytest.raises(ConfigError) as err:
        check_federation_size(cfg, 3)
    assert str(err.value) == (
        "federation.min-nodes (4) is more than the 3 simulated clients (data.num-partitions): "
        "the server would wait federation.node-wait-timeout (300 s) for nodes that never come; "
        "set federation.min-nodes to at most 3, or simulate more clients")


@pytest.mark.parametrize(("fraction", "nodes", "replies"),
                         [(1.0, 3, 3), (0.5, 3, 2), (0.1, 10, 1), (0.01, 10, 1), (0.3, 10, 3)])
def test_c_quorums_the_sample_meets_pass(fraction: float, nodes: int, replies: int) -> None:
    cfg = build_config({"federation.fraction-train": fraction, "federation.min-nodes": nodes,
                        "federation.min-replies": replies})
    check_federation_size(cfg, nodes)


def test_c_the_simulation_size_is_the_number_of_supernodes(tmp_path: Path) -> None:
    cfg, _ = runner.resolve_config(load_preset("tiny"), {"federation.fraction-train": 0.5},
                                   output_dir=tmp_path, run_name="r")
    with pytest.raises(CliError, match=r"min-replies \(3\) is more than the 2 of 3 clients"):
        runner.check_planned_run(cfg, {"num-supernodes": 3})
    runner.check_planned_run(cfg, {"num-supernodes": 6})  # ceil(0.5 x 6) = 3


# ----- d. an output path that cannot be created ------------------------------------------------
def test_d_an_output_dir_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        runner.check_output_dir(blocker / "out" / "run")
    assert str(err.value) == (
        f"output.dir: cannot create the run directory {blocker / 'out' / 'run'}: {blocker} is a "
        "file, not a directory; pass an --output-dir (output.dir) in a directory you can write to")
    with pytest.raises(ConfigError, match=r"a-file is a file, not a directory"):
        runner.check_output_dir(blocker)  # the run directory itself is a file
    with pytest.raises(CliError, match=r"^preset tiny: output.dir: cannot create the run "):
        runner.resolve_config(load_preset("tiny"), output_dir=blocker, run_name="r")
    runner.check_output_dir(tmp_path / "new" / "run")  # creatable: nothing is created
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_d_an_output_dir_in_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=r"locked is not writable; pass an --output-dir"):
        runner.check_output_dir(locked / "run")


# ----- the refusals from the command line --------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "privacy.target-epsilon=0"], "privacy.target-epsilon must be > 0, got 0"),
        (["--set", "privacy.dp-sgd=true", "--set", "privacy.target-epsilon=1e-9"],
         "privacy.target-epsilon 1e-09 is out of reach"),
        (["--set", "federation.fraction-train=0.5"],
         "federation.min-replies (3) is more than the 2 of 3 clients sampled each round"),
        (["--set", "federation.min-nodes=4"], "federation.min-nodes (4) is more than the 3"),
    ],
)
def test_fedkd_simulate_refuses_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    argv: list[str], message: str
) -> None:
    import fedkd.runtime.launch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a SuperLink was started")

    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", refuse)
    rc = cli.main(["simulate", "tiny", *argv, "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and message in err and out == ""
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_make_run_refuses_an_unreachable_quorum(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedkd.runtime.launch
    from simulations import run as main_job

    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", None)  # would fail if called
    rc = main_job.main(["--num-clients", "3", "--set", 'data.dataset="digits"',
                        "--set", "federation.min-nodes=3", "--set", "federation.min-replies=3",
                        "--set", "federation.fraction-train=0.5", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == ("error: federation.min-replies (3) is more than the 2 of 3 clients sampled "
                   "each round (federation.fraction-train 0.5 x 3, rounded up): every round would "
                   "fail its quorum; set federation.min-replies to at most 2, or "
                   "federation.fraction-train to at least 1\n")


def test_python_dash_m_fedkd_refuses_before_starting_anything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd", "simulate", "tiny", "--set",
         "federation.fraction-train=0.5", "--output-dir", str(tmp_path / "out")],
        cwd=APP_DIR, env=offline_env(tmp_path / "flwr-home"), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr
    # nothing started: no run directory, no SuperLink's home
    assert not (tmp_path / "out").exists() and not any((tmp_path / "flwr-home").glob("**/*.db"))
    assert proc.stderr.strip() == (
        "error: federation.min-replies (3) is more than the 2 of 3 clients sampled each round "
        "(federation.fraction-train 0.5 x 3, rounded up): every round would fail its quorum; "
        "set federation.min-replies to at most 2, or federation.fraction-train to at least 1")
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


# ----- 2. a run that fails inside Flower says why -----------------------------------------------
#: What `flwr run --stream` printed for a run whose ServerApp raised (tiny with
#: fraction-train 0.5, before the quorum check existed), shortened.
FAILED_RUN_LOG = """\
Using SuperLink: fedkd-sim (127.0.0.1:59319)
Successfully started run 3260000818575772277
\x1b[92mINFO \x1b[0m:      Starting Flower Simulation
\x1b[92mINFO \x1b[0m:      [fedkd] fedavg on digits, 2 rounds; outputs in /tmp/fk/fail1
\x1b[91mERROR \x1b[0m:     Simulation raised an exception
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/flwr/simulation/app.py", line 337, in run_simulation_process
    simulation_result = _run_simulation(
                        ^^^^^^^^^^^^^^^^
  File "/tmp/fedkd-flwr-home-ua2nykki/apps/fedkd.fedkd.0.1.0.c6ff803b/server/loop.py", line 164, in __call__
    raise QuorumError(
fedkd.algorithms.base.QuorumError: round 1, phase 'fit': only 2 valid replies of 2 (federation.min-replies = 3)
\x1b[91mERROR \x1b[0m:     Exit Code: 700

An unhandled exception occurred when running the simulation.

For more information, visit: <https://flower.ai/docs/framework/1.42/en/ref-exit-codes/700.html>
"""


def test_failure_cause_is_the_exception_the_server_raised() -> None:
    assert failure_cause(FAILED_RUN_LOG.splitlines()) == (
        "QuorumError: round 1, phase 'fit': only 2 valid replies of 2 (federation.min-replies = 3)")


def test_failure_cause_without_a_traceback() -> None:
    lines = ["\x1b[91mERROR \x1b[0m:     Simulation raised an exception",
             "ERROR :     ServerApp: cannot reach the data directory /nowhere",
             "ERROR :     Exit Code: 700"]
    assert failure_cause(lines) == "ServerApp: cannot reach the data directory /nowhere"
    assert failure_cause(lines[:1], "ERROR :     SuperLink: run 3 was stopped") == (
        "SuperLink: run 3 was stopped")
    assert failure_cause(["INFO :      fine"]) is None


class FailingSuperLink:
    """A SuperLink stand-in whose run streams ``lines`` (coloured, as Flower's) and ends with
    ``status``; nothing is started."""

    lines: list[str] = []
    status = "finished:failed"

    def __init__(self, port=None, flwr_home=None, log_path=None, ray_address=None) -> None:  # noqa: ANN001
        self.log_path = log_path

    def start(self) -> FailingSuperLink:
        return self

    def stop(self) -> None:
        pass

    def run_streaming(self, app_dir, run_config, federation, on_line, timeout):  # noqa: ANN001
        for line in self.lines:
            on_line(line)
        return 9, self.status


@pytest.mark.parametrize("entry", ["make run", "fedkd simulate"])
def test_a_failed_run_prints_the_cause_and_logs_without_colour_codes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    entry: str
) -> None:
    import fedkd.runtime.launch

    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", FailingSuperLink)
    monkeypatch.setattr(FailingSuperLink, "lines", [
        *FAILED_RUN_LOG.splitlines(),
        "\x1b[92mDEBUG \x1b[0m:     Backend config: {'init_args': {'logging_level': 'ERROR'}}"])
    if entry == "make run":
        from simulations import run as main_job

        rc = main_job.main(["--num-clients", "3", "--name", "f", "--set",
                            'data.dataset="digits"', "--output-dir", str(tmp_path)])
    else:
        rc = cli.main(["simulate", "tiny", "--name", "f", "--output-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert err.splitlines()[-1] == (
        "error: run 9 ended with status 'finished:failed': QuorumError: round 1, phase 'fit': "
        "only 2 valid replies of 2 (federation.min-replies = 3); full log: "
        f"{tmp_path.resolve() / 'f' / 'run.log'}")
    log = (tmp_path / "f" / "run.log").read_text()
    assert "\x1b" not in log and "\x1b" not in out + err
    assert "ERROR :     Simulation raised an exception" in log
    assert "Backend config" not in out  # a DEBUG line that mentions 'ERROR' needs no attention


# ----- 3. logs: each line once, no DEBUG, no colour codes ---------------------------------------
def test_importing_opacus_through_fedkd_leaves_the_root_logger_alone() -> None:
    # opacus' import calls logging.basicConfig: a root handler that repeated every Flower line
    # (Flower's logger propagates) and let its DEBUG lines through.
    code = """
import logging, sys
from fedkd.privacy import import_opacus
from fedkd.privacy.dpsgd import epsilon_of
from flwr.common.logger import log
epsilon_of([(1.0, 0.1, 10)], 1e-5, "rdp")
import_opacus()
assert "opacus.utils.module_utils" in sys.modules
print(len(logging.getLogger().handlers))
log(logging.DEBUG, "a debug line")
log(logging.INFO, "an info line")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=APP_DIR, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"
    printed = out.stdout + out.stderr
    assert "a debug line" not in printed and printed.count("an info line") == 1


def test_the_superlink_log_is_left_without_colour_codes(tmp_path: Path) -> None:
    log_path = tmp_path / "superlink.log"
    log_path.write_bytes(b"\x1b[92mINFO \x1b[0m:      an earlier run\n")
    link = SimulationSuperLink(flwr_home=tmp_path / "home", log_path=log_path)
    link._log_offset = log_path.stat().st_size  # as start() records it
    with log_path.open("ab") as fh:
        fh.write(b"\x1b[93mWARNING \x1b[0m:   this run\n\x1b[92mINFO \x1b[0m:      done\n")
    link._strip_log_colours()
    assert log_path.read_bytes() == (b"\x1b[92mINFO \x1b[0m:      an earlier run\n"
                                     b"WARNING :   this run\nINFO :      done\n")


def test_console_filters_match_the_level_not_a_word() -> None:
    debug = "12/06/2026 11:04:11:DEBUG:Backend config: {'logging_level': 'ERROR'}"
    assert runner._needs_attention(debug) is None and runner._server_lines(debug) is None
    warning = "\x1b[93mWARNING \x1b[0m:   [fedkd] fedavg is a WEIGHT-SHARING BASELINE"
    assert runner._needs_attention(warning) == "WARNING :   [fedkd] fedavg is a WEIGHT-SHARING BASELINE"
    assert runner._server_lines(warning) == "WARNING :   [fedkd] fedavg is a WEIGHT-SHARING BASELINE"
    assert runner._server_lines("\x1b[92mINFO \x1b[0m:      [fedkd] round 1/2") == (
        "INFO :      [fedkd] round 1/2")


def test_sweep_refuses_an_impossible_run_before_the_first_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedkd.runtime.launch

    monkeypatch.setattr(fedkd.runtime.launch, "SimulationSuperLink", None)
    rc = cli.main(["sweep", "tiny", "--seeds", "0", "1", "--set", "federation.min-nodes=4",
                   "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: preset tiny seed 0: federation.min-nodes (4)")
    assert not any(tmp_path.iterdir())
