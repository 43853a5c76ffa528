"""The ``fedkd`` command: run experiment presets, sweep them over seeds, and report the results.

Subcommands (``fedkd <command> --help`` shows each one's options and examples)::

    fedkd presets                                   # the experiment presets and profiles
    fedkd simulate fd-fmnist-dir0.1 --seed 0        # one run, one line of progress per round
    fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2   # resumable
    fedkd report outputs/ --out outputs/report      # Markdown table + PNG plots

This module is the command line only: argument parsing and one ``cmd_*`` function per
subcommand. Presets, profiles and ``--set`` overrides are :mod:`fedkd.experiments.presets`;
validating and running a configuration (the same launcher ``make run`` uses) is
:mod:`fedkd.experiments.runner`; the table and plots are :mod:`fedkd.experiments.report`. It
works from a checkout of this repository: the checkout is the Flower app that ``flwr run``
submits.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from fedkd.errors import ConfigError
from fedkd.experiments.presets import (
    PRESET_DIR,
    PROFILE_DIR,
    CliError,
    describe,
    load_preset,
    load_profile,
    parse_sets,
    preset_names,
    profile_names,
)
from fedkd.experiments.report import write_report
from fedkd.experiments.runner import (
    EXIT_INTERRUPTED,
    federation_config,
    interrupt_on_signals,
    interrupted_message,
    plan_sweep,
    resolve_config,
    run_preset,
    run_sweep,
)


# ----- commands -------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    profile = load_profile(args.profile)
    overrides = {**profile.run_config, **parse_sets(args.overrides)}
    output_dir = Path(args.output_dir)
    name = args.name
    if name is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        seed = args.seed if args.seed is not None else overrides.get("seed", preset.values.get("seed"))
        name = f"{preset.name}-seed{seed if seed is not None else 0}-{stamp}"
    cfg, run_config = resolve_config(preset, overrides, seed=args.seed, rounds=args.rounds,
                                     output_dir=output_dir, run_name=name,
                                     one_machine=not args.ray_address)
    federation = federation_config(profile, cfg, args.ray_address)
    try:
        result = run_preset(preset, cfg, run_config, federation, port=args.port,
                            timeout=args.timeout, ray_address=args.ray_address,
                            extra_record={"profile": args.profile, "argv": sys.argv})
    except KeyboardInterrupt:
        run_dir = output_dir.resolve() / name
        print(f"\n{interrupted_message(run_dir)}\nto continue after the last finished round, run "
              f"the same command with --name {name}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.outcome != "completed":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    overrides = {**profile.run_config, **parse_sets(args.overrides)}
    output_dir = Path(args.output_dir).resolve()
    plan = plan_sweep(args.presets, args.seeds, overrides, profile, output_dir=output_dir,
                      rounds=args.rounds, ray_address=args.ray_address)
    print(f"[fedkd] sweep: {len(args.presets)} preset(s) x {len(args.seeds)} seed(s) = "
          f"{len(plan)} runs in {output_dir}", flush=True)
    result = run_sweep(plan, port=args.port, timeout=args.timeout, ray_address=args.ray_address,
                       extra_record={"profile": args.profile, "argv": sys.argv})
    if result.interrupted is not None:
        print(f"\n{interrupted_message(result.interrupted)}\nsweep stopped after "
              f"{result.completed} completed and {result.skipped} skipped run(s); run the same "
              "command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"[fedkd] sweep: {result.completed} completed, {result.skipped} skipped, "
          f"{len(result.failures)} failed; tables and plots: fedkd report {output_dir}",
          flush=True)
    for failure in result.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    text, images = write_report(args.dirs, out_dir)
    print(text)
    print(f"[fedkd] report: {out_dir / 'report.md'}, {out_dir / 'report.json'}, "
          + ", ".join(str(p) for p in images))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(map(len, names), default=0)
    print(f"presets ({PRESET_DIR}):")
    for name in names:
        print(f"  {name:<{width}}  {describe(PRESET_DIR / f'{name}.toml')}")
    print(f"\nprofiles for --profile ({PROFILE_DIR}):")
    for name in profile_names():
        print(f"  {name:<{width}}  {describe(PROFILE_DIR / f'{name}.toml')}")
    return 0


# ----- argument parsing -----------------------------------------------------------------------
def _common_run_options(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override on top of the preset, TOML value (strings quoted: "
                        "'train.model=\"mlp\"'); repeatable")
    p.add_argument("--rounds", type=int, help="num-server-rounds (default: the preset's)")
    p.add_argument("--output-dir", default="outputs", help=output_help)
    p.add_argument("--profile", default="cpu",
                   help="simulation resources: cpu (default), gpu, or a profile .toml file "
                        "(see `fedkd presets`)")
    p.add_argument("--port", type=int,
                   help="SuperLink port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=24 * 3600.0,
                   help="seconds before a run is stopped (default: 24 h)")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None,
                   metavar="HOST:PORT",
                   help="run the clients on an existing Ray cluster (its head's address, "
                        "HOST:6379 or ray://HOST:10001; default: $RAY_ADDRESS, else a private "
                        "Ray instance on this machine); use with --profile cluster")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fedkd", formatter_class=fmt,
        description="Federated knowledge distillation on Flower: run experiment presets through "
                    "the Flower simulation engine, sweep them over seeds, and tabulate and plot "
                    "the results.",
        epilog=textwrap.dedent("""\
            examples:
              fedkd presets
              fedkd simulate tiny
              fedkd simulate fd-fmnist-dir0.1 --seed 1 --set train.local-steps=50
              fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2 --output-dir outputs/sweep
              fedkd report outputs/sweep --out outputs/sweep/report
            (also: python -m fedkd ...)"""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "presets", help="list the experiment presets and resource profiles", formatter_class=fmt,
        description="List the experiment presets (simulations/configs/*.toml) and the resource "
                    "profiles (simulations/configs/profiles/*.toml), with what each one is.",
        epilog="example:\n  fedkd presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "simulate", help="run one preset through the Flower simulation engine",
        formatter_class=fmt,
        description=textwrap.dedent("""\
            Run one preset through the real Flower simulation engine (own SuperLink on 127.0.0.1,
            offline), printing one line per finished round (round i/N, accuracy, epsilon, bytes)
            as it is written to metrics.jsonl. The configuration is checked before anything
            starts. Ctrl-C stops every process the run started; the finished rounds stay in
            <output-dir>/<name>/metrics.jsonl, and the same command with --name <name>
            continues after the last one."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd simulate tiny
              fedkd simulate fd-fmnist-dir0.1-dp --seed 2 --rounds 5
              fedkd simulate fedmd-fmnist-dir1.0 --set 'aggregation.rule="median"' --profile gpu
              fedkd simulate my-experiment.toml --output-dir outputs/mine"""))
    p.add_argument("preset", help="preset name (`fedkd presets` lists them) or path of a .toml file")
    p.add_argument("--seed", type=int, help="run seed (default: the preset's, else 0)")
    p.add_argument("--name", help="run directory name (default <preset>-seed<N>-<UTC time>)")
    _common_run_options(p, "parent of the run directory (default: outputs)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "sweep", help="run presets x seeds; resumable", formatter_class=fmt,
        description=textwrap.dedent("""\
            Run every preset with every seed, one after another, into
            <output-dir>/<preset>-seed<N>/. Every configuration is checked before the first run
            starts. Resumable: a run whose directory already holds summary.json (or every round
            in metrics.jsonl) is skipped, an interrupted one continues after its last finished
            round, and a directory holding a run of another configuration is reported, never
            overwritten. Ctrl-C stops the current run and the sweep."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2
              fedkd sweep simulations/configs/*-dir0.1*.toml --seeds 0 1 2 --output-dir outputs/a01
              fedkd report outputs/a01"""))
    p.add_argument("presets", nargs="+", help="preset names or .toml paths")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="N",
                   help="run seeds (default: 0)")
    _common_run_options(p, "where the runs go (default: outputs)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="Markdown table and PNG plots across runs", formatter_class=fmt,
        description=textwrap.dedent("""\
            Read run directories (or folders holding them), group runs that differ only by seed,
            and write report.md (a table of mean ± std over seeds: final and best global
            accuracy, final personalized accuracy, bytes up per client per round, epsilon, wall
            time per round), report.json (the same numbers) and three PNG plots: accuracy vs
            round, accuracy vs cumulative upload, accuracy vs epsilon. The table is also
            printed."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd report outputs/sweep
              fedkd report outputs/fd-fmnist-dir0.1-seed0 outputs/fd-fmnist-dir0.1-seed1 --out /tmp/r"""))
    p.add_argument("dirs", nargs="+", help="run directories, or folders that hold them")
    p.add_argument("--out", default="report", help="where report.md and the PNGs go "
                                                   "(default: ./report)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedkd`` console script and of ``python -m fedkd``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    signals = interrupt_on_signals() if args.command in ("simulate", "sweep") else nullcontext()
    with signals:
        try:
            return int(args.func(args))
        except (CliError, ConfigError) as err:  # refused before anything started
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # outside a run (while validating, loading data...)
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
