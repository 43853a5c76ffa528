"""client/state.py: a device's state on disk survives restarts; a replayed message starts from
the state before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.state import JOURNAL, NodeStateDir, Place, StatePruned


def state(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, v, np.float32)}


def test_the_newest_state_comes_back_after_a_restart(tmp_path: Path) -> None:
    store = NodeStateDir(tmp_path, "exp")
    assert store.load(Place(1, 1)) == {}
    store.save(Place(1, 1), state(1.0))
    store.save(Place(1, 2), state(2.0))
    again = NodeStateDir(tmp_path, "exp")  # a new process: nothing in memory
    np.testing.assert_array_equal(again.load(Place(2, 1))["w"], 2.0)
    assert again.load(Place(2, 1)).keys() == {"w"}


def test_a_replayed_place_starts_from_the_state_before_it(tmp_path: Path) -> None:
    store = NodeStateDir(tmp_path, "exp")
    for rnd in (1, 2, 3):
        store.save(Place(rnd, 1), state(rnd + 0.1))  # fit
        store.save(Place(rnd, 2), state(rnd + 0.2))  # distill
    # the server resumes after round 2's checkpoint: round 3 replays from the end of round 2
    np.testing.assert_allclose(store.load(Place(3, 1))["w"], 2.2)
    entries = json.loads((tmp_path / "runs" / "exp" / JOURNAL).read_text())
    assert [(e["round"], e["step"]) for e in entries][-1] == (2, 2)
    assert not any((tmp_path / "runs" / "exp" / f"state-{seq:08d}.npz").exists()
                   for seq in (4, 5))  # round 3's states are gone
    store.save(Place(3, 1), state(9.0))  # the replay's own result goes on from there
    np.testing.assert_allclose(store.load(Place(3, 2))["w"], 9.0)
    # a replay of a step within the round (distill of round 3 again) rolls back to fit's state
    store.save(Place(3, 2), state(10.0))
    np.testing.assert_allclose(store.load(Place(3, 2))["w"], 9.0)


def test_old_rounds_are_pruned_but_a_replay_of_the_kept_ones_works(tmp_path: Path) -> None:
    store = NodeStateDir(tmp_path, "exp")
    for rnd in range(1, 11):
        store.save(Place(rnd, 1), state(float(rnd)))
    files = sorted((tmp_path / "runs" / "exp").glob("state-*.npz"))
    assert len(files) <= 4
    np.testing.assert_allclose(store.load(Place(9, 1))["w"], 8.0)


def test_a_replay_of_a_pruned_state_is_refused_not_served_empty(tmp_path: Path) -> None:
    # A simulation's clients keep no old rounds (keep_rounds=0): the server checkpoints every
    # round, so a replay goes back to the start of the round under way, never further.
    store = NodeStateDir(tmp_path, "exp", keep_rounds=0)
    for rnd in (1, 2, 3):
        store.save(Place(rnd, 1), state(rnd + 0.1))
        store.save(Place(rnd, 2), state(rnd + 0.2))
    np.testing.assert_allclose(store.load(Place(3, 1))["w"], 2.2)  # the round under way: fine
    store.save(Place(3, 1), state(3.1))
    store.save(Place(3, 2), state(3.2))
    store.save(Place(4, 1), state(4.1))
    # a checkpoint two rounds behind: round 3's first state is gone, so is what came before it
    with pytest.raises(StatePruned, match="the state before round 3, exchange 1 was pruned"):
        store.load(Place(3, 1))
    np.testing.assert_allclose(store.load(Place(4, 1))["w"], 3.2)  # nothing was cut by the refusal


def test_runs_are_kept_apart_and_names_are_checked(tmp_path: Path) -> None:
    NodeStateDir(tmp_path, "a").save(Place(1, 1), state(1.0))
    assert NodeStateDir(tmp_path, "b").load(Place(1, 1)) == {}
    for bad in ("", "..", "x/y"):
        with pytest.raises(ValueError, match="plain name"):
            NodeStateDir(tmp_path, bad)


def test_without_a_place_the_state_is_appended(tmp_path: Path) -> None:
    store = NodeStateDir(tmp_path, "exp")
    store.save(None, state(1.0))
    store.save(None, state(2.0))
    np.testing.assert_allclose(store.load(None)["w"], 2.0)
