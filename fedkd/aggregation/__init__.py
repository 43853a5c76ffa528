"""Multi-teacher aggregation rules: teacher logits ``[K, N, C]`` -> soft targets ``[N, C]``.

One file per rule; each registers itself in :data:`AGGREGATORS`. Build one by name with
:func:`build_aggregator` and call it: ``rule(logits, weights=..., mask=...)``.

| name | formula (``p_k = softmax(z_k / T)``) | options | file |
|---|---|---|---|
| ``mean`` | mean of ``p_k`` (survey eq. 3.4.2.1) | ``temperature`` | ``mean.py`` |
| ``weighted`` | ``sum w p / sum w``; weights ``[K]`` or ``[K, N]`` required | ``temperature`` | ``weighted.py`` |
| ``classwise`` | per class ``c``: ``sum w_c p_c / sum w_c``, renormalised; weights ``[K]`` or ``[K, C]`` required | ``temperature`` | ``classwise.py`` |
| ``entropy`` | EBKD: ``w = (1 - H_k / sum H) / (K - 1)`` | ``temperature`` | ``entropy.py`` |
| ``confidence`` | ``w = max_c p_k`` normalised | ``temperature`` | ``confidence.py`` |
| ``era`` | DS-FL: ``softmax(mean p / T_era)`` or ``pbar**beta`` normalised | ``temperature``, ``era_temperature``, ``mode``, ``beta`` | ``era.py`` |
| ``median`` | ``softmax(median z_k / T)`` (FedRAD, FedMedian) | ``temperature`` | ``median.py`` |
| ``trimmed-mean`` | ``softmax(trimmed mean z_k / T)`` (FedTrimmedAvg) | ``temperature``, ``trim_fraction`` | ``trimmed_mean.py`` |
| ``pate`` | PATE noisy vote (GNMax, Confident-GNMax), one-hot; ``aggregate(..., rng=)`` | ``sigma``, ``threshold``, ``sigma_threshold`` | ``pate.py`` |

Only ``weighted`` and ``classwise`` take ``weights`` (the others raise if given them); every
rule honours ``mask`` ``[K, N]``. :func:`label_weights` turns per-label counts ``[K, C]`` into
``[K, N]`` weights; ``rule.weights_from_counts(counts, labels)`` gives whichever form a rule takes.
"""

from __future__ import annotations

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    Targets,
    build_aggregator,
    label_weights,
)
from fedkd.aggregation import (  # noqa: F401  (each import registers its rule)
    classwise,
    confidence,
    entropy,
    era,
    mean,
    median,
    pate,
    trimmed_mean,
    weighted,
)

__all__ = ["AGGREGATORS", "AggregationRule", "Targets", "build_aggregator", "label_weights"]
