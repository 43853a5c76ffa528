"""The one round loop every algorithm runs through.

Per round: wait for enough online nodes, sample, let the algorithm run its phases through a
:class:`FlowerExchange` (which sends, waits with a timeout, validates and counts), evaluate the
server model on the global test set and every online client on its local test split, append a
row to ``metrics.jsonl``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedkd.algorithms import Algorithm, ExchangeResult, QuorumError
from fedkd.algorithms.base import EVALUATE_PHASE
from fedkd.config import RunConfig
from fedkd.data.federated import FederatedData
from fedkd.protocol import PHASE_KEY, InvalidReply, Payload, PhaseSpec, content_nbytes, encode, validate_reply
from fedkd.results import RunOutput
from fedkd.training import evaluate


class NotEnoughNodes(RuntimeError):
    """Fewer than ``federation.min-nodes`` nodes came online in time."""


@dataclass
class Traffic:
    """Bytes sent to and received from each node during one round (all phases)."""

    down: Counter[int] = field(default_factory=Counter)
    up: Counter[int] = field(default_factory=Counter)


class FlowerExchange:
    """Sends one message per node for a phase and returns the replies that pass validation.

    Failures (client errors, timeouts, invalid replies) are logged with the node and the reason,
    recorded in :attr:`failures`, and skipped. Fewer than ``min_replies`` valid replies raise
    :class:`QuorumError`.
    """

    def __init__(self, grid: Grid, rnd: int, timeout: float, min_replies: int, traffic: Traffic) -> None:
        self.grid = grid
        self.rnd = rnd
        self.timeout = timeout
        self.min_replies = min_replies
        self.traffic = traffic
        self.failures: dict[str, dict[int, str]] = {}

    def __call__(
        self, phase: PhaseSpec, requests: Mapping[int, Payload], *, min_replies: int | None = None
    ) -> ExchangeResult:
        messages = []
        for node, payload in requests.items():
            content = encode(Payload(
                arrays=payload.arrays,
                config={**payload.config, PHASE_KEY: phase.name},
                metrics=payload.metrics,
            ))
            self.traffic.down[node] += content_nbytes(content)
            messages.append(Message(
                content=content, dst_node_id=node, message_type=phase.message_type,
                group_id=str(self.rnd),
            ))
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        target = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}

        valid: dict[int, Payload] = {}
        failures: dict[int, str] = {}
        for reply in replies:
            node = target.get(reply.metadata.reply_to_message_id)
            if node is None or node in valid or node in failures:
                continue  # not a reply to this exchange, or a duplicate
            if reply.has_error():
                failures[node] = f"client error {reply.error.code}: {reply.error.reason}"
                continue
            self.traffic.up[node] += content_nbytes(reply.content)
            try:
                valid[node] = validate_reply(reply.content, phase)
            except InvalidReply as err:
                failures[node] = f"invalid reply: {err}"
        for node in requests:
            if node not in valid and node not in failures:
                failures[node] = f"no reply within {self.timeout:g} s"
        for node, reason in failures.items():
            log(WARNING, "round %d, phase %s: node %d skipped: %s", self.rnd, phase.name, node, reason[:500])
        self.failures.setdefault(phase.name, {}).update(failures)

        needed = self.min_replies if min_replies is None else min_replies
        if len(valid) < needed:
            raise QuorumError(
                f"round {self.rnd}, phase {phase.name!r}: only {len(valid)} valid replies of "
                f"{len(requests)} (federation.min-replies = {needed}); failures: "
                + "; ".join(f"node {n}: {r[:200]}" for n, r in failures.items())
            )
        return ExchangeResult(replies=valid, failures=failures)


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Online node ids, sorted, once at least ``min_nodes`` are online."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() >= deadline:
            raise NotEnoughNodes(
                f"only {len(nodes)} nodes online after {timeout:g} s; federation.min-nodes = {min_nodes}"
            )
        time.sleep(poll)


def sample_nodes(nodes: Sequence[int], fraction: float, rng: np.random.Generator) -> list[int]:
    """A seeded sample of ``ceil(fraction * len(nodes))`` nodes (at least one), sorted."""
    k = max(1, int(np.ceil(fraction * len(nodes))))
    if k >= len(nodes):
        return list(nodes)
    return sorted(int(n) for n in rng.choice(np.asarray(nodes), size=k, replace=False))


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_rounds(
    grid: Grid, cfg: RunConfig, algorithm: Algorithm, data: FederatedData, output: RunOutput
) -> dict[str, Any]:
    """Run every round; returns the run summary (also written to ``summary.json``)."""
    fed = cfg.federation
    algorithm.setup_server(data)
    rng = np.random.default_rng([cfg.seed, 0x5A3F])
    rows: list[dict[str, Any]] = []
    run_start = time.monotonic()
    for rnd in range(1, cfg.num_server_rounds + 1):
        start = time.monotonic()
        timeout = fed.first_round_timeout if rnd == 1 else fed.round_timeout
        online = wait_for_nodes(grid, fed.min_nodes, fed.node_wait_timeout)
        sampled = sample_nodes(online, fed.fraction_train, rng)
        traffic = Traffic()
        exchange = FlowerExchange(grid, rnd, timeout, fed.min_replies, traffic)
        row: dict[str, Any] = {"round": rnd, "algorithm": cfg.algorithm, "sampled": len(sampled)}
        row.update(algorithm.run_round(rnd, sampled, exchange))

        model = algorithm.global_model()
        if model is not None:
            stats = evaluate(model, data.global_test, batch_size=cfg.train.eval_batch_size)
            row.update({"global-accuracy": stats.accuracy, "global-loss": stats.loss})

        clients: dict[str, dict[str, float]] = {}
        if fed.evaluate_clients:
            request = algorithm.evaluation_request(rnd)
            result = exchange(EVALUATE_PHASE, {n: request for n in online}, min_replies=0)
            clients = {str(n): dict(p.metrics) for n, p in sorted(result.replies.items())}
        evaluated = [c for c in clients.values() if c["num-examples"] > 0]
        n_total = sum(c["num-examples"] for c in evaluated)
        row.update({
            "personalized-accuracy": _mean([c["accuracy"] for c in evaluated]),
            "personalized-accuracy-weighted": (
                sum(c["accuracy"] * c["num-examples"] for c in evaluated) / n_total if n_total else None
            ),
            "clients": clients,
            "bytes-down": sum(traffic.down.values()),
            "bytes-up": sum(traffic.up.values()),
            "bytes-down-per-client": _mean(list(traffic.down.values())),
            "bytes-up-per-client": _mean(list(traffic.up.values())),
            "failures": {ph: {str(n): r for n, r in f.items()} for ph, f in exchange.failures.items() if f},
            "num-failures": sum(len(f) for f in exchange.failures.values()),
            "wall-time-s": time.monotonic() - start,
        })
        output.append_metrics(row)
        rows.append(row)
        log(INFO, "%s", format_progress(row, cfg.num_server_rounds))

    summary = {
        "algorithm": cfg.algorithm,
        "shares-weights": type(algorithm).shares_weights,
        "rounds": len(rows),
        "final": {k: v for k, v in rows[-1].items() if k not in ("clients", "failures")},
        "best-global-accuracy": max(
            (r["global-accuracy"] for r in rows if r.get("global-accuracy") is not None), default=None
        ),
        "wall-time-s": time.monotonic() - run_start,
        "output-dir": str(output.directory),
    }
    output.write_summary(summary)
    return summary


def format_progress(row: Mapping[str, Any], rounds: int) -> str:
    """One human-readable line per round."""
    parts = [f"[fedkd] round {row['round']}/{rounds}"]
    if row.get("global-accuracy") is not None:
        parts.append(f"global acc {row['global-accuracy']:.4f} loss {row['global-loss']:.4f}")
    if row.get("personalized-accuracy") is not None:
        parts.append(f"personal acc {row['personalized-accuracy']:.4f}")
    parts.append(f"up {row['bytes-up'] / 1e6:.2f} MB down {row['bytes-down'] / 1e6:.2f} MB")
    if row["num-failures"]:
        parts.append(f"failures {row['num-failures']}")
    parts.append(f"{row['wall-time-s']:.1f} s")
    return " | ".join(parts)
