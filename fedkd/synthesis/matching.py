r"""Distribution matching (``synthesis.method = "matching"``): images whose embeddings match the data's.

In the manner of FedDM (Xiong et al., "FedDM: Iterative Distribution Matching for
Communication-Efficient Federated Learning", CVPR 2023: each client learns a few synthetic images
per class whose embeddings under randomly initialised networks match those of its real images)
and of dataset condensation by distribution matching (Zhao & Bilen, WACV 2023). For every
class c the client holds, K images :math:`S_c = \tanh(V_c)` minimise, over randomly initialised
embedding networks :math:`\psi` (a fresh one every step),

.. math::

    \sum_c \Big\lVert \frac1{|B_c|} \sum_{x \in B_c} \psi(x)
    - \frac1K \sum_{s \in S_c} \psi(s) \Big\rVert_2^2

where :math:`B_c` is a random batch of ``synthesis.matching-batch`` of the client's training
images of class c (the MMD with a linear kernel: the mean embeddings match). The images start
from noise, not from real images. The client's model is not used.

**It reads the client's data.** Its images are a function of the training set, with no privacy
mechanism: under DP it is refused (``fedkd/algorithms/synthetic_proxy.py``), and without DP the
run reports how close the images come to the training set (:mod:`fedkd.synthesis.leakage`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.synthesis.base import SYNTHESIZERS, GuardedDataset, Synthesizer


def embedding_network(channels: int, width: int, generator: torch.Generator) -> nn.Module:
    """A randomly initialised ConvNet (two blocks of 3x3 conv, instance norm, ReLU and 2x2
    average pooling, as in distribution matching), its weights drawn from ``generator``."""
    net = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width, affine=False),
        nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(width, width, affine=False),
        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                bound = 1.0 / fan_in ** 0.5
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2 * bound - bound)
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def mean_embedding_loss(real: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of the mean embeddings ``[N, D]`` and ``[K, D]``."""
    return (real.mean(dim=0) - synthetic.mean(dim=0)).pow(2).sum()


@SYNTHESIZERS.register("matching")
class DistributionMatching(Synthesizer):
    """Per-class synthetic images matching the mean embedding of the client's images of that
    class under random ConvNets."""

    reads_data = True

    def synthesise(self, model: nn.Module, data: ArrayDataset | GuardedDataset,
                   labels: np.ndarray, input_shape: tuple[int, int, int],
                   generator: torch.Generator) -> np.ndarray:
        o = self.options
        assert isinstance(data, ArrayDataset)
        labels = np.asarray(labels, dtype=np.int64)
        classes = np.unique(labels)
        by_class = {int(c): np.flatnonzero(data.y == c) for c in classes}
        empty = [c for c, idx in by_class.items() if len(idx) == 0]
        if empty:
            raise ValueError(f"distribution matching: no training image of class {empty}")
        v = self.parametrised((len(labels), *input_shape), generator, scale=0.1)
        optimiser = torch.optim.Adam([v], lr=o.lr)
        rows = {int(c): torch.as_tensor(np.flatnonzero(labels == c)) for c in classes}
        for _ in range(o.steps):
            net = embedding_network(input_shape[0], o.embed_width, generator)
            optimiser.zero_grad(set_to_none=True)
            images = torch.tanh(v)
            loss = torch.zeros(())
            for c, idx in by_class.items():
                pick = torch.randint(len(idx), (min(o.matching_batch, len(idx)),), generator=generator)
                real = torch.as_tensor(data.x[idx[pick.numpy()]])
                loss = loss + mean_embedding_loss(net(real), net(images[rows[c]]))
            loss.backward()
            optimiser.step()
        return torch.tanh(v).detach().numpy().astype(np.float32)
