"""Wall time per round: a real deployment (TLS SuperLink + SuperNodes on loopback) vs the simulation engine.

The same work on both paths: the same algorithm, dataset, model, clients, rounds, local steps and
seed. The deployed path is :class:`fedkd.runtime.deploy.LocalFederation` (a TLS SuperLink with node
authentication and one registered SuperNode per client on 127.0.0.1, the run submitted with
``flwr run --stream``); every message there runs in a fresh ``flwr-clientapp`` process. It runs
three ways: that process importing the app itself; the same with warm workers (node config
``warm-dir``, client/warm.py); and warm workers on SuperNodes started as ``python -m
fedkd.runtime.supernode`` (Flower's SuperNode with its 3 s idle poll shortened, fedkd/runtime/supernode.py).
Every deployed run records the timing trace (``FEDKD_TRACE``, fedkd/runtime/trace.py), from which the
table of where a round's time goes is computed. The simulation path is ``python -m simulations.run`` (our own simulation SuperLink, Flower's Ray
backend, one CPU per client). Per-round times are the ``wall-time-s`` the round loop records in
``metrics.jsonl`` (send, train, receive, validate, aggregate, evaluate); round 1 is listed apart
because it includes start-up (Ray and its workers in simulation). Setup is the SuperLink and the
SuperNodes coming online (deployed) or nothing (simulation, counted in its total).

Run::

    .venv/bin/python -m benchmarks.deployed_vs_sim [--clients 3] [--rounds 3] [--local-steps 10]

Writes ``benchmarks/results/deployed_vs_sim.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation
from fedkd.experiments.report import table_lines
from fedkd.runtime import trace
from fedkd.runtime.deploy import LocalFederation
from fedkd.results import read_metrics


def summarise(name: str, rows: list[dict[str, Any]], total_s: float, setup_s: float | None) -> dict[str, Any]:
    later = [r["wall-time-s"] for r in rows[1:]]
    return {
        "path": name,
        "rounds": len(rows),
        "round-1-s": rows[0]["wall-time-s"],
        "later-rounds-mean-s": statistics.mean(later) if later else None,
        "round-wall-times-s": [r["wall-time-s"] for r in rows],
        "setup-s": setup_s,
        "total-s": total_s,
        "personalized-accuracy": rows[-1].get("personalized-accuracy"),
        "global-accuracy": rows[-1].get("global-accuracy"),
        "failures": sum(r["num-failures"] for r in rows),
    }


def import_seconds(module: str, repeats: int = 3) -> float:
    """Wall time of a fresh interpreter that imports Flower's ClientApp runtime and ``module``,
    minus one that imports only the runtime (the fastest of ``repeats``): what each message's
    ``flwr-clientapp`` process spends loading the app."""
    def timed(code: str) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            best = min(best, time.perf_counter() - start)
        return best

    runtime = "import flwr.supernode.runtime.run_clientapp"
    return timed(f"{runtime}; import {module}") - timed(runtime)


def run_deployed(settings: dict[str, Any], clients: int, rounds: int, root: Path,
                 warm: bool = False, poll_interval: float | None = None) -> dict[str, Any]:
    """One run on a fresh local TLS deployment; stops every process it started."""
    fed = LocalFederation(root / "federation", warm=warm, poll_interval=poll_interval)
    trace_file = root / "trace.jsonl"
    fed.env[trace.ENV] = str(trace_file)
    start = time.monotonic()
    try:
        fed.superlink()
        fed.add_nodes(clients)
        fed.wait_online(clients)
        setup_s = time.monotonic() - start
        flat = {**settings, "num-server-rounds": rounds, "data.num-partitions": clients,
                "output.dir": str(root / "runs"), "output.run-name": "deployed"}
        run_id, status, log = fed.run(ROOT, fed.write_run_config("deployed", flat))
        if status != "finished:completed":
            raise RuntimeError(f"deployed run {run_id} ended with {status!r}:\n{log[-3000:]}")
        total_s = time.monotonic() - start
    finally:
        fed.stop()
    name = "deployed, warm workers" if warm else "deployed (a process per message)"
    if poll_interval is not None:
        name += f", fedkd.runtime.supernode (polls every {poll_interval:g} s)"
    rows = read_metrics(root / "runs" / "deployed")
    result = summarise(name, rows, total_s, setup_s)
    result["breakdown"] = breakdown(trace.read(trace_file), rows)
    return result


#: The segments of a deployed message's life, in order, from the timing trace (fedkd/runtime/trace.py).
SEGMENTS = {
    "launch": "push -> its ClientApp process starts (SuperNode's pull, SuperExec's poll, spawn)",
    "runtime": "process start -> Flower calls the app (interpreter, Flower runtime import, "
               "message pulled over the ClientAppIo API)",
    "app": "app import (a process per message) or the hand-over to the warm worker and back",
    "load": "state and data loaded, client built",
    "work": "the algorithm's answer (training, logits, evaluation)",
    "save": "state saved",
    "return": "app returns -> ServerApp has the reply (SuperNode's reply poll, push, ServerApp's pull)",
}


def breakdown(events: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a deployed round's time goes, rounds 2 and later: each segment's mean seconds per
    message, the phases' wall time (push to last reply) and the ServerApp's own time between them
    (the round's wall time minus its phases': aggregation, server distillation, evaluation)."""
    per_segment: dict[str, list[float]] = {k: [] for k in SEGMENTS}
    phase_span: dict[tuple[int, str], list[float]] = {}
    for event in events.values():
        server, proc, handler = event.get("server"), event.get("clientapp"), event.get("handler")
        if server is None or server["round"] < 2 or server.get("reply") is None:
            continue
        span = phase_span.setdefault((server["round"], server["phase"]), [server["push"], server["push"]])
        span[1] = max(span[1], server["reply"])
        if proc is None or handler is None or proc.get("proc_start") is None:
            continue
        in_app = handler["load"] + handler["work"] + handler["save"]
        for key, value in (("launch", proc["proc_start"] - server["push"]),
                           ("runtime", proc["start"] - proc["proc_start"]),
                           ("app", proc["end"] - proc["start"] - in_app),
                           ("load", handler["load"]), ("work", handler["work"]),
                           ("save", handler["save"]), ("return", server["reply"] - proc["end"])):
            per_segment[key].append(value)
    later = [r for r in rows if r["round"] >= 2]
    phases_s = [sum(end - start for (rnd, _), (start, end) in phase_span.items() if rnd == r["round"])
                for r in later]
    rounds_s = [r["wall-time-s"] for r in later]
    return {
        "messages": len(per_segment["work"]),
        "segments-mean-s": {k: statistics.mean(v) if v else None for k, v in per_segment.items()},
        "phases-per-round": len(phase_span) / len(later) if later else None,
        "phases-wall-s": statistics.mean(phases_s) if phases_s else None,
        "server-s": statistics.mean(r - p for r, p in zip(rounds_s, phases_s)) if phases_s else None,
        "round-s": statistics.mean(rounds_s) if rounds_s else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="fd")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poll-interval", type=float, default=0.2,
                        help="fedkd.runtime.supernode's idle poll for the third deployed path (Flower: 3 s)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the per-round evaluation exchange on the clients")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="deployed_vs_sim", help="results file stem")
    args = parser.parse_args(argv)

    settings: dict[str, Any] = {
        "algorithm": args.algorithm, "data.dataset": args.dataset, "train.model": args.model,
        "train.local-steps": args.local_steps, "seed": args.seed, "data.seed": args.seed,
        "federation.min-nodes": args.clients, "federation.min-replies": args.clients,
        "federation.evaluate-clients": not args.no_evaluate,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedkd-deployed-vs-sim-") as tmp:
        print("timing the client process's imports ...", flush=True)
        imports = {"client.app (a process per message)": import_seconds("client.app"),
                   "client.entry (warm workers)": import_seconds("client.entry")}
        print("running the deployed path ...", flush=True)
        deployed = run_deployed(settings, args.clients, args.rounds, Path(tmp) / "cold")
        print("running the deployed path with warm workers ...", flush=True)
        warm = run_deployed(settings, args.clients, args.rounds, Path(tmp) / "warm", warm=True)
        print("running the deployed path with warm workers and fedkd.runtime.supernode ...", flush=True)
        fast = run_deployed(settings, args.clients, args.rounds, Path(tmp) / "fast", warm=True,
                            poll_interval=args.poll_interval)
        print("running the simulation ...", flush=True)
        sim_raw = run_simulation("simulation", settings, clients=args.clients, rounds=args.rounds,
                                 out_dir=Path(tmp) / "runs")
        sim = summarise("simulation (Ray)", read_metrics(sim_raw["run-dir"]),
                        sim_raw["process-wall-time-s"], None)
    load_after = os.getloadavg()
    deployments = [deployed, warm, fast]
    results = [*deployments, sim]

    def ratios(dep: dict[str, Any]) -> dict[str, float | None]:
        return {
            "later-rounds": (dep["later-rounds-mean-s"] / sim["later-rounds-mean-s"]
                             if dep["later-rounds-mean-s"] and sim["later-rounds-mean-s"] else None),
            "round-1": dep["round-1-s"] / sim["round-1-s"],
            "total": dep["total-s"] / sim["total-s"],
        }

    ratio = {"cold": ratios(deployed), "warm": ratios(warm), "fast": ratios(fast)}
    evaluate = "with" if not args.no_evaluate else "without"
    lines = [
        f"{args.algorithm}, {args.dataset}, model {args.model}, {args.clients} clients, "
        f"{args.rounds} rounds of {args.local_steps} local steps, {evaluate} per-round client "
        f"evaluation, seed {args.seed}; {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after. Command: "
        f".venv/bin/python -m benchmarks.deployed_vs_sim --algorithm {args.algorithm} --dataset "
        f"{args.dataset} --model {args.model} --clients {args.clients} "
        f"--rounds {args.rounds} --local-steps {args.local_steps}"
        + (" --no-evaluate" if args.no_evaluate else "")
        + (f" --name {args.name}" if args.name != "deployed_vs_sim" else ""),
        "",
        *table_lines(["path", "round 1 (s)", "later rounds, mean (s)", "setup (s)", "total (s)",
                      "personalized acc"],
                     ([r["path"], fmt(r["round-1-s"], ".1f"), fmt(r["later-rounds-mean-s"], ".1f"),
                       fmt(r["setup-s"], ".1f"), fmt(r["total-s"], ".1f"),
                       fmt(r["personalized-accuracy"])] for r in results)),
        "",
    ]
    for key, label in (("cold", "a process per message"), ("warm", "warm workers"),
                       ("fast", "warm workers, fedkd.runtime.supernode")):
        r = ratio[key]
        lines.append(f"Deployed ({label}) / simulation: later rounds "
                     f"{fmt(r['later-rounds'], '.1f')}x, round 1 {fmt(r['round-1'], '.1f')}x, "
                     f"whole command {fmt(r['total'], '.1f')}x.")
    lines += ["", "What each message's `flwr-clientapp` process spends importing the app (a fresh "
              "interpreter importing Flower's ClientApp runtime and the module, minus one importing "
              "only the runtime; fastest of 3):", ""]
    lines += table_lines(["module the process loads", "import (s)"],
                         ([f"`{m}`", f"{t:.2f}"] for m, t in imports.items()))
    lines += ["", "Where a deployed round's time goes, rounds 2 and later (the timing trace, "
              "`FEDKD_TRACE`, fedkd/runtime/trace.py): each segment's mean seconds per message, then the "
              "round: its phases' wall time (push to the last reply, the clients in parallel) "
              "and the ServerApp's own time between phases.", ""]
    segments = [[key, what, *(fmt(r["breakdown"]["segments-mean-s"][key], ".2f") for r in deployments)]
                for key, what in SEGMENTS.items()]
    segments += [[key, what, *(fmt(r["breakdown"][key], ".2f") for r in deployments)]
                 for key, what in (("phases-per-round", "phases per round"),
                                   ("phases-wall-s", "phases' wall time per round (s)"),
                                   ("server-s", "ServerApp between phases per round (s)"),
                                   ("round-s", "round (s)"))]
    lines += table_lines(["segment", "what", *(r["path"] for r in deployments)], segments)
    md = "\n".join(lines) + "\n"
    (out / f"{args.name}.md").write_text(md)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"args": vars(args), "settings": settings, "load-average": [load_before, load_after],
         "results": results, "ratio": ratio, "import-s": imports}, indent=2))
    print(md)


if __name__ == "__main__":
    main()
