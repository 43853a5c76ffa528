r"""Logits up, student down: federated distillation whose server student goes back to the clients.

No paper found follows exactly this round, so the algorithm is named after what it does
(``student-down``). Its parts come from: FedDF (Lin et al., NeurIPS 2020: the server distils the
clients' ensemble on unlabeled proxy data into a student that the next round starts from; FedDF
uploads weights, this does not), DS-FL (Itahara et al. 2021: logits on an announced open batch,
any rule, ERA), FedGen's and FedKD's clients (local training with a distillation term towards the
model they were sent), FedProx (a proximal term), and FedAUX (Sattler et al. 2021: a certainty
score per proxy sample, here from the client's label support). ``../shared/notes/algorithms.md``
section 12 has the reasoning and the measured levers.

Round t, sampled clients :math:`S_t`, announced proxy indices :math:`I_t`
(``distill.public-batch`` of the public split; unlabeled with ``data.public-labels = false``):

1. **student down** (phase ``fit``, server to client): client k starts from exactly the weights
   of the server's student of *its* architecture, :math:`\theta^{a(k)}_t` (one student per
   architecture in ``train.client-models``; a heterogeneous federation sends every student and
   each client takes its own);
2. **local training that keeps the student's knowledge**: ``train.local-steps`` steps on the
   private data of

   .. math:: \mathrm{CE}(f_\theta(x), y) + \lambda\, R(\theta; \theta^{a(k)}_t, x)

   with :math:`R` chosen by ``student-down.local-loss``: ``kd`` (the survey's response-based
   loss, :math:`T^2\,\mathrm{KL}(\sigma(f_{\theta_t}(x)/T) \,\|\, \sigma(f_\theta(x)/T))` on the
   local batch, FedGen's and FedKD's client term), ``feature`` (FitNets' hint loss, survey eq.
   1.2.1, between the penultimate features of the model and of the student), ``relation``
   (the survey's eq. 1.3.3: the pairwise distances of the batch's features, the model's against
   the student's), ``prox``
   (FedProx, :math:`\frac{\mu}{2}\|\theta - \theta_t\|^2`, :math:`\mu` = ``prox-mu``), or
   ``none``; :math:`\lambda` = ``student-down.kd-weight``, :math:`T` = ``distill.temperature``.
   DP-SGD trains this loss when configured;
3. **logits up**: the client answers with its logits on :math:`x_{I_t}` (``[n, C]``; with
   ``calibrate = "prior"`` re-centred per class on the student's over the batch,
   :func:`prior_corrected`) and, with
   ``student-down.certainty = "support"``, a certainty per sample :math:`c_k(x) = \sum_c
   \sigma(f_{\theta_t}(x))_c\, \min(1, C\,\pi_k(c))` in [0, 1] (:math:`\pi_k`: its label
   shares; a class it holds at least its uniform share of counts fully): how likely the
   *student*, which knows every class, finds x to be of a class this client has seen (a model
   trained on 2-3 classes answers every input with them, so its own answer cannot say);
4. **aggregation**: any rule on the logits (secure aggregation where the rule allows it); with
   certainty, a teacher whose :math:`c_k(x)` is below ``certainty-threshold`` is left out of
   sample x (a sample nobody is certain about is dropped);
5. **student update**: every student (one per architecture, plus the ``server-model`` student
   when it differs: a server may train a larger model than any client, which never goes down)
   starts from its previous weights and distils the targets for up to ``distill.server-steps``
   steps (``distill.loss``), on proxy inputs shifted by up to ``augment-shift`` pixels (a new
   shift of every input each ``check-every`` steps). A label-free stopping rule holds out
   ``holdout`` of the batch: every ``check-every`` steps the KL of the student to the targets on
   it (at temperature T) is measured, the best weights are kept, and the student stops after
   ``patience`` checks without improvement (off with fewer than 20 samples; ``student-steps``
   reports the steps run). With ``server-lr`` :math:`\eta \ne 1`
   the targets are first moved :math:`\eta` times as far from the student's own answer (in
   logits: a server learning rate in function space; with ``server-lr-rule = "fedexp"`` each
   round's is FedExP's step from how far the clients' answers spread around their aggregate,
   :func:`fedexp_ratio`, in [1, ``server-lr``]); ``server-momentum`` is the SGD momentum
   of the students' distillation (restarted every ``check-every`` steps when checking or
   augmenting); ``server-batch`` is its mini-batch size. A fit whose loss or weights turn
   non-finite is undone and redone at half the server-lr (down to 1); if even that diverges,
   the student stays as it was, and the console says so (``student-server-lr`` reports the
   server-lr the round used). When the fit's loss grows ``server-lr-guard`` times over 25 rounds
   (:meth:`StudentDown.guard_server_lr`: a server-lr that overshoots, growing each round), the
   server-lr is cut by a third for the rest of the run. ``distill.replay-rounds`` > 1 replays
   earlier rounds' targets (default: this round's only; earlier targets come from older students);
6. **server optimiser over rounds**: with ``round-momentum`` :math:`\beta > 0` each student's
   weight change of the round is applied with FedAvgM's momentum (:func:`with_momentum`); with
   ``distill.average`` :math:`d > 0` the global model evaluated on the test set is the running
   average of the global student's weights over rounds, :math:`\bar\theta \leftarrow
   d\bar\theta + (1-d)\theta` (Polyak averaging, :func:`fedkd.training.averaged`), while the
   student itself goes down. Both read only the server's own students: post-processing, no
   privacy cost.

What leaves a client: logits on public inputs and, with certainty, one score per input. Never
weights or private data. What comes down: the student's weights, trained only on public inputs
and on what clients released, so sending it is post-processing: it costs no privacy budget.
Under DP-SGD the logits are post-processing of a DP model. The certainty score reads the client's
label histogram, which no mechanism here noises per sample, so ``certainty`` refuses
``privacy.*`` (use a count rule such as ``classwise``, whose counts are noised and charged).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.aggregation.base import softmax
from fedkd.algorithms.base import ClientContext, Exchange, train_metrics
from fedkd.algorithms.certainty import (CERTAINTY, answered_targets, certainty_spec,
                                        check_certainty, client_certainty)
from fedkd.algorithms.public_set import SERVER_STREAM, ProxyAnswers, PublicSetAlgorithm
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.data.federated import FederatedData
from fedkd.errors import ConfigError
from fedkd.losses import feature_loss, kd_kl, relation_loss
from fedkd.models import MODELS
from fedkd.protocol import Payload, PhaseSpec
from fedkd.synthesis.base import frozen
from fedkd.training import (FitStats, fit_to_targets, model_with_state, predict_logits,
                            seeded_generator, state_to_numpy)
from fedkd.validate import positive

_log = logging.getLogger("flwr")  # the run's console and log file

#: Seed stream of the server's augmentation shifts.
AUGMENT_STREAM = 0xA06
#: The server-lr guard's rounds: the median of the last GUARD_RECENT fit losses against the
#: median of the up to GUARD_WINDOW rounds before them (at least GUARD_RECENT of them).
GUARD_RECENT, GUARD_WINDOW = 5, 20
LOCAL_LOSSES = ("kd", "feature", "relation", "prox", "none")
CALIBRATIONS = ("none", "prior")
SERVER_LR_RULES = ("fixed", "fedexp")
#: Request key prefix of a student's mean logits on the announced batch (``<prefix><arch>``):
#: the reference of the clients' prior calibration, computed once on the server.
STUDENT_MEAN = "student-mean-logits:"


@dataclass(frozen=True)
class StudentDownConfig:
    """``student-down.*``: the client's local loss, certainty, and the server student's training.

    ``local-loss`` is one of ``kd``, ``feature``, ``relation``, ``prox``, ``none`` (module docstring, step 2),
    weighted by ``kd-weight`` (``prox-mu`` for ``prox``). ``certainty`` is ``none`` or
    ``support``, with teachers below ``certainty-threshold`` left out of a sample.
    ``server-lr-rule`` is ``fixed`` (every round at ``server-lr``) or ``fedexp`` (each round's
    from the spread of the clients' answers, at most ``server-lr``: :func:`fedexp_ratio`).
    ``server-lr-guard`` is the growth of the server fit's loss that cuts ``server-lr`` by a third (module
    docstring, step 5; 0: off). ``server-model`` names a zoo model for the server's global student (empty: ``train.model``);
    when it differs from every client architecture it is trained beside the students that go
    down and never sent. ``augment-shift`` (pixels, 0: none) shifts proxy inputs in the server's
    distillation; ``holdout``, ``check-every`` and ``patience`` are the label-free stopping rule
    (``patience`` 0: no stopping, all ``distill.server-steps``).
    """

    local_loss: str = "kd"
    calibrate: str = "none"
    kd_weight: float = 1.0
    prox_mu: float = 0.01
    certainty: str = "none"
    certainty_threshold: float = 0.5
    server_model: str = ""
    server_lr: float = 1.0
    server_lr_rule: str = "fixed"
    server_momentum: float = 0.0
    server_batch: int = 0
    round_momentum: float = 0.0
    server_lr_guard: float = 4.0
    augment_shift: int = 0
    holdout: float = 0.1
    check_every: int = 50
    patience: int = 0

    def __post_init__(self) -> None:
        if self.local_loss not in LOCAL_LOSSES:
            raise ConfigError(f"student-down.local-loss must be one of {', '.join(LOCAL_LOSSES)}, "
                              f"got {self.local_loss!r}")
        if self.server_lr_rule not in SERVER_LR_RULES:
            raise ConfigError(f"student-down.server-lr-rule must be one of "
                              f"{', '.join(SERVER_LR_RULES)}, got {self.server_lr_rule!r}")
        if self.calibrate not in CALIBRATIONS:
            raise ConfigError(f"student-down.calibrate must be one of {', '.join(CALIBRATIONS)}, "
                              f"got {self.calibrate!r}")
        if self.server_model and self.server_model not in MODELS:
            raise ConfigError(f"student-down.server-model {self.server_model!r} is not a model of "
                              f"the zoo; valid names: {', '.join(MODELS.names())}")
        for name in ("kd_weight", "prox_mu", "augment_shift", "patience", "server_batch",
                     "server_lr_guard"):
            if getattr(self, name) < 0:
                raise ConfigError(f"student-down.{name.replace('_', '-')} must be >= 0")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"student-down.holdout must be in (0, 1), got {self.holdout!r}")
        positive("student-down.check-every", self.check_every)
        positive("student-down.server-lr", self.server_lr)
        if 0.0 < self.server_lr_guard <= 1.0:
            raise ConfigError("student-down.server-lr-guard must be 0 (off) or > 1, got "
                              f"{self.server_lr_guard!r}")
        if not 0.0 <= self.round_momentum < 1.0:
            raise ConfigError("student-down.round-momentum must be in [0, 1), got "
                              f"{self.round_momentum!r}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError("student-down.server-momentum must be in [0, 1), got "
                              f"{self.server_momentum!r}")


def shifted(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each image of ``x`` [N, C, H, W] translated by up to ``max_shift`` pixels in each
    direction (zero fill): a label-preserving augmentation of proxy inputs."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


@ALGORITHMS.register("student-down")
class StudentDown(PublicSetAlgorithm):
    """Each round: the server's student down, local training near it, logits on announced proxy
    samples up, the student distils their aggregate."""

    config_sections = {"student-down": StudentDownConfig}
    SERVER_STATE = ("_students", "_rng", "_replay", "_average", "_velocity", "_server_lr",
                    "_fit_losses")  # see the base
    INDEX_STREAM = 0x57D0

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        options: StudentDownConfig = cfg.section("student-down")
        check_certainty("student-down", options.certainty, options.certainty_threshold, cfg)
        if options.server_lr_rule == "fedexp" and cfg.aggregation.secure:
            raise ConfigError(
                "student-down.server-lr-rule = 'fedexp' reads each client's answer (the spread "
                "of the answers around their aggregate), which secure aggregation hides: use "
                "'fixed', or aggregation.secure = false")
        if (options.local_loss == "kd" and options.kd_weight > 0 and cfg.privacy.dp_sgd
                and cfg.privacy.grad_sample_mode == "ghost"):
            raise ConfigError(
                "student-down.local-loss = 'kd' needs the teacher's output on each batch, which "
                "ghost clipping (privacy.grad-sample-mode = 'ghost') cannot take: use 'auto' or "
                "'hooks', or student-down.local-loss = 'none'")
        if options.local_loss in ("feature", "relation", "prox") and cfg.privacy.dp_sgd:
            raise ConfigError(
                f"student-down.local-loss = {options.local_loss!r} is not supported under DP-SGD "
                "(Opacus clips per-sample gradients of the model's output; a term on features or "
                "weights would escape the clipping or be dropped): use 'kd' or 'none'")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self.options: StudentDownConfig = self.cfg.section("student-down")
        train = self.cfg.train
        #: The architectures that go down: every client model present.
        self.architectures: list[str] = list(dict.fromkeys(train.client_model_list or [train.model]))
        #: The global model's architecture (evaluated on the test set; may never go down).
        self.server_architecture = self.options.server_model or train.model
        self._students = nn.ModuleDict()
        #: Per student, the running sum of its rounds' weight changes (``round-momentum``).
        self._velocity: dict[str, dict[str, torch.Tensor]] = {}
        #: The server-lr rounds start from: ``server-lr`` until the guard lowers it.
        self._server_lr = self.options.server_lr
        #: The global student's fit losses since the server-lr last changed (the guard's record).
        self._fit_losses: list[float] = []
        #: This round's announced indices and the sent students' logits on them
        #: (:meth:`students_answers`; transient: rebuilt every round).
        self._answers: tuple[np.ndarray, dict[str, np.ndarray]] = (np.zeros(0, np.int64), {})

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        if len(data.public) == 0:
            raise ValueError(f"{self.name} needs a public split: set data.public-fraction > 0")
        self._public = data.public
        self.build_students()

    def build_students(self) -> None:
        """One student per architecture that goes down, plus the server's if it differs."""
        for i, arch in enumerate(dict.fromkeys([*self.architectures, self.server_architecture])):
            self._students[arch] = self.build_model(arch, seed=self.cfg.seed + i)
        self._student = self._students[self.server_architecture]

    def students_arrays(self) -> dict[str, np.ndarray]:
        """The weights of every student that goes down, each under ``<architecture>/``."""
        return {f"{arch}/{k}": v for arch in self.architectures
                for k, v in state_to_numpy(self._students[arch]).items()}

    def proxy_request(self, rnd: int, indices: np.ndarray) -> Payload:
        """The announcement plus the students' weights, each under ``<architecture>/``: a
        client takes its own architecture's. With one architecture (the usual case) that is one
        model; a heterogeneous federation sends every student to every client, since a client's
        architecture is its own choice (``train.client-models`` or its node config)."""
        request = super().proxy_request(rnd, indices)
        arrays = {**request.arrays, **self.students_arrays()}
        self._answers = self.students_answers(indices)
        if self.options.calibrate == "prior":  # the calibration's reference, once for all
            arrays.update({f"{STUDENT_MEAN}{arch}": z.mean(axis=0).astype(np.float32)
                           for arch, z in self._answers[1].items()})
        return Payload(arrays=arrays, config=request.config)

    def students_answers(self, indices: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The announced indices and each sent student's logits on them, where the round reads
        them (prior calibration's reference, FedExP's moves, the server-lr's extrapolation);
        computed once per round, before any student changes."""
        options = self.options
        if options.calibrate != "prior" and options.server_lr_rule == "fixed" and \
                self._server_lr == 1.0:
            return indices, {}
        assert self._public is not None
        x = self._public.x[indices]
        return indices, {arch: predict_logits(self._students[arch], x,
                                              batch_size=self.cfg.train.eval_batch_size)
                         for arch in self.architectures}

    def announced_answer(self, arch: str, indices: np.ndarray) -> np.ndarray | None:
        """The ``arch`` student's logits on ``indices`` (a subset of this round's announced
        ones), as computed at the announcement; None when not computed."""
        announced, answers = self._answers
        if arch not in answers or not len(announced):
            return None
        at = np.minimum(np.searchsorted(announced, indices), len(announced) - 1)
        return answers[arch][at] if np.array_equal(announced[at], indices) else None

    def fit_phase(self, n: int) -> PhaseSpec:
        """Student down; local training; logits [n, C] (and certainty [n]) up."""
        extra = certainty_spec(n) if self.options.certainty != "none" else None
        return self.logits_spec("fit", "train", n, extra=extra, reply_metrics=("loss", "accuracy"))

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        return self.ask_and_distill(rnd, nodes, exchange, self.fit_phase)

    def ask_and_distill(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
                        phase: Callable[[int], PhaseSpec]) -> dict[str, float]:
        """Steps 1 and 3-5 of the module docstring: the announcement (with the students) in
        ``phase``, the answers' aggregate, the students' distillation."""
        asked = self.ask(rnd, nodes, exchange, phase)
        indices, probs = self.targets(asked)
        trained = all("loss" in r.metrics for r in asked.replies)  # not in a query phase
        metrics = {"teachers": len(asked.teachers), "answered": len(indices),
                   **(train_metrics(asked.replies) if trained else {})}
        if len(indices) == 0:
            return metrics
        eta, lr_stats = self.round_server_lr(asked, indices, probs)
        stats = self.distill_students(indices, probs, rnd, eta=eta)
        return {**metrics, **self.public_accuracy(indices, probs), **lr_stats, **stats}

    def round_server_lr(self, asked: ProxyAnswers, indices: np.ndarray,
                        targets: np.ndarray) -> tuple[float, dict[str, float]]:
        """The server-lr this round's fit starts from: ``server-lr`` (as the guard left it), or
        with ``server-lr-rule = "fedexp"`` :func:`fedexp_ratio` of the teachers' answers on the
        samples the round distils on, in [1, ``server-lr``] (``student-fedexp-ratio`` reports
        it unclipped). The moves are taken from the answer of the student the clients started
        from (the first architecture's: with several, an approximation for the others)."""
        if self.options.server_lr_rule == "fixed" or asked.logits is None:
            return self._server_lr, {}
        temperature = self.cfg.distill.temperature
        own = self.announced_answer(self.architectures[0], indices)
        if own is None:  # not announced by proxy_request (a round driven piecewise)
            assert self._public is not None
            own = predict_logits(self._students[self.architectures[0]], self._public.x[indices],
                                 batch_size=self.cfg.train.eval_batch_size)
        own = own / temperature
        teachers = asked.logits[:, np.searchsorted(asked.indices, indices)] / temperature
        ratio = fedexp_ratio(teachers, as_logits(targets), own)
        return (float(np.clip(ratio, 1.0, self._server_lr)),
                {"student-fedexp-ratio": ratio} if np.isfinite(ratio) else {})

    def targets(self, asked: ProxyAnswers) -> tuple[np.ndarray, np.ndarray]:
        """The public indices the round distils on and their targets [n, C]: the rule's, and
        with certainty each sample over the teachers certain of it (a sample no teacher is
        certain of is dropped)."""
        certain = self.options.certainty != "none"
        return answered_targets(self, asked, self.options.certainty_threshold if certain else None)

    def distill_students(self, indices: np.ndarray, targets: np.ndarray, rnd: int,
                         eta: float | None = None) -> dict[str, float]:
        """Every student distils this round's targets (and any replayed ones), starting at
        server-lr ``eta`` (default: ``server-lr``, as the guard left it): module docstring,
        step 5. Returns the global student's loss, steps run and held-out KL."""
        assert self._public is not None
        self._replay.append((self._public.x[indices], targets))
        x = np.concatenate([a for a, _ in self._replay])
        t = np.concatenate([b for _, b in self._replay])
        out: dict[str, float] = {}
        for i, (arch, student) in enumerate(self._students.items()):
            before = copy.deepcopy(student.state_dict())
            own = self.announced_answer(arch, indices) if len(self._replay) == 1 else None
            loss, steps, held, used = self.fit_backing_off(arch, student, before, x, t, rnd, i,
                                                           self._server_lr if eta is None else eta,
                                                           own)
            if self.options.round_momentum:
                self._velocity[arch] = with_momentum(student, before, self._velocity.get(arch),
                                                     self.options.round_momentum)
            if arch == self.server_architecture:
                out = {"student-distill-loss": loss, "student-steps": float(steps),
                       "student-holdout-kl": held, "student-server-lr": used}
        self.update_average()
        self.guard_server_lr(out["student-distill-loss"], rnd)
        return out

    def guard_server_lr(self, loss: float, rnd: int) -> None:
        """Cut the server-lr by a third for the rest of the run (down to 1) when the server fit's
        loss grows: the median of the last :data:`GUARD_RECENT` rounds' losses above
        ``server-lr-guard`` times the median of the (up to :data:`GUARD_WINDOW`) rounds before
        them. The student then restarts from the running average (``distill.average``), if any.

        Why: a server-lr above 2 overshoots wherever the clients' answers move all the way to
        what local training makes of the student (the step is then a contraction only below 2);
        the overshoot swings back each round, larger each time, and the clients' distance from
        the student, which the fit's loss measures, grows geometrically for tens of rounds
        before the student collapses (measured: ``docs/results.md``). Noisy rounds do not fire
        it, as under DP-SGD, where the loss swings 100x between rounds: both sides are medians.
        A third less takes 3 to 2, the bound for clients that move all the way.
        """
        if not np.isfinite(loss):
            return
        self._fit_losses = [*self._fit_losses, float(loss)][-GUARD_RECENT - GUARD_WINDOW:]
        recent, before = self._fit_losses[-GUARD_RECENT:], self._fit_losses[:-GUARD_RECENT]
        factor = self.options.server_lr_guard
        if (not factor or self._server_lr <= 1.0 or len(before) < GUARD_RECENT
                or np.median(before) <= 0):
            return
        growth = float(np.median(recent) / np.median(before))
        if growth <= factor:
            return
        lowered = max(1.0, self._server_lr * 2 / 3)
        _log.warning("%s: round %d, the server fit's loss grew %.1fx over %d rounds "
                     "(student-down.server-lr-guard = %g): server-lr %g -> %g from now on",
                     self.name, rnd, growth, len(self._fit_losses), factor, self._server_lr,
                     lowered)
        self._server_lr, self._fit_losses = lowered, []
        if self._average is not None:  # restart from the average, which did not swing
            self._student.load_state_dict(self._average.state_dict())

    def fit_backing_off(self, arch: str, student: nn.Module, before: dict[str, torch.Tensor],
                        x: np.ndarray, targets: np.ndarray, rnd: int, stream: int,
                        eta: float, own: np.ndarray | None = None,
                        ) -> tuple[float, int, float, float]:
        """:meth:`distill_one` towards the targets moved ``eta`` (the round's server-lr) times
        as far; a fit whose loss or weights turn non-finite is undone (back to ``before``) and
        redone at half the server-lr, down to 1; if that diverges too, the student stays as it
        was. ``own``: the student's logits on ``x``, if known. Returns (loss, steps, held-out
        KL, server-lr used)."""
        while True:
            goal = self.extrapolated(student, x, targets, eta, own)
            loss, steps, held = self.distill_one(student, x, goal, rnd, stream)
            if np.isfinite(loss) and all(torch.isfinite(v).all()
                                         for v in student.state_dict().values()):
                return loss, steps, held, eta
            student.load_state_dict(before)
            if eta == 1.0:
                _log.warning("%s: round %d, the %s student's fit diverged; kept as it was",
                             self.name, rnd, arch)
                return float("nan"), 0, held, eta
            _log.warning("%s: round %d, the %s student's fit diverged at server-lr %g; redone "
                         "at %g", self.name, rnd, arch, eta, max(1.0, eta / 2))
            eta = max(1.0, eta / 2)

    def extrapolated(self, student: nn.Module, x: np.ndarray, targets: np.ndarray,
                     eta: float, own: np.ndarray | None = None) -> np.ndarray:
        r"""The targets moved ``eta`` (``server-lr``) times as far from the student's own answer:
        :math:`\sigma\big((z_s + \eta\,(T \log t - z_s)) / T\big)`, logits centred per row
        (:math:`\eta` = 1: the targets themselves). Like a server learning rate in FedAvg, on
        the function the student computes instead of its weights. ``own``: the student's
        logits on ``x``, if known (else computed)."""
        if eta == 1.0:
            return targets
        temperature = self.cfg.distill.temperature
        if own is None:
            own = predict_logits(student, x, batch_size=self.cfg.train.eval_batch_size)
        own, goal = centred(own / temperature), centred(as_logits(targets))
        return softmax(own + eta * (goal - own), axis=1).astype(np.float32)

    def distill_one(self, student: nn.Module, x: np.ndarray, targets: np.ndarray, rnd: int,
                    stream: int) -> tuple[float, int, float]:
        """Up to ``distill.server-steps`` steps towards ``targets`` from the student's current
        weights, checked every ``check-every`` steps on a held-out part (label-free stopping;
        the best weights are kept). Returns (mean loss, steps run, best held-out KL)."""
        distill, options = self.cfg.distill, self.options
        rng = np.random.default_rng([self.cfg.seed, rnd, stream, AUGMENT_STREAM])
        order = rng.permutation(len(x))
        stop = options.patience > 0 and len(x) >= 20
        held = order[:max(1, int(len(x) * options.holdout))] if stop else order[:0]
        fit = order[len(held):]
        generator = seeded_generator(self.cfg.seed, rnd, SERVER_STREAM, stream)
        # Chunks of check-every steps: the stopping rule's checks, and a new shift of every
        # input per chunk when augmenting (each chunk starts a fresh optimiser, so momentum
        # restarts there too).
        chunk = (options.check_every if stop or options.augment_shift
                 else distill.server_steps)
        best_kl, best_state, since_best, steps, losses = np.inf, None, 0, 0, []
        while steps < distill.server_steps:
            n = min(chunk, distill.server_steps - steps)
            stats = fit_to_targets(
                student, shifted(x[fit], options.augment_shift, rng), targets[fit], steps=n,
                batch_size=options.server_batch or self.cfg.train.batch_size,
                learning_rate=self.cfg.train.learning_rate,
                momentum=options.server_momentum, temperature=distill.temperature,
                loss=self.distill_loss, generator=generator)
            steps += n
            losses.append(stats.loss)
            if not stop:
                continue
            kl = heldout_kl(student, x[held], targets[held], distill.temperature,
                            self.cfg.train.eval_batch_size)
            if kl < best_kl - 1e-6:
                best_kl, best_state, since_best = kl, copy.deepcopy(student.state_dict()), 0
            else:
                since_best += 1
                if since_best >= options.patience:
                    break
        if best_state is not None:
            student.load_state_dict(best_state)
        return float(np.mean(losses)) if losses else 0.0, steps, float(best_kl) if stop else np.nan

    # ----- client half --------------------------------------------------------------------
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "fit":
            raise ValueError(f"{self.name} has no client phase {phase!r}")
        rnd = int(request.config["round"])
        model, teacher, stats = self.train_from_student(request, client, rnd)
        self.save_personal_model(client, model)
        return self.answer_batch(request, client, model, teacher, rnd,
                                 {"loss": stats.loss, "accuracy": stats.accuracy})

    def train_from_student(self, request: Payload, client: ClientContext,
                           rnd: int) -> tuple[nn.Module, nn.Module, FitStats]:
        """Steps 1-2: the student sent, trained locally. Returns the trained model (the caller
        keeps it as the personal model), the student as sent (a frozen copy) and the training's
        stats."""
        model = self.received_student(request, client)
        teacher = frozen_copy(model)
        stats = self.local_fit(client, model, rnd, extra_loss=self.local_term(teacher))
        return model, teacher, stats

    def answer_batch(self, request: Payload, client: ClientContext, model: nn.Module,
                     teacher: nn.Module, rnd: int, metrics: dict[str, float]) -> Payload:
        """Step 3: ``model``'s logits on the announced batch (calibrated on ``teacher``, the
        student as sent, and with its certainty where configured), released and uploaded."""
        x_pub = self.public_inputs(request, client)
        certainty, calibrate = self.options.certainty != "none", self.options.calibrate == "prior"
        batch = self.cfg.train.eval_batch_size
        # the student's answer on the batch: certainty's judge; its mean is calibration's
        # reference, which the server sends (computed once there), else computed here
        reference = self.sent_mean(request, client) if calibrate else None
        student_logits = (predict_logits(teacher, x_pub, batch_size=batch)
                          if certainty or (calibrate and reference is None) else None)
        own = predict_logits(model, x_pub, batch_size=batch)  # one pass of the model
        if calibrate:
            own = prior_corrected(own, student_logits.mean(axis=0) if reference is None
                                  else reference)
        arrays = self.upload_released(client, self.release(client, own, rnd), rnd)
        if certainty:  # judged by the student: it knows every class
            arrays[CERTAINTY] = client_certainty(student_logits, client.data.train.y)
        return Payload(arrays=arrays, metrics={"num-examples": len(client.data.train), **metrics})

    def sent_mean(self, request: Payload, client: ClientContext) -> np.ndarray | None:
        """The mean logits of this client's student on the announced batch, as the server sent
        them (None if not sent); a wrong shape or a non-finite value is refused."""
        mean = request.arrays.get(f"{STUDENT_MEAN}{client.model_name}")
        if mean is None:
            return None
        mean = np.asarray(mean, np.float32)
        if mean.shape != (self.num_classes,) or not np.isfinite(mean).all():
            raise ValueError(f"{self.name}: the server's {STUDENT_MEAN}{client.model_name} must "
                             f"be {self.num_classes} finite values, got shape {mean.shape}")
        return mean

    def received_student(self, request: Payload, client: ClientContext) -> nn.Module:
        """The student of this client's architecture the server sent, as this client's model
        (exactly its weights)."""
        prefix = f"{client.model_name}/"
        weights = {k[len(prefix):]: v for k, v in request.arrays.items() if k.startswith(prefix)}
        if not weights:
            sent = sorted({k.split("/", 1)[0] for k in request.arrays
                           if "/" in k and not k.startswith(STUDENT_MEAN)})
            raise ValueError(f"{self.name}: the server sent students for {', '.join(sent) or 'no'}"
                             f" architecture, not for this client's {client.model_name!r}: add "
                             "it to train.client-models")
        return model_with_state(client.model_name, self.input_shape, self.num_classes, weights)

    def local_term(self, teacher: nn.Module):  # noqa: ANN201 - fedkd.training.ExtraLoss | None
        """The term that keeps the student's knowledge in local training (``local-loss``)."""
        options, temperature = self.options, self.cfg.distill.temperature
        weight = options.kd_weight
        if options.local_loss == "none" or weight == 0:
            return None
        if options.local_loss == "kd":
            def kd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor):
                with torch.no_grad():
                    target = teacher.to(x.device)(x)
                return weight * kd_kl(logits, target, temperature)
            return kd
        if options.local_loss in ("feature", "relation"):
            between = feature_loss if options.local_loss == "feature" else relation_loss

            def on_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            logits: torch.Tensor):
                with torch.no_grad():
                    target = teacher.to(x.device).features(x)
                return weight * between(model.features(x), target)
            return on_features
        anchor = [p.detach().clone() for p in teacher.parameters()]
        mu = options.prox_mu

        def prox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor):
            return 0.5 * mu * sum(((p - a.to(p.device)) ** 2).sum()
                                  for p, a in zip(model.parameters(), anchor))
        return prox


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with no parameter requiring a gradient (a fixed
    teacher). A copy, because the model a message receives is the process's one model of its
    architecture (:func:`fedkd.training.model_with_state`), which the next load overwrites."""
    return frozen(copy.deepcopy(model))


def fedexp_ratio(teachers: np.ndarray, aggregate: np.ndarray, own: np.ndarray) -> float:
    r"""FedExP's server step size (Jhunjhunwala, Wang and Joshi, ICLR 2023; without its
    :math:`\epsilon`) in function space: with :math:`\Delta_k = z_k - z_s` the move of teacher
    k's answer from the student's and :math:`\bar\Delta = z - z_s` the aggregate's move (logits
    of every sample, each row centred; ``teachers`` [K, n, C], ``aggregate`` and ``own``
    [n, C]),

    .. math:: \eta = \frac{\frac{1}{K}\sum_k \|\Delta_k\|^2}{2\,\|\bar\Delta\|^2}.

    Clients that agree (an IID split: :math:`\Delta_k \approx \bar\Delta`) give 1/2, clipped to
    1 by the caller: plain averaging. Clients that pull apart (label skew: the moves cancel in
    the aggregate) give more, and the aggregate's move, which averaging shrank, is extrapolated.
    The paper derives it for FedAvg's weight updates (a convex bound on the step that still
    decreases the distance to the optimum); here the moves are the clients' answers on the
    round's proxy batch. Returns inf when the aggregate did not move.
    """
    own = centred(np.asarray(own, np.float64))
    moves = centred(np.asarray(teachers, np.float64)) - own  # [K, n, C]
    spread = float(np.mean((moves ** 2).reshape(len(moves), -1).sum(axis=1)))
    moved = float(np.sum((centred(np.asarray(aggregate, np.float64)) - own) ** 2))
    return spread / (2 * moved) if moved > 0 else float("inf")


def centred(logits: np.ndarray) -> np.ndarray:
    """Logits with each row's mean (over the classes, the last axis) taken out: the part of an
    answer a softmax reads."""
    return logits - logits.mean(axis=-1, keepdims=True)


def as_logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities of aggregated targets (floored at 1e-7): logits of the same softmax."""
    return np.log(np.clip(probs, 1e-7, None))


def prior_corrected(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    r"""A client's logits [N, C] on the announced batch :math:`X` re-centred per class on the
    student's: :math:`z(x) - \bar z_X + \bar z^{s}_X` (bars: means over :math:`X`;
    ``reference`` is :math:`\bar z^{s}_X`).

    Local training on a label-skewed split shifts a model's logits towards the classes it holds
    on *every* input, a prior shift that carries no knowledge about the input; this removes it
    (in the spirit of logit adjustment for label shift), keeping how the model's answers differ
    between inputs. The student's means are public (the server sent the student), so the
    correction is post-processing of the client's own logits.
    """
    shift = np.asarray(reference, np.float32) - logits.mean(axis=0)
    return logits + shift


@torch.no_grad()
def with_momentum(model: nn.Module, before: dict[str, torch.Tensor],
                  velocity: dict[str, torch.Tensor] | None,
                  beta: float) -> dict[str, torch.Tensor]:
    r"""Server momentum over rounds on the student's weights (FedAvgM's rule, Hsu et al. 2019,
    on the change the distillation made): :math:`v \leftarrow \beta v + (\theta' - \theta)`,
    then :math:`\theta' \leftarrow \theta + v`. ``model`` holds :math:`\theta'` and is set in
    place; ``before`` is :math:`\theta`. Integer buffers are left as the distillation set them.
    Returns the new velocity."""
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        change = value - before[name].to(value.device)
        v = change if velocity is None else beta * velocity[name].to(value.device) + change
        value.copy_(before[name].to(value.device) + v)
        out[name] = v.detach().clone()
    return out


@torch.no_grad()
def heldout_kl(model: nn.Module, x: np.ndarray, targets: np.ndarray, temperature: float,
               batch_size: int) -> float:
    """Mean KL(targets || softmax(model(x) / T)) on held-out proxy inputs: the label-free
    criterion, at the temperature the distillation reads the targets at."""
    logits = torch.from_numpy(predict_logits(model, x, batch_size=batch_size)) / temperature
    t = torch.from_numpy(np.asarray(targets, np.float32)).clamp_min(1e-8)
    return float((t * (t.log() - F.log_softmax(logits, dim=1))).sum(1).mean())

