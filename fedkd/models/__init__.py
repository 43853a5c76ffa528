"""Models: classifiers split into ``features`` and a linear ``head``, looked up by name.

Importing this package registers every model of :mod:`fedkd.models.zoo` in :data:`MODELS`.
"""

from __future__ import annotations

from fedkd.models.zoo import MODELS, Classifier, build_model

__all__ = ["MODELS", "Classifier", "build_model"]
