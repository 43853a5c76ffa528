r"""Per-sample certainty of a teacher on proxy samples, shared by ``dsfl`` and ``student-down``.

FedAUX (Sattler et al. 2021) sends one score per proxy sample with the logits, and the server
weighs each teacher's answer by it; Selective-FD's answer mask is the hard version. Here the score
is the client's *label support* of the sample, judged by a model that knows every class (the
student it was sent, or its personal model before local training, which carries the last
round's consensus):

.. math:: c_k(x) = \sum_c p(c \mid x)\, \min\big(1, C\,\pi_k(c)\big) \in [0, 1],

with :math:`\pi_k` the client's label shares (a class it holds at least its uniform share of
counts fully, a rarer one in proportion, an unseen one not at all). The server leaves a teacher
out of the samples it scores below a threshold and drops samples no teacher is certain of. The
score reads the client's label histogram, which no privacy mechanism here noises per sample, so
the algorithms refuse it under ``privacy.*`` and under secure aggregation (which hides each
teacher's scores), with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.protocol import ArraySpec

if TYPE_CHECKING:
    from fedkd.algorithms.public_set import ProxyAnswers, PublicSetAlgorithm

#: Name of the per-sample certainty array in a reply.
CERTAINTY = "certainty"
#: The certainty scores an algorithm can send: none, or label support.
CERTAINTIES = ("none", "support")


def check_certainty(section: str, certainty: str, threshold: float, cfg: RunConfig) -> None:
    """Refuse an unknown score, a threshold outside [0, 1], and certainty under privacy or
    secure aggregation (raises :class:`~fedkd.errors.ConfigError` with the reason)."""
    if certainty not in CERTAINTIES:
        raise ConfigError(f"{section}.certainty must be one of {', '.join(CERTAINTIES)}, "
                          f"got {certainty!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{section}.certainty-threshold must be in [0, 1], got {threshold!r}")
    if certainty == "none":
        return
    if cfg.privacy.enabled:
        raise ConfigError(
            f"{section}.certainty reads the client's label histogram, which no privacy "
            "mechanism here noises per sample: turn certainty off under privacy.* (the "
            "classwise rule's label counts are noised and charged)")
    if cfg.aggregation.secure:
        raise ConfigError(f"{section}.certainty needs each teacher's scores per sample, which "
                          "secure aggregation hides: turn one of them off")
    from fedkd.aggregation import AGGREGATORS

    if AGGREGATORS.get(cfg.aggregation.rule).client_level_privacy:
        raise ConfigError(
            f"{section}.certainty decides, without noise, which samples the "
            f"{cfg.aggregation.rule} rule answers from each client's label histogram, which its "
            "client-level privacy analysis does not cover: use another rule or no certainty")


def certainty_spec(n: int) -> dict[str, ArraySpec]:
    """The reply contract of a certainty per announced sample: [n] float32 in [0, 1]."""
    return {CERTAINTY: ArraySpec(shape=(n,), dtype="float32", low=0.0, high=1.0)}


def support_certainty(probs: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    r"""Per-sample certainty from label support: :math:`c(x) = \sum_c p_c(x) \min(1, C \pi_c)`.

    ``probs`` [n, C] are predicted probabilities, ``label_counts`` [C] the client's training
    label histogram (:math:`\pi` = counts / total). Returns [n] in [0, 1] (float32).
    """
    counts = np.asarray(label_counts, np.float64)
    if counts.ndim != 1 or counts.shape[0] != probs.shape[1] or (counts < 0).any():
        raise ValueError(f"label counts of shape {counts.shape} for {probs.shape[1]} classes")
    total = counts.sum()
    support = (np.minimum(1.0, len(counts) * counts / total) if total > 0
               else np.zeros_like(counts))
    return np.clip(np.asarray(probs, np.float64) @ support, 0.0, 1.0).astype(np.float32)


def client_certainty(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What a client sends: :func:`support_certainty` of a general model's ``logits`` [n, C] on
    the announced samples, for its training ``labels``."""
    z = np.asarray(logits, np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return support_certainty(probs, np.bincount(labels, minlength=z.shape[1]))


def answered_targets(algorithm: PublicSetAlgorithm, asked: ProxyAnswers,
                     threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The public indices the round distils on and their targets [n, C]: the algorithm's rule
    on every sample it answered (``threshold`` None: no certainty), or on each sample over the
    teachers whose certainty reaches ``threshold`` (samples nobody is certain of are dropped)."""
    if threshold is None:
        targets = algorithm.teacher_targets(asked)
        return asked.indices[targets.answered], targets.probs[targets.answered]
    certain = np.stack([r.arrays[CERTAINTY] for r in asked.replies]) >= threshold  # [K, n]
    kept = certain.any(axis=0)
    if not kept.any():
        return asked.indices[:0], np.zeros((0, algorithm.num_classes), np.float32)
    logits = asked.logits[:, kept]
    weights = algorithm.teacher_weights(asked.replies, logits)
    targets = algorithm.aggregate_teachers(algorithm.rule, logits, algorithm._rng,
                                           weights=weights, mask=certain[:, kept])
    return asked.indices[kept][targets.answered], targets.probs[targets.answered]
