"""``synthetic-proxy``: DS-FL on a proxy set pooled from the clients' synthetic images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.app import client_context
from fedkd.algorithms import ALGORITHMS
from fedkd.compose import build_config
from fedkd.data.federated import load_federated
from fedkd.errors import ConfigError
from fedkd.protocol import InvalidReply, Payload, encode, validate_reply
from fedkd.synthesis import GuardedDataset
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "synthetic-proxy", "synthesis.steps": 10, "synthesis.per-class": 3,
        "distill.public-batch": 60, "distill.server-steps": 5, "distill.steps": 3,
        "train.local-steps": 5}
DP = {"privacy.dp-sgd": True, "privacy.noise-multiplier": 1.0}


def algorithm_for(overrides: dict) -> tuple:
    cfg = build_config({"data.dataset": "digits", "train.model": "mlp", "data.num-partitions": 3,
                        **FAST, **overrides})
    data = load_federated(cfg.data)
    return cfg, ALGORITHMS.get("synthetic-proxy")(cfg, data.num_classes, data.input_shape)


def test_a_run_pools_synthetic_images_and_distils_on_them(tmp_path: Path) -> None:
    rows, audit, run_dir = run_inprocess({**FAST, "num-server-rounds": 3, "synthesis.every": 2},
                                         3, tmp_path)
    first, second, third = rows
    # round 1 and 3 synthesise (K=3 per class held), round 2 reuses the pool
    assert first["synthetic-uploaded"] == first["synthetic-pool"] > 0
    assert "synthetic-pool" not in second
    assert third["synthetic-pool"] == first["synthetic-pool"] + third["synthetic-uploaded"]
    assert all(r["teachers"] == 3 and r["answered"] > 0 for r in rows)
    assert all(r["global-accuracy"] is not None for r in rows)
    for key in ("leak-nn-train", "leak-nn-heldout", "leak-nn-ratio", "leak-mia-auc"):
        assert 0 <= first[key] < 10
    phases = {a["phase"] for a in audit}
    assert phases == {"synthesise", "answer", "fit", "distill", "evaluate"}
    assert all(a["status"] == "accepted" for a in audit)
    uploads = [a for a in audit if a["phase"] == "synthesise"]
    arrays = [{k.rsplit("/", 1)[-1]: v for k, v in a["arrays"].items()} for a in audit]
    assert all(arrays[i]["synthetic"]["dtype"] == "uint8"
               for i, a in enumerate(audit) if a["phase"] == "synthesise")
    assert len(uploads) == 6
    # nothing but synthetic images, logits and metrics ever went up
    assert {name for a in arrays for name in a} == {"synthetic", "synthetic-labels", "logits"}
    # the picture of the pool: a row per class (digits: 10 classes of 8x8, 3 per class)
    pictures = sorted(p.name for p in (run_dir / "artifacts").iterdir())
    assert pictures == ["synthetic-round-001.png", "synthetic-round-003.png"]
    picture = Image.open(io.BytesIO((run_dir / "artifacts" / pictures[0]).read_bytes()))
    assert picture.size == (3 * 10, 10 * 10)


def reply(images: np.ndarray, labels: np.ndarray) -> Payload:
    return Payload(arrays={"synthetic": images, "synthetic-labels": labels},
                   metrics={"num-examples": 10, "loss": 0.1, "accuracy": 0.5})


def test_the_contract_rejects_hostile_uploads() -> None:
    _, algo = algorithm_for({})
    spec = algo.synthesis_phase()
    good = reply(np.zeros((6, 1, 8, 8), np.uint8), np.array([0, 0, 0, 1, 1, 1]))
    assert validate_reply(encode(good), spec).arrays["synthetic"].shape == (6, 1, 8, 8)
    cases = {
        "dtype": reply(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1, 2])),
        "shape": reply(np.zeros((3, 1, 9, 8), np.uint8), np.array([0, 1, 2])),
        "label range": reply(np.zeros((2, 1, 8, 8), np.uint8), np.array([0, 10])),
        "label count": reply(np.zeros((3, 1, 8, 8), np.uint8), np.array([0, 1])),
        "per class": reply(np.zeros((4, 1, 8, 8), np.uint8), np.array([2, 2, 2, 2])),
        "empty": reply(np.zeros((0, 1, 8, 8), np.uint8), np.zeros(0, np.int64)),
        "oversize": reply(np.zeros((31, 1, 8, 8), np.uint8), np.arange(31) % 10),
    }
    for what, bad in cases.items():
        with pytest.raises(InvalidReply):
            validate_reply(encode(bad), spec)
        assert what  # every case was refused
    # the declared size bound: 3 per class x 10 classes of 64 bytes, plus framing
    assert spec.max_reply_bytes == 30 * (64 + 8) + 65536


def test_data_reading_synthesis_is_refused_under_dp() -> None:
    with pytest.raises(ConfigError, match="reads the clients' data"):
        algorithm_for({**DP, "synthesis.method": "matching"})
    algorithm_for({**DP, "synthesis.method": "inversion"})  # accepted


def test_under_dp_the_synthesis_reads_no_client_data() -> None:
    cfg, algo = algorithm_for({**DP, "synthesis.method": "inversion"})
    client = client_context(cfg, 1000, {"partition-id": 0, "num-partitions": 3}, {})
    model = algo.personal_model(client)
    guard = GuardedDataset("the client's data")
    client.data = guard  # every read of anything the client holds raises
    images, labels = algo.synthesise(client, model, rnd=1)
    assert guard.attempts == 0
    assert labels.tolist() == np.repeat(np.arange(10), 3).tolist()  # every class: none was read
    assert images.shape == (30, 1, 8, 8)


def test_the_synthesis_costs_no_epsilon(tmp_path: Path) -> None:
    # Same DP-SGD training per round as DS-FL on a public set, so the same epsilon: the inverted
    # images (and the logits) are post-processing of the DP model.
    common = {**DP, "num-server-rounds": 2, "federation.evaluate-clients": True}
    rows, _, _ = run_inprocess({**FAST, **common, "synthesis.method": "inversion",
                                "synthesis.every": 1}, 3, tmp_path / "synthetic")
    baseline, _, _ = run_inprocess({**FAST, **common, "algorithm": "dsfl",
                                    "data.public-fraction": 0.1}, 3, tmp_path / "dsfl")
    eps = [[c["epsilon"] for _, c in sorted(r["clients"].items())] for r in rows]
    eps_dsfl = [[c["epsilon"] for _, c in sorted(r["clients"].items())] for r in baseline]
    assert np.allclose(eps, eps_dsfl, rtol=1e-9, atol=0)
    assert (np.array(eps[1]) > np.array(eps[0])).all() and min(eps[0]) > 0
    assert "leak-mia-auc" not in rows[0]  # not measured under privacy: it would read the data


def test_targets_are_anchored_on_the_synthesis_labels() -> None:
    from fedkd.data.datasets import ArrayDataset

    probs = np.array([[0.7, 0.2, 0.1] + [0.0] * 7, [0.1, 0.1, 0.8] + [0.0] * 7], np.float32)
    for beta, expected_first in ((0.0, probs[0]), (0.5, [0.35, 0.6, 0.05] + [0.0] * 7),
                                 (1.0, [0, 1] + [0] * 8)):
        _, algo = algorithm_for({"synthesis.label-weight": beta})
        algo._public = ArrayDataset(x=np.zeros((5, 1, 8, 8), np.float32), y=np.array([4, 1, 2, 0, 3]))
        anchored = algo.anchored(np.array([1, 2]), probs)  # pool labels 1 and 2
        np.testing.assert_allclose(anchored[0], expected_first, atol=1e-6)
        np.testing.assert_allclose(anchored.sum(axis=1), 1.0, atol=1e-6)
        assert anchored[1].argmax() == 2
    with pytest.raises(ConfigError, match="label-weight"):
        algorithm_for({"synthesis.label-weight": 1.5})
