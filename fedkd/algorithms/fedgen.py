r"""FedGen (Zhu, Hong & Zhou, ICML 2021) as in its official code: a **weight-sharing baseline**.

FedGen is data-free knowledge distillation *on top of FedAvg*: clients upload their full model
weights every round (plus this round's label counts), exactly as FedAvg does, and the server
additionally learns a small conditional generator of latent features that it broadcasts back. The
class sets ``shares_weights = True``; fedkd keeps it as the reference FedGen result, not as a
logit-sharing method (see ``fedgen-logits`` for the black-box variant). The specification is
the paper as its official code implements it (``zhuangdizhu/FedGen`` @ dd5807c5).

Notation: round index t = 0, 1, ... (fedkd's round ``rnd`` is 1-based: t = rnd - 1); S_t the
clients whose fit replies were valid; C classes; every model is ``head(features(x))`` with a
linear head h; G(ε, y) the :class:`~fedkd.models.generators.LatentGenerator` (ε ~ U[0, 1)^32,
one-hot y, hidden 256, output of the model's ``feature_dim``: FedGen's 32-d latent for
``fedgen-cnn``).

One round (phase ``fit``, message type ``train``)
-------------------------------------------------
1. The server sends the global weights (every ``state_dict`` array), the generator's
   ``state_dict`` (BatchNorm buffers included) under ``generator/<key>``, and the round.
2. Each sampled client k starts from the global weights and runs ``train.local-steps`` SGD steps
   (batch B = ``train.batch-size``; no momentum or weight decay unless configured) at
   learning rate ``train.learning-rate`` · ``lr-decay``^t on

   .. math::

       L = \mathrm{CE}(f(x), y)
           + \frac{B_g}{B}\,\alpha_t\,\frac{1}{B_g}\sum_{j=1}^{B_g}
             \mathrm{CE}\big(h(G(\epsilon_j, \hat y_j)), \hat y_j\big)
           + \beta_t\,\mathrm{KL}\big(q \,\|\, \sigma(f(x))\big)_{\text{batchmean}},
       \qquad q_i = \sigma\big(h(G(\epsilon_i, y_i))\big) \text{ (detached)},

   with α_t = max(1e-4, ``alpha0`` · ``decay``^t), β_t = max(1e-4, ``beta0`` · ``decay``^t),
   B_g = ``generator-batch``, ŷ_j uniform over the client's own labels, fresh ε for each draw,
   the generator in eval mode and frozen (its outputs are detached, so the generated term trains
   only the head; the latent KL and the CE train the whole model). In round t = 0 there is no
   generator term: L = CE. The client replies with its whole updated model (same keys, shapes and
   dtypes as the global model) and ``label-counts`` [C] int64: n_{c,k} = 1 + the number of
   label-c samples in the mini-batches it drew this round (the +1 is the code's), plus the
   metrics ``num-examples``, ``loss``, ``accuracy``. The contract check requires every count
   >= 1 and the counts to sum to ``local-steps`` · min(B, ``num-examples``) + C.
3. The server trains the generator on the clients' **updated** heads, before averaging
   (teachers in eval mode; only their heads see g), for ``generator-steps`` Adam steps of batch
   B_g: with w_{c,k} = n_{c,k} / Σ_{j∈S_t} n_{c,j} and Q_t = {c : max_k n_{c,k} > 1},
   y_i ~ Uniform(Q_t), ε_i ~ U[0, 1), g_i = G(ε_i, y_i),

   .. math::

       L_G = \sum_{k \in S_t} L_T^{(k)} + \eta\, L_{div}, \qquad
       L_{div} = \exp\Big(-\frac{1}{B_g^2}\sum_{i,j} D_\epsilon(i,j)\,D_g(i,j)\Big)

   (:func:`fedkd.losses.diversity_loss`; η = ``diversity-weight``), where the teacher loss is
   either the code's (``teacher-loss = "code"``, the default)
   L_T^{(k)} = mean_i CE(h_k(g_i), y_i) · mean_i w_{y_i,k} (:func:`teacher_loss_code`: an unreduced
   loss of shape [B] times weights of shape [B, 1] broadcasts to [B, B]), or the intended
   per-sample weighting (``"weighted"``) L_T^{(k)} = mean_i w_{y_i,k} · CE(h_k(g_i), y_i)
   (:func:`teacher_loss_weighted`). Adam: lr ``generator-lr``, betas (0.9, 0.999), weight decay
   1e-2; the generator's BatchNorm runs in train mode here. The code's student term has weight 0
   and is omitted.
4. FedAvg of the replies, weighted by ``num-examples``; then the generator's ExponentialLR
   (γ = 0.98) steps once. The generator trained in round t is used by clients from round t + 1.

Evaluation is fedkd's standard: the global model on the global test set after every round
(``global-accuracy``; the final round's is the headline number) and, for personalised accuracy,
each client runs the global weights sent with the evaluation request on its local test split.

Hyperparameters (FedGen's MNIST values; the paper preset sets ``train.*``): 20 local steps of
batch 32 at lr 0.01 · 0.99^t; α0 = β0 = 10, decay 0.98; generator 50 steps, batch 32, lr 3e-4.

Quirks of the official code kept (notes §1.9): the teacher loss's broadcast (default ``code``
form); the latent KL term, which is in the code but not in the paper; uniform, not Gaussian,
noise; label weights from this round's batch counts + 1 and labels drawn only from those seen
this round; ``local-steps`` counts mini-batches, not epochs; one generated batch size (32) on both
sides; decays of 0.98 (generator lr, α, β) and 0.99 (client lr) per round.

Deviations from the official code:

* fedkd's models use GroupNorm instead of BatchNorm (``fedgen-cnn``), so there are no local
  BatchNorm statistics (the code's FedBN-like quirk 5 disappears) and evaluation uses exactly
  the global weights;
* ŷ on a client is drawn from the labels present in *that client's* training data: the code
  draws from the union of all users' labels, which a fedkd client cannot know without the
  label sets being shared;
* the evaluation protocol is fedkd's (final-round global test accuracy), not the code's mean of
  the 5 best per-round accuracies on label-restricted user test sets;
* the client lr is ``learning-rate`` · ``lr-decay``^t in round t, as the notes state (the code's
  ``ExponentialLR.step(glob_iter)`` after training leaves round t with the exponent of the
  client's previous training round);
* every client runs ``train.model`` (weights are averaged; per-client architectures are ignored,
  as in FedAvg).

Under DP-SGD (``privacy.dp-sgd``, which then needs ``privacy.output-noise`` > 0): the real-data
cross-entropy and the latent KL term touch private examples and go through the DP step; the
generated-sample term touches only synthetic latents and runs as a separate non-private step
with Opacus' hooks off (no privacy cost); its labels are drawn uniformly over all classes (the
client's own label set is private); the label counts released are the noised histogram of the
whole local training set plus one (sensitivity 1, accounted in the client's ledger) instead of
the batch counts. Without DP the label counts reveal each client's label histogram for the round.
All randomness comes from ``torch.Generator`` objects seeded from the run seed, the round and
the partition id; no global RNG state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.algorithms.base import OUTPUT_NOISE_STREAM, Algorithm, ClientContext, Exchange
from fedkd.algorithms.fedavg import weighted_average
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.data.federated import FederatedData
from fedkd.losses import diversity_loss, kd_kl_from_probs
from fedkd.models.generators import LatentGenerator
from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.training import fit_supervised, load_numpy_state, seeded_generator, state_to_numpy
from fedkd.validate import positive

#: Prefix of the generator's arrays in the fit request.
GENERATOR_PREFIX = "generator/"
#: Name of the label-count array in a fit reply.
LABEL_COUNTS = "label-counts"
#: Generator optimiser settings of the official code (not configurable there either).
GENERATOR_BETAS = (0.9, 0.999)
GENERATOR_WEIGHT_DECAY = 1e-2
GENERATOR_LR_GAMMA = 0.98
#: Floor of the client's α_t and β_t.
WEIGHT_FLOOR = 1e-4
#: Seed streams: the generator's initialisation, the server's generator training, the client's
#: generated samples (the client's batches use the plain (seed, round, partition) stream).
GENERATOR_INIT_STREAM = 0x6E1
SERVER_STREAM = 0x6E2
CLIENT_GENERATOR_STREAM = 0x6E3


@dataclass(frozen=True)
class FedGenConfig:
    """Data-free distillation with a server-side generator (``fedgen.*`` keys).

    The section of the FedGen family: owned by this module. ``fedgen`` (the paper, a
    weight-sharing baseline) uses every key as in the official code; ``fedgen-logits`` reads the
    generator's training (``generator-steps``, ``generator-lr``, ``generator-batch``,
    ``diversity-weight``) and ``decay`` (of its clients' distillation weight) from here, and
    keeps its own keys in its section ``fedgen-logits.*`` (``fedgen_logits.py``).
    """

    teacher_loss: str = "code"
    generator_steps: int = 50
    generator_lr: float = 3e-4
    generator_batch: int = 32
    diversity_weight: float = 1.0
    alpha0: float = 10.0
    beta0: float = 10.0
    decay: float = 0.98
    lr_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.teacher_loss not in ("code", "weighted"):
            raise ConfigError(
                f"fedgen.teacher-loss must be 'code' or 'weighted', got {self.teacher_loss!r}"
            )
        for name in ("generator_lr", "generator_batch"):
            positive(f"fedgen.{name.replace('_', '-')}", getattr(self, name))
        for name in ("diversity_weight", "alpha0", "beta0", "generator_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fedgen.{name.replace('_', '-')} must be >= 0")
        for name in ("decay", "lr_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"fedgen.{name.replace('_', '-')} must be in (0, 1]")


# ----- pure pieces (tested directly) ---------------------------------------------------------
def teacher_loss_code(ce: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The official code's teacher loss for one teacher: ``mean(ce[B] * weights[B, 1])``.

    The unreduced loss [B] times the weights reshaped to [B, 1] broadcasts to [B, B], so the value
    is mean(ce) · mean(weights), not a per-sample weighted mean.
    """
    return torch.mean(ce * weights.reshape(-1, 1))


def teacher_loss_weighted(ce: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The intended per-sample weighted teacher loss for one teacher: ``mean(weights * ce)``."""
    return torch.mean(weights.reshape(-1) * ce)


TEACHER_LOSSES = {"code": teacher_loss_code, "weighted": teacher_loss_weighted}


def decayed(init: float, t: int, decay: float, floor: float = WEIGHT_FLOOR) -> float:
    """``max(floor, init * decay**t)``: the code's ``exp_lr_scheduler``."""
    return max(floor, init * decay**t)


def regularizer_weights(cfg: FedGenConfig, t: int) -> tuple[float, float] | None:
    """(α_t, β_t) of the client's generator terms in round t (0-based); ``None`` in round 0."""
    if t < 1:
        return None
    return decayed(cfg.alpha0, t, cfg.decay), decayed(cfg.beta0, t, cfg.decay)


def label_weights(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher weights w [K, C] (each column sums to 1) and the qualified labels Q_t.

    ``counts`` [K, C] are the clients' n_{c,k} (>= 1); Q_t = {c : max_k n_{c,k} > 1}.
    """
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum(axis=0, keepdims=True), np.flatnonzero(counts.max(axis=0) > 1)


def _seed_int(*seeds: int) -> int:
    state = np.random.SeedSequence([int(s) for s in seeds]).generate_state(1, np.uint64)
    return int(state[0]) % (2**63 - 1)


@ALGORITHMS.register("fedgen")
class FedGen(Algorithm):
    """FedGen: FedAvg plus a server-trained latent generator (baseline; uploads weights)."""

    shares_weights = True
    config_sections = {"fedgen": FedGenConfig}
    SERVER_STATE = ("_model", "_generator", "_optimizer", "_scheduler")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        return 1 if cfg.privacy.dp_sgd else 0  # the noised label counts

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        privacy = cfg.privacy
        if privacy.dp_sgd != (privacy.output_noise > 0):
            raise ConfigError(
                "fedgen releases weights and label counts: privacy needs both privacy.dp-sgd "
                "(for the weights) and privacy.output-noise > 0 (for the counts), or neither"
            )
        if cfg.section("fedgen").generator_batch < 2:
            raise ConfigError("fedgen.generator-batch must be >= 2 (the generator's BatchNorm "
                              "trains on batch statistics)")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self.options: FedGenConfig = self.cfg.section("fedgen")
        self._model: nn.Module | None = None
        self._generator: LatentGenerator | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    # ----- shared -------------------------------------------------------------------------
    def _template(self) -> nn.Module:
        if self._model is None:
            self._model = self.build_model(seed=self.cfg.seed)
        return self._model

    def new_generator(self, seed: int | None = None) -> LatentGenerator:
        """A fresh generator for ``train.model``'s latent space (global RNG untouched)."""
        latent_dim = int(self._template().feature_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_int(self.cfg.seed if seed is None else seed,
                                        GENERATOR_INIT_STREAM))
            return LatentGenerator(self.num_classes, latent_dim=latent_dim)

    def fit_phase(self) -> PhaseSpec:
        """Global weights and generator down; updated weights and label counts up."""
        c = self.num_classes
        train = self.cfg.train
        arrays = {k: ArraySpec(shape=tuple(v.shape), dtype=str(v.dtype).removeprefix("torch."))
                  for k, v in self._template().state_dict().items()}
        arrays[LABEL_COUNTS] = ArraySpec(shape=(c,), dtype="int64", low=1)

        private = self.cfg.privacy.dp_sgd
        slack = 6 * self.cfg.privacy.output_noise * np.sqrt(c + 1) + c  # counts and num-examples noised

        def check_counts(reply: Payload) -> None:
            total = int(reply.arrays[LABEL_COUNTS].sum())
            n = int(reply.metrics["num-examples"])
            if private:  # a noised histogram of the local training set, plus one per class
                if n < 1 or total > n + slack:
                    raise InvalidReply(f"label counts sum to {total}; expected at most "
                                       f"num-examples + {slack:g}")
                return
            expected = train.local_steps * min(train.batch_size, n) + c
            if n < 1 or total != expected:
                raise InvalidReply(f"label counts sum to {total}; expected local-steps x "
                                   f"batch + {c} = {expected}")

        return PhaseSpec(name="fit", message_type="train", reply_arrays=arrays,
                         reply_metrics=("loss", "accuracy"), check=check_counts,
                         min_num_examples=1)  # the averaging weight

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        self._model = self.build_model(seed=self.cfg.seed)
        self._generator = self.new_generator()
        fg = self.options
        self._optimizer = torch.optim.Adam(
            self._generator.parameters(), lr=fg.generator_lr, betas=GENERATOR_BETAS,
            weight_decay=GENERATOR_WEIGHT_DECAY)
        self._scheduler = torch.optim.lr_scheduler.ExponentialLR(self._optimizer,
                                                                 gamma=GENERATOR_LR_GAMMA)

    def global_model(self) -> nn.Module:
        return self._template()

    def generator_state(self) -> dict[str, np.ndarray]:
        """The server generator's ``state_dict`` as numpy arrays (copies)."""
        assert self._generator is not None, "setup_server not called"
        return state_to_numpy(self._generator)

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        assert self._scheduler is not None, "setup_server not called"
        arrays = state_to_numpy(self._template())
        arrays.update({GENERATOR_PREFIX + k: v for k, v in self.generator_state().items()})
        request = Payload(arrays=arrays, config={"round": rnd})
        result = exchange(self.fit_phase(), {node: request for node in nodes})
        replies = [result.replies[n] for n in sorted(result.replies)]

        lr = float(self._optimizer.param_groups[0]["lr"])
        metrics = self.train_generator(rnd, replies)
        counts = [float(r.metrics["num-examples"]) for r in replies]
        model_keys = list(self._template().state_dict())
        states = [{k: r.arrays[k] for k in model_keys} for r in replies]
        load_numpy_state(self._template(), weighted_average(states, counts))
        self._scheduler.step()
        total = sum(counts)
        return {
            "train-loss": sum(c * float(r.metrics["loss"]) for c, r in zip(counts, replies)) / total,
            "train-accuracy": sum(c * float(r.metrics["accuracy"]) for c, r in zip(counts, replies))
            / total,
            "generator-lr": lr,
            **metrics,
        }

    def _teacher_heads(self, replies: Sequence[Payload]) -> list[nn.Module]:
        heads = []
        for reply in replies:
            model = self.build_model()
            load_numpy_state(model, {k: reply.arrays[k] for k in model.state_dict()})
            model.eval()
            model.requires_grad_(False)
            heads.append(model)
        return heads

    def train_generator(self, rnd: int, replies: Sequence[Payload]) -> dict[str, float]:
        """``generator-steps`` Adam steps of L_G on the replies' updated heads; round metrics."""
        gen, opt = self._generator, self._optimizer
        assert gen is not None and opt is not None, "setup_server not called"
        fg = self.options
        counts = np.stack([r.arrays[LABEL_COUNTS] for r in replies])
        weights, qualified = label_weights(counts)
        if len(qualified) == 0:  # cannot happen with valid replies (every batch has a label)
            return {"qualified-labels": 0}
        before = [p.detach().clone() for p in gen.parameters()]
        w = torch.from_numpy(weights.astype(np.float32))  # [K, C]
        labels = torch.from_numpy(qualified.astype(np.int64))
        teachers = self._teacher_heads(replies)
        form = TEACHER_LOSSES[fg.teacher_loss]
        rng = seeded_generator(self.cfg.seed, rnd, SERVER_STREAM)
        b = fg.generator_batch
        gen.train()
        teacher_total, diversity_total = 0.0, 0.0
        for _ in range(fg.generator_steps):
            opt.zero_grad(set_to_none=True)
            y = labels[torch.randint(len(labels), (b,), generator=rng)]
            eps = gen.sample_noise(b, rng)
            g = gen(eps, y)
            diversity = diversity_loss(eps, g)
            teacher = sum(
                form(F.cross_entropy(model.head(g), y, reduction="none"), w[k, y])
                for k, model in enumerate(teachers)
            )
            loss = teacher + fg.diversity_weight * diversity
            loss.backward()
            opt.step()
            teacher_total += float(teacher.detach())
            diversity_total += float(diversity.detach())
        change = torch.sqrt(sum(((p.detach() - q) ** 2).sum()
                                for p, q in zip(gen.parameters(), before)))
        steps = max(fg.generator_steps, 1)
        return {
            "generator-teacher-loss": teacher_total / steps,
            "generator-diversity-loss": diversity_total / steps,
            "generator-change": float(change),
            "qualified-labels": int(len(qualified)),
        }

    def evaluation_request(self, rnd: int) -> Payload:
        return Payload(arrays=state_to_numpy(self._template()), config={"round": rnd})

    # ----- client half --------------------------------------------------------------------
    def _client_model(self, request: Payload) -> nn.Module:
        model = self.build_model()
        load_numpy_state(model, {k: v for k, v in request.arrays.items()
                                 if not k.startswith(GENERATOR_PREFIX)})
        return model

    def _client_generator(self, request: Payload) -> LatentGenerator:
        gen = self.new_generator()
        load_numpy_state(gen, {k[len(GENERATOR_PREFIX):]: v for k, v in request.arrays.items()
                               if k.startswith(GENERATOR_PREFIX)})
        gen.eval()
        gen.requires_grad_(False)
        return gen

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "fit":
            raise ValueError(f"fedgen has no client phase {phase!r}")
        rnd = int(request.config["round"])
        t = rnd - 1
        c = self.num_classes
        train, fg = self.cfg.train, self.options
        model = self._client_model(request)

        private = self.cfg.privacy.dp_sgd
        latent_term = generated_term = None
        weights = regularizer_weights(fg, t)
        if weights is not None:
            alpha, beta = weights
            gen = self._client_generator(request)
            # Under DP the client's own label set is private: draw from every class instead.
            labels = (torch.arange(c) if private else
                      torch.from_numpy(np.unique(client.data.train.y).astype(np.int64)))
            rng = seeded_generator(self.cfg.seed, rnd, client.partition_id, CLIENT_GENERATOR_STREAM)
            b_g = fg.generator_batch
            ratio = b_g / train.batch_size

            def latent_term(model, x, y, logits):  # noqa: ANN001 - see training.ExtraLoss
                with torch.no_grad():  # q: the head's view of generated latents of the batch labels
                    q = F.softmax(model.head(gen(gen.sample_noise(len(y), rng), y)), dim=1)
                return beta * kd_kl_from_probs(logits, q, 1.0)

            def generated_term(model):  # noqa: ANN001 - synthetic latents only
                y_hat = labels[torch.randint(len(labels), (b_g,), generator=rng)]
                with torch.no_grad():  # G is frozen: the term reaches the head only
                    z = gen(gen.sample_noise(b_g, rng), y_hat)
                return ratio * alpha * F.cross_entropy(model.head(z), y_hat)

        if private:
            return self._private_fit(client, model, rnd, latent_term, generated_term)
        extra_loss = None
        if latent_term is not None and generated_term is not None:
            def extra_loss(model, x, y, logits):  # noqa: ANN001 - see training.ExtraLoss
                latent = latent_term(model, x, y, logits)  # draws in the official code's order
                return generated_term(model) + latent

        seen = torch.zeros(c, dtype=torch.int64)

        def count(logits: torch.Tensor, y: torch.Tensor) -> None:
            seen.add_(torch.bincount(y, minlength=c))

        stats = fit_supervised(
            model, client.data.train, steps=train.local_steps, batch_size=train.batch_size,
            learning_rate=train.learning_rate * fg.lr_decay**t, momentum=train.momentum,
            weight_decay=train.weight_decay, extra_loss=extra_loss, observe=count,
            generator=seeded_generator(self.cfg.seed, rnd, client.partition_id),
        )
        return Payload(
            arrays={**state_to_numpy(model), LABEL_COUNTS: (seen + 1).numpy().astype(np.int64)},
            metrics={"num-examples": len(client.data.train), "loss": stats.loss,
                     "accuracy": stats.accuracy},
        )

    def _private_fit(self, client: ClientContext, model: nn.Module, rnd: int,
                     latent_term, generated_term) -> Payload:  # noqa: ANN001
        """DP-SGD on the private terms, a non-private step for the generated term, noised counts."""
        train, fg = self.cfg.train, self.options
        privacy = self.client_privacy(client)
        stats = privacy.fit(
            model, client.data.train, steps=train.local_steps, batch_size=train.batch_size,
            learning_rate=train.learning_rate * fg.lr_decay ** (rnd - 1),
            momentum=train.momentum, weight_decay=train.weight_decay, extra_loss=latent_term,
            public_loss=generated_term, releases=1,
            generator=seeded_generator(self.cfg.seed, rnd, client.partition_id),
        )
        rng = np.random.default_rng([self.cfg.seed, rnd, client.partition_id, OUTPUT_NOISE_STREAM])
        counts = self.output_mechanism.counts(client.data.train.y, self.num_classes, rng)
        privacy.account(counts)
        privacy.save()
        released = np.maximum(np.rint(counts.values), 0).astype(np.int64) + 1
        return Payload(
            arrays={**state_to_numpy(model), LABEL_COUNTS: released},
            metrics={"num-examples": len(client.data.train), "loss": stats.loss,
                     "accuracy": stats.accuracy},
        )

    def client_evaluation_model(self, request: Payload, client: ClientContext) -> nn.Module:
        return self._client_model(request)
