"""Data-dependent PATE analysis (Papernot et al., ICLR 2018): Theorem 6, Proposition 7, the
smooth sensitivity of the data-dependent cost and its GNSS release."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from fedkd.privacy.accounting import gnmax_epsilon
from fedkd.privacy.pate_analysis import (
    PateEpsilon,
    check_smooth_sensitivity_conditions,
    gnmax_local_sensitivity,
    gnmax_log_q,
    gnmax_log_q0,
    gnmax_rdp_data_dependent,
    gnmax_rdp_data_independent,
    gnss_rdp,
    gnss_release,
    pate_data_dependent_epsilon,
    smooth_sensitivity,
    threshold_local_sensitivity,
    threshold_log_pr_answered,
    threshold_rdp_data_dependent,
)

DELTA = 1e-5


def unanimous(n: int, teachers: int = 250, classes: int = 10) -> np.ndarray:
    votes = np.zeros((n, classes), dtype=np.int64)
    votes[np.arange(n), np.arange(n) % classes] = teachers
    return votes


def ties(n: int, teachers: int = 250, classes: int = 10) -> np.ndarray:
    votes = np.zeros((n, classes), dtype=np.int64)
    votes[:, 0] = teachers // 2
    votes[:, 1] = teachers - teachers // 2
    return votes


def random_votes(n: int, seed: int, teachers: int = 250, classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.multinomial(teachers, rng.dirichlet(np.full(classes, 0.3)))
                     for _ in range(n)])


# ------------------------------------------------------------------------------------------
# Proposition 7 and Theorem 6, by hand
# ------------------------------------------------------------------------------------------


def test_log_q_by_hand() -> None:
    # q = sum_{i != i*} Pr[N(0, 2 sigma^2) >= gap_i] = sum 1/2 erfc(gap_i / (2 sigma))
    assert gnmax_log_q([[100, 0]], 10.0)[0] == pytest.approx(math.log(0.5 * math.erfc(5.0)),
                                                              rel=1e-12)
    assert gnmax_log_q([[10, 4, 4]], 2.0)[0] == pytest.approx(math.log(math.erfc(1.5)), rel=1e-12)
    assert gnmax_log_q([[7, 0, 3]], 1.5)[0] == pytest.approx(
        math.log(0.5 * math.erfc(7 / 3.0) + 0.5 * math.erfc(4 / 3.0)), rel=1e-12)
    # a two-class tie: q = 1/2; three-way tie: the union bound (1) is capped at 1 - 1/C
    assert gnmax_log_q([[5, 5]], 3.0)[0] == pytest.approx(math.log(0.5), rel=1e-12)
    assert gnmax_log_q([[3, 3, 3]], 1.0)[0] == pytest.approx(math.log(2 / 3), rel=1e-12)
    # log space: q underflows a double here, log q does not
    deep = gnmax_log_q([[5000, 0, 0]], 1.0)[0]
    assert math.isfinite(deep) and deep < -1e6
    assert gnmax_log_q(np.zeros((0, 3), dtype=int), 1.0).shape == (0,)


def test_theorem6_one_query_by_hand() -> None:
    # votes [100, 0], sigma 10, order 10, Theorem 6 with Proposition 10's mu1, mu2
    sigma, lam = 10.0, 10.0
    q = 0.5 * math.erfc(5.0)
    mu2 = sigma * math.sqrt(math.log(1 / q))
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    assert lam <= mu1 and mu2 > 1 and q * math.exp(eps2) < 1
    assert q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1)) ** mu2
    a = (1 - q) / (1 - (q * math.exp(eps2)) ** ((mu2 - 1) / mu2))
    b = math.exp(eps1) / q ** (1 / (mu1 - 1))
    expected = math.log((1 - q) * a ** (lam - 1) + q * b ** (lam - 1)) / (lam - 1)

    log_q = gnmax_log_q([[100, 0]], sigma)
    got = gnmax_rdp_data_dependent(log_q, sigma, [lam])
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.2583e-9, rel=1e-3)  # vs lambda / sigma^2 = 0.1
    assert gnmax_rdp_data_independent(sigma, [lam])[0] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("sigma", "order", "neg_log_q0"),
    [
        # tensorflow/privacy research/pate_2018/core_test.py, "hand calculated -log(q0)s":
        # at log q = -neg_log_q0 the bound is already data-independent, below it is not.
        (1.5, 1.1, 2.8), (1.5, 2.5, 2.6), (1.5, 32, 427),
        (15, 1.1, 4.8), (15, 2.5, 4.0), (15, 32, 4.7), (15, 250, 275),
        (1500, 1.1, 9.6), (1500, 2.5, 8.8), (1500, 32, 6.0), (1500, 250, 4),
        (15000, 1.1, 12), (15000, 2.5, 11.2), (15000, 32, 8.6), (15000, 250, 6.4),
    ],
)
def test_log_q0_matches_the_authors_hand_values(sigma: float, order: float,
                                                neg_log_q0: float) -> None:
    log_q0 = gnmax_log_q0(sigma, order)
    assert neg_log_q0 <= -log_q0 <= neg_log_q0 + math.log(2)
    ind = order / sigma**2
    at = [gnmax_rdp_data_dependent(-neg_log_q0 - k * math.log(2), sigma, order)[0]
          for k in range(4)]
    assert at[0] == ind
    assert at[1] < ind and at[1] > at[2] > at[3]  # halving q lowers the cost
    for extra in (0.1, 0.2, 0.3, 0.4):  # data-independent range: constant
        log_q = math.log(min(math.exp(-neg_log_q0) + extra, 1.0))
        assert gnmax_rdp_data_dependent(log_q, sigma, order)[0] == ind


def test_rdp_per_query_and_sum() -> None:
    log_q = gnmax_log_q(random_votes(7, seed=1), 20.0)
    orders = [2.0, 8.0, 32.0]
    per = gnmax_rdp_data_dependent(log_q, 20.0, orders, per_query=True)
    assert per.shape == (7, 3)
    np.testing.assert_allclose(gnmax_rdp_data_dependent(log_q, 20.0, orders), per.sum(axis=0))
    assert gnmax_rdp_data_dependent(-np.inf, 20.0, orders).tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------
# Properties of the bound
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0, 150.0])
def test_data_dependent_never_exceeds_data_independent(sigma: float) -> None:
    orders = np.array([1.5, 2.0, 5.0, 10.0, 20.0, 50.0, 128.0])
    log_q = np.concatenate([gnmax_log_q(random_votes(40, seed=2), sigma),
                            np.linspace(-2000.0, 0.0, 101)])
    per = gnmax_rdp_data_dependent(log_q, sigma, orders, per_query=True)
    assert np.all(per >= 0.0)
    assert np.all(per <= orders / sigma**2)
    # and it is non-decreasing in q, as the smooth-sensitivity analysis needs
    grid = np.sort(log_q)
    cost = gnmax_rdp_data_dependent(grid, sigma, orders, per_query=True)
    assert np.all(np.diff(cost, axis=0) >= -1e-12)
    # the threshold step likewise never exceeds lambda / (2 sigma_1^2)
    log_pr = np.linspace(-300.0, 0.0, 301)
    thr = threshold_rdp_data_dependent(log_pr, sigma, orders, per_query=True)
    assert np.all(thr >= 0.0) and np.all(thr <= orders / (2 * sigma**2) + 1e-15)


def test_monotonic_in_sigma() -> None:
    votes = random_votes(20, seed=3)
    sigmas = np.geomspace(1.0, 400.0, 25)
    # Proposition 7: more noise, more chance of a wrong answer
    log_q = np.array([gnmax_log_q(votes, s) for s in sigmas])
    assert np.all(np.diff(log_q, axis=0) >= 0.0)
    # Theorem 6 at a fixed q: more noise, less cost; and the data-independent bound falls
    orders = [2.0, 10.0, 50.0]
    for lq in (-1.0, -5.0, -20.0, -100.0):
        cost = np.array([gnmax_rdp_data_dependent(lq, s, orders) for s in sigmas])
        assert np.all(np.diff(cost, axis=0) <= 1e-15)
    eps = [gnmax_epsilon(s, 100, DELTA) for s in (10.0, 20.0, 40.0, 80.0)]
    assert eps == sorted(eps, reverse=True)
    # ... but for fixed, unanimous votes the data-dependent cost grows with sigma (q grows
    # faster): the reason the paper tunes sigma.
    one = unanimous(1)
    costs = [gnmax_rdp_data_dependent(gnmax_log_q(one, s), s, [10.0])[0]
             for s in (10.0, 20.0, 40.0)]
    assert costs == sorted(costs)


# ------------------------------------------------------------------------------------------
# Smooth sensitivity: the authors' reference values
# ------------------------------------------------------------------------------------------


def test_gnmax_local_sensitivity_reference_values() -> None:
    # tensorflow/privacy research/pate_2018/smooth_sensitivity_test.py,
    # test_compute_local_sensitivity_bounds_gnmax (their arrays cover distances 0..K-1; ours
    # also has d = K).
    out1 = gnmax_local_sensitivity([10, 0, 0], 0.5, 1.5)  # "going right"
    answer1 = np.array([3.13503646e-17, 1.60178280e-08, 5.90681786e-03] + [5.99981308e+00] * 7)
    assert out1.shape == (11,)
    np.testing.assert_allclose(out1[:10], answer1, rtol=1e-7, atol=0)
    assert out1[10] == out1[9]

    out2 = gnmax_local_sensitivity([1000, 500, 300, 200, 0], 250.0, 10.0)  # "going left"
    answer2 = np.array([0.0] * 298 + [2.77693450548e-7, 2.10853979548e-6]
                       + [2.73113623988e-6] * 1700)
    np.testing.assert_allclose(out2[:2000], answer2, rtol=1e-7, atol=1e-20)
    assert np.all(np.diff(out2) >= 0.0)


@pytest.mark.parametrize(
    ("threshold", "answer"),
    [
        # tensorflow/privacy research/pate_2018/smooth_sensitivity_test.py,
        # test_compute_local_sensitivity_bounds_threshold: counts [20, 10, 0], 30 teachers,
        # sigma 2, order 10.
        (16, [0] * 3 + [1.48454129e-04, 1.47826870e-02, 3.94153241e-02, 6.45775697e-02,
                        9.01543247e-02, 1.16054002e-01, 1.42180452e-01, 1.42180452e-01,
                        1.48454129e-04, 1.47826870e-02, 3.94153241e-02, 6.45775697e-02,
                        9.01543266e-02, 1.16054000e-01, 1.42180452e-01, 1.68302106e-01,
                        1.93127860e-01] + [0] * 10),
        (2, [1.60212079e-01, 2.07021132e-01, 2.07021132e-01, 1.93127860e-01, 1.68302106e-01,
             1.42180452e-01, 1.16054002e-01, 9.01543247e-02, 6.45775697e-02, 3.94153241e-02,
             1.47826870e-02, 1.48454129e-04] + [0] * 18),
        (50, [1.35750725752e-19, 1.88990500499e-17, 2.05403154065e-15, 1.74298153642e-13,
              1.15489723995e-11, 5.97584949325e-10, 2.41486826748e-08, 7.62150641922e-07,
              1.87846248741e-05, 0.000360973025976, 0.000360973025976, 2.76377015215e-50,
              1.00904975276e-53, 2.87254164748e-57, 6.37583360761e-61, 1.10331620211e-64,
              1.48844393335e-68, 1.56535552444e-72, 1.28328011060e-76, 8.20047697109e-81]
             + [0] * 10),
    ],
)
def test_threshold_local_sensitivity_reference_values(threshold: float,
                                                      answer: list[float]) -> None:
    out = threshold_local_sensitivity([20, 10, 0], threshold, 2.0, 10.0)
    assert out.shape == (31,)
    # Distances 0..19 reach a top count of 20 +- d. The reference stops there; at d = 20 we also
    # count the (conservative) top count 0, and beyond it nothing is reachable.
    np.testing.assert_allclose(out[:20], answer[:20], rtol=1e-6, atol=1e-12)
    assert np.all(out[21:] == 0.0)


def test_conditions_c5_c6_reference_values() -> None:
    # smooth_sensitivity_test.py, test_check_conditions: (sigma, classes, order)
    assert check_smooth_sensitivity_conditions(20.0, 10, 25.0) == (True, False)
    assert check_smooth_sensitivity_conditions(30.0, 10, 25.0) == (True, True)


def test_smooth_sensitivity_and_gnss_by_hand() -> None:
    assert smooth_sensitivity([1.0, 2.0, 3.0], math.log(2.0)) == pytest.approx(1.0)
    assert smooth_sensitivity([1.0, 2.0, 3.0], 0.0) == 3.0
    assert smooth_sensitivity([0.5, 4.0], 0.1) == pytest.approx(4.0 * math.exp(-0.1))
    # Theorem 23: lambda e^{2 beta} / sigma^2
    #             + (beta lambda - log(1 - 2 lambda beta) / 2) / (lambda - 1)
    lam, beta, s = 10.0, 0.049, 5.0
    expected = (lam * math.exp(2 * beta) / s**2
                + (beta * lam - 0.5 * math.log(1 - 2 * lam * beta)) / (lam - 1))
    assert gnss_rdp(beta, s, lam) == pytest.approx(expected, rel=1e-12)
    assert gnss_rdp(0.0, s, lam) == pytest.approx(lam / s**2)
    with pytest.raises(ValueError, match="order < 1/\\(2 beta\\)"):
        gnss_rdp(0.05, s, 10.0)
    a = gnss_release(1.0, 0.2, 3.0, np.random.default_rng(7))
    z = np.random.default_rng(7).standard_normal()
    assert a == pytest.approx(1.0 + 0.2 * 3.0 * z, rel=1e-12)


# ------------------------------------------------------------------------------------------
# A whole run
# ------------------------------------------------------------------------------------------


def test_unanimous_votes_cost_far_less_than_data_independent() -> None:
    res = pate_data_dependent_epsilon(unanimous(100), 40.0, DELTA, np.random.default_rng(0))
    assert isinstance(res, PateEpsilon)
    assert res.epsilon_data_independent == pytest.approx(gnmax_epsilon(40.0, 100, DELTA),
                                                         rel=1e-12)
    assert res.epsilon_data_dependent < 0.25 * res.epsilon_data_independent
    assert res.smooth_sensitivity > 0.0 and res.sanitisation_cost > 0.0
    assert res.sanitisation_cost == pytest.approx(gnss_rdp(res.beta, res.sigma_ss, res.order))
    assert res.num_queries == res.num_answered == 100
    assert res.tuned_on_data
    # 250 unanimous teachers, sigma 40: even the sanitised figure beats the data-independent one
    assert res.epsilon_sanitised < res.epsilon_data_independent


def test_ties_give_exactly_the_data_independent_bound() -> None:
    res = pate_data_dependent_epsilon(ties(50), 40.0, DELTA, np.random.default_rng(0))
    assert res.epsilon_data_dependent == pytest.approx(res.epsilon_data_independent, rel=1e-12)
    assert res.epsilon_data_independent == pytest.approx(gnmax_epsilon(40.0, 50, DELTA), rel=1e-12)
    log_q = gnmax_log_q(ties(3), 40.0)
    orders = [1.5, 4.0, 20.0, 256.0]
    np.testing.assert_array_equal(gnmax_rdp_data_dependent(log_q, 40.0, orders),
                                  3 * gnmax_rdp_data_independent(40.0, orders))


def test_constant_cost_needs_no_sanitisation() -> None:
    # 3 teachers, sigma 40: no histogram gets below q0, the cost is lambda / sigma^2 whatever the
    # votes: its smooth sensitivity is 0 and it is published as is.
    votes = np.zeros((20, 10), dtype=np.int64)
    votes[:, 0] = 3
    assert np.all(gnmax_local_sensitivity(votes[0], 40.0, 20.0) == 0.0)
    res = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(0))
    assert res.smooth_sensitivity == 0.0 and res.sanitisation_cost == 0.0
    assert res.epsilon_sanitised == res.epsilon_data_dependent
    assert res.epsilon_sanitised == pytest.approx(gnmax_epsilon(40.0, 20, DELTA), rel=1e-12)


def test_confident_gnmax_charges() -> None:
    votes = np.concatenate([unanimous(30), random_votes(30, seed=4)])
    answered = np.arange(60) % 3 != 0
    kw = dict(threshold=200.0, sigma_threshold=150.0)
    res = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(0),
                                      answered=answered, **kw)
    assert res.num_queries == 60 and res.num_answered == 40
    # data-independent: GNMax on the 40 answers, the threshold on all 60 queries
    acct = dp_accounting.rdp.RdpAccountant()
    acct.compose(dp_accounting.GaussianDpEvent(40.0 / math.sqrt(2.0)), 40)
    acct.compose(dp_accounting.GaussianDpEvent(150.0), 60)
    assert res.epsilon_data_independent == pytest.approx(acct.get_epsilon(DELTA), rel=1e-12)
    assert res.epsilon_data_dependent <= res.epsilon_data_independent
    # all answered: the same as gnmax_epsilon with a threshold
    everything = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(0), **kw)
    assert everything.epsilon_data_independent == pytest.approx(
        gnmax_epsilon(40.0, 60, DELTA, sigma_threshold=150.0), rel=1e-12)
    # the smooth sensitivity at a fixed order: GNMax on the answered, the threshold on all
    fixed = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(0),
                                        answered=answered, order=15.0, **kw)
    total = sum(np.maximum.accumulate(gnmax_local_sensitivity(row, 40.0, 15.0))
                for row in votes[answered])
    total = total + sum(np.maximum.accumulate(threshold_local_sensitivity(row, 200.0, 150.0, 15.0))
                        for row in votes)
    assert fixed.smooth_sensitivity == pytest.approx(smooth_sensitivity(total, 0.49 / 15.0),
                                                     rel=1e-12)
    # the threshold step's own data-dependent cost
    log_pr = threshold_log_pr_answered(votes, 200.0, 150.0)
    assert log_pr.shape == (60,) and np.all(log_pr <= 0.0)
    assert log_pr[0] == pytest.approx(math.log(0.5 * math.erfc(-50.0 / (150.0 * math.sqrt(2)))))


def test_summed_sensitivity_uses_bounds_within_distance_d() -> None:
    # The threshold step's local sensitivity at distance exactly d rises and falls; the sum over
    # queries must add each query's maximum within distance d, not the values at exactly d.
    votes = np.array([[20, 10, 0], [12, 10, 8]])
    kw = dict(threshold=16.0, sigma_threshold=2.0, answered=np.array([False, False]))
    res = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(0), order=10.0,
                                      beta=0.01, sigma_ss=5.0, **kw)
    exact = [threshold_local_sensitivity(row, 16.0, 2.0, 10.0) for row in votes]
    within = sum(np.maximum.accumulate(ls) for ls in exact)
    assert smooth_sensitivity(sum(exact), 0.01) < smooth_sensitivity(within, 0.01)
    assert res.smooth_sensitivity == pytest.approx(smooth_sensitivity(within, 0.01), rel=1e-12)
    assert res.num_answered == 0


def test_release_is_reproducible_and_consistent() -> None:
    votes = random_votes(60, seed=5)
    runs = [pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(s))
            for s in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0].epsilon_sanitised != runs[2].epsilon_sanitised
    assert runs[0].epsilon_data_dependent == runs[2].epsilon_data_dependent
    # at a fixed order and sigma_ss: sanitised = raw + SS sigma_ss Z + GNSS cost (same order)
    order, s_ss = 12.0, 10.0
    res = pate_data_dependent_epsilon(votes, 40.0, DELTA, np.random.default_rng(3), order=order,
                                      orders=[order], sigma_ss=s_ss)
    assert not res.tuned_on_data and res.order == order and res.sigma_ss == s_ss
    assert res.beta == pytest.approx(0.49 / order)
    # SS of the sum: per-query local sensitivities as bounds within distance d, summed
    total = sum(np.maximum.accumulate(gnmax_local_sensitivity(row, 40.0, order)) for row in votes)
    assert res.smooth_sensitivity == pytest.approx(smooth_sensitivity(total, 0.49 / order),
                                                   rel=1e-12)
    z = np.random.default_rng(3).standard_normal()
    assert res.sanitisation_std == pytest.approx(res.smooth_sensitivity * s_ss)
    assert res.epsilon_sanitised - res.epsilon_data_dependent == pytest.approx(
        res.smooth_sensitivity * s_ss * z + gnss_rdp(0.49 / order, s_ss, order), rel=1e-9)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(0)
    votes = unanimous(4)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        gnmax_log_q(votes, 0.0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        gnmax_log_q(votes, float("nan"))
    with pytest.raises(ValueError, match="2-D"):
        gnmax_log_q([3, 1, 0], 1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        gnmax_log_q([[3], [4]], 1.0)
    with pytest.raises(ValueError, match="counts >= 0"):
        gnmax_log_q([[3, -1]], 1.0)
    with pytest.raises(ValueError, match="whole vote counts"):
        gnmax_log_q([[3.5, 1.0]], 1.0)
    with pytest.raises(ValueError, match="log_q must be <= 0"):
        gnmax_rdp_data_dependent(0.5, 1.0, [2.0])
    with pytest.raises(ValueError, match="orders"):
        gnmax_rdp_data_dependent(-1.0, 1.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="order"):
        gnmax_local_sensitivity([3, 1], 1.0, 0.5)
    with pytest.raises(ValueError, match="1-D"):
        gnmax_local_sensitivity([[3, 1]], 1.0, 2.0)
    with pytest.raises(ValueError, match="beta"):
        smooth_sensitivity([1.0], -0.1)
    with pytest.raises(ValueError, match="delta must lie in"):
        pate_data_dependent_epsilon(votes, 40.0, 0.0, rng)
    with pytest.raises(ValueError, match="together"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, rng, threshold=200.0)
    with pytest.raises(ValueError, match="answers every query"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, rng,
                                    answered=np.array([True, False, True, True]))
    with pytest.raises(ValueError, match="boolean array of shape"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, rng, answered=[1, 1, 1, 1],
                                    threshold=200.0, sigma_threshold=150.0)
    with pytest.raises(ValueError, match="sigma_threshold must be a finite number > 0"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, rng, threshold=200.0,
                                    sigma_threshold=0.0)
    with pytest.raises(ValueError, match="beta must be < 1/\\(2 order\\)"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, rng, order=10.0, beta=0.1)
    with pytest.raises(TypeError, match="Generator"):
        pate_data_dependent_epsilon(votes, 40.0, DELTA, 0)  # type: ignore[arg-type]


def test_failed_conditions_at_a_fixed_order_raise() -> None:
    # sigma 40, 10 classes: C6 fails at order 45 (it holds up to about 35)
    assert check_smooth_sensitivity_conditions(40.0, 10, 30.0) == (True, True)
    assert check_smooth_sensitivity_conditions(40.0, 10, 45.0)[1] is False
    with pytest.raises(ValueError, match="C5-C6"):
        pate_data_dependent_epsilon(unanimous(5), 40.0, DELTA, np.random.default_rng(0),
                                    order=45.0)
