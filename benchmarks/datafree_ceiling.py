"""How far can a data-free, logit-only server student get? The inputs against the aggregation rule.

FedGen-logits' server never sees data or weights: it learns only the teachers' aggregated logits
on inputs it made up. This benchmark separates the two things that bound its student, without
the federation around them:

1. **The teachers and the rule.** Each of the 20 clients of a Dirichlet-alpha Fashion-MNIST split
   trains McMahan's CNN on its own data only (``--teacher-steps`` SGD steps, about what a client
   gets in the data-free benchmark: 15 rounds x 50% sampling x 20 steps). Every deterministic
   aggregation rule then labels the official test set from the 20 teachers' logits (weights: the
   teachers' data sizes for ``weighted``, their label counts for ``classwise``): the accuracy of
   that ensemble is what a perfect student could copy.
2. **The inputs.** A server student (the same CNN) is distilled exactly as FedGen-logits' server
   does it (``--rounds`` rounds of ``--per-round`` fresh inputs labelled by the rule, a replay of
   the last 10 rounds, 200 SGD steps of batch 32 at lr 0.05 per round, T = 1), with the inputs
   drawn from: real unlabeled images (the public split, never in any client's data: the ceiling
   for a perfect generator), the untrained :class:`~fedkd.models.generators.LowFrequencyGenerator`
   (random smooth images), the untrained :class:`~fedkd.models.generators.InputGenerator`, and
   uniform pixel noise. The student's accuracy on the official test set is reported.

Run (the numbers in ``benchmarks/results/datafree_ceiling.md``; about 40 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.datafree_ceiling --seeds 0 1 2

Nothing here goes through Flower: it is the server's arithmetic with the network taken out.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT
from fedkd.aggregation import AGGREGATORS, AggregationRule, build_aggregator
from fedkd.data.datasets import ArrayDataset
from fedkd.data.federated import DataSpec, FederatedData, load_federated
from fedkd.experiments.report import mean_std, mean_std_cell, table_lines
from fedkd.models.generators import InputGenerator, LowFrequencyGenerator
from fedkd.models.zoo import build_model
from fedkd.training import evaluate, fit_supervised, fit_to_targets, predict_logits, seeded_generator

#: (input source, rule) pairs distilled for every seed, and those for the first seed only.
STUDENT_RUNS = [("real public images", "classwise"), ("low-frequency prior", "classwise"),
                ("conv generator (untrained)", "classwise")]
FIRST_SEED_ONLY = [("real public images", "mean"), ("low-frequency prior", "mean"),
                   ("uniform noise", "classwise")]
#: Deterministic rules compared on the test set (pate is randomised and one-hot).
ENSEMBLE_RULES = [n for n in AGGREGATORS.names() if not AGGREGATORS.get(n).randomized]

InputSource = Callable[[int, torch.Generator], np.ndarray]


def train_teachers(data: FederatedData, steps: int, seed: int) -> list[torch.nn.Module]:
    """Each client's CNN trained on its own training split only."""
    teachers = []
    for k in range(data.num_partitions):
        torch.manual_seed(seed * 1000 + k)
        model = build_model("cnn", data.input_shape, data.num_classes)
        fit_supervised(model, data.client(k).train, steps=steps, batch_size=32, learning_rate=0.05,
                       generator=seeded_generator(seed, k))
        model.eval()
        teachers.append(model)
    return teachers


def teacher_logits(teachers: list[torch.nn.Module], x: np.ndarray) -> np.ndarray:
    return np.stack([predict_logits(t, x) for t in teachers])


def rule_weights(rule: AggregationRule, counts: np.ndarray) -> np.ndarray | None:
    """Label counts [K, C] for class-axis rules, data sizes [K] for the weighted rule."""
    if not rule.uses_weights:
        return None
    return counts if rule.weight_axis == "class" else counts.sum(axis=1)


def input_sources(data: FederatedData, seed: int) -> dict[str, InputSource]:
    c, shape = data.num_classes, data.input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        low = LowFrequencyGenerator(c, shape)
        conv = InputGenerator(c, shape)

    def from_generator(g: torch.nn.Module) -> InputSource:
        def draw(n: int, gen: torch.Generator) -> np.ndarray:
            with torch.no_grad():
                g.train()  # BatchNorm in the conv generator: batch statistics, as in fedgen-logits
                return g(g.sample_noise(n, gen), torch.arange(n) % c).numpy()
        return draw

    public = data.public.x
    return {
        "real public images": lambda n, gen: public[torch.randint(len(public), (n,), generator=gen).numpy()],
        "low-frequency prior": from_generator(low),
        "conv generator (untrained)": from_generator(conv),
        "uniform noise": lambda n, gen: (torch.rand((n, *shape), generator=gen) * 2 - 1).numpy(),
    }


def distil_student(data: FederatedData, test: ArrayDataset, teachers: list[torch.nn.Module],
                   counts: np.ndarray, draw: InputSource, rule_name: str, args: argparse.Namespace,
                   seed: int) -> float:
    """FedGen-logits' server loop with the network taken out; the student's test accuracy."""
    rule = build_aggregator(rule_name)
    weights = rule_weights(rule, counts)
    gen = seeded_generator(seed, 1)
    torch.manual_seed(seed + 5)
    student = build_model("cnn", data.input_shape, data.num_classes)
    xs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    for rnd in range(args.rounds):
        x = np.ascontiguousarray(draw(args.per_round, gen), dtype=np.float32)
        xs.append(x)
        ts.append(rule(teacher_logits(teachers, x), weights=weights))
        fit_to_targets(student, np.concatenate(xs[-10:]), np.concatenate(ts[-10:]),
                       steps=args.student_steps, batch_size=32, learning_rate=0.05, temperature=1.0,
                       generator=seeded_generator(seed, rnd, 9))
    return evaluate(student, test).accuracy


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = load_federated(DataSpec(alpha=args.alpha, num_partitions=args.clients, seed=seed))
    counts = data.label_histogram().astype(np.float64)
    start = time.monotonic()
    teachers = train_teachers(data, args.teacher_steps, seed)
    test = data.global_test
    if args.test_samples:  # a quick look (and the smoke test): the first n test images
        test = test.subset(np.arange(min(args.test_samples, len(test))))
    test_logits = teacher_logits(teachers, test.x)
    y = test.y
    out: dict[str, Any] = {
        "seed": seed,
        "teacher-accuracy-mean": float(np.mean([(z.argmax(1) == y).mean() for z in test_logits])),
        "ensemble": {},
        "student": {},
        "teacher-seconds": time.monotonic() - start,
    }
    for name in ENSEMBLE_RULES:
        rule = build_aggregator(name)
        targets = rule(test_logits, weights=rule_weights(rule, counts))
        out["ensemble"][name] = float((targets.argmax(1) == y).mean())
    print(f"seed {seed}: teachers {out['teacher-accuracy-mean']:.3f}, ensemble "
          + ", ".join(f"{k} {v:.3f}" for k, v in out["ensemble"].items()), flush=True)
    sources = input_sources(data, seed)
    runs = STUDENT_RUNS + (FIRST_SEED_ONLY if seed == args.seeds[0] else [])
    for source, rule_name in runs:
        t0 = time.monotonic()
        acc = distil_student(data, test, teachers, counts, sources[source], rule_name, args, seed)
        out["student"][f"{source} | {rule_name}"] = acc
        print(f"  student on {source}, {rule_name}: {acc:.4f} ({time.monotonic() - t0:.0f} s)", flush=True)
    return out


def seeds_cell(values: list[float]) -> str:
    """Mean ± sample std (n - 1) over the seeds at 4 decimals, and the number of seeds."""
    stat = mean_std(values)
    if stat is None:
        return "-"
    return f"{mean_std_cell(stat, '.4f')} ({stat[2]} seed{'s' if stat[2] > 1 else ''})"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    seeds = " ".join(str(r["seed"]) for r in results)
    teachers = seeds_cell([r["teacher-accuracy-mean"] for r in results])
    lines = [
        f"Fashion-MNIST, {args.clients} clients, Dirichlet alpha {args.alpha}, local-only CNN "
        f"teachers ({args.teacher_steps} steps of batch 32, lr 0.05); server student: McMahan's CNN, "
        f"{args.rounds} rounds x {args.per_round} inputs, replay 10 rounds, {args.student_steps} steps per round. "
        f"{'First ' + str(args.test_samples) + ' images of the official' if args.test_samples else 'Official'} test set. Command: .venv/bin/python -m benchmarks.datafree_ceiling --seeds {seeds} "
        f"--rounds {args.rounds} --per-round {args.per_round} --teacher-steps {args.teacher_steps}"
        f"{f' --student-steps {args.student_steps}' if args.student_steps != 200 else ''}"
        f"{f' --test-samples {args.test_samples}' if args.test_samples else ''}",
        "",
        f"Mean single-teacher accuracy: {teachers}",
        "",
    ]
    lines += table_lines(["ensemble of the 20 teachers, rule", "test accuracy"],
                         ([name, seeds_cell([r["ensemble"][name] for r in results])]
                          for name in ENSEMBLE_RULES))
    keys = dict.fromkeys(k for r in results for k in r["student"])
    lines += [""] + table_lines(
        ["student distilled on", "rule", "test accuracy"],
        ([*key.split(" | "), seeds_cell([r["student"][key] for r in results if key in r["student"]])]
         for key in keys))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=768)
    parser.add_argument("--student-steps", type=int, default=200, help="server SGD steps per round")
    parser.add_argument("--test-samples", type=int, default=0,
                        help="evaluate on the first n official test images only (0: all 10,000)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args))
        md = report(results, args)
        (out / "datafree_ceiling.md").write_text(md)
        (out / "datafree_ceiling.json").write_text(json.dumps({"args": vars(args), "results": results},
                                                              indent=2))
    print(md, flush=True)


if __name__ == "__main__":
    main()
