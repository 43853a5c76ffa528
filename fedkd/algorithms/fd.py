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

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.data.federated import FederatedData
from fedkd.losses import kd_kl_from_probs
from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.training import fit_supervised, seeded_generator


@ALGORITHMS.register("fd")
class FD(Algorithm):
    """Federated distillation with per-class mean logits (logit sharing; no public data)."""

    name = "fd"

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self.rule = self.cfg.aggregation.build()
        #: Last round's uploads: node -> (class logits [C, C], class counts [C]).
        self._uploads: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def fit_phase(self) -> PhaseSpec:
        """Targets down; per-class mean logits and counts up."""
        c, bound = self.num_classes, self.cfg.aggregation.max_abs_logit
        max_count = self.cfg.train.local_steps * self.cfg.train.batch_size

        def check_counts(reply: Payload) -> None:
            total = int(reply.arrays["class-counts"].sum())
            if not 0 < total <= max_count:
                raise InvalidReply(
                    f"class counts sum to {total}; expected 1..{max_count} "
                    "(train.local-steps x train.batch-size)"
                )

        return PhaseSpec(
            name="fit",
            message_type="train",
            reply_arrays={
                "class-logits": ArraySpec(shape=(c, c), dtype="float32", low=-bound, high=bound),
                "class-counts": ArraySpec(shape=(c,), dtype="int64", low=0, high=max_count),
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
        weights = counts[:, rows] if self.rule.uses_weights else None
        targets[rows] = self.rule(logits[:, rows, :], weights=weights, mask=mask)
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
        replies = list(result.replies.values())
        n = np.array([float(r.metrics["num-examples"]) for r in replies])
        return {
            "train-loss": float(np.average([r.metrics["loss"] for r in replies], weights=n)),
            "train-accuracy": float(np.average([r.metrics["accuracy"] for r in replies], weights=n)),
            "classes-with-targets": int(self.targets_for(None)[1].sum()),
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

        def distill_term(model, x, y, logits):  # noqa: ANN001 - see training.ExtraLoss
            use = has_target[y]
            if weight == 0 or not bool(use.any()):
                return logits.new_zeros(())
            return weight * kd_kl_from_probs(logits[use], targets[y[use]], temperature)

        sums = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.int64)

        def track(logits: torch.Tensor, y: torch.Tensor) -> None:
            sums.index_add_(0, y, logits.double())
            counts.add_(torch.bincount(y, minlength=c))

        model = self.personal_model(client)
        train = self.cfg.train
        stats = fit_supervised(
            model, client.data.train, steps=train.local_steps, batch_size=train.batch_size,
            learning_rate=train.learning_rate, momentum=train.momentum,
            weight_decay=train.weight_decay, extra_loss=distill_term, observe=track,
            generator=seeded_generator(self.cfg.seed, int(request.config["round"]), client.partition_id),
        )
        self.save_personal_model(client, model)
        means = sums / counts.clamp(min=1).unsqueeze(1).double()
        return Payload(
            arrays={"class-logits": means.float().numpy(), "class-counts": counts.numpy()},
            metrics={"num-examples": len(client.data.train), "loss": stats.loss,
                     "accuracy": stats.accuracy},
        )
