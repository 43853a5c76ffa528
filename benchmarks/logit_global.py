"""Logit-only global models against FedAvg on an unlabeled proxy set, through the real Flower simulation.

The protocol of the issue on logit-only global accuracy: Fashion-MNIST, 20 clients, 10 sampled
per round, FedGen's CNN (``fedgen-cnn``) for every client and server model (``--model cnn`` for
McMahan's CNN), a proxy set of 10% of the official train set, **unlabeled**
(``data.public-labels = false``) and disjoint from the clients, partitions Dirichlet 0.1,
Dirichlet 1.0 and pathological with 2 classes per client. Rows:

* ``fedavg``: weights up and down (the baseline), at ``--fedavg-lrs`` (the better is reported);
* ``fedmd (mean)``, ``fedmd (classwise)``: logits on announced proxy samples (Li & Wang 2019),
  consensus with the survey's mean rule, or with per-class label-count weights;
* ``dsfl``: DS-FL (Itahara et al. 2021): local update, logits on the open set, ERA, clients and
  the server student distil;
* ``selective-fd``: Selective-FD (Shao et al. 2024): KuLSIF client-side selector, entropy
  server-side selector.
* ``student-down`` (and its certainty, feature-loss and larger-server-student rows): logits up,
  the server's student down (``fedkd/algorithms/student_down.py``);
* ``synthetic-proxy``: data-free: no proxy set is used; the clients synthesise one (FedDM-style
  distribution matching, 10 images per class held, every 20 rounds) and DS-FL runs on the pool
  with the ``classwise`` rule, targets anchored on the synthesis labels (label-weight 0.5).
* ``synthetic-student-down``: the same pool, and ``student-down``'s row on it.

Each run is a separate ``python -m simulations.run`` (own SuperLink, real Ray backend); the table
is built from the runs' own ``metrics.jsonl``. Finished runs are read back, not rerun.

Run (what produced ``benchmarks/results/logit_global.md``; see its header for the exact command)::

    .venv/bin/python -m benchmarks.logit_global --rounds 100 --partitions dir0.1 --seeds 0

Columns: final and best global accuracy of the server model (mean ± std over seeds), the
swing of the global accuracy over the last 20 rounds (max - min), mean personalized accuracy,
the mean accuracy of the clients' own models on 2,000 samples of the official test set (the
metric Selective-FD's paper reports; for FedAvg, the global model they hold), the first round at which the global accuracy reaches FedAvg's final one, bytes up per client per
round and FedAvg's over it. Next to the final global accuracy, its paired difference from FedAvg:
the per-seed difference (the same seed gives every row the same partitions and sampled clients),
mean ± std over the seeds both finished (``fedkd.experiments.report.paired_mean_std``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import DP_EPSILON_8, ROOT, fmt, run_simulation, slug
from fedkd.experiments.presets import load_preset
from fedkd.experiments.report import mean_std, mean_std_cell, paired_cell, paired_mean_std, table_lines
from fedkd.results import read_metrics

#: Paired differences from FedAvg: each row's final global accuracy minus FedAvg's on the same
#: seed (the same partitions and sampled clients), mean ± std (n - 1) over the seeds both have.
PAIRED = "Δ vs FedAvg (paired)"

PARTITIONS: dict[str, dict[str, Any]] = {
    "dir0.1": {"data.partitioner": "dirichlet", "data.alpha": 0.1},
    "dir1.0": {"data.partitioner": "dirichlet", "data.alpha": 1.0},
    "path2": {"data.partitioner": "pathological", "data.classes-per-client": 2},
}

#: Shared by every logit-sharing row: 1,000 proxy samples announced per round (DS-FL's open
#: batch in the authors' lab code), 50 client distillation steps, a server student with 500
#: steps per round on the last 20 rounds' targets. Chosen in a 30-round in-process exploration
#: at Dirichlet 0.1 (seed 0, DS-FL with ERA; final global accuracy): 20 client steps / 200
#: student steps / replay 5: 0.728; 20 / 500 / 20: 0.762; 50 / 500 / 20: 0.776; 100 / 500 / 20:
#: 0.781 (1.6x slower); FedAvg 0.806.
PROXY: dict[str, Any] = {"distill.public-batch": 1000, "distill.steps": 50,
                         "distill.server-steps": 500, "distill.replay-rounds": 20}

#: Samples of the official test set on which every client scores its own model every 10 rounds
#: and after the last (``federation.client-global-test``): Selective-FD's paper's metric.
CLIENT_GLOBAL_TEST = 2000

#: Logits up, the student down (``student-down``), at the best of the in-process levers
#: (``benchmarks/logit_levers.py``): the algorithm's settings of the main job's preset
#: (``simulations/configs/main.toml``, what ``make run`` runs; its ``algorithm``,
#: ``aggregation``, ``distill`` and ``student-down`` keys) on this protocol, so that the two
#: cannot drift apart: the logit-mean rule on prior-calibrated logits, the student fitted with
#: MSE on logits to them moved further from its own answer by FedExP's step, the global model
#: the running average of the student over rounds.
STUDENT_DOWN: dict[str, Any] = {**PROXY, **{
    key: value for key, value in load_preset("main").values.items()
    if key == "algorithm" or key.split(".")[0] in ("aggregation", "distill", "student-down")}}

ROWS: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    "fedmd (mean)": {"algorithm": "fedmd", "aggregation.rule": "mean", **PROXY},
    "fedmd (classwise)": {"algorithm": "fedmd", "aggregation.rule": "classwise", **PROXY},
    "dsfl": {"algorithm": "dsfl", "aggregation.rule": "era", **PROXY},
    "selective-fd": {"algorithm": "selective-fd", "aggregation.rule": "mean", **PROXY},
    "synthetic-proxy": {"algorithm": "synthetic-proxy", "aggregation.rule": "classwise",
                        "synthesis.method": "matching", "synthesis.every": 20,
                        "synthesis.label-weight": 0.5, **PROXY},
    "student-down": STUDENT_DOWN,
    # data-free: make run's student-down on synthetic-proxy's pool
    "synthetic-student-down": {**STUDENT_DOWN, "algorithm": "synthetic-student-down",
                               "synthesis.method": "matching", "synthesis.every": 20},
    "student-down (certainty)": {**STUDENT_DOWN, "student-down.certainty": "support"},
    "student-down (feature loss)": {**STUDENT_DOWN, "student-down.local-loss": "feature",
                                    "student-down.kd-weight": 0.1},
    "student-down (larger server student: cnn)": {**STUDENT_DOWN,
                                                  "student-down.server-model": "cnn"},
}


#: ``--dp``: example-level DP at epsilon 8, delta 1e-5 over the planned rounds (DP-SGD calibrated
#: to it; logits on proxy samples are post-processing). Selective-FD and student-down's certainty
#: refuse DP and are skipped.
DP: dict[str, Any] = DP_EPSILON_8


def run_label(name: str, partition: str, seed: int, model: str, lr: float | None = None,
              dp: bool = False, rounds: int = 100) -> str:
    suffix = ((f"-lr{lr:g}" if lr is not None else "") + ("-dp" if dp else "")
              + (f"-r{rounds}" if rounds != 100 else ""))
    return slug(f"{name.split(' ')[0]}{'-' + name.split('(')[1].rstrip(')') if '(' in name else ''}"
                f"-{partition}-{model}-s{seed}{suffix}")


def run_one(name: str, partition: str, seed: int, args: argparse.Namespace, out: Path,
            lr: float | None = None) -> dict[str, Any]:
    settings = {
        "train.model": args.model, "train.local-steps": args.local_steps, "seed": seed,
        "data.seed": seed, "data.public-fraction": 0.1, "data.public-labels": False,
        "federation.min-nodes": args.clients, "federation.fraction-train": args.fraction,
        "federation.min-replies": max(1, int(args.clients * args.fraction) // 2),
        "federation.evaluate-every": args.evaluate_every,
        "federation.client-global-test": CLIENT_GLOBAL_TEST,
        "federation.client-global-test-every": 10,
        "output.resume": False, "output.audit-replies": False,
        **PARTITIONS[partition], **ROWS[name],
    }
    if lr is not None:
        settings["train.learning-rate"] = lr
    if args.dp:
        settings.update(DP)
    label = run_label(name, partition, seed, args.model, lr, args.dp, args.rounds)
    if not (out / label / "summary.json").exists():
        run_simulation(label, settings, clients=args.clients, rounds=args.rounds, out_dir=out)
    rows = read_metrics(out / label)
    acc = [(r["round"], r["global-accuracy"]) for r in rows if r.get("global-accuracy") is not None]
    personal = [r["personalized-accuracy"] for r in rows if r.get("personalized-accuracy") is not None]
    own = [r["client-global-accuracy"] for r in rows if r.get("client-global-accuracy") is not None]
    last20 = [a for rnd, a in acc if rnd > rows[-1]["round"] - 20]
    return {
        "name": name, "partition": partition, "seed": seed, "lr": lr, "run-dir": str(out / label),
        "final": acc[-1][1], "best": max(a for _, a in acc), "curve": acc,
        "swing-last-20": max(last20) - min(last20),
        "personalized": personal[-1] if personal else None,
        "client-global": own[-1] if own else None,
        "bytes-up": statistics.mean(r["bytes-up-per-client"] for r in rows),
        "bytes-down": statistics.mean(r.get("bytes-down-per-client", 0.0) for r in rows),
        "wall-time-per-round-s": statistics.mean(r["wall-time-s"] for r in rows[1:] or rows),
    }


def first_round_at(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((rnd for rnd, a in curve if a >= level), None)


def table(results: list[dict[str, Any]]) -> str:
    header = ["partition", "row", "seeds", "final global acc", PAIRED, "best global acc",
              "swing, last 20 rounds", "final personalized acc", "clients' own models, global test",
              "rounds to FedAvg's final", "bytes up / client / round", "x fewer than FedAvg",
              "bytes down / client / round",
              "s / round", "s / round ÷ FedAvg's"]
    cells = []
    for partition in PARTITIONS:
        here = [r for r in results if r["partition"] == partition]
        if not here:
            continue
        fedavg = best_fedavg(here)
        target = statistics.mean(r["final"] for r in fedavg) if fedavg else None
        base_bytes = statistics.mean(r["bytes-up"] for r in fedavg) if fedavg else None
        base_final = {r["seed"]: r["final"] for r in fedavg}
        base_wall = (statistics.mean(r["wall-time-per-round-s"] for r in fedavg)
                     if fedavg else None)
        for name in ROWS:
            group = fedavg if name == "fedavg" else [r for r in here if r["name"] == name]
            if not group:
                continue
            label = name + (f" (lr {group[0]['lr']:g})" if name == "fedavg" and group[0]["lr"] else "")
            reach = [first_round_at(r["curve"], target) for r in group] if target else []
            reach_cell = ", ".join("-" if x is None else str(x) for x in reach) or "-"
            up = statistics.mean(r["bytes-up"] for r in group)
            ratio = f"{base_bytes / up:,.1f}" if base_bytes else "-"
            pers = [r["personalized"] for r in group if r["personalized"] is not None]
            own = [r["client-global"] for r in group if r.get("client-global") is not None]
            paired = "baseline" if name == "fedavg" else paired_cell(
                paired_mean_std({r["seed"]: r["final"] for r in group}, base_final), ".4f")
            cells.append([partition, label, len(group), cell([r["final"] for r in group]), paired,
                          cell([r["best"] for r in group]),
                          cell([r["swing-last-20"] for r in group]), cell(pers),
                          cell(own) + own_seeds(own, group), reach_cell, f"{up:,.0f}", ratio,
                          f"{statistics.mean(r.get('bytes-down', 0.0) for r in group):,.0f}",
                          fmt(statistics.mean(r["wall-time-per-round-s"] for r in group), ".1f"),
                          fmt(statistics.mean(r["wall-time-per-round-s"] for r in group) / base_wall,
                              ".1f") if base_wall else "-"])
    return "\n".join(table_lines(header, cells))


def cell(values: list[float]) -> str:
    """Mean ± sample std (n - 1) at 4 decimals; the value alone for one, ``-`` for none."""
    return mean_std_cell(mean_std(values), ".4f")


def own_seeds(own: list[float], group: list[dict[str, Any]]) -> str:
    """A note when only some of the group's runs measured the clients' own models."""
    return f" ({len(own)} of {len(group)} seeds)" if own and len(own) < len(group) else ""


def best_fedavg(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FedAvg's runs at the learning rate with the better mean final accuracy."""
    runs = [r for r in results if r["name"] == "fedavg"]
    by_lr: dict[Any, list[dict[str, Any]]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    if not by_lr:
        return []
    return max(by_lr.values(), key=lambda g: statistics.mean(r["final"] for r in g))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--model", default="fedgen-cnn")
    parser.add_argument("--evaluate-every", type=int, default=1)
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fedavg-lrs", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--only", nargs="*", help="rows to run (prefix match)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="logit_global", help="results file stem")
    parser.add_argument("--dp", action="store_true", help="every row under DP-SGD at epsilon 8")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: tabulate the plan's finished runs")
    args = parser.parse_args(argv)

    out = Path(args.out)
    runs_dir = out / "runs"
    results: list[dict[str, Any]] = []
    names = [n for n in ROWS if not args.only or any(n.startswith(p) for p in args.only)]
    for partition in args.partitions:
        for seed in args.seeds:
            for name in names:
                for lr in (args.fedavg_lrs if name == "fedavg" else [None]):
                    if args.dp and (name == "selective-fd" or "certainty" in name):
                        continue
                    label = run_label(name, partition, seed, args.model, lr, args.dp, args.rounds)
                    if args.report_only and not (runs_dir / label / "summary.json").exists():
                        continue
                    print(f"{name} {partition} seed {seed}" + (f" lr {lr}" if lr else ""), flush=True)
                    try:
                        r = run_one(name, partition, seed, args, runs_dir, lr)
                    except RuntimeError as err:
                        print(f"  FAILED: {str(err)[-1500:]}", flush=True)
                        continue
                    results.append(r)
                    print(f"  final {r['final']:.4f} best {r['best']:.4f} swing "
                          f"{r['swing-last-20']:.4f} up {r['bytes-up']:,.0f} B "
                          f"{r['wall-time-per-round-s']:.1f} s/round", flush=True)
                    write(out, args, results)


def write(out: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    command = (f".venv/bin/python -m benchmarks.logit_global --rounds {args.rounds} --model "
               f"{args.model} --partitions {' '.join(args.partitions)} --seeds "
               f"{' '.join(map(str, args.seeds))} --fedavg-lrs {' '.join(map(str, args.fedavg_lrs))}"
               + (f" --only {' '.join(args.only)}" if args.only else "")
               + (" --dp" if args.dp else "")
               + (f" --name {args.name}" if args.name != "logit_global" else ""))
    header = (f"Fashion-MNIST, {args.clients} clients, {args.fraction:.0%} sampled per round, "
              f"{args.rounds} rounds of {args.local_steps} local steps (batch 32), model "
              f"{args.model} everywhere, proxy set 10% of the official train set (unlabeled, "
              f"disjoint from the clients), 1,000 proxy samples per round. FedAvg at the better of "
              f"lr {' and '.join(map(str, args.fedavg_lrs))} (shown); the rest at lr 0.05. "
              + ("Every run under DP-SGD calibrated to epsilon 8 at delta 1e-5 over the planned "
                 "rounds (RDP). " if args.dp else "") +
              f"Mean ± std over seeds. {PAIRED}: each row's final global accuracy minus FedAvg's "
              f"on the same seed (the same partitions and sampled clients), mean ± std over the "
              f"n seeds both finished. Command: `{command}`")
    md = header + "\n\n" + table(results) + "\n"
    (out / f"{args.name}.md").write_text(md)
    (out / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(md, flush=True)


if __name__ == "__main__":
    main()
