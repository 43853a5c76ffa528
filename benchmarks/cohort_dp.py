"""Client-level DP at cross-device cohort sizes: accuracy against the cohort, at epsilon 1, 4, 8.

A population of ``--population`` Fashion-MNIST clients (``--classes-per-client`` classes each by
default: a Dirichlet split of 10,000 clients leaves some empty; about 5 samples each, as on
phones), ``--rounds`` rounds, each client sampled independently
with probability ``q = cohort / population`` (``federation.sampling = "poisson"``): the server
ledger claims amplification by sampling, and every noise is calibrated with the ledger's own
accounting (:func:`benchmarks.distributed_dp.noise_multiplier_for`) so that the run spends the
target client-level epsilon at ``delta = 1 / (10 * population)``. Rows per cohort:

* ``student-down``, no noise: logits up (probabilities on ``--samples`` proxy samples, rule
  ``mean``), the student down; the reference;
* ``student-down, distributed DP``: the same under secure aggregation (SecAgg+, ``--neighbours``
  neighbours per client) with distributed DP: each client clips its probabilities to L2
  ``--clip`` and adds its share of Gaussian noise, so the sum of at least ``min-clients``
  (half the cohort) carries noise ``z * clip``; nobody, the server included, sees a client's
  answer;
* ``student-down, PATE``: the ``pate`` rule (GNMax) on the same proxy samples, sigma
  calibrated so that every vote of every round spends the target (data-independent, amplified
  by sampling); the data-dependent bound is reported beside it;
* ``FedAvg`` and ``DP-FedAvg`` (McMahan et al. 2018, :mod:`fedkd.algorithms.fedavg`, our own:
  fixed clipping of each update to ``--fedavg-clip``, central Gaussian noise added by the
  server, the fixed denominator ``q N``): the weight-sharing baseline at the same epsilon, on
  the same population and sampling.

The round loop, the contract checks, the client half, secure aggregation and the ledgers are the
production code, in one process (``tests.algorithms.inprocess.InProcessExchange`` over
:class:`RoundClients`: a client is built when it is sampled and forgotten after its round, as a
logical client; no Flower transport, whose cost at these cohort sizes
``benchmarks/population.py`` measures).

Run::

    .venv/bin/python -m benchmarks.cohort_dp --cohorts 10 100 500 1000 --epsilons 1 4 8

Writes ``benchmarks/results/cohort_dp.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.distributed_dp import noise_multiplier_for, pate_sigma_for  # noqa: E402
from client.app import client_context  # noqa: E402
from fedkd.algorithms import ALGORITHMS, ClientContext  # noqa: E402
from fedkd.compose import build_config  # noqa: E402
from fedkd.data.federated import load_federated  # noqa: E402
from fedkd.experiments.report import table_lines  # noqa: E402
from fedkd.results import RunOutput, read_metrics  # noqa: E402
from server.loop import run_rounds  # noqa: E402
from tests.algorithms.inprocess import InProcessExchange  # noqa: E402


class RoundClients(dict):
    """The clients a round addressed, each built (``make_client``) the first time it is: what
    the in-process exchange delivers to (their state lives for the round, secure aggregation's
    keys between phases), forgotten when the round's exchange is."""

    def __init__(self, make_client: Callable[[int], ClientContext]) -> None:
        super().__init__()
        self.make_client = make_client

    def __missing__(self, client: int) -> ClientContext:
        self[client] = built = self.make_client(client)
        return built


def run_logical(settings: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    """One run over the whole population, in-process; returns its metrics rows."""
    cfg = build_config({**settings, "output.dir": str(out_dir), "output.run-name": "run"})
    data = load_federated(cfg.data)
    population = cfg.data.num_partitions
    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)

    def make_client(cid: int) -> ClientContext:
        return client_context(cfg, cid, {"partition-id": cid, "num-partitions": population}, {})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_rounds(cfg, algorithm, data, RunOutput.for_config(cfg),
                   online_nodes=lambda rnd: range(population),
                   make_exchange=lambda *args, **kwargs: InProcessExchange(
                       RoundClients(make_client), *args, **kwargs))
    return read_metrics(out_dir / "run")


def plan(args: argparse.Namespace, cohort: int) -> dict[str, dict[str, Any]]:
    """Row name -> run settings for one cohort size."""
    q = cohort / args.population
    min_replies = max(2, cohort // 2)
    base = {
        "seed": args.seed, "data.seed": args.seed, "num-server-rounds": args.rounds,
        "data.dataset": "fashion-mnist", "data.partitioner": args.partitioner,
        "data.alpha": args.alpha, "data.classes-per-client": args.classes_per_client,
        "data.num-partitions": args.population, "data.public-labels": False,
        "train.model": args.model, "train.local-steps": args.local_steps,
        "federation.sampling": "poisson", "federation.fraction-train": q,
        # logical clients (as over Flower with federation.supernodes): the population is online
        "federation.supernodes": 2, "federation.client-state": "disk",
        "federation.min-nodes": 2, "federation.min-replies": min_replies,
        "federation.evaluate-clients": False, "output.audit-replies": False,
        "output.checkpoint": False, "privacy.delta": args.delta,
    }
    student = {**base, "algorithm": "student-down", "aggregation.rule": "mean",
               "distill.loss": "kl", "distill.public-batch": args.samples,
               "distill.server-steps": args.server_steps, "distill.replay-rounds": 1,
               "student-down.local-loss": "none"}
    fedavg = {**base, "algorithm": "fedavg", "fedavg.dp-clip": args.fedavg_clip}
    rows: dict[str, dict[str, Any]] = {
        "student-down, no noise": student,
        "FedAvg, no noise": fedavg,
    }
    for eps in args.epsilons:
        z = noise_multiplier_for(eps, args.rounds, sampling_rate=q, delta=args.delta)
        rows[f"student-down, distributed DP, eps {eps:g}"] = {
            **student, "aggregation.secure": True, "secagg.neighbours": args.neighbours,
            "secagg.noise-multiplier": round(z, 4), "secagg.clip": args.clip,
            "secagg.min-clients": min_replies}
        rows[f"DP-FedAvg, eps {eps:g}"] = {**fedavg, "fedavg.dp-noise-multiplier": round(z, 4)}
        sigma = pate_sigma_for(eps, args.rounds, args.samples, sampling_rate=q, delta=args.delta)
        rows[f"student-down, PATE, eps {eps:g}"] = {
            **student, "aggregation.rule": "pate", "aggregation.pate.sigma": round(sigma, 3)}
    return rows


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=10_000)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--partitioner", default="pathological",
                        help="a Dirichlet split of 10,000 clients leaves some empty")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--classes-per-client", type=int, default=2)
    parser.add_argument("--model", default="fedgen-cnn")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200, help="proxy samples per round")
    parser.add_argument("--server-steps", type=int, default=200)
    parser.add_argument("--clip", type=float, default=11.0,
                        help="distributed DP: L2 clip of a client's probabilities (about 0.8 sqrt(N))")
    parser.add_argument("--neighbours", type=int, default=16, help="SecAgg+ neighbours per client")
    parser.add_argument("--fedavg-clip", type=float, default=0.5,
                        help="DP-FedAvg: L2 clip of one client's update")
    parser.add_argument("--delta", type=float, default=None, help="default: 1 / (10 population)")
    parser.add_argument("--only", nargs="*", default=None, help="row names to run (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="cohort_dp")
    args = parser.parse_args(argv)
    if args.delta is None:
        args.delta = 1.0 / (10 * args.population)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.name}.json"
    results: list[dict[str, Any]] = json.loads(json_path.read_text()) if json_path.exists() else []
    done = {(r["cohort"], r["row"]) for r in results}
    command = ".venv/bin/python -m benchmarks.cohort_dp " + " ".join(
        argv if argv is not None else sys.argv[1:])
    for cohort in args.cohorts:
        for name, settings in plan(args, cohort).items():
            if (cohort, name) in done or (args.only and name not in args.only):
                continue
            print(f"[cohort {cohort}] {name} ...", flush=True)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="fedkd-cohort-") as tmp:
                rows = run_logical(settings, Path(tmp))
            wall = time.perf_counter() - start
            trained = [r for r in rows if not r.get("skipped")]
            accs = [r["global-accuracy"] for r in rows if r.get("global-accuracy") is not None]
            last = rows[-1]
            results.append({
                "cohort": cohort, "row": name, "settings": settings,
                "final-global-accuracy": accs[-1] if accs else None,
                "best-global-accuracy": max(accs) if accs else None,
                "server-epsilon": last.get("server-epsilon"),
                "server-epsilon-unamplified": last.get("server-epsilon-unamplified"),
                "server-skip-probability": last.get("server-skip-probability"),
                "server-delta": last.get("server-delta"),
                "noise-multiplier": settings.get(
                    "secagg.noise-multiplier", settings.get(
                        "fedavg.dp-noise-multiplier", settings.get("aggregation.pate.sigma"))),
                "server-epsilon-data-dependent": last.get("server-epsilon-data-dependent"),
                "rounds": len(rows), "skipped-rounds": len(rows) - len(trained),
                "mean-sampled": sum(r["sampled"] for r in rows) / len(rows),
                "bytes-up-per-client": last.get("bytes-up-per-client"),
                "dp-update-norm-median": last.get("dp-update-norm-median"),
                "dp-clipped-share": last.get("dp-clipped-share"),
                "wall-s": wall, "s-per-round": wall / len(rows),
                "accuracy-curve": accs, "command": command,
            })
            print(f"    final {_f(results[-1]['final-global-accuracy'])} eps "
                  f"{_f(results[-1]['server-epsilon'], '.3f')} {wall:.0f} s", flush=True)
            json_path.write_text(json.dumps(results, indent=1))
    write_table(args, results, out / f"{args.name}.md", command)
    return 0


def write_table(args: argparse.Namespace, results: list[dict[str, Any]], path: Path,
                command: str) -> None:
    reference = {r["cohort"]: r["final-global-accuracy"] for r in results
                 if r["row"] == "student-down, no noise"}
    lines = [
        f"Client-level DP at cohort sizes: Fashion-MNIST, a population of {args.population:,} "
        f"clients ({args.partitioner}: {args.classes_per_client if args.partitioner == 'pathological' else args.alpha:g}"
        f"{' classes per client' if args.partitioner == 'pathological' else ''}), Poisson sampling at q = cohort / population, "
        f"{args.rounds} rounds, {args.model}, {args.local_steps} local steps; student-down sends "
        f"probabilities on {args.samples} proxy samples a round (rule mean); distributed DP under "
        f"SecAgg+ ({args.neighbours} neighbours), clip {args.clip:g}; DP-FedAvg clip "
        f"{args.fedavg_clip:g}; delta {args.delta:g} (1 / (10 x population)); seed {args.seed}; "
        f"in-process (production round loop and client half, no Flower transport).", "",
        f"Command: `{command}`", "",
        *table_lines(
            ["cohort", "row", "noise (z, or PATE's sigma)", "client-level epsilon (amplified)",
             "PATE data-dependent epsilon",
             "epsilon against the server (unamplified)", "skip-probability bound",
             "final global acc", "best", "points under the same run without noise",
             "skipped rounds", "s / round"],
            ([f"{r['cohort']:,}", r["row"], _f(r["noise-multiplier"], ".3g"),
              _f(r["server-epsilon"], ".2f"), _f(r.get("server-epsilon-data-dependent"), ".2f"),
              _f(r["server-epsilon-unamplified"], ".1f"),
              _f(r["server-skip-probability"], ".2g"), _f(r["final-global-accuracy"]),
              _f(r["best-global-accuracy"]),
              "-" if not r["row"].startswith(("student-down, distributed", "student-down, PATE"))
              or reference.get(
                  r["cohort"]) is None
              else f"{100 * (reference[r['cohort']] - r['final-global-accuracy']):.1f}",
              r["skipped-rounds"], f"{r['s-per-round']:.1f}"]
             for r in sorted(results, key=lambda r: (r["cohort"], r["row"])))),
    ]
    lines += ["", *cohort_needed(args, results, reference)]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cohort_needed(args: argparse.Namespace, results: list[dict[str, Any]],
                  reference: dict[int, float]) -> list[str]:
    """Per epsilon: the smallest measured cohort whose distributed-DP run is within 5 points of
    the same run without noise; where none is, an estimate: the cohort whose noise on the mean
    (``z(epsilon, q) * clip / cohort``, ``q = cohort / population``) falls to that of a passing
    run (the one with the most noise on its mean)."""
    def noise_on_mean(eps: float, cohort: int) -> float:
        z = noise_multiplier_for(eps, args.rounds, sampling_rate=cohort / args.population,
                                 delta=args.delta)
        return z * args.clip / cohort

    ddp = [r for r in results if r["row"].startswith("student-down, distributed DP")
           and reference.get(r["cohort"]) is not None]
    passing = [r for r in ddp if reference[r["cohort"]] - r["final-global-accuracy"] <= 0.05]
    if not passing:
        return ["No distributed-DP run came within 5 points of its run without noise."]
    tolerated = max(r["noise-multiplier"] * args.clip / r["cohort"] for r in passing)
    out = [f"Cohort needed for distributed DP within 5 points of the run without noise (the "
           f"largest noise on the mean of a passing run: {tolerated:.4f} per probability):", ""]
    for eps in sorted({float(r["row"].rsplit(" ", 1)[1]) for r in ddp}):
        measured = sorted(r["cohort"] for r in passing
                          if float(r["row"].rsplit(" ", 1)[1]) == eps)
        if measured:
            out.append(f"- epsilon {eps:g}: {measured[0]:,} (measured)")
            continue
        estimate = next((k for k in range(100, args.population + 1, 100)
                         if noise_on_mean(eps, k) <= tolerated), None)
        out.append(f"- epsilon {eps:g}: " + (
            f"about {estimate:,} (estimated from the noise on the mean; not measured)"
            if estimate else f"more than the population of {args.population:,} (estimated)"))
    return out


if __name__ == "__main__":
    sys.exit(main())
