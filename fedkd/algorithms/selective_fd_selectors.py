"""Selective-FD's knowledge selectors, as pure numpy functions.

Selective-FD (Shao, Wu & Zhang, "Selective knowledge sharing for privacy-preserving federated
distillation without a good teacher", Nature Communications 2024, arXiv:2304.01731; official code
``shaojiawei07/Selective-FD``) filters what clients and server share in federated distillation:

* a **client-side selector** keeps only the proxy samples that look like the client's own data,
  so that a client does not share predictions on inputs it has never seen ("misleading"
  knowledge). Each client fits a density-ratio estimator ``r(x) = p(x) / q(x)`` between its local
  input distribution ``p`` and an auxiliary distribution ``q`` that covers the input space, with
  KuLSIF (Kanamori, Hido & Sugiyama, "A least-squares approach to direct importance estimation",
  JMLR 10, 2009), and shares a prediction for proxy sample ``x`` only when ``r(x)`` is large
  enough (:class:`KuLSIF`, :func:`auxiliary_uniform`, :func:`threshold_from_quantile`,
  :func:`client_mask`);
* a **server-side selector** drops the ensemble targets whose entropy is high ("ambiguous"
  knowledge) before they are sent back for distillation (:func:`shannon_entropy`,
  :func:`normalised_entropy`, :func:`entropy_mask`).

Everything here is stateless apart from the fitted, immutable :class:`KuLSIF`; randomness comes
only from an explicit :class:`numpy.random.Generator`. Kernel computations run in float64 and are
chunked over rows, so evaluating ``N = 6000`` proxy vectors against ``n + m = 3000`` kernel centres
of dimension 784 never materialises more than one ``[rows, n + m]`` block (32 MiB by default).
Invalid inputs raise :class:`ValueError`.

Shape conventions
-----------------
* ``m``: numerator (client) samples ``X_nu``; ``n``: auxiliary (denominator) samples ``X_de``;
  ``N``: samples to score; ``d``: input dimension after flattening; ``C``: number of classes.
* Inputs are ``[N, *input_shape]`` arrays (e.g. ``[N, 1, 28, 28]`` images); every non-batch
  dimension is flattened, so the kernel acts on vectors of length ``d = prod(input_shape)``.

Differences from the official code (checked against ``KuLSIF.py``, ``step1_train_estimators.py``
and ``step2_select_proxy_data.py`` of the official repository)
--------------------------------------------------------------------------------------------
* The official ``_compute_alpha_vector`` builds ``A = K11 / n + lambda I`` and its inverse but
  then returns ``A @ b`` instead of ``A^{-1} @ b``. This module uses the KuLSIF solution
  ``alpha = A^{-1} b`` (derived in :class:`KuLSIF`, checked against the objective's gradient in
  the tests). With the official MNIST settings (``sigma = 5``, ``d = 784``, uniform ``q``) the
  kernel between an image and a uniform-noise vector is ~``exp(-25)`` or smaller, so the ``alpha``
  term barely moves ``r`` at real images and the slip has little practical effect there.
* The official selector keeps ``r(x) > threshold`` (strict); :func:`client_mask` keeps
  ``r(x) >= threshold``. For continuous ``r`` the two differ on a set of measure zero.
* The official pipeline fits each client's estimator on 5 % (one class per client) or 10 % (two
  classes) of its local data with ``n = 250`` auxiliary samples, ``sigma = 5`` and
  ``lambda = n ** -0.5``, and takes the threshold as the first quartile (``q = 0.25``) of ``r``
  on the remaining local samples. (A disabled example in ``KuLSIF.py`` uses ``n = 2000``,
  ``sigma = 30``, ``lambda = 1e-3``.) The official demo does not implement the server-side
  entropy selector; :func:`entropy_mask` follows the paper's description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedkd.validate import finite_positive

__all__ = [
    "KuLSIF",
    "fit_kulsif",
    "gaussian_kernel",
    "auxiliary_uniform",
    "threshold_from_quantile",
    "client_mask",
    "shannon_entropy",
    "normalised_entropy",
    "entropy_mask",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Largest accepted deviation of a probability row's sum from 1.
PROB_SUM_ATOL = 1e-3

#: Default size of one kernel block, ``rows * cols * 8`` bytes (float64).
DEFAULT_BLOCK_BYTES = 32 * 2**20


# ---------------------------------------------------------------------------------------------
# Validation and kernel helpers (private)
# ---------------------------------------------------------------------------------------------


def _as_vectors(name: str, x: ArrayLike) -> FloatArray:
    """``x`` as a C-contiguous float64 ``[N, d]`` array (non-batch dimensions flattened)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape [N, *input_shape] (ndim >= 2), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {arr.shape}")
    out = np.ascontiguousarray(arr.reshape(arr.shape[0], -1), dtype=np.float64)
    if out.shape[1] == 0:
        raise ValueError(f"{name} has zero-sized input dimensions: {arr.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _rows_per_block(cols: int, block_bytes: int) -> int:
    return max(1, int(block_bytes) // (8 * max(1, cols)))


def _kernel_block(a: FloatArray, a_sq: FloatArray, b: FloatArray, b_sq: FloatArray,
                  sigma: float) -> FloatArray:
    """``exp(-||a_i - b_j||^2 / (2 sigma^2))`` as one ``[len(a), len(b)]`` array.

    Uses ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` (one matrix product, one output buffer,
    updated in place) and clips the rounding-error negatives of the expansion to 0.
    """
    block = a @ b.T
    block *= -2.0
    block += a_sq[:, None]
    block += b_sq[None, :]
    np.maximum(block, 0.0, out=block)
    block *= -1.0 / (2.0 * sigma * sigma)
    np.exp(block, out=block)
    return block


def _kernel_matvec(a: FloatArray, b: FloatArray, w: FloatArray, sigma: float, *,
                   chunk_rows: int | None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                   b_sq: FloatArray | None = None) -> FloatArray:
    """``k(a, b) @ w`` computed over row blocks of ``a`` (never the whole ``[len(a), len(b)]``)."""
    rows = _rows_per_block(b.shape[0], block_bytes) if chunk_rows is None else int(chunk_rows)
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    if b_sq is None:
        b_sq = np.einsum("ij,ij->i", b, b)
    out = np.empty(a.shape[0], dtype=np.float64)
    for start in range(0, a.shape[0], rows):
        chunk = a[start:start + rows]
        chunk_sq = np.einsum("ij,ij->i", chunk, chunk)
        out[start:start + rows] = _kernel_block(chunk, chunk_sq, b, b_sq, sigma) @ w
    return out


def gaussian_kernel(a: ArrayLike, b: ArrayLike, *, sigma: float) -> FloatArray:
    r"""Gaussian (RBF) kernel matrix between two sets of flattened inputs.

    .. math::

        k(x, x') = \exp\!\left(-\frac{\lVert x - x' \rVert_2^2}{2\sigma^2}\right)

    Parameters
    ----------
    a : array_like, shape [N_a, *input_shape]
    b : array_like, shape [N_b, *input_shape]
        Non-batch dimensions are flattened; both must flatten to the same ``d``.
    sigma : float
        Kernel width, > 0.

    Returns
    -------
    numpy.ndarray, float64, shape [N_a, N_b]
        The full matrix (unchunked: use it for small problems only).
    """
    av, bv = _as_vectors("a", a), _as_vectors("b", b)
    if av.shape[1] != bv.shape[1]:
        raise ValueError(f"a and b have different input sizes: {av.shape[1]} vs {bv.shape[1]}")
    s = finite_positive("sigma", sigma, coerce=True)
    return _kernel_block(av, np.einsum("ij,ij->i", av, av), bv, np.einsum("ij,ij->i", bv, bv), s)


def _readonly(arr: FloatArray) -> FloatArray:
    arr.setflags(write=False)
    return arr


# ---------------------------------------------------------------------------------------------
# Client side: KuLSIF density-ratio estimation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KuLSIF:
    r"""A fitted KuLSIF density-ratio estimator :math:`\hat r(x) \approx p(x) / q(x)`.

    Build it with :meth:`KuLSIF.fit` (or :func:`fit_kulsif`); the arrays it holds are read-only.

    Model
    -----
    Let :math:`X_{nu} = \{x^{nu}_j\}_{j=1}^m \sim p` (the client's local inputs, the numerator)
    and :math:`X_{de} = \{x^{de}_i\}_{i=1}^n \sim q` (auxiliary samples whose support covers that
    of :math:`p`, the denominator), and let :math:`\mathcal H` be the RKHS of the Gaussian kernel
    :math:`k` (:func:`gaussian_kernel`). KuLSIF (Kanamori, Hido & Sugiyama 2009) fits :math:`r`
    by regularised least squares, since
    :math:`\tfrac12 \mathbb E_q[(r - p/q)^2] = \tfrac12 \mathbb E_q[r^2] - \mathbb E_p[r]
    + \text{const}`:

    .. math::

        \hat r = \arg\min_{r \in \mathcal H}\;
            J(r) = \frac{1}{2n} \sum_{i=1}^n r(x^{de}_i)^2
                 - \frac{1}{m} \sum_{j=1}^m r(x^{nu}_j)
                 + \frac{\lambda}{2} \lVert r \rVert_{\mathcal H}^2 .

    Derivation of the closed form
    -----------------------------
    :math:`J` is strictly convex, and its Fréchet derivative (using the reproducing property
    :math:`r(x) = \langle r, k(\cdot, x) \rangle`) vanishes at the minimiser:

    .. math::

        \frac{1}{n} \sum_i \hat r(x^{de}_i)\, k(\cdot, x^{de}_i)
        - \frac{1}{m} \sum_j k(\cdot, x^{nu}_j) + \lambda \hat r = 0 ,

    so :math:`\hat r(x) = \sum_i \alpha_i k(x, x^{de}_i) + \frac{1}{m\lambda} \sum_j
    k(x, x^{nu}_j)` with :math:`\alpha_i = -\hat r(x^{de}_i) / (n\lambda)`. Evaluating
    :math:`\hat r` at the auxiliary points, with :math:`K_{11} = k(X_{de}, X_{de})` (``[n, n]``)
    and :math:`K_{12} = k(X_{de}, X_{nu})` (``[n, m]``), gives
    :math:`\hat r(X_{de}) = K_{11}\alpha + K_{12}\mathbf 1_m / (m\lambda) = -n\lambda\alpha`, i.e.

    .. math::

        \alpha = -\left(\frac{K_{11}}{n} + \lambda I_n\right)^{-1}
                  \frac{K_{12} \mathbf 1_m}{m\, n\, \lambda} ,

    which is Kanamori et al.'s KuLSIF solution (and the formula of the official Selective-FD
    code, which however multiplies by the matrix instead of solving with it; see the module
    docstring). :math:`K_{11}/n + \lambda I` is symmetric positive definite for
    :math:`\lambda > 0`, so the solve is well posed.

    :math:`\hat r` is not constrained to be non-negative: far from both samples it tends to 0 and
    may be slightly negative.

    Attributes
    ----------
    x_nu : numpy.ndarray, float64, shape [m, d]
        Numerator (client) samples, flattened.
    x_de : numpy.ndarray, float64, shape [n, d]
        Auxiliary (denominator) samples, flattened.
    alpha : numpy.ndarray, float64, shape [n]
        Coefficients of the auxiliary kernel centres.
    sigma : float
        Gaussian kernel width.
    lam : float
        Regularisation :math:`\lambda`.
    """

    x_nu: FloatArray
    x_de: FloatArray
    alpha: FloatArray
    sigma: float
    lam: float

    @classmethod
    def fit(cls, x_nu: ArrayLike, x_de: ArrayLike, *, sigma: float, lam: float,
            chunk_rows: int | None = None) -> Self:
        r"""Fit :math:`\hat r = p / q` from samples of ``p`` (``x_nu``) and ``q`` (``x_de``).

        Parameters
        ----------
        x_nu : array_like, shape [m, *input_shape]
            Samples of the numerator distribution :math:`p` (the client's local inputs).
        x_de : array_like, shape [n, *input_shape]
            Samples of the auxiliary distribution :math:`q` (e.g. :func:`auxiliary_uniform`).
        sigma : float
            Gaussian kernel width, > 0.
        lam : float
            Regularisation :math:`\lambda`, > 0.
        chunk_rows : int or None
            Rows of ``x_de`` per block when computing :math:`K_{12}\mathbf 1_m`; ``None`` picks
            blocks of at most 32 MiB. :math:`K_{11}` (``n x n``) is formed in full.

        Returns
        -------
        KuLSIF
            The fitted estimator; cost :math:`O(n^2 d + n m d + n^3)`.
        """
        nu = _as_vectors("x_nu", x_nu)
        de = _as_vectors("x_de", x_de)
        if nu.shape[1] != de.shape[1]:
            raise ValueError(f"x_nu and x_de have different input sizes: {nu.shape[1]} vs "
                             f"{de.shape[1]}")
        s = finite_positive("sigma", sigma, coerce=True)
        reg = finite_positive("lam", lam, coerce=True)
        n, m = de.shape[0], nu.shape[0]
        de_sq = np.einsum("ij,ij->i", de, de)
        system = _kernel_block(de, de_sq, de, de_sq, s)  # K11
        system /= n
        system[np.diag_indices(n)] += reg  # K11 / n + lam I
        k12_ones = _kernel_matvec(de, nu, np.ones(m), s, chunk_rows=chunk_rows)  # K12 1_m
        alpha = -np.linalg.solve(system, k12_ones / (m * n * reg))
        return cls(x_nu=_readonly(nu), x_de=_readonly(de), alpha=_readonly(alpha), sigma=s,
                   lam=reg)

    @property
    def n(self) -> int:
        """Number of auxiliary (denominator) samples."""
        return int(self.x_de.shape[0])

    @property
    def m(self) -> int:
        """Number of numerator (client) samples."""
        return int(self.x_nu.shape[0])

    @property
    def dim(self) -> int:
        """Flattened input dimension ``d``."""
        return int(self.x_de.shape[1])

    def ratio(self, x: ArrayLike, *, chunk_rows: int | None = None) -> FloatArray:
        r"""Estimated density ratio :math:`\hat r(x) = p(x)/q(x)` at each row of ``x``.

        .. math::

            \hat r(x) = \sum_{i=1}^n \alpha_i\, k(x, x^{de}_i)
                      + \frac{1}{m\lambda} \sum_{j=1}^m k(x, x^{nu}_j)

        Parameters
        ----------
        x : array_like, shape [N, *input_shape]
            Points to score; they must flatten to the fitted dimension ``d``.
        chunk_rows : int or None
            Rows of ``x`` per kernel block (each block is ``[chunk_rows, n + m]`` float64).
            ``None`` picks blocks of at most 32 MiB (e.g. 1398 rows for ``n + m = 3000``). The
            result does not depend on it beyond floating-point summation order.

        Returns
        -------
        numpy.ndarray, float64, shape [N]
        """
        pts = _as_vectors("x", x)
        if pts.shape[1] != self.dim:
            raise ValueError(f"x has input size {pts.shape[1]}, the estimator was fitted on "
                             f"{self.dim}")
        centres = np.concatenate([self.x_de, self.x_nu])
        weights = np.concatenate([self.alpha, np.full(self.m, 1.0 / (self.m * self.lam))])
        return _kernel_matvec(pts, centres, weights, self.sigma, chunk_rows=chunk_rows)


def fit_kulsif(x_nu: ArrayLike, x_de: ArrayLike, *, sigma: float, lam: float,
               chunk_rows: int | None = None) -> KuLSIF:
    """Same as :meth:`KuLSIF.fit`."""
    return KuLSIF.fit(x_nu, x_de, sigma=sigma, lam=lam, chunk_rows=chunk_rows)


def auxiliary_uniform(n: int, input_shape: tuple[int, ...], low: float, high: float,
                      rng: np.random.Generator) -> FloatArray:
    r"""``n`` samples of the auxiliary distribution :math:`q = \mathcal U([low, high]^d)`.

    The official code draws :math:`q` uniformly over the range of normalised pixels: for inputs
    normalised as ``(pixel - mean) / std`` with pixels in ``[0, 1]``, ``low = -mean / std`` and
    ``high = (1 - mean) / std`` (MNIST: ``-0.4242, 2.8216``). Its support covers every possible
    input, as KuLSIF requires (``supp p`` within ``supp q``).

    Parameters
    ----------
    n : int
        Number of samples, >= 1.
    input_shape : tuple of int
        Shape of one input (e.g. ``(1, 28, 28)``).
    low, high : float
        Bounds of every coordinate, ``low < high``.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray, float64, shape [n, *input_shape]
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got "
                         f"{input_shape!r}")
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng.uniform(lo, hi, size=(int(n), *shape))


def threshold_from_quantile(ratio_on_local: ArrayLike, quantile: float) -> float:
    r"""Client-side threshold: the ``quantile``-th quantile of :math:`\hat r` on local data.

    A proxy sample is "in distribution" for a client if its ratio is at least the ratio of the
    ``quantile``-th quantile of the client's own held-out samples: with ``quantile = 0.1`` about
    90 % of the client's own data would pass its selector. Score held-out samples, not the
    samples ``x_nu`` the estimator was fitted on (those have inflated ratios). The official code
    uses the first quartile, ``quantile = 0.25``.

    Parameters
    ----------
    ratio_on_local : array_like, shape [N_local]
        :math:`\hat r` on the client's held-out local samples (:meth:`KuLSIF.ratio`).
    quantile : float
        In ``[0, 1]``; computed with :func:`numpy.quantile`'s default (linear interpolation).

    Returns
    -------
    float
    """
    r = np.asarray(ratio_on_local, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ratio_on_local must be a non-empty 1-D array, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("ratio_on_local contains NaN or infinite values")
    q = float(quantile)
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")
    return float(np.quantile(r, q))


def client_mask(ratio_values: ArrayLike, threshold: float) -> BoolArray:
    r"""Client-side selector: keep proxy sample ``x`` iff :math:`\hat r(x) \ge` ``threshold``.

    Parameters
    ----------
    ratio_values : array_like, shape [N]
        :math:`\hat r` on the proxy samples.
    threshold : float
        Usually :func:`threshold_from_quantile` of the same estimator.

    Returns
    -------
    numpy.ndarray of bool, shape [N]
        ``True`` where the client shares its prediction.
    """
    r = np.asarray(ratio_values, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"ratio_values must be 1-D, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("ratio_values contains NaN or infinite values")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return r >= t


# ---------------------------------------------------------------------------------------------
# Server side: entropy selector
# ---------------------------------------------------------------------------------------------


def _check_probs(probs: ArrayLike) -> FloatArray:
    p = np.asarray(probs)
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)) \
            or p.dtype == np.bool_:
        raise ValueError(f"probs must be a real numeric array, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got {p.shape}")
    if p.shape[1] < 2:
        raise ValueError(f"probs needs at least 2 classes, got C={p.shape[1]}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    if np.any(p < 0.0):
        raise ValueError("probs contains negative entries")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_ATOL)
    if bad.size:
        raise ValueError(f"rows of probs must sum to 1 (within {PROB_SUM_ATOL}); row {bad[0]} "
                         f"sums to {sums[bad[0]]!r} ({bad.size} bad rows)")
    return p / sums[:, None]


def shannon_entropy(probs: ArrayLike) -> FloatArray:
    r"""Shannon entropy of each row, in nats: :math:`H(p) = -\sum_c p_c \ln p_c` (``0 ln 0 = 0``).

    Parameters
    ----------
    probs : array_like, shape [N, C]
        Probability rows (non-negative, finite, summing to 1 within ``1e-3``; each row is
        renormalised to sum to exactly 1 before the entropy is taken). ``C >= 2``.

    Returns
    -------
    numpy.ndarray, float64, shape [N]
        Values in :math:`[0, \ln C]`.
    """
    p = _check_probs(probs)
    logs = np.log(np.where(p > 0.0, p, 1.0))
    return np.clip(-(p * logs).sum(axis=1), 0.0, math.log(p.shape[1]))


def normalised_entropy(probs: ArrayLike) -> FloatArray:
    r"""Entropy as a fraction of its maximum: :math:`H(p) / \ln C \in [0, 1]`.

    0 for a one-hot row, 1 for the uniform row. Same input rules as :func:`shannon_entropy`.
    """
    p = np.asarray(probs)
    return np.clip(shannon_entropy(p) / math.log(p.shape[1]), 0.0, 1.0)


def entropy_mask(probs: ArrayLike, threshold: float) -> BoolArray:
    r"""Server-side selector: keep the targets whose normalised entropy is at most ``threshold``.

    .. math::

        \text{keep}_i \iff \frac{H(p_i)}{\ln C} \le \tau , \qquad
        H(p_i) = -\sum_{c=1}^C p_{ic} \ln p_{ic}

    The threshold :math:`\tau` is in units of :math:`\ln C` (the entropy of the uniform
    distribution), so it means the same for any number of classes: :math:`\tau = 1` keeps every
    target, :math:`\tau = 0` keeps only one-hot targets, and any :math:`\tau < 1` drops the
    uniform (maximally ambiguous) target. In nats, the cut is :math:`\tau \ln C`.

    Parameters
    ----------
    probs : array_like, shape [N, C]
        Ensemble targets (probability rows; see :func:`shannon_entropy` for the rules).
    threshold : float
        :math:`\tau \in [0, 1]`.

    Returns
    -------
    numpy.ndarray of bool, shape [N]
        ``True`` where the target is sent back for distillation.
    """
    t = float(threshold)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"threshold is a fraction of ln C and must lie in [0, 1], got "
                         f"{threshold!r}")
    return normalised_entropy(probs) <= t
