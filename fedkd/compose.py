"""The composition root: run configuration -> validated :class:`RunConfig` -> algorithm.

Every entry point (the ServerApp, the ClientApp, the ``fedkd`` CLI, ``make run``) builds what a
run needs through these functions and nothing else, so a configuration that the launcher accepts
is exactly one the apps accept.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedkd.config import RunConfig, Scalar
from fedkd.errors import ConfigError


def build_config(flat: Mapping[str, Scalar]) -> RunConfig:
    """Validate a flat run config completely (the algorithm's own checks included)."""
    from fedkd.algorithms import ALGORITHMS
    from fedkd.data.datasets import DATASETS

    cfg = RunConfig.from_flat(flat)
    source = DATASETS.get(cfg.data.dataset)
    ALGORITHMS.get(cfg.algorithm)(cfg, source.num_classes, source.input_shape)
    return cfg


__all__ = ["ConfigError", "build_config"]
