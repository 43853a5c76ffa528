"""The opt-in timing trace (``FEDKD_TRACE``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkd.runtime import trace


def test_nothing_is_written_without_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.delenv(trace.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    trace.record("server", msg="m1", push=1.0)
    assert trace.path() is None and list(tmp_path.iterdir()) == []


def test_events_are_joined_by_message_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(target))
    trace.record("server", msg="m1", node=7, phase="fit", round=2, push=10.0, reply=13.5)
    trace.record("clientapp", msg="m1", node=7, pid=1, proc_start=10.5, start=11.0, end=13.0)
    trace.record("handler", msg="m1", load=0.25, work=1.5, save=0.0)
    trace.record("server", msg="m2", node=8, phase="fit", round=2, push=10.0, reply=None)
    assert len(target.read_text().splitlines()) == 4
    joined = trace.read(target)
    assert sorted(joined) == ["m1", "m2"]
    assert sorted(joined["m1"]) == ["clientapp", "handler", "server"]
    assert joined["m1"]["handler"]["work"] == 1.5 and joined["m2"]["server"]["reply"] is None
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_lines_from_concurrent_processes_stay_whole(tmp_path: Path) -> None:
    target = tmp_path / "trace.jsonl"
    code = ("from fedkd.runtime import trace\n"
            "for i in range(300): trace.record('handler', msg=f'{__import__(\"os\").getpid()}-{i}', "
            "pad='x' * 200)\n")
    env = {**os.environ, trace.ENV: str(target)}
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    lines = target.read_text().splitlines()
    assert len(lines) == 900 and all(json.loads(line)["side"] == "handler" for line in lines)


def test_an_unwritable_trace_never_fails_a_message(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "missing-dir" / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(target))
    with caplog.at_level("WARNING", logger="flwr"):
        trace.record("server", msg="m1")  # no exception
        trace.record("server", msg="m2")
    # but not silently: one warning, with the cause
    assert [r.getMessage() for r in caplog.records] == [
        f"[fedkd] {trace.ENV}={target} cannot be written (FileNotFoundError: [Errno 2] No such "
        f"file or directory: '{target}'): this process's trace lines are lost"]


def test_process_start_time_is_when_the_process_started() -> None:
    if not Path("/proc/self/stat").exists():
        assert trace.process_start_time() is None
        return
    before = time.time()
    child = subprocess.run([sys.executable, "-c", "from fedkd.runtime import trace; "
                            "print(trace.process_start_time())"],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                           check=True)
    after = time.time()
    started = float(child.stdout)
    # /proc counts 10 ms ticks: the child started after `before` and before `after`
    assert before - 0.02 <= started <= after
