"""Data-dependent privacy analysis of GNMax and Confident-GNMax, with smooth-sensitivity release.

Reference: N. Papernot, S. Song, I. Mironov, A. Raghunathan, K. Talwar, U. Erlingsson,
"Scalable Private Learning with PATE", ICLR 2018 (arXiv:1802.08908). Theorem, proposition,
lemma and algorithm numbers below are those of the arXiv version with its appendix (the numbering
the authors' reference implementation, tensorflow/privacy ``research/pate_2018``, also uses).

Pure numpy / scipy; :mod:`fedkd.aggregation.pate` implements the mechanism itself and
:func:`fedkd.privacy.accounting.gnmax_epsilon` the data-independent bound.

Privacy unit and neighbouring histograms
----------------------------------------
As in :mod:`fedkd.aggregation.pate`: the unit is one teacher's (client's) whole data, and two
vote histograms of a query are neighbours when one teacher's vote moved from one class to another
(one count -1, another +1; the number of votes of a query is fixed). ``d`` teachers changing
their data move the histogram of every query by at most ``d`` such steps.

What is computed
----------------
For a query with vote histogram ``n`` (``n*`` its top count, ``sigma`` the GNMax noise):

* **q bound (Proposition 7)**: ``Pr[GNMax(n) != argmax n] <= q(n) = sum_{i != i*}
  Pr[N(0, 2 sigma^2) >= n* - n_i]`` (a union bound), computed in log space
  (:func:`gnmax_log_q`). It is also capped at ``1 - 1/C``: the plurality class is at least as
  likely as any other, so it wins with probability ``>= 1/C``.
* **Data-dependent RDP (Theorem 6 with Proposition 10's orders)**: GNMax is
  ``(mu, mu / sigma^2)``-RDP for every ``mu > 1`` (Proposition 8; the histogram has L2
  sensitivity ``sqrt 2``). With ``mu2 = sigma sqrt(log 1/q)``, ``mu1 = mu2 + 1``,
  ``eps_i = mu_i / sigma^2``, and when ``lambda <= mu1``, ``mu2 > 1``, ``q e^{eps2} < 1`` and
  ``q <= e^{(mu2 - 1) eps2} / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1))^{mu2}`` (Lemma 9):

  ``D_lambda <= 1/(lambda-1) log((1-q) A^{lambda-1} + q B^{lambda-1})``,
  ``A = (1-q) / (1 - (q e^{eps2})^{(mu2-1)/mu2})``, ``B = e^{eps1} / q^{1/(mu1-1)}``.

  It is used below the point ``q0(sigma, lambda)`` where it meets the data-independent
  ``lambda / sigma^2`` (Proposition 8) and never exceeds it (:func:`gnmax_rdp_data_dependent`).
* **Threshold step of Confident-GNMax**: ``Pr[answered] = Pr[n* + N(0, sigma_1^2) >= T]``; the
  step is a Gaussian mechanism of sensitivity 1, i.e. ``(mu, mu / (2 sigma_1^2))``-RDP, and
  Theorem 6 applies with noise ``sqrt(2) sigma_1`` and ``q = min(Pr[answered],
  Pr[not answered])`` (:func:`threshold_rdp_data_dependent`).
* **Smooth sensitivity (appendix, Section B)**: the data-dependent cost is a function of the
  sensitive data and is not safe to publish. Its local sensitivity at distance ``d``
  (:func:`gnmax_local_sensitivity`, Algorithm 3 with the walks of Algorithms 4 and 5;
  :func:`threshold_local_sensitivity`), the smooth sensitivity
  ``SS_beta = max_d e^{-beta d} LS_d`` (:func:`smooth_sensitivity`), and the GNSS release of the
  cost with Gaussian noise of standard deviation ``sigma_ss * SS_beta``
  (:func:`gnss_release`), whose own RDP is Theorem 23 (:func:`gnss_rdp`). The GNMax local
  sensitivity bound relies on conditions C5 and C6 (Section B.4.2), checked numerically by
  :func:`check_smooth_sensitivity_conditions`.

:func:`pate_data_dependent_epsilon` puts it together for a whole run.

RDP to (epsilon, delta)
-----------------------
Every epsilon here converts RDP with ``dp_accounting``'s ``compute_epsilon`` (the conversion the
server ledger uses, slightly tighter than the paper's ``rdp + log(1/delta) / (lambda - 1)``), over
``dp_accounting``'s default RDP orders unless told otherwise, so that the data-independent
figure equals :func:`fedkd.privacy.accounting.gnmax_epsilon` for the same charged queries.

Limits
------
* By default the GNSS order and noise multiplier are chosen by looking at the votes, as in the
  paper's analysis; that choice is not itself accounted for. Fix ``order`` and ``sigma_ss`` in
  advance for an end-to-end guarantee (:attr:`PateEpsilon.tuned_on_data`).
* The neighbouring relation keeps the number of votes of a query fixed (a teacher changes its
  vote); a teacher whose vote appears or disappears (fedkd's validity mask) is not modelled.
* Conditions C5-C6 are checked on a grid, not proved.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedkd.privacy.accounting import _check_delta
from fedkd.validate import finite_positive

__all__ = [
    "PateEpsilon",
    "check_smooth_sensitivity_conditions",
    "gnmax_local_sensitivity",
    "gnmax_log_q",
    "gnmax_log_q0",
    "gnmax_rdp_data_dependent",
    "gnmax_rdp_data_independent",
    "gnss_rdp",
    "gnss_release",
    "pate_data_dependent_epsilon",
    "smooth_sensitivity",
    "threshold_local_sensitivity",
    "threshold_log_pr_answered",
    "threshold_rdp_data_dependent",
]

FloatArray = NDArray[np.float64]

_LOG2 = math.log(2.0)
_CANDIDATE_ORDERS = 6  # orders whose GNSS release is compared when none is fixed
_SQRT2 = math.sqrt(2.0)

# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _log_probabilities(name: str, values: ArrayLike) -> np.ndarray:
    """``values`` as a 1-D float64 array of log-probabilities (each ``<= 0``, none NaN)."""
    out = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if out.ndim != 1:
        raise ValueError(f"{name} must be a number or 1-D [queries], got shape {out.shape}")
    if np.any(np.isnan(out)) or np.any(out > 0.0):
        raise ValueError(f"{name} must be <= 0 (the log of a probability), got a value > 0 or NaN")
    return out


def _check_order(order: object) -> float:
    if isinstance(order, bool) or not isinstance(order, Real):
        raise ValueError(f"order must be a real number, got {order!r}")
    out = float(order)
    if not (math.isfinite(out) and out > 1.0):
        raise ValueError(f"order (the Renyi order lambda) must be finite and > 1, got {order!r}")
    return out


def _check_orders(orders: ArrayLike) -> FloatArray:
    arr = np.asarray(orders, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"orders must be a number or a 1-D sequence, got shape {arr.shape}")
    arr = np.atleast_1d(arr)
    if arr.size == 0:
        raise ValueError("orders must not be empty")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 1.0):
        raise ValueError(f"orders (Renyi orders lambda) must all be finite and > 1, got {arr}")
    return arr


def _check_votes(votes: ArrayLike, name: str = "votes") -> NDArray[np.int64]:
    """Vote histograms ``[N, C]`` of non-negative integer counts, ``C >= 2``."""
    arr = np.asarray(votes)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [queries, classes], got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got {arr.shape[1]}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold vote counts (integers), got dtype {arr.dtype}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if arr.size and np.any(arr < 0):
        raise ValueError(f"{name} must be counts >= 0, got a minimum of {arr.min()}")
    if arr.size and np.issubdtype(arr.dtype, np.floating) and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be whole vote counts, got non-integer values")
    return arr.astype(np.int64)


def _check_row(votes: ArrayLike) -> NDArray[np.int64]:
    arr = np.asarray(votes)
    if arr.ndim != 1:
        raise ValueError(f"votes must be 1-D [classes] (one query), got shape {arr.shape}")
    return _check_votes(arr[None, :])[0]


# --------------------------------------------------------------------------------------------
# Log-space helpers
# --------------------------------------------------------------------------------------------


def _log1mexp(x: FloatArray) -> FloatArray:
    """``log(1 - e^x)`` for ``x <= 0``, stably (``-inf`` at 0)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < -_LOG2, np.log1p(-np.exp(x)), np.log(-np.expm1(x)))


def _rdp_to_epsilon(orders: FloatArray, rdp: FloatArray, delta: float) -> tuple[float, float]:
    """``(epsilon, order)``: dp_accounting's RDP conversion, the one the server ledger uses."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    eps, order = compute_epsilon(
        [float(a) for a in orders], [max(0.0, float(r)) for r in rdp], delta
    )
    return float(eps), float(order)


def _default_orders() -> FloatArray:
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    return np.asarray(DEFAULT_RDP_ORDERS, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Proposition 7: the bound on q for GNMax
# --------------------------------------------------------------------------------------------


def gnmax_log_q(votes: ArrayLike, sigma: float) -> FloatArray:
    """``log q``: log of Proposition 7's bound on ``Pr[GNMax answer != plurality class]``.

    Proposition 7 (union bound): ``q(n) = sum_{i != i*} Pr[N(0, 2 sigma^2) >= n_{i*} - n_i]
    = sum_{i != i*} Phi(-(n_{i*} - n_i) / (sqrt(2) sigma))``, summed in log space with
    ``scipy.special.log_ndtr`` so that tiny ``q`` (unanimous votes, ``log q`` of -1000 and
    below) stay exact. The result is capped at ``log(1 - 1/C)``: the plurality class is at least
    as likely to win as any other class, so ``q <= 1 - 1/C`` (in particular ``q <= 1``).

    Parameters
    ----------
    votes
        Vote counts ``[N, C]`` (non-negative integers, ``C >= 2``), one row per query.
    sigma
        Standard deviation ``> 0`` of GNMax's Gaussian noise on each count.

    Returns
    -------
    np.ndarray
        ``[N]`` float64, ``log q`` of each query (``log 1/2`` for a two-class tie).

    Raises
    ------
    ValueError
        On malformed votes or a ``sigma`` that is not finite and ``> 0``.
    """
    counts = _check_votes(votes)
    sigma = finite_positive("sigma", sigma)
    return _log_q_rows(counts, sigma)


# --------------------------------------------------------------------------------------------
# Theorem 6 and Proposition 8: the RDP of GNMax
# --------------------------------------------------------------------------------------------


def gnmax_rdp_data_independent(sigma: float, orders: ArrayLike) -> FloatArray:
    """Data-independent RDP ``lambda / sigma^2`` of one GNMax answer (Proposition 8).

    The vote histogram has L2 sensitivity ``sqrt(2)``, so GNMax is a Gaussian mechanism with
    noise multiplier ``sigma / sqrt(2)``: ``lambda / (2 (sigma / sqrt 2)^2) = lambda / sigma^2``.
    Returns ``[len(orders)]``.
    """
    sigma = finite_positive("sigma", sigma)
    return _check_orders(orders) / sigma**2


def _theorem6(
    log_q: FloatArray, sigma: float, orders: FloatArray
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Theorem 6's bound and where its conditions hold, broadcasting ``log_q`` with ``orders``.

    For a mechanism that is ``(mu, mu / sigma^2)``-RDP for every ``mu > 1``, with
    ``mu2 = sigma sqrt(-log q)``, ``mu1 = mu2 + 1`` (Proposition 10). Entries where a condition
    fails hold ``inf``; ``log q = -inf`` (an outcome that is certain) gives 0.
    """
    lq, lam = np.broadcast_arrays(np.asarray(log_q, dtype=np.float64), orders)
    var = sigma**2
    out = np.full(lq.shape, np.inf)
    certain = np.isneginf(lq)
    out[certain] = 0.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mu2 = sigma * np.sqrt(np.where(lq < 0.0, -lq, 0.0))
        mu1 = mu2 + 1.0
        eps1, eps2 = mu1 / var, mu2 / var
        # Lemma 9: log q <= (mu2 - 1) eps2 - mu2 log(mu1 / (mu1 - 1) * mu2 / (mu2 - 1))
        lemma9 = (mu2 - 1.0) * eps2 - mu2 * (
            np.log1p(1.0 / (mu1 - 1.0)) + np.log1p(1.0 / (mu2 - 1.0))
        )
        valid = (
            ~certain
            & (lq < 0.0)
            & (mu2 > 1.0)
            & (lam <= mu1)
            & (lq + eps2 < 0.0)  # q e^{eps2} < 1: A is positive
            & (lq <= lemma9)  # Lemma 9: the bound is increasing in q
        )
    if np.any(valid):
        q, a, m1, m2, e1, e2 = (x[valid] for x in (lq, lam, mu1, mu2, eps1, eps2))
        log1q = _log1mexp(q)
        log_a = log1q - _log1mexp((q + e2) * (1.0 - 1.0 / m2))
        log_b = e1 - q / (m1 - 1.0)
        out[valid] = np.logaddexp(log1q + (a - 1.0) * log_a, q + (a - 1.0) * log_b) / (a - 1.0)
    return out, valid | certain


@functools.lru_cache(maxsize=4096)
def _log_q0(sigma: float, order: float) -> float:
    from scipy.optimize import brentq

    ind = order / sigma**2

    def bound(log_q: float) -> tuple[float, bool]:
        value, ok = _theorem6(np.array(log_q), sigma, np.array(order))
        return float(value), bool(ok)

    def excess(log_q: float) -> float:
        value, ok = bound(log_q)
        return value - ind if ok else math.inf

    # A starting point where mu2 > 1 and mu1 >= lambda (the authors' choice), moved down until
    # Lemma 9's condition holds as well.
    log_ub = min(-((1.0 + 1.0 / sigma) ** 2), -(((order - 0.99) / sigma) ** 2), -1.0 / sigma**2)
    while not bound(log_ub)[1]:
        log_ub *= 2.0
        if log_ub < -1e300:  # pragma: no cover - Theorem 6 always applies for small enough q
            raise RuntimeError(f"no q satisfies Theorem 6 for sigma={sigma}, order={order}")
    if excess(log_ub) < 0.0:
        return log_ub
    log_lb = 2.0 * log_ub
    while excess(log_lb) >= 0.0:
        log_lb *= 1.5
        if log_lb < -1e300:  # pragma: no cover - the bound tends to 0 with q
            raise RuntimeError(f"cannot bracket q0 for sigma={sigma}, order={order}")
    return float(brentq(excess, log_lb, log_ub, xtol=1e-12, rtol=1e-14))


def gnmax_log_q0(sigma: float, order: float) -> float:
    """``log q0``: below it Theorem 6 beats the data-independent bound of GNMax.

    ``q0`` is where Theorem 6's bound (with Proposition 10's ``mu1, mu2``) meets
    ``lambda / sigma^2``, found by root finding in ``log q`` from a starting point where all of
    Theorem 6's conditions hold (Appendix B, "the point where the data-dependent bound
    overtakes the data-independent one"); ``q0`` is that starting point itself when the bound
    already wins there. Cached per ``(sigma, order)``.

    Raises
    ------
    ValueError
        If ``sigma`` is not finite and ``> 0`` or ``order`` not finite and ``> 1``.
    """
    return _log_q0(finite_positive("sigma", sigma), _check_order(order))


def _gnmax_rdp(log_q: FloatArray, sigma: float, orders: FloatArray) -> FloatArray:
    """Broadcast ``log_q [..., 1]`` with ``orders [L]`` (validated inputs)."""
    lq, lam = np.broadcast_arrays(np.asarray(log_q, dtype=np.float64), orders)
    ind = lam / sigma**2
    bound, valid = _theorem6(lq, sigma, lam)
    uniq, inverse = np.unique(lam, return_inverse=True)
    log_q0 = np.array([_log_q0(sigma, float(a)) for a in uniq])[inverse].reshape(lam.shape)
    use = valid & (lq < log_q0)
    return np.where(use, np.minimum(bound, ind), ind)


def gnmax_rdp_data_dependent(
    log_q: ArrayLike, sigma: float, orders: ArrayLike, *, per_query: bool = False
) -> FloatArray:
    """Data-dependent RDP of GNMax answers given their ``log q`` (Theorem 6, Proposition 10).

    For each query and order ``lambda``: with ``mu2 = sigma sqrt(log 1/q)``, ``mu1 = mu2 + 1``
    and ``eps_i = mu_i / sigma^2``, Theorem 6 gives

    ``1/(lambda-1) log((1-q) A^{lambda-1} + q B^{lambda-1})``, with
    ``A = (1-q) / (1 - (q e^{eps2})^{(mu2-1)/mu2})`` and ``B = e^{eps1} / q^{1/(mu1-1)}``,

    valid when ``lambda <= mu1``, ``mu2 > 1``, ``q e^{eps2} < 1`` and Lemma 9's
    ``q <= e^{(mu2-1) eps2} / (mu1/(mu1-1) * mu2/(mu2-1))^{mu2}``. It is used for
    ``q < q0(sigma, lambda)`` (:func:`gnmax_log_q0`) and the data-independent ``lambda / sigma^2``
    (Proposition 8) elsewhere; the result never exceeds ``lambda / sigma^2`` and is 0 for
    ``q = 0``. This is the function whose smooth sensitivity :func:`gnmax_local_sensitivity`
    bounds.

    Parameters
    ----------
    log_q
        ``log q`` of each query (:func:`gnmax_log_q`), a number or a 1-D array, each ``<= 0``.
    sigma
        GNMax's noise standard deviation, ``> 0``.
    orders
        Renyi orders ``lambda > 1`` (a number or a 1-D sequence).
    per_query
        Return ``[N, len(orders)]`` (one row per query) instead of the sum over queries.

    Returns
    -------
    np.ndarray
        ``[len(orders)]``: the RDP of all the queries together (sum over queries), or
        ``[N, len(orders)]`` with ``per_query``.

    Raises
    ------
    ValueError
        If ``log_q`` is not ``<= 0`` (NaN included), ``sigma`` not ``> 0`` or an order not
        ``> 1``.
    """
    sigma = finite_positive("sigma", sigma)
    lam = _check_orders(orders)
    lq = _log_probabilities("log_q", log_q)
    rdp = _gnmax_rdp(lq[:, None], sigma, lam[None, :])
    return rdp if per_query else rdp.sum(axis=0)


# --------------------------------------------------------------------------------------------
# The threshold step of Confident-GNMax
# --------------------------------------------------------------------------------------------


def threshold_log_pr_answered(
    votes: ArrayLike, threshold: float, sigma_threshold: float
) -> FloatArray:
    """``log Pr[max_j n_j + N(0, sigma_threshold^2) >= threshold]`` of each query ``[N]``."""
    from scipy.special import log_ndtr

    counts = _check_votes(votes)
    sigma_threshold = finite_positive("sigma_threshold", sigma_threshold)
    threshold = _check_threshold(threshold)
    top = counts.max(axis=1).astype(np.float64) if counts.shape[0] else np.zeros(0)
    return np.asarray(log_ndtr((top - threshold) / sigma_threshold), dtype=np.float64)


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise ValueError(f"threshold must be a real number, got {threshold!r}")
    out = float(threshold)
    if not math.isfinite(out):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return out


def _threshold_rdp(log_pr: FloatArray, sigma_threshold: float, orders: FloatArray) -> FloatArray:
    """Broadcast ``log_pr [..., 1]`` with ``orders [L]`` (validated inputs)."""
    lp, lam = np.broadcast_arrays(np.asarray(log_pr, dtype=np.float64), orders)
    log_q = np.minimum(lp, _log1mexp(lp))  # the less likely of answered / not answered
    noise = _SQRT2 * sigma_threshold  # sensitivity 1 vs GNMax's sqrt 2
    ind = lam / noise**2
    bound, valid = _theorem6(log_q, noise, lam)
    return np.where(valid, np.minimum(bound, ind), ind)


def threshold_rdp_data_dependent(
    log_pr_answered: ArrayLike,
    sigma_threshold: float,
    orders: ArrayLike,
    *,
    per_query: bool = False,
) -> FloatArray:
    """Data-dependent RDP of Confident-GNMax's threshold step (Theorem 6, Section 4.2).

    The step releases one bit, ``max_j n_j + N(0, sigma_1^2) >= T``: a Gaussian mechanism with
    sensitivity 1, i.e. ``(mu, mu / (2 sigma_1^2))``-RDP for every ``mu`` (data-independent
    bound, charged on every query). Theorem 6 applies to it as to GNMax with noise
    ``sqrt(2) sigma_1`` and ``q = min(Pr[answered], 1 - Pr[answered])`` (the likely outcome may be
    either); wherever its conditions fail the data-independent ``lambda / (2 sigma_1^2)`` is
    used, and the result never exceeds it.

    Parameters
    ----------
    log_pr_answered
        ``log Pr[answered]`` of each query (:func:`threshold_log_pr_answered`), ``<= 0``.
    sigma_threshold
        The threshold noise ``sigma_1 > 0``.
    orders
        Renyi orders ``> 1``.
    per_query
        Return ``[N, len(orders)]`` instead of the sum over queries.

    Raises
    ------
    ValueError
        On ``log_pr_answered > 0`` or NaN, ``sigma_threshold`` not ``> 0``, an order not ``> 1``.
    """
    sigma_threshold = finite_positive("sigma_threshold", sigma_threshold)
    lam = _check_orders(orders)
    lp = _log_probabilities("log_pr_answered", log_pr_answered)
    rdp = _threshold_rdp(lp[:, None], sigma_threshold, lam[None, :])
    return rdp if per_query else rdp.sum(axis=0)


# --------------------------------------------------------------------------------------------
# Local and smooth sensitivity (Appendix B)
# --------------------------------------------------------------------------------------------


def _log_q_shift(log_q: FloatArray, sigma: float, num_classes: int, shift: float) -> FloatArray:
    """The q bound after every gap moves by ``2 * shift`` (``shift = +1``: bu, ``-1``: bl).

    Writing ``q / (C-1) = Phi(w)`` (all ``C - 1`` union-bound terms equal, the extreme case), one
    teacher moves each gap by at most 2, i.e. ``w`` by ``sqrt(2) / sigma``:
    ``bu(q) = min(1, (C-1) Phi(w + sqrt2/sigma))``, ``bl(q) = (C-1) Phi(w - sqrt2/sigma)``; the
    paper's ``(C-1)/2 erfc(erfcinv(2q/(C-1)) -+ 1/sigma)`` in log space.
    """
    from scipy.special import log_ndtr, ndtri_exp

    log_m = math.log(num_classes - 1)
    lq = np.asarray(log_q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = ndtri_exp(np.minimum(lq - log_m, 0.0))
        out = log_m + log_ndtr(w + shift * _SQRT2 / sigma)
    return np.where(np.isneginf(lq), -np.inf, np.minimum(out, 0.0))


def _gnmax_beta(log_q: FloatArray, sigma: float, order: float, log_q0: float) -> FloatArray:
    """:func:`gnmax_rdp_data_dependent` at one order, elementwise (validated inputs)."""
    lq = np.asarray(log_q, dtype=np.float64)
    ind = order / sigma**2
    bound, valid = _theorem6(lq, sigma, np.array(order))
    return np.where(valid & (lq < log_q0), np.minimum(bound, ind), ind)


def _gnmax_ls_of_log_q(
    log_q: FloatArray, sigma: float, num_classes: int, order: float
) -> FloatArray:
    """Algorithm 3 (Proposition 13): a bound on GNMax's local sensitivity given ``log q``.

    ``LS(q) = max(beta(bu(q)) - beta(q), beta(q) - beta(bl(q)))``, where on the plateau
    ``q1 <= q <= q0`` (``q1 = bl(q0)``) ``q`` is replaced by ``q1``, whose value bounds all of
    them under conditions C5 and C6.
    """
    log_q0, log_q1 = _gnmax_q0_q1(sigma, num_classes, order)
    lq = np.asarray(log_q, dtype=np.float64)
    lq = np.where((log_q1 <= lq) & (lq <= log_q0), log_q1, lq)
    b = _gnmax_beta(lq, sigma, order, log_q0)
    up = _gnmax_beta(_log_q_shift(lq, sigma, num_classes, +1.0), sigma, order, log_q0) - b
    down = b - _gnmax_beta(_log_q_shift(lq, sigma, num_classes, -1.0), sigma, order, log_q0)
    return np.maximum(np.maximum(up, down), 0.0)


@functools.lru_cache(maxsize=4096)
def _gnmax_q0_q1(sigma: float, num_classes: int, order: float) -> tuple[float, float]:
    """``(log q0, log q1)`` with ``q1 = bl(q0)``."""
    log_q0 = _log_q0(sigma, order)
    return log_q0, float(_log_q_shift(np.array(log_q0), sigma, num_classes, -1.0))


@functools.lru_cache(maxsize=4096)
def _gnmax_plateau(sigma: float, num_classes: int, order: float) -> float:
    """Algorithm 3's value on the plateau ``[q1, q0]``, the largest it takes."""
    log_q1 = _gnmax_q0_q1(sigma, num_classes, order)[1]
    return float(_gnmax_ls_of_log_q(np.array(log_q1), sigma, num_classes, order))


@functools.lru_cache(maxsize=4096)
def _log_q_unanimous(sigma: float, num_classes: int, num_teachers: int) -> float:
    """The smallest ``log q`` of any histogram with ``num_teachers`` votes: all agree."""
    row = np.zeros((1, num_classes), dtype=np.int64)
    row[0, 0] = num_teachers
    return float(_log_q_rows(row, sigma)[0])


def _log_q_rows(rows: NDArray[np.int64], sigma: float) -> FloatArray:
    """:func:`gnmax_log_q` of rows ``[N, C]``, without validation."""
    from scipy.special import log_ndtr

    n, c = rows.shape
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    idx = np.arange(n)
    top = np.argmax(rows, axis=1)
    gaps = (rows[idx, top][:, None] - rows).astype(np.float64)  # >= 0
    terms = log_ndtr(-gaps / (_SQRT2 * sigma))
    terms[idx, top] = -np.inf  # the plurality class itself is not an error
    # log-sum-exp over the other classes; the largest term is finite (a gap is finite).
    peak = np.max(terms, axis=1, keepdims=True)
    log_q = peak[:, 0] + np.log(np.sum(np.exp(terms - peak), axis=1))
    return np.minimum(log_q, math.log1p(-1.0 / c))


def _walk(row: NDArray[np.int64], left: bool) -> list[list[int]]:
    """The histograms (sorted, non-increasing) of Algorithm 4 (``left``) or 5, from ``row``.

    Algorithm 4 ("going left") lowers q as fast as possible, one teacher per step, by moving a
    vote from the runner-up to the top class, until all votes agree. Algorithm 5 ("going
    right") raises it by moving a vote from the top class to the runner-up, until they tie.
    """
    v = sorted((int(x) for x in row), reverse=True)
    c = len(v)
    path = [list(v)]
    if left:
        while v[1] > 0:
            v[0] += 1
            v[1] -= 1
            i = 1
            while i < c - 1 and v[i] < v[i + 1]:  # keep the tail sorted
                v[i], v[i + 1] = v[i + 1], v[i]
                i += 1
            path.append(list(v))
    else:
        while v[0] - v[1] >= 2:
            v[0] -= 1
            v[1] += 1
            path.append(list(v))
    return path


def _gnmax_ls_rows(rows: NDArray[np.int64], sigma: float, order: float) -> list[FloatArray]:
    """:func:`gnmax_local_sensitivity` of each row (validated inputs), batched."""
    n, c = rows.shape
    log_q0, log_q1 = _gnmax_q0_q1(sigma, c, order)
    plateau = _gnmax_plateau(sigma, c, order)
    log_q = _log_q_rows(rows, sigma)
    outs: list[FloatArray] = []
    paths: list[list[int]] = []
    spans: list[tuple[int, int, int, bool]] = []  # (row, start, length, left) into paths
    for i in range(n):
        k = int(rows[i].sum())
        if _log_q_unanimous(sigma, c, k) >= log_q0:
            # No histogram with K votes gets below q0: the cost is lambda/sigma^2 whatever the
            # votes, and its local sensitivity is 0 at every distance.
            outs.append(np.zeros(k + 1))
            continue
        outs.append(np.full(k + 1, plateau))
        if log_q1 <= log_q[i] <= log_q0:
            continue  # on the plateau already
        left = bool(log_q[i] > log_q0)
        path = _walk(rows[i], left)
        spans.append((i, len(paths), len(path), left))
        paths.extend(path)
    if not spans:
        return outs
    path_log_q = _log_q_rows(np.asarray(paths, dtype=np.int64), sigma)
    ends: list[int] = []
    for i, start, length, left in spans:
        seg = path_log_q[start : start + length]
        # Walk until the plateau [q1, q0] is reached (its first point included); the plateau
        # value bounds every later distance.
        stop = np.flatnonzero(seg <= log_q0 if left else seg >= log_q1)
        ends.append(min(int(stop[0]) + 1 if stop.size else length, outs[i].size))
    keep = np.concatenate(
        [path_log_q[start : start + end] for (_, start, _, _), end in zip(spans, ends)]
    )
    ls = _gnmax_ls_of_log_q(keep, sigma, c, order)
    pos = 0
    for (i, _, _, _), end in zip(spans, ends):
        outs[i][:end] = ls[pos : pos + end]
        pos += end
    return outs


def gnmax_local_sensitivity(votes: ArrayLike, sigma: float, order: float) -> FloatArray:
    """Local sensitivity of one GNMax query's data-dependent RDP at distances ``0..K``.

    Entry ``d`` bounds ``|beta(n') - beta(n'')|`` over every histogram ``n'`` that ``d`` teachers
    can reach from ``votes`` and every neighbour ``n''`` of it, where ``beta`` is
    :func:`gnmax_rdp_data_dependent` at ``order``. Appendix B: Algorithm 3 bounds the local
    sensitivity given ``q`` (Proposition 13) with the largest/smallest ``q`` of a neighbour,
    ``bu(q)`` and ``bl(q)``; Algorithms 4 and 5 walk from ``votes`` towards the plateau
    ``[q1, q0]`` where that bound peaks (one teacher per step), and the plateau value bounds the
    remaining distances. Valid when conditions C5 and C6 hold
    (:func:`check_smooth_sensitivity_conditions`). If no histogram with these ``K`` votes has
    ``q < q0`` the cost is constant and every entry is 0.

    Parameters
    ----------
    votes
        One query's vote counts ``[C]`` (``K = sum(votes)`` teachers voted).
    sigma
        GNMax's noise standard deviation, ``> 0``.
    order
        The Renyi order ``lambda > 1``.

    Returns
    -------
    np.ndarray
        ``[K + 1]`` float64, the bound at distances ``d = 0..K`` (non-decreasing in ``d`` when
        C5 and C6 hold).
    """
    row = _check_row(votes)
    sigma = finite_positive("sigma", sigma)
    return _gnmax_ls_rows(row[None, :], sigma, _check_order(order))[0]


@functools.lru_cache(maxsize=256)
def _threshold_rdp_by_max(
    num_teachers: int, threshold: float, sigma_threshold: float, order: float
) -> FloatArray:
    """The threshold step's data-dependent RDP for a top count ``v = 0..K``."""
    from scipy.special import log_ndtr

    v = np.arange(num_teachers + 1, dtype=np.float64)
    log_pr = log_ndtr((v - threshold) / sigma_threshold)
    out = _threshold_rdp(log_pr, sigma_threshold, np.array(order))
    out.setflags(write=False)
    return out


def _threshold_ls_row(
    row: NDArray[np.int64], threshold: float, sigma_threshold: float, order: float
) -> FloatArray:
    k = int(row.sum())
    top = int(row.max())
    beta = _threshold_rdp_by_max(k, threshold, sigma_threshold, order)
    step = np.abs(np.diff(beta))  # |beta(v+1) - beta(v)|, v = 0..K-1
    ls_at = np.zeros(k + 1)  # LS of a histogram whose top count is v: one teacher moves v by 1
    if k > 0:
        ls_at[:-1] = step
        ls_at[1:] = np.maximum(ls_at[1:], step)
    d = np.arange(k + 1)
    up = np.where(top + d <= k, ls_at[np.minimum(top + d, k)], 0.0)
    down = np.where(top - d >= 0, ls_at[np.maximum(top - d, 0)], 0.0)
    return np.maximum(up, down)


def threshold_local_sensitivity(
    votes: ArrayLike, threshold: float, sigma_threshold: float, order: float
) -> FloatArray:
    """Local sensitivity of one query's threshold-step RDP at distances ``0..K``.

    The cost depends on the histogram only through its top count ``v``, which ``d`` teachers
    move by at most ``d`` (kept in ``[0, K]``); one more teacher moves it by 1. Entry ``d`` is
    ``max`` over ``v' in {v - d, v + d}`` of ``max |beta(v' +- 1) - beta(v')|``, with ``beta``
    :func:`threshold_rdp_data_dependent` as a function of ``v`` (Appendix B, the threshold
    mechanism), as in the authors' code. These "ring" values need not increase with ``d``;
    their running maximum bounds every histogram within distance ``d`` (what a sum over queries
    needs), and either gives the same :func:`smooth_sensitivity`.

    Returns
    -------
    np.ndarray
        ``[K + 1]`` float64, ``K = sum(votes)``.
    """
    row = _check_row(votes)
    return _threshold_ls_row(
        row,
        _check_threshold(threshold),
        finite_positive("sigma_threshold", sigma_threshold),
        _check_order(order),
    )


def smooth_sensitivity(local_sensitivity: ArrayLike, beta: float) -> float:
    """``SS_beta = max_d e^{-beta d} LS_d``: the beta-smooth sensitivity (Nissim et al. 2007).

    ``local_sensitivity[d]`` bounds the local sensitivity of every dataset at distance ``d`` (or
    ``<= d``) from the actual one, as :func:`gnmax_local_sensitivity` returns; a sum of such
    arrays over queries (made non-decreasing first) bounds that of the summed cost.

    Raises
    ------
    ValueError
        On a negative/NaN entry, an array that is not 1-D or empty, or ``beta`` not ``>= 0``.
    """
    ls = np.asarray(local_sensitivity, dtype=np.float64)
    if ls.ndim != 1 or ls.size == 0:
        raise ValueError(f"local_sensitivity must be a non-empty 1-D array, got shape {ls.shape}")
    if np.any(np.isnan(ls)) or np.any(ls < 0.0):
        raise ValueError("local_sensitivity must hold numbers >= 0")
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0.0 <= float(beta) < math.inf:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(np.max(ls * np.exp(-float(beta) * np.arange(ls.size))))


def gnss_rdp(beta: float, sigma_ss: float, order: float) -> float:
    """RDP at ``order`` of the GNSS release (Theorem 23).

    GNSS releases ``f(D) + SS_beta(D) * N(0, sigma_ss^2)``; for ``1 < lambda < 1 / (2 beta)`` it
    is ``lambda``-RDP with

    ``lambda e^{2 beta} / sigma_ss^2 + (beta lambda - log(1 - 2 lambda beta) / 2) / (lambda - 1)``.

    Raises
    ------
    ValueError
        If ``beta`` is not ``>= 0``, ``sigma_ss`` not ``> 0``, or ``order`` not in
        ``(1, 1 / (2 beta))``.
    """
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0.0 <= float(beta) < math.inf:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    beta = float(beta)
    sigma_ss = finite_positive("sigma_ss", sigma_ss)
    order = _check_order(order)
    if beta > 0.0 and not order < 1.0 / (2.0 * beta):
        raise ValueError(
            f"GNSS needs order < 1/(2 beta) = {1.0 / (2.0 * beta):g}, got order {order:g} "
            f"with beta {beta:g} (use beta < 1/(2 order), e.g. 0.49/order)"
        )
    return (
        order * math.exp(2.0 * beta) / sigma_ss**2
        + (beta * order - 0.5 * math.log1p(-2.0 * order * beta)) / (order - 1.0)
    )


def gnss_release(
    value: float, smooth_sens: float, sigma_ss: float, rng: np.random.Generator
) -> float:
    """``value + smooth_sens * sigma_ss * Z``, ``Z ~ N(0, 1)`` drawn from ``rng`` (GNSS).

    Its cost is :func:`gnss_rdp` when ``smooth_sens`` is a ``beta``-smooth upper bound on the
    local sensitivity of ``value`` and ``beta``, ``sigma_ss`` are fixed independently of the data.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"value must be a finite number, got {value!r}")
    if (
        isinstance(smooth_sens, bool)
        or not isinstance(smooth_sens, Real)
        or not 0.0 <= float(smooth_sens) < math.inf
    ):
        raise ValueError(f"smooth_sens must be a finite number >= 0, got {smooth_sens!r}")
    sigma_ss = finite_positive("sigma_ss", sigma_ss)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return float(value) + float(smooth_sens) * sigma_ss * float(rng.standard_normal())


# --------------------------------------------------------------------------------------------
# Conditions C5 and C6 (Appendix B.4.2)
# --------------------------------------------------------------------------------------------


def check_smooth_sensitivity_conditions(
    sigma: float,
    num_classes: int,
    order: float,
    *,
    log_q_min: float | None = None,
    points: int = 4000,
) -> tuple[bool, bool]:
    """Numerical check of conditions C5 and C6 (Appendix B.4.2), which Algorithm 3 relies on.

    * C5: Theorem 6's bound ``beta(q)`` is non-decreasing on ``(0, q0]``;
    * C6: ``beta(bu(q)) - beta(q)`` is non-decreasing on ``(0, q1]``, ``q1 = bl(q0)``.

    Both are checked on a grid of ``points`` values of ``log q``, geometric in ``-log q``, from
    ``log_q_min`` (default ``1000 * log q0``; pass the smallest ``log q`` that matters, e.g.
    ``bl`` of the unanimous histogram's) up to ``log q0`` resp. ``log q1``, with a relative
    tolerance of ``1e-9`` for rounding. A grid check, not a proof (the authors minimise the
    symbolic derivative numerically instead).

    Returns
    -------
    tuple[bool, bool]
        ``(C5 holds, C6 holds)``; C6 is reported ``False`` when C5 fails.
    """
    sigma = finite_positive("sigma", sigma)
    order = _check_order(order)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(points, bool) or not isinstance(points, Integral) or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    log_q0 = _log_q0(sigma, order)
    log_q1 = float(_log_q_shift(np.array(log_q0), sigma, int(num_classes), -1.0))
    if log_q_min is None:
        log_q_min = 1000.0 * log_q0
    if isinstance(log_q_min, bool) or not isinstance(log_q_min, Real):
        raise ValueError(f"log_q_min must be a real number, got {log_q_min!r}")
    log_q_min = float(log_q_min)
    if not (math.isfinite(log_q_min) and log_q_min < log_q1):
        raise ValueError(f"log_q_min must be finite and below log q1 = {log_q1:g}, got {log_q_min}")
    lam = np.array(order)

    def grid(top: float) -> FloatArray:
        return -np.geomspace(-log_q_min, -top, points)  # increasing log q

    def non_decreasing(values: FloatArray) -> bool:
        scale = max(float(np.max(np.abs(values))), 1e-300)
        return bool(np.all(np.diff(values) >= -1e-9 * scale))

    g5 = grid(log_q0)
    b5, ok5 = _theorem6(g5, sigma, lam)
    c5 = bool(np.all(ok5)) and non_decreasing(b5)
    if not c5:
        return False, False
    g6 = grid(log_q1)
    b6, ok6 = _theorem6(g6, sigma, lam)
    bu6, oku6 = _theorem6(_log_q_shift(g6, sigma, int(num_classes), +1.0), sigma, lam)
    c6 = bool(np.all(ok6 & oku6)) and non_decreasing(bu6 - b6)
    return True, c6


# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PateEpsilon:
    """Privacy of a run's PATE votes, data-independent and data-dependent (client-level).

    Attributes
    ----------
    epsilon_data_independent
        The data-independent epsilon at ``delta`` of the charged queries (GNMax on the answered
        ones, the threshold step on all): equal to :func:`fedkd.privacy.accounting.gnmax_epsilon`
        for the same charges. Safe to publish.
    epsilon_data_dependent
        The raw data-dependent epsilon (Theorem 6, Proposition 7), the smallest over the orders
        of ``epsilon_data_independent``, hence never above it. **Not safe to publish**: it is a
        function of the teachers' votes and leaks them; publish ``epsilon_sanitised`` instead.
    smooth_sensitivity
        ``SS_beta`` at ``order`` of the summed data-dependent RDP. Data-dependent too: a
        diagnostic, **not safe to publish**.
    epsilon_sanitised
        The data-dependent epsilon released through GNSS: the raw RDP at ``order`` plus Gaussian
        noise of standard deviation ``sigma_ss * smooth_sensitivity``, plus the GNSS release's
        own RDP (``sanitisation_cost``), converted at ``delta``. The figure to publish (see
        ``tuned_on_data``). Being noisy it can come out below the raw figure, and with little
        consensus above ``epsilon_data_independent`` (the data-dependent analysis then does not
        pay off; the data-independent bound stays valid, composed with the release's cost once
        the release has been looked at).
    sanitisation_cost
        The RDP of the GNSS release at ``order`` (Theorem 23), included in ``epsilon_sanitised``.
    sanitisation_std
        ``sigma_ss * smooth_sensitivity``, the standard deviation of the release noise (reveals
        the smooth sensitivity: a diagnostic, not safe to publish).
    order, beta, sigma_ss
        The Renyi order of the GNSS release (``smooth_sensitivity``, ``epsilon_sanitised``) and
        the GNSS parameters.
    tuned_on_data
        Whether ``order`` or ``sigma_ss`` were chosen by looking at the votes (the defaults, as
        in the authors' analysis); the choice itself is then not accounted for. Fix both in
        advance for an end-to-end guarantee.
    num_queries, num_answered
        Queries the threshold step was charged for, and answered (GNMax-charged) queries.
    delta
        The ``delta`` of every epsilon.
    """

    epsilon_data_independent: float
    epsilon_data_dependent: float
    smooth_sensitivity: float
    epsilon_sanitised: float
    sanitisation_cost: float
    sanitisation_std: float
    order: float
    beta: float
    sigma_ss: float
    tuned_on_data: bool
    num_queries: int
    num_answered: int
    delta: float


def _cumulative_padded(arrays: list[FloatArray], length: int) -> FloatArray:
    """Sum of per-query local sensitivities as "within distance d" bounds, padded to ``length``.

    The local sensitivity of a sum within distance ``d`` is at most the sum of each term's
    maximum within distance ``d``; beyond ``K`` a query's reachable set no longer grows.
    """
    total = np.zeros(length)
    for ls in arrays:
        if ls.size == 0:
            continue
        cum = np.maximum.accumulate(ls)
        total[: cum.size] += cum
        total[cum.size :] += cum[-1]
    return total


def pate_data_dependent_epsilon(
    votes: ArrayLike,
    sigma: float,
    delta: float,
    rng: np.random.Generator,
    *,
    answered: ArrayLike | None = None,
    threshold: float | None = None,
    sigma_threshold: float | None = None,
    orders: Sequence[float] | None = None,
    order: float | None = None,
    beta: float | None = None,
    sigma_ss: float | None = None,
) -> PateEpsilon:
    """Data-dependent epsilon of a run's GNMax / Confident-GNMax answers, sanitised by GNSS.

    The charges are those of the paper: every query pays the threshold step (Confident-GNMax,
    when ``threshold`` and ``sigma_threshold`` are given), and only the ``answered`` ones pay
    GNMax (whether a query is answered is the threshold step's released output). Per order
    ``lambda`` the data-dependent RDP is
    ``sum_answered beta_GNMax(q_i) + sum_all beta_T(Pr_i[answered])``
    (:func:`gnmax_rdp_data_dependent`, :func:`threshold_rdp_data_dependent`), each term at most
    its data-independent counterpart, so the raw data-dependent epsilon never exceeds the
    data-independent one at the same order.

    That raw figure depends on the votes and must not be published as is. At one order it is
    released through GNSS: its smooth sensitivity ``SS_beta`` (per-query local sensitivities,
    :func:`gnmax_local_sensitivity` and :func:`threshold_local_sensitivity`, summed as bounds
    within distance ``d``) scales Gaussian noise ``sigma_ss * SS_beta * N(0, 1)`` drawn from
    ``rng``, and the release's own RDP (:func:`gnss_rdp`, Theorem 23) is added, giving
    ``epsilon_sanitised``. When ``SS_beta = 0`` (no histogram with this many votes gets below
    ``q0`` and the threshold cost is flat) the cost does not depend on the votes: it is
    published as is, at no cost.

    Parameters
    ----------
    votes
        Vote counts ``[N, C]`` of every query the server asked, answered or not.
    sigma
        GNMax's noise ``sigma_2 > 0``.
    delta
        Target ``delta`` in ``(0, 1)``.
    rng
        Generator of the release noise (one standard normal draw).
    answered
        Boolean ``[N]``: which queries passed the threshold. Default: all (required to be all
        without a threshold, since plain GNMax answers every query).
    threshold, sigma_threshold
        Confident-GNMax's threshold ``T`` and its noise ``sigma_1 > 0``, both or neither.
    orders
        Renyi orders to consider (default: ``dp_accounting``'s, as the server ledger uses).
    order
        Fix the order of the GNSS release. Default: among the orders of ``orders`` where
        conditions C5-C6 hold (or do not matter), the few best by raw epsilon plus the
        ``sigma_ss``-free part of the GNSS cost are compared by the authors' objective, raw
        epsilon + GNSS cost + two standard deviations of the release noise; this choice looks
        at the votes, as the paper's analysis does.
    beta
        GNSS smoothness, ``0 < beta < 1 / (2 order)``; default ``0.49 / order``.
    sigma_ss
        GNSS noise multiplier; default ``(order e^{2 beta} / SS)^{1/3}``, which minimises
        ``order e^{2 beta} / sigma_ss^2 + 2 SS sigma_ss`` (the release cost plus two standard
        deviations, the authors' heuristic), chosen from the data.

    Returns
    -------
    PateEpsilon
        See its attributes; ``epsilon_data_dependent`` and ``smooth_sensitivity`` are not safe
        to publish.

    Raises
    ------
    ValueError
        On malformed votes or mask, non-positive ``sigma`` / ``sigma_threshold``, ``delta``
        outside ``(0, 1)``, only one of ``threshold`` and ``sigma_threshold``, unanswered queries
        without a threshold, a bad order or GNSS parameter, or when conditions C5-C6 fail at a
        fixed ``order`` (or at every order).
    TypeError
        If ``rng`` is not a :class:`numpy.random.Generator`.
    """
    counts = _check_votes(votes)
    n, c = counts.shape
    sigma = finite_positive("sigma", sigma)
    delta = _check_delta(delta)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if (threshold is None) != (sigma_threshold is None):
        raise ValueError(
            "threshold and sigma_threshold must be given together (Confident-GNMax) or both be "
            f"None (plain GNMax), got threshold={threshold!r}, sigma_threshold={sigma_threshold!r}"
        )
    confident = threshold is not None
    if confident:
        threshold = _check_threshold(threshold)
        sigma_threshold = finite_positive("sigma_threshold", sigma_threshold)
    if answered is None:
        mask = np.ones(n, dtype=bool)
    else:
        mask = np.asarray(answered)
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise ValueError(
                f"answered must be a boolean array of shape ({n},), got dtype {mask.dtype} and "
                f"shape {mask.shape}"
            )
        if not confident and not mask.all():
            raise ValueError(
                "without a threshold GNMax answers every query: answered must be all true "
                "(pass threshold and sigma_threshold for Confident-GNMax)"
            )
    lam_ind = _default_orders() if orders is None else _check_orders(orders)
    lam = lam_ind
    fixed_order = order is not None
    if fixed_order:
        order = _check_order(order)
        lam = np.unique(np.append(lam_ind, order))
    if beta is not None:
        if isinstance(beta, bool) or not isinstance(beta, Real) or not float(beta) > 0.0:
            raise ValueError(f"beta must be a number > 0, got {beta!r}")
        beta = float(beta)
    if sigma_ss is not None:
        sigma_ss = finite_positive("sigma_ss", sigma_ss)

    ans_counts = counts[mask]
    num_answered = int(ans_counts.shape[0])
    if n == 0:
        return PateEpsilon(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, order if fixed_order else math.nan,
                           0.0, math.nan, False, 0, 0, delta)

    def rdp_data_independent(a: FloatArray) -> FloatArray:
        """``lambda / sigma^2`` per answer, ``lambda / (2 sigma_1^2)`` per threshold test."""
        out = num_answered * a / sigma**2
        if confident:
            assert sigma_threshold is not None
            out = out + n * a / (2.0 * sigma_threshold**2)
        return out

    rdp_ind = rdp_data_independent(lam)
    eps_ind = _rdp_to_epsilon(lam_ind, rdp_data_independent(lam_ind), delta)[0]

    # Data-dependent, every order.
    log_q = _log_q_rows(ans_counts, sigma) if num_answered else np.zeros(0)
    rdp_dep = _gnmax_rdp(log_q[:, None], sigma, lam[None, :]).sum(axis=0)
    log_pr = np.zeros(0)
    if confident:
        assert threshold is not None and sigma_threshold is not None
        log_pr = threshold_log_pr_answered(counts, threshold, sigma_threshold)
        rdp_dep = rdp_dep + _threshold_rdp(log_pr[:, None], sigma_threshold, lam[None, :]).sum(0)
    rdp_dep = np.minimum(rdp_dep, rdp_ind)  # already termwise; guards rounding

    eps_at = np.array(
        [_rdp_to_epsilon(np.array([a]), np.array([r]), delta)[0] for a, r in zip(lam, rdp_dep)]
    )
    k_max = int(counts.sum(axis=1).max())
    log_q_unanimous = _log_q_unanimous(sigma, c, k_max)

    def conditions_hold(a: float) -> bool:
        if num_answered == 0 or log_q_unanimous >= _log_q0(sigma, a):
            return True  # GNMax's cost is constant: Algorithm 3 is not used
        # From below bl(q) of the smallest reachable q (the unanimous histogram's) up to q0.
        low = float(_log_q_shift(np.array(log_q_unanimous), sigma, c, -1.0))
        low = min(low, 2.0 * _log_q0(sigma, a)) - 1.0
        return all(check_smooth_sensitivity_conditions(sigma, c, a, log_q_min=low))

    def beta_at(a: float) -> float:
        return 0.49 / a if beta is None else float(beta)

    def sanitise_at(a: float) -> tuple[float, float, float]:
        """``(SS_beta, sigma_ss, GNSS cost)`` of the summed RDP at order ``a``."""
        b = beta_at(a)
        parts = _gnmax_ls_rows(ans_counts, sigma, a)
        if confident:
            assert threshold is not None and sigma_threshold is not None
            parts += [_threshold_ls_row(row, threshold, sigma_threshold, a) for row in counts]
        ss = smooth_sensitivity(_cumulative_padded(parts, k_max + 1), b)
        if ss == 0.0:
            # The cost does not depend on the votes at all: nothing to sanitise or pay for.
            return 0.0, (math.inf if sigma_ss is None else sigma_ss), 0.0
        s_ss = (a * math.exp(2.0 * b) / ss) ** (1.0 / 3.0) if sigma_ss is None else sigma_ss
        return ss, s_ss, gnss_rdp(b, s_ss, a)

    if fixed_order:
        assert order is not None
        if not beta_at(order) < 1.0 / (2.0 * order):
            raise ValueError(
                f"beta must be < 1/(2 order) = {1.0 / (2.0 * order):g}, got {beta_at(order):g}"
            )
        if not conditions_hold(order):
            raise ValueError(
                f"conditions C5-C6 of the smooth-sensitivity analysis fail for sigma={sigma:g}, "
                f"{c} classes, order={order:g}: choose another order (or report the "
                "data-independent epsilon)"
            )
        chosen = order
        ss, s_ss, cost = sanitise_at(chosen)
    else:
        # Rank the orders by the raw epsilon plus the part of the GNSS cost that does not
        # depend on sigma_ss, then compare the few best by the authors' objective: raw epsilon
        # + GNSS cost + two standard deviations of the release noise.
        usable = np.array([beta_at(a) < 1.0 / (2.0 * a) for a in lam])
        if not usable.any():
            raise ValueError(f"beta {beta!r} is >= 1/(2 order) for every order")
        fixed_cost = np.array([
            (beta_at(a) * a - 0.5 * math.log1p(-2.0 * a * beta_at(a))) / (a - 1.0) if ok
            else math.inf
            for a, ok in zip(lam, usable)
        ])
        ranking = list(np.argsort(eps_at + fixed_cost, kind="stable"))
        best_raw = int(np.argmin(np.where(usable, eps_at, math.inf)))
        candidates: list[int] = []
        for idx in [best_raw, *ranking]:
            if len(candidates) == _CANDIDATE_ORDERS:
                break
            if usable[idx] and idx not in candidates and conditions_hold(float(lam[idx])):
                candidates.append(int(idx))
        if not candidates:
            raise ValueError(
                f"conditions C5-C6 of the smooth-sensitivity analysis fail at every order for "
                f"sigma={sigma:g} and {c} classes: report the data-independent epsilon"
            )
        best: tuple[float, float, float, float, float] | None = None
        for idx in candidates:
            a = float(lam[idx])
            ss_a, s_ss_a, cost_a = sanitise_at(a)
            objective = eps_at[idx] + cost_a + 2.0 * ss_a * (s_ss_a if ss_a > 0.0 else 0.0)
            if best is None or objective < best[0]:
                best = (objective, a, ss_a, s_ss_a, cost_a)
        assert best is not None
        _, chosen, ss, s_ss, cost = best
    j = int(np.flatnonzero(lam == chosen)[0])
    raw = float(rdp_dep[j])
    noisy = raw if ss == 0.0 else gnss_release(raw, ss, s_ss, rng)
    eps_sanitised = _rdp_to_epsilon(np.array([chosen]), np.array([noisy + cost]), delta)[0]
    return PateEpsilon(
        epsilon_data_independent=eps_ind,
        epsilon_data_dependent=float(np.min(eps_at[np.isin(lam, lam_ind)])),
        smooth_sensitivity=ss,
        epsilon_sanitised=eps_sanitised,
        sanitisation_cost=cost,
        sanitisation_std=ss * s_ss if ss > 0.0 else 0.0,
        order=chosen,
        beta=beta_at(chosen),
        sigma_ss=s_ss,
        tuned_on_data=not fixed_order or sigma_ss is None,
        num_queries=n,
        num_answered=num_answered,
        delta=delta,
    )
