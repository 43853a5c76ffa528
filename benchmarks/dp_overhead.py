"""The cost of DP-SGD on one client round: plain SGD against Opacus DP-SGD (hooks, ghost, auto).

One Fashion-MNIST client (Dirichlet partition of the pool into ``--clients`` clients, ``--alpha``,
partition ``--partition``; its local train split) trains ``--steps`` steps of batch ``--batch-size``
with fedkd's own code paths:

* ``plain``: :func:`fedkd.training.fit_supervised` (what a client runs without ``privacy.dp-sgd``);
* ``dp-hooks`` / ``dp-ghost``: :meth:`fedkd.privacy.dpsgd.ClientPrivacy.fit` with
  ``grad_sample_mode`` ``hooks`` / ``ghost``, noise multiplier 1.0, clip 1.0, a fresh
  ``ClientPrivacy`` with an empty node state each time (what a client runs with
  ``privacy.dp-sgd``; ``make_private``, Poisson sampling with the same expected batch, per-sample
  clipping, noise, unwrapping and the ledger update are all inside the timed region);
* ``plain+fd`` / ``dp-auto+fd``: the same with FD's distillation term added to the loss (a
  per-sample KL towards per-class targets), DP in the mode ``auto`` picks for the model (ghost
  for ``cnn``, hooks for ``fedgen-cnn``): the cost of an FD client round.

The fixed part of a DP round (everything but the steps: ``make_private``, the Poisson loader,
unwrapping, the ledger) is also timed alone, as ``ClientPrivacy.fit`` with 0 steps.

Everything runs in ONE process with ``torch.set_num_threads(1)``. One untimed warm-up round of
every (model, mode) comes first (imports, allocator), then ``--repeats`` timed repeats interleave
all (model, mode) pairs, the order of the modes rotating from repeat to repeat so that a slow
phase of the machine does not land on one mode only. Each round starts from a freshly built
model (same seed; building it is not timed). Per round we record process CPU time
(``time.process_time``) and wall time (``time.perf_counter``); the table gives medians over the
repeats and the ratio DP / plain of those medians. Process CPU time is the primary measure: it
is far less sensitive than wall time to other jobs on a shared machine.

Run (a few minutes on 2 CPU cores with the defaults)::

    .venv/bin/python -m benchmarks.dp_overhead [--models cnn,fedgen-cnn] [--repeats 5]

Writes ``benchmarks/results/dp_overhead.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import opacus
import torch

from fedkd.config import PrivacyConfig
from fedkd.data.federated import DataSpec, load_federated
from fedkd.experiments.report import table_lines
from fedkd.models import build_model
from fedkd.privacy.dpsgd import ClientPrivacy
from fedkd.losses import kd_kl_from_probs
from fedkd.training import batch_mean, fit_supervised, seeded_generator

ROOT = Path(__file__).resolve().parent.parent

#: The project's target: DP-SGD costs at most this many times a plain round.
TARGET_RATIO = 2.5

MODES = ("plain", "plain+fd", "dp-hooks", "dp-ghost", "dp-auto+fd")
#: Each DP mode's plain counterpart: ``+fd`` adds FD's distillation term (a per-sample KL towards
#: per-class targets, weight 1, T 1) to the loss, which ``auto`` runs with the model's mode.
BASELINE = {"dp-hooks": "plain", "dp-ghost": "plain", "dp-auto+fd": "plain+fd"}
DP_MODES = tuple(BASELINE)


def fd_term(num_classes: int):  # noqa: ANN201 - a fedkd.training.PerSampleLoss
    """FD's distillation term with fixed per-class targets (what a client gets in a round)."""
    targets = torch.softmax(torch.randn(num_classes, num_classes,
                                        generator=torch.Generator().manual_seed(0)), dim=1)
    return lambda logits, y: kd_kl_from_probs(logits, targets[y], 1.0, reduction="none")


def one_round(model_name: str, mode: str, data: Any, input_shape: tuple[int, int, int],
              num_classes: int, args: argparse.Namespace, rep: int,
              steps: int | None = None) -> dict[str, Any]:
    """Train one round of ``mode`` from a fresh model; returns CPU and wall seconds.

    ``steps=0`` with a DP mode times only the fixed cost of a DP round (``make_private``, the
    Poisson loader, unwrapping, the ledger update), no training step.
    """
    torch.manual_seed(args.seed)
    model = build_model(model_name, input_shape, num_classes)
    generator = seeded_generator(args.seed, rep + 1, args.partition)  # warm-up: rep -1
    kwargs = dict(steps=args.steps if steps is None else steps, batch_size=args.batch_size,
                  learning_rate=args.lr, generator=generator)
    ledger = None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    term = fd_term(num_classes) if mode.endswith("+fd") else None
    if mode.startswith("plain"):
        stats = fit_supervised(model, data, extra_loss=batch_mean(term) if term else None, **kwargs)
    else:
        cfg = PrivacyConfig(dp_sgd=True, noise_multiplier=args.noise_multiplier,
                            max_grad_norm=args.max_grad_norm,
                            grad_sample_mode=mode.removeprefix("dp-").removesuffix("+fd"))
        ledger = ClientPrivacy(cfg, {}, planned_rounds=1)
        stats = ledger.fit(model, data, per_sample_loss=term, **kwargs)
        ledger.save()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out = {"model": model_name, "mode": mode, "repeat": rep, "cpu-s": cpu, "wall-s": wall,
           "steps": stats.steps, "samples-seen": stats.samples_seen, "train-loss": stats.loss}
    if ledger is not None and stats.steps:
        out["epsilon"] = ledger.epsilon()  # after the timed region
    return out


def summarise(rounds: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        med = {}
        for mode in MODES:
            rs = [r for r in rounds if r["model"] == m and r["mode"] == mode]
            med[mode] = {"cpu-s": statistics.median(r["cpu-s"] for r in rs),
                         "wall-s": statistics.median(r["wall-s"] for r in rs),
                         "cpu-s-all": [round(r["cpu-s"], 4) for r in rs],
                         "wall-s-all": [round(r["wall-s"], 4) for r in rs],
                         "samples-seen": statistics.median(r["samples-seen"] for r in rs)}
            if mode in DP_MODES:
                med[mode]["epsilon"] = rs[0]["epsilon"]
                setup = [r for r in rounds if r["model"] == m and r["mode"] == mode + "/setup"]
                med[mode]["setup-cpu-s"] = statistics.median(r["cpu-s"] for r in setup)
                med[mode]["setup-wall-s"] = statistics.median(r["wall-s"] for r in setup)
        for mode in DP_MODES:
            base = BASELINE[mode]
            cpu_ratio = med[mode]["cpu-s"] / med[base]["cpu-s"]
            # Ratio within each repeat (the DP and plain rounds ran back to back): its spread
            # shows how much the machine's load moved the numbers.
            per_rep = [d / p for d, p in zip(med[mode]["cpu-s-all"], med[base]["cpu-s-all"])]
            wall_ratio = med[mode]["wall-s"] / med[base]["wall-s"]
            rows.append({
                "model": m, "mode": mode, "baseline": base,
                "plain-cpu-s": med[base]["cpu-s"], "plain-wall-s": med[base]["wall-s"],
                "dp-cpu-s": med[mode]["cpu-s"], "dp-wall-s": med[mode]["wall-s"],
                "cpu-ratio": cpu_ratio, "wall-ratio": wall_ratio,
                "cpu-ratio-per-repeat": [round(v, 3) for v in per_rep],
                "target-met-cpu": cpu_ratio <= TARGET_RATIO,
                "target-met-wall": wall_ratio <= TARGET_RATIO,
                "epsilon-one-round": med[mode]["epsilon"],
                "dp-setup-cpu-s": med[mode]["setup-cpu-s"],
                "dp-setup-wall-s": med[mode]["setup-wall-s"],
                "plain-cpu-s-all": med[base]["cpu-s-all"], "dp-cpu-s-all": med[mode]["cpu-s-all"],
                "plain-wall-s-all": med[base]["wall-s-all"], "dp-wall-s-all": med[mode]["wall-s-all"],
                "dp-samples-seen-median": med[mode]["samples-seen"],
            })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = ["model", "DP mode", "plain CPU s", "DP CPU s", "DP / plain (CPU)",
              "per-repeat range (CPU)", "plain wall s", "DP wall s", "DP / plain (wall)",
              "DP fixed cost CPU s (0 steps)", "target <= 2.5x (CPU)"]
    return "\n".join(table_lines(header, ([
        r["model"], f"{r['mode'].removeprefix('dp-')} (vs {r['baseline']})", f"{r['plain-cpu-s']:.3f}",
        f"{r['dp-cpu-s']:.3f}", f"{r['cpu-ratio']:.2f}x",
        f"{min(r['cpu-ratio-per-repeat']):.2f}-{max(r['cpu-ratio-per-repeat']):.2f}x",
        f"{r['plain-wall-s']:.3f}", f"{r['dp-wall-s']:.3f}", f"{r['wall-ratio']:.2f}x",
        f"{r['dp-setup-cpu-s']:.3f}", "met" if r["target-met-cpu"] else "NOT met",
    ] for r in rows)))


def verdict(rows: list[dict[str, Any]]) -> str:
    met = [r for r in rows if r["target-met-cpu"]]
    missed = [r for r in rows if not r["target-met-cpu"]]
    parts = []
    if met:
        parts.append("met (CPU time) for " + ", ".join(
            f"{r['model']}/{r['mode'].removeprefix('dp-')} ({r['cpu-ratio']:.2f}x)" for r in met))
    if missed:
        parts.append("NOT met (CPU time) for " + ", ".join(
            f"{r['model']}/{r['mode'].removeprefix('dp-')} ({r['cpu-ratio']:.2f}x)" for r in missed))
    straddle = [r for r in rows
                if min(r["cpu-ratio-per-repeat"]) <= TARGET_RATIO < max(r["cpu-ratio-per-repeat"])]
    disagree = [r for r in rows if r["target-met-cpu"] != r["target-met-wall"]]
    text = f"Target DP / plain <= {TARGET_RATIO}x: " + "; ".join(parts) + "."
    if disagree:
        text += (" Wall time gives a different verdict for " + ", ".join(
            f"{r['model']}/{r['mode'].removeprefix('dp-')} ({r['wall-ratio']:.2f}x)"
            for r in disagree) + " (wall time is the noisier measure here).")
    if straddle:
        text += (" Borderline: the per-repeat ratios straddle the target for " + ", ".join(
            f"{r['model']}/{r['mode'].removeprefix('dp-')} "
            f"({min(r['cpu-ratio-per-repeat']):.2f}-{max(r['cpu-ratio-per-repeat']):.2f}x)"
            for r in straddle) + ", so the verdict there can flip from run to run on this machine.")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,fedgen-cnn", help="comma-separated model names")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="train.local-steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Opacus's advisory warnings (secure RNG off, full backward hooks) would flood the output.
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    fed = load_federated(DataSpec(dataset="fashion-mnist", partitioner="dirichlet",
                                  num_partitions=args.clients, alpha=args.alpha, seed=args.seed))
    data = fed.client(args.partition).train
    print(f"client {args.partition}: {len(data)} local train samples; models {models}; "
          f"{args.steps} steps of batch {args.batch_size}; {args.repeats} repeats", flush=True)

    for m in models:  # untimed warm-up
        for mode in MODES:
            one_round(m, mode, data, fed.input_shape, fed.num_classes, args, rep=-1)
            if mode in DP_MODES:
                one_round(m, mode, data, fed.input_shape, fed.num_classes, args, rep=-1, steps=0)
    rounds: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
        for m in models:
            for mode in order:
                r = one_round(m, mode, data, fed.input_shape, fed.num_classes, args, rep)
                rounds.append(r)
                print(f"  rep {rep} {m:<10} {mode:<8} cpu {r['cpu-s']:.3f}s wall {r['wall-s']:.3f}s",
                      flush=True)
            for mode in DP_MODES:  # fixed cost of a DP round: everything but the steps
                r = one_round(m, mode, data, fed.input_shape, fed.num_classes, args, rep, steps=0)
                r["mode"] = mode + "/setup"
                rounds.append(r)
    rows = summarise(rounds, models)

    command = (f".venv/bin/python -m benchmarks.dp_overhead --models {','.join(models)} "
               f"--repeats {args.repeats} --steps {args.steps}")
    header = (
        f"DP-SGD overhead on one client round. Fashion-MNIST, Dirichlet alpha {args.alpha:g} over "
        f"{args.clients} clients, partition {args.partition} ({len(data)} local train samples), "
        f"{args.steps} local steps of batch {args.batch_size} (DP: Poisson sampling, same expected "
        f"batch), lr {args.lr:g}; DP-SGD via `ClientPrivacy.fit` (fresh ledger each round, noise "
        f"multiplier {args.noise_multiplier:g}, clip {args.max_grad_norm:g}, opacus "
        f"{opacus.__version__}); plain via `fit_supervised`. Medians of {args.repeats} interleaved "
        f"repeats in one process after an untimed warm-up, `torch.set_num_threads(1)`, torch "
        f"{torch.__version__} on CPU. Timings come from a shared 2-core machine "
        f"({os.cpu_count()} CPUs visible) on which another benchmark may have been running: "
        f"process CPU time is the primary measure, wall time is shown for reference and is "
        f"inflated by contention.\n\nCommand: `{command}`"
    )
    md = header + "\n\n" + table(rows) + "\n\n" + verdict(rows) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dp_overhead.md").write_text(md)
    (out / "dp_overhead.json").write_text(json.dumps({
        "command": command, "args": vars(args), "target-ratio": TARGET_RATIO,
        "local-train-samples": len(data), "torch": torch.__version__,
        "opacus": opacus.__version__, "platform": platform.platform(),
        "cpu-count": os.cpu_count(), "load-average-at-end": os.getloadavg(),
        "results": rows, "rounds": rounds,
    }, indent=2))
    print(md)


if __name__ == "__main__":
    main()
