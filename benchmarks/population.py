"""A million clients on one machine: memory, first round and steady rounds as the population grows.

Runs the ``synthetic-1m`` preset (student-down on LEAF's Synthetic(1, 1), every client generated
on demand; 32 SuperNodes serving the population as logical clients, ``federation.supernodes``)
through the real Flower simulation engine (our SuperLink, Ray workers) at each ``--populations``
size with ``--cohort`` clients sampled a round (``fraction-train = cohort / population``), and
records:

* the time from submitting the run to the first round's row (start-up included: SuperLink,
  ServerApp, Ray, workers, the first round's messages);
* every round's wall time, and the steady rounds' median;
* the peak summed RSS and PSS of every process this benchmark started (SuperLink, simulation
  process, Ray and its workers), sampled every 0.5 s (PSS every 5 s);
* the peak size of the clients' state on disk;
* where a steady round's time goes, from the timing trace (``FEDKD_TRACE``,
  :mod:`fedkd.runtime.trace`): the server's exchanges (push to last reply, per phase), the
  clients' handler time inside them (load state and data, answer, save state; summed over the
  round's messages and divided by the workers), and the server's own work between exchanges
  (aggregation, the student's distillation, evaluation, accounting, checkpoint).

Run::

    .venv/bin/python -m benchmarks.population --populations 10000 100000 1000000 --cohort 1000 \\
        --extra-cohort 100

Writes ``benchmarks/results/population.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.process_sampler import run_sampled, write_results  # noqa: E402
from fedkd.experiments.presets import load_preset  # noqa: E402
from fedkd.experiments.report import table_lines  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402
from fedkd.runtime import trace  # noqa: E402

PRESET = "synthetic-1m"


def breakdown(trace_path: Path, rows: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Per round: exchange wall time by phase, the clients' handler seconds, the server's own."""
    events = trace.read(trace_path) if trace_path.exists() else {}
    per_round: dict[int, dict[str, Any]] = defaultdict(lambda: {
        "phases": defaultdict(lambda: [float("inf"), 0.0]), "load": 0.0, "work": 0.0,
        "save": 0.0, "messages": 0})
    for sides in events.values():
        server = sides.get("server")
        if not server or server.get("reply") is None:
            continue
        r = per_round[int(server["round"])]
        window = r["phases"][server["phase"]]
        window[0] = min(window[0], server["push"])
        window[1] = max(window[1], server["reply"])
        r["messages"] += 1
        handler = sides.get("handler")
        if handler:
            for key in ("load", "work", "save"):
                r[key] += float(handler[key])
    out = []
    for row in rows:
        r = per_round.get(int(row["round"]))
        if r is None:
            continue
        exchanges = {p: end - start for p, (start, end) in r["phases"].items()}
        exchange_s = sum(exchanges.values())
        handler_s = r["load"] + r["work"] + r["save"]
        out.append({
            "round": row["round"], "round-wall-s": row["wall-time-s"], "messages": r["messages"],
            "exchange-wall-s": exchanges, "exchanges-s": exchange_s,
            "client-load-s": r["load"], "client-work-s": r["work"], "client-save-s": r["save"],
            # the clients' handler time spread over the workers: what the exchanges cannot beat
            "client-handler-per-worker-s": handler_s / workers,
            # the rest of the exchanges: Flower's messaging (push, the engine's queue, the
            # worker's deserialisation and the reply), and workers idle between messages
            "messaging-and-idle-s": exchange_s - handler_s / workers,
            "server-own-s": row["wall-time-s"] - exchange_s,
        })
    return out


def run(args: argparse.Namespace, population: int, cohort: int, work: Path) -> dict[str, Any]:
    name = f"pop{population}-cohort{cohort}"
    preset = load_preset(PRESET)
    settings = {
        **preset.values, "num-server-rounds": args.rounds, "seed": args.seed,
        "data.num-partitions": population, "federation.fraction-train": cohort / population,
        "federation.min-replies": max(1, int(cohort * 0.5)),
        "output.dir": str(work), "output.run-name": name,
    }
    nodes = int(settings["federation.supernodes"])
    trace_path = work / f"{name}-trace.jsonl"
    os.environ[trace.ENV] = str(trace_path)
    try:
        sampled = run_sampled(work, name, settings, nodes=nodes, workers=args.workers,
                              timeout=args.timeout)
    finally:
        os.environ.pop(trace.ENV, None)
    tree, disk, start, total = sampled.tree, sampled.disk, sampled.start, sampled.wall_s
    rows = read_metrics(work / name)
    first_row = next((b["time"] for b in tree.boundaries if b["rows"] >= 1), None)
    parts = breakdown(trace_path, rows, args.workers)
    steady = parts[1:] or parts
    return {
        "population": population, "cohort": cohort, "supernodes": nodes, "rounds": len(rows),
        "total-wall-s": total,
        "first-round-with-start-up-s": None if first_row is None else first_row - start,
        "round-wall-s": [round(r["wall-time-s"], 2) for r in rows],
        "steady-round-wall-s": statistics.median(r["wall-time-s"] for r in rows[1:]) if rows[1:] else None,
        "sampled-per-round": [r["sampled"] for r in rows],
        "trained-per-round": [len(r["trained-clients"]) for r in rows],
        "failures": sum(r["num-failures"] for r in rows),
        "global-accuracy": [r.get("global-accuracy") for r in rows],
        "bytes-up-per-client": rows[-1]["bytes-up-per-client"],
        "bytes-down-per-client": rows[-1]["bytes-down-per-client"],
        "peak-tree-rss-bytes": tree.peak_tree_rss,
        "peak-tree-pss-bytes": tree.peak_tree_pss,
        "peak-simulation-process-rss-bytes": max(tree.peak_rss_of("simulation"), default=None),
        "peak-worker-rss-bytes": max(tree.peak_rss_of("worker"), default=None),
        "peak-client-state-on-disk-bytes": disk.peak_bytes,
        "peak-client-state-files": disk.peak_files,
        "breakdown": parts,
        "steady-breakdown-median": {
            key: statistics.median(p[key] for p in steady)
            for key in ("exchanges-s", "client-handler-per-worker-s", "messaging-and-idle-s",
                        "server-own-s", "client-load-s", "client-work-s", "client-save-s")
        } if steady else {},
    }


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+",
                        default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cohort", type=int, default=1000, help="clients sampled a round")
    parser.add_argument("--extra-cohort", type=int, nargs="*", default=[],
                        help="also run these cohorts at the largest population")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="population")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fedkd-population-"))
    plan = [(p, args.cohort) for p in args.populations]
    plan += [(max(args.populations), c) for c in args.extra_cohort]
    runs = []
    for population, cohort in plan:
        print(f"[population {population:,}, cohort {cohort:,}]", flush=True)
        runs.append(run(args, population, cohort, work))
    command = ".venv/bin/python -m benchmarks.population " + " ".join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        f"Population: preset {PRESET} (student-down on Synthetic(1, 1), model mlp, logical "
        f"clients over {runs[0]['supernodes']} SuperNodes), {args.rounds} rounds, "
        f"{args.workers} workers of one CPU; machine: {os.cpu_count()} CPUs.",
        "", f"Command: `{command}`", "",
        *table_lines(
            ["population", "cohort", "start-up + first round s", "round wall s (each)",
             "steady round s", "peak RSS, all processes", "peak PSS, all processes",
             "simulation process peak RSS", "client state on disk (peak)"],
            ([f"{r['population']:,}", f"{r['cohort']:,}", _s(r["first-round-with-start-up-s"]),
              r["round-wall-s"], _s(r["steady-round-wall-s"]), _mb(r["peak-tree-rss-bytes"]),
              _mb(r["peak-tree-pss-bytes"]), _mb(r["peak-simulation-process-rss-bytes"]),
              f"{_mb(r['peak-client-state-on-disk-bytes'])} in {r['peak-client-state-files']:,} files"]
             for r in runs)),
        "", "Where a steady round's time goes (median over the rounds after the first; seconds):", "",
        *table_lines(
            ["population", "cohort", "round", "exchanges", "client handlers / workers",
             "of which load / answer / save (summed over clients)", "messaging and idle",
             "server's own (aggregate, distil, evaluate, checkpoint)"],
            ([f"{r['population']:,}", f"{r['cohort']:,}", _s(r["steady-round-wall-s"]),
              _s(b.get("exchanges-s")), _s(b.get("client-handler-per-worker-s")),
              f"{_s(b.get('client-load-s'))} / {_s(b.get('client-work-s'))} / "
              f"{_s(b.get('client-save-s'))}",
              _s(b.get("messaging-and-idle-s")), _s(b.get("server-own-s"))]
             for r in runs for b in [r["steady-breakdown-median"]])),
    ]
    write_results(Path(args.out), args.name, lines, command, args, runs)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
