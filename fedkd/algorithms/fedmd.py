"""FedMD: heterogeneous federated learning via model distillation (Li & Wang, 2019, arXiv 1910.03581).

Clients share only their logits on public samples the server names. Each round:

1. **communicate** (phase ``logits``, a query): the server draws ``distill.public-batch`` indices
   of the public split (a split of the training set reserved before partitioning, the same on
   every node; unlabeled with ``data.public-labels = false``) and each sampled client returns
   its model's logits on them, [N, C] (plus its label counts [C] when the rule needs counts);
2. **aggregate**: the server forms the consensus targets t = Agg(z_1, ..., z_K) with the
   configured rule (``aggregation.rule``; ``mean`` is the survey's eq. 3.4.2.1; FedMD's paper
   averages raw logits, DS-FL's ``era`` sharpens), and distils its own **global student** on the
   public batch towards t (``distill.server-steps``), so the run has a global model;
3. **digest** then **revisit** (phase ``digest``): the clients that answered get t and minimise
   T^2 KL(t || softmax(f_k(x_pub) / T)) for ``distill.steps`` steps, then train on their private
   data with cross-entropy for ``train.local-steps`` steps. The reply carries metrics only.

Optionally (``distill.pretrain-public-steps`` > 0) each client first trains on the labelled public
set, as in the paper's transfer-learning start. Architectures may differ per client
(``train.client-models`` or a node's ``model``): only [N, C] logits are exchanged. The paper's
consensus is the mean logit, fitted with L1 on logits: ``aggregation.rule = "logit-mean"`` with
``distill.loss = "l1-logits"``; the default distils soft targets with KL. The shared public-set
steps are :class:`~fedkd.algorithms.public_set.PublicSetAlgorithm`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedkd.algorithms.base import ClientContext, Exchange, train_metrics
from fedkd.algorithms.public_set import PublicSetAlgorithm
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.protocol import Payload, PhaseSpec
from fedkd.training import fit_supervised, seeded_generator

#: Node-state key marking that the public pre-training was done.
PRETRAINED_KEY = "fedmd/pretrained"


@ALGORITHMS.register("fedmd")
class FedMD(PublicSetAlgorithm):
    """Logits on announced public samples up; consensus targets down; a global student on the server."""

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.distill.pretrain_public_steps and not cfg.data.public_labels:
            raise ConfigError("distill.pretrain-public-steps trains on the public labels: it needs "
                              "data.public-labels = true")

    def logits_phase(self, n: int) -> PhaseSpec:
        """Logits [n, C] on the announced public samples (and label counts with a count rule)."""
        return self.logits_spec("logits", "query", n)

    #: Digest + revisit: targets down, metrics only up.
    DIGEST_PHASE = PhaseSpec(name="digest", message_type="train", reply_metrics=("loss", "accuracy"))

    # ----- server half --------------------------------------------------------------------
    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        asked = self.ask(rnd, nodes, exchange, self.logits_phase)
        indices, teachers = asked.indices, asked.teachers
        result = self.teacher_targets(asked)
        # Only samples the rule answered (PATE may abstain) are distilled, by the student and
        # by the clients.
        indices, targets = indices[result.answered], result.probs[result.answered]
        if len(indices) == 0:
            return {"teachers": len(teachers), "answered": 0}

        student_stats, done = self.teach(rnd, teachers, indices, targets, exchange,
                                         self.DIGEST_PHASE)
        return {
            "teachers": len(teachers),
            "answered": len(indices),
            **self.public_accuracy(indices, targets),
            "student-distill-loss": student_stats.loss,
            **train_metrics(done.replies.values()),
        }

    # ----- client half --------------------------------------------------------------------
    def _model(self, client: ClientContext) -> nn.Module:
        model = self.personal_model(client)
        steps = self.cfg.distill.pretrain_public_steps
        if steps and PRETRAINED_KEY not in client.state:
            train = self.cfg.train
            fit_supervised(model, client.public, steps=steps,
                           batch_size=train.batch_size, learning_rate=train.learning_rate,
                           generator=seeded_generator(self.cfg.seed, 0, client.partition_id))
            client.state[PRETRAINED_KEY] = np.ones(1, np.int8)
            self.save_personal_model(client, model)
        return model

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        model = self._model(client)
        x_pub = self.public_inputs(request, client)
        n_train = len(client.data.train)
        rnd = int(request.config["round"])
        if phase == "logits":
            return Payload(arrays=self.upload(client, model, x_pub, rnd),
                           metrics={"num-examples": n_train})
        if phase != "digest":
            raise ValueError(f"fedmd has no client phase {phase!r}")
        self.distill_on_targets(request, client, model, x_pub, rnd)  # digest
        stats = self.local_fit(client, model, rnd)  # revisit: private data, DP-SGD if on
        self.save_personal_model(client, model)
        return Payload(metrics={"num-examples": n_train, "loss": stats.loss, "accuracy": stats.accuracy})
