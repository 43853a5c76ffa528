"""Federated algorithms, one file each; each registers itself in :data:`ALGORITHMS`.

This package imports every module in it (a package scan), so a new algorithm is one new file.

The algorithms, what each uploads and the config sections each owns are listed in
``docs/configuration.md``, generated from this registry (``python -m fedkd.experiments.configdoc
--write docs/configuration.md``); what leaves a client in each phase is the phase contract
(:class:`fedkd.protocol.PhaseSpec`) in the algorithm's file.
"""

from __future__ import annotations

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, ExchangeResult, QuorumError
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.registry import import_submodules

import_submodules(__name__)  # each algorithm module registers itself

__all__ = ["ALGORITHMS", "Algorithm", "ClientContext", "Exchange", "ExchangeResult", "QuorumError"]
