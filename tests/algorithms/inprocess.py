"""Run the real round loop and the real client half in one process, without Flower's transport.

The server loop (`server.loop.run_rounds`), the contract check, the codecs and the client app's
`answer` are the production code; only the message delivery is a direct function call. Used by
the algorithm tests, which need many short runs; the integration tests cover the real Flower
simulation engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from client.app import answer, client_context
from fedkd.algorithms import ALGORITHMS, ClientContext
from fedkd.compose import build_config
from fedkd.config import RunConfig
from fedkd.data.federated import load_federated
from fedkd.protocol import PhaseSpec
from fedkd.results import read_metrics
from fedkd.results import RunOutput
from server.loop import Failure, RoundExchange, run_rounds

FIRST_NODE_ID = 1000


class InProcessExchange(RoundExchange):
    """Delivers each request by calling the client app's `answer` directly."""

    def __init__(self, clients: dict[int, ClientContext], *args: Any,
                 dropped: frozenset[int] = frozenset(),
                 phase_dropped: dict[str, frozenset[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients = clients
        self.dropped = dropped
        self.phase_dropped = phase_dropped or {}

    def _send(self, phase: PhaseSpec, requests: dict[int, RecordDict]) -> dict[int, RecordDict | Failure]:
        out: dict[int, RecordDict | Failure] = {}
        for node, content in requests.items():
            if node in self.dropped | self.phase_dropped.get(phase.name, frozenset()):
                continue  # gone: no reply at all, as after a crash
            try:
                out[node] = answer(content, self.clients[node])
            except Exception as err:  # a client that raises is a client error, as in Flower
                out[node] = Failure("client-error", f"{type(err).__name__}: {err}")
        return out


def run_inprocess(
    overrides: dict[str, Any], num_clients: int, out_dir: Path,
    node_configs: dict[int, dict[str, Any]] | None = None,
    dropouts: dict[int, set[int]] | None = None,
    phase_dropouts: dict[str, set[int]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Run a whole simulation in-process; returns (metrics rows, audit records, run directory).

    ``dropouts`` maps a round to the partition ids that do not answer in that round;
    ``phase_dropouts`` a phase name to the partition ids that never answer that phase.
    """
    flat = {"data.dataset": "digits", "train.model": "mlp", "train.local-steps": 10,
            "num-server-rounds": 2, **overrides,
            "data.num-partitions": num_clients, "output.dir": str(out_dir), "output.run-name": "run"}
    cfg = build_config(flat)
    data = load_federated(cfg.data)
    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    clients = {}
    for pid in range(num_clients):
        node = FIRST_NODE_ID + pid
        node_cfg = {"partition-id": pid, "num-partitions": num_clients,
                    **(node_configs or {}).get(pid, {})}
        clients[node] = client_context(cfg, node, node_cfg, {})
    output = RunOutput.for_config(cfg)
    run_rounds(
        cfg, algorithm, data, output,
        online_nodes=lambda rnd: sorted(clients),
        make_exchange=lambda rnd, *args, **kwargs: InProcessExchange(
            clients, rnd, *args,
            dropped=frozenset(FIRST_NODE_ID + p for p in (dropouts or {}).get(rnd, ())),
            phase_dropped={name: frozenset(FIRST_NODE_ID + p for p in parts)
                           for name, parts in (phase_dropouts or {}).items()}, **kwargs),
    )
    audit = read_metrics(output.directory, "replies.jsonl") if cfg.output.audit_replies else []
    return read_metrics(output.directory), audit, output.directory
