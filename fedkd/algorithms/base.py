"""The algorithm interface: one class holds an algorithm's server half and its client half.

The server loop (``server/loop.py``) owns everything every algorithm needs: waiting for and
sampling nodes, sending messages with timeouts, validating replies against the phase contract,
counting failures, evaluating, writing metrics. An algorithm only says what happens inside a
round, through two hooks:

* server half, :meth:`Algorithm.run_round`: build requests for the sampled nodes, call
  ``exchange(phase, requests)`` as many times as the protocol needs (FedAvg once; FedMD twice),
  and update the server's model(s) from the validated replies;
* client half, :meth:`Algorithm.client_phase`: answer one request on one client.

Shared pieces for the halves: :meth:`Algorithm.local_fit` (local training, DP-SGD when
configured), :meth:`Algorithm.release_logits` (logits on shared inputs, noised when the model is
not private), :meth:`Algorithm.aggregate_teachers` (a rule plus its privacy accounting),
personal models kept in the node state, and :attr:`Algorithm.SERVER_STATE` for checkpoints.

Configuration: an algorithm owns its config sections (``config_sections``: path -> frozen
dataclass, registered with it; read with ``cfg.section(path)``) and checks the whole
configuration in :meth:`Algorithm.check_config`, which :func:`fedkd.compose.build_config` runs
before anything starts. The configured aggregation rule is built once, as :attr:`Algorithm.rule`.

Adding an algorithm means writing one file in ``fedkd/algorithms/`` and registering it; nothing in
``server/`` or ``client/`` changes, and no list names it (the package imports every module).
"""

from __future__ import annotations

import copy
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from fedkd.aggregation import AGGREGATORS, AggregationRule, Targets, build_rule
from fedkd.config import RunConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.data.federated import ClientData, FederatedData
from fedkd.losses import DistillationLoss, distillation_loss
from fedkd.models import build_model
from fedkd.privacy.accounting import ServerLedger
from fedkd.privacy.dpsgd import ClientPrivacy
from fedkd.privacy.output_noise import OutputMechanism, Release
from fedkd.protocol import Payload, PhaseSpec
from fedkd.training import (
    BatchObserver,
    ExtraLoss,
    PerSampleLoss,
    batch_mean,
    FitStats,
    evaluate,
    fit_supervised,
    model_with_state,
    predict_logits,
    seeded_generator,
    state_to_numpy,
)

#: Prefix of the personal model's arrays in a client's node state.
PERSONAL_PREFIX = "model/"
#: Seed stream of a client's output noise.
OUTPUT_NOISE_STREAM = 0x0B7
#: Seed stream of the GNSS noise that sanitises PATE's data-dependent epsilon (server side).
PATE_RELEASE_STREAM = 0x9A7E
#: Node-state key of the round's released ``num-examples`` under privacy: (round, value).
NUM_EXAMPLES_RELEASE_KEY = "privacy/num-examples-release"

#: Personalised evaluation: every algorithm answers it with loss and accuracy on the local test split.
EVALUATE_PHASE = PhaseSpec(
    name="evaluate", message_type="evaluate", reply_metrics=("loss", "accuracy")
)


def train_metrics(replies: Iterable[Payload]) -> dict[str, float]:
    """``train-loss`` and ``train-accuracy`` of replies, averaged with their ``num-examples``."""
    replies = list(replies)
    n = np.array([float(r.metrics["num-examples"]) for r in replies])
    return {
        "train-loss": float(np.average([r.metrics["loss"] for r in replies], weights=n)),
        "train-accuracy": float(np.average([r.metrics["accuracy"] for r in replies], weights=n)),
    }


@functools.lru_cache(maxsize=8)
def _seeded_subset(seed: int, n: int, size: int) -> np.ndarray:
    """``min(n, size)`` sorted indices of ``range(size)`` drawn with ``seed`` (computed once per
    process, not once per evaluation message)."""
    chosen = np.sort(np.random.default_rng(seed).permutation(size)[:min(n, size)])
    chosen.setflags(write=False)
    return chosen


class QuorumError(RuntimeError):
    """Too few valid replies for a phase to proceed."""


@dataclass(frozen=True)
class ExchangeResult:
    """Validated replies of one phase, keyed by node id, and the nodes that failed."""

    replies: dict[int, Payload]
    failures: dict[int, str] = field(default_factory=dict)


class Exchange(Protocol):
    """Sends one request per node for a phase; returns the valid replies.

    Implementations validate every reply against ``phase`` and raise :class:`QuorumError` when
    fewer than the configured minimum are valid.
    """

    def __call__(self, phase: PhaseSpec, requests: Mapping[int, Payload]) -> ExchangeResult: ...

    def reject(self, phase: str, node: int, reason: str) -> None:
        """Count ``node``'s reply of the phase named ``phase`` as rejected for ``reason``, found
        after the exchange (logged, audited, in ``rejected-replies``)."""
        ...


@dataclass
class ClientContext:
    """Everything the client half may use on one node for one message.

    ``client_id`` is the id the server samples and addresses this client by (its partition id in
    a simulation; ``server.loop.ClientDirectory``). ``state`` persists across rounds of one run on
    this node (Flower's ``Context.state``); the client app saves whatever the algorithm leaves in
    it. ``public`` is the public split shared by every node (for public-set algorithms such as
    FedMD); where the node could not load it, it is empty and ``public_error`` says why.
    ``global_test`` is the official test set where the node has it (simulation), for
    ``federation.client-global-test``.
    """

    cfg: RunConfig
    client_id: int
    partition_id: int
    data: ClientData
    num_classes: int
    input_shape: tuple[int, int, int]
    model_name: str
    public: ArrayDataset
    state: MutableMapping[str, np.ndarray] = field(default_factory=dict)
    global_test: ArrayDataset | None = None
    public_error: str | None = None


class Algorithm(ABC):
    """Base class of all algorithms.

    Parameters
    ----------
    cfg
        The run configuration.
    num_classes, input_shape
        Of the dataset in use.
    """

    #: Registry name, as written in the run config; set by ``@ALGORITHMS.register(name)``.
    name: ClassVar[str]
    #: Config sections this algorithm owns: dotted path -> frozen dataclass (``cfg.section(path)``).
    config_sections: ClassVar[Mapping[str, type]] = {}
    #: True for baselines that upload model weights (FedAvg, FedGen as in the paper).
    shares_weights: ClassVar[bool] = False
    #: Attributes holding the server half's state between rounds (models, optimisers, random
    #: generators, buffers): what a checkpoint saves and a resumed run restores.
    SERVER_STATE: ClassVar[tuple[str, ...]] = ()
    #: True when the client half runs on ``train.device`` (all its training and evaluation goes
    #: through :mod:`fedkd.training`'s loops and its loss callbacks build tensors on the
    #: batch's device); other algorithms' clients stay on the CPU.
    DEVICE_READY: ClassVar[bool] = False
    #: True when the algorithm can aggregate its clients' logits under secure aggregation
    #: (``aggregation.secure``): its clients send summands of the rule's sums, never logits.
    SECURE_AGGREGATION: ClassVar[bool] = False
    #: Whether the server needs a client's data size (``num-examples``): FedAvg's weights, or a
    #: contract check of released counts against it. Without that need, a client under DP-SGD
    #: without output noise withholds it (replies say 1).
    NEEDS_NUM_EXAMPLES: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        type(self).check_config(cfg)
        self.cfg = cfg
        self.num_classes = num_classes
        self.input_shape = input_shape
        #: The configured multi-teacher aggregation rule (``aggregation.*``).
        self.rule: AggregationRule = build_rule(cfg)
        #: Clip, then noise: applied to whatever a client releases from private data.
        self.output_mechanism = OutputMechanism.from_config(cfg.privacy.output_clip,
                                                            cfg.privacy.output_noise)
        #: The configured distillation loss towards aggregated targets (``distill.loss``).
        self.distill_loss: DistillationLoss = distillation_loss(cfg.distill.loss)
        #: Each client's probability of taking part in a round under Poisson sampling
        #: (``federation.sampling = "poisson"``: ``fraction-train``), else ``None``.
        self.client_sampling_rate: float | None = cfg.client_sampling_rate()
        #: Client-level privacy the server spends (randomised aggregation such as PATE votes,
        #: distributed DP): with a sampling rate, every round's releases are charged as one
        #: Poisson-sampled event (amplification by sampling; the round loop closes each round).
        self.server_ledger = ServerLedger(delta=cfg.privacy.delta,
                                          accountant=cfg.privacy.server_accountant,
                                          sampling_rate=self.client_sampling_rate)
        #: A voting rule's (votes [N, C], answered [N]) of every aggregation, for the
        #: data-dependent analysis (:meth:`final_privacy_report`); server side only.
        self.votes: list[tuple[np.ndarray, np.ndarray]] = []

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        """Output releases (at ``privacy.output-noise``) one client makes per round it takes
        part in; ``privacy.target-epsilon`` calibrates DP-SGD over these too."""
        return 0

    @classmethod
    def releases_per_round(cls, cfg: RunConfig) -> int:
        """Every output release one client makes per round it takes part in: the algorithm's
        :meth:`planned_releases` plus, with ``privacy.output-noise`` > 0, its noised
        ``num-examples`` (one per round, reused by every reply of the round)."""
        return cls.planned_releases(cfg) + (1 if cfg.privacy.output_noise > 0 else 0)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Reject a configuration this algorithm cannot run (raise
        :class:`fedkd.errors.ConfigError` with the reason); called before anything starts."""

    # ----- shared -------------------------------------------------------------------------
    def build_model(self, name: str | None = None, seed: int | None = None) -> nn.Module:
        """A fresh model of the zoo (default: ``train.model``), initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed if seed is None else seed)
            return build_model(name or self.cfg.train.model, self.input_shape, self.num_classes)

    # ----- server half --------------------------------------------------------------------
    @abstractmethod
    def setup_server(self, data: FederatedData) -> None:
        """Build the server's state (global model, generator...) before round 1."""

    @abstractmethod
    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        """Run round ``rnd`` with the sampled ``nodes``; return round metrics to record."""

    def global_model(self) -> nn.Module | None:
        """The server's model evaluated on the global test set, if the algorithm has one."""
        return None

    def server_state(self) -> dict[str, Any]:
        """The server half's state after a round (see :attr:`SERVER_STATE`), for a checkpoint."""
        state: dict[str, Any] = {"server-ledger": self.server_ledger.state_dict(),
                                 "votes": copy.deepcopy(self.votes)}
        for name in self.SERVER_STATE:
            value = getattr(self, name)
            if hasattr(value, "state_dict"):  # modules, optimisers, schedulers
                value = value.state_dict()
            elif isinstance(value, np.random.Generator):
                value = value.bit_generator.state
            state[name] = copy.deepcopy(value)
        return state

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`server_state` (after :meth:`setup_server`). A state without one of
        :attr:`SERVER_STATE` (written by another version of fedkd) is refused before anything
        is restored."""
        missing = [name for name in ("server-ledger", *self.SERVER_STATE) if name not in state]
        if missing:
            raise ValueError(
                f"the checkpoint lacks {self.name}'s server state {', '.join(missing)}: it was "
                "written by another version of fedkd and cannot be resumed exactly; use another "
                "output.run-name, or output.resume=false")
        self.server_ledger.load_state_dict(state["server-ledger"])
        self.votes = copy.deepcopy(list(state.get("votes", [])))
        for name in self.SERVER_STATE:
            current, saved = getattr(self, name), state[name]
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(saved)
            elif isinstance(current, np.random.Generator):
                current.bit_generator.state = saved
            else:
                setattr(self, name, copy.deepcopy(saved))

    def round_artifacts(self) -> Mapping[str, bytes]:
        """Files the last round made for the run directory's ``artifacts/`` (name -> content,
        e.g. a picture of synthetic inputs); each is handed over once."""
        return {}

    def evaluation_request(self, rnd: int) -> Payload:
        """What the server sends with the personalised-evaluation request."""
        return Payload(config={"round": rnd})

    # ----- client half --------------------------------------------------------------------
    def answer(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        """Answer any request on one client: the personalised evaluation, the secure
        aggregation's own phases (:mod:`fedkd.secagg.client`), or the algorithm's phases
        (:meth:`client_phase`)."""
        if self.cfg.aggregation.secure:
            from fedkd.secagg import client as secagg_client

            if phase.startswith("secagg-"):
                return secagg_client.answer(phase, request, client.state, client.client_id,
                                            self.cfg.section("secagg"))
            secagg_client.forget(client.state)  # a round's secrets never outlive it
        elif phase.startswith("secagg-"):
            raise ValueError(f"phase {phase!r}: this run has no secure aggregation")
        if phase == EVALUATE_PHASE.name:
            return self.client_evaluate(request, client)
        reply = self.client_phase(phase, request, client)
        if ((self.cfg.privacy.enabled or self.cfg.aggregation.secure)
                and "num-examples" in reply.metrics):
            reply.metrics["num-examples"] = self.release_num_examples(
                client, int(request.config.get("round", 0)), int(reply.metrics["num-examples"]))
        return reply

    @classmethod
    def withholds_num_examples(cls, cfg: RunConfig) -> bool:
        """Whether this algorithm's training replies say 1 for ``num-examples``: under DP-SGD or
        secure aggregation without output noise, where the server does not need the data size
        (:attr:`NEEDS_NUM_EXAMPLES`; :meth:`release_num_examples`)."""
        return ((cfg.privacy.enabled or cfg.aggregation.secure) and cfg.privacy.output_noise <= 0
                and not cls.NEEDS_NUM_EXAMPLES)

    def release_num_examples(self, client: ClientContext, rnd: int, n: int) -> int:
        """What a training reply under privacy says its ``num-examples`` is.

        With ``privacy.output-noise`` > 0: ``n`` plus Gaussian noise of that std (a count:
        sensitivity 1), rounded, at least 1, charged to the client's ledger once per round and
        reused by every reply of the round. Under DP-SGD alone, or secure aggregation (whose
        ``weighted`` rule hides the data size inside the sum): 1 (withheld) where the
        algorithm does not need it (:attr:`NEEDS_NUM_EXAMPLES`), else ``n`` as it is (README,
        "Privacy": the data size of FedAvg, FD and FedGen clients is then not protected).
        """
        if self.cfg.privacy.output_noise <= 0:
            return 1 if type(self).withholds_num_examples(self.cfg) else n
        kept = client.state.get(NUM_EXAMPLES_RELEASE_KEY)
        if kept is not None and int(kept[0]) == rnd:
            return int(kept[1])
        rng = np.random.default_rng([self.cfg.seed, rnd, client.partition_id, OUTPUT_NOISE_STREAM, 2])
        release = self.output_mechanism.counts(np.zeros(n, np.int64), 1, rng)
        self.account_releases(client, release)
        noised = max(1, int(round(float(release.values[0]))))
        client.state[NUM_EXAMPLES_RELEASE_KEY] = np.array([rnd, noised], dtype=np.int64)
        return noised

    @abstractmethod
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        """Answer a request of ``phase`` on one client."""

    def personal_model(self, client: ClientContext) -> nn.Module:
        """The client's own model: restored from its node state, or freshly initialised.

        Fresh models are seeded from the run seed and the partition id, so a rerun with the same
        seed starts every client from the same weights.
        """
        saved = {k[len(PERSONAL_PREFIX):]: v for k, v in client.state.items()
                 if k.startswith(PERSONAL_PREFIX)}
        if saved:  # the process's model of this architecture, holding the saved weights
            return model_with_state(client.model_name, self.input_shape, self.num_classes, saved)
        return self.build_model(client.model_name, seed=self.cfg.seed * 1_000_003 + client.partition_id)

    def save_personal_model(self, client: ClientContext, model: nn.Module) -> None:
        """Keep the client's model in its node state for the next round (it never leaves the node)."""
        client.state.update({PERSONAL_PREFIX + k: v for k, v in state_to_numpy(model).items()})

    def client_evaluation_model(self, request: Payload, client: ClientContext) -> nn.Module:
        """The model a client evaluates on its local test split (default: its personal model)."""
        return self.personal_model(client)

    def client_privacy(self, client: ClientContext) -> ClientPrivacy:
        """The client's example-level privacy ledger, restored from its node state."""
        return ClientPrivacy(self.cfg.privacy, client.state, self.cfg.num_server_rounds,
                             releases_per_round=type(self).releases_per_round(self.cfg))

    def account_releases(self, client: ClientContext, *releases: Release) -> None:
        """Charge released outputs to the client's ledger (one budget check for all of them,
        before anything is recorded) and save it to its node state. Raises
        :class:`~fedkd.privacy.dpsgd.BudgetExhausted` when the budget would be exceeded: the
        caller then publishes nothing."""
        ledger = self.client_privacy(client)
        ledger.account(*releases)
        ledger.save()

    @staticmethod
    def releases_label_counts(cfg: RunConfig) -> bool:
        """Whether clients send their label counts: the configured rule needs them (a class
        attribute of the rule: nothing is built)."""
        return AGGREGATORS.get(cfg.aggregation.rule).needs_counts

    def release_label_counts(self, client: ClientContext, rnd: int) -> np.ndarray:
        """The client's label histogram [C] (float32); noised by the output mechanism and
        charged to its ledger when privacy is on."""
        y = client.data.train.y
        if not self.cfg.privacy.enabled:
            return np.bincount(y, minlength=self.num_classes).astype(np.float32)
        rng = np.random.default_rng([self.cfg.seed, rnd, client.partition_id, OUTPUT_NOISE_STREAM, 1])
        release = self.output_mechanism.counts(y, self.num_classes, rng)
        self.account_releases(client, release)
        return np.maximum(release.values, 0.0).astype(np.float32)

    def release_logits(
        self, client: ClientContext, model: nn.Module, x: np.ndarray, rnd: int
    ) -> np.ndarray:
        """The client's logits on shared, non-private inputs (public or synthetic), to send.

        Computed in eval mode under ``no_grad``. With DP-SGD they are post-processing of a DP
        model and cost nothing. With ``privacy.output-noise`` > 0 and no DP-SGD the model is not
        private, so the rows are clipped and noised for a sensitivity of 2 C sqrt(m)
        (:meth:`~fedkd.privacy.output_noise.OutputMechanism.public_logits`) and the release is
        charged to the client's ledger before the logits leave.
        """
        logits = predict_logits(model, x, batch_size=self.cfg.train.eval_batch_size)
        return self.release(client, logits, rnd)

    def release(self, client: ClientContext, logits: np.ndarray, rnd: int) -> np.ndarray:
        """``logits`` [N, C] that the client computed on shared inputs, made ready to send: as
        they are, or noised and charged as :meth:`release_logits` says."""
        privacy = self.cfg.privacy
        if privacy.output_noise > 0 and not privacy.dp_sgd:
            rng = np.random.default_rng([self.cfg.seed, rnd, client.partition_id, OUTPUT_NOISE_STREAM])
            release = self.output_mechanism.public_logits(logits, rng)
            self.account_releases(client, release)
            logits = release.values.astype(np.float32)
        return logits

    def aggregate_teachers(
        self, rule: AggregationRule, logits: np.ndarray, rng: np.random.Generator,
        weights: np.ndarray | None = None, mask: np.ndarray | None = None,
    ) -> Targets:
        """Aggregate teacher logits with ``rule`` and record any client-level privacy it spent."""
        result = rule.aggregate(logits, weights=weights if rule.uses_weights else None, mask=mask,
                                rng=rng)
        self.server_ledger.record(result.privacy_events)
        if result.votes is not None:
            self.votes.append((result.votes, result.answered.copy()))
        return result

    def final_privacy_report(self) -> dict[str, Any]:
        """Privacy figures released once, after the last round: PATE's data-dependent epsilon
        (:func:`fedkd.privacy.pate_analysis.pate_data_dependent_epsilon`: GNMax charged on the
        answered queries, the threshold step on all, sanitised by smooth sensitivity) beside
        the data-independent one. Empty when no voting rule ran."""
        if not self.votes or not self.rule.data_dependent_privacy:
            return {}
        from fedkd.privacy.pate_analysis import pate_data_dependent_epsilon

        rule = self.rule
        confident = rule.threshold is not None
        report = pate_data_dependent_epsilon(
            np.concatenate([v for v, _ in self.votes]), rule.sigma, self.cfg.privacy.delta,
            np.random.default_rng([self.cfg.seed, PATE_RELEASE_STREAM]),
            answered=np.concatenate([a for _, a in self.votes]),
            threshold=rule.threshold if confident else None,
            sigma_threshold=rule.sigma_threshold if confident else None)
        return {"server-epsilon-data-dependent": report.epsilon_sanitised,
                "server-epsilon-data-independent-answered": report.epsilon_data_independent,
                "server-epsilon-data-dependent-order": report.order,
                "server-epsilon-data-dependent-tuned-on-data": report.tuned_on_data,
                "pate-queries": report.num_queries, "pate-answered": report.num_answered}

    def local_fit(
        self,
        client: ClientContext,
        model: nn.Module,
        rnd: int,
        *,
        extra_loss: ExtraLoss | None = None,
        per_sample_loss: PerSampleLoss | None = None,
        observe: BatchObserver | None = None,
        releases: int = 0,
    ) -> FitStats:
        """``train.local-steps`` steps on the client's private data: DP-SGD when
        ``privacy.dp-sgd`` is on (accounted in the client's ledger), plain SGD otherwise.

        A further loss term is either ``extra_loss`` (any function of the model and the batch)
        or ``per_sample_loss`` (per sample, from the logits and labels: every DP-SGD mode takes
        it, ghost clipping included). ``releases``: output releases the caller will account
        after training (they count towards the budget check).
        """
        if extra_loss is not None and per_sample_loss is not None:
            raise ValueError("give extra_loss or per_sample_loss, not both")
        train = self.cfg.train
        kwargs = dict(
            steps=train.local_steps, batch_size=train.batch_size,
            learning_rate=train.learning_rate, momentum=train.momentum,
            weight_decay=train.weight_decay, observe=observe,
            generator=seeded_generator(self.cfg.seed, rnd, client.partition_id),
        )
        if not self.cfg.privacy.dp_sgd:
            if per_sample_loss is not None:
                extra_loss = batch_mean(per_sample_loss)
            return fit_supervised(model, client.data.train, extra_loss=extra_loss, **kwargs)
        privacy = self.client_privacy(client)
        stats = privacy.fit(model, client.data.train, releases=releases, extra_loss=extra_loss,
                            per_sample_loss=per_sample_loss, **kwargs)
        privacy.save()
        return stats

    def client_evaluate(self, request: Payload, client: ClientContext) -> Payload:
        """Loss and accuracy of :meth:`client_evaluation_model` on the local test split."""
        model = self.client_evaluation_model(request, client)
        stats = evaluate(model, client.data.test, batch_size=self.cfg.train.eval_batch_size)
        metrics: dict[str, int | float] = {
            "num-examples": stats.num_examples, "loss": stats.loss, "accuracy": stats.accuracy,
            "partition-id": client.partition_id,
        }
        subset = self._client_global_test(request, client)
        if subset is not None:
            on_global = evaluate(model, subset, batch_size=self.cfg.train.eval_batch_size)
            metrics["global-test-accuracy"] = on_global.accuracy
        if self.cfg.privacy.enabled:
            metrics["epsilon"] = self.client_privacy(client).epsilon()
        return Payload(metrics=metrics)

    def _client_global_test(self, request: Payload, client: ClientContext) -> ArrayDataset | None:
        """``federation.client-global-test`` samples of the official test set (the same seeded
        subset on every client) on the evaluation rounds where clients also score their own
        model on it: every ``client-global-test-every`` rounds and the last; ``None`` otherwise
        or where the node has no official test set (a device with its own data)."""
        fed = self.cfg.federation
        rnd = int(request.config.get("round", 0))
        if (fed.client_global_test == 0 or client.global_test is None
                or len(client.global_test) == 0
                or not (rnd % fed.client_global_test_every == 0
                        or rnd == self.cfg.num_server_rounds)):
            return None
        chosen = _seeded_subset(self.cfg.seed, fed.client_global_test, len(client.global_test))
        return ArrayDataset(x=client.global_test.x[chosen], y=client.global_test.y[chosen])
