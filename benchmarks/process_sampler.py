"""A process-tree sampler for the simulation benchmarks (sim_overhead, scale, gpu_share).

:class:`TreeSampler` samples, from ``/proc``, the CPU time and memory (RSS, and PSS less often) of
every descendant of this process, classified by kind (SuperLink, simulation process, Ray workers,
...), and the round boundaries (a new row in the run's ``metrics.jsonl``). :func:`run_watched`
submits this app to a :class:`~fedkd.runtime.launch.SimulationSuperLink` with such samplers
running for the whole run; :func:`run_sampled` does so with a :class:`TreeSampler` and a
:class:`DirSize` of the clients' state on disk, and :func:`write_results` writes a benchmark's
table and record. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkd.runtime.launch import SimulationSuperLink, descendants

#: This repository: the Flower app submitted by :func:`run_watched`.
ROOT = Path(__file__).resolve().parent.parent


def process_kind(cmdline: list[str], name: str) -> str:
    text = " ".join(cmdline) or name
    if "py-spy" in text:
        return "profiler"
    if "ClientAppActor" in text:
        return "worker"
    exe = text.split(" ", 1)[0]
    if exe.endswith(("raylet", "gcs_server")):
        return "ray"
    if text.startswith("ray::IDLE") or "default_worker.py" in exe or (
            len(cmdline) > 1 and "default_worker.py" in cmdline[1]):
        return "ray-idle-worker"
    if "flwr-simulation" in text or "flwr_simulation" in text:
        return "simulation"
    if "flower-superlink" in text:
        return "superlink"
    if "flower-superexec" in text:
        return "superexec"
    if "raylet" in text or "gcs_server" in text or "ray/" in text or "ray::" in text:
        return "ray"
    if "flwr" in text:
        return "flwr-cli"
    return "other"


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds user + system, RSS bytes) of a live process, from ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3); utime, stime are fields 14, 15; rss (pages) field 24
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [p.decode(errors="replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return []


def proc_pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages divided among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples CPU time and memory of every descendant of this process, and round boundaries.

    A process that exits keeps the CPU time it had at its last sample. A round boundary is the
    moment a new row appears in ``metrics_path``.
    """

    def __init__(self, metrics_path: Path, interval: float, pss_interval: float) -> None:
        super().__init__(daemon=True)
        self.metrics_path = metrics_path
        self.interval = interval
        self.pss_interval = pss_interval
        self.stop_event = threading.Event()
        self.kinds: dict[int, str] = {}
        self.cpu: dict[int, float] = {}
        self.peak_rss: dict[int, int] = {}
        self.first_seen: dict[str, float] = {}
        self.workers_ready_at: float | None = None
        self.expected_workers = 0
        self.peak_tree_rss = 0
        self.peak_tree_pss = 0
        self.boundaries: list[dict[str, float]] = []
        self._rows = 0
        self._last_pss = 0.0
        self.lock = threading.Lock()

    def total_cpu(self) -> float:
        with self.lock:
            return sum(self.cpu.values())

    def peak_rss_of(self, kind: str) -> list[int]:
        """Peak RSS of each process of this kind seen so far (``worker``, ``simulation``...)."""
        with self.lock:
            return [v for pid, v in self.peak_rss.items() if self.kinds.get(pid) == kind]

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = collections.Counter()
        with self.lock:
            for pid, c in self.cpu.items():
                out[self.kinds.get(pid, "other")] += c
        return dict(out)

    def sample(self) -> None:
        now = time.perf_counter()
        take_pss = now - self._last_pss >= self.pss_interval
        tree_rss = tree_pss = workers = 0
        with self.lock:
            for pid in descendants(os.getpid()):
                stat = proc_stat(pid)
                if stat is None:
                    continue
                # Ray renames its workers after start: classify again until they settle.
                if self.kinds.get(pid) in (None, "ray-idle-worker", "other", "ray"):
                    self.kinds[pid] = process_kind(proc_cmdline(pid), "")
                kind = self.kinds[pid]
                if kind == "profiler":  # py-spy: not part of what is measured
                    continue
                self.first_seen.setdefault(kind, now)
                self.cpu[pid] = stat[0]
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), stat[1])
                tree_rss += stat[1]
                workers += kind == "worker"
                if take_pss:
                    tree_pss += proc_pss(pid)
        self.peak_tree_rss = max(self.peak_tree_rss, tree_rss)
        if take_pss:
            self._last_pss = now
            self.peak_tree_pss = max(self.peak_tree_pss, tree_pss)
        if self.workers_ready_at is None and self.expected_workers and workers >= self.expected_workers:
            self.workers_ready_at = now
        try:
            with self.metrics_path.open() as fh:
                rows = sum(1 for _ in fh)
        except OSError:
            rows = self._rows
        if rows > self._rows:
            self._rows = rows
            by_kind = self.cpu_by_kind()
            self.boundaries.append({"rows": rows, "time": now, "cpu": sum(by_kind.values()),
                                    "cpu-by-kind": by_kind})

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)
        self.sample()


def run_watched(link: SimulationSuperLink, settings: dict[str, Any], federation: dict[str, Any],
                samplers: list[threading.Thread], *, timeout: float) -> tuple[str, str]:
    """Submit this app to ``link`` with ``samplers`` (threads with a ``stop_event``) running for
    the whole run, echoing the server's per-round lines; returns (run id, final status)."""
    for sampler in samplers:
        sampler.start()
    try:
        return link.run_streaming(
            ROOT, settings, federation,
            lambda line: print("   ", line.split("[fedkd]", 1)[1].strip()[:120], flush=True)
            if "[fedkd] round" in line else None, timeout=timeout)
    finally:
        for sampler in samplers:
            sampler.stop_event.set()  # type: ignore[attr-defined]
            sampler.join()


class DirSize(threading.Thread):
    """Peak total size of the files under a folder."""

    def __init__(self, folder: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.folder, self.interval = folder, interval
        self.stop_event = threading.Event()
        self.peak_bytes = 0
        self.peak_files = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            total = files = 0
            for root, _, names in os.walk(self.folder):
                for name in names:
                    try:
                        total += os.stat(os.path.join(root, name)).st_size
                        files += 1
                    except OSError:
                        pass
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_files = max(self.peak_files, files)
            self.stop_event.wait(self.interval)


@dataclass
class SampledRun:
    """What :func:`run_sampled` measured: the tree's samples, the state on disk, the wall time
    from submission to the end (``start``: ``time.perf_counter()`` at submission)."""

    tree: TreeSampler
    disk: DirSize
    start: float
    wall_s: float


def run_sampled(work: Path, name: str, settings: dict[str, Any], *, nodes: int, workers: int,
                timeout: float) -> SampledRun:
    """One simulation of this app on our own SuperLink, ``nodes`` SuperNodes and ``workers``
    Ray workers of one CPU, run-config ``settings`` (whose ``output.dir`` is ``work`` and
    ``output.run-name`` is ``name``), with the process tree and ``work/client-state`` sampled
    throughout. Exits with the run's status if it did not complete."""
    federation = {"num-supernodes": nodes, "client-resources-num-cpus": 1,
                  "client-resources-num-gpus": 0.0, "init-args-num-cpus": workers,
                  "init-args-logging-level": "ERROR", "init-args-log-to-driver": False}
    tree = TreeSampler(work / name / "metrics.jsonl", 0.5, 5.0)
    tree.expected_workers = workers
    disk = DirSize(work / "client-state", 2.0)
    start = time.perf_counter()
    with SimulationSuperLink(log_path=work / f"{name}-superlink.log") as link:
        _, status = run_watched(link, settings, federation, [tree, disk], timeout=timeout)
    wall = time.perf_counter() - start
    if status != "finished:completed":
        raise SystemExit(f"error: run ended with status {status}; see {work}")
    return SampledRun(tree, disk, start, wall)


def write_results(out: Path, stem: str, lines: list[str], command: str,
                  args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """Print the table ``lines`` and write them to ``out/<stem>.md``, and the runs with the
    command, arguments and machine to ``out/<stem>.json``."""
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({
        "command": command, "args": vars(args), "platform": platform.platform(),
        "cpu-count": os.cpu_count(), "load-average-at-end": os.getloadavg(), "runs": runs,
    }, indent=2))
