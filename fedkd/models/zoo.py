"""Model zoo: small image classifiers split into a feature extractor and a linear head.

Every model is a :class:`Classifier`: ``features(x)`` maps a batch of images ``[B, C, H, W]`` to a
representation ``z`` of shape ``[B, feature_dim]``, and ``head(z)`` maps it to logits
``[B, num_classes]`` through a single :class:`torch.nn.Linear` stored as ``classifier``. Algorithms
that work in feature space (FedGen's generator, feature-level distillation, prototypes) use the
two halves separately; everything else just calls the model.

Models are looked up by name in :data:`MODELS` and built with :func:`build_model`, which validates
the input shape and the number of classes. Layer sizes are computed arithmetically from the input
shape, so every model works both on Fashion-MNIST (``(1, 28, 28)``) and on the scikit-learn digits
(``(1, 8, 8)``).

No model uses BatchNorm: its running statistics mix samples, which breaks per-sample gradients and
so DP-SGD (Opacus refuses such models). Where a model normalises, it uses
:class:`torch.nn.GroupNorm`, which is computed per sample and has the same number of affine
parameters as BatchNorm.

Initialisation uses only PyTorch's default initialisers, so two models built after the same
``torch.manual_seed`` are identical; building a model touches no other global state.

Parameter counts (1 input channel, 10 classes)::

    name          (1, 28, 28)   (1, 8, 8)   feature_dim
    cnn             1,663,370     188,810           512
    fedgen-cnn         26,434       3,394            32
    mlp               199,210      55,210           200
    resnet             77,754      77,754            64
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import torch
from torch import nn

from fedkd.registry import Registry

__all__ = [
    "MODELS",
    "CNN",
    "BasicBlock",
    "Classifier",
    "FedGenCNN",
    "MLP",
    "ResNet8",
    "build_model",
]


class Classifier(nn.Module):
    """Base class of every model: a feature extractor followed by a single linear head.

    Subclasses build their feature extractor, then call :meth:`_build_head`, and implement
    :meth:`features`. ``forward(x)`` is always exactly ``head(features(x))``.

    Parameters
    ----------
    input_shape
        ``(channels, height, width)`` of one input image.
    num_classes
        Number of output classes.

    Attributes
    ----------
    input_shape : tuple[int, int, int]
        ``(channels, height, width)`` of one input image.
    num_classes : int
        Number of output classes (width of the logits).
    feature_dim : int
        Width of the representation returned by :meth:`features`.
    classifier : torch.nn.Linear
        The head, ``feature_dim -> num_classes``; FedGen-style algorithms feed generated
        features straight through it.
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    feature_dim: int
    classifier: nn.Linear

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape)
        self.num_classes = _check_num_classes(num_classes)

    def _build_head(self, feature_dim: int) -> None:
        """Create the linear head; called by subclasses after their feature extractor.

        Building it last keeps the parameter (and state-dict) order equal to the data flow.
        """
        self.feature_dim = int(feature_dim)
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``[B, C, H, W]`` to its representation ``[B, feature_dim]``."""
        raise NotImplementedError

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Map representations ``[B, feature_dim]`` to logits ``[B, num_classes]``."""
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``head(features(x))``, shape ``[B, num_classes]``."""
        return self.head(self.features(x))


MODELS: Registry[type[Classifier]] = Registry("model")
"""Registry of model classes; each is constructed as ``cls(input_shape, num_classes)``."""


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int
) -> Classifier:
    """Build the model registered under ``name`` for the given input shape and class count.

    Parameters
    ----------
    name
        Registered model name (see ``MODELS.names()``): ``"cnn"``, ``"fedgen-cnn"``, ``"mlp"``,
        ``"resnet"``.
    input_shape
        ``(channels, height, width)`` of one input image; three positive integers.
    num_classes
        Number of classes, at least 2.

    Returns
    -------
    Classifier
        A freshly initialised model (seed with ``torch.manual_seed`` for reproducibility).

    Raises
    ------
    fedkd.registry.UnknownNameError
        If ``name`` is not registered; the message lists the valid names.
    ValueError
        If ``input_shape`` or ``num_classes`` is invalid, or the input is too small for the
        model.
    """
    cls = MODELS.get(name)
    return cls(_check_input_shape(input_shape), _check_num_classes(num_classes))


# --------------------------------------------------------------------------------------------
# Validation and shape arithmetic
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ValueError(
            f"input_shape must be a (channels, height, width) sequence, got {input_shape!r}"
        )
    if len(input_shape) != 3 or not all(_is_int(v) and v > 0 for v in input_shape):
        raise ValueError(
            "input_shape must be three positive integers (channels, height, width), "
            f"got {tuple(input_shape)!r}"
        )
    c, h, w = (int(v) for v in input_shape)
    return (c, h, w)


def _check_num_classes(num_classes: int) -> int:
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one spatial axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups ``<= max_groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@MODELS.register("cnn")
class CNN(Classifier):
    """The CNN of FedAvg.

    McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017 (the "CNN" of Section 3): two 5x5
    convolutions (32 then 64 channels, padding 2), each followed by ReLU and 2x2 max pooling, a
    fully connected layer of 512 units with ReLU (the features) and a linear head. Like the
    original it has no normalisation. On ``(1, 28, 28)`` with 10 classes it has 1,663,370
    parameters.

    Parameters
    ----------
    input_shape
        ``(channels, height, width)``; height and width must be at least 4.
    num_classes
        Number of classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        c, h, w = self.input_shape
        for _ in range(2):  # conv (size-preserving) then 2x2 max pool, twice
            h, w = _conv_out(h, 2, 2), _conv_out(w, 2, 2)
        if h < 1 or w < 1:
            raise ValueError(
                f"'cnn' needs inputs of at least 4x4 pixels, got {self.input_shape!r}"
            )
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(1),
        )
        self.fc = nn.Sequential(nn.Linear(64 * h * w, 512), nn.ReLU())
        self._build_head(512)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 512-d output of the ReLU fully connected layer."""
        return self.fc(self.conv(x))


@MODELS.register("fedgen-cnn")
class FedGenCNN(Classifier):
    """FedGen's small MNIST CNN, with GroupNorm in place of BatchNorm.

    Zhu, Hong and Zhou, "Data-Free Knowledge Distillation for Heterogeneous Federated
    Learning", ICML 2021 (official code, ``FLAlgorithms/trainmodel/models.py`` with the
    ``'mnist'`` config): two 3x3 convolutions with stride 2 and padding 1 (6 then 16 channels),
    each followed by normalisation and ReLU, flatten (16*7*7 = 784 on 28x28), a linear layer to a
    32-d latent **without activation** (the features) and a linear head.

    The original uses ``BatchNorm2d``; here each is ``GroupNorm(2, channels)`` (2 divides both 6
    and 16), which keeps per-sample gradients exact for DP-SGD and has the same number of affine
    parameters, so the count matches the original: 26,434 on ``(1, 28, 28)`` with 10 classes.

    Parameters
    ----------
    input_shape
        ``(channels, height, width)``.
    num_classes
        Number of classes.
    """

    #: GroupNorm groups in both conv blocks (divides 6 and 16).
    NORM_GROUPS = 2
    LATENT_DIM = 32

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        for out_channels in (6, 16):
            layers += [
                nn.Conv2d(c, out_channels, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(self.NORM_GROUPS, out_channels),
                nn.ReLU(),
            ]
            c = out_channels
            h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        layers.append(nn.Flatten(1))
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c * h * w, self.LATENT_DIM)
        self._build_head(self.LATENT_DIM)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 32-d latent (linear, no activation), as FedGen's generator targets."""
        return self.fc(self.conv(x))


@MODELS.register("mlp")
class MLP(Classifier):
    """The "2NN" multilayer perceptron of FedAvg.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017: the flattened image goes through two hidden layers of 200 units with
    ReLU (the second one's output is the 200-d features), then a linear head. On 784 inputs with
    10 classes it has 199,210 parameters.

    Parameters
    ----------
    input_shape
        ``(channels, height, width)``; the input is flattened to ``C*H*W`` values.
    num_classes
        Number of classes.
    """

    HIDDEN = 200

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        c, h, w = self.input_shape
        self.body = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(c * h * w, self.HIDDEN),
            nn.ReLU(),
            nn.Linear(self.HIDDEN, self.HIDDEN),
            nn.ReLU(),
        )
        self._build_head(self.HIDDEN)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 200-d output of the second hidden layer (after ReLU)."""
        return self.body(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a shortcut) with GroupNorm.

    He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016. The
    shortcut is the identity when shape is kept, else a 1x1 strided convolution with GroupNorm
    (option B). Convolutions have no bias, as each is followed by a normalisation.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    stride
        Stride of the first convolution (and of the shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.norm1 = _group_norm(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                _group_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


@MODELS.register("resnet")
class ResNet8(Classifier):
    """A small ResNet-8 with GroupNorm, for 28x28 and 8x8 greyscale images.

    After He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the
    CIFAR-style ResNet of Section 4.2 with one block per stage, i.e. 1 + 3*2 + 1 = 8 weighted
    layers): a 3x3 stem convolution with 16 channels, three stages of one :class:`BasicBlock`
    each with 16, 32 and 64 channels (stride 2 at stages 2 and 3), global average pooling to the
    64-d features and a linear head. BatchNorm is replaced by ``GroupNorm(8, channels)``
    (Wu and He, "Group Normalization", ECCV 2018), so Opacus can compute per-sample gradients.
    Thanks to global pooling the parameter count does not depend on height and width: 77,754
    with 1 input channel and 10 classes.

    Parameters
    ----------
    input_shape
        ``(channels, height, width)``.
    num_classes
        Number of classes.
    """

    STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (64, 2))

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        c = self.input_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c, 16, kernel_size=3, stride=1, padding=1, bias=False),
            _group_norm(16),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_channels = 16
        for out_channels, stride in self.STAGES:
            blocks.append(BasicBlock(in_channels, out_channels, stride))
            in_channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self._build_head(in_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 64-d globally average-pooled output of the last stage."""
        return self.pool(self.stages(self.stem(x)))
