"""FedMD: heterogeneous federated learning via model distillation (Li & Wang, 2019, arXiv 1910.03581).

Clients share only their logits on public samples the server names. Each round:

1. **communicate** (phase ``logits``, a query): the server draws ``distill.public-batch`` indices
   of the public split (a labelled split of the training set reserved before partitioning, the
   same on every node) and each sampled client returns its model's logits on them, [N, C];
2. **aggregate**: the server forms the consensus targets t = Agg(z_1, ..., z_K) with the
   configured rule (``aggregation.rule``; ``mean`` is the survey's eq. 3.4.2.1; FedMD's paper
   averages raw logits, DS-FL's ``era`` sharpens), and distils its own **global student** on the
   public batch towards t (``distill.server-steps``), so the run has a global model;
3. **digest** then **revisit** (phase ``digest``): the clients that answered get t and minimise
   T^2 KL(t || softmax(f_k(x_pub) / T)) for ``distill.steps`` steps, then train on their private
   data with cross-entropy for ``train.local-steps`` steps. The reply carries metrics only.

Optionally (``distill.pretrain-public-steps`` > 0) each client first trains on the labelled public
set, as in the paper's transfer-learning start. Architectures may differ per client
(``train.client-models`` or a node's ``model``): only [N, C] logits are exchanged. The paper
fits the consensus with L1 on logits; fedkd distils soft targets with KL, the form the
aggregation rules produce.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.data.federated import FederatedData
from fedkd.protocol import ArraySpec, Payload, PhaseSpec
from fedkd.training import fit_supervised, fit_to_targets, seeded_generator

#: Node-state key marking that the public pre-training was done.
PRETRAINED_KEY = "fedmd/pretrained"
#: Seed stream of the server student's batches (client streams use partition ids).
SERVER_STREAM = 2**31 - 1


@ALGORITHMS.register("fedmd")
class FedMD(Algorithm):
    """Logits on announced public samples up; consensus targets down; a global student on the server."""

    name = "fedmd"
    DEVICE_READY = True
    SERVER_STATE = ("_student", "_rng")

    @classmethod
    def planned_releases(cls, cfg: RunConfig) -> int:
        p = cfg.privacy
        return 1 if p.output_noise > 0 and not p.dp_sgd else 0  # noised logits of a non-DP model

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self._student: nn.Module | None = None
        self._public: ArrayDataset | None = None
        self._rng = np.random.default_rng([self.cfg.seed, 0xFED3D])

    def logits_phase(self, n: int) -> PhaseSpec:
        """Logits [n, C] on the announced public samples."""
        bound = self.cfg.aggregation.max_abs_logit
        return PhaseSpec(
            name="logits",
            message_type="query",
            reply_arrays={"logits": ArraySpec(shape=(n, self.num_classes), dtype="float32",
                                              low=-bound, high=bound)},
            min_num_examples=1,  # the weighted rule's teacher weight
        )

    #: Digest + revisit: targets down, metrics only up.
    DIGEST_PHASE = PhaseSpec(name="digest", message_type="train", reply_metrics=("loss", "accuracy"))

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        if len(data.public) == 0:
            raise ValueError("fedmd needs a public split: set data.public-fraction > 0")
        self._public = data.public
        self._student = self.build_model(seed=self.cfg.seed)

    def global_model(self) -> nn.Module | None:
        return self._student

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        assert self._public is not None and self._student is not None, "setup_server not called"
        n = min(self.cfg.distill.public_batch, len(self._public))
        indices = np.sort(self._rng.choice(len(self._public), size=n, replace=False))
        query = Payload(config={"round": rnd, "indices": indices.tolist()})
        result = exchange(self.logits_phase(n), {node: query for node in nodes})

        teachers = sorted(result.replies)
        logits = np.stack([result.replies[k].arrays["logits"] for k in teachers])  # [K, N, C]
        # With the weighted rule, teachers count by their private training-set size.
        weights = np.array([float(result.replies[k].metrics["num-examples"]) for k in teachers])
        result = self.aggregate_teachers(self.rule, logits, self._rng, weights=weights)
        # Only samples the rule answered (PATE may abstain) are distilled, by the student and
        # by the clients.
        indices, targets = indices[result.answered], result.probs[result.answered]
        if len(indices) == 0:
            return {"teachers": len(teachers), "answered": 0}

        x_pub = self._public.x[indices]
        distill = self.cfg.distill
        student_stats = fit_to_targets(
            self._student, x_pub, targets, steps=distill.server_steps,
            batch_size=self.cfg.train.batch_size, learning_rate=self.cfg.train.learning_rate,
            temperature=distill.temperature, loss=self.distill_loss, generator=seeded_generator(self.cfg.seed, rnd, SERVER_STREAM),
        )

        digest = Payload(arrays={"targets": targets}, config={"round": rnd, "indices": indices.tolist()})
        done = exchange(self.DIGEST_PHASE, {node: digest for node in teachers})
        replies = list(done.replies.values())
        n_ex = np.array([float(r.metrics["num-examples"]) for r in replies])
        return {
            "teachers": len(teachers),
            "answered": len(indices),
            "consensus-accuracy": float((targets.argmax(1) == self._public.y[indices]).mean()),
            "student-distill-loss": student_stats.loss,
            "train-loss": float(np.average([r.metrics["loss"] for r in replies], weights=n_ex)),
            "train-accuracy": float(np.average([r.metrics["accuracy"] for r in replies], weights=n_ex)),
        }

    # ----- client half --------------------------------------------------------------------
    def _public_inputs(self, request: Payload, client: ClientContext) -> np.ndarray:
        public = client.public
        indices = np.asarray(request.config["indices"], dtype=np.int64)
        if indices.ndim != 1 or (indices.size and (indices.min() < 0 or indices.max() >= len(public))):
            raise ValueError(f"fedmd: public indices outside 0..{len(public) - 1}")
        return public.x[indices]

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
        x_pub = self._public_inputs(request, client)
        n_train = len(client.data.train)
        if phase == "logits":
            logits = self.release_logits(client, model, x_pub, int(request.config["round"]))
            return Payload(arrays={"logits": logits}, metrics={"num-examples": n_train})
        if phase != "digest":
            raise ValueError(f"fedmd has no client phase {phase!r}")
        targets = np.asarray(request.arrays["targets"], np.float32)
        rnd = int(request.config["round"])
        train, distill = self.cfg.train, self.cfg.distill
        fit_to_targets(model, x_pub, targets, steps=distill.steps, batch_size=train.batch_size,
                       learning_rate=train.learning_rate, temperature=distill.temperature, loss=self.distill_loss,
                       generator=seeded_generator(self.cfg.seed, rnd, client.partition_id, 1))
        stats = self.local_fit(client, model, rnd)  # revisit: private data, DP-SGD if on
        self.save_personal_model(client, model)
        return Payload(metrics={"num-examples": n_train, "loss": stats.loss, "accuracy": stats.accuracy})
