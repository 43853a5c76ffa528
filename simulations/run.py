"""Run one fedkd simulation through the real Flower simulation engine, offline.

Starts our own ``flower-superlink --simulation`` on 127.0.0.1 (private FLWR_HOME, telemetry and
update checks off), submits the app in this repository with ``flwr run``, prints one progress
line per round, and stops every process it started. Results land in ``outputs/<run>/``.

Examples
--------
The main job (FedAvg, Fashion-MNIST, 10 clients, Dirichlet 0.5)::

    python -m simulations.run

Other settings, as run-config overrides (TOML values; strings quoted)::

    python -m simulations.run --rounds 3 --set 'data.alpha=0.1' --set 'train.model="mlp"'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path

from fedkd.config import ConfigError, RunConfig, pyproject_defaults
from fedkd.data.datasets import load_dataset
from fedkd.data.federated import load_federated
from fedkd.data.idx import DataFileError
from fedkd.launch import LaunchError, SimulationSuperLink
from fedkd.results import default_run_name, read_metrics

APP_DIR = Path(__file__).resolve().parent.parent


def parse_overrides(pairs: list[str]) -> dict[str, bool | int | float | str]:
    """``key=value`` pairs with TOML values (``data.alpha=0.1``, ``train.model="mlp"``)."""
    out: dict[str, bool | int | float | str] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {pair!r} is not key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"override {pair!r}: value is not TOML (quote strings: {key.strip()}=\"text\")"
            ) from None
    return out


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    try:
        overrides = parse_overrides(args.overrides)
        if args.rounds is not None:
            overrides["num-server-rounds"] = args.rounds
        overrides["data.num-partitions"] = args.num_clients
        overrides["output.dir"] = str(Path(args.output_dir).resolve())
        flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **overrides}
        cfg = RunConfig.from_flat(flat)  # fail here, with a clear message, not inside Flower
        name = args.name or default_run_name(cfg)
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, run_name=name))
        overrides["output.run-name"] = name
        load_dataset(cfg.data.dataset, cfg.data.data_dir)  # a missing dataset says how to get it
    except (ConfigError, DataFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    run_dir = Path(cfg.output.dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[fedkd] {cfg.algorithm} on {cfg.data.dataset}: {args.num_clients} clients, "
          f"{cfg.num_server_rounds} rounds; outputs in {run_dir}", flush=True)
    partition = load_federated(cfg.data).describe()
    (run_dir / "partition.txt").write_text(partition + "\n")
    print(partition, flush=True)
    federation = {
        "num-supernodes": args.num_clients,
        "client-resources-num-cpus": args.cpus_per_client,
        "client-resources-num-gpus": 0.0,
        "init-args-num-cpus": os.cpu_count() or 1,
        "init-args-logging-level": "ERROR",
        "init-args-log-to-driver": False,
    }
    # Ctrl-C and SIGTERM both unwind through the `with` blocks below, which stop every process
    # this run started. (A shell's background job may start with SIGINT ignored: re-arm it.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.monotonic()
    log_path = run_dir / "run.log"
    try:
        with SimulationSuperLink(port=args.port, log_path=run_dir / "superlink.log") as link, \
                log_path.open("w") as log:
            def on_line(line: str) -> None:
                log.write(line + "\n")
                if ("[fedkd]" in line or "ERROR" in line or "WARNING" in line) \
                        and "default simulated SuperNodes" not in line:  # flwr's stale notice
                    print(line, flush=True)

            run_id, status = link.run_streaming(APP_DIR, overrides, federation, on_line, args.timeout)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; the SuperLink was stopped; finished rounds are in {run_dir}",
              file=sys.stderr)
        return 130
    elapsed = time.monotonic() - start
    if status != "finished:completed":
        print(f"error: run {run_id} ended with status {status!r}; full log: {log_path}", file=sys.stderr)
        return 1
    rows = read_metrics(run_dir)
    last = rows[-1]
    print(json.dumps({
        "run-dir": str(run_dir), "rounds": len(rows),
        "global-accuracy": last.get("global-accuracy"),
        "personalized-accuracy": last.get("personalized-accuracy"),
        "bytes-up-per-client": last.get("bytes-up-per-client"),
        "total-wall-time-s": round(elapsed, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
