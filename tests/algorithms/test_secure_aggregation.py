"""Secure aggregation inside real rounds (the round loop, the contract check, the client app):
the server's replies hold no logits, the result matches the plain run, dropouts are survived and
too many dropouts fail the round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.secagg import SecureAggregationError
from tests.algorithms.inprocess import run_inprocess

FAST = {"data.public-fraction": 0.2, "distill.public-batch": 40, "distill.steps": 5,
        "distill.server-steps": 20, "train.local-steps": 20, "num-server-rounds": 2,
        "output.audit-replies": True, "federation.min-replies": 2}
SECAGG_ARRAYS = {"secagg-share-keys": {"arrays/ciphertexts", "arrays/b-hash"},
                 "secagg-mask": {"arrays/masked"},
                 "secagg-unmask": {"arrays/b-owners", "arrays/b-shares", "arrays/s-owners",
                                   "arrays/s-shares"}}


@pytest.mark.parametrize(("algorithm", "rule"), [("dsfl", "classwise"), ("fedmd", "mean"),
                                               ("fedmd", "weighted")])
def test_secure_run_matches_the_plain_run_and_no_reply_holds_logits(
        algorithm: str, rule: str, tmp_path: Path) -> None:
    overrides = {"algorithm": algorithm, "aggregation.rule": rule, **FAST}
    secure, audit, _ = run_inprocess({**overrides, "aggregation.secure": True}, 4, tmp_path / "secure")
    # the plain weighted rule weighs by label counts at the consensus label, which only the sum
    # reveals; under secure aggregation it weighs by data size: the runs differ by design
    plain, _, _ = (run_inprocess(overrides, 4, tmp_path / "plain") if rule != "weighted"
                   else (secure, None, None))
    assert all(r["teachers"] == 4 for r in secure)
    for a, b in zip(plain, secure):  # targets differ by the quantisation error only (~1e-8)
        assert b["teachers"] == a["teachers"] == 4
        assert b["global-accuracy"] == pytest.approx(a["global-accuracy"], abs=0.02)
        # near-uniform early targets: a tie may break the other way (one sample in 40)
        assert b["consensus-accuracy"] == pytest.approx(a["consensus-accuracy"], abs=0.03)
    first = "fit" if algorithm == "dsfl" else "logits"
    for record in audit:
        arrays = set(record["arrays"])
        assert not any("logits" in a or "label-counts" in a for a in arrays), record
        if record["phase"] == first:
            assert arrays == {"arrays/secagg-pk-c", "arrays/secagg-pk-s"}
        elif record["phase"] in SECAGG_ARRAYS:
            assert arrays == SECAGG_ARRAYS[record["phase"]]
        else:
            assert arrays == set(), record  # distillation and evaluation replies: metrics only
    phases = {r["phase"] for r in audit}
    assert set(SECAGG_ARRAYS) <= phases


@pytest.mark.parametrize("phase", ["secagg-mask", "secagg-unmask"])
def test_a_client_lost_during_the_protocol_is_recovered(phase: str, tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({"algorithm": "dsfl", "aggregation.rule": "mean", **FAST,
                                "aggregation.secure": True, "num-server-rounds": 1}, 5, tmp_path, phase_dropouts={phase: {2}})
    # lost before masking: its input is left out; lost after: its input is in the sum
    assert rows[0]["teachers"] == (4 if phase == "secagg-mask" else 5)
    assert rows[0]["timeouts"] == 1


def test_too_many_clients_lost_fail_the_round_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SecureAggregationError, match="below the threshold.*nothing of it is used"):
        run_inprocess({"algorithm": "dsfl", "aggregation.rule": "mean", **FAST,
                       "aggregation.secure": True, "num-server-rounds": 1}, 5, tmp_path,
                      phase_dropouts={"secagg-unmask": {0, 1}})
