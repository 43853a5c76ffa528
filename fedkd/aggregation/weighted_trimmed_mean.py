"""``weighted-trimmed-mean``: the trimmed mean of the teachers' logits, the rest weighted by their
data sizes.

``trimmed-mean`` (Flower's ``FedTrimmedAvg`` semantics on logits) and ``weighted-logit-mean``
(FedAvg's data-size weights on logits) in one rule. For every sample ``n`` and class ``c``, among
the ``K_n`` teachers valid for ``n``::

    cut      = int(beta * K_n)                      (floor, as in Flower)
    S_{n,c}  = the teachers whose z_{k,n,c} / T ranks cut+1 ... K_n-cut (ascending; ties by
               teacher order)
    m_{n,c}  = sum_{k in S_{n,c}} w_k z_{k,n,c} / T  /  sum_{k in S_{n,c}} w_k
    t_n      = softmax(m_n)

The trim drops, coordinate by coordinate, the values furthest out whoever sent them (under
DP-SGD, the noisiest answers); the weights let the teachers that remain count for their data,
as in FedAvg. ``beta = 0`` gives ``weighted-logit-mean``; equal weights give ``trimmed-mean``.
Not sum-decomposable: the trim needs each teacher's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedkd.aggregation.base import AGGREGATORS, AggregationRule, BoolArray, FloatArray, softmax
from fedkd.config import AggregationConfig

__all__ = ["WeightedTrimmedMeanOptions", "WeightedTrimmedMeanRule"]


@dataclass(frozen=True)
class WeightedTrimmedMeanOptions:
    """``aggregation.weighted-trimmed-mean.*``: the share cut from each end of every coordinate."""

    trim_fraction: float = 0.2


@AGGREGATORS.register("weighted-trimmed-mean")
class WeightedTrimmedMeanRule(AggregationRule):
    """``softmax`` of the coordinate-wise trimmed, ``weights``-weighted mean of ``z_k / T``.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    trim_fraction
        ``beta`` in ``[0, 0.5)``: drop ``int(beta * K_n)`` lowest and highest values per
        coordinate (default: :class:`WeightedTrimmedMeanOptions`).
    """

    Options = WeightedTrimmedMeanOptions
    uses_weights: ClassVar[bool] = True
    requires_weights: ClassVar[bool] = True
    needs_logits = True

    def __init__(self, temperature: float = AggregationConfig.temperature, *,
                 trim_fraction: float = WeightedTrimmedMeanOptions.trim_fraction) -> None:
        super().__init__(temperature)
        if (
            isinstance(trim_fraction, bool)
            or not isinstance(trim_fraction, (int, float))
            or not math.isfinite(trim_fraction)
            or not 0.0 <= trim_fraction < 0.5
        ):
            raise ValueError(f"trim_fraction must be a number in [0, 0.5), got {trim_fraction!r}")
        self.trim_fraction = float(trim_fraction)

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        assert weights is not None  # guaranteed by requires_weights
        k = scaled_logits.shape[0]
        n_valid = mask.sum(axis=0)  # [N]
        cut = np.floor(self.trim_fraction * n_valid).astype(np.int64)
        # invalid entries sort last; valid ones occupy ranks 0 .. K_n - 1 of each coordinate
        order = np.argsort(np.where(mask[..., None], scaled_logits, np.inf), axis=0,
                           kind="stable")  # [K, N, C]
        values = np.take_along_axis(scaled_logits, order, axis=0)
        w = np.take_along_axis(np.broadcast_to(weights[..., None], scaled_logits.shape), order,
                               axis=0)
        rank = np.arange(k)[:, None, None]
        keep = (rank >= cut[None, :, None]) & (rank < (n_valid - cut)[None, :, None])
        kept_w = np.where(keep, w, 0.0)
        total = kept_w.sum(axis=0)  # [N, C]
        if (total <= 0).any():
            raise ValueError("every teacher left after the trim has weight 0 for some "
                             "coordinate: give the teachers positive weights")
        return softmax(np.sum(kept_w * values, axis=0) / total)
