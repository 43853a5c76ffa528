"""What example-level DP costs in accuracy: FD and FedGen-logits at epsilon 1, 4 and 8 vs no DP.

Every run: Fashion-MNIST, the same clients, partition, rounds, local steps and seed, through the
real Flower simulation (``python -m simulations.run``). DP runs use DP-SGD with the noise
calibrated so that ``num-server-rounds`` rounds of local training spend the target epsilon
(``privacy.target-epsilon``, delta 1e-5, RDP). FD also releases its per-class sums and counts with
output noise, so its final epsilon is above the DP-SGD target; FedGen-logits' logits on synthetic
inputs are post-processing of the DP model and cost nothing more. The table reports the epsilon
each run actually reached (maximum over clients, from the clients' own ledgers).

Run::

    .venv/bin/python -m benchmarks.privacy_accuracy [--rounds 5] [--clients 10]

Writes ``benchmarks/results/privacy_accuracy.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation
from fedkd.experiments.report import table_lines

TARGETS = (None, 8.0, 4.0, 1.0)


def settings_for(algorithm: str, epsilon: float | None, args: argparse.Namespace) -> dict[str, Any]:
    s: dict[str, Any] = {
        "algorithm": algorithm, "data.alpha": args.alpha, "train.model": args.model,
        "train.local-steps": args.local_steps, "seed": args.seed, "data.seed": args.seed,
        "federation.min-nodes": args.clients, "federation.min-replies": max(1, args.clients // 2),
        "fedgen-logits.synthetic-batch": 256, "distill.server-steps": 200, "fedgen.generator-steps": 20,
        "fedgen.generator-lr": 1e-3,
    }
    if epsilon is not None:
        s.update({"privacy.dp-sgd": True, "privacy.target-epsilon": epsilon,
                  "privacy.max-grad-norm": 1.0})
        if algorithm == "fd":
            s["privacy.output-noise"] = args.fd_output_noise
    return s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--fd-output-noise", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithms", nargs="*", default=["fd", "fedgen-logits"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for algorithm in args.algorithms:
        for eps in TARGETS:
            name = f"{algorithm} eps {eps if eps is not None else 'none'}"
            print(f"running {name} ...", flush=True)
            results.append({**run_simulation(name, settings_for(algorithm, eps, args),
                                             clients=args.clients, rounds=args.rounds,
                                             out_dir=out / "runs"),
                            "algorithm": algorithm, "target-epsilon": eps})
            print(f"  {results[-1]}", flush=True)
    lines = [
        f"Fashion-MNIST, {args.clients} clients, Dirichlet alpha {args.alpha}, {args.rounds} rounds, "
        f"{args.local_steps} local steps of batch 32, model {args.model}, seed {args.seed}; DP-SGD "
        f"clip 1.0, delta 1e-5, RDP; FD output noise {args.fd_output_noise} (clip 10). Command: "
        f".venv/bin/python -m benchmarks.privacy_accuracy --rounds {args.rounds} "
        f"--clients {args.clients} --alpha {args.alpha}",
        "",
        *table_lines(["algorithm", "target epsilon (DP-SGD)", "epsilon reached (max over clients)",
                      "global acc", "personalized acc"],
                     ([r["algorithm"], fmt(r["target-epsilon"], "g"), fmt(r["epsilon-max"], ".2f"),
                       fmt(r["global-accuracy"]), fmt(r["personalized-accuracy"])] for r in results)),
    ]
    md = "\n".join(lines) + "\n"
    (out / "privacy_accuracy.md").write_text(md)
    (out / "privacy_accuracy.json").write_text(json.dumps({"args": vars(args), "results": results},
                                                           indent=2))
    print(md)


if __name__ == "__main__":
    main()
