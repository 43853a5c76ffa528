"""Knowledge-distillation losses as pure torch functions.

Every public function here is stateless: it takes tensors (and plain Python hyper-parameters) and
returns a 0-dim loss tensor (or, for the helpers, a tensor of probabilities / relation matrices).
Nothing is detached: if the teacher's tensors must not receive gradients, the caller computes them
under ``torch.no_grad()`` or detaches them.

Equation numbers refer to the knowledge-distillation survey, Moslemi, Briskina, Dang & Li, "A survey
on knowledge distillation: Recent advancements", Machine Learning with Applications, 2024,
doi:10.1016/j.mlwa.2024.100605 (sections 2.1-2.3, 4.1.3, 4.2.1 and 4.4.2, whose
equations are numbered (1.1.x), (1.2.x), (1.3.x), (3.1.3.x), (3.2.1.x) and (3.4.2.x)). The one loss
that is not in the survey, FedGen's generator diversity loss, follows Zhu, Hong & Zhou, "Data-Free
Knowledge Distillation for Heterogeneous Federated Learning", ICML 2021, and its official code.

Shape conventions
-----------------
* ``N``: batch size (number of samples), ``C``: number of classes, ``M``: number of teachers.
* logits and probabilities are ``[N, C]``; multi-teacher outputs are ``[M, N, C]``.
* labels are either class indices ``[N]`` (any integer dtype) or target distributions ``[N, C]``.
* features / activations are ``[N, ...]``; where a loss needs vectors, the non-batch dimensions
  are flattened.

Reductions
----------
Per-sample quantities are averaged over the batch ("batchmean"), so a loss does not grow with the
batch size. Invalid inputs (shape mismatches, non-positive temperatures, mixing weights outside
their range, probabilities that are not distributions...) raise :class:`ValueError`.
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
    "response_kd_loss",
    "feature_loss",
    "feature_kd_loss",
    "pairwise_distance_matrix",
    "pairwise_cosine_matrix",
    "relation_loss",
    "relation_kd_loss",
    "attention_map",
    "activation_loss",
    "information_entropy",
    "data_free_kd_loss",
    "multi_teacher_kd_loss",
    "diversity_loss",
    "l1_logits_from_probs",
    "mse_logits_from_probs",
    "DISTILLATION_LOSSES",
    "DistillationLoss",
]

TeacherFormat = Literal["logits", "probs"]
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


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number in [0, 1], got {alpha!r}") from err
    if not 0.0 <= a <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {alpha!r}")
    return a


def _check_weight(name: str, weight: float) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a non-negative real number, got {weight!r}") from err
    if not math.isfinite(w) or w < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {weight!r}")
    return w


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


def _check_teacher_format(teacher_format: str) -> None:
    if teacher_format not in ("logits", "probs"):
        raise ValueError(f"teacher_format must be 'logits' or 'probs', got {teacher_format!r}")


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
# 2.1 Response-based KD: eqs. (1.1.1)-(1.1.5)
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


def _teacher_kl(
    student_logits: Tensor, teacher: Tensor, temperature: float, teacher_format: str
) -> Tensor:
    _check_teacher_format(teacher_format)
    if teacher_format == "logits":
        return kd_kl(student_logits, teacher, temperature)
    return kd_kl_from_probs(student_logits, teacher, temperature)


def response_kd_loss(
    student_logits: Tensor,
    teacher: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    *,
    teacher_format: TeacherFormat = "logits",
) -> Tensor:
    r"""Total response-based KD loss, survey eq. (1.1.5) (Hinton et al., 2015).

    .. math:: L_{ResponseKD} = \alpha L_{CE} + (1 - \alpha) L_{KL}

    with :math:`L_{CE}` from eq. (1.1.4) (:func:`cross_entropy`, student at ``T = 1``) and
    :math:`L_{KL}` from eq. (1.1.3) (:func:`kd_kl` or :func:`kd_kl_from_probs`, at ``T``).
    ``alpha = 1`` is pure supervised training, ``alpha = 0`` pure distillation.

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.
    teacher
        ``[N, C]`` teacher logits, or teacher probabilities if ``teacher_format="probs"``.
    labels
        ``[N]`` class indices or ``[N, C]`` target distributions.
    alpha
        Weight of the CE term, in ``[0, 1]``.
    temperature
        ``T > 0`` of the KL term.
    teacher_format
        ``"logits"`` (default) or ``"probs"`` (see :func:`kd_kl_from_probs`).

    Returns
    -------
    Tensor
        0-dim loss.
    """
    a = _check_alpha(alpha)
    kl = _teacher_kl(student_logits, teacher, temperature, teacher_format)
    return a * cross_entropy(student_logits, labels) + (1.0 - a) * kl


# ---------------------------------------------------------------------------------------------
# 2.2 Feature-based KD: eqs. (1.2.1)-(1.2.2)
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


def feature_kd_loss(
    student_logits: Tensor,
    student_features: Tensor,
    teacher_features: Tensor,
    labels: Tensor,
    alpha: float,
) -> Tensor:
    r"""Total feature-based KD loss, survey eq. (1.2.2).

    .. math:: L_{KD} = \alpha L_{CE} + (1 - \alpha) L_{Feature}

    with :math:`L_{CE}` from eq. (1.1.4) and :math:`L_{Feature}` from eq. (1.2.1)
    (:func:`feature_loss`).

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.
    student_features, teacher_features
        ``[N, ...]`` features of identical shape.
    labels
        ``[N]`` class indices or ``[N, C]`` target distributions.
    alpha
        Weight of the CE term, in ``[0, 1]``.

    Returns
    -------
    Tensor
        0-dim loss.
    """
    a = _check_alpha(alpha)
    _check_logits("student_logits", student_logits)
    _check_same_batch("student_logits", student_logits, "student_features", student_features)
    feat = feature_loss(student_features, teacher_features)
    return a * cross_entropy(student_logits, labels) + (1.0 - a) * feat


# ---------------------------------------------------------------------------------------------
# 2.3 Relation-based KD: eqs. (1.3.1)-(1.3.4)
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


def relation_kd_loss(
    student_logits: Tensor,
    student_features: Tensor,
    teacher_features: Tensor,
    labels: Tensor,
    alpha: float,
    kind: RelationKind = "distance",
) -> Tensor:
    r"""Total relation-based KD loss, survey eq. (1.3.4).

    .. math:: L_{KD} = \alpha L_{CE} + (1 - \alpha) L_{Relation}

    with :math:`L_{CE}` from eq. (1.1.4) and :math:`L_{Relation}` from eq. (1.3.3)
    (:func:`relation_loss`).

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.
    student_features, teacher_features
        ``[N, ...]`` features (dimensions may differ between student and teacher).
    labels
        ``[N]`` class indices or ``[N, C]`` target distributions.
    alpha
        Weight of the CE term, in ``[0, 1]``.
    kind
        ``"distance"`` (eq. 1.3.1) or ``"cosine"`` (eq. 1.3.2).

    Returns
    -------
    Tensor
        0-dim loss.
    """
    a = _check_alpha(alpha)
    _check_logits("student_logits", student_logits)
    _check_same_batch("student_logits", student_logits, "student_features", student_features)
    rel = relation_loss(student_features, teacher_features, kind)
    return a * cross_entropy(student_logits, labels) + (1.0 - a) * rel


# ---------------------------------------------------------------------------------------------
# 4.1.3 Attention-based KD: eq. (3.1.3.1)
# ---------------------------------------------------------------------------------------------


def attention_map(activations: Tensor, p: float = 2.0) -> Tensor:
    r"""Attention mapping ``f`` of survey eq. (3.1.3.1) (Zagoruyko & Komodakis, 2017).

    .. math:: f(A) = \frac{Q}{\|Q\|_2}, \qquad Q_l = \sum_{c} |A_{c,l}|^p

    i.e. the channel-wise sum of ``|A|^p`` at every spatial location ``l``, flattened and
    L2-normalised per sample (the normalisation makes maps of student and teacher comparable
    whatever their channel counts and scales).

    Parameters
    ----------
    activations
        ``[N, C, *spatial]`` activations (channels on axis 1). A ``[N, L]`` tensor is treated as
        one channel over ``L`` locations.
    p
        Exponent ``> 0`` (2 in the original paper).

    Returns
    -------
    Tensor
        ``[N, L]`` attention maps, ``L = prod(spatial)``; each row has unit L2 norm (or is 0).
    """
    _check_tensor("activations", activations)
    if activations.dim() < 2:
        raise ValueError(
            f"activations must have shape [N, C, ...] or [N, L], got {tuple(activations.shape)}"
        )
    if not activations.is_floating_point():
        raise ValueError(f"activations must be floating point, got dtype {activations.dtype}")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"p must be finite and > 0, got {p!r}")
    a = activations.unsqueeze(1) if activations.dim() == 2 else activations
    q = a.abs().pow(p).sum(dim=1).reshape(a.shape[0], -1)
    return F.normalize(q, p=2.0, dim=1)


def activation_loss(
    student_activations: Tensor,
    teacher_activations: Tensor,
    mapping: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Activation-based attention-transfer loss, survey eq. (3.1.3.1).

    .. math:: L_{activation} = \frac{1}{N} \sum_{i=1}^{N} \| f(A_T^i) - f(A_S^i) \|_2^2

    Here (as in the survey) ``i`` runs over the ``N`` **spatial locations** of the attention map
    and :math:`A^i` is the activation at location ``i``; the per-location squared differences
    are averaged over locations and then over the samples of the batch. ``f`` is
    :func:`attention_map` with ``p = 2`` unless ``mapping`` is given.

    Parameters
    ----------
    student_activations, teacher_activations
        ``[B, ...]`` activations with the same batch size; with the default mapping they must
        share their spatial size (channel counts may differ).
    mapping
        The attention mapping ``f``: a function from ``[B, ...]`` to ``[B, ...]`` maps of equal
        shape for student and teacher (e.g. ``functools.partial(attention_map, p=4)`` or
        ``lambda a: a.flatten(1)`` for raw activations). Defaults to :func:`attention_map`.

    Returns
    -------
    Tensor
        0-dim, non-negative.
    """
    _check_tensor("student_activations", student_activations)
    _check_tensor("teacher_activations", teacher_activations)
    _check_same_batch(
        "student_activations", student_activations, "teacher_activations", teacher_activations
    )
    f = attention_map if mapping is None else mapping
    fs = _flatten_batch("f(student_activations)", f(student_activations))
    ft = _flatten_batch("f(teacher_activations)", f(teacher_activations))
    _check_same_shape("f(student_activations)", fs, "f(teacher_activations)", ft)
    if fs.shape[1] == 0:
        raise ValueError("the attention maps have no locations (N = 0 in eq. 3.1.3.1)")
    return (ft - fs).pow(2).mean(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# 4.2.1 Data-free KD: eqs. (3.2.1.1)-(3.2.1.2)
# ---------------------------------------------------------------------------------------------


def information_entropy(student_logits: Tensor) -> Tensor:
    r"""Information-entropy loss, survey eq. (3.2.1.1) (data-free KD, Lopes et al., 2017).

    .. math:: L_{information} = -\frac{1}{N} \sum_{i=1}^{N} p_s^i \log(p_s^i),
              \qquad p_s^i = \sigma(z_s^i)

    read with ``i`` indexing the ``N`` samples and :math:`p_s^i \log p_s^i` the inner product over
    the classes, i.e. the **mean Shannon entropy** :math:`H(p_s^i) = -\sum_c p^i_c \log p^i_c`
    of the student's predictions (temperature 1).

    Sign convention: exactly as written, with the leading minus, so the value is ``>= 0`` (0 for
    one-hot predictions, ``log C`` for uniform ones). It is meant to be **minimised** with a
    positive weight: the gradient makes each prediction more confident, pushing the softmax
    outputs towards one-hot vectors. (This is *not* DAFL's class-balance term, which maximises
    the entropy of the batch-averaged prediction.)

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.

    Returns
    -------
    Tensor
        0-dim, in ``[0, log C]``.
    """
    _check_logits("student_logits", student_logits)
    log_p = F.log_softmax(student_logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def data_free_kd_loss(
    student_logits: Tensor,
    student_activations: Tensor,
    teacher_activations: Tensor,
    labels: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    *,
    mapping: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Total data-free distillation loss, survey eq. (3.2.1.2).

    .. math:: L_{KD} = \alpha L_{CE} + \beta L_{activation} + \gamma L_{information}

    combining eq. (1.1.4) (:func:`cross_entropy`), eq. (3.1.3.1) (:func:`activation_loss`) and
    eq. (3.2.1.1) (:func:`information_entropy`). On synthetic inputs the labels are usually the
    teacher's predicted classes. The three weights are independent (not a convex combination).

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.
    student_activations, teacher_activations
        ``[N, ...]`` activations passed to :func:`activation_loss`.
    labels
        ``[N]`` class indices or ``[N, C]`` target distributions.
    alpha, beta, gamma
        Non-negative, finite weights of the CE, activation and entropy terms.
    mapping
        Attention mapping ``f`` for :func:`activation_loss` (default :func:`attention_map`).

    Returns
    -------
    Tensor
        0-dim loss.
    """
    a = _check_weight("alpha", alpha)
    b = _check_weight("beta", beta)
    g = _check_weight("gamma", gamma)
    _check_logits("student_logits", student_logits)
    _check_same_batch("student_logits", student_logits, "student_activations", student_activations)
    act = activation_loss(student_activations, teacher_activations, mapping)
    return (
        a * cross_entropy(student_logits, labels)
        + b * act
        + g * information_entropy(student_logits)
    )


# ---------------------------------------------------------------------------------------------
# 4.4.2 Multi-teacher KD: eq. (3.4.2.1)
# ---------------------------------------------------------------------------------------------


def multi_teacher_kd_loss(
    student_logits: Tensor,
    teachers: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    *,
    teacher_format: TeacherFormat = "logits",
) -> Tensor:
    r"""Multi-teacher KD loss, survey eq. (3.4.2.1) (You et al., 2017).

    .. math:: L_{MTKD} = \alpha L_{CE} + (1 - \alpha) \frac{1}{M} \sum_{m=1}^{M} L_{KL}^{(m)},
              \qquad L_{KL}^{(m)} = T^2 \, KL\big(p_{t_m}(T) \,\|\, p_s(T)\big)

    i.e. the mean over the ``M`` teachers of the eq. (1.1.3) loss, each batch-averaged.

    Note: the survey's prose says the student learns "from the average of the softened outputs",
    which is :math:`KL(\bar p_t \| p_s)` with :math:`\bar p_t = \frac{1}{M}\sum_m p_{t_m}`. The
    equation implemented here differs from that by
    :math:`T^2 [H(\bar p_t) - \frac{1}{M}\sum_m H(p_{t_m})] \ge 0`, which does not depend on the
    student: both give the **same gradient** w.r.t. the student, only the reported value differs.

    Parameters
    ----------
    student_logits
        ``[N, C]`` student logits.
    teachers
        ``[M, N, C]`` teacher logits, or probabilities if ``teacher_format="probs"``.
    labels
        ``[N]`` class indices or ``[N, C]`` target distributions.
    alpha
        Weight of the CE term, in ``[0, 1]``.
    temperature
        ``T > 0``.
    teacher_format
        ``"logits"`` (default) or ``"probs"`` (probabilities taken as :math:`p_{t_m}(T)`).

    Returns
    -------
    Tensor
        0-dim loss.
    """
    a = _check_alpha(alpha)
    _check_teacher_format(teacher_format)
    _check_logits("student_logits", student_logits)
    _check_tensor("teachers", teachers)
    if teachers.dim() != 3:
        raise ValueError(f"teachers must have shape [M, N, C], got {tuple(teachers.shape)}")
    if teachers.shape[0] == 0:
        raise ValueError("teachers has no teacher (M = 0)")
    if teachers.shape[1:] != student_logits.shape:
        raise ValueError(
            f"teachers must have shape [M, N, C] = [M, {student_logits.shape[0]}, "
            f"{student_logits.shape[1]}] to match student_logits, got {tuple(teachers.shape)}"
        )
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1).unsqueeze(0)  # [1, N, C]
    if teacher_format == "logits":
        if not teachers.is_floating_point():
            raise ValueError(f"teachers must be floating point, got dtype {teachers.dtype}")
        log_p_t = F.log_softmax(teachers / t, dim=2)
        kl = _kl_rows(log_p_t.exp(), log_p_t, log_p_s)  # [M, N]
    else:
        _check_probs("teachers", teachers)
        kl = _kl_rows(teachers, None, log_p_s)
    kd = (t * t) * kl.mean(dim=1).mean()  # batchmean per teacher, then mean over teachers
    return a * cross_entropy(student_logits, labels) + (1.0 - a) * kd


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
