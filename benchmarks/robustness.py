"""Poisoned logits against robust aggregation: 20% of clients attack, mean vs median vs trimmed mean.

FedMD on Fashion-MNIST through the real Flower simulation: the attackers (``attack.partitions``)
answer every logits query with poisoned but well-formed logits, which the contract check cannot
reject: ``random`` (noise of the logits' own scale), ``flip`` (class order reversed: confident in
the wrong class) and ``scale`` (x100; the bound ``aggregation.max-abs-logit`` is raised so the
replies pass). Reported: the server student's global accuracy and the clients' mean personalized
accuracy after the last round, for each aggregation rule, next to a run without attackers.

Run::

    .venv/bin/python -m benchmarks.robustness [--rounds 5] [--clients 10]

Writes ``benchmarks/results/robustness.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation
from fedkd.experiments.report import table_lines

RULES = ("mean", "median", "trimmed-mean")
ATTACKS = ("none", "random", "flip", "scale")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--model", default="fedgen-cnn")
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    attackers = ",".join(str(i) for i in range(max(1, args.clients // 5)))  # 20%
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for attack in ATTACKS:
        for rule in RULES:
            settings: dict[str, Any] = {
                "algorithm": "fedmd", "aggregation.rule": rule, "data.alpha": args.alpha,
                "train.model": args.model, "train.local-steps": args.local_steps,
                "seed": args.seed, "data.seed": args.seed, "federation.min-nodes": args.clients,
                "federation.min-replies": max(1, args.clients // 2),
                "distill.public-batch": 500, "distill.server-steps": 100,
                "aggregation.max-abs-logit": 1e6,
            }
            if attack != "none":
                settings.update({"attack.partitions": attackers, "attack.mode": attack,
                                 "attack.scale": 100.0})
            name = f"fedmd {rule} attack {attack}"
            print(f"running {name} ...", flush=True)
            results.append({**run_simulation(name, settings, clients=args.clients,
                                             rounds=args.rounds, out_dir=out / "runs"),
                            "rule": rule, "attack": attack})
    lines = [
        f"FedMD, Fashion-MNIST, {args.clients} clients (attackers: partitions {attackers}, 20%), "
        f"Dirichlet alpha {args.alpha}, {args.rounds} rounds of {args.local_steps} local steps, "
        f"model {args.model}, public batch 500, seed {args.seed}. Command: "
        f".venv/bin/python -m benchmarks.robustness --rounds {args.rounds} --clients {args.clients}",
        "",
        "Global accuracy of the server student (personalized accuracy of the clients in brackets):",
        "",
    ]
    rows = []
    for attack in ATTACKS:
        cells = [attack]
        for rule in RULES:
            r = next(x for x in results if x["rule"] == rule and x["attack"] == attack)
            cells.append(f"{fmt(r['global-accuracy'])} ({fmt(r['personalized-accuracy'])})")
        rows.append(cells)
    lines += table_lines(["attack", *RULES], rows)
    md = "\n".join(lines) + "\n"
    (out / "robustness.md").write_text(md)
    (out / "robustness.json").write_text(json.dumps({"args": vars(args), "results": results},
                                                     indent=2))
    print(md)


if __name__ == "__main__":
    main()
