"""``era``: entropy reduction aggregation of DS-FL (Itahara et al., IEEE TMC 2021, arXiv 2008.06180).

Following the authors' lab code (``kitsuyaazuma/SCARLET``), the teachers' probabilities are
averaged and the average is sharpened::

    p_k  = softmax(z_k / T)
    pbar = (1 / K_n) * sum_{k valid} p_k
    mode "temperature" (DS-FL ERA):      t = softmax(pbar / T_era),       0 < T_era < 1 (0.1)
    mode "power" (SCARLET enhanced ERA): t = pbar**beta / sum_c pbar**beta,  beta > 1 (2)

Both keep the argmax of ``pbar``. The power mode never raises the entropy (the entropy of
``p**beta / sum p**beta`` falls as ``beta`` grows). Temperature-ERA sharpens clearly when ``C``
is small, but ``softmax(pbar / T_era)`` gives every class at least ``exp(-1 / T_era)`` of the top
class's mass, so it *lifts* near-zero classes and can raise the entropy: over 10 classes
``pbar = (0.5, 0.5, 0, ...)`` gives entropy 0.85 > ln 2, and even the flat
``pbar = (2, 2, 2, 2, 2, 1, 1, 1, 1, 1) / 15`` goes from 2.2460 to 2.2500 (near the uniform
distribution, with ``C * T_era = 1``, temperature-ERA is the identity to first order).
``T_era >= 1`` would flatten, so it is rejected. Identical teachers are *not* returned
unchanged (the rule sharpens).

One third-party version averages raw logits before ERA; fedkd follows the lab and averages
probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    BoolArray,
    FloatArray,
    masked_average,
    softmax,
)
from fedkd.config import AggregationConfig

__all__ = ["ERAOptions", "ERARule"]

ERAMode = Literal["temperature", "power"]
_MODES = ("temperature", "power")


@dataclass(frozen=True)
class ERAOptions:
    """``aggregation.era.*``: ``era-temperature`` (DS-FL's sharpening temperature, < 1),
    ``mode`` (``"temperature"`` or ``"power"``) and ``beta`` (the power mode's exponent)."""

    era_temperature: float = 0.1
    mode: str = "temperature"
    beta: float = 2.0


@AGGREGATORS.register("era")
class ERARule(AggregationRule):
    """DS-FL entropy reduction aggregation of the mean teacher probabilities.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0`` applied to the teachers' logits.
    era_temperature
        ``T_era`` in ``(0, 1)`` for mode ``"temperature"`` (the default, DS-FL's and SCARLET's
        value, and those of the other options are :class:`ERAOptions`'s).
    mode
        ``"temperature"`` (DS-FL: ``softmax(pbar / T_era)``) or ``"power"`` (SCARLET enhanced
        ERA: ``pbar**beta`` normalised).
    beta
        Exponent ``> 1`` for mode ``"power"``.
    """

    Options = ERAOptions
    sum_decomposable = True  # the mean of probabilities, then post-processing

    def __init__(
        self,
        temperature: float = AggregationConfig.temperature,
        *,
        era_temperature: float = ERAOptions.era_temperature,
        mode: ERAMode = ERAOptions.mode,
        beta: float = ERAOptions.beta,
    ) -> None:
        super().__init__(temperature)
        if mode not in _MODES:
            raise ValueError(f"era mode must be one of {', '.join(_MODES)}, got {mode!r}")
        for opt, val in (("era_temperature", era_temperature), ("beta", beta)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ValueError(f"{opt} must be a finite number, got {val!r}")
        if not 0.0 < era_temperature < 1.0:
            raise ValueError(
                "era_temperature must be in (0, 1) (>= 1 flattens instead of sharpening), "
                f"got {era_temperature!r}"
            )
        if not beta > 1.0:
            raise ValueError(f"beta must be > 1 (1 is the identity, < 1 flattens), got {beta!r}")
        self.era_temperature = float(era_temperature)
        self.mode: ERAMode = mode
        self.beta = float(beta)

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        return self._finish(masked_average(softmax(scaled_logits), np.ones(mask.shape), mask),
                            mask)

    def _finish(self, pbar: FloatArray, weighted: BoolArray) -> FloatArray:
        """Sharpen the mean teacher probabilities ``pbar`` [N, C]."""
        if self.mode == "temperature":
            return softmax(pbar / self.era_temperature)
        # pbar**beta / sum pbar**beta, computed as softmax(beta * log pbar) so it cannot underflow
        with np.errstate(divide="ignore"):
            log_pbar = np.log(pbar)
        return softmax(self.beta * log_pbar)
