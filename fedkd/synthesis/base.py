"""The synthesiser interface, its config section, the uint8 wire form and the data guard."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.errors import ConfigError
from fedkd.registry import Registry
from fedkd.validate import positive


@dataclass(frozen=True)
class SynthesisConfig:
    """``synthesis.*``: how clients synthesise the inputs they share.

    ``method``: a name of :data:`SYNTHESIZERS`. ``per-class``: K images per class a client
    synthesises. ``every``: rounds between syntheses (0: round 1 only). ``steps``, ``lr``: the
    optimisation of the images (Adam on unconstrained pixels behind a ``tanh``, so every image
    stays in the inputs' [-1, 1]). Model inversion's loss weights: ``ce-weight`` (towards the
    conditioning label), ``bn-weight`` (batch-norm statistics, models with BatchNorm only),
    ``tv-weight``, ``l2-weight`` (image priors), ``diversity-weight`` (against near-identical
    images of a class). Distribution matching: ``matching-batch`` real images per class per
    step, ``embed-width`` channels of the random embedding networks. ``label-weight``: beta, the
    share of the one-hot synthesis label in the targets on pool images (the rest is the teachers'
    aggregate; 0 = DS-FL's targets). ``max-pool``: the server's
    synthetic set keeps at most this many images (the newest). ``measure-leakage``: without
    privacy, clients report how close their synthetic images are to their training images.
    """

    method: str = "matching"
    per_class: int = 10
    every: int = 0
    steps: int = 200
    #: Fashion-MNIST, 10 Dirichlet-0.1 clients, matching, 200 steps: a CNN trained on the pooled
    #: images reached 0.562 / 0.615 / 0.572 test accuracy at lr 0.05 / 0.15 / 0.3.
    lr: float = 0.15
    ce_weight: float = 1.0
    bn_weight: float = 1.0
    tv_weight: float = 0.05
    l2_weight: float = 0.001
    diversity_weight: float = 0.1
    matching_batch: int = 64
    embed_width: int = 32
    label_weight: float = 0.0
    max_pool: int = 4000
    measure_leakage: bool = True

    def __post_init__(self) -> None:
        if self.method not in SYNTHESIZERS:
            raise ConfigError(f"synthesis.method must be one of {', '.join(SYNTHESIZERS.names())}, "
                              f"got {self.method!r}")
        for key in ("per_class", "steps", "matching_batch", "embed_width", "max_pool"):
            if getattr(self, key) < 1:
                raise ConfigError(f"synthesis.{key.replace('_', '-')} must be >= 1, "
                                  f"got {getattr(self, key)!r}")
        if self.every < 0:
            raise ConfigError(f"synthesis.every must be >= 0 (0: round 1 only), got {self.every!r}")
        positive("synthesis.lr", self.lr)
        if not 0.0 <= self.label_weight <= 1.0:
            raise ConfigError(f"synthesis.label-weight must be in [0, 1], got {self.label_weight!r}")
        for key in ("ce_weight", "bn_weight", "tv_weight", "l2_weight", "diversity_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"synthesis.{key.replace('_', '-')} must be >= 0")


class DataAccessError(RuntimeError):
    """A synthesis that promised to read no client data tried to."""


class GuardedDataset:
    """Stands in for a client's data where nothing may read it: any attribute, length or item
    raises :class:`DataAccessError` (and the attempt is counted in :attr:`attempts`)."""

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_what", what)
        object.__setattr__(self, "attempts", 0)

    def _refuse(self, action: str) -> Any:
        object.__setattr__(self, "attempts", self.attempts + 1)
        raise DataAccessError(f"{self._what}: {action} of the client's data was attempted")

    def __getattr__(self, name: str) -> Any:
        return self._refuse(f"reading {name!r}")

    def __len__(self) -> int:
        return self._refuse("len()")

    def __getitem__(self, item: Any) -> Any:
        return self._refuse("indexing")


class Synthesizer(ABC):
    """Makes ``len(labels)`` images, one per conditioning label, from a frozen model.

    Subclasses set :attr:`reads_data`: a synthesiser that reads none is given a
    :class:`GuardedDataset` instead of the data, so that a promise not to read it is enforced,
    not only stated.
    """

    #: Registry name (``synthesis.method``), set by ``@SYNTHESIZERS.register(name)``.
    name: ClassVar[str]
    #: Whether the client's private training data is read.
    reads_data: ClassVar[bool]

    def __init__(self, options: SynthesisConfig) -> None:
        self.options = options

    @abstractmethod
    def synthesise(self, model: nn.Module, data: ArrayDataset | GuardedDataset,
                   labels: np.ndarray, input_shape: tuple[int, int, int],
                   generator: torch.Generator) -> np.ndarray:
        """float32 images ``[len(labels), *input_shape]`` in [-1, 1] for the conditioning
        ``labels``; ``model`` stays unchanged."""

    def parametrised(self, shape: tuple[int, ...], generator: torch.Generator,
                     scale: float = 0.5) -> torch.Tensor:
        """The free parameters of ``shape`` images (``tanh`` of them is the image)."""
        return (torch.randn(shape, generator=generator) * scale).requires_grad_(True)


#: Synthesisers by name (``synthesis.method``).
SYNTHESIZERS: Registry[type[Synthesizer]] = Registry("synthesis method")


def quantise(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] -> uint8 0..255 (the wire form; values outside are clipped)."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dequantise(u: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 images in [-1, 1]."""
    return (np.asarray(u, np.float32) / 127.5 - 1.0).astype(np.float32)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with gradients off for its parameters (restore with :func:`thawed`)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def thawed(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
