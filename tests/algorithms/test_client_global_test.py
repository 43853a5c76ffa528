"""``federation.client-global-test``: the clients' own models scored on the official test set
(the metric Selective-FD's paper reports), through the real round loop and client app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.app import client_context
from fedkd.algorithms.dsfl import DSFL
from fedkd.compose import build_config
from fedkd.data.federated import load_federated
from fedkd.errors import ConfigError
from fedkd.protocol import Payload
from fedkd.training import evaluate
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "dsfl", "aggregation.rule": "era", "distill.public-batch": 60,
        "distill.server-steps": 5, "distill.steps": 3, "train.local-steps": 5}


def test_clients_score_their_own_models_every_k_rounds_and_the_last(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({**FAST, "num-server-rounds": 3, "federation.client-global-test": 100,
                                "federation.client-global-test-every": 2}, 3, tmp_path)
    scored = [r["round"] for r in rows if r["client-global-accuracy"] is not None]
    assert scored == [2, 3]
    last = rows[-1]
    per_client = [c["global-test-accuracy"] for c in last["clients"].values()
                  if "global-test-accuracy" in c]
    assert len(per_client) == 3 and all(0.0 <= a <= 1.0 for a in per_client)
    assert last["client-global-accuracy"] == pytest.approx(float(np.mean(per_client)))


def test_off_by_default(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({**FAST, "num-server-rounds": 1}, 2, tmp_path)
    assert rows[-1]["client-global-accuracy"] is None
    assert all("global-test-accuracy" not in c for c in rows[-1]["clients"].values())


def test_the_score_is_the_personal_model_on_a_seeded_subset_of_the_official_test_set() -> None:
    cfg = build_config({**FAST, "data.dataset": "digits", "train.model": "mlp",
                        "data.num-partitions": 3, "num-server-rounds": 4,
                        "federation.client-global-test": 50})
    data = load_federated(cfg.data)
    algo = DSFL(cfg, data.num_classes, data.input_shape)
    client = client_context(cfg, 7, {"partition-id": 1, "num-partitions": 3}, {})
    reply = algo.client_evaluate(Payload(config={"round": 4}), client)
    chosen = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.global_test))[:50])
    expected = evaluate(algo.personal_model(client), type(data.global_test)(
        x=data.global_test.x[chosen], y=data.global_test.y[chosen]))
    assert reply.metrics["global-test-accuracy"] == pytest.approx(expected.accuracy)
    # not an evaluation round of the metric (every 10 rounds and the last): not scored
    assert "global-test-accuracy" not in algo.client_evaluate(Payload(config={"round": 3}),
                                                              client).metrics


@pytest.mark.parametrize("key, value", [("federation.client-global-test", -1),
                                        ("federation.client-global-test-every", 0)])
def test_bad_values_are_refused(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=key):
        build_config({key: value})
