"""``trimmed-mean``: softmax of the coordinate-wise trimmed mean of the teachers' softened logits.

Source: Flower 1.42 ``FedTrimmedAvg`` semantics (``_trim_mean``, after ``scipy.stats.trim_mean``),
applied to logits on a shared index set. For every sample ``n`` and class ``c``, among the
``K_n`` teachers valid for ``n``::

    cut      = int(beta * K_n)                     (floor, as in Flower)
    m_{n,c}  = mean of the values z_{k,n,c} / T ranked cut+1 ... K_n-cut (ascending)
    t_n      = softmax(m_n)

i.e. the ``cut`` lowest and ``cut`` highest values of each coordinate are dropped. ``beta``
(``trim_fraction``) lies in ``[0, 0.5)``, so at least one value always remains; ``beta = 0`` is
the mean of the logits (the FedMD/FedDF consensus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedkd.aggregation.base import AGGREGATORS, AggregationRule, BoolArray, FloatArray, softmax
from fedkd.config import AggregationConfig

__all__ = ["TrimmedMeanOptions", "TrimmedMeanRule"]


@dataclass(frozen=True)
class TrimmedMeanOptions:
    """``aggregation.trimmed-mean.*``: the share cut from each end of every coordinate."""

    trim_fraction: float = 0.2


@AGGREGATORS.register("trimmed-mean")
class TrimmedMeanRule(AggregationRule):
    """``softmax`` of the coordinate-wise trimmed mean over valid teachers of ``z_k / T``.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    trim_fraction
        ``beta`` in ``[0, 0.5)``: drop ``int(beta * K_n)`` lowest and highest values per
        coordinate (default: :class:`TrimmedMeanOptions`).
    """

    Options = TrimmedMeanOptions
    needs_logits = True

    def __init__(self, temperature: float = AggregationConfig.temperature, *,
                 trim_fraction: float = TrimmedMeanOptions.trim_fraction) -> None:
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
        k = scaled_logits.shape[0]
        n_valid = mask.sum(axis=0)  # [N]
        cut = np.floor(self.trim_fraction * n_valid).astype(np.int64)  # == int(beta * K_n)
        # invalid entries sort last; valid ones occupy ranks 0 .. K_n - 1 of each coordinate
        ranked = np.sort(np.where(mask[..., None], scaled_logits, np.inf), axis=0)
        rank = np.arange(k)[:, None, None]
        keep = (rank >= cut[None, :, None]) & (rank < (n_valid - cut)[None, :, None])
        kept_sum = np.sum(np.where(keep, ranked, 0.0), axis=0)
        return softmax(kept_sum / (n_valid - 2 * cut)[:, None])
