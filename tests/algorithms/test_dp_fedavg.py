"""DP-FedAvg (McMahan et al. 2018): clip each update, add Gaussian noise to the sum, divide by
the expected cohort; one client-level Gaussian per round in the server ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedkd.algorithms.fedavg import FedAvg, clip_update
from fedkd.compose import build_config
from fedkd.errors import ConfigError
from fedkd.privacy.accounting import planned_epsilon
from tests.algorithms.inprocess import run_inprocess


def test_clip_update_scales_only_updates_above_the_bound() -> None:
    big = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}  # norm 5
    clipped, norm = clip_update(big, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [[0.8]])
    small, norm = clip_update({"a": np.array([0.3, 0.4])}, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_allclose(small["a"], [0.3, 0.4])


def test_the_dp_step_on_known_updates() -> None:
    cfg = build_config({"data.dataset": "digits", "train.model": "mlp", "data.num-partitions": 4,
                        "federation.min-nodes": 2, "fedavg.dp-noise-multiplier": 2.0,
                        "fedavg.dp-clip": 1.0})
    algorithm = FedAvg(cfg, 10, (1, 8, 8))
    algorithm._model = algorithm.build_model(seed=0)
    weights = {k: v.detach().numpy().copy() for k, v in algorithm._model.state_dict().items()}
    keys = list(weights)
    # client 1 moves the first array by 3 (norm 3 * sqrt(size) > 1: clipped to 1), client 2 by a
    # vector of norm 0.5 (kept)
    first = keys[0]
    size = weights[first].size
    up1 = {k: v + (3.0 if k == first else 0.0) for k, v in weights.items()}
    up2 = {k: v.copy() for k, v in weights.items()}
    up2[first] = up2[first] + 0.5 / np.sqrt(size)
    noise_rng = np.random.default_rng([cfg.seed, FedAvg.NOISE_STREAM])
    metrics = algorithm._dp_step(weights, [up1, up2], sampled=2)
    new = {k: v.detach().numpy() for k, v in algorithm._model.state_dict().items()}
    for k in keys:  # (sum of clipped updates + N(0, (z S)^2)) / 2, noise drawn key by key
        noise = noise_rng.normal(0.0, 2.0, weights[k].shape)
        step = ((1.0 + 0.5) / np.sqrt(size) if k == first else 0.0) + noise
        np.testing.assert_allclose(new[k], weights[k] + step / 2, rtol=1e-5, atol=1e-5)
    assert metrics["dp-clipped-share"] == 0.5
    assert algorithm.server_ledger.epsilon() is not None


def test_dp_fedavg_spends_the_planned_client_level_epsilon(tmp_path: Path) -> None:
    import dp_accounting

    rows, _, _ = run_inprocess({"algorithm": "fedavg", "num-server-rounds": 3,
                                "fedavg.dp-noise-multiplier": 1.5, "fedavg.dp-clip": 0.5,
                                "federation.min-nodes": 4, "federation.min-replies": 2}, 4,
                               tmp_path)
    expected = planned_epsilon([dp_accounting.GaussianDpEvent(1.5)], 3, 1e-5)
    assert [r["server-epsilon"] for r in rows][-1] == pytest.approx(expected, rel=1e-9)
    assert rows[0]["server-epsilon"] < rows[-1]["server-epsilon"]
    assert all(0.0 <= r["dp-clipped-share"] <= 1.0 for r in rows)


def test_dp_fedavg_under_secure_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot run under aggregation.secure"):
        build_config({"algorithm": "fedavg", "fedavg.dp-noise-multiplier": 1.0,
                      "aggregation.secure": True})


@pytest.mark.parametrize(("key", "value"), [("fedavg.dp-noise-multiplier", -1.0),
                                            ("fedavg.dp-clip", 0.0)])
def test_malformed_dp_fedavg_options_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config({"algorithm": "fedavg", key: value})
