"""Multi-teacher aggregation rules: teacher logits ``[K, N, C]`` -> soft targets ``[N, C]``.

One file per rule; each registers itself in :data:`AGGREGATORS` (and its options, if any, as the
config section ``aggregation.<rule>``). This package imports every module in it (a package
scan), so a new rule is one new file: nothing here lists it. Build the configured rule with
:func:`build_rule` (``cfg``), or any rule by name with :func:`build_aggregator`, and call it:
``rule(logits, weights=..., mask=...)``.

The rules, their formulas, options (section ``aggregation.<rule>``) and capabilities are listed
in ``docs/configuration.md``, generated from this registry (``python -m
fedkd.experiments.configdoc --write docs/configuration.md``). Every rule softens the teachers
first (``p_k = softmax(z_k / T)``, or ``z_k / T`` for the rules on logits).

Every rule takes ``temperature`` (``aggregation.temperature``). Only ``weighted`` and
``classwise`` take ``weights`` (the others raise if given them); every rule honours ``mask``
``[K, N]``. :func:`label_weights` turns per-label counts ``[K, C]`` into ``[K, N]`` weights;
``rule.weights_from_counts(counts, labels)`` gives whichever form a rule takes. Rules declare
their capabilities as class attributes: ``needs_counts``, ``needs_logits``,
``client_level_privacy``, ``sum_decomposable``, ``data_dependent_privacy``.
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
