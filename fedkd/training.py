"""Local training and evaluation loops shared by every algorithm.

All randomness comes from an explicit ``torch.Generator``; nothing here touches global RNG state.

Device: the loops run on :func:`current_device`, CPU unless a caller (the client app, for
``train.device``) enters :func:`device_scope`. Inside a scope each loop moves the model to the
device, moves every batch there, and moves the model back to the CPU when it returns, so
everything outside the loops (weights to numpy, node state, payloads) stays on the CPU.
Callbacks get: ``extra_loss`` the device tensors (it must build its own tensors on
``logits.device``), ``observe`` CPU tensors.

Models: :func:`model_with_state` gives a model of an architecture holding given weights, reusing
one instance per architecture and process instead of building (and randomly initialising) a new
one for every message.
"""

from __future__ import annotations

import contextlib
import copy
import contextvars
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.losses import DistillationLoss, kd_kl_from_probs
from fedkd.models import build_model

#: An extra loss term added to each step: ``(model, x, y, logits) -> loss`` (e.g. distillation).
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: A loss term from a batch's logits and labels alone, one value per sample ``[B]`` (FD's
#: distillation term): per-sample clipping with ghost norms (DP-SGD) can take it, since it is a
#: per-sample criterion; its batch mean is what is added to the loss.
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_mean(per_sample: PerSampleLoss) -> ExtraLoss:
    """``per_sample`` as an :data:`ExtraLoss`: its mean over the batch."""
    return lambda model, x, y, logits: per_sample(logits, y).mean()


#: Called after each step with the batch's detached logits and labels (e.g. FD's per-class tracker).
BatchObserver = Callable[[torch.Tensor, torch.Tensor], None]
#: One optimisation step on a batch ``(x, y)``: forward, loss, backward, update; returns the
#: step's loss and the batch's logits. :func:`plain_sgd_step` here; DP-SGD in
#: :mod:`fedkd.privacy.dpsgd`.
TrainingStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


_CPU = torch.device("cpu")
_DEVICE: contextvars.ContextVar[torch.device] = contextvars.ContextVar("fedkd_device", default=_CPU)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: ``cpu``, ``cuda``, ``cuda:<i>``, or ``auto`` (the
    first CUDA device torch sees, else the CPU).

    Raises
    ------
    ValueError
        If a CUDA device is asked for and torch sees none (or not that index).
    """
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else _CPU
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ValueError(
                f"train.device={name!r}, but torch sees {count} CUDA device(s) here; use "
                "'auto' or 'cpu', or give the worker a GPU (client-resources-num-gpus > 0)"
            )
    return device


def current_device() -> torch.device:
    """Where the loops of this module run now (see :func:`device_scope`)."""
    return _DEVICE.get()


@contextlib.contextmanager
def device_scope(device: torch.device | str) -> Iterator[torch.device]:
    """Run the training and evaluation loops inside the block on ``device``."""
    token = _DEVICE.set(torch.device(device))
    try:
        yield _DEVICE.get()
    finally:
        _DEVICE.reset(token)


@contextlib.contextmanager
def _on_device(model: nn.Module) -> Iterator[torch.device | None]:
    """Move ``model`` to the current device for the block and back to the CPU after it.

    Yields ``None`` on the CPU (nothing is moved), else the device.
    """
    device = current_device()
    if device.type == "cpu":
        yield None
        return
    model.to(device)
    try:
        yield device
    finally:
        model.to(_CPU)


def _to(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return t if device is None else t.to(device, non_blocking=True)


_MODELS: dict[tuple[str, tuple[int, ...], int], nn.Module] = {}


def model_with_state(
    name: str, input_shape: Sequence[int], num_classes: int, arrays: Mapping[str, np.ndarray]
) -> nn.Module:
    """A ``name`` model holding ``arrays`` (strict: every key, same shapes), in train mode.

    The instance is this process's one model of that architecture, reused across calls: the
    weights are copied into it rather than into a freshly built (and randomly initialised)
    model, which is what every message of a simulation worker used to pay for. Gradients are
    cleared and every parameter requires gradients again, as in a new model. Callers must not
    keep the model past the message that asked for it (the next call overwrites it).
    """
    key = (name, tuple(int(d) for d in input_shape), int(num_classes))
    model = _MODELS.get(key)
    if model is None:
        with torch.random.fork_rng(devices=[]):  # building draws from the global RNG: keep it
            model = build_model(name, key[1], key[2])
        _MODELS[key] = model
    load_numpy_state(model, arrays)
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(True)
    return model.train()


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


def run_steps(
    step: TrainingStep,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    observe: BatchObserver | None = None,
) -> FitStats:
    """The one local training loop: ``steps`` calls of ``step`` on the next batch of ``batches``.

    Tallies the mean loss and the accuracy of the batches seen and hands every non-empty batch's
    detached logits and labels (on the CPU) to ``observe``. What a step does (plain SGD,
    DP-SGD) and where batches come from (shuffled passes, Poisson sampling) are the caller's.
    """
    tally = StepTally()
    for x, y in itertools.islice(batches, steps):
        loss, logits = step(x, y)
        tally.add(loss, logits.detach().argmax(1), y)
        if observe is not None and len(y):
            observe(logits.detach().cpu(), y.cpu())
    return tally.stats()


def sgd(model: nn.Module, learning_rate: float, momentum: float = 0.0,
        weight_decay: float = 0.0) -> torch.optim.SGD:
    """The optimiser of every local training loop (plain and DP-SGD): SGD over ``model``'s
    parameters (``train.learning-rate``, ``train.momentum``, ``train.weight-decay``)."""
    return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                           weight_decay=weight_decay)


def plain_sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   extra_loss: ExtraLoss | None = None) -> TrainingStep:
    """The non-private step: cross-entropy (plus ``extra_loss``), backward, ``optimizer.step()``."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if extra_loss is not None:
            loss = loss + extra_loss(model, x, y, logits)
        loss.backward()
        optimizer.step()
        return loss, logits

    return step


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
    with _on_device(model) as device:
        optimizer = sgd(model, learning_rate, momentum, weight_decay)
        model.train()
        # fancy indexing copies the rows out of the (read-only, shared) cached arrays
        batches = ((_to(torch.from_numpy(data.x[idx.numpy()]), device),
                    _to(torch.from_numpy(data.y[idx.numpy()]), device))
                   for idx in batch_indices(len(data), batch_size, steps, generator))
        return run_steps(plain_sgd_step(model, optimizer, extra_loss), batches, steps, observe)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, *, batch_size: int = 512) -> EvalStats:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (eval mode, no gradients)."""
    if len(data) == 0:  # reported with weight 0, so the placeholders never enter a mean
        return EvalStats(loss=0.0, accuracy=0.0, num_examples=0)
    total_loss, correct = 0.0, 0
    with _on_device(model) as device:
        model.eval()
        for start in range(0, len(data), batch_size):
            # Cached datasets are read-only; copy each batch rather than share memory with torch.
            x = _to(torch.tensor(data.x[start : start + batch_size]), device)
            y = _to(torch.tensor(data.y[start : start + batch_size]), device)
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    n = len(data)
    return EvalStats(loss=total_loss / n, accuracy=correct / n, num_examples=n)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's ``state_dict`` as float32 numpy arrays (copies), in module order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load arrays produced by :func:`state_to_numpy` (strict: same keys and shapes).

    The arrays are only read (copied into the model's tensors), so read-only ones (validated
    replies are views of the message bytes) are fine.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    model.load_state_dict(tensors, strict=True)


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
    loss: DistillationLoss = kd_kl_from_probs,
) -> FitStats:
    """Distil ``model`` towards soft ``targets`` [N, C] on inputs ``x`` [N, ...].

    Minimises ``loss_weight`` * ``loss(model(x), targets, T)`` (default: T^2 * KL(targets ||
    softmax(model(x) / T)), the survey's eq. 1.1.3 with the teacher given as probabilities; any
    of :data:`fedkd.losses.DISTILLATION_LOSSES`), plus ``ce_weight`` * CE(model(x), labels)
    when ``labels`` are given, with SGD over ``steps`` mini-batches. ``accuracy`` is the
    agreement of the model's argmax with the targets' argmax on the batches seen.
    """
    if len(x) != len(targets):
        raise ValueError(f"{len(x)} inputs but {len(targets)} targets")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"{len(x)} inputs but {len(labels)} labels")
    with _on_device(model) as device:
        optimizer = sgd(model, learning_rate, momentum, weight_decay)
        model.train()
        tally = StepTally()
        for idx in batch_indices(len(x), batch_size, steps, generator):
            rows = idx.numpy()
            xb = _to(torch.from_numpy(np.ascontiguousarray(x[rows])), device)
            tb = _to(torch.from_numpy(np.ascontiguousarray(targets[rows], dtype=np.float32)), device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            value = loss_weight * loss(logits, tb, temperature)
            if labels is not None and ce_weight > 0:
                yb = _to(torch.from_numpy(labels[rows]), device)
                value = value + ce_weight * F.cross_entropy(logits, yb)
            value.backward()
            optimizer.step()
            tally.add(value, logits.detach().argmax(1), tb.argmax(1))
    return tally.stats()


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits [N, C] of ``model`` on ``x`` in eval mode, without gradients, as float32."""
    with _on_device(model) as device:
        model.eval()
        out = [model(_to(torch.tensor(x[i : i + batch_size]), device))
               for i in range(0, len(x), batch_size)]
        logits = torch.cat(out)
    return logits.cpu().numpy().astype(np.float32, copy=False)


@torch.no_grad()
def averaged(average: nn.Module | None, model: nn.Module, decay: float) -> nn.Module:
    r"""The running average of ``model``'s weights: :math:`\bar\theta \leftarrow d\,\bar\theta
    + (1 - d)\,\theta` (Polyak averaging over rounds, ``decay`` = d), updated in place; a copy of
    ``model`` when there is none yet. Integer buffers (BatchNorm's step count) are copied."""
    if average is None:
        return copy.deepcopy(model)
    for mine, theirs in zip(average.state_dict().values(), model.state_dict().values()):
        if mine.is_floating_point():
            mine.mul_(decay).add_(theirs.to(mine.device), alpha=1.0 - decay)
        else:
            mine.copy_(theirs)
    return average
