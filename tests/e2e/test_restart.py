"""Restarts without loss, on a real deployment on 127.0.0.1 (TLS SuperLink, node authentication,
three SuperNodes with node config ``state-dir``).

Marked ``e2e``. FD on scikit-learn's digits with DP-SGD: its clients keep state between rounds
(personal models, the privacy ledger), which is what a restart used to lose.

* A SuperNode killed with SIGKILL after round 2 and started again: its clients' epsilon goes on
  from where it was, never lower.
* The SuperLink killed with SIGKILL after round 2, started again on its database, the run
  resubmitted: it resumes after its checkpoint and ends where an uninterrupted run ends
  (personalized accuracy and train loss within 0.5 points / 1%). These two runs are without DP:
  a device's ledger (``state-dir/privacy.npz``) spans its runs, so a second DP run would start
  with the first one's spend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedkd.runtime.deploy import LocalFederation
from fedkd.results import read_metrics
from tests.e2e.test_deployment import APP_DIR, run_config, run_to_completion, wait_for

pytestmark = pytest.mark.e2e

SETTINGS: dict[str, Any] = {
    "algorithm": "fd", "num-server-rounds": 4, "federation.min-replies": 2,
    "privacy.dp-sgd": True, "privacy.target-epsilon": 30.0, "privacy.max-grad-norm": 1.0,
    "privacy.output-noise": 1.0,
}


def node_epsilons(rows: list[dict[str, Any]], client: int) -> list[tuple[int, float]]:
    """``client``'s epsilon per round (metrics key clients by client id: the partition id)."""
    return [(r["round"], float(r["clients"][str(client)]["epsilon"])) for r in rows
            if "epsilon" in r["clients"].get(str(client), {})]


def rounds_done(run_dir: Path, fed: LocalFederation, run_id: int) -> int:
    """Rounds finished so far; a run that ended early fails the test at once, with its log."""
    done = len(read_metrics(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0
    status = fed.status(run_id)
    if status.startswith("finished") and done < SETTINGS["num-server-rounds"]:
        raise AssertionError(f"run {run_id} ended ({status}) after {done} rounds:\n"
                             + fed.log(run_id)[-4000:])
    return done


def test_a_restarted_supernode_and_a_restarted_superlink_lose_nothing(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "federation")
    state = f"state-dir='{tmp_path / 'devices' / '{name}'}'"  # a TOML (literal) string
    try:
        fed.superlink()
        fed.add_nodes(3, state)
        fed.wait_online(3)

        # --- a SuperNode dies after round 2 and comes back -------------------------------
        config = run_config(fed, tmp_path, "node-restart", SETTINGS)
        run_dir = tmp_path / "node-restart"
        run_id = fed.submit(APP_DIR, config)
        wait_for(lambda: rounds_done(run_dir, fed, run_id) >= 2, 600, "round 2")
        victim = fed.nodes["node2"]
        assert victim.node_id is not None
        before = node_epsilons(read_metrics(run_dir), 2)  # node2 holds partition 2
        fed.kill(victim.proc)
        # The SuperLink refuses to activate a node id it still lists online ("Failed to activate
        # SuperNode"): the device comes back once its old process is marked offline (two missed
        # heartbeats, about a minute), as a rebooted device would.
        wait_for(lambda: victim.node_id not in fed.online_nodes(), 240, "node2 to be offline")
        fed.restart_node("node2", state)
        wait_for(lambda: fed.status(run_id).startswith("finished"), 900, "the end of the run")
        assert fed.status(run_id) == "finished:completed"
        after = node_epsilons(read_metrics(run_dir), 2)
        assert before and after[-1][0] == 4, after
        # the ledger went on: never below what it was before the kill, and it grew
        assert all(eps >= before[-1][1] for rnd, eps in after if rnd > before[-1][0])
        assert after[-1][1] > before[-1][1]
        fed.wait_online(3)

        # --- the SuperLink dies after round 2, restarts on its database, the run is resubmitted
        plain = {**SETTINGS, "privacy.dp-sgd": False, "privacy.output-noise": 0.0}
        config = run_config(fed, tmp_path, "link-restart", plain)
        run_dir = tmp_path / "link-restart"
        run_id = fed.submit(APP_DIR, config)
        wait_for(lambda: rounds_done(run_dir, fed, run_id) >= 2, 600, "round 2")
        assert fed.superlink_proc is not None
        fed.kill(fed.superlink_proc)
        done_before = len(read_metrics(run_dir))
        fed.superlink()
        fed.wait_online(3, timeout=180)
        log = run_to_completion(fed, config)  # resubmitted unchanged: output.resume is on
        assert f"resuming after round {done_before}" in log
        resumed = read_metrics(run_dir)
        assert [r["round"] for r in resumed] == [1, 2, 3, 4]

        # --- the same run, uninterrupted --------------------------------------------------
        config = run_config(fed, tmp_path, "straight", plain)
        run_to_completion(fed, config)
        straight = read_metrics(tmp_path / "straight")
    finally:
        fed.stop()
    assert resumed[-1]["personalized-accuracy"] == pytest.approx(
        straight[-1]["personalized-accuracy"], abs=0.005)
    assert resumed[-1]["train-loss"] == pytest.approx(straight[-1]["train-loss"], rel=0.01)
    # the devices' state stayed on disk, one folder per run name
    assert {p.name for p in (tmp_path / "devices" / "node0" / "runs").iterdir()} == {
        "node-restart", "link-restart", "straight"}
    assert (tmp_path / "devices" / "node0" / "privacy.npz").exists()
