"""``entropy``: per-sample teacher weights from prediction entropy (confident teachers count more).

Source: entropy-based multi-teacher KD (EBKD), as implemented in the CA-MKD code
(``Rorozhl/CA-MKD``)::

    p_{k,n}   = softmax(z_{k,n} / T)
    H_{k,n}   = -sum_c p_{k,n,c} log p_{k,n,c}
    w_{k,n}   = (1 - H_{k,n} / sum_j H_{j,n}) / (K_n - 1)
    t_n       = sum_k w_{k,n} p_{k,n}

with the sums over the ``K_n`` teachers valid for sample ``n``; the weights are non-negative and
sum to 1 over the valid teachers. No labels are needed.

Edge cases (fedkd): when ``K_n == 1`` or every valid teacher has zero entropy (``sum_j H_{j,n} =
0``), the weights are uniform over the valid teachers. Note that with ``K_n == 2`` a teacher's
weight is the other teacher's share of the entropy, ``H_{j,n} / (H_{k,n} + H_{j,n})``.
"""

from __future__ import annotations

import numpy as np

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    BoolArray,
    FloatArray,
    entropy,
    log_softmax,
    masked_average,
)

__all__ = ["EntropyRule", "entropy_weights"]


def entropy_weights(log_probs: FloatArray, mask: BoolArray) -> FloatArray:
    """EBKD teacher weights ``[K, N]`` from log-probabilities ``[K, N, C]`` and a mask ``[K, N]``.

    Masked-out teachers get weight 0; each sample's weights sum to 1 over its valid teachers.
    """
    h = np.where(mask, entropy(log_probs), 0.0)  # [K, N]
    n_valid = mask.sum(axis=0)  # [N]
    h_total = h.sum(axis=0)  # [N]
    uniform = (n_valid == 1) | (h_total <= 0.0)
    safe_total = np.where(uniform, 1.0, h_total)
    safe_denominator = np.where(uniform, 1.0, n_valid - 1.0)
    w = (1.0 - h / safe_total) / safe_denominator
    w = np.where(uniform, 1.0 / n_valid, w)
    return np.where(mask, np.maximum(w, 0.0), 0.0)


@AGGREGATORS.register("entropy")
class EntropyRule(AggregationRule):
    """EBKD entropy-weighted mean of ``softmax(z_k / T)``; low-entropy teachers weigh more.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0`` (used for both the probabilities and the entropies).
    """

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        log_p = log_softmax(scaled_logits)
        w = entropy_weights(log_p, mask)
        return masked_average(np.exp(log_p), w, mask)
