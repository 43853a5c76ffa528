"""Checkpoints after every round; a restarted run resumes after its last complete round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.algorithms.inprocess import run_inprocess

KEYS = ("round", "global-accuracy", "global-loss", "train-loss", "train-accuracy", "bytes-up",
        "synthetic-pool")


def table(rows: list[dict]) -> list[list]:
    return [[r.get(k) for k in KEYS] for r in rows]


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "fedavg"},
        {"algorithm": "fedgen", "train.model": "fedgen-cnn", "fedgen.generator-steps": 5},
        # every student (one goes down, a larger one stays), two rounds of replayed targets and
        # the running average evaluated as the global model
        {"algorithm": "student-down", "student-down.server-model": "fedgen-cnn",
         "distill.replay-rounds": 2, "distill.public-batch": 60, "distill.server-steps": 10,
         "distill.average": 0.5},
        # the synthetic pool comes back with the checkpoint: round 3 synthesises onto it
        {"algorithm": "synthetic-student-down", "synthesis.every": 2, "synthesis.steps": 5,
         "synthesis.per-class": 2, "distill.public-batch": 60, "distill.server-steps": 10,
         "distill.average": 0.5},
    ],
    ids=["fedavg", "fedgen", "student-down", "synthetic-student-down"],
)
def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, overrides: dict) -> None:
    # Clients of these algorithms keep no state between rounds, so a resumed run must
    # reproduce the uninterrupted one exactly, round by round.
    base = {**overrides, "train.local-steps": 5, "federation.evaluate-clients": False}
    straight, _, _ = run_inprocess({**base, "num-server-rounds": 3}, 3, tmp_path / "straight")
    first, _, run_dir = run_inprocess({**base, "num-server-rounds": 2}, 3, tmp_path / "resumed")
    assert (run_dir / "checkpoint.pt").exists() and len(first) == 2
    # A crash after a row was written but before its checkpoint leaves a row behind: dropped.
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"round": 99}) + "\n")
    resumed, _, _ = run_inprocess({**base, "num-server-rounds": 3}, 3, tmp_path / "resumed")
    assert table(resumed) == table(straight)


def test_fedgen_logits_restores_its_generator_student_and_replay(tmp_path: Path) -> None:
    base = {"algorithm": "fedgen-logits", "fedgen-logits.synthetic-batch": 20, "distill.server-steps": 5,
            "fedgen.generator-steps": 2, "distill.steps": 2, "train.local-steps": 3,
            "federation.evaluate-clients": False}
    run_inprocess({**base, "num-server-rounds": 1}, 3, tmp_path)
    rows, _, _ = run_inprocess({**base, "num-server-rounds": 2}, 3, tmp_path)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[1]["replay-samples"] == 40  # round 1's samples came back with the checkpoint


def test_a_changed_configuration_is_not_resumed(tmp_path: Path) -> None:
    run_inprocess({"algorithm": "fedavg", "train.local-steps": 2, "num-server-rounds": 1}, 3, tmp_path)
    with pytest.raises(ValueError, match=r"different configuration \(train.local-steps\)"):
        run_inprocess({"algorithm": "fedavg", "train.local-steps": 3, "num-server-rounds": 2},
                      3, tmp_path)
    rows, _, _ = run_inprocess({"algorithm": "fedavg", "train.local-steps": 3,
                                "num-server-rounds": 1, "output.resume": False}, 3, tmp_path)
    assert [r["round"] for r in rows] == [1]


def _edit_checkpoint(run_dir: Path, edit) -> None:  # noqa: ANN001 - a function of the dict
    import torch

    path = run_dir / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, path)


STUDENT_DOWN = {"algorithm": "student-down", "distill.public-batch": 40,
                "distill.server-steps": 2, "train.local-steps": 2,
                "federation.evaluate-clients": False}


def test_a_checkpoint_without_a_server_state_key_is_refused_by_name(tmp_path: Path) -> None:
    # A checkpoint of a fedkd from before the server-lr guard: its student-down state lacks
    # the guard's keys. Refused with their names, not a KeyError half-way through the restore.
    _, _, run_dir = run_inprocess({**STUDENT_DOWN, "num-server-rounds": 1}, 3, tmp_path)

    def older(checkpoint: dict) -> None:
        del checkpoint["algorithm"]["_server_lr"], checkpoint["algorithm"]["_fit_losses"]
    _edit_checkpoint(run_dir, older)
    with pytest.raises(ValueError, match=r"lacks student-down's server state _server_lr, "
                                         r"_fit_losses: it was written by another version"):
        run_inprocess({**STUDENT_DOWN, "num-server-rounds": 2}, 3, tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]  # nothing of the finished round was lost


def test_a_checkpoint_of_another_versions_settings_is_refused_as_such(tmp_path: Path) -> None:
    _, _, run_dir = run_inprocess({**STUDENT_DOWN, "num-server-rounds": 1}, 3, tmp_path)

    def older(checkpoint: dict) -> None:  # one setting fewer, one this version does not have
        del checkpoint["run-config"]["student-down.server-lr-guard"]
        checkpoint["run-config"]["student-down.retired-knob"] = 1
    _edit_checkpoint(run_dir, older)
    with pytest.raises(ValueError, match=r"written by another version of fedkd \(settings it "
                                         r"lacks: student-down.server-lr-guard; settings this "
                                         r"version lacks: student-down.retired-knob\)"):
        run_inprocess({**STUDENT_DOWN, "num-server-rounds": 2}, 3, tmp_path)

