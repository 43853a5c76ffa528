"""A run interrupted in the middle of a round and resumed ends where an uninterrupted run ends.

Through the client app's real handler (``client.app._handle``, Flower ``Message`` and
``Context`` objects) and the real round loop: the server stops during round 3 after some clients
already trained in it (their state moved on), a new ServerApp starts from the checkpoint of round
2, and every node comes back with an empty Flower node state, as in a resumed simulation. With
``federation.client-state = "run"`` each client continues from its journaled state
beside the run's outputs, and the replayed round starts from the state before its first attempt.
(``fedkd simulate``, ``fedkd sweep`` and ``make run`` choose ``"run"`` for a simulation on one
machine; Flower's default, node state, is shown below to lose the clients' state.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedkd.algorithms import ALGORITHMS
from fedkd.compose import build_config
from fedkd.config import pyproject_defaults
from fedkd.data.federated import load_federated
from fedkd.experiments.compare import differences
from fedkd.experiments.presets import APP_DIR
from fedkd.protocol import PhaseSpec
from fedkd.results import RunOutput, read_metrics
from server.loop import run_rounds
from tests.algorithms.test_state_dir import NODES, HandlerExchange, fresh_contexts

DSFL = {"algorithm": "dsfl", "aggregation.rule": "era", "distill.public-batch": 60,
        "distill.server-steps": 10, "distill.steps": 3, "train.local-steps": 5}
FD_DP = {"algorithm": "fd", "train.local-steps": 5, "privacy.dp-sgd": True,
         "privacy.noise-multiplier": 1.0, "privacy.output-noise": 2.0}
BASE = {"data.dataset": "digits", "train.model": "mlp", "num-server-rounds": 4,
        "data.num-partitions": 3, "federation.min-nodes": 2, "federation.min-replies": 2,
        "federation.fraction-train": 0.6,  # 2 of 3 a round
        "federation.client-state": "run"}  # what fedkd simulate and make run choose


class Interrupted(Exception):
    """The ServerApp stopped (Ctrl-C, a crash) in the middle of a round."""


class StoppingExchange(HandlerExchange):
    """Stops the server when round ``stop[0]``'s exchange ``stop[1]`` is about to go out."""

    def _send(self, phase: PhaseSpec, requests: dict[int, Any]) -> dict[int, Any]:
        if (self.rnd, self.steps) == self.world["stop"]:
            raise Interrupted(f"stopped in round {self.rnd}, exchange {self.steps}")
        return super()._send(phase, requests)


def run(tmp_path: Path, name: str, settings: dict[str, Any],
        stop: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """One ServerApp run (a fresh algorithm, fresh Flower node state on every node)."""
    flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **BASE, **settings,
            "output.dir": str(tmp_path), "output.run-name": name}
    cfg = build_config(flat)
    data = load_federated(cfg.data)
    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    world: dict[str, Any] = {"flat": flat, "restart-before": (), "replay": (), "stop": stop,
                             "state-root": None}
    world["contexts"] = fresh_contexts(world)
    run_rounds(cfg, algorithm, data, RunOutput.for_config(cfg),
               online_nodes=lambda rnd: list(NODES),
               make_exchange=lambda rnd, *a, **k: StoppingExchange(world, rnd, *a, **k))
    return read_metrics(tmp_path / name)


@pytest.mark.parametrize("settings", [DSFL, FD_DP], ids=["dsfl", "fd-dp"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_ends(
        settings: dict[str, Any], tmp_path: Path) -> None:
    straight = run(tmp_path, "straight", settings)
    with pytest.raises(Interrupted):  # round 3's first exchange went out, its second did not
        run(tmp_path, "resumed", settings, stop=(3, 2))
    assert len(read_metrics(tmp_path / "resumed")) == 2
    resumed = run(tmp_path, "resumed", settings)
    if "privacy.dp-sgd" not in settings:
        assert differences(straight, resumed) == []
        return
    # Under DP, round 3's first releases are charged again when it is replayed (they may have
    # left the clients before the stop): every number but the epsilons is the same, and the
    # epsilons of the clients that trained in the interrupted round are higher.
    def without_epsilons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in r.items() if not k.startswith("epsilon")},
                 "clients": {c: {k: v for k, v in m.items() if k != "epsilon"}
                             for c, m in r["clients"].items()}} for r in rows]

    assert differences(without_epsilons(straight), without_epsilons(resumed)) == []
    assert [r["epsilon-max"] for r in resumed[:2]] == [r["epsilon-max"] for r in straight[:2]]
    assert resumed[-1]["epsilon-max"] > straight[-1]["epsilon-max"]


def test_without_run_state_the_resumed_clients_start_over(tmp_path: Path) -> None:
    """The check above can fail: with Flower's node state the clients' state is lost."""
    node = {**DSFL, "federation.client-state": "node"}
    straight = run(tmp_path, "straight", node)
    with pytest.raises(Interrupted):
        run(tmp_path, "resumed", node, stop=(3, 2))
    assert differences(straight, run(tmp_path, "resumed", node)) != []
