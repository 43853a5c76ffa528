"""``median``: softmax of the coordinate-wise median of the teachers' softened logits.

Sources: FedRAD's "medlogits" (arXiv 2112.01405, its code) and Flower's ``FedMedian`` (the
coordinate-wise median of same-shape arrays, here the logits on a shared index set)::

    t_n = softmax( median_{k valid for n} (z_{k,n} / T) )      (median per class coordinate)

With an even number of valid teachers the median is the mean of the two middle values
(``numpy.median``). Robust to a minority of poisoned teachers: fewer than half of them cannot
move any coordinate outside the range of the honest values.
"""

from __future__ import annotations

import numpy as np

from fedkd.aggregation.base import AGGREGATORS, AggregationRule, BoolArray, FloatArray, softmax

__all__ = ["MedianRule"]


@AGGREGATORS.register("median")
class MedianRule(AggregationRule):
    """``softmax`` of the coordinate-wise median over valid teachers of ``z_k / T``.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    """

    needs_logits = True

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        if mask.all():
            med = np.median(scaled_logits, axis=0)
        else:
            med = np.nanmedian(np.where(mask[..., None], scaled_logits, np.nan), axis=0)
        return softmax(med)
