"""Federated algorithms, one file each; each registers itself in :data:`ALGORITHMS`.

This package imports every module in it (a package scan), so a new algorithm is one new file.

| name | what leaves a client | file |
|---|---|---|
| ``fedavg`` | model weights (baseline) | ``fedavg.py`` |
| ``fedgen`` | model weights and label counts (baseline; FedGen, official code) | ``fedgen.py`` |
| ``fd`` | per-class mean logits [C, C] and counts [C] | ``fd.py`` |
| ``fedmd`` | logits on announced public samples [N, C] | ``fedmd.py`` |
| ``fedgen-logits`` | logits on server-generated inputs [N, C] | ``fedgen_logits.py`` |
| ``local`` | nothing (metrics only): local training, the personalised baseline | ``local.py`` |
"""

from __future__ import annotations

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, ExchangeResult, QuorumError
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.registry import import_submodules

import_submodules(__name__)  # each algorithm module registers itself

__all__ = ["ALGORITHMS", "Algorithm", "ClientContext", "Exchange", "ExchangeResult", "QuorumError"]
