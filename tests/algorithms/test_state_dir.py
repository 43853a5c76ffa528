"""Node config ``state-dir`` through the client app's real message handler (``client.app._handle``,
with Flower ``Message`` and ``Context`` objects) and the real round loop: a restarted SuperNode
(a fresh ``Context``, Flower's node state gone) continues from its state on disk, and a replayed
message (a resumed server sends it again) gives what the first attempt gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import time

from flwr.app import Context, Message, Metadata, RecordDict

from client.app import _handle
from fedkd.algorithms import ALGORITHMS
from fedkd.compose import build_config
from fedkd.config import pyproject_defaults
from fedkd.data.federated import load_federated
from fedkd.experiments.presets import APP_DIR
from fedkd.protocol import PhaseSpec
from fedkd.results import RunOutput, read_metrics
from server.loop import Failure, RoundExchange, run_rounds

NODES = (11, 12, 13)
SETTINGS = {"algorithm": "fd", "data.dataset": "digits", "train.model": "mlp",
            "train.local-steps": 5, "num-server-rounds": 3, "data.num-partitions": 3,
            "federation.min-nodes": 3, "federation.min-replies": 3,
            # Flower's node state, so that a restarted SuperNode without a state-dir loses its own
            # (the default, "run", keeps every client's state beside the outputs: see
            # test_simulated_clients_resume_exactly_from_the_run_directory)
            "federation.client-state": "node",
            "output.audit-replies": False, "output.checkpoint": False}


class HandlerExchange(RoundExchange):
    """Delivers each request through ``client.app._handle`` as Flower's runtime would."""

    def __init__(self, world: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world = world

    def _send(self, phase: PhaseSpec, requests: dict[int, RecordDict]) -> dict[int, RecordDict | Failure]:
        kind = {"evaluate": "evaluate"}.get(phase.name, "train")
        if self.rnd in self.world["restart-before"] and self.steps == 1:
            self.world["contexts"] = fresh_contexts(self.world)  # every SuperNode restarted
        out: dict[int, RecordDict | Failure] = {}
        for node, content in requests.items():
            msg = Message(content=content, metadata=Metadata(
                run_id=7, message_id=f"m{self.rnd}-{self.steps}-{node}", src_node_id=1,
                dst_node_id=node, reply_to_message_id="", group_id="", created_at=time.time(),
                ttl=3600.0, message_type=kind))
            handle = self.world.get("handle", _handle)
            if (self.rnd, self.steps) in self.world["replay"]:  # a first attempt, lost
                handle(msg, self.world["contexts"][node])
            out[node] = handle(msg, self.world["contexts"][node]).content
        return out


def fresh_contexts(world: dict[str, Any]) -> dict[int, Context]:
    return {node: Context(run_id=7, node_id=node, node_config={
        "partition-id": i, "num-partitions": 3, **world.get("node-config", {}),
        **({"state-dir": str(world["state-root"] / f"node{i}")} if world["state-root"] else {})},
        state=RecordDict(), run_config=world["flat"]) for i, node in enumerate(NODES)}


def run(tmp_path: Path, name: str, state_dir: bool, restart_before: tuple[int, ...] = (),
        replay: tuple[tuple[int, int], ...] = (), settings: dict[str, Any] | None = None,
        **world_extra: Any) -> list[dict[str, Any]]:
    flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **SETTINGS, **(settings or {}),
            "output.dir": str(tmp_path), "output.run-name": name}
    cfg = build_config(flat)
    data = load_federated(cfg.data)
    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    world: dict[str, Any] = {"flat": flat, "restart-before": restart_before, "replay": replay,
                             "state-root": tmp_path / f"{name}-state" if state_dir else None,
                             **world_extra}
    world["contexts"] = fresh_contexts(world)
    run_rounds(cfg, algorithm, data, RunOutput.for_config(cfg), online_nodes=lambda rnd: list(NODES),
               make_exchange=lambda rnd, *a, **k: HandlerExchange(world, rnd, *a, **k))
    return read_metrics(tmp_path / name)


def scores(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["personalized-accuracy"], r["train-loss"]) for r in rows]


def test_restarted_nodes_continue_from_their_state_dir_and_replays_repeat_the_first_attempt(
        tmp_path: Path) -> None:
    straight = scores(run(tmp_path, "straight", state_dir=False))
    # Every SuperNode restarts before rounds 2 and 3: with state-dir nothing is lost.
    assert scores(run(tmp_path, "restarted", state_dir=True, restart_before=(2, 3))) == straight
    # Without it, the restarted clients start over (the check above can fail).
    assert scores(run(tmp_path, "forgetful", state_dir=False, restart_before=(2, 3))) != straight
    # Round 3's first exchange (FD's fit) reaches every client twice: the replay starts from the
    # state before the first attempt, so the run ends where the straight one does.
    assert scores(run(tmp_path, "replayed", state_dir=True, replay=((3, 1), (2, 2)))) == straight


def test_simulated_clients_resume_exactly_from_the_run_directory(tmp_path: Path) -> None:
    """``federation.client-state = "run"`` (the default): restarted nodes without a state-dir,
    as in a resumed simulation, continue from their state beside the run's outputs, and a
    replayed exchange starts from the state before its first attempt."""
    straight = scores(run(tmp_path, "straight", state_dir=False))
    in_run_dir = {"federation.client-state": "run"}
    assert scores(run(tmp_path, "restarted", state_dir=False, restart_before=(2, 3),
                      settings=in_run_dir)) == straight
    assert scores(run(tmp_path, "replayed", state_dir=False, replay=((3, 1), (2, 2)),
                      settings=in_run_dir)) == straight
    kept = sorted(p.name for p in (tmp_path / "replayed" / "client-state").iterdir())
    assert kept == ["client-0", "client-1", "client-2"]
