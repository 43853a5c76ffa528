"""Secure aggregation of logits (SecAgg+, Bell et al. 2020) on the Message API, with
distributed DP.

With ``aggregation.secure = true`` a client never sends its logits: it keeps its share of the
rule's sums (:meth:`fedkd.aggregation.AggregationRule.summands`) and takes part in three extra
exchanges (:mod:`fedkd.secagg.client`, :mod:`fedkd.secagg.server`) at the end of which the server
holds only the sum over clients, from which the rule's targets follow
(:meth:`~fedkd.aggregation.AggregationRule.from_sums`). Only ``sum_decomposable`` rules can run
so (``mean``, ``weighted``, ``classwise``, ``era``, ``logit-mean``, ``weighted-logit-mean``);
the others are refused when the configuration is built.
"""

from fedkd.secagg.client import MASK, PHASES, PUBLIC_KEY_C, PUBLIC_KEY_S, SHARE_KEYS, UNMASK
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.server import (
    SecureAggregationError,
    SecureSum,
    check_public_keys,
    public_key_specs,
    secure_sum,
)

__all__ = ["MASK", "PHASES", "PUBLIC_KEY_C", "PUBLIC_KEY_S", "SHARE_KEYS", "UNMASK",
           "SecAggConfig", "SecureAggregationError", "SecureSum", "check_public_keys",
           "public_key_specs", "secure_sum"]
