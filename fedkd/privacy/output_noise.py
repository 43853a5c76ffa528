"""Output perturbation: clip, then add Gaussian noise to what a client releases.

Pure numpy. Clipping (:func:`clip_rows`) and noising (:func:`gaussian_noise`) are separate
functions, each testable alone; the ``private_*`` functions compose them for the statistics that
fedkd's algorithms release and return a :class:`Release` that carries everything the accountant
needs.

Privacy unit and adjacency
--------------------------
The privacy unit is **one training example of one client** (example-level DP). Two datasets are
adjacent when one is obtained from the other by **adding or removing one example**; this is the
adjacency that Opacus's Poisson-subsampled DP-SGD analysis assumes, so the releases below compose
with the client's DP-SGD in one accountant. Client-level guarantees (one client's whole
contribution) are a different unit with a different, server-side ledger; never add the two up.

What is released and its L2 sensitivity
---------------------------------------
Below, ``B`` is the clipping bound of a logit row, ``n`` the number of private examples and ``m``
the number of public inputs.

=================================================  ==============  ============================
release                                            L2 sensitivity  here
=================================================  ==============  ============================
per-class sums of clipped logit rows over private  ``B``           :func:`private_class_sums`
data, ``S_c = sum_{i: y_i = c} clip_B(f(x_i))``,
with ``f`` fixed (e.g. the received model) or
DP-trained
per-class counts ``n_c``                           ``1``           :func:`private_counts`
noisy sums / max(noisy counts, min_count)          free            :func:`noisy_class_means`
sums / **true** counts                             data-dependent  not offered: do not do this
the same sums with ``f`` trained non-privately on  up to ``2Bn``   not offered: useless
the same data
logits of a **DP-SGD-trained** model on public or  free            no noise needed: it is
synthetic inputs                                                   post-processing
logits of a **non-DP** model on ``m`` public       ``2B sqrt(m)``  :func:`private_public_logits`
inputs
=================================================  ==============  ============================

Each mechanism adds ``N(0, std^2)`` independently to every entry, with
``std = noise_multiplier * sensitivity``, i.e. it is a Gaussian mechanism with noise multiplier
``noise_multiplier``.

Accounting
----------
Each :class:`Release` is **one Gaussian-mechanism step with sample rate 1.0** and its
``noise_multiplier``, charged to the **same accountant** that holds the client's DP-SGD history
(e.g. Opacus ``accountant.step(noise_multiplier=release.noise_multiplier, sample_rate=1.0)``, see
:func:`account_release`), so that one epsilon covers both training and releases. The sums and the
counts are two releases and therefore two steps. A release with ``noise_multiplier == 0`` has
infinite epsilon and cannot be accounted; it exists only for tests and non-private baselines.

Step the releases into the ledger before the ledger is saved. Everything computed from released
values afterwards (means, masks, rounding, clipping counts to be non-negative) is post-processing
and costs nothing.

Worked example (Opacus RDP, delta = 1e-5): 10 rounds, each of 19 DP-SGD steps (sigma 1,
q = 1/19) plus one sum release (sigma 5) and one count release (sigma 5), compose to epsilon
7.070, against 5.527 for DP-SGD alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedkd.validate import finite_non_negative, finite_positive

__all__ = [
    "ClipRows",
    "GaussianNoise",
    "OutputMechanism",
    "Release",
    "SupportsGaussianStep",
    "account_release",
    "clip_rows",
    "gaussian_noise",
    "noisy_class_means",
    "private_class_sums",
    "private_counts",
    "private_public_logits",
    "public_logits_sensitivity",
]


class SupportsGaussianStep(Protocol):
    """Anything with Opacus's accountant ``step`` signature (RDPAccountant, PRVAccountant...)."""

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one (subsampled) Gaussian-mechanism step."""
        ...


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _float_dtype(x: np.ndarray) -> np.dtype[np.floating]:
    """The dtype of the output: ``x``'s own if floating, float64 otherwise."""
    if np.issubdtype(x.dtype, np.floating):
        return x.dtype
    return np.dtype(np.float64)


def _check_labels(labels: npt.ArrayLike, num_classes: int, n: int | None = None) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {lab.dtype}")
    if n is not None and lab.shape[0] != n:
        raise ValueError(f"labels has {lab.shape[0]} entries but logits has {n} rows")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{lab.min()}, {lab.max()}]"
        )
    return lab.astype(np.intp, copy=False)


def _check_logits(logits: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise ValueError(f"logits must be 2-D [n, C], got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def clip_rows(x: np.ndarray, bound: float) -> np.ndarray:
    """Scale each row (vector along the last axis) to L2 norm at most ``bound``.

    A row ``r`` with ``||r||_2 > bound`` becomes ``r * bound / ||r||_2`` (same direction); rows
    already inside the bound are returned unchanged, bit for bit, and zero rows stay zero.

    Parameters
    ----------
    x : np.ndarray
        Array of shape ``[..., D]`` with at least one dimension.
    bound : float
        Clipping bound, finite and > 0.

    Returns
    -------
    np.ndarray
        A new array of the same shape; floating inputs keep their dtype (float32 in, float32
        out), other inputs are returned as float64.

    Raises
    ------
    ValueError
        If ``bound`` is not finite and positive or ``x`` is 0-dimensional.
    """
    bound = finite_positive("bound", float(bound))
    arr = np.asarray(x)
    if arr.ndim < 1:
        raise ValueError("x must have at least one dimension (rows along the last axis)")
    dtype = _float_dtype(arr)
    out = np.array(arr, dtype=dtype, copy=True)
    if out.size == 0:
        return out
    norms = np.linalg.norm(out.astype(np.float64, copy=False), axis=-1, keepdims=True)
    outside = norms > bound
    if np.any(outside):
        # Only rows strictly outside are touched; the divisor is > bound > 0 there.
        factor = np.where(outside, bound / np.where(outside, norms, 1.0), 1.0)
        scaled = (out.astype(np.float64) * factor).astype(dtype)
        # Rounding to a narrow dtype (float32) can leave a clipped row a hair above the bound;
        # shrink such rows by a few ulps so that the guarantee ||row|| <= bound holds exactly.
        over = np.linalg.norm(scaled.astype(np.float64), axis=-1, keepdims=True) > bound
        if np.any(over):
            shrink = 1.0 - 4.0 * float(np.finfo(dtype).eps)
            scaled = np.where(over, (scaled.astype(np.float64) * shrink).astype(dtype), scaled)
        out = np.where(outside, scaled, out)
    return out


def gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Return ``x + N(0, std^2)``, with independent noise on every element.

    Parameters
    ----------
    x : np.ndarray
        Array of any shape.
    std : float
        Standard deviation of the noise, finite and >= 0. ``std == 0`` returns an exact copy of
        ``x`` (the identity) and draws nothing from ``rng``.
    rng : np.random.Generator
        Source of the noise. Use a cryptographically seeded generator for real deployments.

    Returns
    -------
    np.ndarray
        A new array of ``x``'s shape; floating inputs keep their dtype, other inputs become
        float64.

    Raises
    ------
    ValueError
        If ``std`` is negative or not finite.
    """
    std = finite_non_negative("std", float(std))
    arr = np.asarray(x)
    dtype = _float_dtype(arr)
    if std == 0.0:
        return np.array(arr, dtype=dtype, copy=True)
    noise = rng.normal(loc=0.0, scale=std, size=arr.shape)
    return (arr.astype(np.float64) + noise).astype(dtype)


@dataclass(frozen=True)
class Release:
    """The outcome of one private release (one Gaussian-mechanism step).

    Attributes
    ----------
    values : np.ndarray
        The noised array, safe to publish.
    noise_multiplier : float
        Sigma: the ratio ``std / sensitivity``; what the accountant needs (with sample rate 1.0).
    sensitivity : float
        L2 sensitivity of the un-noised statistic under add/remove-one-example adjacency.
    std : float
        Standard deviation of the noise added to each entry, ``noise_multiplier * sensitivity``.
    """

    values: np.ndarray
    noise_multiplier: float
    sensitivity: float
    std: float

    def __post_init__(self) -> None:
        finite_non_negative("noise_multiplier", float(self.noise_multiplier))
        finite_positive("sensitivity", float(self.sensitivity))
        finite_non_negative("std", float(self.std))
        expected = self.noise_multiplier * self.sensitivity
        if not math.isclose(self.std, expected, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(
                f"std ({self.std}) must equal noise_multiplier * sensitivity "
                f"({self.noise_multiplier} * {self.sensitivity})"
            )


# --------------------------------------------------------------------------------------------
# Releases over private data
# --------------------------------------------------------------------------------------------


def private_class_sums(
    logits: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    clip_bound: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Release:
    """Release FD's per-class sums of clipped logit rows, with Gaussian noise.

    Each example's logit row is clipped to L2 norm ``clip_bound`` and added to the row of its
    class: ``S_c = sum_{i: y_i = c} clip(logits_i)``, giving ``S`` of shape ``[num_classes, C]``.

    Sensitivity: under add/remove-one-example adjacency, adding or removing example ``i`` changes
    only row ``y_i`` of ``S``, and by exactly ``clip(logits_i)``, whose norm is at most
    ``clip_bound``. The L2 (Frobenius) sensitivity of the whole ``[num_classes, C]`` matrix is
    therefore ``clip_bound``, and adding ``N(0, (noise_multiplier * clip_bound)^2)`` to every
    entry is a Gaussian mechanism with noise multiplier ``noise_multiplier``.

    This holds only if ``logits`` come from a model that is fixed with respect to this data (e.g.
    the model received from the server) or was trained on it with DP-SGD; logits of a model
    trained non-privately on the same data have sensitivity up to ``2 * clip_bound * n``.

    Parameters
    ----------
    logits : np.ndarray
        ``[n, C]`` logits of the private examples.
    labels : np.ndarray
        ``[n]`` integer class labels in ``[0, num_classes)``.
    num_classes : int
        Number of rows of the released matrix.
    clip_bound : float
        Per-row L2 clipping bound, > 0; also the sensitivity.
    noise_multiplier : float
        Sigma >= 0 (0 releases the exact sums and cannot be accounted).
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    Release
        ``values`` of shape ``[num_classes, C]`` (float32 for float32 logits, else float64),
        ``sensitivity = clip_bound`` and ``std = noise_multiplier * clip_bound``.

    Raises
    ------
    ValueError
        On shape, label-range or parameter errors.
    """
    arr = _check_logits(logits)
    lab = _check_labels(labels, num_classes, n=arr.shape[0])
    clip_bound = finite_positive("clip_bound", float(clip_bound))
    noise_multiplier = finite_non_negative("noise_multiplier", float(noise_multiplier))
    dtype = _float_dtype(arr)

    clipped = clip_rows(arr, clip_bound).astype(np.float64)
    sums = np.zeros((int(num_classes), arr.shape[1]), dtype=np.float64)
    np.add.at(sums, lab, clipped)

    std = noise_multiplier * clip_bound
    values = gaussian_noise(sums.astype(dtype), std, rng)
    return Release(
        values=values, noise_multiplier=noise_multiplier, sensitivity=clip_bound, std=std
    )


def private_counts(
    labels: np.ndarray,
    num_classes: int,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Release:
    """Release the per-class example counts with Gaussian noise.

    Adding or removing one example changes one count by 1, so the L2 sensitivity of the count
    vector is 1 and the noise std equals ``noise_multiplier``.

    The noisy counts are returned as floats, neither rounded nor clipped to be non-negative:
    such post-processing is free and left to the caller (see :func:`noisy_class_means`).

    Parameters
    ----------
    labels : np.ndarray
        ``[n]`` integer class labels in ``[0, num_classes)``.
    num_classes : int
        Length of the released vector.
    noise_multiplier : float
        Sigma >= 0 (0 releases the exact counts and cannot be accounted).
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    Release
        float64 ``values`` of shape ``[num_classes]``, ``sensitivity = 1``,
        ``std = noise_multiplier``.

    Raises
    ------
    ValueError
        On shape, label-range or parameter errors.
    """
    lab = _check_labels(labels, num_classes)
    noise_multiplier = finite_non_negative("noise_multiplier", float(noise_multiplier))
    counts = np.bincount(lab, minlength=int(num_classes)).astype(np.float64)
    values = gaussian_noise(counts, noise_multiplier, rng)
    return Release(
        values=values, noise_multiplier=noise_multiplier, sensitivity=1.0, std=noise_multiplier
    )


def noisy_class_means(
    sums: Release,
    counts: Release,
    min_count: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means from released sums and counts (post-processing, costs no privacy).

    ``means[c] = sums[c] / max(counts[c], min_count)``. The floor keeps small or negative noisy
    counts from blowing the means up; dividing by the *true* counts instead would not be
    post-processing and is not offered.

    Parameters
    ----------
    sums : Release
        Output of :func:`private_class_sums`, values ``[K, C]``.
    counts : Release
        Output of :func:`private_counts`, values ``[K]``.
    min_count : float, default 1.0
        Floor of the divisor, finite and > 0.

    Returns
    -------
    means : np.ndarray
        float32 ``[K, C]``.
    mask : np.ndarray
        bool ``[K]``: ``True`` where the noisy count is ``>= min_count``. The means of the other
        classes are dominated by noise; callers usually drop or down-weight them.

    Raises
    ------
    ValueError
        If the shapes do not match or ``min_count`` is not positive.
    """
    min_count = finite_positive("min_count", float(min_count))
    s = np.asarray(sums.values, dtype=np.float64)
    n = np.asarray(counts.values, dtype=np.float64)
    if s.ndim != 2 or n.ndim != 1 or s.shape[0] != n.shape[0]:
        raise ValueError(f"sums must be [K, C] and counts [K]; got {s.shape} and {n.shape}")
    mask = n >= min_count
    means = s / np.maximum(n, min_count)[:, None]
    return means.astype(np.float32), mask


# --------------------------------------------------------------------------------------------
# Logits on public inputs
# --------------------------------------------------------------------------------------------


def public_logits_sensitivity(clip_bound: float, num_inputs: int) -> float:
    """L2 sensitivity of clipped logits of a **non-private** model on ``num_inputs`` public inputs.

    One private training example can change the model, and with it every one of the ``m`` rows,
    each by up to ``2 * clip_bound`` (from one point of the clipping ball to the opposite one) in
    the worst case; the Frobenius sensitivity of the ``[m, C]`` matrix is therefore
    ``2 * clip_bound * sqrt(m)``.

    Logits of a model trained with **DP-SGD** on public or synthetic inputs need no such noise:
    they are post-processing of the DP model and cost nothing beyond its training (for the
    example-level unit). Logits on *private* inputs are never free; release them through
    :func:`private_class_sums`.

    Parameters
    ----------
    clip_bound : float
        Per-row L2 clipping bound, > 0.
    num_inputs : int
        Number ``m`` of public inputs, >= 1.

    Returns
    -------
    float
        ``2 * clip_bound * sqrt(num_inputs)``.

    Raises
    ------
    ValueError
        If ``clip_bound <= 0`` or ``num_inputs < 1``.
    """
    clip_bound = finite_positive("clip_bound", float(clip_bound))
    is_int = isinstance(num_inputs, (int, np.integer)) and not isinstance(num_inputs, bool)
    if not is_int or num_inputs < 1:
        raise ValueError(f"num_inputs must be an int >= 1, got {num_inputs!r}")
    return 2.0 * clip_bound * math.sqrt(int(num_inputs))


def private_public_logits(
    logits: np.ndarray,
    clip_bound: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Release:
    """Release a non-private model's logits on public inputs with Gaussian noise.

    Rows are clipped to ``clip_bound`` and every entry gets noise with
    ``std = noise_multiplier * public_logits_sensitivity(clip_bound, m)``. The noise grows with
    ``sqrt(m)``; for more than a handful of inputs, prefer DP-SGD training (whose logits on public
    inputs are then free) or PATE-style votes.

    Parameters
    ----------
    logits : np.ndarray
        ``[m, C]`` logits on public inputs, ``m >= 1``.
    clip_bound : float
        Per-row L2 clipping bound, > 0.
    noise_multiplier : float
        Sigma >= 0.
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    Release
        ``values`` ``[m, C]`` (dtype kept for floating logits), ``sensitivity = 2 B sqrt(m)``.

    Raises
    ------
    ValueError
        On shape or parameter errors.
    """
    arr = _check_logits(logits)
    noise_multiplier = finite_non_negative("noise_multiplier", float(noise_multiplier))
    sensitivity = public_logits_sensitivity(clip_bound, arr.shape[0])
    std = noise_multiplier * sensitivity
    values = gaussian_noise(clip_rows(arr, clip_bound), std, rng)
    return Release(
        values=values, noise_multiplier=noise_multiplier, sensitivity=sensitivity, std=std
    )


# --------------------------------------------------------------------------------------------
# Post-processors: clip, then noise (pfl-research's order), as objects an algorithm holds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRows:
    """Post-processor 1: clip every row to L2 norm ``bound`` (:func:`clip_rows`)."""

    bound: float

    def __post_init__(self) -> None:
        finite_positive("bound", float(self.bound))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return clip_rows(rows, self.bound)


@dataclass(frozen=True)
class GaussianNoise:
    """Post-processor 2: a Gaussian mechanism with ``noise_multiplier`` sigma: adds
    ``N(0, (sigma * sensitivity)^2)`` to every entry of a statistic (:func:`gaussian_noise`) and
    returns the :class:`Release` an accountant charges."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        finite_non_negative("noise_multiplier", float(self.noise_multiplier))

    def __call__(self, statistic: np.ndarray, sensitivity: float,
                 rng: np.random.Generator) -> Release:
        std = self.noise_multiplier * finite_positive("sensitivity", float(sensitivity))
        return Release(values=gaussian_noise(statistic, std, rng),
                       noise_multiplier=self.noise_multiplier, sensitivity=float(sensitivity),
                       std=std)


@dataclass(frozen=True)
class OutputMechanism:
    """What a client applies to everything it releases from private data: clip, then noise.

    Built once from ``privacy.output-clip`` and ``privacy.output-noise``
    (:meth:`from_config`); its methods are the releases fedkd's algorithms make, each the
    composition of :class:`ClipRows` and :class:`GaussianNoise` with the statistic's
    sensitivity (see the module docstring). Each returns a :class:`Release` to charge to the
    client's ledger before the values leave.
    """

    clip: ClipRows
    noise: GaussianNoise

    @classmethod
    def from_config(cls, clip_bound: float, noise_multiplier: float) -> OutputMechanism:
        return cls(ClipRows(clip_bound), GaussianNoise(noise_multiplier))

    def class_sums(self, logits: np.ndarray, labels: np.ndarray, num_classes: int,
                   rng: np.random.Generator) -> Release:
        """Per-class sums of clipped logit rows (sensitivity: the clip bound)."""
        return private_class_sums(logits, labels, num_classes, self.clip.bound,
                                  self.noise.noise_multiplier, rng)

    def counts(self, labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> Release:
        """Per-class counts (sensitivity 1)."""
        return private_counts(labels, num_classes, self.noise.noise_multiplier, rng)

    def public_logits(self, logits: np.ndarray, rng: np.random.Generator) -> Release:
        """A non-private model's logits on ``m`` public inputs (sensitivity ``2 B sqrt(m)``)."""
        return private_public_logits(logits, self.clip.bound, self.noise.noise_multiplier, rng)


# --------------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------------


def account_release(accountant: SupportsGaussianStep, release: Release) -> None:
    """Charge one release to an Opacus accountant as a Gaussian step with sample rate 1.0.

    Calls ``accountant.step(noise_multiplier=release.noise_multiplier, sample_rate=1.0)``. Use the
    accountant that holds the client's DP-SGD history (e.g. ``engine.accountant``) so one epsilon
    covers training and releases. (Opacus's PRVAccountant prints a harmless divide-by-zero
    ``RuntimeWarning`` for ``sample_rate=1.0``.)

    Parameters
    ----------
    accountant : SupportsGaussianStep
        An Opacus ``RDPAccountant``, ``PRVAccountant`` or anything with the same ``step``.
    release : Release
        The release to charge.

    Raises
    ------
    ValueError
        If ``release.noise_multiplier`` is 0: the release is not private (infinite epsilon) and
        cannot be accounted as a Gaussian step.
    """
    if not release.noise_multiplier > 0.0:
        raise ValueError(
            "a release with noise_multiplier 0 has infinite epsilon and cannot be accounted; "
            "release it only in non-private runs"
        )
    accountant.step(noise_multiplier=float(release.noise_multiplier), sample_rate=1.0)
