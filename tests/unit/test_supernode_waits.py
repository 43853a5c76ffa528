"""``python -m fedkd.runtime.supernode``: Flower's SuperNode with its two fixed waits shortened."""

from __future__ import annotations

import time

import flwr
import pytest
from flwr.supernode import start_client_internal

from fedkd.runtime import supernode
from fedkd.runtime.supernode import FlowerVersionError, ShortWaits, patch_waits


class RecordingClock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def monotonic(self) -> float:
        return 42.0


def test_only_the_idle_and_reply_waits_are_shortened() -> None:
    clock = RecordingClock()
    waits = ShortWaits(0.2, 0.05, clock=clock)  # type: ignore[arg-type]
    for seconds in (3, 0.5, 1, 0.1, 3.5):
        waits.sleep(seconds)
    assert clock.slept == [0.2, 0.05, 1, 0.1, 3.5]
    assert waits.monotonic() == 42.0  # everything else is the clock's own


@pytest.mark.parametrize("poll, reply", [(0.0, 0.05), (0.2, 0.001), (5.0, 0.05), (0.2, 4.0)])
def test_intervals_out_of_range_are_refused(poll: float, reply: float) -> None:
    with pytest.raises(ValueError, match="between 0.01 and 3 s"):
        ShortWaits(poll, reply)


def test_flowers_supernode_loop_still_holds_both_waits() -> None:
    # What the patch relies on, read from the installed Flower: if this fails, Flower changed.
    import inspect

    source = inspect.getsource(start_client_internal)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source
    assert flwr.__version__ == supernode.PATCHED_FLOWER_VERSION


def test_the_patch_replaces_the_loops_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)  # restored after the test
    loop = patch_waits(0.3, 0.02)
    assert loop is start_client_internal
    assert isinstance(loop.time, ShortWaits)
    assert (loop.time.poll_s, loop.time.reply_poll_s) == (0.3, 0.02)


def test_another_flower_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)
    with pytest.raises(FlowerVersionError, match=r"Flower 1\.42\.0's SuperNode, but Flower 1\.43\.0"):
        patch_waits(version="1.43.0")
    assert start_client_internal.time is time  # nothing patched


def test_the_command_refuses_to_start_on_another_version(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)
    monkeypatch.setattr(flwr, "__version__", "1.41.2")
    assert supernode.main(["--poll-interval", "0.2", "--superlink", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "Flower 1.41.2 is installed" in err and "flower-supernode" in err
    assert start_client_internal.time is time


def test_a_bad_interval_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)
    assert supernode.main(["--poll-interval", "0"]) == 2
    assert "poll interval must be between 0.01 and 3 s" in capsys.readouterr().err
