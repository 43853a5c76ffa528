"""``clipped-logit-mean``: known values, its relation to ``logit-mean``, and its capabilities."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, build_aggregator


def test_known_values_a_long_answer_is_cut_to_the_median_length() -> None:
    # centred rows (1, -1) (length sqrt 2), (2, -2) and (-10, 10) (length 10 sqrt 2): the median
    # length is 2 sqrt 2, so the third becomes (-2, 2) and the first two stay: mean (1/3, -1/3)
    logits = np.array([[[1.0, -1.0]], [[3.0, -1.0]], [[-10.0, 10.0]]])
    out = build_aggregator("clipped-logit-mean")(logits)
    np.testing.assert_allclose(out[0, 0], 1 / (1 + np.exp(-2 / 3)), rtol=1e-6)
    assert out.dtype == np.float32
    # the plain mean follows the long answer: (-2, 8/3) -> class 1
    assert build_aggregator("logit-mean")(logits)[0].argmax() == 1
    # T = 2 halves every centred row, and the result's logits with them
    out_t = build_aggregator("clipped-logit-mean", temperature=2.0)(logits)
    np.testing.assert_allclose(out_t[0, 0], 1 / (1 + np.exp(-1 / 3)), rtol=1e-6)


def test_equal_lengths_give_the_logit_mean_and_a_mask_leaves_teachers_out() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 4))
    rows -= rows.mean(axis=1, keepdims=True)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    signs = np.array([1.0, -1.0, 1.0, 1.0, -1.0])  # equal lengths, different directions
    logits = signs[:, None, None] * rows[None] * 3 + rng.normal(size=(5, 7, 1))  # + row shifts
    rule = build_aggregator("clipped-logit-mean")
    np.testing.assert_allclose(rule(logits), build_aggregator("logit-mean")(logits), rtol=1e-5)
    wild = rng.normal(size=(5, 7, 4)) * 3
    mask = np.ones((5, 7), bool)
    mask[1:, 0] = False  # sample 0: teacher 0 alone, its own median: unclipped
    out = rule(wild, mask=mask)
    e = np.exp(wild[0, 0] - wild[0, 0].max())
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-5)


def test_centre_median_known_values_and_two_teachers_give_the_logit_mean() -> None:
    # centred rows (1, -1), (2, -2), (-10, 10): median (1, -1); distances 0, sqrt 2, 11 sqrt 2,
    # median sqrt 2; the moves (0, 0), (1, -1) and (-1, 1) (cut) average to zero: softmax(1, -1)
    logits = np.array([[[1.0, -1.0]], [[3.0, -1.0]], [[-10.0, 10.0]]])
    rule = build_aggregator("clipped-logit-mean", centre="median")
    np.testing.assert_allclose(rule(logits)[0, 0], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    # around zero the same teachers give softmax(1/3, -1/3) (above): the centre matters
    assert build_aggregator("clipped-logit-mean")(logits)[0, 0] < rule(logits)[0, 0]
    # two teachers sit at equal distances from their median (their mean): the logit mean
    pair = np.random.default_rng(1).normal(size=(2, 6, 5)) * 4
    np.testing.assert_allclose(rule(pair), build_aggregator("logit-mean")(pair), rtol=1e-5)
    # a masked-out teacher's garbage changes nothing
    masked = np.concatenate([logits, np.full((1, 1, 2), 1e6)])
    mask = np.array([[True], [True], [True], [False]])
    np.testing.assert_allclose(rule(masked, mask=mask), rule(logits), rtol=1e-6)


def test_an_unknown_centre_is_refused() -> None:
    with pytest.raises(ValueError, match="centre must be one of zero, median"):
        build_aggregator("clipped-logit-mean", centre="mean")


def test_capabilities() -> None:
    cls = AGGREGATORS.get("clipped-logit-mean")
    assert cls.needs_logits
    assert not (cls.sum_decomposable or cls.uses_weights or cls.needs_counts
                or cls.client_level_privacy)
