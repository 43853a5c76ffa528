r"""FedGen-logits: data-free federated distillation where only logits leave a client.

FedGen's idea (a server-side conditional generator that carries the clients' knowledge back to
them, Zhu et al. ICML 2021) moved to input space and made black-box: the server never sees a
client's weights, only its logits on inputs the server generated. Two ways to train the
generator: against the server's own student only (IDEAL-style,
``fedgen-logits.zo-directions = 0``), or also on the teachers themselves through zeroth-order
gradients estimated from their logits on perturbed copies of the synthetic inputs
(FedZGE/DFME-style, ``fedgen-logits.zo-directions = q > 0``): still nothing but logits leaves a
client. Its own keys are in ``fedgen-logits.*`` (:class:`FedGenLogitsConfig`); the generator's
training and ``decay`` are the FedGen family's ``fedgen.*``.

Server state: a conditional generator :math:`G` in input space, images in [-1, 1] like the data
(``fedgen-logits.input-generator``: ``"conv"``, :class:`fedkd.models.generators.InputGenerator`,
or ``"low-frequency"``, :class:`fedkd.models.generators.LowFrequencyGenerator`, whose images hold
only the lowest ``fedgen-logits.frequencies`` cosine frequencies and which, untrained, samples
random smooth images), and a global student :math:`s` (``train.model``). Round t, with sampled
clients :math:`S_t`:

1. **Generate.** Labels :math:`y_i` balanced over the C classes, noise :math:`\epsilon_i \sim
   N(0, I)`, :math:`x_i = G(\epsilon_i, y_i)`, i = 1..N (``fedgen-logits.synthetic-batch``).
   With ``q = fedgen-logits.zo-directions > 0`` the query also holds q probes per sample,
   :math:`x_i + \mu u_{ij}` (``fedgen-logits.zo-epsilon`` = :math:`\mu`, :math:`u_{ij}` uniform on
   the unit sphere), so clients answer (q + 1) N rows.
2. **Query** (phase ``logits``): each client k returns :math:`z_k(x) \in R^{N \times C}`, computed
   under ``no_grad`` from its personal model (free post-processing of a DP-SGD model). With a
   rule that takes weights (``weighted``, ``classwise``) it also returns its label counts [C]
   (noised when privacy is on).
3. **Aggregate**: :math:`t = \mathrm{Agg}(z_1, \dots, z_K)` with ``aggregation.rule``
   (``weighted``: teachers weighted per sample by their count of its conditioning label;
   ``classwise``: each class column weighted by the teachers' counts of that class, no label
   needed).
   **Zeroth-order generator step** (q > 0): with the per-sample objective

   .. math:: f_i(x) = \gamma_t\,\mathrm{CE}\big(t(x), y_i\big)
             - \lambda_{adv}\,\mathrm{KL}\big(t(x) \,\|\, \sigma(s(x))\big)

   (``fedgen-logits.teacher-ce-weight`` = :math:`\gamma_t`, ``fedgen-logits.adversarial-weight`` =
   :math:`\lambda_{adv}`; t(x) the teachers' consensus, known at :math:`x_i` and the probes only),
   the input gradient is estimated as
   :math:`\hat g_i = \frac{d}{q}\sum_j \frac{f_i(x_i + \mu u_{ij}) - f_i(x_i)}{\mu} u_{ij}`
   (:func:`zeroth_order_gradient`) and pushed back through G with the exact gradient of
   :math:`\eta L_{div}`: one Adam step. Steps 1-3 (and this step) repeat
   ``fedgen-logits.generator-queries`` times per round with fresh samples; all answered samples
   are distilled on below.
4. **Distil the student** for ``distill.server-steps`` steps:

   .. math:: L_s = T^2\,\mathrm{KL}\big(t_i \,\|\, \sigma(s(x_i)/T)\big)
             + \gamma_{ce}\,\mathrm{CE}(s(x_i), y_i)

   (``distill.temperature``, ``fedgen-logits.student-ce-weight``), warm-started from the last
   round, on this round's samples and those of the previous R - 1 rounds with the targets they
   got then (R = ``distill.replay-rounds``; its default 0 means 10 here; a replay buffer on the
   server: more distillation data at no extra communication; older targets come from less trained
   teachers).
5. **Train the generator** against the frozen student for ``fedgen.generator-steps`` Adam steps
   (``fedgen.generator-lr``) on fresh batches of ``fedgen.generator-batch``:

   .. math:: L_G = \mathrm{CE}\big(s(G(\epsilon, y)), y\big) + \eta\,L_{div}(\epsilon, G(\epsilon, y))
             - \lambda_{adv}\,\mathrm{KL}\big(t \,\|\, \sigma(s(G(\epsilon_r, y_r)))\big)

   with FedGen's diversity loss :math:`L_{div}` (``fedgen.diversity-weight`` = :math:`\eta`) and
   an optional disagreement term (``fedgen-logits.adversarial-weight`` = :math:`\lambda_{adv}`,
   default 0) that moves this round's samples :math:`(\epsilon_r, y_r)` to where the student still
   disagrees with the teachers' targets (the teachers are not queried again).
6. **Distil the clients** (phase ``distill``): clients that answered receive :math:`t` (the inputs
   are already in their node state from step 2, so only N x C floats go down again) and run
   ``distill.steps`` steps of :math:`\lambda_t T^2\,\mathrm{KL}(t \| \sigma(f_k(x)/T))` with
   :math:`\lambda_t = \lambda_0 \cdot \mathrm{decay}^{t-1}` (``distill.weight`` = :math:`\lambda_0`,
   ``fedgen.decay``: FedGen's decaying regulariser), then ``train.local-steps`` steps of
   cross-entropy on their private data (DP-SGD when ``privacy.dp-sgd``). The synthetic steps
   touch no private data, so they run as ordinary steps even under DP-SGD.

What crosses the network per client per round (m = ``generator-queries``): down, the m (q + 1) N
synthetic inputs (float32; sending the generator's weights and a seed instead would be larger
here: 461k parameters against 200k input values at N = 256 on Fashion-MNIST, and the probes would
need bit-identical regeneration) and m N x C targets; up, m (q + 1) N x C logits (and C counts
with a weighted rule). Client architectures may differ.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, train_metrics
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.algorithms.fedgen import FedGenConfig
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.data.federated import FederatedData
from fedkd.losses import diversity_loss, kd_kl_from_probs
from fedkd.aggregation import build_rule
from fedkd.models.generators import INPUT_GENERATORS
from fedkd.protocol import ArraySpec, Payload, PhaseSpec
from fedkd.training import fit_to_targets, seeded_generator
from fedkd.validate import positive

#: Node-state key prefix of the synthetic inputs received in this round's queries (``/<query>``).
INPUTS_KEY = "fedgen-logits/inputs"
#: Seed streams of the server's generator, student and aggregation randomness.
GENERATOR_STREAM, STUDENT_STREAM, AGGREGATION_STREAM = 0x6E4, 0x57D, 0xA66


@dataclass(frozen=True)
class FedGenLogitsConfig:
    """``fedgen-logits.*``: the queries, the generator's objective and the input generator.

    ``synthetic-batch`` samples per query and ``generator-queries`` queries per round;
    ``zo-directions`` probes per sample (0: the generator learns from the student only) at
    distance ``zo-epsilon``; ``teacher-ce-weight`` and ``adversarial-weight`` weigh the
    generator's objective, ``student-ce-weight`` the student's label term; ``input-generator`` is
    a name of :data:`fedkd.models.generators.INPUT_GENERATORS` (``"conv"`` or
    ``"low-frequency"``, the latter with ``frequencies`` and ``prior-scale``).

    Read elsewhere: the generator's training (``fedgen.generator-steps``, ``generator-lr``,
    ``generator-batch``, ``diversity-weight``) and ``fedgen.decay`` from the FedGen family's
    section (``fedgen.py``); the student's replay from ``distill.replay-rounds`` (its default 0
    means :attr:`FedGenLogits.REPLAY_ROUNDS` = 10 rounds here) and the rest of ``distill.*``.
    """

    synthetic_batch: int = 256
    student_ce_weight: float = 0.0
    adversarial_weight: float = 0.0
    generator_queries: int = 1
    zo_directions: int = 0
    zo_epsilon: float = 1e-3
    teacher_ce_weight: float = 1.0
    input_generator: str = "conv"
    frequencies: int = 7
    prior_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.input_generator not in INPUT_GENERATORS:
            raise ConfigError(f"fedgen-logits.input-generator must be one of "
                              f"{', '.join(INPUT_GENERATORS.names())}, got {self.input_generator!r}")
        for name in ("frequencies", "prior_scale", "synthetic_batch", "generator_queries",
                     "zo_epsilon"):
            positive(f"fedgen-logits.{name.replace('_', '-')}", getattr(self, name))
        for name in ("student_ce_weight", "adversarial_weight", "zo_directions", "teacher_ce_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fedgen-logits.{name.replace('_', '-')} must be >= 0")


def zeroth_order_gradient(values: torch.Tensor, directions: torch.Tensor, mu: float) -> torch.Tensor:
    """Forward-difference estimate of per-sample input gradients from function values only.

    ``values`` [q + 1, n]: f_i at x_i (row 0) and at x_i + mu u_ij (row j); ``directions``
    [q, n, d]: the unit vectors u_ij. Returns [n, d]:
    g_i = (d / q) sum_j (f_i(x_i + mu u_ij) - f_i(x_i)) / mu * u_ij, which for u uniform on the
    sphere is an unbiased estimate of the gradient of a smoothed f_i (DFME, FedZGE).
    """
    q, n, d = directions.shape
    if values.shape != (q + 1, n):
        raise ValueError(f"values of shape {tuple(values.shape)} for {q} directions and {n} samples")
    slopes = (values[1:] - values[0]) / mu  # [q, n]
    return (d / q) * (slopes.unsqueeze(2) * directions).sum(0)


class QueryResult(NamedTuple):
    """What one generate-query-aggregate cycle yields (rows: the answered synthetic samples)."""

    x: np.ndarray  #: synthetic inputs [n, ...]
    targets: np.ndarray  #: aggregated teacher probabilities [n, C]
    y: np.ndarray  #: conditioning labels [n]
    answered: np.ndarray  #: their indices in the query
    noise: torch.Tensor  #: generator noise [n, noise_dim]
    labels: torch.Tensor  #: conditioning labels as a tensor [n]
    teachers: list[int]  #: nodes that answered
    zo_loss: float  #: teachers' generator loss before the zeroth-order step (NaN without it)


@ALGORITHMS.register("fedgen-logits")
class FedGenLogits(Algorithm):
    """Server-side input generator and student; clients share only logits on synthetic inputs."""

    config_sections = {"fedgen": FedGenConfig, "fedgen-logits": FedGenLogitsConfig}
    SERVER_STATE = ("_student", "_generator", "_optimizer", "_replay", "_rng")
    #: Rounds of samples the student distils on when ``distill.replay-rounds`` is 0 (its default).
    REPLAY_ROUNDS = 10

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        # noised label counts with every query cycle, for a rule that needs counts
        counts = cfg.privacy.enabled and cls.releases_label_counts(cfg)
        return cfg.section("fedgen-logits").generator_queries if counts else 0

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        rule = build_rule(cfg)
        privacy = cfg.privacy
        if rule.needs_counts and privacy.dp_sgd and privacy.output_noise <= 0:
            raise ConfigError(
                f"fedgen-logits with the {rule.name} rule releases label counts: under "
                "DP-SGD they need privacy.output-noise > 0"
            )
        if cfg.section("fedgen-logits").zo_directions and rule.client_level_privacy:
            raise ConfigError(f"fedgen-logits.zo-directions needs soft targets: the {rule.name} rule "
                              "answers with noisy one-hot votes; use another aggregation.rule")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self.options: FedGenLogitsConfig = self.cfg.section("fedgen-logits")
        #: The FedGen family's generator training and decay (``fedgen.*``).
        self.fedgen: FedGenConfig = self.cfg.section("fedgen")
        self._student: nn.Module | None = None
        self._generator: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._rng = np.random.default_rng([self.cfg.seed, AGGREGATION_STREAM])
        #: (inputs, targets, labels) of recent rounds, newest last.
        self._replay: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(
            maxlen=self.cfg.distill.replay_rounds or self.REPLAY_ROUNDS)

    # ----- the contract -------------------------------------------------------------------
    def logits_phase(self, n: int) -> PhaseSpec:
        """Logits [n, C] on the synthetic inputs (plus label counts [C] with a weighted rule)."""
        bound = self.cfg.aggregation.max_abs_logit
        arrays = {"logits": ArraySpec(shape=(n, self.num_classes), dtype="float32",
                                      low=-bound, high=bound)}
        if self.rule.uses_weights:
            arrays["label-counts"] = ArraySpec(shape=(self.num_classes,), dtype="float32", low=0.0)
        return PhaseSpec(name="logits", message_type="query", reply_arrays=arrays)

    #: Distillation + local training: targets down, metrics only up.
    DISTILL_PHASE = PhaseSpec(name="distill", message_type="train", reply_metrics=("loss", "accuracy"))

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        fg = self.options
        self._student = self.build_model(seed=self.cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + GENERATOR_STREAM)
            self._generator = INPUT_GENERATORS.get(fg.input_generator)(
                self.num_classes, self.input_shape, fg)
        self._optimizer = torch.optim.Adam(self._generator.parameters(),
                                           lr=self.fedgen.generator_lr, betas=(0.5, 0.999))

    def global_model(self) -> nn.Module | None:
        return self._student

    def synthesize(self, n: int, generator: torch.Generator, track_gradients: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A balanced labelled batch: (noise, labels, inputs) with ``n`` samples; the inputs keep
        their graph through G when ``track_gradients`` (for the zeroth-order step)."""
        assert self._generator is not None, "setup_server not called"
        labels = torch.arange(n) % self.num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        noise = self._generator.sample_noise(n, generator)
        self._generator.train()
        with torch.set_grad_enabled(track_gradients):
            inputs = self._generator(noise, labels)
        return noise, labels, inputs

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        assert self._student is not None and self._generator is not None
        fg, distill = self.options, self.cfg.distill
        teachers: Sequence[int] = nodes
        queries: list[QueryResult] = []
        for query in range(fg.generator_queries):  # teachers that drop out are not asked again
            queries.append(self.query_teachers(rnd, query, teachers, exchange))
            teachers = queries[-1].teachers
        x, t, y = (np.concatenate([getattr(r, f) for r in queries]) for f in ("x", "targets", "y"))

        self._replay.append((x, t, y))
        x_all, t_all, y_all = (np.concatenate(parts) for parts in zip(*self._replay))
        student_stats = fit_to_targets(
            self._student, x_all, t_all, steps=distill.server_steps,
            batch_size=self.cfg.train.batch_size, learning_rate=self.cfg.train.learning_rate,
            temperature=distill.temperature, loss=self.distill_loss, labels=y_all, ce_weight=fg.student_ce_weight,
            generator=seeded_generator(self.cfg.seed, rnd, STUDENT_STREAM),
        )
        last = queries[-1]
        gen_loss = self.train_generator(rnd, last.noise, last.labels, last.targets)

        request = Payload(arrays={"targets": t}, config={
            "round": rnd,
            "answered": np.concatenate([r.answered for r in queries]).tolist(),
            "answered-per-query": [len(r.answered) for r in queries],
        })
        done = exchange(self.DISTILL_PHASE, {node: request for node in teachers})
        metrics = {
            "teachers": len(teachers),
            "answered": len(t),
            "replay-samples": len(x_all),
            "consensus-label-agreement": float((t.argmax(1) == y).mean()) if len(t) else 0.0,
            "student-distill-loss": student_stats.loss,
            "generator-loss": gen_loss,
            **train_metrics(done.replies.values()),
        }
        if fg.zo_directions:
            metrics["generator-teacher-loss"] = float(np.mean([r.zo_loss for r in queries]))
        return metrics

    def query_teachers(
        self, rnd: int, query: int, nodes: Sequence[int], exchange: Exchange
    ) -> QueryResult:
        """One generate-query-aggregate cycle, and with ``zo-directions`` one zeroth-order
        generator step."""
        fg = self.options
        n = fg.synthetic_batch
        gen = seeded_generator(self.cfg.seed, rnd, GENERATOR_STREAM, 3 * query)
        noise, labels, inputs = self.synthesize(n, gen, track_gradients=fg.zo_directions > 0)
        probes = self.zo_probes(inputs.detach(),
                                seeded_generator(self.cfg.seed, rnd, GENERATOR_STREAM, 3 * query + 2))
        x = inputs.detach().numpy().astype(np.float32)
        y = labels.numpy()
        queried = x if probes is None else np.concatenate([x, probes[0].numpy()])

        request = Payload(arrays={"inputs": queried}, config={"round": rnd, "query": query})
        result = exchange(self.logits_phase(len(queried)), {node: request for node in nodes})
        teachers = sorted(result.replies)
        logits = np.stack([result.replies[k].arrays["logits"] for k in teachers])
        weights = None
        if self.rule.uses_weights:
            counts = np.stack([result.replies[k].arrays["label-counts"] for k in teachers])
            weights = self.rule.weights_from_counts(np.maximum(counts, 0.0) + 1e-6,
                                                    np.tile(y, len(queried) // n))
        targets = self.aggregate_teachers(self.rule, logits, self._rng, weights=weights)
        answered = np.flatnonzero(targets.answered[:n])
        zo_loss = float("nan")
        if probes is not None:
            zo_loss = self.zo_generator_step(inputs, noise, labels, targets.probs, *probes)
        return QueryResult(
            x=x[answered], targets=targets.probs[:n][answered].astype(np.float32), y=y[answered],
            answered=answered, noise=noise[answered], labels=labels[answered], teachers=teachers,
            zo_loss=zo_loss,
        )

    def zo_probes(self, inputs: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The q perturbed copies of each input for the zeroth-order estimate (or None, q = 0).

        Returns (probes [q * N, ...] ordered direction-major, directions [q, N, d] of unit norm).
        """
        q = self.options.zo_directions
        if q == 0:
            return None
        n = len(inputs)
        flat = inputs.reshape(n, -1)
        u = torch.randn(q, n, flat.shape[1], generator=generator)
        u = u / u.norm(dim=2, keepdim=True)
        probes = (flat.unsqueeze(0) + self.options.zo_epsilon * u).reshape(q * n, *inputs.shape[1:])
        return probes, u

    def teacher_objective(self, probs: np.ndarray, labels: torch.Tensor,
                          inputs: torch.Tensor) -> torch.Tensor:
        """Per-sample generator loss from the teachers' consensus ``probs`` [N, C] at ``inputs``:
        ``teacher-ce-weight`` * CE(t(x), y) - ``adversarial-weight`` * KL(t(x) || s(x)), the
        second term (the student s is evaluated here, on the server) seeking samples where the
        student still disagrees with the teachers (FedZGE's beta_1 term, DFAD's idea)."""
        fg = self.options
        t = torch.from_numpy(np.asarray(probs, np.float32)).clamp_min(1e-8)
        loss = -fg.teacher_ce_weight * t.log().gather(1, labels[:, None]).squeeze(1)
        if fg.adversarial_weight > 0:
            assert self._student is not None
            self._student.eval()
            with torch.no_grad():
                log_s = F.log_softmax(self._student(inputs), dim=1)
            loss = loss - fg.adversarial_weight * (t * (t.log() - log_s)).sum(1)
        return loss

    def zo_generator_step(self, inputs: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor,
                          probs: np.ndarray, probes: torch.Tensor, directions: torch.Tensor
                          ) -> float:
        """One Adam step of G on the teachers' objective through a zeroth-order gradient.

        With f_i(x) the per-sample :meth:`teacher_objective` (the teachers are black boxes: only
        their consensus at x_i and at the q probes x_i + mu u_ij is known), the input gradient is
        the forward-difference estimate (FedZGE, DFME)
        g_i = (d / q) sum_j (f_i(x_i + mu u_ij) - f_i(x_i)) / mu * u_ij, pushed back through G
        together with the exact gradient of the diversity term. ``probes`` and ``directions`` are
        what :meth:`zo_probes` returned for this query.
        """
        assert self._generator is not None and self._optimizer is not None
        fg = self.options
        n, q = len(inputs), fg.zo_directions
        queried = torch.cat([inputs.detach(), probes])  # the rows the teachers answered, in order
        f = self.teacher_objective(probs, labels.repeat(q + 1), queried).reshape(q + 1, n)
        grad = zeroth_order_gradient(f, directions, fg.zo_epsilon)
        loss = (inputs.reshape(n, -1) * grad).sum() / n
        if self.fedgen.diversity_weight > 0:
            loss = loss + self.fedgen.diversity_weight * diversity_loss(noise, inputs)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()
        return float(f[0].mean())

    def train_generator(
        self, rnd: int, round_noise: torch.Tensor, round_labels: torch.Tensor, targets: np.ndarray
    ) -> float:
        """``fedgen.generator-steps`` Adam steps of L_G against the frozen student."""
        assert self._student is not None and self._generator is not None and self._optimizer
        fg = self.fedgen
        student = self._student
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
        gen = seeded_generator(self.cfg.seed, rnd, GENERATOR_STREAM, 1)
        self._generator.train()
        total = 0.0
        try:
            for _ in range(fg.generator_steps):
                b = fg.generator_batch
                labels = torch.randint(self.num_classes, (b,), generator=gen)
                noise = self._generator.sample_noise(b, gen)
                fake = self._generator(noise, labels)
                loss = F.cross_entropy(student(fake), labels)
                if fg.diversity_weight > 0:
                    loss = loss + fg.diversity_weight * diversity_loss(noise, fake)
                if self.options.adversarial_weight > 0 and len(round_labels):
                    replay = student(self._generator(round_noise, round_labels))
                    loss = loss - self.options.adversarial_weight * kd_kl_from_probs(
                        replay, torch.from_numpy(targets.astype(np.float32)), 1.0)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
                total += float(loss.detach())
        finally:
            for p in student.parameters():
                p.requires_grad_(True)
        return total / max(fg.generator_steps, 1)

    # ----- client half --------------------------------------------------------------------
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        rnd = int(request.config["round"])
        model = self.personal_model(client)
        n_train = len(client.data.train)
        if phase == "logits":
            x = np.asarray(request.arrays["inputs"], np.float32)
            if x.ndim != 4 or tuple(x.shape[1:]) != tuple(client.input_shape):
                raise ValueError(f"fedgen-logits: inputs of shape {x.shape} for data of shape "
                                 f"{client.input_shape}")
            query = int(request.config.get("query", 0))
            if query == 0:  # a new round: forget inputs of an earlier, unfinished one
                for key in [k for k in client.state if k.startswith(INPUTS_KEY)]:
                    del client.state[key]
            client.state[f"{INPUTS_KEY}/{query}"] = x
            arrays = {"logits": self.release_logits(client, model, x, rnd)}
            if self.rule.uses_weights:
                arrays["label-counts"] = self.release_label_counts(client, rnd)
            return Payload(arrays=arrays, metrics={"num-examples": n_train})
        if phase != "distill":
            raise ValueError(f"fedgen-logits has no client phase {phase!r}")
        held = {int(k.rsplit("/", 1)[1]): client.state.pop(k)
                for k in [k for k in client.state if k.startswith(INPUTS_KEY + "/")]}
        per_query = [int(k) for k in request.config["answered-per-query"]]
        if sorted(held) != list(range(len(per_query))):
            raise ValueError(f"fedgen-logits: distill request for {len(per_query)} queries, but "
                             f"this client holds the inputs of queries {sorted(held)}")
        answered = np.split(np.asarray(request.config["answered"], dtype=np.int64),
                            np.cumsum(per_query)[:-1])
        x = np.concatenate([np.asarray(held[q])[a] for q, a in enumerate(answered)])
        targets = np.asarray(request.arrays["targets"], np.float32)
        if len(targets) != len(x):
            raise ValueError(f"fedgen-logits: {len(targets)} targets for {len(x)} inputs")
        train, distill = self.cfg.train, self.cfg.distill
        weight = distill.weight * self.fedgen.decay ** (rnd - 1)
        if len(x) and distill.steps and weight > 0:
            fit_to_targets(model, x, targets, steps=distill.steps, batch_size=train.batch_size,
                           learning_rate=train.learning_rate, temperature=distill.temperature, loss=self.distill_loss,
                           loss_weight=weight,
                           generator=seeded_generator(self.cfg.seed, rnd, client.partition_id, 1))
        stats = self.local_fit(client, model, rnd)
        self.save_personal_model(client, model)
        return Payload(metrics={"num-examples": n_train, "loss": stats.loss, "accuracy": stats.accuracy})

