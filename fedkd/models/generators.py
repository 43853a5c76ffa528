"""Conditional generators for data-free distillation.

* :class:`LatentGenerator`: FedGen's generator (Zhu et al., ICML 2021, official code): noise
  and a one-hot label to a latent feature vector that a classifier's ``head`` reads.
* :class:`InputGenerator`: a conditional generator in input space (images in [-1, 1], matching the
  data scaling), for black-box distillation where clients only answer with logits
  (``fedgen-logits``).
* :class:`LowFrequencyGenerator`: the same role, but its images are smooth by construction (a few
  low cosine frequencies) and, untrained, it samples a fixed smooth-image prior.

Both are built on the server and never trained with private data, so they may use BatchNorm.
All randomness comes from explicit ``torch.Generator`` arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedkd.registry import Registry

#: Input-space generators by name (``fedgen-logits.input-generator``): ``factory(num_classes,
#: image_shape, options)`` -> module with ``sample_noise(n, generator)`` and ``forward(noise,
#: labels)``. ``options`` is the algorithm's config section (read for the generator's own keys).
INPUT_GENERATORS: Registry[Callable[..., nn.Module]] = Registry("input generator")


class LatentGenerator(nn.Module):
    """FedGen's conditional generator: ``G(eps, y) -> z`` in a classifier's latent space.

    ``h = ReLU(BN(Linear([eps, onehot(y)])))``, ``z = Linear(h)`` with no output activation;
    ``eps ~ U[0, 1)^noise_dim`` (the official code draws uniform noise although a comment says
    Gaussian).

    Parameters
    ----------
    num_classes, latent_dim
        Label count and the size of the latent layer it imitates (FedGen's CNN: 32).
    noise_dim, hidden_dim
        FedGen's MNIST settings: 32 and 256 (19,744 parameters with 10 classes and latent 32).
    """

    def __init__(self, num_classes: int, latent_dim: int = 32, noise_dim: int = 32,
                 hidden_dim: int = 256) -> None:
        super().__init__()
        self.num_classes, self.latent_dim, self.noise_dim = num_classes, latent_dim, noise_dim
        self.fc = nn.Linear(noise_dim + num_classes, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.out = nn.Linear(hidden_dim, latent_dim)

    def sample_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``eps ~ U[0, 1)`` of shape [n, noise_dim]."""
        return torch.rand(n, self.noise_dim, generator=generator)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.num_classes).to(noise.dtype)
        h = F.relu(self.bn(self.fc(torch.cat([noise, onehot], dim=1))))
        return self.out(h)


class InputGenerator(nn.Module):
    """A conditional image generator: ``G(eps, y) -> x`` in [-1, 1] with the data's shape.

    ``eps ~ N(0, I)`` of ``noise_dim`` is concatenated with a learned label embedding, mapped by a
    linear layer to ``width`` feature maps at a quarter of the image size, then upsampled twice
    (nearest, 3x3 conv, BatchNorm, LeakyReLU) and projected to the image channels with ``tanh``,
    the usual data-free distillation generator (DAFL, DFAD) made class-conditional.

    Parameters
    ----------
    num_classes
        Number of labels.
    image_shape
        ``(C, H, W)`` of the data; H and W must be divisible by 4.
    noise_dim, width
        Noise size and channels of the first feature map.
    """

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], noise_dim: int = 64,
                 width: int = 64) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"InputGenerator needs H and W divisible by 4, got {image_shape}")
        self.num_classes, self.noise_dim, self.image_shape = num_classes, noise_dim, image_shape
        self.init_size = (h // 4, w // 4)
        self.embed = nn.Embedding(num_classes, noise_dim)
        self.fc = nn.Linear(2 * noise_dim, width * self.init_size[0] * self.init_size[1])
        self.width = width
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, c, 3, padding=1),
            nn.Tanh(),
        )

    def sample_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``eps ~ N(0, I)`` of shape [n, noise_dim]."""
        return torch.randn(n, self.noise_dim, generator=generator)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([noise, self.embed(labels)], dim=1))
        h = h.view(-1, self.width, *self.init_size)
        return self.blocks(h)


def dct_basis(frequencies: int, size: int) -> torch.Tensor:
    """Orthonormal DCT-II basis functions ``[frequencies, size]``: row ``f`` is
    ``sqrt(2 / size) cos(pi (i + 1/2) f / size)`` (row 0 scaled by ``1 / sqrt 2``)."""
    if not 1 <= frequencies <= size:
        raise ValueError(f"frequencies must be in [1, {size}], got {frequencies}")
    f = torch.arange(frequencies, dtype=torch.float64)[:, None]
    i = torch.arange(size, dtype=torch.float64)[None, :]
    basis = torch.cos(torch.pi * (i + 0.5) * f / size) * (2.0 / size) ** 0.5
    basis[0] /= 2.0 ** 0.5
    return basis.float()


class LowFrequencyGenerator(nn.Module):
    """A conditional image generator whose outputs hold only the lowest spatial frequencies.

    Each image is ``x = tanh(B_h^T A B_w)`` per channel, with ``B`` the first ``frequencies``
    orthonormal DCT-II basis functions (:func:`dct_basis`) and ``A`` ``[frequencies,
    frequencies]`` coefficients ``A = prior_scale * eps + h(eps, y)``: ``eps ~ N(0, I)`` plays the
    noise, and ``h`` (a small MLP on ``eps`` and a label embedding) starts at exactly zero. So an
    untrained generator samples random smooth images, a prior under which a distilled student
    transfers to real images far better than from pixel noise or an untrained
    :class:`InputGenerator` (``benchmarks/results/datafree_ceiling.md``), and training moves the
    samples from there class by class.

    Parameters
    ----------
    num_classes
        Number of labels.
    image_shape
        ``(C, H, W)`` of the data.
    frequencies
        Cosine frequencies kept per axis (7 of 28 on Fashion-MNIST).
    prior_scale
        Standard deviation of the coefficients of the untrained generator.
    hidden_dim
        Width of ``h``.
    """

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], frequencies: int = 7,
                 prior_scale: float = 3.0, hidden_dim: int = 256) -> None:
        super().__init__()
        c, h, w = image_shape
        if not 1 <= frequencies <= min(h, w):
            raise ValueError(f"frequencies must be in [1, {min(h, w)}] for images of shape "
                             f"{image_shape}, got {frequencies}")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        self.num_classes, self.image_shape = num_classes, image_shape
        self.frequencies, self.prior_scale = frequencies, float(prior_scale)
        self.noise_dim = c * frequencies * frequencies
        self.register_buffer("basis_h", dct_basis(frequencies, h), persistent=False)
        self.register_buffer("basis_w", dct_basis(frequencies, w), persistent=False)
        self.embed = nn.Embedding(num_classes, hidden_dim)
        self.fc = nn.Linear(self.noise_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, self.noise_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def sample_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``eps ~ N(0, I)`` of shape [n, C * frequencies**2]."""
        return torch.randn(n, self.noise_dim, generator=generator)

    def coefficients(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The DCT coefficients ``A`` [n, C, frequencies, frequencies]."""
        shift = self.out(F.leaky_relu(self.fc(noise) + self.embed(labels), 0.2))
        f = self.frequencies
        return (self.prior_scale * noise + shift).view(-1, self.image_shape[0], f, f)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = self.coefficients(noise, labels)
        return torch.tanh(torch.einsum("ncab,ai,bj->ncij", a, self.basis_h, self.basis_w))


@INPUT_GENERATORS.register("conv")
def conv_input_generator(num_classes: int, image_shape: tuple[int, int, int],
                         options: object = None) -> InputGenerator:
    """The DAFL-style upsampling CNN (:class:`InputGenerator`)."""
    return InputGenerator(num_classes, image_shape)


@INPUT_GENERATORS.register("low-frequency")
def low_frequency_input_generator(num_classes: int, image_shape: tuple[int, int, int],
                                  options: object = None) -> LowFrequencyGenerator:
    """Smooth images from a few cosine frequencies (:class:`LowFrequencyGenerator`), with the
    options' ``frequencies`` and ``prior_scale`` when given."""
    kwargs = {} if options is None else {"frequencies": getattr(options, "frequencies"),
                                         "prior_scale": getattr(options, "prior_scale")}
    return LowFrequencyGenerator(num_classes, image_shape, **kwargs)
