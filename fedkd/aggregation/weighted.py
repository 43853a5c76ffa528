"""``weighted``: a weighted average of the teachers' softened probabilities.

Sources: FedZGE (per-label counts), FedFTG and FedGen (label-count weighting of teachers)::

    t_n = sum_k w_{k,n} p_{k,n} / sum_k w_{k,n},    p_{k,n} = softmax(z_{k,n} / T)

with the sums over the teachers valid for sample ``n``. ``w`` comes from the call's ``weights``:
``[K]`` (e.g. each client's data size ``n_k``, the same for every sample) or ``[K, N]`` (per
teacher per sample, e.g. :func:`fedkd.aggregation.label_weights` from per-label counts, which
gives ``w_{k,n} = n_{k,y_n}``; normalising over ``k`` yields ``n_{k,y_n} / sum_j n_{j,y_n}``).

This is the only rule that takes weights, and it requires them. Counts are sensitive: noise
them before they leave a client. A teacher with weight 0 for a sample is equivalent to masking
it out; a sample whose valid teachers' weights sum to 0 is an error.
"""

from __future__ import annotations

from typing import ClassVar

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    BoolArray,
    FloatArray,
    masked_average,
    softmax,
)

__all__ = ["WeightedRule"]


@AGGREGATORS.register("weighted")
class WeightedRule(AggregationRule):
    """Weighted mean of ``softmax(z_k / T)``; ``weights`` (``[K]`` or ``[K, N]``) are required.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    uses_weights: ClassVar[bool] = True
    requires_weights: ClassVar[bool] = True
    needs_counts = True
    sum_decomposable = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        assert weights is not None  # guaranteed by requires_weights
        return masked_average(softmax(scaled_logits), weights, mask)
