"""Tests for fedkd.privacy.output_noise.

Known values are hand-computed on tiny inputs (arithmetic written next to each expectation).
Logit rows are multiples of the 3-4-5 triangle so that norms are exact: ``||[3, 4]|| = 5``,
``||[6, 8]|| = 10``. Pinned epsilons are Opacus 1.6's for one Gaussian release (sample rate 1,
one step: RDP alpha / (2 sigma^2) at every order alpha, Mironov 2017) at delta = 1e-5: RDP
4.73, 2.17, 0.80, 0.38 for sigma = 1, 2, 5, 10, PRV 4.39 for sigma = 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedkd.privacy import output_noise as on

DELTA = 1e-5


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# clip_rows
# ---------------------------------------------------------------------------------------------


def _varied_rows(seed: int, n: int = 500, d: int = 10, dtype: type = np.float64) -> np.ndarray:
    g = rng(seed)
    directions = g.normal(size=(n, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = 10.0 ** g.uniform(-3, 3, size=(n, 1))  # from 1e-3 to 1e3
    return (directions * norms).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bound", [0.1, 1.0, 5.0, 37.0])
def test_clip_rows_norms_within_bound(dtype: type, bound: float) -> None:
    x = _varied_rows(1, dtype=dtype)
    out = on.clip_rows(x, bound)
    assert out.dtype == dtype
    assert out.shape == x.shape
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    assert np.all(norms <= bound + 1e-6)
    # rows outside the bound land on it
    outside = np.linalg.norm(x.astype(np.float64), axis=1) > bound
    assert outside.any() and (~outside).any()
    np.testing.assert_allclose(norms[outside], bound, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_rows_inside_unchanged_exactly_and_direction_kept(dtype: type) -> None:
    x = _varied_rows(2, dtype=dtype)
    bound = 1.0
    out = on.clip_rows(x, bound)
    inside = np.linalg.norm(x.astype(np.float64), axis=1) <= bound
    assert np.array_equal(out[inside], x[inside])
    x64, o64 = x.astype(np.float64), out.astype(np.float64)
    cos = np.sum(x64 * o64, axis=1) / (np.linalg.norm(x64, axis=1) * np.linalg.norm(o64, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    # scaled, not rotated or flipped: out = t * x with 0 < t <= 1
    assert np.all(np.sign(o64) == np.sign(x64))


def test_clip_rows_known_values_zero_rows_and_no_mutation() -> None:
    x = np.array([[6.0, 8.0], [3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=np.float32)
    before = x.copy()
    out = on.clip_rows(x, 5.0)
    # [6, 8] has norm 10 -> * 5/10 = [3, 4]; [3, 4] is exactly on the bound -> unchanged
    expected = np.array([[3, 4], [3, 4], [0.3, 0.4], [0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    assert np.array_equal(x, before)
    assert out is not x


def test_clip_rows_higher_rank_and_vector() -> None:
    x = np.array([[[6.0, 8.0]], [[0.6, 0.8]]])  # [2, 1, 2]
    np.testing.assert_allclose(on.clip_rows(x, 1.0), [[[0.6, 0.8]], [[0.6, 0.8]]])
    np.testing.assert_allclose(on.clip_rows(np.array([6.0, 8.0]), 2.0), [1.2, 1.6])


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_clip_rows_rejects_bad_bound(bound: float) -> None:
    with pytest.raises(ValueError):
        on.clip_rows(np.ones((2, 2)), bound)


# ---------------------------------------------------------------------------------------------
# gaussian_noise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gaussian_noise_zero_std_is_identity(dtype: type) -> None:
    x = _varied_rows(3, n=20, dtype=dtype)
    g = rng(7)
    out = on.gaussian_noise(x, 0.0, g)
    assert out.dtype == dtype
    assert np.array_equal(out, x)
    assert out is not x
    # nothing was drawn from the generator
    assert g.bit_generator.state == rng(7).bit_generator.state


@pytest.mark.parametrize("std", [0.5, 3.0])
def test_gaussian_noise_statistics(std: float) -> None:
    x = np.full(200_000, 2.5)
    noise = on.gaussian_noise(x, std, rng(11)) - x
    assert abs(noise.std() / std - 1.0) < 0.01
    assert abs(noise.mean()) < 5 * std / math.sqrt(x.size)


def test_gaussian_noise_dtype_shape_and_reproducible() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    a = on.gaussian_noise(x, 1.0, rng(5))
    b = on.gaussian_noise(x, 1.0, rng(5))
    c = on.gaussian_noise(x, 1.0, rng(6))
    assert a.dtype == np.float32 and a.shape == (3, 4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("std", [-0.1, math.inf, math.nan])
def test_gaussian_noise_rejects_bad_std(std: float) -> None:
    with pytest.raises(ValueError):
        on.gaussian_noise(np.zeros(3), std, rng())


# ---------------------------------------------------------------------------------------------
# Release
# ---------------------------------------------------------------------------------------------


def test_release_is_frozen_and_consistent() -> None:
    r = on.Release(values=np.zeros(2), noise_multiplier=2.0, sensitivity=1.5, std=3.0)
    with pytest.raises(AttributeError):
        r.std = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        on.Release(values=np.zeros(2), noise_multiplier=2.0, sensitivity=1.5, std=1.0)


# ---------------------------------------------------------------------------------------------
# private_class_sums
# ---------------------------------------------------------------------------------------------


def test_private_class_sums_known_values_noise_free() -> None:
    logits = np.array([[3.0, 4.0], [6.0, 8.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    rel = on.private_class_sums(
        logits, labels, num_classes=3, clip_bound=2.5, noise_multiplier=0.0, rng=rng()
    )
    # clip to 2.5: [3, 4] (norm 5) -> [1.5, 2]; [6, 8] (norm 10) -> [1.5, 2];
    # [1, 0] (norm 1) and [0, 0] unchanged.
    # class 0: [1.5, 2] + [1, 0] = [2.5, 2]; class 1: [1.5, 2] + [0, 0]; class 2: no examples.
    expected = np.array([[2.5, 2.0], [1.5, 2.0], [0.0, 0.0]], dtype=np.float32)
    assert rel.values.dtype == np.float32
    np.testing.assert_allclose(rel.values, expected, rtol=0, atol=1e-6)
    assert rel.sensitivity == 2.5 and rel.noise_multiplier == 0.0 and rel.std == 0.0


def test_private_class_sums_noise_parameters() -> None:
    logits = rng(1).normal(size=(50, 4))
    labels = rng(2).integers(0, 3, size=50)
    clean = on.private_class_sums(logits, labels, 3, 2.0, noise_multiplier=0.0, rng=rng())
    noisy = on.private_class_sums(logits, labels, 3, 2.0, noise_multiplier=1.5, rng=rng(9))
    assert noisy.std == pytest.approx(3.0)
    assert noisy.sensitivity == 2.0 and noisy.noise_multiplier == 1.5
    assert noisy.values.shape == (3, 4)
    assert not np.allclose(noisy.values, clean.values)
    again = on.private_class_sums(logits, labels, 3, 2.0, noise_multiplier=1.5, rng=rng(9))
    assert np.array_equal(noisy.values, again.values)


def test_private_class_sums_sensitivity_remove_one() -> None:
    n, c, k, bound = 60, 5, 4, 1.0
    g = rng(3)
    logits = g.normal(size=(n, c)) * g.uniform(0.05, 1.0, size=(n, 1))  # norms on both sides of 1
    labels = g.integers(0, k, size=n)
    row_norms = np.linalg.norm(logits, axis=1)
    assert (row_norms > bound).any() and (row_norms < bound).any()

    def sums(lg: np.ndarray, lb: np.ndarray) -> np.ndarray:
        return on.private_class_sums(lg, lb, k, bound, noise_multiplier=0.0, rng=rng()).values

    full = sums(logits, labels)
    diffs = np.array(
        [
            np.linalg.norm(full - sums(np.delete(logits, i, axis=0), np.delete(labels, i)))
            for i in range(n)
        ]
    )
    assert np.all(diffs <= bound + 1e-6)
    # any example whose row was clipped attains the bound
    np.testing.assert_allclose(diffs[row_norms > bound], bound, atol=1e-6)
    assert diffs.max() == pytest.approx(bound, abs=1e-6)


def test_private_class_sums_empty_and_validation() -> None:
    rel = on.private_class_sums(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 2, 1.0, 0.0, rng())
    np.testing.assert_array_equal(rel.values, np.zeros((2, 3)))
    logits, labels = np.ones((3, 2)), np.array([0, 1, 1])
    with pytest.raises(ValueError):
        on.private_class_sums(logits, np.array([0, 1, 2]), 2, 1.0, 1.0, rng())  # label out of range
    with pytest.raises(ValueError):
        on.private_class_sums(logits, np.array([0, 1]), 2, 1.0, 1.0, rng())  # length mismatch
    with pytest.raises(ValueError):
        on.private_class_sums(logits, labels.astype(float), 2, 1.0, 1.0, rng())  # float labels
    with pytest.raises(ValueError):
        on.private_class_sums(np.ones(3), labels, 2, 1.0, 1.0, rng())  # 1-D logits
    with pytest.raises(ValueError):
        on.private_class_sums(logits, labels, 2, 0.0, 1.0, rng())
    with pytest.raises(ValueError):
        on.private_class_sums(logits, labels, 2, 1.0, -1.0, rng())


# ---------------------------------------------------------------------------------------------
# private_counts
# ---------------------------------------------------------------------------------------------


def test_private_counts_noise_free_is_bincount() -> None:
    labels = np.array([0, 2, 2, 4, 2, 0])
    rel = on.private_counts(labels, num_classes=6, noise_multiplier=0.0, rng=rng())
    np.testing.assert_array_equal(rel.values, [2.0, 0.0, 3.0, 0.0, 1.0, 0.0])
    assert rel.values.dtype == np.float64
    assert rel.sensitivity == 1.0 and rel.std == 0.0


def test_private_counts_std_and_no_postprocessing() -> None:
    labels = np.zeros(10, dtype=np.int64)
    k, sigma = 200_000, 2.0
    rel = on.private_counts(labels, num_classes=k, noise_multiplier=sigma, rng=rng(4))
    assert rel.std == sigma and rel.sensitivity == 1.0 and rel.noise_multiplier == sigma
    noise = rel.values - np.bincount(labels, minlength=k)
    assert abs(noise.std() / sigma - 1.0) < 0.01
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(k)
    # neither rounded nor clipped to be non-negative
    assert (rel.values < 0).any()
    assert not np.all(rel.values == np.round(rel.values))


# ---------------------------------------------------------------------------------------------
# noisy_class_means
# ---------------------------------------------------------------------------------------------


def _rel(values: list[float] | list[list[float]], sensitivity: float = 1.0) -> on.Release:
    return on.Release(
        values=np.array(values), noise_multiplier=0.0, sensitivity=sensitivity, std=0.0
    )


def test_noisy_class_means_known_values_and_mask() -> None:
    sums = _rel([[4.0, 4.0], [3.0, 6.0], [1.0, 1.0], [2.0, -2.0]])
    counts = _rel([2.0, 3.0, 0.5, -1.0])
    means, mask = on.noisy_class_means(sums, counts)
    # divisors max(count, 1): 2, 3, 1, 1
    np.testing.assert_allclose(means, [[2.0, 2.0], [1.0, 2.0], [1.0, 1.0], [2.0, -2.0]])
    assert means.dtype == np.float32
    np.testing.assert_array_equal(mask, [True, True, False, False])
    assert mask.dtype == np.bool_

    means4, mask4 = on.noisy_class_means(sums, counts, min_count=4.0)
    # divisor 4 everywhere
    np.testing.assert_allclose(means4, [[1.0, 1.0], [0.75, 1.5], [0.25, 0.25], [0.5, -0.5]])
    np.testing.assert_array_equal(mask4, [False, False, False, False])


def test_noisy_class_means_end_to_end_and_validation() -> None:
    logits = np.array([[3.0, 4.0], [6.0, 8.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0])
    sums = on.private_class_sums(logits, labels, 2, clip_bound=5.0, noise_multiplier=0.0, rng=rng())
    counts = on.private_counts(labels, 2, noise_multiplier=0.0, rng=rng())
    means, mask = on.noisy_class_means(sums, counts)
    # class 0: ([3, 4] + [1, 0]) / 2 = [2, 2]; class 1: [3, 4] / 1
    np.testing.assert_allclose(means, [[2.0, 2.0], [3.0, 4.0]])
    assert mask.all()
    with pytest.raises(ValueError):
        on.noisy_class_means(sums, counts, min_count=0.0)
    with pytest.raises(ValueError):
        on.noisy_class_means(sums, _rel([1.0, 1.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# Public logits
# ---------------------------------------------------------------------------------------------


def test_public_logits_sensitivity() -> None:
    assert on.public_logits_sensitivity(5.0, 1) == 10.0
    assert on.public_logits_sensitivity(1.5, 100) == pytest.approx(2 * 1.5 * 10)
    with pytest.raises(ValueError):
        on.public_logits_sensitivity(1.0, 0)
    with pytest.raises(ValueError):
        on.public_logits_sensitivity(0.0, 3)


def test_private_public_logits() -> None:
    logits = np.array([[6.0, 8.0], [0.3, 0.4], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    clean = on.private_public_logits(logits, clip_bound=1.0, noise_multiplier=0.0, rng=rng())
    expected = [[0.6, 0.8], [0.3, 0.4], [0.0, 1.0], [0.6, 0.8]]
    np.testing.assert_allclose(clean.values, expected, rtol=1e-6)
    assert clean.values.dtype == np.float32
    assert clean.sensitivity == pytest.approx(2 * 1.0 * math.sqrt(4))
    noisy = on.private_public_logits(logits, clip_bound=1.0, noise_multiplier=0.5, rng=rng(1))
    assert noisy.std == pytest.approx(0.5 * 4.0) and noisy.noise_multiplier == 0.5
    assert noisy.values.shape == (4, 2)


# ---------------------------------------------------------------------------------------------
# Accounting (pins: Opacus 1.6's accountants, see the module docstring)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "eps"), [(1.0, 4.73), (2.0, 2.17), (5.0, 0.80), (10.0, 0.38)])
def test_single_release_epsilon_rdp(sigma: float, eps: float) -> None:
    release = on.private_counts(np.array([0, 1]), 2, noise_multiplier=sigma, rng=rng())
    acct = RDPAccountant()
    on.account_release(acct, release)
    assert acct.history == [(sigma, 1.0, 1)]
    assert acct.get_epsilon(DELTA) == pytest.approx(eps, abs=0.01)


def test_single_release_epsilon_prv() -> None:
    release = on.private_counts(np.array([0, 1]), 2, noise_multiplier=1.0, rng=rng())
    acct = PRVAccountant()
    on.account_release(acct, release)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # harmless divide-by-zero at q = 1
        eps = acct.get_epsilon(DELTA)
    assert eps == pytest.approx(4.39, abs=0.01)


def test_worked_example_composes_with_dpsgd() -> None:
    g = rng(0)
    logits = g.normal(size=(19, 10))
    labels = g.integers(0, 10, size=19)
    acct = RDPAccountant()
    for _ in range(10):
        for _ in range(19):
            acct.step(noise_multiplier=1.0, sample_rate=1 / 19)  # DP-SGD steps
        on.account_release(acct, on.private_class_sums(logits, labels, 10, 5.0, 5.0, g))
        on.account_release(acct, on.private_counts(labels, 10, 5.0, g))
    assert acct.get_epsilon(DELTA) == pytest.approx(7.070, abs=0.01)


def test_account_release_rejects_zero_noise() -> None:
    release = on.private_counts(np.array([0, 1]), 2, noise_multiplier=0.0, rng=rng())
    acct = RDPAccountant()
    with pytest.raises(ValueError):
        on.account_release(acct, release)
    assert acct.history == []


def test_post_processors_clip_then_noise_as_objects() -> None:
    from fedkd.privacy.output_noise import ClipRows, GaussianNoise, OutputMechanism

    clip = ClipRows(5.0)
    np.testing.assert_allclose(clip(np.array([[3.0, 4.0], [6.0, 8.0]])), [[3.0, 4.0], [3.0, 4.0]])
    noise = GaussianNoise(2.0)
    release = noise(np.zeros(20_000), sensitivity=3.0, rng=np.random.default_rng(0))
    assert release.std == 6.0 and release.noise_multiplier == 2.0 and release.sensitivity == 3.0
    assert abs(release.values.std() - 6.0) < 0.1
    with pytest.raises(ValueError, match="bound"):
        ClipRows(0.0)
    # The mechanism's releases are exactly the functions' with its clip bound and sigma.
    mech = OutputMechanism.from_config(10.0, 5.0)
    logits = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32) * 20
    labels = np.arange(30) % 4
    a = mech.class_sums(logits, labels, 4, np.random.default_rng(2))
    b = on.private_class_sums(logits, labels, 4, 10.0, 5.0, np.random.default_rng(2))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.sensitivity == 10.0 and a.noise_multiplier == 5.0
    c = mech.public_logits(logits, np.random.default_rng(3))
    assert c.sensitivity == pytest.approx(2 * 10.0 * np.sqrt(30))
    assert mech.counts(labels, 4, np.random.default_rng(4)).sensitivity == 1.0
