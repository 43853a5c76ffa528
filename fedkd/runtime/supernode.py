"""Flower's SuperNode with shorter waits: ``python -m fedkd.runtime.supernode [flower-supernode options]``.

A deployed round spends much of its time in two fixed waits inside Flower 1.42's SuperNode
(``flwr.supernode.start_client_internal``), measured in ``benchmarks/results/deployed_vs_sim_recipe.md``:

* after a pull from the SuperLink that brought no message it sleeps **3 s** before asking again,
  so a message pushed to an idle node waits 1.5 s on average (up to 3 s) before its ClientApp is
  started;
* while its ClientApp works it checks for the reply every **0.5 s** (0.25 s on average).

Every phase of every round pays both. This command is ``flower-supernode`` (same options, same
process, same code) with those two waits shortened to ``--poll-interval`` (default 0.2 s: five
small requests a second to the SuperLink from an idle node) and ``--reply-poll-interval``
(default 0.05 s, a local check). Nothing else in Flower changes.

It is written against Flower 1.42.0's code (the waits are ``time.sleep(3)`` and
``time.sleep(0.5)`` in that module; it replaces the module's ``time`` with one whose ``sleep``
shortens exactly those two) and **refuses to start on any other Flower version**, or when the
module no longer holds both waits: use ``flower-supernode`` there.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

PATCHED_FLOWER_VERSION = "1.42.0"
#: Flower 1.42's waits in ``flwr.supernode.start_client_internal``, as written there.
IDLE_WAIT_S = 3
REPLY_WAIT_S = 0.5
DEFAULT_POLL_S = 0.2
DEFAULT_REPLY_POLL_S = 0.05


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the one this patch was written against."""


class ShortWaits:
    """Stands in for the ``time`` module in Flower's SuperNode loop: ``sleep(3)`` (the idle wait)
    becomes ``sleep(poll_s)``, ``sleep(0.5)`` (the reply wait) ``sleep(reply_poll_s)``; every
    other call goes to :mod:`time` unchanged."""

    def __init__(self, poll_s: float, reply_poll_s: float, clock: ModuleType = time) -> None:
        for name, value in (("poll interval", poll_s), ("reply poll interval", reply_poll_s)):
            if not 0.01 <= value <= IDLE_WAIT_S:
                raise ValueError(f"{name} must be between 0.01 and {IDLE_WAIT_S} s, got {value!r}")
        self.poll_s = poll_s
        self.reply_poll_s = reply_poll_s
        self._clock = clock

    def sleep(self, seconds: float) -> None:
        if seconds == IDLE_WAIT_S:
            seconds = self.poll_s
        elif seconds == REPLY_WAIT_S:
            seconds = self.reply_poll_s
        self._clock.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clock, name)


def patch_waits(poll_s: float = DEFAULT_POLL_S, reply_poll_s: float = DEFAULT_REPLY_POLL_S, *,
                version: str | None = None) -> ModuleType:
    """Shorten the SuperNode's two waits in this process; returns the patched module.

    Raises :class:`FlowerVersionError` unless Flower is :data:`PATCHED_FLOWER_VERSION` (``version``
    overrides the installed one, for tests) and its SuperNode loop still holds both waits.
    """
    import flwr
    from flwr.supernode import start_client_internal as loop

    installed = getattr(flwr, "__version__", None) if version is None else version
    if installed != PATCHED_FLOWER_VERSION:
        raise FlowerVersionError(
            f"fedkd.runtime.supernode shortens waits in Flower {PATCHED_FLOWER_VERSION}'s SuperNode, but "
            f"Flower {installed} is installed: start `flower-supernode` with the same options "
            f"instead (Flower's own 3 s / 0.5 s waits)")
    source = inspect.getsource(loop)
    missing = [w for w in (f"time.sleep({IDLE_WAIT_S})", f"time.sleep({REPLY_WAIT_S})")
               if w not in source]
    if missing:
        raise FlowerVersionError(
            f"{loop.__name__} no longer holds {', '.join(missing)}: fedkd.runtime.supernode would change "
            "nothing; start `flower-supernode` instead")
    loop.time = ShortWaits(poll_s, reply_poll_s)  # type: ignore[assignment]
    return loop


def main(argv: Sequence[str] | None = None) -> int:
    """Parse our two options, patch, and run Flower's ``flower-supernode`` with the rest."""
    parser = argparse.ArgumentParser(
        prog="python -m fedkd.runtime.supernode", add_help=False,
        description="flower-supernode with its idle wait (3 s) and reply wait (0.5 s) shortened; "
                    "every other option is flower-supernode's (see `flower-supernode --help`).")
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S,
                        help="seconds between pulls from the SuperLink while idle (Flower: 3)")
    parser.add_argument("--reply-poll-interval", type=float, default=DEFAULT_REPLY_POLL_S,
                        help="seconds between checks for the ClientApp's reply (Flower: 0.5)")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    try:
        patch_waits(ours.poll_interval, ours.reply_poll_interval)
    except (FlowerVersionError, ValueError) as err:
        print(f"fedkd.runtime.supernode: {err}", file=sys.stderr)
        return 2
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
