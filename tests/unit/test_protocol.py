from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedkd.protocol import (
    ArraySpec,
    InvalidReply,
    Payload,
    PhaseSpec,
    content_nbytes,
    decode,
    encode,
    validate_reply,
)

SPEC = PhaseSpec(
    name="logits",
    message_type="query",
    reply_arrays={"logits": ArraySpec(shape=(None, 3), dtype="float32", low=-50.0, high=50.0),
                  "counts": ArraySpec(shape=(3,), dtype="int64", low=0)},
    reply_metrics=("loss",),
    max_reply_bytes=10_000,
)


def good_payload() -> Payload:
    return Payload(
        arrays={"logits": np.arange(12, dtype=np.float32).reshape(4, 3),
                "counts": np.array([1, 2, 3], dtype=np.int64)},
        metrics={"num-examples": 4, "loss": 0.5},
    )


def test_encode_decode_round_trip() -> None:
    p = good_payload()
    p.config = {"round": 3, "phase": "logits"}
    q = decode(encode(p))
    assert q.config == p.config and q.metrics == p.metrics
    for k in p.arrays:
        np.testing.assert_array_equal(q.arrays[k], p.arrays[k])
        assert q.arrays[k].dtype == p.arrays[k].dtype


def test_valid_reply_passes_and_is_decoded() -> None:
    out = validate_reply(encode(good_payload()), SPEC)
    np.testing.assert_array_equal(out.arrays["counts"], [1, 2, 3])
    assert out.metrics["num-examples"] == 4


def test_content_nbytes_counts_array_data() -> None:
    small = content_nbytes(encode(good_payload()))
    p = good_payload()
    p.arrays["logits"] = np.zeros((400, 3), np.float32)
    assert content_nbytes(encode(p)) - small == (400 - 4) * 3 * 4


def mutate(**changes: object) -> RecordDict:
    p = good_payload()
    for key, value in changes.items():
        if key == "metrics":
            p.metrics = value  # type: ignore[assignment]
        elif value is None:
            del p.arrays[key]
        else:
            p.arrays[key] = value  # type: ignore[assignment]
    return encode(p)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (mutate(logits=np.zeros((4, 2), np.float32)), r"shape \(4, 2\) != declared \(None, 3\)"),
        (mutate(logits=np.zeros((4, 3, 1), np.float32)), r"shape"),
        (mutate(logits=np.zeros((4, 3), np.float64)), r"dtype float64 != declared float32"),
        (mutate(logits=np.array([[np.nan, 0, 0]], np.float32)), r"NaN or Inf"),
        (mutate(logits=np.array([[np.inf, 0, 0]], np.float32)), r"NaN or Inf"),
        (mutate(logits=np.array([[1e6, 0, 0]], np.float32)), r"above bound 50"),
        (mutate(counts=np.array([1, -2, 3], np.int64)), r"below bound 0"),
        (mutate(counts=None), r"missing arrays \['counts'\]"),
        (mutate(extra=np.zeros(3, np.float32)), r"undeclared arrays \['extra'\]"),
        (mutate(logits=np.zeros((1000, 3), np.float32)), r"exceeds the bound of 10000 bytes"),
        (mutate(metrics={"loss": 0.1}), r"missing metric 'num-examples'"),
        (mutate(metrics={"num-examples": 4}), r"missing metric 'loss'"),
        (mutate(metrics={"num-examples": 4, "loss": float("nan")}), r"metric 'loss' is not finite"),
        (mutate(metrics={"num-examples": -1, "loss": 0.1}), r"non-negative integer"),
    ],
)
def test_invalid_replies_are_rejected_with_a_reason(content: RecordDict, reason: str) -> None:
    with pytest.raises(InvalidReply, match=reason):
        validate_reply(content, SPEC)


def test_unexpected_record_is_rejected() -> None:
    content = encode(good_payload())
    content["weights"] = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    with pytest.raises(InvalidReply, match=r"unexpected records \['weights'\]"):
        validate_reply(content, SPEC)


def test_payload_bytes_not_matching_declared_shape_are_rejected() -> None:
    # A hostile client declares shape (4, 3) but ships 5 bytes of data.
    bad = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"\x00" * 5)
    content = encode(good_payload())
    content["arrays"]["logits"] = bad
    with pytest.raises(InvalidReply, match=r"array 'logits'"):
        validate_reply(content, SPEC)


def test_missing_metrics_record_is_rejected() -> None:
    content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord()})
    with pytest.raises(InvalidReply, match="missing metrics record"):
        validate_reply(content, PhaseSpec(name="x"))


def test_default_byte_bound_comes_from_declared_shapes() -> None:
    spec = PhaseSpec(name="x", reply_arrays={"a": ArraySpec(shape=(10, 10))})
    assert spec.reply_byte_bound == 400 + 64 * 1024
    free = PhaseSpec(name="x", reply_arrays={"a": ArraySpec(shape=(None, 10))})
    assert free.reply_byte_bound is None


def test_invalid_message_type_rejected() -> None:
    with pytest.raises(ValueError, match="invalid message type"):
        PhaseSpec(name="x", message_type="push")


# num-examples is FedAvg's averaging weight: bounded below by the phase, above by the caller.

WEIGHTED = PhaseSpec(name="fit", min_num_examples=1)


def metrics_only(**metrics: object) -> RecordDict:
    return encode(Payload(metrics=metrics))  # type: ignore[arg-type]


def test_zero_examples_rejected_where_the_phase_needs_a_weight() -> None:
    with pytest.raises(InvalidReply,
                       match=r"'num-examples' = 0 is below the minimum of 1 for phase 'fit'"):
        validate_reply(metrics_only(**{"num-examples": 0}), WEIGHTED)
    out = validate_reply(metrics_only(**{"num-examples": 0}), PhaseSpec(name="evaluate"))
    assert out.metrics["num-examples"] == 0
    assert PhaseSpec(name="x").min_num_examples == 0
    assert validate_reply(metrics_only(**{"num-examples": 1}), WEIGHTED).metrics == {
        "num-examples": 1}


def test_a_huge_num_examples_claim_is_rejected_above_the_callers_maximum() -> None:
    with pytest.raises(InvalidReply, match=r"'num-examples' = 4611686018427387904 is above the "
                                           r"maximum of 1000000 \(max_num_examples\)"):
        validate_reply(metrics_only(**{"num-examples": 2**62}), WEIGHTED,
                       max_num_examples=10**6)
    out = validate_reply(metrics_only(**{"num-examples": 10**6}), WEIGHTED, max_num_examples=10**6)
    assert out.metrics["num-examples"] == 10**6
    with pytest.raises(InvalidReply, match=r"above the maximum of 1000000"):
        validate_reply(metrics_only(**{"num-examples": 10**6 + 1}), WEIGHTED,
                       max_num_examples=10**6)
    # Without a maximum the phase bound alone applies (the server passes one).
    assert validate_reply(metrics_only(**{"num-examples": 2**62}), WEIGHTED).metrics[
        "num-examples"] == 2**62


def test_num_examples_above_any_float_names_its_size_not_its_digits() -> None:
    with pytest.raises(InvalidReply, match=r"= <integer of 1101 bits> is above the maximum of 10 \(max"):
        validate_reply(metrics_only(**{"num-examples": 2**1100}), WEIGHTED, max_num_examples=10)
    with pytest.raises(InvalidReply, match=r"metric 'num-examples' is not finite as a float: "
                                           r"<integer of 1101 bits> is too large for a float"):
        validate_reply(metrics_only(**{"num-examples": 2**1100}), WEIGHTED)


@pytest.mark.parametrize("value", [4.0, True, [4]])
def test_num_examples_must_be_a_plain_integer(value: object) -> None:
    content = metrics_only(**{"num-examples": 4})
    content["metrics"]._data["num-examples"] = value  # MetricRecord itself refuses bools
    with pytest.raises(InvalidReply, match=r"'num-examples' must be an integer, got "
                                           rf"{type(value).__name__} "):
        validate_reply(content, WEIGHTED, max_num_examples=10)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (2**1100, r"metric 'loss' is not finite as a float: <integer of 1101 bits> is too large"),
        (-(2**1100), r"metric 'loss' is not finite as a float: -<integer of 1101 bits>"),
        ([1, 2**1100], r"metric 'loss' item 1 is not finite as a float: <integer of 1101 bits>"),
        ([0.5, float("inf")], r"metric 'loss' item 1 is not finite \(inf\)"),
        (float("-inf"), r"metric 'loss' is not finite \(-inf\)"),
    ],
)
def test_metrics_a_float_cannot_hold_are_invalid_replies_not_overflow_errors(
        value: object, reason: str) -> None:
    content = metrics_only(**{"num-examples": 3, "loss": value})
    with pytest.raises(InvalidReply, match=reason):
        validate_reply(content, WEIGHTED)


def test_finite_metrics_and_lists_of_them_still_pass() -> None:
    content = metrics_only(**{"num-examples": 3, "loss": [0.5, 1e300, -1.0], "big": [2**62, -1], "acc": 0.9,
                              "count": 2**1000})  # 2**1000 fits in a float (max ~2**1024)
    out = validate_reply(content, WEIGHTED, max_num_examples=3)
    assert out.metrics["big"] == [2**62, -1] and out.metrics["count"] == 2**1000


def test_bool_metrics_are_accepted_as_before() -> None:
    content = metrics_only(**{"num-examples": 3, "flag": 1})
    content["metrics"]._data["flag"] = True  # only reachable past MetricRecord's own check
    assert validate_reply(content, WEIGHTED).metrics["flag"] is True


@pytest.mark.parametrize("bad", [-1, 1.0, True])
def test_min_num_examples_must_be_a_non_negative_integer(bad: object) -> None:
    with pytest.raises(ValueError, match=r"min_num_examples must be an integer >= 0"):
        PhaseSpec(name="x", min_num_examples=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5, 2.0, True])
def test_a_maximum_below_the_phase_minimum_is_the_callers_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_num_examples must be an integer >= the phase "
                                         r"'fit''s min_num_examples \(1\)"):
        validate_reply(metrics_only(**{"num-examples": 3}), WEIGHTED,
                       max_num_examples=bad)  # type: ignore[arg-type]


def test_a_long_list_as_num_examples_gives_a_short_reason() -> None:
    content = metrics_only(**{"num-examples": list(range(10**5))})
    with pytest.raises(InvalidReply) as info:
        validate_reply(content, PhaseSpec(name="fit", min_num_examples=1, max_reply_bytes=10**7))
    assert str(info.value) == ("metric 'num-examples' must be an integer, got list "
                               "[0, 1, 2, 3, 4, 5, ...]")
