"""Data-free logits up, student down: ``student-down`` on a proxy set the clients synthesise.

``student-down`` (:mod:`fedkd.algorithms.student_down`) needs an unlabeled proxy set that every
node holds; ``synthetic-proxy`` showed the clients can make one instead
(:mod:`fedkd.algorithms.synthetic_pool`). This is the one with the other: every round is
student-down's (the student goes down, each client trains from it and answers with logits on
announced proxy images, the server aggregates them and distils into the student, with all of
``student-down.*``: prior calibration, the server-lr and FedExP's step, the running average), on
the pool of the clients' synthetic images, which travel down with the announcement (uint8).

A synthesis round (round 1, then every ``synthesis.every`` rounds) has two exchanges:

1. ``synthesise``: the student goes down; each sampled client trains from it (this is its one
   training of the round: DP-SGD's accounting counts rounds), keeps the result as its personal
   model, synthesises ``synthesis.per-class`` images per class it holds and uploads them;
2. ``answer`` (a query, no training): the announcement on the pool, which now holds those
   images; each client answers with its personal model's logits, as after training in any
   other round.

What leaves a client: synthetic images (once per synthesis round) and logits on pool images;
never weights or data. Without DP the images can leak training data
(:mod:`fedkd.algorithms.synthetic_pool` says how it is measured; ``synthesis.method =
"inversion"`` reads only the model, and is the method allowed under DP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from fedkd.algorithms.base import ClientContext, Exchange
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.algorithms.student_down import StudentDown, StudentDownConfig, frozen_copy
from fedkd.algorithms.synthetic_pool import SyntheticPool
from fedkd.data.federated import FederatedData
from fedkd.protocol import Payload, PhaseSpec
from fedkd.synthesis import SynthesisConfig
from fedkd.training import FitStats


@ALGORITHMS.register("synthetic-student-down")
class SyntheticStudentDown(SyntheticPool, StudentDown):
    """Student-down on a proxy set pooled from the clients' synthetic images."""

    config_sections = {"student-down": StudentDownConfig, "synthesis": SynthesisConfig}
    SERVER_STATE = (*StudentDown.SERVER_STATE, "_public")
    INDEX_STREAM = 0x5D17

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        self._public = None  # the pool: filled by the first synthesis round
        self.build_students()

    def synthesis_request(self, rnd: int) -> Payload:
        """The students go down with the synthesis request: clients train from them."""
        return Payload(arrays=self.students_arrays(), config={"round": rnd})

    def share_on_pool(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
                      phase: Callable[[int], PhaseSpec]) -> dict[str, float]:
        """Student-down's round on the pool."""
        return self.ask_and_distill(rnd, nodes, exchange, phase)

    def proxy_request(self, rnd: int, indices: np.ndarray) -> Payload:
        """Student-down's announcement (the students, the calibration's reference) with the
        announced pool images instead of their indices."""
        request = super().proxy_request(rnd, indices)
        return Payload(arrays={**request.arrays, **self.pool_inputs(indices)},
                       config={"round": rnd})

    # ----- client half --------------------------------------------------------------------
    def synthesis_model(self, request: Payload, client: ClientContext,
                        rnd: int) -> tuple[nn.Module, FitStats]:
        """Trained from the student sent, as in any student-down round."""
        model, _, stats = self.train_from_student(request, client, rnd)
        return model, stats

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase == "answer":  # the personal model trained before synthesising answers
            rnd = int(request.config["round"])
            teacher = frozen_copy(self.received_student(request, client))
            return self.answer_batch(request, client, self.personal_model(client), teacher,
                                     rnd, {})
        return super().client_phase(phase, request, client)
