"""Run one fedkd simulation through the real Flower simulation engine, offline (``make run``).

A thin front end on :mod:`fedkd.experiments.runner`, the launcher ``fedkd simulate`` uses too:
the configuration (pyproject defaults + ``--set`` overrides) is validated completely before
anything starts, the algorithm's own checks included; then our own ``flower-superlink
--simulation`` starts on 127.0.0.1 (private FLWR_HOME, telemetry and update checks off), the app
in this repository is submitted with ``flwr run``, the ServerApp's lines are printed as they
come, the run's final status is checked, and every process it started is stopped. Results land
in ``outputs/<run>/``; the last thing printed is a JSON summary.

Examples
--------
The main job (``make run``): the best logit-only algorithm of the measured table (the ``main``
preset), then FedAvg on the same split and seed, with a side-by-side summary::

    python -m simulations.run --preset main --against-fedavg

FedAvg alone, Fashion-MNIST, 10 clients, Dirichlet 0.5 (pyproject's defaults)::

    python -m simulations.run

Other settings, as run-config overrides (TOML values; strings quoted)::

    python -m simulations.run --rounds 3 --set 'data.alpha=0.1' --set 'train.model="mlp"'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fedkd.algorithms import ALGORITHMS
from fedkd.errors import ConfigError
from fedkd.experiments.presets import APP_DIR, CliError, load_preset, load_profile, parse_sets
from fedkd.experiments.runner import (
    EXIT_INTERRUPTED,
    SERVER_LOG,
    federation_config,
    interrupt_on_signals,
    resolve_config,
    run_dir_of,
    run_simulation,
)
from fedkd.results import default_run_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.run",
        description="Run a fedkd simulation on the Flower simulation engine (offline, own SuperLink).",
        epilog="example: python -m simulations.run --rounds 3 --set data.alpha=0.1",
    )
    parser.add_argument("--preset", help="a preset of simulations/configs (name or .toml path) "
                        "under the overrides (default: none, pyproject's defaults)")
    parser.add_argument("--against-fedavg", action="store_true",
                        help="then run FedAvg on the same split, seed, model and rounds, and print "
                        "both side by side")
    parser.add_argument("--rounds", type=int, help="num-server-rounds (default: pyproject)")
    parser.add_argument("--num-clients", type=int,
                        help="simulated SuperNodes (default: the preset's data.num-partitions, else 10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override with a TOML value; repeatable")
    parser.add_argument("--name", help="run name (default <algorithm>-<dataset>-<timestamp>)")
    parser.add_argument("--output-dir", default=str(APP_DIR / "outputs"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--port", type=int, help="SuperLink port (default: a free one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with interrupt_on_signals():
        try:
            return _main(args)
        except (CliError, ConfigError) as err:  # refused before anything started
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # while validating or loading data: nothing to stop
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    # The cpu profile is the main job's federation: one CPU per client (--cpus-per-client), no GPU.
    cpu = load_profile("cpu")
    profile = replace(cpu, federation={**cpu.federation,
                                       "client-resources-num-cpus": args.cpus_per_client})
    preset = load_preset(args.preset) if args.preset else None
    clients = args.num_clients or int((preset.values if preset else {}).get("data.num-partitions", 10))
    overrides = {**profile.run_config, **parse_sets(args.overrides), "data.num-partitions": clients}
    cfg, run_config = _resolve(preset, overrides, args, args.name)
    reference = None
    if args.against_fedavg:  # validated before anything starts, as the main run is
        reference = _resolve(preset, {**overrides, **FEDAVG}, args,
                             f"{cfg.output.run_name}-fedavg")
    result = _run(profile, cfg, run_config, args)
    if result is None or result.outcome != "completed":
        return _failed(result)
    runs = [(cfg, result)]
    if reference is not None:
        fedavg = _run(profile, *reference, args)
        if fedavg is None or fedavg.outcome != "completed":
            return _failed(fedavg)
        runs.append((reference[0], fedavg))
        print("\n".join(comparison_lines(runs)))
    print(json.dumps([summary(c, r) for c, r in runs] if reference else summary(*runs[0]),
                     indent=2))
    return 0


#: What ``--against-fedavg`` changes: the algorithm (and keys FedAvg refuses); everything else
#: (data, split, seed, model, clients, rounds, local steps, learning rate) is the main run's.
FEDAVG: dict[str, object] = {"algorithm": "fedavg", "aggregation.rule": "mean",
                             "privacy.output-noise": 0.0}


def _resolve(preset, overrides: dict, args: argparse.Namespace, name: str | None):  # noqa: ANN001, ANN202
    cfg, run_config = resolve_config(preset, overrides, rounds=args.rounds,
                                     output_dir=Path(args.output_dir), run_name=name)
    if not cfg.output.run_name:  # <algorithm>-<dataset>-<UTC time>
        cfg, run_config = resolve_config(preset, overrides, rounds=args.rounds,
                                         output_dir=Path(args.output_dir),
                                         run_name=default_run_name(cfg))
    return cfg, run_config


def _run(profile, cfg, run_config, args: argparse.Namespace):  # noqa: ANN001, ANN202
    """One simulation; ``None`` when interrupted (reported here)."""
    run_dir = run_dir_of(cfg)
    header = (f"[fedkd] {cfg.algorithm} on {cfg.data.dataset}: {cfg.data.num_partitions} "
              f"clients, {cfg.num_server_rounds} rounds; outputs in {run_dir}")
    try:
        return run_simulation(cfg, run_config, federation_config(profile, cfg), header=header,
                              port=args.port, timeout=args.timeout, console=SERVER_LOG)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the SuperLink was stopped; finished rounds are in {run_dir}",
              file=sys.stderr)
        return None


def _failed(result) -> int:  # noqa: ANN001
    if result is None:
        return EXIT_INTERRUPTED
    print(f"error: {result.message}", file=sys.stderr)
    return 1


def summary(cfg, result) -> dict[str, object]:  # noqa: ANN001
    """The JSON summary of one finished run."""
    rows = result.rows
    last = rows[-1] if rows else {}
    return {
        "algorithm": cfg.algorithm, "run-dir": str(result.run_dir), "rounds": len(rows),
        "uploads-weights": ALGORITHMS.get(cfg.algorithm).shares_weights,
        "global-accuracy": last.get("global-accuracy"),
        "personalized-accuracy": last.get("personalized-accuracy"),
        "bytes-up-per-client": _mean(r.get("bytes-up-per-client") for r in rows),
        "bytes-down-per-client": _mean(r.get("bytes-down-per-client") for r in rows),
        "wall-time-per-round-s": _mean(r.get("wall-time-s") for r in rows[1:] or rows),
        "total-wall-time-s": round(result.elapsed_s, 1),
    }


def comparison_lines(runs: list) -> list[str]:
    """The side-by-side table of ``--against-fedavg``: accuracy, bytes each way, time."""
    rows = [summary(c, r) for c, r in runs]
    cfg = runs[0][0]
    lines = ["", f"[fedkd] same split and seed ({cfg.data.dataset}, {cfg.data.partitioner}"
             + (f" alpha {cfg.data.alpha:g}" if cfg.data.partitioner == "dirichlet" else "")
             + f", {cfg.data.num_partitions} clients, {cfg.num_server_rounds} rounds, seed "
             f"{cfg.seed}):",
             f"  {'algorithm':<16}{'uploads':<10}{'global acc':>11}{'up / client / round':>22}"
             f"{'down / client / round':>24}{'s / round':>11}"]
    for row in rows:
        acc = row["global-accuracy"]
        lines.append(
            f"  {row['algorithm']:<16}{'weights' if row['uploads-weights'] else 'logits':<10}"
            f"{'-' if acc is None else f'{acc:.4f}':>11}{_kb(row['bytes-up-per-client']):>22}"
            f"{_kb(row['bytes-down-per-client']):>24}{row['wall-time-per-round-s'] or 0:>11.1f}")
    main, fedavg = rows[0], rows[-1]
    if main["bytes-up-per-client"] and fedavg["bytes-up-per-client"]:
        lines.append(f"  {main['algorithm']} uploads "
                     f"{fedavg['bytes-up-per-client'] / main['bytes-up-per-client']:.1f}x fewer "
                     "bytes than FedAvg, and never a weight; the accuracies are one seed of a "
                     "short run (longer runs: docs/results.md)")
    return lines


def _mean(values) -> float | None:  # noqa: ANN001
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.1f} kB"


if __name__ == "__main__":
    sys.exit(main())
