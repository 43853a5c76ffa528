"""The levers of a logit-only global model, measured in-process (the issue on closing the gap).

Fashion-MNIST, 20 clients, 10 sampled per round, FedGen's CNN, a proxy set of 10% of the train
set, the real round loop, contract checks and client app of fedkd with the message delivery a
function call (``tests.algorithms.inprocess``: no Flower transport, so many variants fit in an
afternoon on 2 cores; ``benchmarks/logit_global.py`` runs the chosen rows through the Flower
simulation engine). The proxy set's labels are loaded only to report the consensus accuracy of the
targets: no algorithm reads them (``tests/algorithms/test_dsfl.py`` shows a run is identical
without them).

Each variant is a set of run-config overrides on the shared settings below (DS-FL's protocol of
``benchmarks/logit_global.py``). Columns: final and best global accuracy, the mean of the last 5
rounds, the swing of the last 10 (max - min), the consensus accuracy of the targets over the last
5 rounds, bytes up and down per client per round, seconds per round.

Run::

    .venv/bin/python -m benchmarks.logit_levers --rounds 30 --seeds 0 --partitions dir0.1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DP_EPSILON_8, ROOT, fmt
from benchmarks.logit_global import PARTITIONS
from fedkd.experiments.report import mean_std, mean_std_cell, paired_cell, paired_mean_std, table_lines

NUM_CLIENTS = 20

SHARED: dict[str, Any] = {
    "data.dataset": "fashion-mnist", "train.model": "fedgen-cnn", "train.local-steps": 20,
    "data.public-fraction": 0.1, "data.public-labels": True, "federation.fraction-train": 0.5,
    "federation.min-nodes": NUM_CLIENTS, "federation.min-replies": 5,
    "federation.evaluate-every": 1, "output.audit-replies": False, "output.resume": False,
    "distill.public-batch": 1000, "distill.steps": 50, "distill.server-steps": 500,
    "distill.replay-rounds": 20,
}

#: The best student-down of the levers: FedAvg in function space (logit-mean of prior-calibrated
#: logits, the student fitted to them with MSE on logits).
BEST = {"algorithm": "student-down", "aggregation.rule": "logit-mean",
        "student-down.calibrate": "prior", "student-down.local-loss": "none",
        "distill.replay-rounds": 1, "distill.loss": "mse-logits"}

#: The best round with the server optimiser over rounds: server-lr 3, the global model the
#: running average of the student (decay 0.9); the base of the speed and DP variants.
BEST_AVERAGED = {**BEST, "student-down.server-lr": 3.0, "distill.average": 0.9}

#: BEST_AVERAGED with FedExP's step (student-down.server-lr-rule = "fedexp"): each round's
#: server-lr from the clients' spread, at most the cap ``student-down.server-lr``.
FEDEXP = {**BEST_AVERAGED, "student-down.server-lr-rule": "fedexp"}

#: Student-down with nothing kept locally and this round's targets only: the base of its levers.
SD = {"algorithm": "student-down", "aggregation.rule": "era", "student-down.local-loss": "none",
      "distill.replay-rounds": 1}

VARIANTS: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    "dsfl": {"algorithm": "dsfl", "aggregation.rule": "era"},
    "student-down": SD,
    "student-down, kd local (lambda 1)": {**SD, "student-down.local-loss": "kd"},
    "student-down, kd local (lambda 0.1)": {**SD, "student-down.local-loss": "kd",
                                            "student-down.kd-weight": 0.1},
    "student-down, feature local": {**SD, "student-down.local-loss": "feature",
                                    "student-down.kd-weight": 0.1},
    "student-down, prox (mu 0.1)": {**SD, "student-down.local-loss": "prox",
                                    "student-down.prox-mu": 0.1},
    "student-down, replay 20": {**SD, "distill.replay-rounds": 20},
    "student-down, certainty": {**SD, "student-down.certainty": "support"},
    "student-down, prior calibration": {**SD, "student-down.calibrate": "prior"},
    "student-down, 2,000 proxy samples": {**SD, "distill.public-batch": 2000},
    "student-down, augmentation": {**SD, "student-down.augment-shift": 2},
    "student-down, label-free stopping": {**SD, "student-down.patience": 2},
    "student-down, larger server student": {**SD, "student-down.server-model": "cnn"},
    # Function-space FedAvg: the mean of the clients' logits is the student's plus the mean of
    # their changes; prior calibration removes each client's shift towards its own classes.
    "student-down, logit-mean + prior": {**SD, "aggregation.rule": "logit-mean",
                                         "student-down.calibrate": "prior"},
    "student-down, logit-mean + prior + kd 0.1": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "student-down.local-loss": "kd", "student-down.kd-weight": 0.1},
    "student-down, logit-mean + prior, mse on logits": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits"},
    "student-down, logit-mean + prior, mse on logits, server lr 2": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits", "student-down.server-lr": 2.0},
    "student-down, logit-mean + prior, mse on logits, server momentum 0.9": {
        **BEST, "student-down.server-momentum": 0.9},
    "student-down, logit-mean + prior, mse on logits, 1,500 server steps": {
        **BEST, "distill.server-steps": 1500},
    "student-down, logit-mean + prior, mse on logits, 1,600 proxy samples": {
        **BEST, "distill.public-batch": 1600},
    "student-down, logit-mean + prior, mse on logits, feature local": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits", "student-down.local-loss": "feature",
        "student-down.kd-weight": 0.1},
    "student-down, logit-mean + prior, mse on logits, feature local (lambda 0.001)": {
        **BEST, "student-down.local-loss": "feature", "student-down.kd-weight": 0.001},
    "student-down, logit-mean + prior, mse on logits, relation local": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits", "student-down.local-loss": "relation",
        "student-down.kd-weight": 0.1},
    "student-down, logit-mean + prior, mse on logits, certainty": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits", "student-down.certainty": "support"},
    "student-down, logit-mean + prior, mse on logits, larger server student": {
        **SD, "aggregation.rule": "logit-mean", "student-down.calibrate": "prior",
        "distill.loss": "mse-logits", "student-down.server-model": "cnn"},
    # A server optimiser over rounds on the best row (logit_levers_100_avg.md, _s3.md): the
    # evaluated global model a running average of the student (distill.average), a larger
    # server-lr, round momentum; fewer server steps and larger server batches (speed).
    "student-down, best, server lr 2, average 0.8": {
        **BEST, "student-down.server-lr": 2.0, "distill.average": 0.8},
    "student-down, best, server lr 3, average 0.8": {
        **BEST, "student-down.server-lr": 3.0, "distill.average": 0.8},
    "student-down, best, server lr 4, average 0.8": {
        **BEST, "student-down.server-lr": 4.0, "distill.average": 0.8},
    "student-down, best, server lr 3, average 0.9": BEST_AVERAGED,
    "student-down, best, server lr 3": {**BEST, "student-down.server-lr": 3.0},
    "student-down, best, server lr 3, average 0.8, 150 server steps": {
        **BEST, "student-down.server-lr": 3.0, "distill.average": 0.8,
        "distill.server-steps": 150},
    "student-down, best, server lr 2, 150 server steps": {
        **BEST, "student-down.server-lr": 2.0, "distill.server-steps": 150},
    "student-down, best, server lr 2, 150 server steps of 128": {
        **BEST, "student-down.server-lr": 2.0, "distill.server-steps": 150,
        "student-down.server-batch": 128},
    "student-down, best, average 0.8, round momentum 0.5": {
        **BEST, "student-down.round-momentum": 0.5, "distill.average": 0.8},
    "student-down, best, server lr 2, average 0.8, round momentum 0.5": {
        **BEST, "student-down.server-lr": 2.0, "student-down.round-momentum": 0.5,
        "distill.average": 0.8},
    # Speed: fewer server steps, plain or at SGD momentum (logit_levers_s3.md).
    **{f"student-down, best, server lr 3, average 0.9, {steps} server steps, momentum {beta}": {
        **BEST_AVERAGED, "distill.server-steps": steps, "student-down.server-momentum": beta}
       for steps, beta in ((150, 0.9), (250, 0.5), (200, 0.6), (150, 0.67))},
    "student-down, best, server lr 3, average 0.9, 300 server steps": {
        **BEST_AVERAGED, "distill.server-steps": 300},
    # FedExP's step at three caps on 250 steps at momentum 0.5, and at 5 on make run's fit
    # (200 steps at momentum 0.6).
    **{f"student-down, best, fedexp up to {cap:g}, average 0.9, {steps} server steps, "
       f"momentum {beta}": {**FEDEXP, "student-down.server-lr": cap, "distill.server-steps": steps,
                            "student-down.server-momentum": beta}
       for cap, steps, beta in ((3.0, 250, 0.5), (5.0, 250, 0.5), (8.0, 250, 0.5),
                                (5.0, 200, 0.6))},
    # make run's row with a longer running average (a plateau set by each round's fitting
    # noise comes down as the average spans more rounds).
    **{f"student-down, best, fedexp up to 5, average {decay:g}, 200 server steps, momentum 0.6": {
        **FEDEXP, "student-down.server-lr": 5.0, "distill.server-steps": 200,
        "student-down.server-momentum": 0.6, "distill.average": decay}
       for decay in (0.95, 0.97)},
    # make run's row with FedAvg's weighting: each client's logits by its data size.
    "student-down, best, fedexp up to 5, average 0.9, 200 server steps, momentum 0.6, "
    "weighted by data size": {
        **FEDEXP, "student-down.server-lr": 5.0, "distill.server-steps": 200,
        "student-down.server-momentum": 0.6, "aggregation.rule": "weighted-logit-mean"},
    # Logit adjustment in local training (student-down.local-logit-adjust, tau 1 and 0.5) was
    # measured at commit 366d17e (logit_levers_adjust.md: worse at 2 classes per client) and
    # removed with its option.
    # Data-free: no proxy set, the clients synthesise one (FedDM-style distribution matching,
    # 10 images per class held, every 20 rounds): DS-FL on it (logit_global's row) and make
    # run's student-down on it.
    "synthetic-proxy": {"algorithm": "synthetic-proxy", "aggregation.rule": "classwise",
                        "synthesis.method": "matching", "synthesis.every": 20,
                        "synthesis.label-weight": 0.5},
    "synthetic-student-down, fedexp up to 5, average 0.9, 200 server steps, momentum 0.6": {
        **FEDEXP, "algorithm": "synthetic-student-down", "student-down.server-lr": 5.0,
        "distill.server-steps": 200, "student-down.server-momentum": 0.6,
        "synthesis.method": "matching", "synthesis.every": 20},
    # Bytes with McMahan's CNN (1.66 M weights; the logits up do not depend on the model).
    "fedavg, McMahan CNN": {"algorithm": "fedavg", "train.model": "cnn"},
    "student-down, best, server lr 3, average 0.8, McMahan CNN": {
        **BEST, "student-down.server-lr": 3.0, "distill.average": 0.8, "train.model": "cnn"},
    "dsfl, certainty": {"algorithm": "dsfl", "aggregation.rule": "era",
                        "dsfl.certainty": "support"},
    # Example-level DP at epsilon 8 (delta 1e-5) over the planned rounds, DP-SGD on every client.
    "fedavg, DP epsilon 8": {"algorithm": "fedavg", **DP_EPSILON_8},
    "student-down, logit-mean + prior, mse on logits, DP epsilon 8": {**BEST, **DP_EPSILON_8},
    "student-down, best, server lr 3, average 0.8, DP epsilon 8": {
        **BEST, "student-down.server-lr": 3.0, "distill.average": 0.8, **DP_EPSILON_8},
    "student-down, best, server lr 3, average 0.9, DP epsilon 8": {**BEST_AVERAGED,
                                                                   **DP_EPSILON_8},
    **{f"student-down, best, {rule.replace('-', ' ')}, server lr 3, average 0.9, DP epsilon 8": {
        **BEST_AVERAGED, "aggregation.rule": rule, **DP_EPSILON_8}
       for rule in ("trimmed-mean", "median")},
    # Under DP the targets carry the clients' DP-SGD noise, which a server-lr moves the student
    # towards as far as the signal: the trimmed mean at other fixed server-lrs, and at FedExP's.
    **{f"student-down, best, trimmed mean, server lr {eta:g}, average 0.9, DP epsilon 8": {
        **BEST_AVERAGED, "aggregation.rule": "trimmed-mean", "student-down.server-lr": eta,
        **DP_EPSILON_8}
       for eta in (1.0, 2.0, 5.0, 8.0, 12.0)},
    # The loss guard fires under DP (server-lr 8 cut to 5.3 by round 26 on every seed, the
    # student restarted from the average each time): the same rows without it.
    **{f"student-down, best, trimmed mean, server lr {eta:g}, no guard, average 0.9, "
       "DP epsilon 8": {
        **BEST_AVERAGED, "aggregation.rule": "trimmed-mean", "student-down.server-lr": eta,
        "student-down.server-lr-guard": 0.0, **DP_EPSILON_8}
       for eta in (8.0, 12.0)},
    # The best round's own rule at server-lr 8 under DP.
    "student-down, best, logit mean, server lr 8, average 0.9, DP epsilon 8": {
        **BEST_AVERAGED, "student-down.server-lr": 8.0, **DP_EPSILON_8},
    # The mean, each teacher's row clipped to the sample's median length: seed 0's client of 27
    # examples trains on noise under DP-SGD, answers with rows twice as long as the others',
    # and the plain mean follows it.
    "student-down, best, clipped logit mean, server lr 8, average 0.9, DP epsilon 8": {
        **BEST_AVERAGED, "student-down.server-lr": 8.0, "aggregation.rule": "clipped-logit-mean",
        **DP_EPSILON_8},
    # The same, clipped around the teachers' coordinate-wise median (one step of centred
    # clipping): a teacher that answers in another direction is bounded too.
    "student-down, best, median-clipped logit mean, server lr 8, average 0.9, DP epsilon 8": {
        **BEST_AVERAGED, "student-down.server-lr": 8.0, "aggregation.rule": "clipped-logit-mean",
        "aggregation.clipped-logit-mean.centre": "median", **DP_EPSILON_8},
    "student-down, best, trimmed mean, fedexp up to 5, average 0.9, DP epsilon 8": {
        **FEDEXP, "aggregation.rule": "trimmed-mean", "student-down.server-lr": 5.0,
        **DP_EPSILON_8},
    "dsfl, DP epsilon 8": {"algorithm": "dsfl", "aggregation.rule": "era", **DP_EPSILON_8},
}


def run_variant(name: str, partition: str, seed: int, rounds: int, out: Path) -> dict[str, Any]:
    from tests.algorithms.inprocess import run_inprocess

    overrides = {**SHARED, **PARTITIONS[partition], **VARIANTS[name], "seed": seed,
                 "data.seed": seed, "num-server-rounds": rounds}
    start = time.monotonic()
    rows, _, _ = run_inprocess(overrides, NUM_CLIENTS, out)
    elapsed = time.monotonic() - start
    acc = [r["global-accuracy"] for r in rows if r.get("global-accuracy") is not None]
    consensus = [r["consensus-accuracy"] for r in rows if r.get("consensus-accuracy") is not None]
    return {"name": name, "partition": partition, "seed": seed, "rounds": rounds,
            "final": acc[-1], "best": max(acc), "last5": statistics.mean(acc[-5:]),
            "swing10": swing(acc, 10), "swing20": swing(acc, 20),
            "consensus5": statistics.mean(consensus[-5:]) if consensus else None,
            "up": statistics.mean(r["bytes-up-per-client"] for r in rows),
            "down": statistics.mean(r["bytes-down-per-client"] for r in rows),
            "s_per_round": elapsed / len(rows), "curve": acc,
            # the server fit's loss per round (student-down; None elsewhere): what the server-lr
            # guard reads, kept so that a guard can be replayed from this file
            "fit_loss": [r.get("student-distill-loss") for r in rows],
            # the clients' own models on their test splits, last round (None: not evaluated)
            "personalized": rows[-1].get("personalized-accuracy"),
            # the server-lr each round's fit ran at (the guard's cuts, FedExP's steps)
            "server_lr": [r.get("student-server-lr") for r in rows]}


def swing(curve: list[float], rounds: int) -> float:
    """Max minus min of the last ``rounds`` values of an accuracy curve."""
    return max(curve[-rounds:]) - min(curve[-rounds:])


def table(results: list[dict[str, Any]]) -> str:
    header = ["partition", "variant", "seeds", "final global acc", "Δ final vs FedAvg (paired)",
              "best", "mean of last 5",
              "swing, last 10", "swing, last 20", "consensus acc, last 5", "up / client / round",
              "down / client / round", "s / round"]
    cells = []
    for partition in PARTITIONS:
        fedavg = {r["seed"]: r["final"] for r in results
                  if r["partition"] == partition and r["name"] == "fedavg"}
        for name in VARIANTS:
            group = [r for r in results if r["partition"] == partition and r["name"] == name]
            if not group:
                continue
            paired = ("baseline" if name == "fedavg" else paired_cell(
                paired_mean_std({r["seed"]: r["final"] for r in group}, fedavg), ".4f")
                if fedavg else "-")
            c = [r["consensus5"] for r in group if r["consensus5"] is not None]
            marked = name + (" *" if any(r.get("source") == "scratch" for r in group) else "")
            final, *rest = (mean_std_cell(mean_std([r[k] for r in group]), ".4f")
                            for k in ("final", "best", "last5", "swing10", "swing20"))
            cells.append([partition, marked, len(group), final, paired, *rest,
                mean_std_cell(mean_std(c), ".4f") if c else "-",
                f"{statistics.mean(r['up'] for r in group):,.0f}",
                f"{statistics.mean(r['down'] for r in group):,.0f}",
                fmt(statistics.mean(r["s_per_round"] for r in group), ".2f")])
    return "\n".join(table_lines(header, cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--partitions", nargs="+", default=["dir0.1"], choices=list(PARTITIONS))
    parser.add_argument("--only", nargs="*", help="variants to run (exact names)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="logit_levers")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table, run nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / f"{args.name}.json"
    results = json.loads(path.read_text())["results"] if path.exists() else []
    if args.report_only:
        write(out, args, results)
        return
    done = {(r["name"], r["partition"], r["seed"], r["rounds"]) for r in results}
    for partition in args.partitions:
        for seed in args.seeds:
            for name in args.only or VARIANTS:
                if (name, partition, seed, args.rounds) in done:
                    continue
                r = run_variant(name, partition, seed, args.rounds,
                                Path("/tmp") / "fedkd-levers" / f"{name}-{partition}-{seed}")
                results.append(r)
                print(f"{name} {partition} seed {seed}: final {r['final']:.4f} last5 "
                      f"{r['last5']:.4f} {r['s_per_round']:.2f} s/round", flush=True)
                write(out, args, results)


def write(out: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    # What the file holds, not only this call's share: one command per partition.
    seen: dict[str, set[int]] = {}
    for r in results:
        seen.setdefault(r["partition"], set()).add(r["seed"])
    command = "; ".join(
        f".venv/bin/python -m benchmarks.logit_levers --rounds {args.rounds} --seeds "
        f"{' '.join(map(str, sorted(seeds)))} --partitions {partition} --name {args.name}"
        for partition, seeds in seen.items()) or "(none)"
    text = (f"In-process (fedkd's round loop and client app, no Flower transport), Fashion-MNIST, "
            f"{NUM_CLIENTS} clients, 10 a round, fedgen-cnn, {args.rounds} rounds of 20 local "
            "steps, 1,000 proxy samples a round unless said, lr 0.05. Each row: variant, then "
            f"mean ± std over seeds. Command: `{command}` (one row: `--only NAME`).\n\n"
            + table(results) + "\n"
            + ("\nRows marked * were run, before this script existed, by a scratch copy of it: the same "
            "overrides through the same in-process round loop (`student-down, logit-mean + prior` "
            "was run both ways and agrees to the last digit); consensus accuracy is missing where "
            "that copy ran without the proxy labels; seconds per round there are rougher (other "
            "work shared the 2 cores).\n" if any(r.get("source") for r in results) else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    (out / f"{args.name}.json").write_text(json.dumps({"command": command, "results": results},
                                                      indent=1))


if __name__ == "__main__":
    main()
