"""The machinery every public-set (proxy-set) algorithm shares: FedMD, DS-FL, Selective-FD.

A public set is a seeded split of the official train set that every node holds (the same seed
on every node), so only indices travel. With ``data.public-labels = false`` it is an
*unlabeled proxy set*: its labels are withheld (they read ``-1``) and nothing here reads them.

:class:`PublicSetAlgorithm` holds the server half's common steps, each a method an algorithm
calls from its own ``run_round``:

* :meth:`announce`: draw this round's ``distill.public-batch`` indices;
* :meth:`logits_spec`: the reply contract of logits on them (``[n, C]``, bounded), plus label
  counts ``[C]`` when the rule needs counts (``classwise``, ``weighted``) and, for
  Selective-FD, an answer mask;
* :meth:`teacher_weights`: the rule's weights from the replies (label counts, or each
  client's data size);
* :meth:`distill_student`: the server's global student distils on the aggregated targets,
  replaying the last ``distill.replay-rounds`` rounds' (inputs, targets) so it does not forget
  earlier batches (0, the default: :attr:`~PublicSetAlgorithm.REPLAY_ROUNDS`, this round's only); :meth:`teach` does that and sends the targets to the clients;

and the client half's: :meth:`public_inputs` (the announced inputs, checked), :meth:`upload`
(logits on them, plus the label counts a count rule needs) and :meth:`distill_on_targets` (the
client's distillation on the targets it was sent).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from torch import nn

from fedkd.aggregation import AGGREGATORS, Targets
from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, ExchangeResult
from fedkd.data.datasets import ArrayDataset
from fedkd.config import RunConfig
from fedkd.data.federated import FederatedData
from fedkd.errors import ConfigError
from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.secagg import SecAggConfig, SecureSum, check_public_keys, public_key_specs, secure_sum
from fedkd.secagg import client as secagg_client
from fedkd.training import FitStats, averaged, fit_to_targets, seeded_generator

#: Seed stream of the server student's batches (client streams use partition ids).
SERVER_STREAM = 2**31 - 1
#: Name of the label-count array in a reply.
LABEL_COUNTS = "label-counts"
#: Seed stream of the secure aggregation's neighbourhood rings (server side).
SECAGG_STREAM = 0x5EC466


class ProxyAnswers(NamedTuple):
    """The valid replies to one round's announcement, teachers in node order."""

    indices: np.ndarray  #: the announced public indices [n]
    teachers: list[int]  #: nodes that answered, sorted
    replies: list[Payload]  #: their replies, in that order
    logits: np.ndarray | None  #: their logits [K, n, C] (``None`` under secure aggregation)
    secure: SecureSum | None = None  #: under secure aggregation: the sum of their summands


class PublicSetAlgorithm(Algorithm):
    """Base of the algorithms that share logits on announced public (proxy) samples."""

    SERVER_STATE = ("_student", "_rng", "_replay", "_average")
    DEVICE_READY = True
    SECURE_AGGREGATION = True
    NEEDS_NUM_EXAMPLES = False  # only the train metrics (and the weighted rule, which needs
    # output noise under DP-SGD) read it
    #: Whether the proxy set is the public split of the dataset (``data.public-fraction``);
    #: an algorithm whose proxy set comes from elsewhere sets False and fills :attr:`_public`.
    NEEDS_PUBLIC_SPLIT = True
    #: The seed stream of the server's index draws (kept per algorithm: results stay as they were).
    INDEX_STREAM = 0xFED3D
    #: Rounds of targets the student distils on when ``distill.replay-rounds`` is 0 (its
    #: default): this round's only.
    REPLAY_ROUNDS = 1

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cls.NEEDS_PUBLIC_SPLIT and cfg.data.public_fraction <= 0:
            raise ConfigError(f"{cls.name} needs a public set: set data.public-fraction > 0")
        if cls.releases_label_counts(cfg) and cfg.privacy.dp_sgd and cfg.privacy.output_noise <= 0:
            raise ConfigError(
                f"{cls.name} with the {cfg.aggregation.rule} rule releases label counts: under "
                "DP-SGD they need privacy.output-noise > 0")
        rule = AGGREGATORS.get(cfg.aggregation.rule)
        # under secure aggregation a client weighs its own summands by its true size
        if (rule.uses_weights and not rule.needs_counts and cls.withholds_num_examples(cfg)
                and not cfg.aggregation.secure):
            raise ConfigError(
                f"{cls.name} with the {cfg.aggregation.rule} rule weighs each client by its data "
                "size (num-examples), which a client under DP-SGD withholds (its replies say 1), "
                "so every client would weigh the same: release a noised count with "
                "privacy.output-noise > 0, or use the unweighted rule (logit-mean)")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        p = cfg.privacy
        logits = 1 if p.output_noise > 0 and not p.dp_sgd else 0  # noised logits of a non-DP model
        counts = 1 if p.enabled and cls.releases_label_counts(cfg) else 0
        return logits + counts

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self._student: nn.Module | None = None
        #: The running average of the student's weights (``distill.average`` > 0), evaluated as
        #: the global model; None before the first round.
        self._average: nn.Module | None = None
        self._public: ArrayDataset | None = None
        self._rng = np.random.default_rng([self.cfg.seed, self.INDEX_STREAM])
        #: (inputs, targets) of recent rounds, newest last, for the student's replay.
        self._replay: deque[tuple[np.ndarray, np.ndarray]] = deque(
            maxlen=self.cfg.distill.replay_rounds or self.REPLAY_ROUNDS)

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        if len(data.public) == 0:
            raise ValueError(f"{self.name} needs a public split: set data.public-fraction > 0")
        self._public = data.public
        self._student = self.build_model(seed=self.cfg.seed)

    def global_model(self) -> nn.Module | None:
        """The student, or with ``distill.average`` > 0 the running average of its weights."""
        return self._average if self._average is not None else self._student

    def update_average(self) -> None:
        """Fold the student of this round into the running average (``distill.average`` > 0):
        post-processing of the server's own model, no privacy cost."""
        if self.cfg.distill.average > 0:
            assert self._student is not None, "setup_server not called"
            self._average = averaged(self._average, self._student, self.cfg.distill.average)

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        if state.get("_average") is not None and self._average is None:
            self._average = copy.deepcopy(self._student)  # the shape the saved average loads into
        super().load_server_state(state)

    def announce(self) -> np.ndarray:
        """This round's public indices: ``distill.public-batch`` of them, sorted."""
        assert self._public is not None, "setup_server not called"
        n = min(self.cfg.distill.public_batch, len(self._public))
        return np.sort(self._rng.choice(len(self._public), size=n, replace=False))

    def ask(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
            phase: Callable[[int], PhaseSpec]) -> ProxyAnswers:
        """Announce this round's indices and collect every sampled node's valid reply in
        ``phase(n)`` (the phase for ``n`` announced samples). Under secure aggregation the
        replies carry public keys, and the protocol's exchanges follow: the answers hold the
        sum of the teachers' summands, no logits."""
        indices = self.announce()
        request = self.proxy_request(rnd, indices)
        result = exchange(phase(len(indices)), {node: request for node in nodes})
        if self.cfg.aggregation.secure:
            summed = secure_sum(
                exchange, rnd, result.replies, self.secure_length(len(indices)),
                self.secure_bound(), self.cfg.section("secagg"),
                np.random.default_rng([self.cfg.seed, rnd, SECAGG_STREAM]))
            teachers = list(summed.survivors)
            return ProxyAnswers(indices, teachers, [result.replies[k] for k in teachers], None,
                                summed)
        teachers = sorted(result.replies)
        replies = [result.replies[k] for k in teachers]
        logits = np.stack([r.arrays["logits"] for r in replies])
        return ProxyAnswers(indices, teachers, replies, logits)

    def teacher_targets(self, asked: ProxyAnswers) -> Targets:
        """The rule's targets on the answers: from the teachers' logits and weights, or under
        secure aggregation from their summed summands (recording distributed DP's client-level
        cost in the server ledger)."""
        if asked.secure is None:
            weights = self.teacher_weights(asked.replies, asked.logits)
            return self.aggregate_teachers(self.rule, asked.logits, self._rng, weights=weights)
        sums = self.rule.unpack(asked.secure.total, len(asked.indices), self.num_classes)
        if asked.secure.noise_multiplier > 0:
            from dp_accounting import GaussianDpEvent

            # Under Poisson sampling the round's size (and so the noise above the calibrated
            # floor, which grows with it) depends on who was sampled: charge the floor, the
            # configured noise multiplier that every completed round's sum carries at least.
            z = (asked.secure.noise_multiplier if self.client_sampling_rate is None
                 else self.cfg.section("secagg").noise_multiplier)
            self.server_ledger.record([GaussianDpEvent(z)])
        return self.rule.from_sums(sums, len(asked.teachers))

    def secure_length(self, n: int) -> int:
        """Values in one client's summands for ``n`` announced samples."""
        return sum(int(np.prod(s)) for s in self.rule.sum_layout(n, self.num_classes).values())

    def secure_bound(self) -> float:
        """The largest magnitude of one summand value: a weight (clipped to
        ``secagg.max-weight``) times a probability, or a scaled logit; under distributed DP
        the clip bounds every value."""
        options: SecAggConfig = self.cfg.section("secagg")
        bound = (self.cfg.aggregation.max_abs_logit / self.rule.temperature
                 if self.rule.needs_logits else 1.0)
        if self.rule.uses_weights:
            bound *= options.max_weight
        return min(bound, options.clip) if options.distributed_dp else bound

    def proxy_request(self, rnd: int, indices: np.ndarray) -> Payload:
        """What tells a client which proxy inputs a phase is about: here their indices in the
        public split every node holds (an algorithm with another proxy source sends more)."""
        return Payload(config={"round": rnd, "indices": indices.tolist()})

    def logits_spec(self, name: str, message_type: str, n: int,
                    extra: Mapping[str, ArraySpec] | None = None, check=None,  # noqa: ANN001
                    reply_metrics: tuple[str, ...] = ()) -> PhaseSpec:
        """Logits [n, C] (plus label counts [C] when the rule needs counts, plus ``extra``)."""
        bound = self.cfg.aggregation.max_abs_logit
        if self.cfg.aggregation.secure:  # logits and counts stay on the client; keys go up
            arrays = dict(public_key_specs())
            check = _with_key_check(check)
        else:
            arrays = {"logits": ArraySpec(shape=(n, self.num_classes), dtype="float32",
                                          low=-bound, high=bound)}
        if self.releases_label_counts(self.cfg) and not self.cfg.aggregation.secure:
            arrays[LABEL_COUNTS] = ArraySpec(shape=(self.num_classes,), dtype="float32", low=0.0)
        arrays.update(extra or {})
        return PhaseSpec(name=name, message_type=message_type, reply_arrays=arrays, check=check,
                         reply_metrics=reply_metrics,
                         min_num_examples=1)  # the weighted rule's teacher weight

    def teacher_weights(self, replies: Sequence[Payload], logits: np.ndarray) -> np.ndarray | None:
        """The rule's weights: label counts ``[K, C]`` (per class, or per sample by the
        consensus label of ``logits`` [K, n, C]), else each teacher's data size ``[K]``;
        ``None`` for rules without."""
        if not self.rule.uses_weights:
            return None
        if LABEL_COUNTS in replies[0].arrays:
            counts = np.stack([r.arrays[LABEL_COUNTS] for r in replies]).astype(np.float64)
            counts = counts + 1e-6  # no class may end with zero total weight
            consensus = logits.mean(axis=0).argmax(axis=1)  # unlabeled: the mean logit's class
            return self.rule.weights_from_counts(counts, consensus)
        return np.array([float(r.metrics["num-examples"]) for r in replies])

    def distill_student(self, indices: np.ndarray, targets: np.ndarray, rnd: int) -> FitStats:
        """Distil the global student on this round's targets and the replayed earlier ones."""
        assert self._public is not None and self._student is not None, "setup_server not called"
        self._replay.append((self._public.x[indices], targets))
        all_inputs = np.concatenate([x for x, _ in self._replay])
        all_targets = np.concatenate([t for _, t in self._replay])
        distill = self.cfg.distill
        stats = fit_to_targets(
            self._student, all_inputs, all_targets, steps=distill.server_steps,
            batch_size=self.cfg.train.batch_size, learning_rate=self.cfg.train.learning_rate,
            temperature=distill.temperature, loss=self.distill_loss,
            generator=seeded_generator(self.cfg.seed, rnd, SERVER_STREAM),
        )
        self.update_average()
        return stats

    def teach(self, rnd: int, teachers: list[int], indices: np.ndarray, targets: np.ndarray,
              exchange: Exchange, phase: PhaseSpec) -> tuple[FitStats, ExchangeResult]:
        """Distil the server's student on the targets, then send them (and their indices) to
        the ``teachers`` in ``phase``, where each client distils on them."""
        student = self.distill_student(indices, targets, rnd)
        about = self.proxy_request(rnd, indices)
        down = Payload(arrays={**about.arrays, "targets": targets}, config=about.config)
        return student, exchange(phase, {node: down for node in teachers})

    def public_accuracy(self, indices: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """How often the targets' argmax is the true label: only with a labelled public set."""
        assert self._public is not None
        if not self.cfg.data.public_labels:
            return {}
        return {"consensus-accuracy": float((targets.argmax(1) == self._public.y[indices]).mean())}

    # ----- client half --------------------------------------------------------------------
    def public_inputs(self, request: Payload, client: ClientContext) -> np.ndarray:
        """The announced public inputs (indices checked against this node's public set)."""
        public = client.public
        indices = np.asarray(request.config["indices"], dtype=np.int64)
        if indices.ndim != 1 or (indices.size and (indices.min() < 0 or indices.max() >= len(public))):
            if not len(public) and client.public_error:
                raise ValueError(f"{self.name}: this node has no public set "
                                 f"({client.public_error})")
            raise ValueError(f"{self.name}: public indices outside 0..{len(public) - 1}")
        return public.x[indices]

    def upload(self, client: ClientContext, model: nn.Module, x_pub: np.ndarray,
               rnd: int) -> dict[str, np.ndarray]:
        """What a client sends for the announced samples: its logits (noised where the model is
        not private), plus its label counts when the rule needs counts. Under secure
        aggregation it keeps its summands (:meth:`secure_summands`) and sends public keys."""
        return self.upload_released(client, self.release_logits(client, model, x_pub, rnd), rnd)

    def upload_released(self, client: ClientContext, logits: np.ndarray,
                        rnd: int) -> dict[str, np.ndarray]:
        """:meth:`upload` of logits already released (:meth:`~fedkd.algorithms.base.Algorithm.
        release`)."""
        if self.cfg.aggregation.secure:
            contribution = self.secure_summands(client, logits, rnd)
            return secagg_client.advertise(client.state, contribution, rnd)
        arrays = {"logits": logits}
        if self.releases_label_counts(self.cfg):
            arrays[LABEL_COUNTS] = self.release_label_counts(client, rnd)
        return arrays

    def secure_summands(self, client: ClientContext, logits: np.ndarray, rnd: int) -> np.ndarray:
        """The client's summands of the rule's sums, flat in :meth:`~fedkd.aggregation.
        AggregationRule.sum_layout` order. Its weight: label counts for a class-axis rule
        (``classwise``; noised and charged under privacy), else its data size, clipped to
        ``secagg.max-weight``. (The per-sample label weights of the plain ``weighted`` rule need
        the consensus label, which only the sum reveals.)"""
        weight = None
        if self.rule.uses_weights:
            options: SecAggConfig = self.cfg.section("secagg")
            if self.rule.weight_axis == "class":
                weight = self.release_label_counts(client, rnd).astype(np.float64) + 1e-6
            else:
                weight = np.float64(len(client.data.train))
            weight = np.minimum(weight, options.max_weight)
        bound = self.cfg.aggregation.max_abs_logit  # what the plain contract checks, clipped here
        return self.rule.pack(self.rule.summands(np.clip(logits, -bound, bound), weight=weight))

    def distill_on_targets(self, request: Payload, client: ClientContext, model: nn.Module,
                           x_pub: np.ndarray, rnd: int) -> FitStats:
        """The client distils ``model`` on the targets it was sent for ``x_pub``
        (``distill.steps`` steps of ``distill.loss``); the caller saves the model."""
        targets = np.asarray(request.arrays["targets"], np.float32)
        if targets.shape != (len(x_pub), self.num_classes):
            raise ValueError(f"{self.name}: targets of shape {targets.shape} for {len(x_pub)} inputs")
        train, distill = self.cfg.train, self.cfg.distill
        return fit_to_targets(model, x_pub, targets, steps=distill.steps,
                              batch_size=train.batch_size, learning_rate=train.learning_rate,
                              temperature=distill.temperature, loss=self.distill_loss,
                              generator=seeded_generator(self.cfg.seed, rnd, client.partition_id, 1))

    @staticmethod
    def check_mask(name: str):  # noqa: ANN205
        """A reply check: the answer mask ``name`` answers at least one sample."""

        def check(reply: Payload) -> None:
            if not np.asarray(reply.arrays[name]).any():
                raise InvalidReply(f"array {name!r}: masks every sample (no answer to aggregate)")

        return check


def _with_key_check(check: Callable[[Payload], None] | None) -> Callable[[Payload], None]:
    """``check`` after the check of the reply's public keys (secure aggregation): a reply whose
    keys cannot be used is a rejected reply, with the reason."""
    def checked(reply: Payload) -> None:
        check_public_keys(reply)
        if check is not None:
            check(reply)
    return checked
