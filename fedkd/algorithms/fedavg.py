"""FedAvg (McMahan et al., AISTATS 2017): a **weight-sharing baseline**.

Clients upload their full model weights every round. fedkd exists so that clients share knowledge
(logits) instead; FedAvg is here as the reference every results table needs, and it says so: the
class sets ``shares_weights = True`` and the README lists it as a baseline.

Round t, with sampled clients S_t and n_k training examples on client k:

1. the server sends the global weights w_t;
2. client k runs ``train.local-steps`` SGD steps of cross-entropy from w_t and returns w_t^k;
3. the server sets w_{t+1} = sum_k n_k w_t^k / sum_k n_k over the valid replies.

**DP-FedAvg** (McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018, Algorithm 1 with fixed clipping and uniform client weights), with
``fedavg.dp-noise-multiplier`` z > 0: the server clips each client's update
Delta_k = w_t^k - w_t to L2 norm S (``fedavg.dp-clip``, over all parameters), and sets

    w_{t+1} = w_t + ( sum_k Delta_k * min(1, S / ||Delta_k||) + N(0, (z S)^2 I) ) / (q N)

where q N is the expected cohort (``fraction-train`` x the population under Poisson sampling,
the fixed sample size otherwise): the fixed denominator keeps one client's influence on the sum
at most S whatever the round's size. Each round is one Gaussian release of client-level
sensitivity S, charged to the server ledger (amplified by sampling under
``federation.sampling = "poisson"``). The noise is added by the server, which sees every
client's weights: this is central DP against whoever sees the global model, not against the
server (the logit algorithms' distributed DP under secure aggregation is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FedAvgConfig:
    """``fedavg.*``: client-level DP-FedAvg (module docstring). ``dp-noise-multiplier`` z (0:
    plain FedAvg) and ``dp-clip`` S, the L2 bound of one client's update."""

    dp_noise_multiplier: float = 0.0
    dp_clip: float = 1.0

    def __post_init__(self) -> None:
        if not self.dp_noise_multiplier >= 0:
            raise ConfigError(f"fedavg.dp-noise-multiplier must be >= 0 (0: no DP), got "
                              f"{self.dp_noise_multiplier!r}")
        if not self.dp_clip > 0:
            raise ConfigError(f"fedavg.dp-clip must be > 0, got {self.dp_clip!r}")


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled by ``min(1, clip / ||update||)`` (L2 over every array, float64);
    returns the clipped update and the norm before clipping."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values())))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, np.float64) * scale for k, v in update.items()}, norm


@ALGORITHMS.register("fedavg")
class FedAvg(Algorithm):
    """Federated averaging of full model weights (baseline; uploads weights)."""

    shares_weights = True
    SERVER_STATE = ("_model", "_noise_rng")
    DEVICE_READY = True
    config_sections = {"fedavg": FedAvgConfig}
    #: Stream of the server's DP-FedAvg noise (a generator of its own, seeded by the run).
    NOISE_STREAM = 0xD9FA

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.privacy.output_noise > 0:
            raise ConfigError("fedavg releases weights, not logits: privacy.output-noise does not "
                              "apply; use privacy.dp-sgd")
        if cfg.section("fedavg").dp_noise_multiplier > 0 and cfg.aggregation.secure:
            raise ConfigError("fedavg.dp-noise-multiplier (DP-FedAvg: the server clips and noises "
                              "the clients' updates) cannot run under aggregation.secure, which "
                              "hides the updates from the server")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self._model: nn.Module | None = None
        self.options: FedAvgConfig = self.cfg.section("fedavg")
        self._noise_rng = np.random.default_rng([self.cfg.seed, self.NOISE_STREAM])

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
        extra: dict[str, float] = {}
        if self.options.dp_noise_multiplier > 0:
            extra = self._dp_step(weights, [r.arrays for r in replies], len(nodes))
        else:
            load_numpy_state(self._template(), weighted_average([r.arrays for r in replies], counts))
        total = sum(counts)
        return {
            "train-loss": sum(c * float(r.metrics["loss"]) for c, r in zip(counts, replies)) / total,
            "train-accuracy": sum(c * float(r.metrics["accuracy"]) for c, r in zip(counts, replies))
            / total,
            **extra,
        }

    def expected_cohort(self, sampled: int) -> float:
        """DP-FedAvg's fixed denominator q N: the expected cohort under Poisson sampling, the
        round's fixed sample size otherwise."""
        rate = self.client_sampling_rate
        return rate * self.cfg.client_population() if rate is not None else float(sampled)

    def _dp_step(self, weights: dict[str, np.ndarray], states: Sequence[dict[str, np.ndarray]],
                 sampled: int) -> dict[str, float]:
        """One DP-FedAvg update of the global model (module docstring), charged to the ledger."""
        from dp_accounting import GaussianDpEvent

        z, clip = self.options.dp_noise_multiplier, self.options.dp_clip
        base = {k: v.astype(np.float64) for k, v in weights.items()}  # w_t, once a round
        total = {k: np.zeros(v.shape, np.float64) for k, v in weights.items()}
        norms = []
        for state in states:
            clipped, norm = clip_update({k: state[k] - base[k] for k in weights}, clip)
            norms.append(norm)
            for k in total:
                total[k] += clipped[k]
        denominator = self.expected_cohort(sampled)
        new = {k: (base[k] + (total[k] + self._noise_rng.normal(0.0, z * clip, total[k].shape))
                   / denominator).astype(weights[k].dtype) for k in weights}
        load_numpy_state(self._template(), new)
        self.server_ledger.record([GaussianDpEvent(z)])
        return {"dp-update-norm-median": float(np.median(norms)) if norms else 0.0,
                "dp-clipped-share": float(np.mean([n > clip for n in norms])) if norms else 0.0}

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
