"""``weighted-logit-mean``: the softmax of the teachers' mean logit weighted by their data sizes.

FedAvg's weighting (McMahan et al. 2017: the new global weights are the clients' weights averaged
with weights n_k / n) applied to the function the clients compute on the announced samples
instead of to their weights::

    t_n = softmax( sum_{k valid for n} w_k z_{k,n} / T  /  sum_{k valid for n} w_k )

with ``w_k`` each teacher's weight, ``[K]`` (its data size, ``num-examples``, which every reply
carries and FedAvg weighs by too) or ``[K, N]``. Equal weights give ``logit-mean``. A client
with little data, whose model moved least reliably from the student (and under DP-SGD most
noisily: the same noise over fewer examples), counts for its share of the data, not one
``K``-th. Weighted sums over teachers: the rule runs on securely aggregated sums (each client
adds ``w_k z_k`` and ``w_k``; its weight clipped to ``secagg.max-weight``).
"""

from __future__ import annotations

from typing import ClassVar

from fedkd.aggregation.base import AGGREGATORS, BoolArray, FloatArray, masked_average, softmax
from fedkd.aggregation.logit_mean import LogitMeanRule

__all__ = ["WeightedLogitMeanRule"]


@AGGREGATORS.register("weighted-logit-mean")
class WeightedLogitMeanRule(LogitMeanRule):
    """``softmax`` of the ``weights``-weighted mean of ``z_k / T`` over the valid teachers:
    ``logit-mean`` with weights (its teacher values and finish, for secure sums, are the same).

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    uses_weights: ClassVar[bool] = True
    requires_weights: ClassVar[bool] = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        assert weights is not None  # guaranteed by requires_weights
        return softmax(masked_average(scaled_logits, weights, mask))
