"""``weighted-trimmed-mean``: known values and its two limits."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, build_aggregator


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_known_values() -> None:
    # five teachers, one sample, two classes; trim 0.2 drops one value at each end per column.
    # column 0: values 0, 1, 2, 3, 100 (weights 1, 2, 3, 4, 5) -> keep 1, 2, 3 weighted 2, 3, 4
    #   -> (2 + 6 + 12) / 9 = 20 / 9; column 1: all 0 -> 0
    z = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]], [[100.0, 0.0]]])
    out = build_aggregator("weighted-trimmed-mean")(z, weights=np.arange(1.0, 6.0))
    np.testing.assert_allclose(out, _softmax(np.array([[20 / 9, 0.0]])), rtol=1e-6)
    assert out.dtype == np.float32


def test_its_limits_are_the_trimmed_mean_and_the_weighted_logit_mean() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(10, 6, 4)) * 3
    w = rng.integers(1, 900, 10).astype(float)
    rule = build_aggregator("weighted-trimmed-mean")
    np.testing.assert_allclose(rule(z, weights=np.full(10, 7.0)),
                               build_aggregator("trimmed-mean")(z), rtol=1e-5)
    untrimmed = build_aggregator("weighted-trimmed-mean", trim_fraction=0.0)
    np.testing.assert_allclose(untrimmed(z, weights=w),
                               build_aggregator("weighted-logit-mean")(z, weights=w), rtol=1e-5)
    # a mask leaves teachers out before the trim: with 3 valid teachers nothing is cut (0.2 * 3)
    mask = np.zeros((10, 6), bool)
    mask[:3] = True
    np.testing.assert_allclose(rule(z, weights=w, mask=mask),
                               build_aggregator("weighted-logit-mean")(z[:3], weights=w[:3]),
                               rtol=1e-5)


def test_bad_options_and_missing_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        build_aggregator("weighted-trimmed-mean", trim_fraction=0.5)
    with pytest.raises(ValueError, match="requires"):
        build_aggregator("weighted-trimmed-mean")(np.zeros((3, 2, 2)))
    cls = AGGREGATORS.get("weighted-trimmed-mean")
    assert cls.uses_weights and cls.needs_logits and not cls.sum_decomposable
