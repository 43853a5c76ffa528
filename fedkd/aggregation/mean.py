"""``mean``: the average of the teachers' softened probabilities.

Source: the knowledge-distillation survey's multi-teacher equation (3.4.2.1), the mean of the
softened teacher distributions::

    t_n = (1 / K_n) * sum_{k valid for n} softmax(z_{k,n} / T)

where ``K_n`` is the number of valid teachers of sample ``n`` (all ``K`` without a mask).
Averaging raw logits first and then applying the softmax is the FedMD/FedDF variant; it is not
this rule (``median`` and ``trimmed-mean`` work on logits).
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

__all__ = ["MeanRule"]


@AGGREGATORS.register("mean")
class MeanRule(AggregationRule):
    """Mean of ``softmax(z_k / T)`` over the valid teachers (survey eq. 3.4.2.1).

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    sum_decomposable = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        probs = softmax(scaled_logits)
        return masked_average(probs, np.ones(mask.shape), mask)
