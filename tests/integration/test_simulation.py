"""The real Flower simulation engine, through the same entry point as `make run`.

`python -m simulations.run` starts its own `flower-superlink --simulation` on a free loopback
port (own FLWR_HOME, telemetry and update checks off), submits this app with `flwr run`, waits for
the run, checks its status with `flwr ls`, and stops the SuperLink by PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedkd.experiments.compare import differences
from fedkd.runtime.launch import free_port, offline_env, port_is_free
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]


def run_module(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the checkout, offline (own FLWR_HOME under ``tmp_path``);
    asserts it exited 0."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=APP_DIR,
                          env=offline_env(tmp_path / "flwr-home"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def simulate(tmp_path: Path, *overrides: str, port: int | None = None,
             name: str = "it") -> subprocess.CompletedProcess[str]:
    """`python -m simulations.run` on digits with 3 clients and 2 rounds, plus ``overrides``;
    outputs in ``tmp_path / name``."""
    args = [
        "simulations.run",
        "--num-clients", "3", "--rounds", "2", "--port", str(port or free_port()),
        "--set", 'data.dataset="digits"', "--set", 'train.model="mlp"',
        "--set", "train.local-steps=15", "--set", "federation.min-nodes=3",
        "--output-dir", str(tmp_path), "--name", name, "--timeout", "600",
    ]
    for override in overrides:
        args += ["--set", override]
    proc = run_module(tmp_path, *args)
    assert "round 2/2" in proc.stdout
    return proc


@pytest.mark.integration
def test_fedavg_simulation_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    simulate(tmp_path, port=port)

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


@pytest.mark.integration
def test_the_same_seed_gives_the_same_run_through_flower(tmp_path: Path) -> None:
    # Each simulation's SuperLink draws new node ids: clients are sampled by partition id, so
    # two runs of one seed sample the same partitions (2 of 3 a round) and compute the same.
    overrides = ('algorithm="dsfl"', 'aggregation.rule="era"', "distill.public-batch=60",
                 "distill.server-steps=10", "distill.steps=3", "federation.fraction-train=0.6",
                 "federation.min-replies=2", "seed=5")
    simulate(tmp_path, *overrides, name="first")
    simulate(tmp_path, *overrides, name="second")
    first, second = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "second")
    assert [len(r["sampled-clients"]) for r in first] == [2, 2]
    assert differences(first, second) == []
    # every client's state lives beside the run's outputs (what a resumed run continues from)
    assert sorted(p.name for p in (tmp_path / "first" / "client-state").iterdir()) == [
        f"client-{c}" for c in sorted({c for r in first for c in r["trained-clients"]})]


@pytest.mark.integration
def test_fd_with_a_misbehaving_client_through_flower(tmp_path: Path) -> None:
    # Client 0 sends NaN logits every round: rejected, counted, logged; the run completes with
    # the other two. Every reply that crossed the real transport is in replies.jsonl.
    simulate(tmp_path, 'algorithm="fd"', 'attack.partitions="0"', 'attack.mode="nan"',
             "federation.min-replies=2")
    rows = read_metrics(tmp_path / "it")
    assert [r["rejected-replies"] for r in rows] == [1, 1]
    assert all(r["client-errors"] == 0 and r["timeouts"] == 0 for r in rows)
    audit = read_metrics(tmp_path / "it", "replies.jsonl")
    # each node said once which client it is, before round 1 (by its Flower node id)
    assert sorted(a["phase"] for a in audit[:3]) == ["identify"] * 3
    audit = audit[3:]
    assert len(audit) == 2 * (3 + 3)  # 2 rounds x (3 fit + 3 evaluate) replies
    assert {a["node"] for a in audit} == {0, 1, 2}  # by client id: the partition id
    for a in audit:
        if a["phase"] == "fit":
            assert set(a["arrays"]) == {"arrays/class-logits", "arrays/class-counts"}
            assert a["arrays"]["arrays/class-logits"]["shape"] == [10, 10]
            assert a["arrays"]["arrays/class-counts"]["shape"] == [10]
            # C x C + C numbers (8 bytes at most each) plus two 128-byte .npy headers
            assert sum(v["bytes"] for v in a["arrays"].values()) <= (100 + 10) * 8 + 2 * 128
        else:
            assert a["phase"] == "evaluate" and a["arrays"] == {}
    assert sum(a["status"] == "rejected" for a in audit) == 2


@pytest.mark.integration
def test_fedmd_mixed_architectures_through_flower(tmp_path: Path) -> None:
    simulate(tmp_path, 'algorithm="fedmd"', 'train.client-models="mlp,fedgen-cnn,resnet"',
             "distill.public-batch=64", "distill.server-steps=20", "distill.steps=5")
    rows = read_metrics(tmp_path / "it")
    assert all(r["num-failures"] == 0 and r["teachers"] == 3 for r in rows)
    assert rows[-1]["global-accuracy"] is not None
    audit = read_metrics(tmp_path / "it", "replies.jsonl")
    assert {a["phase"] for a in audit} == {"identify", "logits", "digest", "evaluate"}
    for a in audit:
        if a["phase"] == "logits":  # N x C float32 logits, nothing else
            assert a["arrays"] == {"arrays/logits": {"shape": [64, 10], "dtype": "float32",
                                                     "bytes": 64 * 10 * 4 + 128}}
        else:
            assert a["arrays"] == {}


@pytest.mark.integration
def test_fd_with_dp_sgd_reports_growing_epsilon_through_flower(tmp_path: Path) -> None:
    # Each client's Opacus ledger lives in its node state between rounds; a fresh engine each
    # round must continue it, not restart it.
    simulate(tmp_path, 'algorithm="fd"', "privacy.dp-sgd=true", "privacy.noise-multiplier=1.0",
             "privacy.output-noise=2.0", "train.local-steps=5")
    rows = read_metrics(tmp_path / "it")
    first, second = ({n: c["epsilon"] for n, c in r["clients"].items()} for r in rows)
    assert set(first) == set(second) and len(first) == 3
    assert all(0 < first[n] < second[n] for n in first)
    assert rows[-1]["epsilon-max"] == max(second.values())
    summary = (tmp_path / "it" / "summary.json").read_text()
    assert '"epsilon-max"' in summary and '"privacy-accountant": "rdp"' in summary


@pytest.mark.integration
@pytest.mark.parametrize(
    "overrides",
    [
        ('algorithm="fedgen"', 'train.model="fedgen-cnn"', "fedgen.generator-steps=5"),
        # Zeroth-order probes, two query cycles and a sampled 2 of 3 clients: the list-valued
        # configs and Flower's 64-bit node ids through the real engine.
        ('algorithm="fedgen-logits"', "fedgen-logits.synthetic-batch=40", "fedgen.generator-steps=3",
         "distill.server-steps=10", "distill.steps=3", "fedgen-logits.zo-directions=1",
         "fedgen-logits.generator-queries=2", "federation.fraction-train=0.6",
         "federation.min-replies=2"),
    ],
    ids=["fedgen", "fedgen-logits"],
)
def test_data_free_algorithms_through_flower(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    simulate(tmp_path, *overrides, "train.local-steps=5")
    rows = read_metrics(tmp_path / "it")
    assert [r["num-failures"] for r in rows] == [0, 0]
    assert rows[-1]["global-accuracy"] is not None
    audit = read_metrics(tmp_path / "it", "replies.jsonl")
    if "fedgen-logits" in overrides[0]:  # only logits leave a client
        assert all(set(a["arrays"]) <= {"arrays/logits"} for a in audit)
        assert [r["sampled"] for r in rows] == [2, 2] and rows[-1]["answered"] == 2 * 40
        logits = [a for a in audit if a["phase"] == "logits"]
        assert len(logits) == 2 * 2 * 2  # rounds x queries x sampled clients
        assert all(a["arrays"]["arrays/logits"]["shape"] == [2 * 40, 10] for a in logits)


@pytest.mark.integration
def test_secure_aggregation_with_distributed_dp_through_flower(tmp_path: Path) -> None:
    simulate(tmp_path, 'algorithm="dsfl"', 'aggregation.rule="mean"', "aggregation.secure=true",
             "secagg.noise-multiplier=0.5", "secagg.clip=10.0", "distill.public-batch=32",
             "distill.server-steps=10", "distill.steps=3", "output.audit-replies=true")
    rows = read_metrics(tmp_path / "it")
    assert all(r["num-failures"] == 0 and r["teachers"] == 3 for r in rows)
    # one Gaussian release of noise multiplier 0.5 * sqrt(3 / 2) per round, client level
    assert rows[0]["server-privacy-unit"] == "client"
    assert 0 < rows[0]["server-epsilon"] < rows[1]["server-epsilon"]
    audit = read_metrics(tmp_path / "it", "replies.jsonl")
    assert {a["phase"] for a in audit} == {"identify", "fit", "secagg-share-keys", "secagg-mask",
                                           "secagg-unmask", "distill", "evaluate"}
    for a in audit:
        assert not any("logits" in name for name in a["arrays"]), a
        if a["phase"] == "secagg-mask":  # 32 samples x 10 classes, masked field elements
            assert a["arrays"]["arrays/masked"]["shape"] == [320]
            assert a["arrays"]["arrays/masked"]["dtype"] == "uint32"


@pytest.mark.integration
def test_the_main_job_runs_its_preset_then_fedavg_on_the_same_split(tmp_path: Path) -> None:
    # `make run` is `python -m simulations.run --preset main --against-fedavg`: here on digits,
    # 3 clients, 2 rounds. Both runs go through Flower, the second is FedAvg with everything else
    # the main run's, and the summary prints both side by side.
    proc = run_module(
        tmp_path, "simulations.run", "--preset", "main", "--against-fedavg",
        "--num-clients", "3", "--rounds", "2", "--set", 'data.dataset="digits"',
        "--set", 'train.model="mlp"', "--set", "federation.min-nodes=3",
        "--set", "federation.min-replies=2", "--set", "distill.server-steps=20",
        "--output-dir", str(tmp_path), "--name", "main", "--timeout", "600")
    main, fedavg = read_metrics(tmp_path / "main"), read_metrics(tmp_path / "main-fedavg")
    assert len(main) == len(fedavg) == 2
    main_cfg, fedavg_cfg = (json.loads((tmp_path / run / "config.json").read_text())["run-config"]
                            for run in ("main", "main-fedavg"))
    assert main_cfg["algorithm"] == "student-down" and fedavg_cfg["algorithm"] == "fedavg"
    for key in ("seed", "data.seed", "data.alpha", "data.partitioner", "data.num-partitions",
                "train.model", "train.local-steps", "num-server-rounds"):
        assert main_cfg[key] == fedavg_cfg[key], key
    lines = proc.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "same split and seed" in line):]
    assert any(line.split()[:2] == ["student-down", "logits"] for line in table)
    assert any(line.split()[:2] == ["fedavg", "weights"] for line in table)
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n[\n") + 1:])
    assert [s["algorithm"] for s in summary] == ["student-down", "fedavg"]
    assert summary[0]["bytes-up-per-client"] < summary[1]["bytes-up-per-client"]


@pytest.mark.integration
def test_a_population_of_10000_logical_clients_through_flower(tmp_path: Path) -> None:
    # The synthetic-1m preset at 10,000 clients, 2 rounds, 30 sampled a round, served by 4
    # SuperNodes: Flower holds 4 nodes, the server samples from the whole population, every
    # message names its client, and each client's state lives in its own file while the run
    # lasts (removed at the end, as federation.client-state = "disk" says).
    run_module(tmp_path, "fedkd", "simulate", "synthetic-1m", "--rounds", "2",
               "--set", "data.num-partitions=10000", "--set", "federation.fraction-train=0.003",
               "--set", "federation.min-replies=20", "--set", "federation.supernodes=4",
               "--set", "federation.min-nodes=4", "--set", "distill.server-steps=20",
               "--output-dir", str(tmp_path), "--name", "pop", "--timeout", "600")
    rows = read_metrics(tmp_path / "pop")
    assert [r["round"] for r in rows] == [1, 2]
    sampled = [c for r in rows for c in r["sampled-clients"]]
    assert [r["sampled"] for r in rows] == [30, 30]
    assert all(r["trained-clients"] == r["sampled-clients"] and r["num-failures"] == 0
               for r in rows)
    assert len(set(sampled)) == 60 and max(sampled) < 10_000 and max(sampled) > 1000
    audit = read_metrics(tmp_path / "pop", "replies.jsonl")
    assert {a["node"] for a in audit} == set(sampled)  # replies by client id...
    assert len({a["flower-node-id"] for a in audit}) == 4  # ...from 4 SuperNodes
    assert all(set(a["arrays"]) <= {"arrays/logits", "arrays/certainty"} for a in audit)
    assert not list((tmp_path / "client-state").glob("run-*/*.npz"))  # removed at the end
