"""Local training and evaluation loops shared by every algorithm.

All randomness comes from an explicit ``torch.Generator``; nothing here touches global RNG state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.losses import kd_kl_from_probs

#: An extra loss term added to each step: ``(model, x, y, logits) -> loss`` (e.g. distillation).
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Called after each step with the batch's detached logits and labels (e.g. FD's per-class tracker).
BatchObserver = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class FitStats:
    """What one call of :func:`fit_supervised` did."""

    loss: float  #: mean training loss over the steps
    accuracy: float  #: accuracy on the training batches seen
    steps: int
    samples_seen: int


class StepTally:
    """Running totals of a training loop: mean loss per step, accuracy over the samples seen.

    ``add`` counts every step; an empty batch (Poisson sampling under DP-SGD) adds no loss and no
    samples.
    """

    def __init__(self) -> None:
        self.loss_sum, self.hits, self.seen, self.steps = 0.0, 0, 0, 0

    def add(self, loss: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.steps += 1
        if len(target):
            self.loss_sum += float(loss.detach())
            self.hits += int((predicted == target).sum())
            self.seen += len(target)

    def stats(self) -> FitStats:
        return FitStats(loss=self.loss_sum / max(self.steps, 1), accuracy=self.hits / max(self.seen, 1),
                        steps=self.steps, samples_seen=self.seen)


@dataclass(frozen=True)
class EvalStats:
    """Loss and accuracy of a model on a dataset."""

    loss: float
    accuracy: float
    num_examples: int


def seeded_generator(*seeds: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from several integers (run seed, round, client...)."""
    seed = int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed % (2**63 - 1))


def batch_indices(
    num_samples: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield ``steps`` index batches, walking through fresh shuffles of the data.

    Within one pass over the data no sample repeats; the last, short batch of a pass is dropped
    unless the dataset is smaller than one batch.
    """
    if num_samples <= 0:
        raise ValueError("cannot draw batches from an empty dataset")
    batch_size = min(batch_size, num_samples)
    perm = torch.randperm(num_samples, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > num_samples:
            perm = torch.randperm(num_samples, generator=generator)
            pos = 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def fit_supervised(
    model: nn.Module,
    data: ArrayDataset,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    extra_loss: ExtraLoss | None = None,
    observe: BatchObserver | None = None,
) -> FitStats:
    """Train ``model`` with SGD on cross-entropy for ``steps`` mini-batches.

    Parameters
    ----------
    extra_loss
        Optional term added to the cross-entropy at every step (e.g. a distillation term).
    observe
        Optional callback given each batch's detached logits and labels.
    """
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    model.train()
    tally = StepTally()
    for idx in batch_indices(len(data), batch_size, steps, generator):
        rows = idx.numpy()
        x, y = torch.from_numpy(data.x[rows]), torch.from_numpy(data.y[rows])  # fancy index copies
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if extra_loss is not None:
            loss = loss + extra_loss(model, x, y, logits)
        loss.backward()
        optimizer.step()
        tally.add(loss, logits.detach().argmax(1), y)
        if observe is not None:
            observe(logits.detach(), y)
    return tally.stats()


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, *, batch_size: int = 512) -> EvalStats:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (eval mode, no gradients)."""
    if len(data) == 0:  # reported with weight 0, so the placeholders never enter a mean
        return EvalStats(loss=0.0, accuracy=0.0, num_examples=0)
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        # Cached datasets are read-only; copy each batch rather than share memory with torch.
        x = torch.tensor(data.x[start : start + batch_size])
        y = torch.tensor(data.y[start : start + batch_size])
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = len(data)
    return EvalStats(loss=total_loss / n, accuracy=correct / n, num_examples=n)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` as float32 numpy arrays (copies), in module order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load arrays produced by :func:`state_to_numpy` (strict: same keys and shapes)."""
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True)


def fit_to_targets(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    generator: torch.Generator,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    loss_weight: float = 1.0,
    labels: np.ndarray | None = None,
    ce_weight: float = 0.0,
) -> FitStats:
    """Distil ``model`` towards soft ``targets`` [N, C] on inputs ``x`` [N, ...].

    Minimises ``loss_weight`` * T^2 * KL(targets || softmax(model(x) / T)) (the survey's eq.
    1.1.3 with the teacher given as probabilities), plus ``ce_weight`` * CE(model(x), labels)
    when ``labels`` are given, with SGD over ``steps`` mini-batches. ``accuracy`` is the
    agreement of the model's argmax with the targets' argmax on the batches seen.
    """
    if len(x) != len(targets):
        raise ValueError(f"{len(x)} inputs but {len(targets)} targets")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"{len(x)} inputs but {len(labels)} labels")
    optimizer = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    model.train()
    tally = StepTally()
    for idx in batch_indices(len(x), batch_size, steps, generator):
        rows = idx.numpy()
        xb = torch.from_numpy(np.ascontiguousarray(x[rows]))
        tb = torch.from_numpy(np.ascontiguousarray(targets[rows], dtype=np.float32))
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_weight * kd_kl_from_probs(logits, tb, temperature)
        if labels is not None and ce_weight > 0:
            loss = loss + ce_weight * F.cross_entropy(logits, torch.from_numpy(labels[rows]))
        loss.backward()
        optimizer.step()
        tally.add(loss, logits.detach().argmax(1), tb.argmax(1))
    return tally.stats()


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits [N, C] of ``model`` on ``x`` in eval mode, without gradients, as float32."""
    model.eval()
    out = [model(torch.tensor(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32, copy=False)
