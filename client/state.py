"""A device's client state on its own disk, so that it survives restarts (node config ``state-dir``).

Flower keeps a node's state (``Context.state``) in the SuperNode's memory, for one run: a
SuperNode that restarts, or a run resubmitted after a SuperLink crash, starts its clients from
scratch. With ``--node-config 'state-dir=/var/lib/fedkd ...'`` a SuperNode keeps instead:

* ``<state-dir>/runs/<run>/``: the node's whole state in run ``<run>`` (the run's
  ``output.run-name``, else ``run-<id>``): personal model, optimiser, algorithm state, ledger;
  one ``.npz`` per message that changed it, each written atomically (temporary file, rename),
  and ``journal.json`` listing them in order, also replaced atomically;
* ``<state-dir>/privacy.npz``: the privacy ledger, across runs (what ``state-path`` keeps).

Every request carries its place in the server's round (``exchange-round``, ``exchange-step``:
the k-th exchange of that round). A resumed server replays the rounds after its checkpoint, so a
request whose place is already in the journal, or behind it, is a replay: the journal is cut
back to the state just before that place, and the replay computes what the first attempt did.
The privacy ledger is never cut back: a replayed release is charged again (the epsilon only
grows, a conservative bound).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JOURNAL = "journal.json"
#: The newest place whose state was pruned from the journal.
FLOOR = "pruned.json"


class StatePruned(RuntimeError):
    """A replay asks for a state the journal no longer keeps."""
#: Rounds of history kept besides the newest state (enough to roll back the round in progress).
KEEP_ROUNDS = 2


@dataclass(frozen=True, order=True)
class Place:
    """A message's place in the server's run: round, then the exchange's index in the round."""

    round: int
    step: int


def _atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace ``path`` with ``data``: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        if fsync:  # durable across a power loss, not only a killed process
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], fsync: bool = True) -> None:
    """Write named arrays to ``path`` (``.npz``) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write(path, buf.getvalue(), fsync)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays :func:`save_arrays` wrote (empty if ``path`` does not exist)."""
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class NodeStateDir:
    """The state of one node in one run, kept under ``root/runs/<run_key>``.

    Parameters
    ----------
    root
        The node config's ``state-dir``.
    run_key
        Names the run: its ``output.run-name`` (the same across a resubmission), else
        ``run-<id>``.
    keep_rounds
        Rounds of history kept besides the newest state before them. A replay goes back at most
        to the start of the round after the server's last checkpoint; a server that checkpoints
        every round (``federation.client-state = "run"``) needs 0, a device that may rejoin a
        server resumed from an older checkpoint keeps :data:`KEEP_ROUNDS`.
    fsync
        Make each write durable across a power loss, not only a killed process (a device's
        state; a simulation's need not be).
    """

    def __init__(self, root: Path, run_key: str, keep_rounds: int = KEEP_ROUNDS,
                 fsync: bool = True) -> None:
        if not run_key or "/" in run_key or run_key in (".", ".."):
            raise ValueError(f"run key must be a plain name, got {run_key!r}")
        self.keep_rounds = keep_rounds
        self.fsync = fsync
        self.root = Path(root).expanduser()
        self.dir = self.root / "runs" / run_key
        self.privacy_path = self.root / "privacy.npz"

    # ----- journal -------------------------------------------------------------------------
    def _journal(self) -> list[dict[str, int | str]]:
        path = self.dir / JOURNAL
        if not path.exists():
            return []
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise ValueError(f"{path}: not a journal (a list of entries)")
        return entries

    def _write_journal(self, entries: list[dict[str, int | str]]) -> None:
        _atomic_write(self.dir / JOURNAL, json.dumps(entries).encode(), fsync=self.fsync)

    @staticmethod
    def _place(entry: Mapping[str, int | str]) -> Place:
        return Place(int(entry["round"]), int(entry["step"]))

    def _floor(self) -> Place | None:
        """The newest place whose state was pruned (a replay there cannot be served)."""
        path = self.dir / FLOOR
        return self._place(json.loads(path.read_text())) if path.exists() else None

    # ----- API -----------------------------------------------------------------------------
    def load(self, place: Place | None) -> dict[str, np.ndarray]:
        """The node's state before the message at ``place``: the newest saved state, or, for a
        replayed place, the state saved just before it (the later entries are removed).
        ``None``: no place known; the newest state."""
        entries = self._journal()
        if place is not None:
            keep = [e for e in entries if self._place(e) < place]
            if len(keep) < len(entries):  # a replay: cut back to before this place
                floor = self._floor()
                if floor is not None and place <= floor:
                    raise StatePruned(
                        f"{self.dir}: the state before round {place.round}, exchange "
                        f"{place.step} was pruned (states are kept from round {floor.round}, "
                        f"exchange {floor.step} on): the server resumed from a checkpoint older "
                        "than the client's history; start the run over (output.resume=false) or "
                        "give it a new output.run-name")
                self._write_journal(keep)
                for e in entries[len(keep):]:
                    (self.dir / str(e["file"])).unlink(missing_ok=True)
                entries = keep
        return load_arrays(self.dir / str(entries[-1]["file"])) if entries else {}

    def save(self, place: Place | None, state: Mapping[str, np.ndarray]) -> Path:
        """Record the state after the message at ``place`` (after the newest entry when
        ``None``); old rounds are pruned. Returns the file written."""
        entries = self._journal()
        if place is None:
            place = self._place(entries[-1]) if entries else Place(0, 0)
            place = Place(place.round, place.step + 1)
        seq = int(entries[-1]["seq"]) + 1 if entries else 0
        name = f"state-{seq:08d}.npz"
        save_arrays(self.dir / name, state, fsync=self.fsync)
        entries.append({"seq": seq, "round": place.round, "step": place.step, "file": name})
        # keep the newest entry of every round from place.round - KEEP_ROUNDS on, and the newest
        # entry before them (the state a replay of the oldest kept round starts from)
        old = [e for e in entries if int(e["round"]) < place.round - self.keep_rounds]
        drop = old[:-1]
        if drop:  # a replay at or before the newest dropped place can no longer be served
            newest = max(self._place(e) for e in drop)
            floor = self._floor()
            if floor is None or floor < newest:
                _atomic_write(self.dir / FLOOR, json.dumps(
                    {"round": newest.round, "step": newest.step}).encode(), fsync=self.fsync)
        self._write_journal([e for e in entries if e not in drop])
        for e in drop:
            (self.dir / str(e["file"])).unlink(missing_ok=True)
        return self.dir / name
