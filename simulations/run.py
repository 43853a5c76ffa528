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
The main job (FedAvg, Fashion-MNIST, 10 clients, Dirichlet 0.5)::

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

from fedkd.errors import ConfigError
from fedkd.experiments.presets import APP_DIR, CliError, load_profile, parse_sets
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
    parser.add_argument("--rounds", type=int, help="num-server-rounds (default: pyproject)")
    parser.add_argument("--num-clients", type=int, default=10, help="simulated SuperNodes (default 10)")
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
    overrides = {**profile.run_config, **parse_sets(args.overrides),
                 "data.num-partitions": args.num_clients}

    def resolve(name: str | None):
        return resolve_config(None, overrides, rounds=args.rounds,
                              output_dir=Path(args.output_dir), run_name=name)

    cfg, run_config = resolve(args.name)
    if not cfg.output.run_name:  # <algorithm>-<dataset>-<UTC time>
        cfg, run_config = resolve(default_run_name(cfg))
    run_dir = run_dir_of(cfg)
    header = (f"[fedkd] {cfg.algorithm} on {cfg.data.dataset}: {cfg.data.num_partitions} "
              f"clients, {cfg.num_server_rounds} rounds; outputs in {run_dir}")
    try:
        result = run_simulation(cfg, run_config, federation_config(profile, cfg), header=header,
                                port=args.port, timeout=args.timeout, console=SERVER_LOG)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the SuperLink was stopped; finished rounds are in {run_dir}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.outcome != "completed":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    last = result.rows[-1] if result.rows else {}
    print(json.dumps({
        "run-dir": str(run_dir), "rounds": len(result.rows),
        "global-accuracy": last.get("global-accuracy"),
        "personalized-accuracy": last.get("personalized-accuracy"),
        "bytes-up-per-client": last.get("bytes-up-per-client"),
        "total-wall-time-s": round(result.elapsed_s, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
