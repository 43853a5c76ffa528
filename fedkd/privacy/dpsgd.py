"""DP-SGD on a client's local training (Opacus), with one accountant per client across rounds.

Privacy unit: one training example of one client (add/remove adjacency, Poisson sampling).

Flower gives a client no persistent object, only its node state (``Context.state``), and each
message may run in a fresh process. So every time a client trains, :class:`ClientPrivacy`

1. restores the client's accountant history (list of ``(noise multiplier, sample rate, steps)``)
   from the node state;
2. checks the budget: if ``privacy.epsilon-budget`` > 0 and the planned round would push the
   client past it, raises :class:`BudgetExhausted` before touching the data;
3. wraps a fresh optimizer and the model with Opacus (``make_private``; ``hooks`` or ``ghost``,
   or ``auto``: :func:`grad_sample_mode`),
   trains ``train.local-steps`` Poisson-sampled steps (empty batches included: they still add
   noise and count), and unwraps the model (``to_standard_module``: no hooks are left behind);
4. accounts any release of private outputs (:mod:`fedkd.privacy.output_noise`) as further
   Gaussian steps of the same accountant, so one epsilon covers training and releases;
5. writes the history back to the node state.

The accountant restored each round composes exactly as one accountant that saw every step
(tests pin this). Noise: ``privacy.noise-multiplier``, or, with ``privacy.target-epsilon`` > 0,
the multiplier that spends that epsilon over ``num-server-rounds`` participations of
``train.local-steps`` steps each (conservative: a client that is not sampled every round spends
less). Logits computed after training for distillation or release come from the unwrapped model
under ``no_grad``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedkd.config import PrivacyConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.privacy import import_opacus
from fedkd.privacy.output_noise import Release
from fedkd.training import (
    BatchObserver,
    ExtraLoss,
    FitStats,
    PerSampleLoss,
    TrainingStep,
    run_steps,
    sgd,
)

#: Node-state key of the accountant history: float64 [H, 3] rows (sigma, sample rate, steps).
HISTORY_KEY = "privacy/history"
#: Node-state key of the accountant's mechanism name, as uint8 bytes.
MECHANISM_KEY = "privacy/mechanism"

#: Marker in the error a client raises when its budget is spent; the server counts it.
BUDGET_EXHAUSTED = "budget-exhausted"


#: ``privacy.grad-sample-mode = "auto"`` takes ``ghost`` for a model with a dense layer of at
#: least this many weights and ``hooks`` otherwise. Measured (``benchmarks/dp_overhead.py``, DP
#: CPU time over plain, 50 steps of batch 32): ``cnn`` (a 3136 x 512 dense layer) 10.9x with
#: hooks, 2.7x with ghost, which never materialises its per-sample gradients; ``fedgen-cnn``
#: (784 x 32) 3.8x with either.
GHOST_MIN_DENSE_WEIGHTS = 100_000


def grad_sample_mode(configured: str, model: nn.Module, extra_loss: ExtraLoss | None) -> str:
    """The Opacus mode a round uses: ``configured``, or for ``"auto"`` ghost clipping when the
    model has a dense layer of :data:`GHOST_MIN_DENSE_WEIGHTS` or more and every loss term is a
    per-sample criterion (no ``extra_loss``), else per-sample gradients by hooks."""
    if configured != "auto":
        return configured
    dense = max((m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)), default=0)
    return "ghost" if dense >= GHOST_MIN_DENSE_WEIGHTS and extra_loss is None else "hooks"


class _PerSampleCriterion(nn.Module):
    """Cross-entropy plus an optional :data:`~fedkd.training.PerSampleLoss`, reduced by its
    ``reduction`` attribute (Opacus' ghost clipping sets ``"none"`` to get per-sample losses)."""

    def __init__(self, per_sample_loss: PerSampleLoss | None) -> None:
        super().__init__()
        self.per_sample_loss = per_sample_loss
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y, reduction="none")
        if self.per_sample_loss is not None:
            loss = loss + self.per_sample_loss(logits, y)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


class BudgetExhausted(RuntimeError):
    """The client's next round would exceed ``privacy.epsilon-budget``; it did not train."""

    def __init__(self, epsilon: float, planned: float, budget: float) -> None:
        super().__init__(
            f"{BUDGET_EXHAUSTED}: epsilon {epsilon:.4f} so far, {planned:.4f} after this round, "
            f"budget {budget:g}"
        )


def _accountant(mechanism: str):  # -> opacus IAccountant
    import_opacus()
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=mechanism)


#: Calibration stops once the planned epsilon is within this of the target (Opacus' default).
EPSILON_TOLERANCE = 0.01
#: The calibration's search (Opacus' ``get_noise_multiplier``, and the same search below when
#: output releases are planned) doubles the noise multiplier from ``SIGMA_START`` and gives up
#: once it passes ``MAX_SIGMA`` (Opacus' ``opacus.accountants.utils.MAX_SIGMA``).
SIGMA_START = 10.0
MAX_SIGMA = 1e6


def largest_calibrated_sigma() -> float:
    """The largest noise multiplier the calibration can return: ``SIGMA_START`` doubled while it
    stays <= ``MAX_SIGMA`` (655360). Epsilon falls as the noise grows, so a target that this
    noise multiplier does not reach is reached by none the search tries: the calibration raises
    :class:`ValueError` ("The privacy budget is too low.")."""
    sigma = SIGMA_START
    while 2 * sigma <= MAX_SIGMA:
        sigma *= 2
    return sigma


def calibration_floor(cfg: PrivacyConfig, sample_rate: float, steps_per_round: int,
                      planned_rounds: int, releases_per_round: int = 0) -> float:
    """The least epsilon :func:`planned_noise_multiplier` can calibrate to: what the planned run
    (``planned_rounds`` x ``steps_per_round`` steps at ``sample_rate``, and the planned output
    releases at ``privacy.output-noise``) spends at :func:`largest_calibrated_sigma`. One
    accountant evaluation; a target at or above it is reached, one below it is not."""
    releases = releases_per_round * planned_rounds
    history = [(largest_calibrated_sigma(), float(sample_rate), steps_per_round * planned_rounds)]
    if releases:
        history.append((float(cfg.output_noise), 1.0, releases))
    return epsilon_of(history, cfg.delta, cfg.accountant)


def planned_noise_multiplier(cfg: PrivacyConfig, sample_rate: float, steps_per_round: int,
                             planned_rounds: int, releases_per_round: int = 0) -> float:
    """A client's DP-SGD noise multiplier: ``privacy.noise-multiplier``, or with
    ``privacy.target-epsilon`` > 0 the one calibrated to spend the target over
    ``planned_rounds`` participations of ``steps_per_round`` steps at ``sample_rate`` and
    ``releases_per_round`` output releases each (:func:`calibrated_noise_multiplier`). The one
    function clients and the launcher's check (:func:`fedkd.privacy.check_target_reachable`)
    call. Raises :class:`ValueError` when no noise multiplier reaches the target."""
    if cfg.target_epsilon > 0:
        releases = releases_per_round * planned_rounds
        return calibrated_noise_multiplier(
            cfg.target_epsilon, cfg.delta, sample_rate, steps_per_round * planned_rounds,
            cfg.accountant, cfg.output_noise if releases else 0.0, releases,
        )
    return cfg.noise_multiplier


@functools.lru_cache(maxsize=64)
def calibrated_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
    release_sigma: float = 0.0, releases: int = 0,
) -> float:
    """The DP-SGD noise multiplier that spends ``target_epsilon`` over everything planned:
    ``steps`` steps at ``sample_rate`` and ``releases`` output releases at noise multiplier
    ``release_sigma`` (Gaussian steps with sample rate 1), composed in one accountant.

    Without releases this is Opacus' ``get_noise_multiplier``; with them, the same search
    (double, then bisect until the planned epsilon is within ``EPSILON_TOLERANCE`` below the
    target) over the composed history. Cached per process.

    Raises
    ------
    ValueError
        If the releases alone spend ``target_epsilon`` or more.
    """
    if releases <= 0:
        import_opacus()
        from opacus.accountants.utils import get_noise_multiplier

        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant=accountant))
    fixed = [(float(release_sigma), 1.0, int(releases))]
    floor = epsilon_of(fixed, delta, accountant)
    if floor >= target_epsilon:
        raise ValueError(
            f"the planned output releases alone ({releases} at noise multiplier "
            f"{release_sigma:g}) spend epsilon {floor:.3f} >= privacy.target-epsilon "
            f"{target_epsilon:g}: raise privacy.output-noise or the target"
        )

    def planned(sigma: float) -> float:
        return epsilon_of([(sigma, sample_rate, steps), *fixed], delta, accountant)

    low, high = 0.0, SIGMA_START
    eps_high = planned(high)
    while eps_high > target_epsilon:
        low, high = high, 2 * high
        eps_high = planned(high)
        if high > MAX_SIGMA:
            raise ValueError("cannot calibrate privacy.target-epsilon: noise multiplier > "
                             f"{MAX_SIGMA:g}")
    while target_epsilon - eps_high > EPSILON_TOLERANCE:
        sigma = (low + high) / 2
        eps = planned(sigma)
        if eps < target_epsilon:
            high, eps_high = sigma, eps
        else:
            low = sigma
    return high


def epsilon_of(history: list[tuple[float, float, int]], delta: float, mechanism: str) -> float:
    """Epsilon at ``delta`` of an accountant history (0.0 for an empty one)."""
    if not history:
        return 0.0
    acct = _accountant(mechanism)
    acct.history = _compact(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV's log(0) at sample rate 1
        return float(acct.get_epsilon(delta=delta))


def _compact(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Merge entries with equal (sigma, q): composition commutes, so epsilon is unchanged."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        merged[(float(sigma), float(q))] = merged.get((float(sigma), float(q)), 0) + int(steps)
    return [(s, q, n) for (s, q), n in merged.items()]


@dataclass
class ClientPrivacy:
    """One client's example-level privacy state for one message.

    Parameters
    ----------
    cfg
        The privacy configuration.
    state
        The client's node state; the accountant history is read from and written to it.
    planned_rounds
        Participations the budget is planned over (``num-server-rounds``).
    releases_per_round
        Output releases (at ``privacy.output-noise``) the algorithm makes per participation:
        ``privacy.target-epsilon`` calibrates DP-SGD so that the planned rounds' steps *and*
        releases together spend at most the target.
    """

    cfg: PrivacyConfig
    state: MutableMapping[str, np.ndarray]
    planned_rounds: int
    releases_per_round: int = 0

    def __post_init__(self) -> None:
        saved = self.state.get(HISTORY_KEY)
        self.history: list[tuple[float, float, int]] = (
            [(float(s), float(q), int(n)) for s, q, n in np.asarray(saved).reshape(-1, 3)]
            if saved is not None else []
        )
        mechanism = self.state.get(MECHANISM_KEY)
        if mechanism is not None and bytes(np.asarray(mechanism, np.uint8)).decode() != self.cfg.accountant:
            raise ValueError(
                f"this node's privacy ledger was kept with the "
                f"{bytes(np.asarray(mechanism, np.uint8)).decode()!r} accountant, not "
                f"{self.cfg.accountant!r}: keep privacy.accountant fixed for a run"
            )

    # ----- ledger -------------------------------------------------------------------------
    def epsilon(self) -> float:
        """Epsilon spent so far at ``privacy.delta``."""
        return epsilon_of(self.history, self.cfg.delta, self.cfg.accountant)

    def save(self) -> None:
        """Write the history back to the node state."""
        self.state[HISTORY_KEY] = np.asarray(self.history, dtype=np.float64).reshape(-1, 3)
        self.state[MECHANISM_KEY] = np.frombuffer(self.cfg.accountant.encode(), dtype=np.uint8).copy()

    def account(self, *releases: Release) -> None:
        """Charge releases of private outputs, each a Gaussian step (sample rate 1), after one
        budget check for all of them: with ``privacy.epsilon-budget`` > 0, releases that would
        exceed it raise :class:`BudgetExhausted` and none is recorded (the caller must not
        publish them)."""
        if any(r.noise_multiplier <= 0 for r in releases):
            raise ValueError("a release without noise cannot be accounted: its epsilon is infinite")
        self.charge([(float(r.noise_multiplier), 1.0, 1) for r in releases])

    def charge(self, entries: list[tuple[float, float, int]]) -> None:
        """Add ``(sigma, sample rate, steps)`` entries to the ledger, checking the budget first:
        every charge (training and each release) goes through here."""
        self._check(entries)
        self.history.extend(entries)

    def _check(self, entries: list[tuple[float, float, int]]) -> None:
        if self.cfg.epsilon_budget <= 0:
            return
        after = epsilon_of(self.history + list(entries), self.cfg.delta, self.cfg.accountant)
        if after > self.cfg.epsilon_budget:
            raise BudgetExhausted(self.epsilon(), after, self.cfg.epsilon_budget)

    # ----- DP-SGD -------------------------------------------------------------------------
    @staticmethod
    def _public_step(dp_model: nn.Module, dp_opt: torch.optim.Optimizer,
                     optimizer: torch.optim.Optimizer | None,
                     public_loss: Callable[[nn.Module], torch.Tensor], model: nn.Module) -> None:
        """One non-private step on ``public_loss`` with the per-sample hooks off (Opacus notes:
        a backward through the wrapped model would otherwise leave per-sample gradients that
        break the next private step)."""
        assert optimizer is not None
        dp_model.disable_hooks()
        try:
            optimizer.zero_grad(set_to_none=True)
            public_loss(model).backward()
            optimizer.step()
        finally:
            dp_model.enable_hooks()
            dp_opt.zero_grad(set_to_none=True)

    @staticmethod
    def sample_rate(num_examples: int, batch_size: int) -> float:
        """Poisson sample rate of one step: 1 / number of batches per pass."""
        return 1.0 / math.ceil(num_examples / min(batch_size, num_examples))

    def noise_multiplier(self, sample_rate: float, steps_per_round: int) -> float:
        """DP-SGD sigma: configured, or calibrated to the target epsilon over the planned rounds
        (:func:`planned_noise_multiplier`)."""
        return planned_noise_multiplier(self.cfg, sample_rate, steps_per_round,
                                        self.planned_rounds, self.releases_per_round)

    def check_budget(self, sigma: float, sample_rate: float, steps: int, releases: int = 0) -> None:
        """Raise :class:`BudgetExhausted` if training ``steps`` more steps (and ``releases``
        output releases at ``privacy.output-noise``) would exceed ``privacy.epsilon-budget``."""
        planned = [(sigma, sample_rate, steps)]
        if releases:
            planned.append((self.cfg.output_noise, 1.0, releases))
        self._check(planned)

    def fit(
        self,
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
        releases: int = 0,
        public_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        per_sample_loss: PerSampleLoss | None = None,
    ) -> FitStats:
        """Train ``model`` in place with DP-SGD for ``steps`` Poisson-sampled steps.

        ``releases`` is the number of output releases the caller will account after training
        (they count towards the budget check). ``public_loss`` (optional) is a loss that touches
        no private data (e.g. FedGen's generated-sample term): after each private step it takes
        one ordinary SGD step with Opacus' hooks disabled, which costs no privacy. The model comes
        back unwrapped, without hooks. ``per_sample_loss`` (optional) is a further term of the
        private loss given per sample from the logits and labels (FD's distillation term): both
        modes take it (ghost clipping as part of its per-sample criterion).
        """
        import_opacus()
        from opacus import PrivacyEngine
        from opacus.data_loader import DPDataLoader

        mode = grad_sample_mode(self.cfg.grad_sample_mode, model, extra_loss)
        if mode == "ghost" and extra_loss is not None:
            raise ValueError(
                "privacy.grad-sample-mode 'ghost' needs a per-sample criterion; this algorithm "
                "adds a loss term that is not one: use 'hooks' (or 'auto')"
            )
        q = self.sample_rate(len(data), batch_size)
        sigma = self.noise_multiplier(q, steps)
        self.check_budget(sigma, q, steps, releases)

        tensors = TensorDataset(torch.from_numpy(np.array(data.x)), torch.from_numpy(np.array(data.y)))
        loader = DPDataLoader.from_data_loader(
            DataLoader(tensors, batch_size=min(batch_size, len(data))),
            generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator))),
        )
        optimizer = sgd(model, learning_rate, momentum, weight_decay)
        engine = PrivacyEngine(accountant=self.cfg.accountant)
        criterion = _PerSampleCriterion(per_sample_loss)
        noise_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            warnings.filterwarnings("ignore", message=".*Full backward hook.*")
            wrapped = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
                max_grad_norm=self.cfg.max_grad_norm, poisson_sampling=False,
                noise_generator=noise_gen, grad_sample_mode=mode,
                criterion=criterion,
            )
        if mode == "ghost":  # the criterion comes back wrapped for its two backward passes
            dp_model, dp_opt, criterion, dp_loader = wrapped
        else:
            dp_model, dp_opt, dp_loader = wrapped
        model.train()
        step = self._dp_step(model, dp_model, dp_opt, criterion, extra_loss, public_loss,
                             learning_rate)
        try:
            stats = run_steps(step, _cycle(dp_loader), steps, observe)
        finally:
            dp_model.to_standard_module()  # remove every hook; `model` holds the trained weights
        # Checked before training (check_budget), recorded now.
        self.history = _compact(self.history + list(engine.accountant.history))
        return stats

    def _dp_step(self, model: nn.Module, dp_model: nn.Module, dp_opt: torch.optim.Optimizer,
                 criterion: Callable, extra_loss: ExtraLoss | None,
                 public_loss: Callable[[nn.Module], torch.Tensor] | None,
                 learning_rate: float) -> TrainingStep:
        """The DP-SGD step for :func:`fedkd.training.run_steps`: per-sample clipped, noised
        gradients of the private loss; an empty Poisson batch still takes a (noise-only) step;
        then, with ``public_loss``, one non-private step with the hooks off."""
        public_optimizer = sgd(model, learning_rate) if public_loss is not None else None

        def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            dp_opt.zero_grad(set_to_none=True)
            logits = dp_model(x)
            if len(y) == 0:
                loss = logits.sum() * 0.0
            else:
                loss = criterion(logits, y)
                if extra_loss is not None:
                    # the plain module: auxiliary forwards (under no_grad) skip the hooks
                    loss = loss + extra_loss(model, x, y, logits)
            loss.backward()
            dp_opt.step()
            if public_loss is not None:
                self._public_step(dp_model, dp_opt, public_optimizer, public_loss, model)
            return loss, logits

        return step


def _cycle(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``loader``, pass after pass."""
    while True:
        yield from loader
