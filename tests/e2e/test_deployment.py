"""A real deployment on 127.0.0.1: SuperLink with TLS and node authentication, SuperNodes.

Marked ``e2e`` (left out of the default run; ``.venv/bin/python -m pytest -m e2e`` runs it).
Every process is started in its own session and stopped, with its children, by PID
(:class:`fedkd.runtime.deploy.LocalFederation`). The runs are small (scikit-learn digits, the MLP, 10
local steps) because each message costs a fresh ClientApp process on every SuperNode.

* FD over TLS with node authentication; an unregistered key is refused.
* The same seed on another federation (other node ids) gives the same metrics, times aside.
* A SuperNode that sends NaN logits: its replies are rejected and counted, the run completes.
* The ServerApp killed after round 1: the resubmitted run resumes at round 2 from the checkpoint
  and ends where an uninterrupted run ends.
* A SuperNode killed mid-run: the run completes with the other two, the drop is counted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkd.runtime import trace
from fedkd.runtime.deploy import LocalFederation, make_node_key
from fedkd.experiments.compare import differences
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

#: Small runs on three SuperNodes; generous timeouts only bound a broken run.
BASE: dict[str, Any] = {
    "data.dataset": "digits", "data.num-partitions": 3, "train.model": "mlp",
    "train.local-steps": 10, "federation.min-nodes": 3, "federation.min-replies": 2,
    "federation.first-round-timeout": 180.0, "federation.round-timeout": 120.0,
    "federation.node-wait-timeout": 120.0,
}


def run_config(fed: LocalFederation, out: Path, name: str, overrides: dict[str, Any]) -> Path:
    """A run-config file: :data:`BASE`, the overrides, outputs in ``out/<name>``."""
    flat = {**BASE, **overrides, "output.dir": str(out), "output.run-name": name}
    return fed.write_run_config(name, flat)


def run_to_completion(fed: LocalFederation, config: Path) -> str:
    """Run to the end; returns the run's log."""
    _, status, log = fed.run(APP_DIR, config)
    assert "[fedkd] done" in log and status == "finished:completed", log[-5000:]
    return log


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """One TLS SuperLink with node authentication and three registered SuperNodes, shared by the
    tests that leave it healthy."""
    # SuperNodes started as `python -m fedkd.runtime.supernode` (Flower's with shorter waits), every
    # process tracing its timing (FEDKD_TRACE)
    fed = LocalFederation(tmp_path_factory.mktemp("federation"), poll_interval=0.2)
    fed.env[trace.ENV] = str(fed.root / "trace.jsonl")
    try:
        fed.superlink()
        fed.add_nodes(3)
        yield fed
    finally:
        fed.stop()


def test_fd_over_tls_with_node_authentication(federation: LocalFederation, tmp_path: Path) -> None:
    # A SuperNode whose key was never registered is refused and exits.
    rogue_key, _ = make_node_key(tmp_path / "keys", "rogue")
    rogue = federation.supernode("rogue", rogue_key, 0, 3)
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate" in (federation.root / "rogue.log").read_text()

    run_to_completion(federation, run_config(federation, tmp_path, "fd",
                                             {"algorithm": "fd", "num-server-rounds": 2}))
    rows = read_metrics(tmp_path / "fd")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["num-failures"] == 0 and len(r["clients"]) == 3 for r in rows)
    assert all(r["personalized-accuracy"] is not None for r in rows)  # evaluated on every node

    # The timing trace: every message the ServerApp pushed (2 rounds x fit and evaluate x 3
    # nodes) was answered, by a ClientApp process and the app in it, in time order.
    events = trace.read(federation.root / "trace.jsonl")
    assert len(events) == 15  # each node: identify once, then fit and evaluate in 2 rounds
    assert sorted(e["server"]["phase"] for e in events.values()).count("identify") == 3
    for event in events.values():
        server, proc = event["server"], event["clientapp"]
        assert server["node"] == proc["node"]
        assert server["phase"] in ("identify", "fit", "evaluate")
        assert proc["start"] <= proc["end"] <= server["reply"]
        if server["phase"] == "identify":
            continue  # answered before anything is loaded: no handler timing
        handler = event["handler"]
        assert server["push"] <= proc["proc_start"] + 0.02 <= proc["start"] + 0.02
        assert proc["start"] <= proc["end"] <= server["reply"]
        assert 0 <= handler["load"] + handler["work"] + handler["save"] <= proc["end"] - proc["start"]
    assert "fedkd.runtime.supernode" in " ".join(federation.nodes["node0"].proc.args)


def test_the_same_seed_gives_the_same_run_on_another_federation(
        federation: LocalFederation, tmp_path: Path) -> None:
    # A second SuperLink draws other node ids; the server samples clients by client id (the
    # partition id here), so the same seed samples the same partitions and computes the same.
    settings = {"algorithm": "fd", "num-server-rounds": 2, "seed": 5,
                "federation.fraction-train": 0.6}  # 2 of the 3 clients a round
    run_to_completion(federation, run_config(federation, tmp_path, "first", settings))
    other = LocalFederation(tmp_path / "other")
    try:
        other.superlink()
        other.add_nodes(3)
        other.wait_online(3)
        run_to_completion(other, run_config(other, tmp_path, "second", settings))
        assert not {n.node_id for n in other.nodes.values()} & {
            n.node_id for n in federation.nodes.values()}
    finally:
        other.stop()
    first, second = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "second")
    assert all(len(r["sampled-clients"]) == 2 for r in first)
    assert differences(first, second) == []


def test_nan_replies_are_rejected_and_counted(federation: LocalFederation, tmp_path: Path) -> None:
    # node0 (partition 0) poisons every reply with NaN logits; the other two carry the run.
    attacker = 0  # the client id the server knows it by: its partition id
    run_to_completion(federation, run_config(federation, tmp_path, "nan", {
        "algorithm": "fd", "num-server-rounds": 1, "attack.partitions": "0", "attack.mode": "nan",
        "federation.evaluate-clients": False}))
    rows = read_metrics(tmp_path / "nan")
    assert [r["round"] for r in rows] == [1]
    assert (rows[0]["rejected-replies"], rows[0]["num-failures"]) == (1, 1)
    reason = rows[0]["failures"]["fit"][str(attacker)]
    assert reason.startswith("rejected:") and "NaN or Inf" in reason
    audit = read_metrics(tmp_path / "nan", "replies.jsonl")
    assert sorted((a["node"] == attacker, a["status"]) for a in audit if a["phase"] == "fit") == [
        (False, "accepted"), (False, "accepted"), (True, "rejected")]
    flower_id = federation.nodes["node0"].node_id
    assert {a["flower-node-id"] for a in audit if a["node"] == attacker} == {flower_id}
    assert "NaN or Inf" in next(a["reason"] for a in audit if a["status"] == "rejected")


def test_a_killed_serverapp_resumes_from_its_checkpoint(federation: LocalFederation,
                                                        tmp_path: Path) -> None:
    # FedAvg: its clients keep no state between rounds, so the resumed run must end where an
    # uninterrupted run (the same round loop and client code, in-process) ends.
    settings = {"algorithm": "fedavg", "num-server-rounds": 2, "federation.evaluate-clients": False}
    config = run_config(federation, tmp_path, "resume", settings)
    run_dir = tmp_path / "resume"
    first_run = federation.submit(APP_DIR, config)
    wait_for(lambda: (run_dir / "checkpoint.pt").exists(), 300, "round 1's checkpoint")
    pids = federation.serverapp_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)  # the server process dies after round 1
    round1 = read_metrics(run_dir)
    assert [r["round"] for r in round1] == [1]
    federation.flwr("stop", str(first_run), federation.CONNECTION)
    wait_for(lambda: federation.status(first_run).startswith("finished"), 120, "the stopped run")

    log = run_to_completion(federation, config)  # resubmitted unchanged: output.resume is on
    assert "resuming after round 1" in log
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0] == round1[0]  # round 1 comes from the first attempt, not a rerun

    from tests.algorithms.inprocess import run_inprocess

    straight, _, _ = run_inprocess({**settings, "train.local-steps": BASE["train.local-steps"]}, 3,
                                   tmp_path / "straight")
    for deployed, local in zip(rows, straight, strict=True):
        # Same training; only the order in which the server sums the replies differs.
        assert deployed["global-loss"] == pytest.approx(local["global-loss"], rel=1e-5)
        assert deployed["global-accuracy"] == pytest.approx(local["global-accuracy"], abs=0.003)


def test_a_killed_supernode_is_counted_and_the_run_goes_on(tmp_path: Path) -> None:
    # Its own federation: one of its SuperNodes dies (SIGKILL) once round 1 is done. After two
    # missed heartbeats (about a minute) the SuperLink answers the dead node's round-2 message
    # with an error (or, past the round timeout, nothing comes: a timeout); either way the round
    # goes on with the other two.
    fed = LocalFederation(tmp_path / "federation")
    try:
        fed.superlink()
        fed.add_nodes(3)
        config = run_config(fed, tmp_path, "drop", {
            "algorithm": "fd", "num-server-rounds": 2, "federation.evaluate-clients": False,
            "federation.round-timeout": 90.0})
        run_id = fed.submit(APP_DIR, config)
        wait_for(lambda: (tmp_path / "drop" / "checkpoint.pt").exists(), 300, "round 1")
        victim = fed.nodes["node2"]
        fed.kill(victim.proc)
        wait_for(lambda: (tmp_path / "drop" / "summary.json").exists(), 240, "the end of the run")
        wait_for(lambda: fed.status(run_id).startswith("finished"), 60, "the run's final status")
        assert fed.status(run_id) == "finished:completed"
    finally:
        fed.stop()
    rows = read_metrics(tmp_path / "drop")
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["num-failures"] == 0
    assert rows[1]["timeouts"] + rows[1]["client-errors"] == 1
    assert list(rows[1]["failures"]["fit"]) == ["2"]  # node2 holds partition 2
    assert rows[1]["trained-clients"] == [0, 1]
    assert sum(1 for c in rows[1]["clients"].values() if c["bytes-up"] > 0) == 2
