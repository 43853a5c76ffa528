"""The real Flower simulation engine, through the same entry point as `make run`.

`python -m simulations.run` starts its own `flower-superlink --simulation` on a free loopback
port (own FLWR_HOME, telemetry and update checks off), submits this app with `flwr run`, waits for
the run, checks its status with `flwr ls`, and stops the SuperLink by PID.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedkd.launch import free_port, offline_env, port_is_free
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_fedavg_simulation_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "simulations.run",
        "--num-clients", "3", "--rounds", "2", "--port", str(port),
        "--set", 'data.dataset="digits"', "--set", 'train.model="mlp"',
        "--set", "train.local-steps=15", "--set", "federation.min-nodes=3",
        "--output-dir", str(tmp_path), "--name", "it", "--timeout", "600",
    ]
    proc = subprocess.run(cmd, cwd=APP_DIR, env=offline_env(tmp_path / "flwr-home"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "round 2/2" in proc.stdout

    rows = read_metrics(tmp_path / "it")
    assert [r["round"] for r in rows] == [1, 2]
    last = rows[-1]
    assert last["num-failures"] == 0
    assert len(last["clients"]) == 3  # every client evaluated on its local split
    assert all(c["num-examples"] > 0 for c in last["clients"].values())
    # 2 rounds of FedAvg on digits with a 55k-parameter MLP: far above chance (0.1).
    assert last["global-accuracy"] > 0.5
    assert rows[0]["global-loss"] > last["global-loss"]
    # Each client uploads its whole model once per round (55,210 float32 = 220,840 bytes).
    assert 220_840 <= last["bytes-up-per-client"] < 220_840 + 8_192
    assert last["bytes-down-per-client"] >= 2 * 220_840  # fit + evaluate requests
    config = (tmp_path / "it" / "config.json").read_text()
    assert '"data.dataset": "digits"' in config
    assert (tmp_path / "it" / "summary.json").exists()
    # The SuperLink we started is gone: its port is free again.
    assert port_is_free(port)


def test_invalid_override_fails_before_starting_flower(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", "--set", "train.model=\"vgg\"",
         "--output-dir", str(tmp_path)],
        cwd=APP_DIR, env=offline_env(tmp_path / "flwr-home"), capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown model 'vgg'; valid names:" in proc.stderr
