"""``confidence``: per-sample teacher weights from the teacher's top probability.

A common label-free heuristic (fedkd)::

    p_{k,n}  = softmax(z_{k,n} / T)
    w_{k,n}  = max_c p_{k,n,c} / sum_j max_c p_{j,n,c}
    t_n      = sum_k w_{k,n} p_{k,n}

with the sums over the teachers valid for sample ``n``. Since ``max_c p >= 1 / C > 0`` the
normaliser is always positive.
"""

from __future__ import annotations

import numpy as np

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    BoolArray,
    FloatArray,
    masked_average,
    softmax,
)

__all__ = ["ConfidenceRule"]


@AGGREGATORS.register("confidence")
class ConfidenceRule(AggregationRule):
    """Mean of ``softmax(z_k / T)`` weighted by each teacher's max probability on the sample.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        probs = softmax(scaled_logits)
        return masked_average(probs, np.max(probs, axis=-1), mask)
