"""Selective-FD through the real round loop and client app, and its reply contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedkd.algorithms.selective_fd import MASK, SelectiveFD
from fedkd.compose import build_config
from fedkd.errors import ConfigError
from fedkd.protocol import InvalidReply, Payload, encode, validate_reply
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "selective-fd", "distill.public-batch": 100, "distill.server-steps": 10,
        "distill.steps": 3, "train.local-steps": 5, "num-server-rounds": 2,
        "data.public-labels": False}


def test_clients_answer_only_on_proxy_samples_like_their_data(tmp_path: Path) -> None:
    # Digits, 5 clients with 2 classes each: a client should answer on about a fifth of the
    # proxy batch (the samples of its own classes), not on all of it.
    # With the entropy threshold at 1 (in units of ln C) the server keeps every answered target.
    rows, audit, _ = run_inprocess({**FAST, "data.partitioner": "pathological",
                                    "selective-fd.entropy-threshold": 1.0}, 5, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["global-accuracy"] is not None
    for r in rows:
        assert 5 <= r["answers-per-client"] <= 50
        assert 0 < r["kept"] == r["answered"] <= 100
    fit = [a for a in audit if a["phase"] == "fit"]
    assert fit and all(set(a["arrays"]) == {"arrays/logits", f"arrays/{MASK}"} for a in fit)
    assert all(a["arrays"][f"arrays/{MASK}"]["dtype"] == "uint8" for a in fit)


def test_the_server_drops_ambiguous_targets(tmp_path: Path) -> None:
    # At threshold 0 only one-hot targets would pass: nothing is kept, nothing is distilled.
    rows, _, _ = run_inprocess({**FAST, "selective-fd.entropy-threshold": 0.0}, 3, tmp_path)
    assert all(r["answered"] > 0 and r["kept"] == 0 for r in rows)
    assert all("student-distill-loss" not in r for r in rows)


def _phase():
    cfg = build_config({"data.dataset": "digits", "algorithm": "selective-fd"})
    return SelectiveFD(cfg, 10, (1, 8, 8)).fit_phase(4)


def _reply(mask: np.ndarray, logits: np.ndarray | None = None):
    logits = np.zeros((4, 10), np.float32) if logits is None else logits
    return encode(Payload(arrays={"logits": logits, MASK: mask},
                          metrics={"num-examples": 30, "loss": 0.5, "accuracy": 0.5}))


def test_the_contract_accepts_masked_replies() -> None:
    payload = validate_reply(_reply(np.array([1, 0, 0, 1], np.uint8)), _phase())
    assert payload.arrays[MASK].tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize(("mask", "reason"), [
    (np.array([1, 0, 1], np.uint8), "shape"),  # wrong shape
    (np.array([1, 2, 0, 1], np.uint8), "above bound 1"),  # not 0/1
    (np.array([1.0, 0.0, 0.0, 1.0], np.float32), "dtype"),  # not the declared dtype
    (np.zeros(4, np.uint8), "masks every sample"),  # nothing to aggregate
])
def test_the_contract_rejects_malformed_masks(mask: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidReply, match=reason):
        validate_reply(_reply(mask), _phase())


def test_selective_fd_refuses_privacy_it_cannot_cover() -> None:
    with pytest.raises(ConfigError, match="answer mask is computed from private data"):
        build_config({"algorithm": "selective-fd", "privacy.dp-sgd": True,
                      "privacy.noise-multiplier": 1.0})
    with pytest.raises(ConfigError, match="selective-fd.ratio-quantile must be in"):
        build_config({"algorithm": "selective-fd", "selective-fd.ratio-quantile": 1.5})


def test_selective_fd_is_dsfl_with_its_two_hooks_replaced() -> None:
    # The round (share_and_teach), the client's phases and the distillation are DS-FL's, once.
    from fedkd.algorithms.dsfl import DSFL

    assert issubclass(SelectiveFD, DSFL)
    assert SelectiveFD.DISTILL_PHASE is DSFL.DISTILL_PHASE
    own = {name for name, value in vars(SelectiveFD).items() if callable(value)}
    assert {"fit_upload", "combine_answers"} <= own
    assert not own & {"run_round", "share_and_teach", "client_phase", "teach", "distill_on_targets"}
