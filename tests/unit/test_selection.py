"""Tests for fedkd.algorithms.selective_fd_selectors (Selective-FD's client- and server-side selectors).

Known values come from closed forms computed here by hand or with independent code (a direct
broadcasted kernel, the KuLSIF objective's gradient in coefficient space, a numerical minimiser),
never by calling the function under test twice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkd.algorithms import selective_fd_selectors as S

# ---------------------------------------------------------------------------------------------
# Independent reference code
# ---------------------------------------------------------------------------------------------


def naive_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
    return np.exp(-sq / (2 * sigma**2))


def tiny_problem() -> tuple[np.ndarray, np.ndarray, float, float]:
    """n = 5 auxiliary and m = 4 numerator points in 2-D, with a kernel that couples them."""
    rng = np.random.default_rng(7)
    x_de = rng.uniform(-2.0, 2.0, size=(5, 2))
    x_nu = rng.normal(0.0, 0.5, size=(4, 2))
    return x_nu, x_de, 1.0, 0.3


def coefficient_space(x_nu: np.ndarray, x_de: np.ndarray, sigma: float, lam: float):
    """The KuLSIF objective J restricted to r = sum_c theta_c k(., c), c in [X_de; X_nu].

    J(theta) = 1/(2n) ||G_de theta||^2 - 1/m 1' G_nu theta + lam/2 theta' G theta, with G the
    Gram matrix of the centres and G_de, G_nu its rows at X_de and X_nu. By the representer
    theorem the RKHS minimiser lies in this span.
    """
    n, m = len(x_de), len(x_nu)
    centres = np.concatenate([x_de, x_nu])
    gram = naive_kernel(centres, centres, sigma)
    g_de, g_nu = gram[:n], gram[n:]

    def objective(theta: np.ndarray) -> float:
        r_de, r_nu = g_de @ theta, g_nu @ theta
        return float(r_de @ r_de / (2 * n) - r_nu.sum() / m + lam / 2 * theta @ gram @ theta)

    def gradient(theta: np.ndarray) -> np.ndarray:
        return g_de.T @ (g_de @ theta) / n - g_nu.T @ np.ones(m) / m + lam * gram @ theta

    return centres, objective, gradient


def closed_form_theta(est: S.KuLSIF) -> np.ndarray:
    return np.concatenate([est.alpha, np.full(est.m, 1.0 / (est.m * est.lam))])


# ---------------------------------------------------------------------------------------------
# KuLSIF: the closed form is the minimiser of the KuLSIF objective
# ---------------------------------------------------------------------------------------------


def test_kulsif_closed_form_zeroes_the_objective_gradient() -> None:
    x_nu, x_de, sigma, lam = tiny_problem()
    est = S.KuLSIF.fit(x_nu, x_de, sigma=sigma, lam=lam)
    _, objective, gradient = coefficient_space(x_nu, x_de, sigma, lam)
    theta = closed_form_theta(est)
    grad = gradient(theta)
    scale = np.abs(gradient(np.zeros_like(theta))).max()  # = max |G_nu' 1 / m|
    assert scale > 0.1
    assert np.abs(grad).max() < 1e-12 * max(1.0, scale)
    # ... and it is a minimum: every perturbation increases J (J is convex in theta).
    rng = np.random.default_rng(0)
    j0 = objective(theta)
    for _ in range(20):
        assert objective(theta + 1e-3 * rng.normal(size=theta.shape)) >= j0 - 1e-15


def test_kulsif_gradient_check_catches_the_official_codes_matrix_product() -> None:
    # The official code returns (K11/n + lam I) @ b instead of solving with it: the same check
    # must fail for that alpha (the check above is not vacuous).
    x_nu, x_de, sigma, lam = tiny_problem()
    n, m = len(x_de), len(x_nu)
    _, _, gradient = coefficient_space(x_nu, x_de, sigma, lam)
    a = naive_kernel(x_de, x_de, sigma) / n + lam * np.eye(n)
    b = -naive_kernel(x_de, x_nu, sigma) @ np.ones(m) / (m * n * lam)
    wrong = np.concatenate([a @ b, np.full(m, 1.0 / (m * lam))])
    assert np.abs(gradient(wrong)).max() > 1e-3


def test_kulsif_matches_a_numerical_minimisation_of_the_objective() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    x_nu, x_de, sigma, lam = tiny_problem()
    centres, objective, gradient = coefficient_space(x_nu, x_de, sigma, lam)
    res = optimize.minimize(objective, np.zeros(len(centres)), jac=gradient, method="BFGS",
                            options={"gtol": 1e-12, "maxiter": 10_000})
    est = S.KuLSIF.fit(x_nu, x_de, sigma=sigma, lam=lam)
    assert objective(closed_form_theta(est)) <= res.fun + 1e-10
    # theta may not be unique (G can be singular), the function r is: compare r at new points.
    grid = np.random.default_rng(1).uniform(-3.0, 3.0, size=(50, 2))
    r_numeric = naive_kernel(grid, centres, sigma) @ res.x
    np.testing.assert_allclose(est.ratio(grid), r_numeric, rtol=1e-6, atol=1e-8)


def test_kulsif_ratio_is_the_kernel_expansion() -> None:
    x_nu, x_de, sigma, lam = tiny_problem()
    est = S.KuLSIF.fit(x_nu, x_de, sigma=sigma, lam=lam)
    x = np.random.default_rng(2).normal(size=(9, 2))
    expected = (naive_kernel(x, x_de, sigma) @ est.alpha
                + naive_kernel(x, x_nu, sigma).sum(axis=1) / (len(x_nu) * lam))
    np.testing.assert_allclose(est.ratio(x), expected, rtol=1e-12, atol=1e-14)
    # alpha from the brief's formula, with an independent kernel and an explicit inverse
    n, m = len(x_de), len(x_nu)
    inv = np.linalg.inv(naive_kernel(x_de, x_de, sigma) / n + lam * np.eye(n))
    alpha = -inv @ (naive_kernel(x_de, x_nu, sigma) @ np.ones(m)) / (m * n * lam)
    np.testing.assert_allclose(est.alpha, alpha, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# KuLSIF on a toy density ratio: p = N(0, 1), q = U[-6, 6]
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_vs_uniform() -> tuple[S.KuLSIF, np.ndarray]:
    rng = np.random.default_rng(0)
    x_nu = rng.normal(size=(400, 1))
    x_de = S.auxiliary_uniform(400, (1,), -6.0, 6.0, rng)
    held_out = rng.normal(size=(300, 1))
    est = S.KuLSIF.fit(x_nu, x_de, sigma=0.4, lam=0.01)
    return est, held_out


def test_kulsif_recovers_a_gaussian_over_uniform_ratio(gaussian_vs_uniform) -> None:
    est, _ = gaussian_vs_uniform
    r0, r1, r2, r5 = est.ratio(np.array([[0.0], [1.0], [2.0], [5.0]]))
    true_r0 = 12.0 / math.sqrt(2 * math.pi)  # phi(0) / (1/12) = 4.787
    assert abs(r0 - true_r0) < 0.3 * true_r0
    assert r0 > r1 > r2 > abs(r5)
    assert abs(r5) < 0.05  # true value 12 * phi(5) = 1.8e-5
    assert r0 > 5 * r5


def test_client_mask_drops_far_samples_and_keeps_the_mode(gaussian_vs_uniform) -> None:
    est, held_out = gaussian_vs_uniform
    threshold = S.threshold_from_quantile(est.ratio(held_out), 0.1)
    assert threshold > 0.1
    mask = S.client_mask(est.ratio(np.array([[0.0], [5.0], [-5.0]])), threshold)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [True, False, False]
    # about 90 % of fresh local samples pass the client's own selector
    fresh = np.random.default_rng(3).normal(size=(2000, 1))
    kept = S.client_mask(est.ratio(fresh), threshold).mean()
    assert 0.8 < kept < 0.97


# ---------------------------------------------------------------------------------------------
# KuLSIF: chunking, shapes, validation
# ---------------------------------------------------------------------------------------------


def test_chunked_ratio_equals_unchunked_and_naive() -> None:
    rng = np.random.default_rng(4)
    x_nu = rng.normal(size=(30, 1, 4, 4))
    x_de = S.auxiliary_uniform(40, (1, 4, 4), -3.0, 3.0, rng)
    est = S.KuLSIF.fit(x_nu, x_de, sigma=3.0, lam=0.1, chunk_rows=7)
    est_full = S.KuLSIF.fit(x_nu, x_de, sigma=3.0, lam=0.1, chunk_rows=10_000)
    np.testing.assert_allclose(est.alpha, est_full.alpha, rtol=1e-12, atol=1e-15)
    x = rng.normal(size=(53, 1, 4, 4))
    whole = est.ratio(x, chunk_rows=10_000)
    expected = (naive_kernel(x, x_de, 3.0) @ est.alpha
                + naive_kernel(x, x_nu, 3.0).sum(axis=1) / (30 * 0.1))
    for rows in (None, 1, 5, 53, 54):
        np.testing.assert_allclose(est.ratio(x, chunk_rows=rows), whole, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(whole, expected, rtol=1e-10, atol=1e-12)
    # images and their flattened vectors are the same input
    np.testing.assert_array_equal(est.ratio(x.reshape(53, 16)), est.ratio(x))


def test_default_blocks_stay_within_the_budget() -> None:
    # N = 6000 proxy vectors against n + m = 3000 centres: one block is at most 32 MiB.
    rows = S._rows_per_block(3000, S.DEFAULT_BLOCK_BYTES)
    assert 1 <= rows < 6000
    assert rows * 3000 * 8 <= S.DEFAULT_BLOCK_BYTES


def test_kulsif_is_immutable_and_reports_sizes() -> None:
    x_nu, x_de, sigma, lam = tiny_problem()
    est = S.fit_kulsif(x_nu, x_de, sigma=sigma, lam=lam)
    assert (est.n, est.m, est.dim) == (5, 4, 2)
    assert est.alpha.dtype == np.float64 and est.alpha.shape == (5,)
    with pytest.raises(ValueError):
        est.alpha[0] = 1.0
    with pytest.raises(AttributeError):
        est.sigma = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("x_nu", "x_de", "kwargs", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 3)), {}, "different input sizes"),
        (np.zeros((0, 2)), np.zeros((4, 2)), {}, "at least one sample"),
        (np.zeros(3), np.zeros((4, 1)), {}, "ndim >= 2"),
        (np.full((3, 2), np.nan), np.zeros((4, 2)), {}, "NaN"),
        (np.zeros((3, 2)), np.zeros((4, 2)), {"sigma": 0.0}, "sigma"),
        (np.zeros((3, 2)), np.zeros((4, 2)), {"lam": -1.0}, "lam"),
        (np.zeros((3, 2)), np.zeros((4, 2)), {"chunk_rows": 0}, "chunk_rows"),
    ],
)
def test_kulsif_fit_rejects_bad_inputs(x_nu, x_de, kwargs, match) -> None:
    params = {"sigma": 1.0, "lam": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        S.KuLSIF.fit(x_nu, x_de, **params)


def test_ratio_rejects_a_wrong_input_size() -> None:
    x_nu, x_de, sigma, lam = tiny_problem()
    est = S.KuLSIF.fit(x_nu, x_de, sigma=sigma, lam=lam)
    with pytest.raises(ValueError, match="input size 3"):
        est.ratio(np.zeros((2, 3)))


def test_gaussian_kernel_known_values() -> None:
    # ||(0,0) - (3,4)||^2 = 25, sigma = 5: exp(-25 / 50) = exp(-1/2)
    k = S.gaussian_kernel(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [3.0, 4.0]]), sigma=5.0)
    np.testing.assert_allclose(k, [[1.0, math.exp(-0.5)]], rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# auxiliary_uniform, threshold_from_quantile, client_mask
# ---------------------------------------------------------------------------------------------


def test_auxiliary_uniform_shape_range_and_determinism() -> None:
    a = S.auxiliary_uniform(500, (1, 2, 3), -0.4242, 2.8216, np.random.default_rng(5))
    b = S.auxiliary_uniform(500, (1, 2, 3), -0.4242, 2.8216, np.random.default_rng(5))
    assert a.shape == (500, 1, 2, 3) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -0.4242 and a.max() < 2.8216
    assert abs(a.mean() - (2.8216 - 0.4242) / 2) < 0.05  # mean of U[low, high]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, (2,), 0.0, 1.0), "n must"),
        ((3, (), 0.0, 1.0), "input_shape"),
        ((3, (2,), 1.0, 1.0), "low < high"),
    ],
)
def test_auxiliary_uniform_rejects_bad_arguments(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        S.auxiliary_uniform(*args, np.random.default_rng(0))


def test_auxiliary_uniform_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        S.auxiliary_uniform(3, (2,), 0.0, 1.0, 0)  # type: ignore[arg-type]


def test_threshold_from_quantile_known_values() -> None:
    r = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert S.threshold_from_quantile(r, 0.25) == 2.0  # sorted [1..5], position 0.25 * 4 = 1
    assert S.threshold_from_quantile(r, 0.1) == pytest.approx(1.4)  # 1 + 0.4 * (2 - 1)
    assert S.threshold_from_quantile(r, 0.0) == 1.0
    for bad, match in (([], "non-empty"), ([1.0, math.nan], "NaN")):
        with pytest.raises(ValueError, match=match):
            S.threshold_from_quantile(bad, 0.5)
    with pytest.raises(ValueError, match="quantile"):
        S.threshold_from_quantile(r, 1.5)


def test_client_mask_is_inclusive_at_the_threshold() -> None:
    mask = S.client_mask(np.array([0.5, 2.0, 2.0 - 1e-12, 3.0, -1.0]), 2.0)
    assert mask.tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError, match="1-D"):
        S.client_mask(np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match="threshold"):
        S.client_mask(np.zeros(2), math.nan)


# ---------------------------------------------------------------------------------------------
# Server side: entropy selector
# ---------------------------------------------------------------------------------------------

ONE_HOT = [0.0, 1.0, 0.0, 0.0]
UNIFORM = [0.25, 0.25, 0.25, 0.25]
HALF = [0.5, 0.5, 0.0, 0.0]  # H = ln 2 = (1/2) ln 4


def test_entropy_known_values() -> None:
    probs = np.array([ONE_HOT, UNIFORM, HALF])
    np.testing.assert_allclose(S.shannon_entropy(probs), [0.0, math.log(4), math.log(2)],
                               atol=1e-15)
    np.testing.assert_allclose(S.normalised_entropy(probs), [0.0, 1.0, 0.5], atol=1e-15)


def test_entropy_mask_keeps_one_hot_and_drops_uniform() -> None:
    probs = np.array([ONE_HOT, UNIFORM, HALF])
    assert S.entropy_mask(probs, 0.1).tolist() == [True, False, False]
    assert S.entropy_mask(probs, 0.99).tolist() == [True, False, True]
    assert S.entropy_mask(probs, 0.5).tolist() == [True, False, True]  # inclusive
    assert S.entropy_mask(probs, 0.49).tolist() == [True, False, False]
    assert S.entropy_mask(probs, 1.0).tolist() == [True, True, True]
    assert S.entropy_mask(probs, 0.0).tolist() == [True, False, False]


def test_entropy_mask_threshold_is_in_units_of_ln_c() -> None:
    # uniform over 2 of C classes has H = ln 2; as a fraction of ln C that is 1 for C = 2 and
    # 1/2 for C = 4, 1/3 for C = 8: the same tau = 0.4 keeps it only for C = 8.
    for c, kept in ((2, False), (4, False), (8, True)):
        row = np.zeros(c)
        row[:2] = 0.5
        assert S.entropy_mask(row[None, :], 0.4).tolist() == [kept]


def test_entropy_accepts_float32_rows_within_tolerance() -> None:
    probs = np.array([[0.7, 0.2, 0.1004]], dtype=np.float32)  # sums to 1.0004
    assert S.entropy_mask(probs, 1.0).tolist() == [True]


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        ([0.5, 0.5], r"shape \[N, C\]"),
        ([[1.0]], "at least 2 classes"),
        ([[0.6, 0.6]], "sum to 1"),
        ([[0.5, 0.5], [0.2, 0.7]], "row 1"),
        ([[1.5, -0.5]], "negative"),
        ([[math.nan, 1.0]], "NaN"),
        ([[math.inf, 0.0]], "NaN or infinite"),
    ],
)
def test_entropy_mask_rejects_invalid_rows(probs, match) -> None:
    with pytest.raises(ValueError, match=match):
        S.entropy_mask(np.array(probs), 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.1, math.nan])
def test_entropy_mask_rejects_thresholds_outside_the_unit_interval(threshold) -> None:
    with pytest.raises(ValueError, match="threshold"):
        S.entropy_mask(np.array([UNIFORM]), threshold)
