"""Multi-teacher aggregation rules: teacher logits ``[K, N, C]`` -> soft targets ``[N, C]``.

One file per rule; each registers itself in :data:`AGGREGATORS` (and its options, if any, as the
config section ``aggregation.<rule>``). This package imports every module in it (a package
scan), so a new rule is one new file: nothing here lists it. Build the configured rule with
:func:`build_rule` (``cfg``), or any rule by name with :func:`build_aggregator`, and call it:
``rule(logits, weights=..., mask=...)``.

| name | formula (``p_k = softmax(z_k / T)``) | options (``aggregation.<rule>.*``) | file |
|---|---|---|---|
| ``mean`` | mean of ``p_k`` (survey eq. 3.4.2.1) | | ``mean.py`` |
| ``weighted`` | ``sum w p / sum w``; weights ``[K]`` or ``[K, N]`` required | | ``weighted.py`` |
| ``classwise`` | per class ``c``: ``sum w_c p_c / sum w_c``, renormalised; weights ``[K]`` or ``[K, C]`` required | | ``classwise.py`` |
| ``entropy`` | EBKD: ``w = (1 - H_k / sum H) / (K - 1)`` | | ``entropy.py`` |
| ``confidence`` | ``w = max_c p_k`` normalised | | ``confidence.py`` |
| ``era`` | DS-FL: ``softmax(mean p / T_era)`` or ``pbar**beta`` normalised | ``era-temperature``, ``mode``, ``beta`` | ``era.py`` |
| ``median`` | ``softmax(median z_k / T)`` (FedRAD, FedMedian) | | ``median.py`` |
| ``trimmed-mean`` | ``softmax(trimmed mean z_k / T)`` (FedTrimmedAvg) | ``trim-fraction`` | ``trimmed_mean.py`` |
| ``pate`` | PATE noisy vote (GNMax, Confident-GNMax), one-hot; ``aggregate(..., rng=)`` | ``sigma``, ``threshold``, ``sigma-threshold`` | ``pate.py`` |

Every rule takes ``temperature`` (``aggregation.temperature``). Only ``weighted`` and
``classwise`` take ``weights`` (the others raise if given them); every rule honours ``mask``
``[K, N]``. :func:`label_weights` turns per-label counts ``[K, C]`` into ``[K, N]`` weights;
``rule.weights_from_counts(counts, labels)`` gives whichever form a rule takes. Rules declare
their capabilities as class attributes: ``needs_counts``, ``needs_logits``,
``client_level_privacy``, ``sum_decomposable``.
"""

from __future__ import annotations

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    Targets,
    build_aggregator,
    build_rule,
    label_weights,
)
from fedkd.registry import import_submodules

import_submodules(__name__)  # each rule module registers itself

__all__ = ["AGGREGATORS", "AggregationRule", "Targets", "build_aggregator", "build_rule",
           "label_weights"]
