"""FedAvg (McMahan et al., AISTATS 2017): a **weight-sharing baseline**.

Clients upload their full model weights every round. fedkd exists so that clients share knowledge
(logits) instead; FedAvg is here as the reference every results table needs, and it says so: the
class sets ``shares_weights = True`` and the README lists it as a baseline.

Round t, with sampled clients S_t and n_k training examples on client k:

1. the server sends the global weights w_t;
2. client k runs ``train.local-steps`` SGD steps of cross-entropy from w_t and returns w_t^k;
3. the server sets w_{t+1} = sum_k n_k w_t^k / sum_k n_k over the valid replies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from fedkd.algorithms.base import Algorithm, ClientContext, Exchange
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.data.federated import FederatedData
from fedkd.protocol import ArraySpec, Payload, PhaseSpec
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.training import load_numpy_state, model_with_state, state_to_numpy


def weighted_average(
    states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Average same-keyed arrays with non-negative weights (FedAvg's aggregation step).

    Raises
    ------
    ValueError
        If there is nothing to average or the weights sum to zero.
    """
    if not states:
        raise ValueError("no client states to average")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(w)}")
    w = w / w.sum()
    # Accumulated client by client in float64, in order: the same sums as stacking every
    # client's weights and reducing over the first axis, without a [K, ...] float64 copy of
    # all of them in memory at once.
    out = {}
    for key in states[0]:
        acc = w[0] * states[0][key].astype(np.float64)
        for wi, s in zip(w[1:], states[1:]):
            acc += wi * s[key].astype(np.float64)
        out[key] = acc.astype(states[0][key].dtype)
    return out


@ALGORITHMS.register("fedavg")
class FedAvg(Algorithm):
    """Federated averaging of full model weights (baseline; uploads weights)."""

    shares_weights = True
    SERVER_STATE = ("_model",)
    DEVICE_READY = True

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.privacy.output_noise > 0:
            raise ConfigError("fedavg releases weights, not logits: privacy.output-noise does not "
                              "apply; use privacy.dp-sgd")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self._model: nn.Module | None = None

    def fit_phase(self) -> PhaseSpec:
        """The one phase of a round: weights down, locally trained weights up."""
        shapes = {k: tuple(v.shape) for k, v in self._template().state_dict().items()}
        return PhaseSpec(
            name="fit",
            message_type="train",
            reply_arrays={k: ArraySpec(shape=s, dtype="float32") for k, s in shapes.items()},
            reply_metrics=("loss", "accuracy"),
            min_num_examples=1,  # the averaging weight
        )

    def _template(self) -> nn.Module:
        if self._model is None:
            self._model = self.build_model()
        return self._model

    # ----- server half --------------------------------------------------------------------
    def setup_server(self, data: FederatedData) -> None:
        self._model = self.build_model(seed=self.cfg.seed)

    def global_model(self) -> nn.Module:
        return self._template()

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        weights = state_to_numpy(self._template())
        request = Payload(arrays=weights, config={"round": rnd})
        result = exchange(self.fit_phase(), {node: request for node in nodes})
        replies = list(result.replies.values())
        counts = [float(r.metrics["num-examples"]) for r in replies]
        load_numpy_state(self._template(), weighted_average([r.arrays for r in replies], counts))
        total = sum(counts)
        return {
            "train-loss": sum(c * float(r.metrics["loss"]) for c, r in zip(counts, replies)) / total,
            "train-accuracy": sum(c * float(r.metrics["accuracy"]) for c, r in zip(counts, replies))
            / total,
        }

    def evaluation_request(self, rnd: int) -> Payload:
        return Payload(arrays=state_to_numpy(self._template()), config={"round": rnd})

    # ----- client half --------------------------------------------------------------------
    def _client_model(self, request: Payload) -> nn.Module:
        # the worker's model of this architecture, loaded with the global weights (no re-init)
        return model_with_state(self.cfg.train.model, self.input_shape, self.num_classes,
                                request.arrays)

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "fit":
            raise ValueError(f"fedavg has no client phase {phase!r}")
        model = self._client_model(request)
        stats = self.local_fit(client, model, int(request.config["round"]))
        return Payload(
            arrays=state_to_numpy(model),
            metrics={
                "num-examples": len(client.data.train),
                "loss": stats.loss,
                "accuracy": stats.accuracy,
            },
        )

    def client_evaluation_model(self, request: Payload, client: ClientContext) -> nn.Module:
        return self._client_model(request)
