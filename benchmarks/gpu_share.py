"""Many simulated clients sharing one GPU: client updates per second and peak GPU memory.

For each ``--workers`` N (default 10, 50, 100) one simulation runs through the real Flower
simulation engine with the profile ``simulations/configs/profiles/gpu-share-N.toml``: N Ray
workers, each with 1/N of the GPU (``client-resources-num-gpus``) and one logical CPU, training
on the GPU (``train.device = "cuda"``). Every round samples ``--updates-per-worker`` x N clients,
so each worker trains that many client updates per round. Measured:

* client updates per second: clients per round / the round's wall time (median of the rounds
  after the first, as the server measures them), and the first round's wall time;
* peak GPU memory: ``nvidia-smi``'s memory used on the GPU (all processes: every worker's CUDA
  context, models and batches), sampled every ``--gpu-interval`` s, minus what was in use
  before the run, in total and per worker;
* peak host memory: the workers' RSS and the whole tree's PSS (as in ``sim_overhead``).

Without a CUDA device (this project's CI machine) the GPU rows are reported as skipped, and one
CPU reference run (workers = CPU count, ``train.device = "cpu"``) shows the script's path works
and gives the CPU's updates per second for the same client work.

Run::

    .venv/bin/python -m benchmarks.gpu_share --workers 10,50,100 --model cnn

Writes ``benchmarks/results/gpu_share.json`` (and ``.md``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.process_sampler import TreeSampler, run_watched  # noqa: E402
from fedkd.experiments.presets import load_profile  # noqa: E402
from fedkd.experiments.report import table_lines  # noqa: E402
from fedkd.runtime.launch import SimulationSuperLink  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402


def gpu_info() -> dict[str, Any]:
    """What torch and nvidia-smi see."""
    info: dict[str, Any] = {"cuda-available": torch.cuda.is_available(),
                            "nvidia-smi": shutil.which("nvidia-smi")}
    if info["cuda-available"]:
        props = torch.cuda.get_device_properties(0)
        info.update({"name": props.name, "total-memory-bytes": props.total_memory,
                     "device-count": torch.cuda.device_count()})
    return info


def gpu_memory_used() -> int | None:
    """Bytes in use on GPU 0 (all processes), from nvidia-smi; None if it cannot say."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "-i", "0"], capture_output=True, text=True, timeout=10)
        return int(float(out.stdout.strip().splitlines()[0])) * 1024 * 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


class GpuSampler(threading.Thread):
    """Peak of :func:`gpu_memory_used` while it runs."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.baseline = gpu_memory_used()
        self.peak = self.baseline

    def run(self) -> None:
        while not self.stop_event.is_set():
            used = gpu_memory_used()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self.stop_event.wait(self.interval)


def settings_for(args: argparse.Namespace, workers: int, device: str) -> dict[str, Any]:
    clients = workers * args.updates_per_worker
    return {
        "algorithm": args.algorithm, "seed": args.seed, "num-server-rounds": args.rounds,
        "data.dataset": "fashion-mnist", "data.partitioner": "iid", "data.num-partitions": clients,
        "data.local-test-fraction": 0.0, "train.model": args.model,
        "train.local-steps": args.steps, "train.batch-size": args.batch_size,
        "train.num-threads": 1, "train.device": device,
        "federation.min-nodes": clients, "federation.min-replies": clients,
        "federation.evaluate-every": 0, "output.checkpoint": False,
    }


def run_one(args: argparse.Namespace, workers: int, federation: dict[str, Any],
            device: str, work: Path) -> dict[str, Any]:
    settings = settings_for(args, workers, device)
    clients = settings["data.num-partitions"]
    name = f"{device}-{workers}"
    federation = {**federation, "num-supernodes": clients}
    tree = TreeSampler(work / name / "metrics.jsonl", 0.5, 5.0)
    tree.expected_workers = workers
    gpu = GpuSampler(args.gpu_interval)
    start = time.perf_counter()
    with SimulationSuperLink(log_path=work / f"{name}-superlink.log") as link:
        _, status = run_watched(link, {**settings, "output.dir": str(work), "output.run-name": name},
                                federation, [tree, gpu], timeout=args.timeout)
    if status != "finished:completed":
        return {"workers": workers, "device": device, "status": f"failed: {status}",
                "log": str(work / f"{name}-superlink.log")}
    rows = read_metrics(work / name)
    steady = [r["wall-time-s"] for r in rows[1:]] or [rows[0]["wall-time-s"]]
    worker_rss = tree.peak_rss_of("worker")
    peak_gpu = (gpu.peak - (gpu.baseline or 0)) if gpu.peak is not None else None
    return {
        "workers": workers, "device": device, "status": "ok", "clients-per-round": clients,
        "first-round-s": rows[0]["wall-time-s"], "steady-round-s": statistics.median(steady),
        "client-updates-per-s": clients / statistics.median(steady),
        "peak-gpu-memory-bytes": peak_gpu,
        "peak-gpu-memory-per-worker-bytes": peak_gpu / workers if peak_gpu else None,
        "workers-seen": len(worker_rss),
        "peak-worker-rss-bytes": max(worker_rss) if worker_rss else None,
        "peak-tree-pss-bytes": tree.peak_tree_pss, "total-wall-s": time.perf_counter() - start,
        "federation-config": federation,
    }


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def table(rows: list[dict[str, Any]]) -> str:
    header = ["workers", "device", "status", "clients / round", "first round s", "steady round s",
              "client updates / s", "peak GPU memory (per worker)", "peak worker RSS", "tree PSS"]
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([r["workers"], r["device"], r["status"]] + [""] * 7)
            continue
        gpu = (f"{_gb(r['peak-gpu-memory-bytes'])} ({_gb(r['peak-gpu-memory-per-worker-bytes'])})"
               if r["peak-gpu-memory-bytes"] is not None else "-")
        cells.append([r["workers"], r["device"], "ok", r["clients-per-round"],
                      f"{r['first-round-s']:.1f}", f"{r['steady-round-s']:.2f}",
                      f"{r['client-updates-per-s']:.1f}", gpu, _gb(r["peak-worker-rss-bytes"]),
                      _gb(r["peak-tree-pss-bytes"])])
    return "\n".join(table_lines(header, cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="10,50,100", help="comma-separated worker counts")
    parser.add_argument("--updates-per-worker", type=int, default=2,
                        help="client updates per worker per round")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--algorithm", default="fedavg")
    parser.add_argument("--steps", type=int, default=3, help="local steps per client update")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-interval", type=float, default=0.5)
    parser.add_argument("--cpu-reference", action=argparse.BooleanOptionalAction, default=None,
                        help="also run on the CPU (default: only when there is no GPU)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="gpu_share")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    info = gpu_info()
    work = Path(tempfile.mkdtemp(prefix="fedkd-gpu-share-"))
    rows: list[dict[str, Any]] = []
    print(f"GPU: {info}", flush=True)
    for n in counts:
        if not info["cuda-available"]:
            rows.append({"workers": n, "device": "cuda", "status": "skipped: torch sees no CUDA device"})
            continue
        profile = load_profile(f"gpu-share-{n}") if (ROOT / "simulations" / "configs" / "profiles"
                                                     / f"gpu-share-{n}.toml").exists() else None
        federation = dict(profile.federation) if profile else {
            "client-resources-num-cpus": 1, "client-resources-num-gpus": round(1.0 / n, 6),
            "init-args-num-cpus": n, "init-args-num-gpus": 1,
            "init-args-logging-level": "ERROR", "init-args-log-to-driver": False}
        print(f"[{n} workers on one GPU] {federation}", flush=True)
        rows.append(run_one(args, n, federation, "cuda", work))
    cpu_reference = (not info["cuda-available"]) if args.cpu_reference is None else args.cpu_reference
    if cpu_reference:
        n = os.cpu_count() or 1
        federation = {**load_profile("cpu").federation, "init-args-num-cpus": n}
        print(f"[CPU reference: {n} workers] {federation}", flush=True)
        rows.append(run_one(args, n, federation, "cpu", work))
    command = ".venv/bin/python -m benchmarks.gpu_share " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = (f"One GPU shared by many simulated clients: {args.algorithm}, model {args.model}, "
            f"{args.steps} local steps of batch {args.batch_size} per client update, "
            f"{args.updates_per_worker} updates per worker per round, {args.rounds} rounds. "
            f"GPU: {info.get('name', 'none (torch sees no CUDA device)')}; machine: "
            f"{os.cpu_count()} CPUs.\n\nCommand: `{command}`\n\n{table(rows)}\n")
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    (out / f"{args.name}.json").write_text(json.dumps({
        "command": command, "args": vars(args), "gpu": info, "torch": torch.__version__,
        "platform": platform.platform(), "cpu-count": os.cpu_count(), "results": rows,
    }, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
