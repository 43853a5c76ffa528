"""Logit sharing against weight sharing and local training, through the real Flower simulation.

Every run uses the same data (Fashion-MNIST, Dirichlet alpha over 20 clients), the same rounds,
local steps and seed; only the algorithm (and, for one run, the client architectures) changes.
Each run is a separate ``python -m simulations.run`` (own SuperLink, real Ray backend); the table
is built from the runs' own ``metrics.jsonl`` files.

Run (about 30-40 minutes on 2 CPU cores with the defaults)::

    .venv/bin/python -m benchmarks.logit_sharing [--rounds 10] [--clients 20] [--alpha 0.1]

Writes ``benchmarks/results/logit_sharing.{json,md}`` and prints the table: final global accuracy
(server model on the official test set; FD and local have none), final mean personalized accuracy
(each client's model on its local test split), bytes uploaded per client per round (mean over
rounds), and wall time per round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation
from fedkd.experiments.report import table_lines

#: name -> run-config overrides on top of the shared settings.
RUNS: dict[str, dict[str, Any]] = {
    "fedavg (weights)": {"algorithm": "fedavg"},
    "fd (mean)": {"algorithm": "fd"},
    "fedmd (mean)": {"algorithm": "fedmd", "aggregation.rule": "mean"},
    "fedmd (era)": {"algorithm": "fedmd", "aggregation.rule": "era"},
    "local only": {"algorithm": "local"},
    "fedmd (mean), mixed cnn/mlp/resnet": {
        "algorithm": "fedmd", "aggregation.rule": "mean", "train.client-models": "cnn,mlp,resnet",
    },
}


def run_one(name: str, overrides: dict[str, Any], args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    settings = {
        "data.alpha": args.alpha, "train.model": "cnn", "train.local-steps": args.local_steps,
        "seed": args.seed, "data.seed": args.seed, "federation.min-nodes": args.clients,
        "federation.min-replies": max(1, args.clients // 2), **overrides,
    }
    return run_simulation(name, settings, clients=args.clients, rounds=args.rounds, out_dir=out_dir)


def table(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["name"].startswith("fedavg")), None)
    rows = []
    for r in results:
        ratio = (base["bytes-up-per-client-per-round"] / r["bytes-up-per-client-per-round"]
                 if base and r["bytes-up-per-client-per-round"] else None)
        rows.append([r["name"], fmt(r["global-accuracy"]), f"{r['personalized-accuracy']:.4f}",
                     f"{r['bytes-up-per-client-per-round']:,.0f}", fmt(ratio, ",.0f"),
                     f"{r['wall-time-per-round-s']:.1f}"])
    return "\n".join(table_lines(["run", "global acc", "personalized acc",
                                   "bytes up / client / round", "x fewer than FedAvg", "s / round"],
                                  rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these names (prefix match)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, overrides in RUNS.items():
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        print(f"running {name} ...", flush=True)
        results.append(run_one(name, overrides, args, out / "runs"))
        print(f"  {results[-1]}", flush=True)
    header = (f"Fashion-MNIST, {args.clients} clients, Dirichlet alpha {args.alpha}, "
              f"{args.rounds} rounds, {args.local_steps} local steps of batch 32, CNN unless noted, "
              f"seed {args.seed}. Command: .venv/bin/python -m benchmarks.logit_sharing "
              f"--rounds {args.rounds} --clients {args.clients} --alpha {args.alpha}")
    md = header + "\n\n" + table(results) + "\n"
    (out / "logit_sharing.md").write_text(md)
    (out / "logit_sharing.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(md)


if __name__ == "__main__":
    main()
