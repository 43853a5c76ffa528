"""``logit-mean``: known values and the shared rule contract."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, build_aggregator, build_rule
from fedkd.compose import build_config


def test_known_values() -> None:
    # Two teachers, one sample: mean logit (1, 0) -> softmax = (e / (e + 1), 1 / (e + 1)).
    logits = np.array([[[2.0, 0.0]], [[0.0, 0.0]]])
    out = build_aggregator("logit-mean")(logits)
    np.testing.assert_allclose(out, [[np.e / (np.e + 1), 1 / (np.e + 1)]], rtol=1e-6)
    assert out.dtype == np.float32
    # T = 2 halves the mean logit: softmax((0.5, 0)).
    out_t = build_aggregator("logit-mean", temperature=2.0)(logits)
    np.testing.assert_allclose(out_t[0, 0], 1 / (1 + np.exp(-0.5)), rtol=1e-6)


def test_differs_from_the_mean_of_probabilities() -> None:
    logits = np.array([[[4.0, 0.0]], [[0.0, 4.0]], [[0.0, 4.0]]])
    logit_mean = build_aggregator("logit-mean")(logits)[0]
    prob_mean = build_aggregator("mean")(logits)[0]
    np.testing.assert_allclose(logit_mean, [1 / (1 + np.exp(4 / 3)), 1 / (1 + np.exp(-4 / 3))],
                               rtol=1e-6)
    assert not np.allclose(logit_mean, prob_mean)


def test_mask_excludes_teachers() -> None:
    logits = np.array([[[3.0, 0.0], [0.0, 0.0]], [[1000.0, 0.0], [0.0, 2.0]]])
    mask = np.array([[True, True], [False, True]])
    out = build_aggregator("logit-mean")(logits, mask=mask)
    np.testing.assert_allclose(out[0], [1 / (1 + np.exp(-3)), 1 / (1 + np.exp(3))], rtol=1e-6)
    np.testing.assert_allclose(out[1], [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-6)


def test_contract() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 4))
    rule = build_aggregator("logit-mean")
    out = rule(logits)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rule(logits[::-1]), out, rtol=1e-6)  # teacher order
    one = rule(np.repeat(logits[:1], 3, axis=0))  # identical teachers give that teacher
    e = np.exp(logits[0] - logits[0].max(axis=1, keepdims=True))
    np.testing.assert_allclose(one, e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(ValueError, match="does not use weights"):
        rule(logits, weights=np.ones(5))


def test_registered_with_its_capabilities_and_configurable() -> None:
    cls = AGGREGATORS.get("logit-mean")
    assert cls.needs_logits and cls.sum_decomposable
    assert not (cls.needs_counts or cls.client_level_privacy)
    rule = build_rule(build_config({"aggregation.rule": "logit-mean", "algorithm": "fedmd",
                                    "distill.loss": "l1-logits"}))
    assert rule.name == "logit-mean"
