"""Shared helpers for benchmarks that run whole simulations through ``python -m simulations.run``."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedkd.config import toml_value
from fedkd.results import read_metrics

ROOT = Path(__file__).resolve().parent.parent




def slug(name: str) -> str:
    """The run directory name ``run_simulation`` uses for ``name``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_simulation(name: str, settings: dict[str, Any], *, clients: int, rounds: int,
                   out_dir: Path) -> dict[str, Any]:
    """Run one simulation (own SuperLink, real Ray backend) and summarise its metrics."""
    run_name = slug(name)
    cmd = [sys.executable, "-m", "simulations.run", "--num-clients", str(clients),
           "--rounds", str(rounds), "--output-dir", str(out_dir), "--name", run_name]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={toml_value(value)}"]
    start = time.monotonic()
    # Output to a file, not a pipe: a run outlives an interrupted benchmark (its checkpoint lets
    # the next invocation continue) instead of dying of SIGPIPE at its next line of output.
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / f"{run_name}.out"
    with log_path.open("w") as log_file:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{log_path.read_text()[-3000:]}")
    return {**summarise_run(name, settings, out_dir / run_name),
            "process-wall-time-s": time.monotonic() - start}


#: Synthetic images' leakage figures (synthetic-proxy's synthesis rounds): nearest-neighbour
#: distance to training over held-out images, membership-inference AUC; a run's summary holds
#: their means over the rounds that report them.
LEAKAGE_KEYS = ("leak-nn-ratio", "leak-mia-auc")

#: Example-level DP at epsilon 8, delta 1e-5 over the planned rounds (DP-SGD calibrated to it).
DP_EPSILON_8: dict[str, Any] = {"privacy.dp-sgd": True, "privacy.target-epsilon": 8.0,
                                "privacy.delta": 1e-5, "privacy.max-grad-norm": 1.0}


def summarise_run(name: str, settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The benchmark summary of a finished run, from its ``metrics.jsonl``."""
    rows = read_metrics(run_dir)
    last = rows[-1]
    return {
        "name": name, "settings": settings, "run-dir": str(run_dir),
        "global-accuracy": last.get("global-accuracy"),
        "personalized-accuracy": last.get("personalized-accuracy"),
        "epsilon-max": last.get("epsilon-max"),
        "epsilon-mean": last.get("epsilon-mean"),
        # per sampled client (older runs averaged over every node that was asked anything)
        "bytes-up-per-client-per-round": statistics.mean(r["bytes-up"] / r["sampled"] for r in rows),
        "bytes-down-per-client-per-round": statistics.mean(r["bytes-down"] / r["sampled"] for r in rows),
        "wall-time-per-round-s": statistics.mean(r["wall-time-s"] for r in rows),
        "rejected-replies": sum(r["rejected-replies"] for r in rows),
        **{key: statistics.mean(values) for key in LEAKAGE_KEYS
           if (values := [r[key] for r in rows if key in r])},
    }


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A table cell: ``-`` for a missing value."""
    return "-" if value is None else format(value, spec)
