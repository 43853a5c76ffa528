"""Federated algorithms, one file each; each registers itself in :data:`ALGORITHMS`.

| name | shares | file |
|---|---|---|
| ``fedavg`` | model weights (baseline) | ``fedavg.py`` |
"""

from __future__ import annotations

from fedkd.algorithms.registry import ALGORITHMS
from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, ExchangeResult, QuorumError
from fedkd.algorithms import fedavg  # noqa: F401  (registers "fedavg")

__all__ = ["ALGORITHMS", "Algorithm", "ClientContext", "Exchange", "ExchangeResult", "QuorumError"]
