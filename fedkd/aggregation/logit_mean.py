"""``logit-mean``: the softmax of the teachers' mean logit, FedMD's consensus.

Source: Li & Wang, "FedMD: Heterogenous Federated Learning via Model Distillation" (2019,
arXiv 1910.03581), §2: the server averages the clients' class scores on each public sample,
``f_bar(x) = (1 / K) sum_k f_k(x)``, and the clients then fit that average. As soft targets::

    t_n = softmax( (1 / K_n) * sum_{k valid for n} z_{k,n} / T )

where ``K_n`` is the number of valid teachers of sample ``n``. The mean is taken before the
softmax (the FedMD/FedDF variant), unlike ``mean``, which averages probabilities (the survey's
eq. 3.4.2.1). Averaging is a sum over teachers, so the rule is sum-decomposable; with
``distill.loss = "l1-logits"`` a student fits the mean logit itself, as FedMD does.
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

__all__ = ["LogitMeanRule"]


@AGGREGATORS.register("logit-mean")
class LogitMeanRule(AggregationRule):
    """``softmax`` of the mean over the valid teachers of ``z_k / T`` (FedMD's consensus).

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    needs_logits = True
    sum_decomposable = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        return softmax(masked_average(scaled_logits, np.ones(mask.shape), mask))

    def _teacher_values(self, scaled_logits: FloatArray) -> FloatArray:
        return scaled_logits

    def _finish(self, average: FloatArray, weighted: BoolArray) -> FloatArray:
        return softmax(average)
