"""Run outputs: ``outputs/<run>/config.json``, ``metrics.jsonl`` (one row per round), ``summary.json``.

Rows are appended and flushed to disk as each round ends, so a run that stops early keeps every
finished round readable.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedkd.config import RunConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
AUDIT_FILE = "replies.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
ARTIFACTS_DIR = "artifacts"
#: The clients' journaled state beside the outputs (``federation.client-state = "run"``).
CLIENT_STATE_DIR = "client-state"


def default_run_name(cfg: RunConfig, now: float | None = None) -> str:
    """``<algorithm>-<dataset>-<UTC timestamp>``, used when ``output.run-name`` is empty."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{cfg.algorithm}-{cfg.data.dataset}-{stamp}"


def _jsonable(value: Any) -> Any:
    """Replace non-finite floats by ``None`` so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _append_line(path: Path, obj: Mapping[str, Any], sync: bool) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(_jsonable(obj), sort_keys=True) + "\n")
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


class RunOutput:
    """The output directory of one run.

    Parameters
    ----------
    directory
        ``<output.dir>/<run name>``; created if missing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = directory / METRICS_FILE
        self.audit_path = directory / AUDIT_FILE

    @classmethod
    def for_config(cls, cfg: RunConfig) -> RunOutput:
        """Create the run directory named by ``cfg.output`` and record the resolved config."""
        name = cfg.output.run_name or default_run_name(cfg)
        out = cls(Path(cfg.output.dir).expanduser().resolve() / name)
        out.write_config(cfg)
        return out

    def write_config(self, cfg: RunConfig, **extra: Any) -> None:
        """Write the resolved flat configuration (every key, defaults included)."""
        _write_json_atomic(self.directory / CONFIG_FILE, {"run-config": cfg.to_flat(), **extra})

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one round's row to ``metrics.jsonl`` and flush it to disk."""
        _append_line(self.metrics_path, row, sync=True)

    def append_audit(self, record: Mapping[str, Any]) -> None:
        """Append one reply's record to ``replies.jsonl`` (what left a client, as received)."""
        _append_line(self.audit_path, record, sync=False)

    def rewrite_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` by ``rows`` (a resumed run drops rows after its checkpoint)."""
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)

    def start_fresh(self) -> None:
        """Remove the metrics, reply log, checkpoint, artifacts and client state of an earlier
        run in this directory."""
        for name in (METRICS_FILE, AUDIT_FILE, CHECKPOINT_FILE, SUMMARY_FILE):
            (self.directory / name).unlink(missing_ok=True)
        for name in (ARTIFACTS_DIR, CLIENT_STATE_DIR):
            shutil.rmtree(self.directory / name, ignore_errors=True)

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write the server's state after a round, atomically (temporary file, then rename)."""
        import torch

        path = self.directory / CHECKPOINT_FILE
        tmp = path.with_suffix(".pt.tmp")
        torch.save(dict(state), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint of this run directory, or ``None``."""
        import torch

        path = self.directory / CHECKPOINT_FILE
        if not path.exists():
            return None
        return torch.load(path, weights_only=False)  # our own file: numpy and Python objects

    def write_artifact(self, name: str, content: bytes) -> Path:
        """Write ``artifacts/<name>`` atomically (a plain file name: letters, digits, ``._-``)."""
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
            raise ValueError(f"artifact name {name!r}: a plain file name is required")
        folder = self.directory / ARTIFACTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, folder / name)
        return folder / name

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` (atomically)."""
        _write_json_atomic(self.directory / SUMMARY_FILE, summary)


def read_metrics(path: Path | str, name: str = METRICS_FILE) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file, or of ``<dir>/<name>`` given a run directory."""
    p = Path(path)
    return read_jsonl(p / name if p.is_dir() else p)


def read_jsonl(path: Path | str, *, growing: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped).

    ``growing``: a file that another process may still be writing (``metrics.jsonl`` of a run in
    progress): a missing or unreadable file has no rows, and a torn last line (no newline yet)
    or a line that is not JSON is left out instead of raising.
    """
    if not growing:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
