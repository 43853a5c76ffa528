"""`fedkd simulate` through the real Flower simulation engine: a full run, and Ctrl-C mid-run.

Like `python -m simulations.run`, the command starts its own `flower-superlink --simulation` on a
free loopback port (own FLWR_HOME, telemetry and update checks off), submits this app with
`flwr run`, and stops every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd.runtime.launch import LaunchError, SimulationSuperLink, descendants, free_port, offline_env, \
    port_is_free
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]


def fedkd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedkd", *args]


@pytest.mark.integration
def test_simulate_tiny_preset_then_sweep_skips_it_and_report_reads_it(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "flwr-home")
    out = tmp_path / "outputs"
    proc = subprocess.run(fedkd("simulate", "tiny", "--seed", "0", "--name", "tiny-seed0",
                                "--output-dir", str(out), "--timeout", "600"),
                          cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # One progress line per round, from metrics.jsonl, with the latest accuracy.
    assert "round 1/2 [" in proc.stdout and "round 2/2 [" in proc.stdout
    assert "global acc" in proc.stdout and "[fedkd] done: 2 rounds" in proc.stdout
    run_dir = out / "tiny-seed0"
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["num-failures"] == 0
    assert rows[-1]["global-accuracy"] > 0.3
    assert (run_dir / "summary.json").exists()
    assert json.loads((run_dir / "fedkd-run.json").read_text())["preset"] == "tiny"
    config = json.loads((run_dir / "config.json").read_text())["run-config"]
    assert config["data.dataset"] == "digits" and config["seed"] == 0

    # The sweep finds the finished run and starts nothing.
    start = time.monotonic()
    proc = subprocess.run(fedkd("sweep", "tiny", "--seeds", "0", "--output-dir", str(out)),
                          cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped, already done" in proc.stdout and "0 completed, 1 skipped" in proc.stdout
    assert time.monotonic() - start < 120

    proc = subprocess.run(fedkd("report", str(out), "--out", str(tmp_path / "report")),
                          cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"| tiny | 0 | 2 | {rows[-1]['global-accuracy']:.4f} |" in proc.stdout
    assert (tmp_path / "report" / "accuracy_vs_round.png").stat().st_size > 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _pids_with_flwr_home(home: str) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _alive(int(e))
            and _environ(int(e)).get("FLWR_HOME") == home]


@pytest.mark.integration
def test_ctrl_c_stops_every_process_and_keeps_finished_rounds(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    proc = subprocess.Popen(
        fedkd("simulate", "tiny", "--rounds", "50", "--name", "interrupted",
              "--output-dir", str(out)),
        cwd=APP_DIR, env=offline_env(tmp_path / "flwr-home"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    metrics = out / "interrupted" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no round finished in 600 s"
            time.sleep(0.2)
        tree = descendants(proc.pid)  # SuperLink, flwr run, SuperExec, simulation, Ray...
        homes = {_environ(p).get("FLWR_HOME") for p in tree} - {None}
        ports = {int(a.split("\0")[i + 1]) for p in tree
                 for a in [Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
                 if "flower-superlink" in a
                 for i, part in enumerate(a.split("\0")) if part == "--port"}
        assert len(tree) >= 4 and len(homes) == 1 and len(ports) == 1, (tree, homes, ports)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # only if the test failed: do not leave the run behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert "interrupted: every process this run started was stopped" in stderr
    assert "--name interrupted" in stderr  # how to continue
    assert [p for p in tree if _alive(p)] == []
    # Nothing orphaned outside the recorded tree either (a Ray worker spawned after the snapshot).
    # A few seconds' grace for one that is already exiting; a leaked one would stay.
    home = homes.pop()
    deadline = time.monotonic() + 10
    while _pids_with_flwr_home(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _pids_with_flwr_home(home) == []
    assert port_is_free(ports.pop())
    # Every finished round is intact and readable; the run did not finish.
    rows = read_metrics(metrics)
    assert rows and [r["round"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) < 50 and not (out / "interrupted" / "summary.json").exists()
    assert "round 1/50 [" in stdout


def test_superlink_that_cannot_bind_its_port_names_it(tmp_path: Path) -> None:
    # The port was free when checked and taken when the SuperLink bound it: the error names the
    # port and the way out, and nothing started is left (process, temporary FLWR_HOME).
    import socket

    port = free_port()
    link = SimulationSuperLink(port=port, log_path=tmp_path / "superlink.log")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(LaunchError, match=rf"port {port} on 127.0.0.1 is already in use; "
                                              r"choose another one \(--port N"):
            link.start()
    assert link.proc is not None and link.proc.poll() is not None
    assert not link.flwr_home.exists()


def test_a_run_flower_refuses_to_start_says_flowers_reason(tmp_path: Path) -> None:
    # A run-config key without a pyproject default: Flower refuses the run. The error carries
    # Flower's own lines (flwr run's error box and the SuperLink's reason), not just an exit code.
    from fedkd.experiments.presets import APP_DIR

    with SimulationSuperLink(log_path=tmp_path / "superlink.log") as link:
        with pytest.raises(LaunchError) as err:
            link.run_streaming(APP_DIR, {"federation.no-such-key": 1}, {"num-supernodes": 2},
                               on_line=lambda line: None, timeout=120)
    message = str(err.value)
    assert "started no run: " in message and "Invalid run configuration" in message
    assert "'federation.no-such-key' is not present" in message
    assert str(tmp_path / "superlink.log") in message
