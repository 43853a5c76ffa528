"""Secure aggregation inside real rounds (the round loop, the contract check, the client app):
the server's replies hold no logits, the result matches the plain run, dropouts are survived and
too many dropouts fail the round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedkd.algorithms.public_set import PublicSetAlgorithm
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
                                               ("fedmd", "weighted"),
                                               ("student-down", "logit-mean"),
                                               ("student-down", "weighted-logit-mean")])
def test_secure_run_matches_the_plain_run_and_no_reply_holds_logits(
        algorithm: str, rule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {"algorithm": algorithm, "aggregation.rule": rule, **FAST}
    # 6 clients, 3 sampled a round: both runs sample the same 3 (sampling depends on the seed
    # and the client ids only)
    overrides["federation.fraction-train"] = 0.5
    secure, audit, _ = run_inprocess({**overrides, "aggregation.secure": True}, 6, tmp_path / "secure")
    if rule == "weighted":
        # the plain weighted rule weighs by label counts at the consensus label, which only the
        # sum reveals; under secure aggregation it weighs each teacher by its data size: the
        # plain reference weighs by data size too
        monkeypatch.setattr(PublicSetAlgorithm, "teacher_weights", lambda self, replies, logits:
                            np.array([float(r.metrics["num-examples"]) for r in replies]))
    plain, _, _ = run_inprocess(overrides, 6, tmp_path / "plain")
    assert [r["sampled-clients"] for r in plain] == [r["sampled-clients"] for r in secure]
    assert len({tuple(r["sampled-clients"]) for r in secure}) == 2  # another 3 in round 2
    for a, b in zip(plain, secure):  # targets differ by the quantisation error only (~1e-8)
        assert b["teachers"] == a["teachers"] == 3
        assert b["global-accuracy"] == pytest.approx(a["global-accuracy"], abs=0.02)
        # near-uniform early targets: a tie may break the other way (one sample in 40)
        assert b["consensus-accuracy"] == pytest.approx(a["consensus-accuracy"], abs=0.03)
    first = "fit" if algorithm in ("dsfl", "student-down") else "logits"
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


def test_garbage_keys_and_a_wrong_number_of_ciphertexts_are_counted_rejected_replies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Of 6 clients, the first to answer the round's own phase sends a public key that is not a
    # key, and the first to answer share-keys ciphertexts for one neighbour fewer than it has:
    # each is a rejected reply with its reason, in replies.jsonl and the round's count.
    import numpy as np

    from fedkd.secagg import client as secagg_client

    advertise, answer = secagg_client.advertise, secagg_client.answer
    spoiled: dict[str, bool] = {}

    def garbage_keys(state, contribution, rnd):  # noqa: ANN001, ANN202
        keys = advertise(state, contribution, rnd)
        if not spoiled.setdefault("keys", False):
            spoiled["keys"] = True
            size = len(keys[secagg_client.PUBLIC_KEY_C])
            keys[secagg_client.PUBLIC_KEY_C] = np.random.default_rng(0).integers(
                0, 256, size, dtype=np.uint8)
        return keys

    def one_ciphertext_short(phase, request, state, node_id, options):  # noqa: ANN001, ANN202
        reply = answer(phase, request, state, node_id, options)
        if phase == secagg_client.SHARE_KEYS and not spoiled.setdefault("shares", False):
            spoiled["shares"] = True
            reply.arrays["ciphertexts"] = reply.arrays["ciphertexts"][:-1]
        return reply

    monkeypatch.setattr(secagg_client, "advertise", garbage_keys)
    monkeypatch.setattr(secagg_client, "answer", one_ciphertext_short)
    rows, audit, _ = run_inprocess({"algorithm": "dsfl", "aggregation.rule": "mean", **FAST,
                                    "aggregation.secure": True, "num-server-rounds": 1}, 6,
                                   tmp_path)
    assert rows[0]["rejected-replies"] == 2 and rows[0]["teachers"] == 4
    rejected = {r["phase"]: r["reason"] for r in audit if r["status"] == "rejected"}
    assert set(rejected) == {"fit", "secagg-share-keys"}
    assert rejected["fit"].startswith("public key c is not a key (ValueError")
    assert rejected["secagg-share-keys"].startswith("array 'ciphertexts': shape (3, ")
    assert "!= declared (4, " in rejected["secagg-share-keys"]
    assert {k: len(v) for k, v in rows[0]["failures"].items()} == {"fit": 1,
                                                                   "secagg-share-keys": 1}


def test_a_public_key_two_clients_sent_is_counted_as_two_rejected_replies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The second client to answer the round's own phase sends the first one's s key: each reply
    # passes the contract check alone, secure aggregation leaves both out and reports them to
    # the exchange (RoundExchange.reject): 2 rejected replies of secagg-share-keys, with reasons.
    from fedkd.secagg import client as secagg_client

    advertise = secagg_client.advertise
    sent: list[dict] = []

    def copied_key(state, contribution, rnd):  # noqa: ANN001, ANN202
        keys = advertise(state, contribution, rnd)
        if len(sent) == 1:
            keys[secagg_client.PUBLIC_KEY_S] = sent[0][secagg_client.PUBLIC_KEY_S]
        sent.append(keys)
        return keys

    monkeypatch.setattr(secagg_client, "advertise", copied_key)
    rows, audit, _ = run_inprocess({"algorithm": "dsfl", "aggregation.rule": "mean", **FAST,
                                    "aggregation.secure": True, "num-server-rounds": 1}, 6,
                                   tmp_path)
    assert rows[0]["rejected-replies"] == 2 and rows[0]["teachers"] == 4
    rejected = {r["node"]: r for r in audit if r["status"] == "rejected"}
    assert len(rejected) == 2
    (u, first), (v, second) = sorted(rejected.items())
    assert first["phase"] == second["phase"] == "secagg-share-keys"
    assert first["reason"] == f"a public key also sent by node {v}"
    assert second["reason"] == f"a public key also sent by node {u}"
