"""Data-free distillation against weight sharing and logit sharing, through the real Flower simulation.

Fashion-MNIST, 20 clients, Dirichlet alpha (0.1 and 1.0), McMahan's CNN for every client and
server model, the same rounds, local steps, participation and seeds for every algorithm:

* ``fedavg``: weights up and down (baseline).
* ``fedgen``: FedGen as in its official code (latent generator, weight sharing: a baseline).
* ``fedgen-logits``: server-side input generator trained on the teachers' logits through
  zeroth-order probes; clients upload only logits on synthetic inputs.
* ``fedgen-logits-lowfreq (classwise)``: the same contract with the untrained low-frequency
  generator (random smooth images) and the ``classwise`` rule.
* ``fd``: per-class mean logits (Jeong et al.).
* ``fedmd``: logits on a public split (taken out of the training set before partitioning).
* ``synthetic-proxy``: clients synthesise K = 10 images per class they hold (FedDM-style
  distribution matching) in rounds 1, 6 and 11 and upload them as uint8; the server pools them
  and every round runs DS-FL on the pool (logits up, ``classwise`` rule, student distilled on
  the last 10 rounds' targets, anchored half on the labels the images were synthesised for).
  No weights, no real data. ``synthetic-proxy-dsfl-targets``: the same with DS-FL's targets
  alone (``synthesis.label-weight = 0``).
* ``synthetic-proxy-dp``: the same under DP-SGD (epsilon 8) with model inversion (reads only the
  DP model, no epsilon) and the ``era`` rule (no label counts: they would cost epsilon).

Each run is a separate ``python -m simulations.run`` (own SuperLink, real Ray backend); the table
is built from the runs' own ``metrics.jsonl``. Finished runs (their ``summary.json`` exists) are
read back, not rerun, so an interrupted benchmark continues where it stopped.

Run (the README's numbers; several hours on 2 CPU cores)::

    .venv/bin/python -m benchmarks.datafree --alphas 0.1 1.0 --seeds 0 1 2 --other-seeds 0

Writes ``benchmarks/results/datafree.{json,md}``: per alpha and algorithm, mean +- std over seeds
of the final global accuracy (server model on the official test set), its paired difference from
FedAvg (per seed, the same seed giving every algorithm the same partitions and sampled clients:
mean +- std over the seeds both finished) and the mean personalized accuracy (each client's model
on its local test split), bytes up per client per round, the ratio to FedAvg's, and wall time per
round.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import DP_EPSILON_8, ROOT, fmt, run_simulation, slug, summarise_run
from fedkd.experiments.report import mean_std, mean_std_cell, paired_cell, paired_mean_std, table_lines

#: Paired differences from FedAvg: each algorithm's global accuracy minus FedAvg's on the same
#: seed (the same partitions and sampled clients), mean ± std (n - 1) over the seeds both have.
PAIRED = "Δ vs FedAvg (paired)"

#: FedGen-logits settings used here (see fedkd/algorithms/fedgen_logits.py): per round 4 cycles of
#: 64 synthetic samples with 2 zeroth-order probes each (768 logit rows, 30,720 bytes up), and
#: label-count weights (the client's 10 counts go up too); the generator's zeroth-order objective
#: 0.3 CE(t(x), y) - KL(t(x) || s(x)). In a 10-client exploration (fedgen-cnn, 15 rounds, alpha 0.1,
#: one seed) the global student reached 0.576 with it against 0.528 with CE alone (weight 1).
FEDGEN_LOGITS: dict[str, Any] = {
    "algorithm": "fedgen-logits", "fedgen.generator-steps": 0, "fedgen-logits.zo-directions": 2,
    "fedgen-logits.generator-queries": 4, "fedgen-logits.synthetic-batch": 64, "fedgen.generator-lr": 0.002,
    "aggregation.rule": "weighted", "fedgen-logits.adversarial-weight": 1.0, "fedgen-logits.teacher-ce-weight": 0.3,
}

#: FedGen-logits with the untrained low-frequency generator (random smooth images, no generator
#: training: in benchmarks/datafree_ceiling.py that prior beat pixel noise and the untrained conv
#: generator, and training towards the teachers' labels did not help) and the classwise rule (each
#: class column weighted by the teachers' label counts). One query of 1,536 samples per round:
#: 61,440 bytes of logits up (61,958 measured with counts and framing: 107x fewer than FedAvg).
FEDGEN_LOGITS_LOW_FREQUENCY: dict[str, Any] = {
    "algorithm": "fedgen-logits", "fedgen-logits.input-generator": "low-frequency",
    "fedgen.generator-steps": 0, "fedgen-logits.zo-directions": 0, "fedgen-logits.generator-queries": 1,
    "fedgen-logits.synthetic-batch": 1536, "aggregation.rule": "classwise", "distill.server-steps": 200,
}

#: synthetic-proxy's settings (fedkd/algorithms/synthetic_proxy.py): a pool of at most
#: 10 x classes-held images per sampled client and synthesis round, 1,000 pool images announced
#: per round (40,000 bytes of logits up), the student distilled 200 steps per round on the last
#: 10 rounds' targets (as in benchmarks/datafree_ceiling.py), targets anchored half on the
#: synthesis labels (synthesis.label-weight 0.5). With DS-FL's targets alone (label-weight 0,
#: row ``synthetic-proxy-dsfl-targets``) the teachers' consensus agreed with the synthesis label
#: on only 31-59% of the pool in rounds 1-5 (seed 0).
SYNTHETIC_PROXY: dict[str, Any] = {
    "algorithm": "synthetic-proxy", "synthesis.method": "matching", "synthesis.per-class": 10,
    "synthesis.every": 5, "aggregation.rule": "classwise", "distill.public-batch": 1000,
    "distill.server-steps": 200, "distill.replay-rounds": 10, "synthesis.label-weight": 0.5,
}

#: name -> run-config overrides on top of the shared settings.
RUNS: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    # FedGen's official learning rate: at the shared 0.05 its generated-sample terms (weight 10)
    # made the CNN clients diverge in round 2 (train loss 43, then NaN).
    "fedgen (paper, weights)": {"algorithm": "fedgen", "train.learning-rate": 0.01},
    "fedgen-logits": FEDGEN_LOGITS,
    "fedgen-logits-lowfreq (classwise)": FEDGEN_LOGITS_LOW_FREQUENCY,
    "fd": {"algorithm": "fd"},
    "fedmd": {"algorithm": "fedmd"},
    "synthetic-proxy": SYNTHETIC_PROXY,
    "synthetic-proxy-dsfl-targets": {**SYNTHETIC_PROXY, "synthesis.label-weight": 0.0},
    "synthetic-proxy-dp (inversion, eps 8)": {
        **SYNTHETIC_PROXY, "synthesis.method": "inversion", "aggregation.rule": "era", **DP_EPSILON_8,
    },
}


def run_name(name: str, alpha: float, seed: int) -> str:
    return f"{name.split(' ')[0]}-a{alpha}-s{seed}"


def finished(name: str, alpha: float, seed: int, out_dir: Path) -> bool:
    return (out_dir / slug(run_name(name, alpha, seed)) / "summary.json").exists()


def run_one(name: str, alpha: float, seed: int, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    settings = {
        "data.alpha": alpha, "train.model": "cnn", "train.local-steps": args.local_steps,
        "seed": seed, "data.seed": seed, "federation.min-nodes": args.clients,
        "federation.fraction-train": args.fraction,
        "federation.min-replies": max(1, int(args.clients * args.fraction) // 2),
        # An unfinished run starts again: clients' private models live in Flower's node state,
        # which a resumed run does not get back.
        "output.resume": False, **RUNS[name],
    }
    label = run_name(name, alpha, seed)
    if finished(name, alpha, seed, out_dir):
        result = summarise_run(name, settings, out_dir / slug(label))
    else:
        result = run_simulation(label, settings, clients=args.clients, rounds=args.rounds, out_dir=out_dir)
    return {**result, "name": name, "alpha": alpha, "seed": seed}


def selected(only: list[str] | None) -> list[str]:
    """The runs ``--only`` names, in its order: each an exact name, else a prefix of names."""
    if not only:
        return list(RUNS)
    return list(dict.fromkeys(n for p in only for n in ([p] if p in RUNS else RUNS) if n.startswith(p)))


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when none is."""
    stat = mean_std(values)
    return None if stat is None else stat[0]


def table(results: list[dict[str, Any]]) -> str:
    header = ["alpha", "algorithm", "seeds", "global acc", PAIRED, "personalized acc",
              "bytes up / client / round", "x fewer than FedAvg", "s / round", "epsilon",
              "leakage: NN ratio / MIA AUC"]
    cells = []
    for alpha in sorted({r["alpha"] for r in results}):
        rows = [r for r in results if r["alpha"] == alpha]
        base = [r["bytes-up-per-client-per-round"] for r in rows if r["name"] == "fedavg"]
        base_global = {r["seed"]: r["global-accuracy"] for r in rows if r["name"] == "fedavg"}
        for name in RUNS:
            group = [r for r in rows if r["name"] == name]
            if not group:
                continue
            g = mean_std_cell(mean_std([r["global-accuracy"] for r in group]), ".4f")
            p = mean_std_cell(mean_std([r["personalized-accuracy"] for r in group]), ".4f")
            paired = "baseline" if name == "fedavg" else paired_cell(paired_mean_std(
                {r["seed"]: r["global-accuracy"] for r in group}, base_global), ".4f")
            up = statistics.mean(r["bytes-up-per-client-per-round"] for r in group)
            wall = statistics.mean(r["wall-time-per-round-s"] for r in group)
            ratio = f"{statistics.mean(base) / up:,.0f}" if base and up else "-"
            eps, nn_ratio, auc = (mean_or_none([r.get(k) for r in group])
                                  for k in ("epsilon-max", "leak-nn-ratio", "leak-mia-auc"))
            leak = "-" if nn_ratio is None else f"{nn_ratio:.3f} / {fmt(auc, '.3f')}"
            cells.append([alpha, name, len(group), g, paired, p, f"{up:,.0f}", ratio,
                          fmt(wall, ".1f"), fmt(eps, ".2f"), leak])
    return "\n".join(table_lines(header, cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.5, help="clients sampled per round")
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds for the first alpha (the headline rows)")
    parser.add_argument("--other-seeds", type=int, nargs="+", default=[0],
                        help="seeds for the other alphas")
    parser.add_argument("--only", nargs="*", help="run only these algorithms (an exact name, else a prefix)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: tabulate the finished runs of this plan")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, alpha in enumerate(args.alphas):
        for seed in args.seeds if i == 0 else args.other_seeds:
            for name in selected(args.only):
                if args.report_only and not finished(name, alpha, seed, out / "runs"):
                    continue
                print(f"running {name} alpha={alpha} seed={seed} ...", flush=True)
                try:
                    results.append(run_one(name, alpha, seed, args, out / "runs"))
                except RuntimeError as err:  # keep going; the table says which runs failed
                    print(f"  FAILED: {str(err)[-1500:]}", flush=True)
                    continue
                r = results[-1]
                print(f"  global {r['global-accuracy']} personalized {r['personalized-accuracy']} "
                      f"up {r['bytes-up-per-client-per-round']:,.0f} B "
                      f"{r['wall-time-per-round-s']:.1f} s/round", flush=True)
                write(out, args, results)


def write(out: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    header = (f"Fashion-MNIST, {args.clients} clients ({args.fraction:.0%} sampled per round), "
              f"Dirichlet alpha as listed, {args.rounds} rounds, {args.local_steps} local steps of "
              f"batch 32, McMahan's CNN everywhere (FedGen at its official lr 0.01, the rest 0.05); mean ± std "
              f"over the finished runs (column seeds; the mean alone for one). {PAIRED}: the "
              f"global accuracy minus FedAvg's on the same seed (the same partitions and sampled "
              f"clients), mean ± std over the n seeds both finished. Command: "
              f".venv/bin/python -m benchmarks.datafree --rounds {args.rounds} --fraction "
              f"{args.fraction} --local-steps {args.local_steps} --alphas "
              f"{' '.join(map(str, args.alphas))} --seeds {' '.join(map(str, args.seeds))} "
              f"--other-seeds {' '.join(map(str, args.other_seeds))}")
    md = header + "\n\n" + table(results) + "\n"
    (out / "datafree.md").write_text(md)
    (out / "datafree.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(md, flush=True)


if __name__ == "__main__":
    main()
