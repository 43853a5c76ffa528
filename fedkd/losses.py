"""Knowledge-distillation losses as pure torch functions.

Every public function here is stateless: it takes tensors (and plain Python hyper-parameters) and
returns a 0-dim loss tensor (or, for the helpers, a tensor of probabilities / relation matrices).
Nothing is detached: if the teacher's tensors must not receive gradients, the caller computes them
under ``torch.no_grad()`` or detaches them.

Equation numbers refer to the knowledge-distillation survey, Moslemi, Briskina, Dang & Li, "A survey
on knowledge distillation: Recent advancements", Machine Learning with Applications, 2024,
doi:10.1016/j.mlwa.2024.100605. The module holds:

* response-based KD (survey section 2.1): softened probabilities, eqs. (1.1.1)-(1.1.2); the T^2
  KL, eq. (1.1.3), from teacher logits (:func:`kd_kl`) or probabilities (:func:`kd_kl_from_probs`);
  the cross-entropy, eq. (1.1.4);
* feature-based KD (section 2.2): the L2 hint loss, eq. (1.2.1);
* relation-based KD (section 2.3): pairwise distances, eq. (1.3.1), cosine similarities,
  eq. (1.3.2), and the relation loss, eq. (1.3.3);
* the ``distill.loss`` choices towards aggregated targets (:data:`DISTILLATION_LOSSES`): ``kl``
  (eq. 1.1.3), ``l1-logits`` (FedMD's L1 on logits) and ``mse-logits`` (logit matching);
* FedGen's generator diversity loss, which is not in the survey: Zhu, Hong & Zhou, "Data-Free
  Knowledge Distillation for Heterogeneous Federated Learning", ICML 2021, and its official code.

The survey's other losses (the totals that mix in the cross-entropy, eqs. (1.1.5), (1.2.2) and
(1.3.4); attention transfer, eq. (3.1.3.1); information entropy and the data-free total,
eqs. (3.2.1.1)-(3.2.1.2); multi-teacher KD, eq. (3.4.2.1)) were removed because no configuration
reached them and nothing measured them; the student-down algorithm reaches the response (``kd``),
feature and relation losses on the client via ``student-down.local-loss``.

Shape conventions
-----------------
* ``N``: batch size (number of samples), ``C``: number of classes.
* logits and probabilities are ``[N, C]``.
* labels are either class indices ``[N]`` (any integer dtype) or target distributions ``[N, C]``.
* features are ``[N, ...]``; where a loss needs vectors, the non-batch dimensions are flattened.

Reductions
----------
Per-sample quantities are averaged over the batch ("batchmean"), so a loss does not grow with the
batch size. Invalid inputs (shape mismatches, non-positive temperatures, probabilities that are
not distributions...) raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fedkd.registry import Registry

__all__ = [
    "softened_probs",
    "kd_kl",
    "kd_kl_from_probs",
    "cross_entropy",
    "feature_loss",
    "pairwise_distance_matrix",
    "pairwise_cosine_matrix",
    "relation_loss",
    "diversity_loss",
    "l1_logits_from_probs",
    "mse_logits_from_probs",
    "DISTILLATION_LOSSES",
    "DistillationLoss",
]

RelationKind = Literal["distance", "cosine"]

# Largest accepted deviation of a probability row's sum from 1 (covers float16/bfloat16 averages).
_PROB_SUM_ATOL = 1e-3

#: A loss between student logits ``[N, C]`` and target probabilities ``[N, C]`` at a temperature:
#: ``loss(student_logits, target_probs, temperature, reduction="mean")``; ``reduction="none"``
#: gives one value per row.
DistillationLoss = Callable[..., Tensor]

#: ``distill.loss`` names -> loss(student_logits, target_probs, temperature): the losses towards
#: aggregated targets, each registered where it is defined.
DISTILLATION_LOSSES: Registry[DistillationLoss] = Registry("distillation loss")


# ---------------------------------------------------------------------------------------------
# Input validation (private)
# ---------------------------------------------------------------------------------------------


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_logits(name: str, logits: Tensor) -> None:
    _check_tensor(name, logits)
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape [N, C], got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0); the batch mean is undefined")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} has no classes (C = 0)")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_same_batch(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(
            f"{name_a} and {name_b} need a batch dimension, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size, "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} and {name_b} are an empty batch (N = 0)")


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError) as err:
        raise ValueError(f"temperature must be a real number, got {temperature!r}") from err
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def _check_labels(labels: Tensor, logits: Tensor) -> Tensor:
    """Validate labels against ``[N, C]`` logits; return them in the dtype cross-entropy needs."""
    _check_tensor("labels", labels)
    n, c = logits.shape
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"class-index labels of shape [N] must have an integer dtype, got {labels.dtype}"
            )
        if labels.shape[0] != n:
            raise ValueError(f"labels has {labels.shape[0]} entries but the batch has N = {n}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= c:
            raise ValueError(
                f"class-index labels must lie in [0, {c - 1}] for C = {c}, "
                f"got range [{low}, {high}]"
            )
        return labels.long()
    if labels.dim() == 2:
        _check_same_shape("labels (target distributions)", labels, "student_logits", logits)
        if not labels.is_floating_point():
            raise ValueError(
                f"target-distribution labels of shape [N, C] must be floating point, "
                f"got {labels.dtype}"
            )
        return labels
    raise ValueError(
        f"labels must be class indices [N] or distributions [N, C], got shape {tuple(labels.shape)}"
    )


def _check_probs(name: str, probs: Tensor) -> None:
    """Require every row along the last axis to be a probability distribution."""
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {probs.dtype}")
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if bool((probs < 0).any()):
        raise ValueError(f"{name} must be non-negative (they are probabilities)")
    sums = probs.sum(dim=-1)
    worst = float((sums - 1.0).abs().max())
    if worst > _PROB_SUM_ATOL:
        raise ValueError(
            f"each row of {name} must sum to 1 (probabilities); the worst row is off by {worst:.3g}"
        )


def _flatten_batch(name: str, x: Tensor) -> Tensor:
    """``[N, ...] -> [N, D]`` (a ``[N]`` tensor becomes ``[N, 1]``)."""
    _check_tensor(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name} needs a batch dimension, got a 0-dim tensor")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x.reshape(x.shape[0], -1)


def _kl_rows(p_t: Tensor, log_p_t: Tensor | None, log_p_s: Tensor) -> Tensor:
    """``sum_c p_t log(p_t / p_s)`` over the last axis, with the convention ``0 log 0 = 0``.

    ``log_p_t`` may be given (exact, from ``log_softmax``); without it the teacher's negative
    entropy is computed with :func:`torch.xlogy`, which returns 0 where ``p_t == 0``.
    """
    neg_entropy = torch.xlogy(p_t, p_t) if log_p_t is None else p_t * log_p_t
    # Where p_t == 0 the cross term must be exactly 0 even if log_p_s were -inf (masked logits).
    cross = torch.where(p_t > 0, p_t * log_p_s, torch.zeros_like(log_p_s))
    return (neg_entropy - cross).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# 2.1 Response-based KD: eqs. (1.1.1)-(1.1.4)
# ---------------------------------------------------------------------------------------------


def softened_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""Temperature-softened softmax, survey eqs. (1.1.1)/(1.1.2) (Hinton et al., 2015).

    .. math:: p = \sigma(z / T), \qquad p^i = \frac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}

    Use it to turn a teacher's logits into the soft targets that :func:`kd_kl_from_probs`
    consumes (e.g. on a federated client before the server averages them).

    Parameters
    ----------
    logits
        ``[N, C]`` logits ``z``.
    temperature
        ``T > 0``; ``T > 1`` softens the distribution.

    Returns
    -------
    Tensor
        ``[N, C]`` probabilities; each row sums to 1.
    """
    _check_logits("logits", logits)
    t = _check_temperature(temperature)
    return F.softmax(logits / t, dim=1)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""Response-based distillation loss, survey eq. (1.1.3) (Hinton et al., 2015).

    .. math::
        L_{KL} = T^2 \sum_i p_t^i(T) \log \frac{p_t^i(T)}{p_s^i(T)}
               = T^2 \, KL\big(p_t(T) \,\|\, p_s(T)\big),

    with :math:`p_t(T) = \sigma(z_t / T)` and :math:`p_s(T) = \sigma(z_s / T)` (eqs. 1.1.1-1.1.2).
    The sum runs over the ``C`` classes of one sample; the result is averaged over the ``N``
    samples ("batchmean", like ``F.kl_div(..., reduction="batchmean")``). The :math:`T^2` factor
    keeps the gradient magnitude (which scales as :math:`1/T^2`) comparable across temperatures.

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits :math:`z_s`.
    teacher_logits
        ``[N, C]`` teacher logits :math:`z_t` (not detached here).
    temperature
        ``T > 0``.

    Returns
    -------
    Tensor
        0-dim, non-negative; 0 when student and teacher logits agree up to a per-row constant.

    Raises
    ------
    ValueError
        On shape mismatch, non-``[N, C]`` inputs or ``temperature <= 0``.
    """
    _check_logits("student_logits", student_logits)
    _check_tensor("teacher_logits", teacher_logits)
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_logits("teacher_logits", teacher_logits)
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return (t * t) * _kl_rows(log_p_t.exp(), log_p_t, log_p_s).mean()


@DISTILLATION_LOSSES.register("kl")
def kd_kl_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float,
                     reduction: str = "mean") -> Tensor:
    r"""Survey eq. (1.1.3) with the teacher given as probabilities (e.g. aggregated soft targets).

    .. math:: L_{KL} = T^2 \sum_i p_t^i \log \frac{p_t^i}{p_s^i(T)}, \qquad 0 \log 0 := 0,

    averaged over the batch. ``teacher_probs`` are used **as given**: they are taken to be
    :math:`p_t(T)` already, i.e. produced at the same temperature ``T`` (for instance with
    :func:`softened_probs` and then averaged over clients); only the student is softened here.
    Entries that are exactly 0 contribute 0 (no NaN), and the gradient w.r.t. the student stays
    finite.

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits :math:`z_s`.
    teacher_probs
        ``[N, C]`` teacher distributions; non-negative, each row summing to 1 (tolerance 1e-3).
    temperature
        ``T > 0``: softens the student and sets the :math:`T^2` factor.

    reduction
        ``"mean"`` over the batch, or ``"none"``: one value per row ``[N]`` (per-sample losses,
        what DP-SGD's ghost clipping needs).

    Returns
    -------
    Tensor
        0-dim (``[N]`` with ``reduction="none"``), non-negative.

    Raises
    ------
    ValueError
        On shape mismatch, ``temperature <= 0``, or teacher rows that are not distributions.
    """
    _check_logits("student_logits", student_logits)
    _check_tensor("teacher_probs", teacher_probs)
    _check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_probs("teacher_probs", teacher_probs)
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    return _reduce((t * t) * _kl_rows(teacher_probs, None, log_p_s), reduction)


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    """Per-row losses ``[N]`` averaged (``"mean"``) or kept (``"none"``)."""
    if reduction == "mean":
        return rows.mean()
    if reduction == "none":
        return rows
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    r"""Task loss, survey eq. (1.1.4): cross-entropy of the (un-softened) student, batch mean.

    .. math:: L_{CE} = CE(y, \sigma(z_s)) = -\sum_{i=1}^{C} y_i \log p_s^i, \qquad p_s = \sigma(z_s)

    (The survey writes the class count as ``N`` here; it is ``C`` in this module.) The student is
    evaluated at temperature 1. Thin validating wrapper around
    :func:`torch.nn.functional.cross_entropy`.

    Parameters
    ----------
    student_logits
        ``[N, C]`` logits.
    labels
        ``[N]`` class indices (one-hot ``y``) or ``[N, C]`` target distributions ``y``.

    Returns
    -------
    Tensor
        0-dim mean cross-entropy over the batch.
    """
    _check_logits("student_logits", student_logits)
    target = _check_labels(labels, student_logits)
    return F.cross_entropy(student_logits, target)


# ---------------------------------------------------------------------------------------------
# 2.2 Feature-based KD: eq. (1.2.1)
# ---------------------------------------------------------------------------------------------


def feature_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    r"""Feature-based distillation loss, survey eq. (1.2.1) (FitNets-style hint loss).

    .. math:: L_{Feature} = \frac{1}{N} \sum_{i=1}^{N} \| F_T^i - F_S^i \|_2^2

    Here ``i`` indexes the ``N`` samples of the batch and :math:`F^i` is sample ``i``'s feature
    map flattened to a vector: the squared L2 norm is **summed** over all feature elements and
    **averaged** over samples. (This is ``D`` times ``F.mse_loss``, which also averages over the
    ``D`` feature elements.) Student and teacher features must have the same shape; adapt the
    student with a regressor/projector beforehand if they do not.

    Parameters
    ----------
    student_features, teacher_features
        ``[N, ...]`` tensors of identical shape.

    Returns
    -------
    Tensor
        0-dim, non-negative.
    """
    _check_tensor("student_features", student_features)
    _check_tensor("teacher_features", teacher_features)
    _check_same_shape("student_features", student_features, "teacher_features", teacher_features)
    s = _flatten_batch("student_features", student_features)
    t = _flatten_batch("teacher_features", teacher_features)
    if s.shape[0] == 0:
        raise ValueError("student_features and teacher_features are an empty batch (N = 0)")
    return (t - s).pow(2).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# 2.3 Relation-based KD: eqs. (1.3.1)-(1.3.3)
# ---------------------------------------------------------------------------------------------


def pairwise_distance_matrix(features: Tensor) -> Tensor:
    r"""Pairwise Euclidean distances between samples, survey eq. (1.3.1) (Park et al., 2019).

    .. math:: R(i, j) = \| F^i - F^j \|_2

    computed for every pair of the ``N`` samples (features flattened per sample). The distance is
    computed from the Gram matrix of the batch-centred features (distances are translation
    invariant; centring reduces cancellation), clamped at 0, with the diagonal set exactly to 0.
    The square root is taken only where the squared distance is positive, so ``R(i, i) = 0``
    and coincident samples get a **finite (zero) gradient** instead of the infinite derivative of
    :math:`\sqrt{x}` at 0. Memory is :math:`O(N^2 + N D)`.

    Parameters
    ----------
    features
        ``[N, ...]`` features.

    Returns
    -------
    Tensor
        ``[N, N]`` symmetric matrix with a zero diagonal.
    """
    x = _flatten_batch("features", features)
    n = x.shape[0]
    if n == 0:
        raise ValueError("features is an empty batch (N = 0)")
    x = x - x.mean(dim=0, keepdim=True)
    sq_norms = x.pow(2).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
    positive = off_diagonal & (sq > 0)
    safe_sq = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe_sq.sqrt(), torch.zeros_like(sq))


def pairwise_cosine_matrix(features: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Pairwise cosine similarities between samples, survey eq. (1.3.2).

    .. math:: R(i, j) = \frac{F^i \cdot F^j}{\|F^i\| \, \|F^j\|}

    Each flattened feature vector is divided by ``max(||F^i||, eps)``, so an all-zero vector has
    similarity 0 to everything (instead of NaN) and the gradient stays finite.

    Parameters
    ----------
    features
        ``[N, ...]`` features.
    eps
        Lower bound on the norms, ``> 0``.

    Returns
    -------
    Tensor
        ``[N, N]`` symmetric matrix with entries in ``[-1, 1]``.
    """
    x = _flatten_batch("features", features)
    if x.shape[0] == 0:
        raise ValueError("features is an empty batch (N = 0)")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    unit = F.normalize(x, p=2.0, dim=1, eps=eps)
    return unit @ unit.t()


def relation_loss(
    student_features: Tensor, teacher_features: Tensor, kind: RelationKind = "distance"
) -> Tensor:
    r"""Relation-based distillation loss, survey eq. (1.3.3).

    .. math:: L_{Relation} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
              \big( R_T(i, j) - R_S(i, j) \big)^2

    where ``R`` is the pairwise distance matrix (eq. 1.3.1, ``kind="distance"``) or the pairwise
    cosine-similarity matrix (eq. 1.3.2, ``kind="cosine"``) of the teacher's / student's features
    over the ``N`` samples, all pairs (including ``i = j``) counted. Since each ``R(i, j)`` is a
    scalar, the survey's :math:`\|\cdot\|_2^2` is a plain square. Only the batch sizes need to
    match: student and teacher feature dimensions may differ. Distances are used unnormalised,
    as written in the survey (no division by the mean distance as in RKD).

    Parameters
    ----------
    student_features, teacher_features
        ``[N, ...]`` features with the same ``N``.
    kind
        ``"distance"`` or ``"cosine"``.

    Returns
    -------
    Tensor
        0-dim, non-negative.
    """
    _check_tensor("student_features", student_features)
    _check_tensor("teacher_features", teacher_features)
    _check_same_batch("student_features", student_features, "teacher_features", teacher_features)
    if kind == "distance":
        relation: Callable[[Tensor], Tensor] = pairwise_distance_matrix
    elif kind == "cosine":
        relation = pairwise_cosine_matrix
    else:
        raise ValueError(f"kind must be 'distance' or 'cosine', got {kind!r}")
    return (relation(teacher_features) - relation(student_features)).pow(2).mean()


# ---------------------------------------------------------------------------------------------
# FedGen generator diversity loss (Zhu et al., ICML 2021)
# ---------------------------------------------------------------------------------------------


def diversity_loss(noise: Tensor, outputs: Tensor) -> Tensor:
    r"""FedGen's generator diversity loss (Zhu, Hong & Zhou, ICML 2021; official implementation).

    .. math::
        D_g(i, j) = \frac{1}{d_g} \sum_m |g_{im} - g_{jm}|, \qquad
        D_\epsilon(i, j) = \frac{1}{d_\epsilon} \sum_m (\epsilon_{im} - \epsilon_{jm})^2,

        L_{div} = \exp\Big( -\frac{1}{B^2} \sum_{i=1}^{B} \sum_{j=1}^{B}
                  D_\epsilon(i, j) \, D_g(i, j) \Big)

    over all ``B x B`` pairs (the ``i = j`` terms are 0). Minimising it spreads the generator's
    outputs apart, the more so for noise vectors that are far apart, which counters mode
    collapse. The value lies in ``(0, 1]``; it is 1 when all outputs (or all noises) coincide.

    Parameters
    ----------
    noise
        ``[B, d_eps]`` noise vectors :math:`\epsilon` fed to the generator.
    outputs
        ``[B, ...]`` generator outputs ``g`` (flattened to ``[B, d_g]``).

    Returns
    -------
    Tensor
        0-dim loss in ``(0, 1]``.
    """
    _check_tensor("noise", noise)
    _check_tensor("outputs", outputs)
    if noise.dim() != 2:
        raise ValueError(f"noise must have shape [B, d_eps], got {tuple(noise.shape)}")
    _check_same_batch("noise", noise, "outputs", outputs)
    eps = _flatten_batch("noise", noise)
    g = _flatten_batch("outputs", outputs)
    if eps.shape[1] == 0 or g.shape[1] == 0:
        raise ValueError("noise and outputs need at least one feature per sample")
    d_eps = (eps[:, None, :] - eps[None, :, :]).pow(2).mean(dim=2)  # [B, B]
    d_g = torch.cdist(g.unsqueeze(0), g.unsqueeze(0), p=1.0).squeeze(0) / g.shape[1]  # [B, B]
    return torch.exp(-(d_eps * d_g).mean())


# --------------------------------------------------------------------------------------------
# Distillation towards aggregated targets, chosen by name (``distill.loss``)
# --------------------------------------------------------------------------------------------

#: Smallest target probability whose log is taken (one-hot targets would give ``-inf``).
_MIN_TARGET_PROB = 1e-7


def _centred(z: Tensor) -> Tensor:
    return z - z.mean(dim=1, keepdim=True)


def _target_logits(teacher_probs: Tensor, temperature: float) -> Tensor:
    """``T log p``, centred per row: logits whose softmax at ``T`` is ``p`` (shift removed)."""
    return _centred(temperature * torch.log(teacher_probs.clamp_min(_MIN_TARGET_PROB)))


@DISTILLATION_LOSSES.register("l1-logits")
def l1_logits_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float,
                         reduction: str = "mean") -> Tensor:
    r"""FedMD's consensus loss (Li & Wang 2019): L1 between student and target *logits*.

    .. math:: L_{L1} = \frac{1}{NC}\sum_{n,c} \big|\bar z_{s,nc} - \overline{(T \log p_t)}_{nc}\big|,
              \qquad \bar v = v - \tfrac{1}{C}\textstyle\sum_c v_c,

    i.e. ``torch.nn.L1Loss`` (mean over all entries) between the row-centred student logits and
    the row-centred target logits ``T log p_t``. The targets arrive as probabilities (what every
    aggregation rule returns); with the ``logit-mean`` rule, ``p_t = softmax(mean_k z_k / T)``,
    so ``T log p_t`` is the clients' mean logit up to a per-row constant, which the centring
    removes: this is FedMD's L1 to the averaged logits, made blind to a constant shift of a row
    (to which the softmax is blind too). Probabilities below 1e-7 are raised to 1e-7 before the
    log (one-hot targets of the ``pate`` rule). ``reduction="none"``: the mean over each row's
    ``C`` entries, ``[N]`` (their mean is the ``"mean"`` value).
    """
    _check_logits("student_logits", student_logits)
    _check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_probs("teacher_probs", teacher_probs)
    t = _check_temperature(temperature)
    diff = _centred(student_logits) - _target_logits(teacher_probs, t)
    return _reduce(diff.abs().mean(dim=1), reduction)


@DISTILLATION_LOSSES.register("mse-logits")
def mse_logits_from_probs(student_logits: Tensor, teacher_probs: Tensor, temperature: float,
                          reduction: str = "mean") -> Tensor:
    r"""Mean squared error between row-centred student and target logits (survey eq. 1.1.1's
    logit matching, Ba & Caruana 2014), targets ``T log p_t`` as in :func:`l1_logits_from_probs`:

    .. math:: L_{MSE} = \frac{1}{NC}\sum_{n,c} \big(\bar z_{s,nc} - \overline{(T \log p_t)}_{nc}\big)^2.

    ``reduction="none"``: the mean over each row's ``C`` entries, ``[N]``.
    """
    _check_logits("student_logits", student_logits)
    _check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_probs("teacher_probs", teacher_probs)
    t = _check_temperature(temperature)
    diff = _centred(student_logits) - _target_logits(teacher_probs, t)
    return _reduce(diff.pow(2).mean(dim=1), reduction)


def distillation_loss(name: str) -> DistillationLoss:
    """The distillation loss registered as ``name`` (a ``ValueError`` listing the valid names)."""
    return DISTILLATION_LOSSES.get(name)
