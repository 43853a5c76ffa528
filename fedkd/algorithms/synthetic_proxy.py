r"""Data-free logit sharing on a proxy set the clients synthesise (``synthetic-proxy``).

DS-FL (:mod:`fedkd.algorithms.dsfl`) needs an unlabeled proxy set that every node holds. Here
there is none: the clients make it (:mod:`fedkd.algorithms.synthetic_pool`: in round 1 and then
every ``synthesis.every`` rounds each sampled client trains its personal model, synthesises
``synthesis.per-class`` images per class with ``synthesis.method`` and uploads them as uint8;
the server pools them). Every round then runs DS-FL on the pool: announced pool images travel
*down* (uint8) with the request, clients answer with logits (after training, or in a synthesis
round right after synthesising), the rule aggregates them (``classwise`` and ``weighted`` get
label counts), and the server's student and the clients distil on the targets. Each pool image
also carries the label it was synthesised for; with ``synthesis.label-weight`` = beta > 0 the
targets are anchored on it (:meth:`SyntheticProxy.anchored`): ``(1 - beta) p_teachers + beta
onehot(y)``. The machinery is :class:`~fedkd.algorithms.public_set.PublicSetAlgorithm`'s and
:class:`~fedkd.algorithms.synthetic_pool.SyntheticPool`'s; this file adds the round and the
anchoring.

What leaves a client: synthetic images (once per synthesis round), logits on pool images, and
label counts with a count rule; never weights or data. **Without DP the synthetic images can
leak training data** (:mod:`fedkd.algorithms.synthetic_pool` says how it is measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedkd.algorithms.base import ClientContext, Exchange, ExchangeResult
from fedkd.algorithms.dsfl import DSFL
from fedkd.algorithms.public_set import PublicSetAlgorithm
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.algorithms.synthetic_pool import SyntheticPool
from fedkd.data.federated import FederatedData
from fedkd.protocol import Payload, PhaseSpec
from fedkd.synthesis import SynthesisConfig
from fedkd.training import FitStats


@ALGORITHMS.register("synthetic-proxy")
class SyntheticProxy(SyntheticPool, DSFL):
    """DS-FL on a proxy set pooled from the clients' synthetic images."""

    config_sections = {"synthesis": SynthesisConfig}
    SERVER_STATE = (*PublicSetAlgorithm.SERVER_STATE, "_public")
    INDEX_STREAM = 0x5F17

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        self._public = None  # the pool: filled by the first synthesis round
        self._student = self.build_model(seed=self.cfg.seed)

    def share_on_pool(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
                      phase: Callable[[int], PhaseSpec]) -> dict[str, float]:
        """DS-FL's round on the pool."""
        return self.share_and_teach(rnd, nodes, exchange, phase)

    def teach(self, rnd: int, teachers: list[int], indices: np.ndarray, targets: np.ndarray,
              exchange: Exchange, phase: PhaseSpec) -> tuple[FitStats, ExchangeResult]:
        """DS-FL's teaching step on the targets :meth:`anchored` on the pool's labels."""
        return super().teach(rnd, teachers, indices, self.anchored(indices, targets), exchange, phase)

    def anchored(self, indices: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``(1 - beta) probs + beta onehot(y)`` with beta = ``synthesis.label-weight`` and y the
        labels the pool images ``indices`` were synthesised for (still probabilities; at beta >=
        0.5 every target's argmax is its synthesis label)."""
        assert self._public is not None
        beta = self.synthesis.label_weight
        if beta == 0.0:
            return probs
        onehot = np.eye(self.num_classes, dtype=np.float32)[self._public.y[indices]]
        return ((1.0 - beta) * probs + beta * onehot).astype(np.float32)

    def proxy_request(self, rnd: int, indices: np.ndarray) -> Payload:
        """The announced pool images themselves travel down, as uint8."""
        return Payload(arrays=self.pool_inputs(indices), config={"round": rnd})

    # ----- client half --------------------------------------------------------------------
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase == "answer":
            rnd = int(request.config["round"])
            model = self.personal_model(client)
            x_pub = self.public_inputs(request, client)
            return Payload(arrays=self.upload(client, model, x_pub, rnd),
                           metrics={"num-examples": len(client.data.train)})
        return super().client_phase(phase, request, client)
