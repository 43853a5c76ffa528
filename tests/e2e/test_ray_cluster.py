"""A real two-node Ray cluster on 127.0.0.1 runs a preset through ``fedkd simulate --ray-address``.

Marked ``e2e`` (left out of the default run; ``make test-e2e`` runs it). The head and the worker
are two ``ray start --block`` processes, each in its own session with one CPU, stopped with their
children by PID. The preset (``tiny``: FedAvg on digits, 3 clients) runs once on the cluster and
once on a private Ray instance with the same seed; the test checks that client actors ran on both
nodes and that the final metrics are the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedkd.runtime.launch import bin_path, free_port, offline_env, stop_process
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

#: Asks the cluster (as a Ray driver) for its live nodes and the nodes of the ClientApp actors
#: that ever ran on it (Ray's GCS keeps finished actors' records).
PROBE = """
import json, ray
import ray._private.state as state
ray.init(address="{address}", logging_level="ERROR", log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
actors = [a for a in state.actors().values() if "ClientAppActor" in a.get("ActorClassName", "")]
print(json.dumps({{"nodes": nodes, "actor-nodes": sorted({{a["Address"]["NodeID"] for a in actors}})}}))
"""


def probe(address: str, env: dict[str, str]) -> dict[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(address=address)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and one worker node on 127.0.0.1 (1 CPU each); yields (address, environment)."""
    env = offline_env(tmp_path / "flwr-home")
    env.pop("RAY_ADDRESS", None)
    # Ray's unix sockets live under the temp dir: keep its path short (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="fkr-", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
              "--disable-usage-stats"]
    logs = [(tmp_path / f"ray-{role}.log").open("wb") for role in ("head", "worker")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [bin_path("ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
             "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))
        deadline = time.monotonic() + 120
        started_worker = False
        while True:
            if any(p.poll() is not None for p in procs):
                raise AssertionError("a ray start process exited: "
                                     + (tmp_path / "ray-head.log").read_text()[-3000:]
                                     + (tmp_path / "ray-worker.log").read_text()[-3000:])
            try:
                nodes = probe(address, env)["nodes"]
            except AssertionError:
                nodes = []
            if not started_worker and nodes:
                procs.append(subprocess.Popen(
                    [bin_path("ray"), "start", f"--address={address}",
                     f"--dashboard-agent-listen-port={free_port()}", *common],
                    env=env, stdout=logs[1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
                started_worker = True
            if len(nodes) == 2:
                break
            assert time.monotonic() < deadline, "the two-node Ray cluster did not come up"
            time.sleep(1.0)
        yield address, env
    finally:
        for proc in reversed(procs):  # the worker first, then the head; each with its children
            stop_process(proc, grace=20.0)
        for log in logs:
            log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def simulate(out: Path, name: str, env: dict[str, str], *extra: str) -> list[dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd", "simulate", "tiny", "--seed", "3", "--name", name,
         "--output-dir", str(out), *extra],
        cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_metrics(out / name)


def test_a_two_node_cluster_runs_a_preset_as_one_machine_does(
        ray_cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = ray_cluster
    on_cluster = simulate(tmp_path, "cluster", env, "--profile", "cluster", "--ray-address", address)
    seen = probe(address, env)
    # Each node has one CPU and each client actor takes one: both nodes ran clients.
    assert len(seen["nodes"]) == 2 and sorted(seen["actor-nodes"]) == sorted(seen["nodes"])
    record = json.loads((tmp_path / "cluster" / "fedkd-run.json").read_text())
    assert record["ray-address"] == address
    assert "init-args-num-cpus" not in record["federation-config"]

    alone = simulate(tmp_path, "alone", env)
    assert len(on_cluster) == len(alone) == 2
    for key in ("global-accuracy", "global-loss", "personalized-accuracy", "train-loss"):
        assert on_cluster[-1][key] == pytest.approx(alone[-1][key], abs=1e-6), key

