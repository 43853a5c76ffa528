"""Many mutated replies through the contract check: every one rejected with a reason, none crash it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec, encode, validate_reply

SPEC = PhaseSpec(
    name="logits",
    message_type="query",
    reply_arrays={"logits": ArraySpec(shape=(16, 10), dtype="float32", low=-100.0, high=100.0),
                  "counts": ArraySpec(shape=(10,), dtype="int64", low=0)},
    reply_metrics=("loss",),
    min_num_examples=1,
)
MAX_NUM_EXAMPLES = 10**6


def valid(rng: np.random.Generator) -> dict:
    return {
        "logits": rng.normal(0, 3, (16, 10)).astype(np.float32),
        "counts": rng.integers(0, 50, 10).astype(np.int64),
        "metrics": {"num-examples": 100, "loss": 0.5},
    }


def mutate(rng: np.random.Generator) -> tuple[RecordDict, str]:
    """One random corruption of a valid reply, and what it did."""
    parts = valid(rng)
    kind = rng.choice([
        "nan", "inf", "huge", "negative-count", "shape-rows", "shape-cols", "extra-dim", "scalar",
        "dtype-f64", "dtype-f16", "dtype-int", "missing-key", "extra-key", "missing-metric",
        "nan-metric", "bad-num-examples", "truncated-bytes", "padded-bytes", "wrong-stype",
        "extra-record", "metrics-not-record", "empty", "zero-num-examples", "huge-num-examples",
        "overflow-metric", "overflow-metric-list",
    ])
    arrays = {"logits": parts["logits"], "counts": parts["counts"]}
    metrics = dict(parts["metrics"])
    if kind == "nan":
        arrays["logits"].flat[rng.integers(arrays["logits"].size)] = np.nan
    elif kind == "inf":
        arrays["logits"].flat[rng.integers(arrays["logits"].size)] = -np.inf
    elif kind == "huge":
        arrays["logits"].flat[rng.integers(arrays["logits"].size)] = 1e30
    elif kind == "negative-count":
        arrays["counts"][rng.integers(10)] = -int(rng.integers(1, 100))
    elif kind == "shape-rows":
        arrays["logits"] = np.zeros((int(rng.choice([0, 15, 17, 1000])), 10), np.float32)
    elif kind == "shape-cols":
        arrays["logits"] = np.zeros((16, int(rng.choice([1, 9, 11]))), np.float32)
    elif kind == "extra-dim":
        arrays["logits"] = arrays["logits"][None]
    elif kind == "scalar":
        arrays["counts"] = np.array(3, np.int64)
    elif kind == "dtype-f64":
        arrays["logits"] = arrays["logits"].astype(np.float64)
    elif kind == "dtype-f16":
        arrays["logits"] = arrays["logits"].astype(np.float16)
    elif kind == "dtype-int":
        arrays["counts"] = arrays["counts"].astype(np.int32)
    elif kind == "missing-key":
        del arrays[str(rng.choice(["logits", "counts"]))]
    elif kind == "extra-key":
        arrays["weights"] = rng.normal(size=(4, 4)).astype(np.float32)
    elif kind == "missing-metric":
        del metrics[str(rng.choice(["num-examples", "loss"]))]
    elif kind == "nan-metric":
        metrics["loss"] = float("nan")
    elif kind == "bad-num-examples":
        metrics["num-examples"] = int(rng.choice([-1, -1000]))
    elif kind == "zero-num-examples":
        metrics["num-examples"] = 0
    elif kind == "huge-num-examples":
        metrics["num-examples"] = int(rng.choice([MAX_NUM_EXAMPLES + 1, 2**62, 2**63, 2**1100]))
    elif kind == "overflow-metric":
        metrics["loss"] = int(rng.choice([2**1024, 2**1100, -(2**2000)]))
    elif kind == "overflow-metric-list":
        metrics["per-class"] = [1, 2, 2**1100]
    content = encode(Payload(arrays=arrays, metrics=metrics))
    rec = content["arrays"]
    if kind == "truncated-bytes":
        a = rec["logits"]
        rec["logits"] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data[: -int(rng.integers(1, 64))])
    elif kind == "padded-bytes":
        a = rec["logits"]
        rec["logits"] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data + b"\x00" * 8)
    elif kind == "wrong-stype":
        a = rec["logits"]
        rec["logits"] = Array(dtype=a.dtype, shape=a.shape, stype="torch.Tensor", data=a.data)
    elif kind == "extra-record":
        content["leak"] = ArrayRecord({"x": Array(np.zeros(3, np.float32))})
    elif kind == "metrics-not-record":
        content = RecordDict({"arrays": content["arrays"],
                              "metrics": ConfigRecord({"num-examples": 100, "loss": 0.5})})
    elif kind == "empty":
        content = RecordDict({"metrics": MetricRecord({"num-examples": 1, "loss": 0.1})})
    return content, str(kind)


def test_a_valid_reply_passes() -> None:
    rng = np.random.default_rng(0)
    parts = valid(rng)
    metrics = parts.pop("metrics")
    validate_reply(encode(Payload(arrays=parts, metrics=metrics)), SPEC,
                   max_num_examples=MAX_NUM_EXAMPLES)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_replies_are_all_rejected_with_a_reason(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kinds = set()
    for _ in range(250):
        content, kind = mutate(rng)
        kinds.add(kind)
        with pytest.raises(InvalidReply) as info:  # any other exception is a crash: fails here
            validate_reply(content, SPEC, max_num_examples=MAX_NUM_EXAMPLES)
        assert str(info.value), kind
    assert len(kinds) >= 24  # the mutations really were varied
