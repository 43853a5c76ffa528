"""client/warm.py: the warm worker behind the light ClientApp (client/entry.py), a real process
started by the first message, answering over its Unix socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from client.entry import dispatch
from client.warm import APP_DIR, WarmWorkerError, check_flower_version, stop_workers, worker_dir
from tests.algorithms.test_state_dir import run, scores


@pytest.fixture
def warm_root() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: a short directory, not tmp_path.
    root = Path(tempfile.mkdtemp(prefix="fkw-", dir="/tmp"))
    try:
        yield root
    finally:
        stop_workers(root)  # the worker this test started, by its PID
        shutil.rmtree(root, ignore_errors=True)


def test_a_warm_worker_answers_every_message_as_the_process_would(warm_root: Path,
                                                                    tmp_path: Path) -> None:
    straight = scores(run(tmp_path, "straight", state_dir=False))
    pids: set[int] = set()

    def through_the_worker(msg, context):  # type: ignore[no-untyped-def]
        reply = dispatch(msg, context)
        pids.add(int((worker_dir(warm_root) / "worker.pid").read_text()))
        return reply

    warm = scores(run(tmp_path, "warm", state_dir=False, handle=through_the_worker,
                      **{"node-config": {"warm-dir": str(warm_root)}}))
    assert warm == straight  # node state went to the worker and back every message
    assert len(pids) == 1 and next(iter(pids)) != os.getpid()  # one worker, for all 30 messages


def test_the_worker_refuses_a_client_without_its_key_and_goes_on(warm_root: Path,
                                                                  tmp_path: Path) -> None:
    run(tmp_path, "first", state_dir=False, handle=dispatch,
        **{"node-config": {"warm-dir": str(warm_root)}})
    directory = worker_dir(warm_root)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct((directory / "worker.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(str(directory / "worker.sock"), family="AF_UNIX", authkey=b"not the key").send(b"x")
    pid = int((directory / "worker.pid").read_text())
    run(tmp_path, "second", state_dir=False, handle=dispatch,
        **{"node-config": {"warm-dir": str(warm_root)}})
    assert int((directory / "worker.pid").read_text()) == pid  # the same worker served it
    # the refusal is in the worker's log, with its cause
    assert "connection refused before a message (AuthenticationError" in (
        directory / "worker.log").read_text()


def test_an_idle_worker_exits_and_cleans_up(warm_root: Path) -> None:
    directory = worker_dir(warm_root)
    proc = subprocess.run(
        [sys.executable, "-c", "from client.warm import serve; import sys; "
         f"serve(__import__('pathlib').Path({str(directory)!r}), 0.5, handle=lambda m, c: m)"],
        cwd=APP_DIR, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not any((directory / name).exists() for name in ("worker.sock", "worker.key", "worker.pid"))


def test_another_flower_version_is_refused_loudly() -> None:
    check_flower_version()  # the installed one is the tested one
    with pytest.raises(WarmWorkerError, match=r"relies on Flower 1\.42\.0.*runs Flower 1\.43\.0: "
                                              r"remove warm-dir"):
        check_flower_version("1.43.0")


def test_a_warm_dir_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WarmWorkerError, match="too long for a Unix socket"):
        worker_dir(tmp_path / ("x" * 80))
