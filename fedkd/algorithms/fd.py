"""FD: federated distillation with per-class logits (Jeong et al., 2018, arXiv 1811.11479).

No weights, no data and no public set: each client uploads, per label, the mean of the logit
vectors its model produced on that label's training samples during the round, and the number
of such samples. The server combines the clients' vectors class by class with the configured
aggregation rule (``aggregation.rule``) into soft targets, and each client then adds a
distillation term towards the target of each sample's own label.

Client k, round t, with targets :math:`\\hat F_k \\in [0,1]^{C \\times C}` from round t - 1:

.. math::

    L_k = \\mathrm{CE}(f_k(x), y)
          + \\gamma \\, T^2 \\, \\mathrm{KL}\\big(\\hat F_k[y] \\,\\|\\, \\sigma(f_k(x)/T)\\big)

(``distill.weight`` = :math:`\\gamma`, ``distill.temperature`` = T; the term is skipped for labels
without a target), accumulating :math:`\\bar F_k[\\ell]` = mean logits of the batches' samples
with label :math:`\\ell` and their count :math:`n_{k,\\ell}`. Upload: ``class-logits`` [C, C] and
``class-counts`` [C] (C² + C numbers, whatever the model's size).

Server: for each client k, :math:`\\hat F_k[\\ell] = \\mathrm{Agg}(\\{\\bar F_j[\\ell] : n_{j,\\ell} > 0\\})`
over the clients that reported label :math:`\\ell` this round, leaving out k itself when
``distill.exclude-self`` is on (Jeong et al.'s rule). With the ``weighted`` rule the
per-class counts are the teacher weights. Client architectures may differ: only the label set is
shared. There is no server model, so there is no global accuracy; the metric is each client's
personalised accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedkd.algorithms.base import OUTPUT_NOISE_STREAM, Algorithm, ClientContext, Exchange, train_metrics
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.data.federated import FederatedData
from fedkd.privacy.output_noise import noisy_class_means
from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.training import predict_logits

#: Seed stream of the server's randomised aggregation (PATE votes).
AGGREGATION_STREAM = 0xA66



@ALGORITHMS.register("fd")
class FD(Algorithm):
    """Federated distillation with per-class mean logits (logit sharing; no public data)."""

    SERVER_STATE = ("_uploads", "_rng")
    DEVICE_READY = True

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        return 2 if cfg.privacy.enabled else 0  # per-class sums and counts

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        privacy = cfg.privacy
        if privacy.dp_sgd != (privacy.output_noise > 0):
            raise ConfigError(
                "fd computes its per-class logits on private data: privacy needs both "
                "privacy.dp-sgd (a DP model) and privacy.output-noise > 0 (noise on the released "
                "per-class sums and counts), or neither"
            )

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self._rng = np.random.default_rng([self.cfg.seed, AGGREGATION_STREAM])
        #: Last round's uploads: node -> (class logits [C, C], class counts [C]).
        self._uploads: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def fit_phase(self) -> PhaseSpec:
        """Targets down; per-class mean logits and counts up."""
        c, bound = self.num_classes, self.cfg.aggregation.max_abs_logit
        privacy = self.cfg.privacy
        seen = self.cfg.train.local_steps * self.cfg.train.batch_size
        # Without DP: counts of the samples seen in training. With DP: noisy counts of the whole
        # local training set (num-examples), within 6 noise standard deviations.
        # (num-examples is noised too: C + 1 noise draws in the difference)
        slack = 6 * privacy.output_noise * np.sqrt(c + 1) + 1 if privacy.enabled else 0

        def check_counts(reply: Payload) -> None:
            total = int(reply.arrays["class-counts"].sum())
            limit = (int(reply.metrics["num-examples"]) + slack) if privacy.enabled else seen
            if not 0 < total <= limit:
                raise InvalidReply(f"class counts sum to {total}; expected 1..{limit:g}")

        return PhaseSpec(
            name="fit",
            message_type="train",
            reply_arrays={
                "class-logits": ArraySpec(shape=(c, c), dtype="float32", low=-bound, high=bound),
                "class-counts": ArraySpec(shape=(c,), dtype="int64", low=0),
            },
            reply_metrics=("loss", "accuracy"),
            check=check_counts,
        )

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        self._uploads = {}

    def targets_for(self, node: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Soft targets [C, C] for ``node`` from the last uploads, and which rows are set [C].

        ``node`` is left out of its own targets when ``distill.exclude-self`` is on.
        """
        c = self.num_classes
        targets = np.zeros((c, c), np.float32)
        teachers = [v for k, v in sorted(self._uploads.items())
                    if not (self.cfg.distill.exclude_self and k == node)]
        if not teachers:
            return targets, np.zeros(c, bool)
        logits = np.stack([t[0] for t in teachers])  # [K, C (samples = labels), C]
        counts = np.stack([t[1] for t in teachers]).astype(np.float64)  # [K, C]
        has_teacher = (counts > 0).any(axis=0)
        rows = np.flatnonzero(has_teacher)
        mask = counts[:, rows] > 0
        weights = self.rule.weights_from_counts(counts, rows) if self.rule.uses_weights else None
        result = self.aggregate_teachers(self.rule, logits[:, rows, :], self._rng,
                                         weights=weights, mask=mask)
        targets[rows] = result.probs
        has_teacher[rows] &= result.answered
        return targets, has_teacher

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        requests = {}
        for node in nodes:
            targets, has_target = self.targets_for(node)
            requests[node] = Payload(
                arrays={"targets": targets, "target-mask": has_target.astype(np.uint8)},
                config={"round": rnd},
            )
        result = exchange(self.fit_phase(), requests)
        self._uploads = {
            node: (r.arrays["class-logits"], r.arrays["class-counts"])
            for node, r in result.replies.items()
        }
        return {
            **train_metrics(result.replies.values()),
            "classes-with-teachers": int(np.any([c > 0 for _, c in self._uploads.values()], axis=0).sum()),
        }

    # ----- client half --------------------------------------------------------------------
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "fit":
            raise ValueError(f"fd has no client phase {phase!r}")
        c = self.num_classes
        targets = torch.from_numpy(np.asarray(request.arrays["targets"], np.float32))
        has_target = torch.from_numpy(np.asarray(request.arrays["target-mask"]).astype(bool))
        if targets.shape != (c, c) or has_target.shape != (c,):
            raise ValueError(f"fd: targets of shape {tuple(targets.shape)} for {c} classes")
        weight, temperature = self.cfg.distill.weight, self.cfg.distill.temperature
        distill_loss = self.distill_loss

        targets_on, has_target_on = targets, has_target  # on the batches' device (train.device)

        def distill_term(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """Per sample: ``weight`` times the distillation loss towards the target of its
            class, 0 for a class without a target. Its batch mean is the sum over the samples
            with a target divided by the whole batch: every sample's loss keeps the same scale
            whatever the mix (what per-sample clipping assumes)."""
            nonlocal targets_on, has_target_on
            if targets_on.device != y.device:
                targets_on, has_target_on = targets.to(y.device), has_target.to(y.device)
            use = has_target_on[y]
            if weight == 0 or not bool(use.any()):
                return logits.new_zeros(len(y))
            uniform = torch.full_like(logits, 1.0 / c)  # any distribution: its rows are zeroed
            goal = torch.where(use[:, None], targets_on[y], uniform)
            rows = distill_loss(logits, goal, temperature, reduction="none")
            return weight * use.to(rows.dtype) * rows

        sums = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.int64)

        def track(logits: torch.Tensor, y: torch.Tensor) -> None:
            sums.index_add_(0, y, logits.double())
            counts.add_(torch.bincount(y, minlength=c))

        rnd = int(request.config["round"])
        private = self.cfg.privacy.enabled
        model = self.personal_model(client)
        stats = self.local_fit(client, model, rnd, per_sample_loss=distill_term,
                               observe=None if private else track, releases=2 if private else 0)
        self.save_personal_model(client, model)
        if private:
            class_logits, class_counts = self._private_statistics(model, client, rnd)
        else:
            class_logits = (sums / counts.clamp(min=1).unsqueeze(1).double()).float().numpy()
            class_counts = counts.numpy()
        return Payload(
            arrays={"class-logits": class_logits, "class-counts": class_counts},
            metrics={"num-examples": len(client.data.train), "loss": stats.loss,
                     "accuracy": stats.accuracy},
        )

    def _private_statistics(
        self, model: torch.nn.Module, client: ClientContext, rnd: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-class means and counts released with example-level DP.

        The DP-trained model's logits on every local training example are clipped to
        ``privacy.output-clip``, summed per class and noised (sensitivity: the clip bound), the
        class counts are noised (sensitivity 1), and the means are their ratio (post-processing).
        Both releases are accounted in the client's ledger; classes whose noisy count is below 1
        are reported empty.
        """
        data = client.data.train
        rng = np.random.default_rng([self.cfg.seed, rnd, client.partition_id, OUTPUT_NOISE_STREAM])
        logits = predict_logits(model, data.x, batch_size=self.cfg.train.eval_batch_size)
        sums = self.output_mechanism.class_sums(logits, data.y, self.num_classes, rng)
        counts = self.output_mechanism.counts(data.y, self.num_classes, rng)
        self.account_releases(client, sums, counts)
        means, present = noisy_class_means(sums, counts)
        means[~present] = 0.0
        released_counts = np.where(present, np.maximum(np.rint(counts.values), 1), 0)
        return means.astype(np.float32), released_counts.astype(np.int64)
