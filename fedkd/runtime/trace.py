"""Where a deployed round's time goes: an opt-in timing trace of every message.

Set ``FEDKD_TRACE=/path/trace.jsonl`` in the environment of the SuperLink and the SuperNodes (the
ServerApp, ClientApp and warm-worker processes they start inherit it) and each side appends one
JSON line per event:

* ``"side": "server"``: a message the ServerApp pushed (``push``) and when its reply was pulled
  (``reply``; absent when none came), with its ``phase``, ``round`` and destination ``node``;
* ``"side": "clientapp"``: the ``flwr-clientapp`` process that answered it: when the process
  started (``proc_start``, from ``/proc``; Linux only), when Flower called the app (``start``)
  and when the app returned (``end``);
* ``"side": "handler"``: inside the app (the ClientApp process, or its warm worker): seconds spent
  loading state and data and building the client (``load``), answering (``work``) and saving
  state (``save``).

Every line carries the message id the server pushed (``msg``); :func:`read` joins them.
Times are Unix epoch seconds (``time.time()``), so every process on one machine shares a clock.
Nothing is traced, and this module costs nothing, when the variable is unset; the trace holds
no data, only times, ids and phase names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "FEDKD_TRACE"
#: Trace files this process could not write (warned about once each).
_unwritable: set[Path] = set()


def path() -> Path | None:
    """The trace file named by ``FEDKD_TRACE``, or None (tracing off)."""
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def record(side: str, **fields: Any) -> None:
    """Append one event (tracing on); a trace that cannot be written never fails a message
    (a WARNING names the cause, once per file and process)."""
    target = path()
    if target is None:
        return
    line = json.dumps({"side": side, **fields}, sort_keys=True) + "\n"
    try:
        # one write() on an O_APPEND file: lines from concurrent processes do not interleave
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as err:
        if target not in _unwritable:
            _unwritable.add(target)
            from logging import WARNING

            from flwr.common.logger import log

            log(WARNING, "[fedkd] %s=%s cannot be written (%s: %s): this process's trace "
                "lines are lost", ENV, target, type(err).__name__, err)


def process_start_time() -> float | None:
    """When this process started, in epoch seconds (Linux ``/proc``; None elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # the command name (field 2) may hold spaces: count fields after its closing ")"
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        # field 22 counts clock ticks (10 ms) since boot; /proc/stat's btime has whole seconds
        # only, so the age is taken against the boot-time clock instead
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def now() -> float:
    """The trace's clock."""
    return time.time()


def read(trace: Path) -> dict[str, dict[str, Any]]:
    """The trace's events joined by message id: ``{msg: {"server": {...}, "clientapp": {...},
    "handler": {...}}}`` (a side that wrote nothing for a message is absent)."""
    joined: dict[str, dict[str, Any]] = {}
    for line in trace.read_text().splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        msg = event.get("msg")
        if msg:
            joined.setdefault(str(msg), {})[event["side"]] = event
    return joined
