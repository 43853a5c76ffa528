"""``weighted-logit-mean``: known values, its relation to ``logit-mean``, and the contract."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, build_aggregator


def test_known_values() -> None:
    # teachers (2, 0) with weight 3 and (0, 0) with weight 1: mean logit (1.5, 0)
    logits = np.array([[[2.0, 0.0]], [[0.0, 0.0]]])
    out = build_aggregator("weighted-logit-mean")(logits, weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(out, [[1 / (1 + np.exp(-1.5)), 1 / (1 + np.exp(1.5))]], rtol=1e-6)
    assert out.dtype == np.float32
    # T = 2 halves it: softmax((0.75, 0))
    out_t = build_aggregator("weighted-logit-mean", temperature=2.0)(
        logits, weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(out_t[0, 0], 1 / (1 + np.exp(-0.75)), rtol=1e-6)


def test_equal_weights_give_the_logit_mean_and_a_mask_leaves_teachers_out() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 4)) * 3
    rule = build_aggregator("weighted-logit-mean")
    np.testing.assert_allclose(rule(logits, weights=np.full(5, 40.0)),
                               build_aggregator("logit-mean")(logits), rtol=1e-6)
    mask = np.ones((5, 7), bool)
    mask[1:, 0] = False  # sample 0: teacher 0 alone, whatever the weights
    out = rule(logits, weights=np.arange(1.0, 6.0), mask=mask)
    e = np.exp(logits[0, 0] - logits[0, 0].max())
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-5)


def test_it_requires_weights_and_is_registered_with_its_capabilities() -> None:
    rule = build_aggregator("weighted-logit-mean")
    with pytest.raises(ValueError, match="requires weights|weights are required|requires"):
        rule(np.zeros((2, 3, 4)))
    cls = AGGREGATORS.get("weighted-logit-mean")
    assert cls.needs_logits and cls.sum_decomposable and cls.uses_weights
    assert not (cls.needs_counts or cls.client_level_privacy)
