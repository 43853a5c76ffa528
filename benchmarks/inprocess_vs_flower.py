"""Do the in-process levers stand for Flower? ``make run``'s two runs both ways, round by round.

``benchmarks/logit_levers.py`` measures in-process: fedkd's round loop (``server.loop``), its
contract checks and its client app (``client.app.answer``), with the message delivery a function
call instead of Flower's transport. This runs ``make run``'s preset (``simulations/configs/
main.toml``: student-down) and FedAvg on the same split, seed and rounds, once through the real
Flower simulation engine (own SuperLink, Ray backend: ``python -m simulations.run``) and once
in-process, and compares every round's global accuracy, the server-lr student-down chose, and
the bytes each way. Where the two agree, an in-process row is what the same settings give
through Flower. Results: ``benchmarks/results/inprocess_vs_flower.{json,md}``.

    .venv/bin/python -m benchmarks.inprocess_vs_flower --rounds 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation, slug
from fedkd.experiments.presets import load_preset
from fedkd.experiments.report import table_lines
from fedkd.results import read_metrics

RESULTS = ROOT / "benchmarks" / "results"
#: make run's second run: FedAvg on the preset's split, seed, model and rounds
#: (simulations/run.py --against-fedavg).
FEDAVG = {"algorithm": "fedavg"}
COMPARED = ("global-accuracy", "student-server-lr", "bytes-up", "bytes-down")


def in_process(settings: dict[str, Any], clients: int, rounds: int, out: Path) -> tuple[list, float]:
    from tests.algorithms.inprocess import run_inprocess

    start = time.monotonic()
    rows, _, _ = run_inprocess({**settings, "num-server-rounds": rounds}, clients, out)
    return rows, time.monotonic() - start


def compare(name: str, flower: list[dict[str, Any]], local: list[dict[str, Any]],
            flower_s: float, local_s: float) -> dict[str, Any]:
    """Round-by-round differences of the compared metrics (None: not reported by this run)."""
    if [r["round"] for r in flower] != [r["round"] for r in local]:
        raise RuntimeError(f"{name}: the two runs reported different rounds")
    diffs = {}
    for key in COMPARED:
        pairs = [(a.get(key), b.get(key)) for a, b in zip(flower, local)]
        if all(a is None and b is None for a, b in pairs):
            continue
        # a value that one run reports and the other does not is an infinite difference
        diffs[key] = max(abs(a - b) if a is not None and b is not None
                         else (0.0 if a is b else float("inf")) for a, b in pairs)
    return {"name": name, "rounds": len(flower), "max-abs-diff": diffs,
            "final-flower": flower[-1]["global-accuracy"],
            "final-in-process": local[-1]["global-accuracy"],
            "curve-flower": [r["global-accuracy"] for r in flower],
            "curve-in-process": [r["global-accuracy"] for r in local],
            "s-per-round-flower": flower_s / len(flower),
            "s-per-round-in-process": local_s / len(local)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedkd-inprocess-vs-flower"))
    args = parser.parse_args(argv)
    preset = load_preset("main").values
    clients = int(preset["data.num-partitions"])
    results = []
    for name, settings in (("student-down (make run's preset)", preset),
                           ("fedavg (make run's reference)", {**preset, **FEDAVG})):
        start = time.monotonic()
        run_simulation(name, settings, clients=clients, rounds=args.rounds, out_dir=args.out)
        flower_s = time.monotonic() - start
        flower = read_metrics(args.out / slug(name))
        local, local_s = in_process(settings, clients, args.rounds,
                                    args.out / f"{slug(name)}-in-process")
        results.append(compare(name, flower, local, flower_s, local_s))
        print(name, results[-1]["max-abs-diff"], flush=True)
    write(args, results)


def write(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inprocess_vs_flower.json").write_text(json.dumps(
        {"rounds": args.rounds, "results": results}, indent=1) + "\n")
    header = ["run", "rounds", "final acc, Flower", "final acc, in-process",
              "max abs diff of a round's acc", "max abs diff of server-lr",
              "max abs diff of bytes (up / down)", "s / round, Flower (whole process)",
              "s / round, in-process"]
    rows = [[r["name"], str(r["rounds"]), fmt(r["final-flower"]), fmt(r["final-in-process"]),
             fmt(r["max-abs-diff"]["global-accuracy"], ".2g"),
             fmt(r["max-abs-diff"].get("student-server-lr"), ".2g"),
             f"{r['max-abs-diff']['bytes-up']:g} / {r['max-abs-diff']['bytes-down']:g}",
             fmt(r["s-per-round-flower"], ".2f"), fmt(r["s-per-round-in-process"], ".2f")]
            for r in results]
    lines = [f"`make run`'s preset (`simulations/configs/main.toml`, student-down) and FedAvg on "
             f"the same split, seed and rounds, each through the Flower simulation engine "
             f"(`python -m simulations.run`, own SuperLink, Ray backend) and in-process "
             f"(`tests/algorithms/inprocess.py`: the same round loop and client app, the delivery "
             f"a function call), {args.rounds} rounds. Command: `.venv/bin/python -m "
             f"benchmarks.inprocess_vs_flower --rounds {args.rounds}`. Flower's seconds include "
             f"starting the SuperLink and Ray.", "", *table_lines(header, rows), ""]
    (RESULTS / "inprocess_vs_flower.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
