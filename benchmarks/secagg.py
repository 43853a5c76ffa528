"""Secure aggregation's cost per round against the plain round: time and bytes, 10 and 100 clients.

One logit-sharing round's aggregation: every client holds logits on ``N`` announced samples of
``C`` classes (the ``mean`` rule: ``N * C`` values each). Plain: each client uploads its logits
(float32) and the server runs the rule. Secure (SecAgg+, :mod:`fedkd.secagg`): each client adds
its public keys to that reply, then the protocol's three exchanges run and the server
reconstructs the sum. Clients and server run in this one process, one after the other, with the
real keys, shares, masks and the real message codec (every request and reply is encoded as the
Flower record it would travel as, and its bytes counted with Flower's own ``count_bytes``).

Reported per configuration: bytes up and down per client per round (all phases), the client's
CPU time per round (mean over clients), the server's CPU time per round, and their ratios to the
plain round. Cost grows with the neighbours each client has: all ``K - 1`` of them in SecAgg
(``neighbours`` 0), ``k`` in SecAgg+; the row with a dropout has one client lost after sharing
keys (its masks are removed from its neighbours' inputs).

Run (what produced ``benchmarks/results/secagg.md``, and ``secagg_cohort.md`` at cohort sizes)::

    .venv/bin/python -m benchmarks.secagg
    .venv/bin/python -m benchmarks.secagg --samples 200 --configs 100:16:0 500:16:0 1000:16:0 \
        1000:16:1 --name secagg_cohort
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT
from fedkd.experiments.report import table_lines
from fedkd.algorithms.base import ExchangeResult
from fedkd.aggregation import build_aggregator
from fedkd.protocol import Payload, PhaseSpec, content_nbytes, encode
from fedkd.secagg import client as secagg_client
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.field import scale_for
from fedkd.secagg.server import secure_sum


class Clients:
    """``K`` clients answering in-process; counts every message's bytes and each side's time."""

    def __init__(self, k: int, n: int, c: int, options: SecAggConfig, lost: set[int]) -> None:
        rng = np.random.default_rng(0)
        self.nodes = [1_000 + 17 * i for i in range(k)]
        self.options, self.lost = options, lost
        self.logits = {u: rng.normal(0, 3, (n, c)).astype(np.float32) for u in self.nodes}
        self.rule = build_aggregator("mean")
        self.states: dict[int, dict[str, np.ndarray]] = {u: {} for u in self.nodes}
        self.up = dict.fromkeys(self.nodes, 0)
        self.down = dict.fromkeys(self.nodes, 0)
        self.client_s = 0.0

    def advertise(self, rnd: int) -> dict[int, Payload]:
        replies = {}
        for u in self.nodes:
            start = time.process_time()
            parts = self.rule.summands(self.logits[u])
            arrays = secagg_client.advertise(self.states[u], parts["num"].reshape(-1), rnd)
            self.client_s += time.process_time() - start
            replies[u] = Payload(arrays=arrays, metrics={"num-examples": 1})
            self.up[u] += content_nbytes(encode(replies[u]))
        return replies

    def __call__(self, phase: PhaseSpec, requests: dict[int, Payload]) -> ExchangeResult:
        replies = {}
        for u, request in requests.items():
            self.down[u] += content_nbytes(encode(request))
            if phase.name == secagg_client.MASK and u in self.lost:
                continue
            start = time.process_time()
            reply = secagg_client.answer(phase.name, request, self.states[u], u, self.options)
            self.client_s += time.process_time() - start
            self.up[u] += content_nbytes(encode(reply))
            replies[u] = reply
        return ExchangeResult(replies=replies)


def plain_round(k: int, n: int, c: int) -> dict[str, float]:
    """Logits up, the rule on the server."""
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 3, (n, c)).astype(np.float32) for _ in range(k)]
    up = content_nbytes(encode(Payload(arrays={"logits": logits[0]}, metrics={"num-examples": 1})))
    start = time.process_time()
    build_aggregator("mean")(np.stack(logits))
    return {"bytes-up": up, "bytes-down": 0, "client-s": 0.0,
            "server-s": time.process_time() - start}


def secure_round(k: int, n: int, c: int, neighbours: int, lost: int) -> dict[str, float]:
    options = SecAggConfig(neighbours=neighbours)
    clients = Clients(k, n, c, options, lost=set() if not lost else {1_000 + 17})
    start = time.process_time()
    advertised = clients.advertise(rnd=1)
    result = secure_sum(clients, 1, advertised, n * c, 1.0, options, np.random.default_rng(0))
    total = time.process_time() - start
    kept = [u for u in clients.nodes if u in result.survivors]
    exact = np.sum([clients.rule.summands(clients.logits[u])["num"] for u in kept], axis=0)
    # each input is rounded (stochastically) to the grid 1 / scale: the sum is exact up to that
    grid = 1.0 / scale_for(len(kept), 1.0)
    error = float(np.abs(result.total.reshape(n, c) - exact).max())
    assert error < len(kept) * grid, f"the secure sum is wrong ({error:g} off)"
    return {"bytes-up": float(np.mean(list(clients.up.values()))),
            "bytes-down": float(np.mean(list(clients.down.values()))),
            "client-s": clients.client_s / k, "server-s": total - clients.client_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="announced samples N")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--configs", nargs="+", metavar="K:NEIGHBOURS:LOST",
                        default=["10:0:0", "10:0:1", "100:0:0", "100:0:1", "100:14:0", "100:14:1"],
                        help="clients, neighbours (0: all) and clients lost after sharing keys")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="secagg", help="results file stem")
    args = parser.parse_args()
    n, c = args.samples, args.classes
    configs = [tuple(int(v) for v in spec.split(":")) for spec in args.configs]
    rows: list[dict[str, Any]] = []
    for k, neighbours, lost in configs:
        plain = plain_round(k, n, c)
        secure = secure_round(k, n, c, neighbours, lost)
        row = {"clients": k, "neighbours": neighbours or k - 1, "lost": lost, "plain": plain,
               "secure": secure,
               "bytes-up-ratio": secure["bytes-up"] / plain["bytes-up"],
               "client-s": secure["client-s"], "server-s": secure["server-s"]}
        rows.append(row)
        print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "`.venv/bin/python -m benchmarks.secagg" + (
        f" --samples {n} --configs {' '.join(args.configs)} --name {args.name}`"
        if args.name != "secagg" else "`")
    (out / f"{args.name}.json").write_text(json.dumps({"samples": n, "classes": c, "rows": rows,
                                                        "command": command}, indent=1))
    lines = [
        f"Secure aggregation (SecAgg+) against the plain round: one round's logits on {n} samples "
        f"x {c} classes ({n * c:,} values per client, `mean` rule), clients and server in one "
        "process (CPU time, this 2-core machine), bytes as Flower records. Command: "
        f"{command}",
        "",
        *table_lines(
            ["clients", "neighbours", "lost after sharing keys", "bytes up / client (plain)",
             "bytes up / client (secure)", "up ratio", "bytes down / client (secure)",
             "client CPU s (secure)", "server CPU s (plain)", "server CPU s (secure)"],
            ([r["clients"], r["neighbours"], r["lost"], f"{r['plain']['bytes-up']:,.0f}",
              f"{r['secure']['bytes-up']:,.0f}", f"{r['bytes-up-ratio']:.2f}",
              f"{r['secure']['bytes-down']:,.0f}", f"{r['client-s']:.3f}",
              f"{r['plain']['server-s']:.4f}", f"{r['server-s']:.2f}"] for r in rows)),
    ]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
