"""The simulation does exactly the loop's client work (issue 8).

``benchmarks.sim_overhead`` compares the Flower simulation with a pure PyTorch loop; these tests
check that the two compute the same thing for the same seeds:

* in-process, each client's FedAvg update from the client app equals the pure loop's
  (tolerance: 1e-6 absolute; same operations in the same order, so exact in practice);
* through the real Flower simulation engine, one FedAvg round gives the global model the pure
  loop's updates average to (tolerance: 1e-6 absolute; the server may sum the clients in another
  order, which moves float64 sums by ~1e-16 before the cast to float32);
* FD with ``federation.client-state="disk"`` through Flower: node state in files, removed at
  the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.sim_overhead import (
    fedavg_average,
    initial_global_state,
    pure_fedavg_client,
    pure_fedavg_round,
)
from client.app import answer, client_context
from fedkd.compose import build_config
from fedkd.config import RunConfig, pyproject_defaults
from fedkd.data.federated import load_federated
from fedkd.runtime.launch import free_port, offline_env
from fedkd.models import build_model
from fedkd.protocol import PHASE_KEY, Payload, decode, encode
from fedkd.results import read_metrics
from fedkd.training import seeded_generator

APP_DIR = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-6
SETTINGS = {"algorithm": "fedavg", "data.dataset": "digits", "train.model": "mlp",
            "data.partitioner": "iid", "train.local-steps": 4, "train.batch-size": 20,
            "data.local-test-fraction": 0.0, "federation.evaluate-every": 0, "seed": 3}


def _cfg(num_clients: int, out: Path) -> RunConfig:
    flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **SETTINGS,
            "data.num-partitions": num_clients, "output.dir": str(out), "output.run-name": "it"}
    return build_config(flat)


def _loop_clients(cfg: RunConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_federated(cfg.data)
    out = []
    for pid in range(cfg.data.num_partitions):
        train = data.client(pid).train
        out.append((torch.from_numpy(np.array(train.x)), torch.from_numpy(np.array(train.y))))
    return out


def test_client_updates_match_the_pure_loop(tmp_path: Path) -> None:
    cfg = _cfg(4, tmp_path)
    data = load_federated(cfg.data)
    state = initial_global_state(cfg, data.input_shape, data.num_classes)
    model = build_model(cfg.train.model, data.input_shape, data.num_classes)
    loop = pure_fedavg_round(cfg, 1, state, _loop_clients(cfg), model)
    request = encode(Payload(arrays=state, config={"round": 1, PHASE_KEY: "fit"}))
    for pid in range(4):
        client = client_context(cfg, 100 + pid, {"partition-id": pid, "num-partitions": 4}, {})
        reply = decode(answer(request, client))
        assert set(reply.arrays) == set(loop[pid])
        for key, value in reply.arrays.items():
            np.testing.assert_allclose(value, loop[pid][key], rtol=0, atol=TOLERANCE)
    # and the loop really trained: the update differs from the global weights
    assert any(not np.array_equal(loop[0][k], state[k]) for k in state)


def test_pure_client_uses_the_seeded_batches() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(30, 1, 8, 8), torch.randint(0, 10, (30,))
    kw = dict(steps=3, batch_size=10, lr=0.1, momentum=0.0, weight_decay=0.0)
    a = pure_fedavg_client(model, state, x, y, generator=seeded_generator(1, 1, 0), **kw)
    b = pure_fedavg_client(model, state, x, y, generator=seeded_generator(1, 1, 0), **kw)
    c = pure_fedavg_client(model, state, x, y, generator=seeded_generator(1, 1, 1), **kw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def _simulate(tmp_path: Path, num_clients: int, rounds: int, *extra: str) -> Path:
    cmd = [sys.executable, "-m", "simulations.run", "--num-clients", str(num_clients),
           "--rounds", str(rounds), "--port", str(free_port()), "--output-dir", str(tmp_path),
           "--name", "it", "--timeout", "600", "--set", f"federation.min-nodes={num_clients}"]
    for key, value in SETTINGS.items():
        cmd += ["--set", f"{key}={value!r}".replace("'", '"')]
    for override in extra:
        cmd += ["--set", override]
    proc = subprocess.run(cmd, cwd=APP_DIR, env=offline_env(tmp_path / "flwr-home"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp_path / "it"


@pytest.mark.integration
def test_one_simulated_fedavg_round_matches_the_pure_loop(tmp_path: Path) -> None:
    run_dir = _simulate(tmp_path, 3, 1)
    cfg = _cfg(3, tmp_path)
    data = load_federated(cfg.data)
    state = initial_global_state(cfg, data.input_shape, data.num_classes)
    clients = _loop_clients(cfg)
    model = build_model(cfg.train.model, data.input_shape, data.num_classes)
    expected = fedavg_average(pure_fedavg_round(cfg, 1, state, clients, model),
                              [len(y) for _, y in clients])
    simulated = torch.load(run_dir / "checkpoint.pt", weights_only=False)["algorithm"]["_model"]
    assert set(simulated) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(simulated[key].numpy(), value, rtol=0, atol=TOLERANCE)
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and "global-accuracy" not in rows[0]  # evaluate-every = 0


@pytest.mark.integration
def test_fd_with_node_state_on_disk_through_flower(tmp_path: Path) -> None:
    run_dir = _simulate(tmp_path, 3, 2, 'algorithm="fd"', 'federation.client-state="disk"',
                        "federation.evaluate-every=1", "data.local-test-fraction=0.2")
    rows = read_metrics(run_dir)
    assert [r["num-failures"] for r in rows] == [0, 0]
    assert rows[-1]["personalized-accuracy"] is not None
    # the personal models lived in files for the run, and the run removed them at its end
    assert not any((tmp_path / "client-state").glob("run-*"))
