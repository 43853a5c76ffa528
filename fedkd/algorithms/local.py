"""Local training only: every client trains its own model on its own data; nothing is shared.

The reference point for personalised accuracy: a federated algorithm is worth its communication
only if its clients beat this. Replies carry metrics only (no arrays), and there is no server
model.
"""

from __future__ import annotations

from collections.abc import Sequence


from fedkd.algorithms.base import Algorithm, ClientContext, Exchange, train_metrics
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.data.federated import FederatedData
from fedkd.protocol import Payload, PhaseSpec


@ALGORITHMS.register("local")
class LocalOnly(Algorithm):
    """Each client trains alone (``train.local-steps`` per round); no federation."""

    DEVICE_READY = True

    FIT_PHASE = PhaseSpec(name="fit", message_type="train", reply_metrics=("loss", "accuracy"))

    def setup_server(self, data: FederatedData) -> None:
        pass  # nothing to hold: there is no server model

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        result = exchange(self.FIT_PHASE, {node: Payload(config={"round": rnd}) for node in nodes})
        return train_metrics(result.replies.values())

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "fit":
            raise ValueError(f"local has no client phase {phase!r}")
        model = self.personal_model(client)
        stats = self.local_fit(client, model, int(request.config["round"]))
        self.save_personal_model(client, model)
        return Payload(metrics={"num-examples": len(client.data.train), "loss": stats.loss,
                                "accuracy": stats.accuracy})
