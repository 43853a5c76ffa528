"""Client-side input synthesis: inputs a client makes from its own model or data, to share.

A synthesiser turns a client's frozen model (and, for some, its private data) into a few
synthetic images per class. They leave the client quantised to uint8 (:func:`quantise`), and the
server pools them into a synthetic proxy set (``fedkd/algorithms/synthetic_proxy.py``).

Registered by name (``synthesis.method``):

* ``inversion`` (:mod:`fedkd.synthesis.inversion`): model inversion in the manner of
  DeepInversion and DAFL; reads only the model.
* ``matching`` (:mod:`fedkd.synthesis.matching`): distribution matching in the manner of FedDM;
  reads the client's data.
"""

from fedkd.registry import import_submodules
from fedkd.synthesis.base import (
    SYNTHESIZERS,
    DataAccessError,
    GuardedDataset,
    SynthesisConfig,
    Synthesizer,
    dequantise,
    quantise,
)

import_submodules(__name__)

__all__ = ["SYNTHESIZERS", "DataAccessError", "GuardedDataset", "SynthesisConfig", "Synthesizer",
           "dequantise", "quantise"]
