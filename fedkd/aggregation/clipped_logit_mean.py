"""``clipped-logit-mean``: ``logit-mean`` with each teacher's answer clipped to the median length.

A robust mean in the spirit of norm bounding (Sun et al., "Can You Really Backdoor Federated
Learning?", 2019: each update clipped to a bound) and centred clipping (Karimireddy, He & Jaggi,
ICML 2021), applied per sample to the teachers' logit rows. With ``c_{k,n}`` teacher ``k``'s
softened logits on sample ``n`` centred over the classes (the softmax ignores the shift)::

    c_{k,n} = z_{k,n} / T - mean_c(z_{k,n} / T)
    r_n     = median_{k valid for n} ||c_{k,n}||_2
    t_n     = softmax( (1 / K_n) * sum_{k valid for n} c_{k,n} * min(1, r_n / ||c_{k,n}||_2) )

A teacher keeps its direction (a client that knows a class still votes for it, which a
coordinate-wise trim cuts as an outlier) but cannot outvote the others by the length of its
answer: under DP-SGD a client with a handful of examples trains on noise and answers with rows
twice as long as everyone else's, which the plain mean follows. With teachers of equal length
the rule is ``logit-mean``. The median needs every teacher's row, so the rule is not
sum-decomposable (no secure aggregation).
"""

from __future__ import annotations

import numpy as np

from fedkd.aggregation.base import (AGGREGATORS, AggregationRule, BoolArray, FloatArray,
                                    masked_average, softmax)

__all__ = ["ClippedLogitMeanRule"]


@AGGREGATORS.register("clipped-logit-mean")
class ClippedLogitMeanRule(AggregationRule):
    """``softmax`` of the mean of the centred ``z_k / T``, each row clipped to the median length
    of the sample's valid teachers.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    needs_logits = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        centred = scaled_logits - scaled_logits.mean(axis=2, keepdims=True)
        length = np.linalg.norm(centred, axis=2)  # [K, N]
        bound = np.nanmedian(np.where(mask, length, np.nan), axis=0)  # [N]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(length > bound[None], bound[None] / length, 1.0)
        return softmax(masked_average(centred * scale[..., None], np.ones(mask.shape), mask))
