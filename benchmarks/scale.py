"""Many clients on one machine: a 1,000-client simulation, its time per round and its memory.

Runs one simulation through the real Flower simulation engine (our SuperLink, ``flwr run``, Ray
workers) with ``--clients`` simulated SuperNodes of which ``--fraction`` train each round, and
records per round: the server's wall time, the CPU time of the whole process tree, and memory:
the simulation process's RSS (it runs the ServerApp, Flower's engine and every node's
``Context``), each worker's RSS, the whole tree's PSS, and the size of the clients' state on disk
(``federation.client-state = "disk"``: one file per node under
``<output.dir>/client-state/run-<id>/``; the run removes it when it ends).

``--compare`` repeats the run with the given client-state store (e.g. ``node``: Flower's node
state, in the simulation process) for the same rounds, so the two peaks of the simulation
process can be compared: with ``node`` every client that has trained adds its personal model to
the server's memory; with ``disk`` nothing does.

Run (FD on Fashion-MNIST, 1,000 clients, 10 % per round)::

    .venv/bin/python -m benchmarks.scale --clients 1000 --fraction 0.1 --rounds 5 \\
        --algorithm fd --model cnn --local-steps 10 --compare node

Writes ``benchmarks/results/scale.json`` (and ``.md``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.process_sampler import run_sampled, write_results  # noqa: E402
from fedkd.experiments.report import table_lines  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402


def run(args: argparse.Namespace, store: str, rounds: int, work: Path) -> dict[str, Any]:
    name = f"{args.algorithm}-{args.clients}-{store}"
    settings = {
        "algorithm": args.algorithm, "num-server-rounds": rounds, "seed": args.seed,
        "data.dataset": "fashion-mnist", "data.partitioner": args.partitioner,
        "data.num-partitions": args.clients, "train.model": args.model,
        "train.local-steps": args.local_steps, "federation.fraction-train": args.fraction,
        "federation.min-nodes": args.clients,
        "federation.min-replies": max(1, int(args.clients * args.fraction * 0.9)),
        "federation.evaluate-every": args.evaluate_every, "federation.client-state": store,
        "output.dir": str(work), "output.run-name": name,
    }
    sampled = run_sampled(work, name, settings, nodes=args.clients, workers=args.workers,
                          timeout=args.timeout)
    tree, disk, total = sampled.tree, sampled.disk, sampled.wall_s
    rows = read_metrics(work / name)
    sim_rss, worker_rss = tree.peak_rss_of("simulation"), tree.peak_rss_of("worker")
    marks = tree.boundaries
    cpu = [b["cpu"] - a["cpu"] for a, b in zip(marks, marks[1:])]
    return {
        "client-state": store, "rounds": len(rows), "total-wall-s": total,
        "round-wall-s": [round(r["wall-time-s"], 2) for r in rows],
        "steady-round-wall-s": statistics.median(r["wall-time-s"] for r in rows[1:]) if rows[1:] else None,
        "steady-round-cpu-s": statistics.median(cpu) if cpu else None,
        "sampled-per-round": [r["sampled"] for r in rows],
        "failures": sum(r["num-failures"] for r in rows),
        "personalized-accuracy": [r.get("personalized-accuracy") for r in rows],
        "bytes-up-per-client": rows[-1]["bytes-up-per-client"],
        "peak-simulation-process-rss-bytes": max(sim_rss) if sim_rss else None,
        "peak-worker-rss-bytes": max(worker_rss) if worker_rss else None,
        "peak-tree-pss-bytes": tree.peak_tree_pss,
        "peak-tree-rss-bytes": tree.peak_tree_rss,
        "peak-client-state-on-disk-bytes": disk.peak_bytes,
        "peak-client-state-files": disk.peak_files,
        "client-state-left-after-run": any((work / "client-state").glob("run-*")),
    }


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--algorithm", default="fd")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--partitioner", default="dirichlet")
    parser.add_argument("--evaluate-every", type=int, default=0,
                        help="0: evaluate every client only after the last round")
    parser.add_argument("--client-state", default="disk", choices=("node", "disk"))
    parser.add_argument("--compare", choices=("node", "disk"),
                        help="also run with this client-state store")
    parser.add_argument("--compare-rounds", type=int, default=0, help="default: --rounds")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="scale")
    args = parser.parse_args(argv)
    if args.evaluate_every == 0:
        args.evaluate_every = args.rounds  # the last round only
    work = Path(tempfile.mkdtemp(prefix="fedkd-scale-"))
    runs = []
    print(f"[{args.client_state}] {args.clients} clients, {args.fraction:g} per round", flush=True)
    runs.append(run(args, args.client_state, args.rounds, work))
    if args.compare:
        print(f"[{args.compare}] same run", flush=True)
        runs.append(run(args, args.compare, args.compare_rounds or args.rounds, work))
    command = ".venv/bin/python -m benchmarks.scale " + " ".join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        f"Scale: {args.algorithm} on Fashion-MNIST ({args.partitioner}), {args.clients} clients, "
        f"{args.fraction:g} sampled per round, model {args.model}, {args.local_steps} local steps, "
        f"{args.workers} workers of one CPU; machine: {os.cpu_count()} CPUs (shared).",
        "", f"Command: `{command}`", "",
        *table_lines(
            ["client state", "rounds", "round wall s (each)", "steady round CPU s",
             "simulation process peak RSS", "worker peak RSS", "tree peak PSS",
             "client state on disk (peak)"],
            ([r["client-state"], r["rounds"], r["round-wall-s"],
              r["steady-round-cpu-s"] if r["steady-round-cpu-s"] is None
              else round(r["steady-round-cpu-s"], 1),
              _mb(r["peak-simulation-process-rss-bytes"]), _mb(r["peak-worker-rss-bytes"]),
              _mb(r["peak-tree-pss-bytes"]),
              f"{_mb(r['peak-client-state-on-disk-bytes'])} in {r['peak-client-state-files']} files"]
             for r in runs))]
    write_results(Path(args.out), args.name, lines, command, args, runs)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
