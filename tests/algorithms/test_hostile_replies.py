"""Misbehaving clients (fedkd.attacks) against the server's contract check, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import pytest

from fedkd.algorithms import QuorumError
from tests.algorithms.inprocess import run_inprocess


@pytest.mark.parametrize(
    ("algorithm", "mode", "reason"),
    [
        ("fd", "nan", "contains NaN or Inf"),
        ("fd", "inf", "contains NaN or Inf"),
        ("fd", "wrong-shape", "!= declared"),
        ("fd", "oversize", "exceeds the bound"),
        ("fd", "extra-key", "undeclared arrays ['weights']"),
        ("fd", "scale", "bound"),
        ("fedmd", "nan", "contains NaN or Inf"),
        ("fedmd", "oversize", "exceeds the bound"),
        ("fedavg", "wrong-shape", "!= declared"),
    ],
)
def test_malformed_replies_are_rejected_counted_and_the_run_completes(
    tmp_path: Path, algorithm: str, mode: str, reason: str
) -> None:
    overrides = {"algorithm": algorithm, "attack.partitions": "0", "attack.mode": mode,
                 "attack.scale": 1e6, "train.local-steps": 3, "distill.public-batch": 50,
                 "distill.server-steps": 5}
    rows, audit, _ = run_inprocess(overrides, 3, tmp_path)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["rejected-replies"] == 1 and row["client-errors"] == 0 and row["timeouts"] == 0
        (failures,) = row["failures"].values()
        (message,) = failures.values()
        assert message.startswith("rejected:") and reason in message
    rejected = [a for a in audit if a["status"] == "rejected"]
    assert len(rejected) == 2 and all(reason in a["reason"] for a in rejected)


def test_too_few_valid_replies_fail_the_round_with_a_clear_message(tmp_path: Path) -> None:
    overrides = {"algorithm": "fd", "attack.partitions": "0,1", "attack.mode": "nan",
                 "train.local-steps": 3, "federation.min-replies": 2}
    with pytest.raises(QuorumError, match=r"only 1 valid replies of 3 \(federation.min-replies = 2\)"):
        run_inprocess(overrides, 3, tmp_path)
    # The failed round wrote no metrics row: nothing half-done is recorded.
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_dropped_client_is_skipped_and_used_again_when_it_returns(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({"algorithm": "fd", "train.local-steps": 3,
                                    "num-server-rounds": 3}, 3, tmp_path, dropouts={2: {1}})
    assert [r["timeouts"] for r in rows] == [0, 2, 0]  # its fit and evaluate replies in round 2
    assert [r["round"] for r in rows] == [1, 2, 3]
    node = 1001
    by_round = {(a["round"], a["phase"]): a["status"] for a in audit if a["node"] == node}
    assert by_round[(2, "fit")] == "timeout" and by_round[(3, "fit")] == "accepted"
    assert "accuracy" not in rows[1]["clients"][str(node)]  # requests went out, nothing came back
    assert rows[1]["clients"][str(node)]["bytes-up"] == 0
    assert "accuracy" in rows[2]["clients"][str(node)]


def test_a_client_claiming_huge_num_examples_cannot_take_over_fedavg(tmp_path) -> None:
    # Bug G: FedAvg weighs each reply by its num-examples; a claim above
    # federation.max-num-examples (or of 0) is a rejected reply, not the new global model.
    from fedkd.algorithms.fedavg import FedAvg
    from fedkd.compose import build_config
    from fedkd.protocol import InvalidReply, Payload, encode, validate_reply

    cfg = build_config({"data.dataset": "digits", "train.model": "mlp"})
    phase = FedAvg(cfg, 10, (1, 8, 8)).fit_phase()
    weights = {k: np.zeros(s.shape, "float32") for k, s in phase.reply_arrays.items()}
    for claim, reason in ((2**62, "above the maximum of 10000000"), (0, "below the minimum of 1")):
        reply = encode(Payload(arrays=weights, metrics={"num-examples": claim, "loss": 0.1,
                                                        "accuracy": 0.5}))
        with pytest.raises(InvalidReply, match=reason):
            validate_reply(reply, phase, max_num_examples=cfg.federation.max_num_examples)
