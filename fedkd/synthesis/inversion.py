r"""Model inversion (``synthesis.method = "inversion"``): images from the frozen model alone.

In the manner of DeepInversion (Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer
via DeepInversion", CVPR 2020: cross-entropy to the target labels, batch-norm statistics, total
variation and L2 priors) and DAFL (Chen et al., "Data-Free Learning of Student Networks",
ICCV 2019). Images :math:`x = \tanh(v)` for conditioning labels :math:`y` minimise

.. math::

    a_{ce}\,\mathrm{CE}(f(x), y) + a_{bn} \sum_l \big(\lVert \mu_l(x) - \hat\mu_l \rVert_2
    + \lVert \sigma^2_l(x) - \hat\sigma^2_l \rVert_2\big) + a_{tv}\,\mathrm{TV}(x)
    + a_{l2}\,\overline{x^2} + a_{div}\,\mathrm{Div}(x, y)

with :math:`\hat\mu_l, \hat\sigma^2_l` the running statistics of the model's BatchNorm layers
(the term is 0 for models without: the zoo's use GroupNorm), TV the mean absolute difference of
neighbouring pixels, and Div the mean cosine similarity of the penultimate features of
different images with the same label (DAFL's entropy term balances classes; here the labels are
fixed, so the term keeps one class's images apart instead).

It reads the model only: the client's data is replaced by a guard that raises on any access
(:class:`~fedkd.synthesis.base.GuardedDataset`). Under DP-SGD its outputs are post-processing of
the DP model and cost no privacy; the running statistics of a BatchNorm layer are computed from
data, which is why the zoo's private models have none.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.synthesis.base import SYNTHESIZERS, GuardedDataset, Synthesizer, frozen, thawed


def batchnorm_statistics_loss(batch_means: list[torch.Tensor], batch_vars: list[torch.Tensor],
                              running_means: list[torch.Tensor],
                              running_vars: list[torch.Tensor]) -> torch.Tensor:
    r"""DeepInversion's feature-statistics term, :math:`\sum_l \lVert \mu_l - \hat\mu_l \rVert_2
    + \lVert \sigma^2_l - \hat\sigma^2_l \rVert_2` over the layers given (0 for none)."""
    total = torch.zeros(())
    for mu, var, r_mu, r_var in zip(batch_means, batch_vars, running_means, running_vars, strict=True):
        total = total + torch.linalg.vector_norm(mu - r_mu) + torch.linalg.vector_norm(var - r_var)
    return total


class BatchNormStatistics:
    """Collects each BatchNorm layer's input mean and (biased) variance per channel during a
    forward pass of ``model``; :meth:`loss` compares them with the running statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                       and m.running_mean is not None]
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        self.means.append(x.mean(dim=dims))
        self.vars.append(x.var(dim=dims, unbiased=False))

    def loss(self) -> torch.Tensor:
        """The statistics term for the last forward pass (then forgets it)."""
        loss = batchnorm_statistics_loss(
            self.means, self.vars, [m.running_mean for m in self.layers],
            [m.running_var for m in self.layers])
        self.means, self.vars = [], []
        return loss

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally neighbouring pixels."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def same_label_similarity(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the features of distinct images that share a label (0 if none do)."""
    f = F.normalize(features.flatten(1), dim=1)
    sim = f @ f.T
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    return sim[same].mean() if same.any() else torch.zeros(())


def penultimate(model: nn.Module) -> nn.Module | None:
    """The layer whose output the last linear layer reads (for the diversity term), if any."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@SYNTHESIZERS.register("inversion")
class ModelInversion(Synthesizer):
    """Inversion of the frozen model towards the conditioning labels, with image priors."""

    reads_data = False

    def synthesise(self, model: nn.Module, data: ArrayDataset | GuardedDataset,
                   labels: np.ndarray, input_shape: tuple[int, int, int],
                   generator: torch.Generator) -> np.ndarray:
        o = self.options
        device = next(model.parameters()).device
        y = torch.as_tensor(labels, dtype=torch.long, device=device)
        v = self.parametrised((len(labels), *input_shape), generator).to(device).detach().requires_grad_(True)
        optimiser = torch.optim.Adam([v], lr=o.lr)
        stats = BatchNormStatistics(model)
        head = penultimate(model)
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda m, i, out: captured.append(i[0])) if head else None
        frozen(model)
        try:
            for _ in range(o.steps):
                optimiser.zero_grad(set_to_none=True)
                captured.clear()
                x = torch.tanh(v)
                logits = model(x)
                loss = o.ce_weight * F.cross_entropy(logits, y)
                loss = loss + o.bn_weight * stats.loss()
                loss = loss + o.tv_weight * total_variation(x) + o.l2_weight * x.pow(2).mean()
                if o.diversity_weight > 0 and captured:
                    loss = loss + o.diversity_weight * same_label_similarity(captured[-1], y)
                loss.backward()
                optimiser.step()
        finally:
            stats.close()
            if hook is not None:
                hook.remove()
            thawed(model)
        return torch.tanh(v).detach().cpu().numpy().astype(np.float32)
