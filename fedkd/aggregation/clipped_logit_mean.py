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
the rule is ``logit-mean``.

With ``centre = "median"`` what is clipped is each row's distance from the coordinate-wise
median of the sample's teachers, ``m_n``, to the median distance: one step of centred clipping
(Karimireddy et al. 2021, from the median instead of the last round's momentum)::

    d_{k,n} = c_{k,n} - m_n,   r_n = median_k ||d_{k,n}||_2
    t_n     = softmax( m_n + (1 / K_n) * sum_k d_{k,n} * min(1, r_n / ||d_{k,n}||_2) )

which also bounds a teacher that answers in another direction at the others' length. With
teachers at equal distances from the median it is ``logit-mean`` too. The medians need every
teacher's row, so the rule is not sum-decomposable (no secure aggregation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkd.aggregation.base import (AGGREGATORS, AggregationRule, BoolArray, FloatArray,
                                    masked_average, softmax)
from fedkd.config import AggregationConfig

__all__ = ["ClippedLogitMeanOptions", "ClippedLogitMeanRule"]

CENTRES = ("zero", "median")


@dataclass(frozen=True)
class ClippedLogitMeanOptions:
    """``aggregation.clipped-logit-mean.*``: what a teacher's row is clipped around."""

    centre: str = "zero"  # "zero": its length; "median": its distance from the teachers' median


@AGGREGATORS.register("clipped-logit-mean")
class ClippedLogitMeanRule(AggregationRule):
    """``softmax`` of the mean of the centred ``z_k / T``, each row clipped to the median length
    of the sample's valid teachers.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``.
    centre
        ``"zero"`` (clip each centred row's length) or ``"median"`` (clip its distance from the
        coordinate-wise median of the sample's teachers).
    """

    Options = ClippedLogitMeanOptions
    needs_logits = True

    def __init__(self, temperature: float = AggregationConfig.temperature, *,
                 centre: str = ClippedLogitMeanOptions.centre) -> None:
        super().__init__(temperature)
        if centre not in CENTRES:
            raise ValueError(f"centre must be one of {', '.join(CENTRES)}, got {centre!r}")
        self.centre = centre

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        rows = scaled_logits - scaled_logits.mean(axis=2, keepdims=True)
        valid = mask[..., None]
        centre = (np.nanmedian(np.where(valid, rows, np.nan), axis=0) if self.centre == "median"
                  else np.zeros(rows.shape[1:]))  # [N, C]
        moves = np.where(valid, rows - centre[None], 0.0)
        length = np.linalg.norm(moves, axis=2)  # [K, N]
        bound = np.nanmedian(np.where(mask, length, np.nan), axis=0)  # [N]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(length > bound[None], bound[None] / length, 1.0)
        return softmax(centre + masked_average(moves * scale[..., None], np.ones(mask.shape),
                                               mask))
