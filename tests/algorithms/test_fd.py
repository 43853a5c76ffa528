from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import client_context
from fedkd.algorithms.fd import FD
from fedkd.compose import build_config
from fedkd.config import RunConfig
from fedkd.protocol import Payload
from fedkd.training import predict_logits
from tests.algorithms.inprocess import run_inprocess

C = 3


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_fd(**flat: object) -> FD:
    cfg = build_config({"algorithm": "fd", **flat})
    return FD(cfg, num_classes=C, input_shape=(1, 8, 8))


def uploads() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    z = {n: np.arange(9, dtype=np.float32).reshape(3, 3) * (n - 1) for n in (1, 2, 3)}
    counts = {1: np.array([5, 0, 2]), 2: np.array([1, 0, 0]), 3: np.array([3, 0, 4])}
    return {n: (z[n], counts[n]) for n in (1, 2, 3)}


def test_targets_exclude_self_known_values() -> None:
    fd = make_fd()
    fd._uploads = uploads()
    targets, has = fd.targets_for(1)
    # Node 1 is left out. Class 0: nodes 2 and 3 both have samples -> mean of their softmaxes.
    expected0 = (softmax(uploads()[2][0][0]) + softmax(uploads()[3][0][0])) / 2
    np.testing.assert_allclose(targets[0], expected0, atol=1e-6)
    # Class 1: nobody has samples -> no target. Class 2: only node 3 (node 2's count is 0).
    assert has.tolist() == [True, False, True]
    np.testing.assert_allclose(targets[2], softmax(uploads()[3][0][2]), atol=1e-6)
    np.testing.assert_array_equal(targets[1], 0.0)


def test_targets_include_self_when_configured() -> None:
    fd = make_fd(**{"distill.exclude-self": False})
    fd._uploads = uploads()
    targets, _ = fd.targets_for(1)
    expected0 = sum(softmax(uploads()[n][0][0]) for n in (1, 2, 3)) / 3
    np.testing.assert_allclose(targets[0], expected0, atol=1e-6)


def test_weighted_rule_weights_teachers_by_class_counts() -> None:
    fd = make_fd(**{"aggregation.rule": "weighted", "distill.exclude-self": False})
    fd._uploads = uploads()
    targets, _ = fd.targets_for(None)
    # Class 2: counts 2 (node 1), 0 (node 2), 4 (node 3).
    expected2 = (2 * softmax(uploads()[1][0][2]) + 4 * softmax(uploads()[3][0][2])) / 6
    np.testing.assert_allclose(targets[2], expected2, atol=1e-6)


def digits_client(tmp_path: Path, **flat: object):
    cfg = build_config({"algorithm": "fd", "data.dataset": "digits", "train.model": "mlp",
                               "train.local-steps": 15, "data.num-partitions": 3, **flat})
    client = client_context(cfg, client=7, node_config={"partition-id": 0, "num-partitions": 3},
                            state={})
    return cfg, client, FD(cfg, client.num_classes, client.input_shape)


def test_client_uploads_only_class_statistics(tmp_path: Path) -> None:
    cfg, client, fd = digits_client(tmp_path)
    c = client.num_classes
    request = Payload(arrays={"targets": np.zeros((c, c), np.float32),
                              "target-mask": np.zeros(c, np.uint8)}, config={"round": 1})
    reply = fd.client_phase("fit", request, client)
    assert set(reply.arrays) == {"class-logits", "class-counts"}
    assert reply.arrays["class-logits"].shape == (c, c) and reply.arrays["class-logits"].dtype == np.float32
    counts = reply.arrays["class-counts"]
    assert counts.dtype == np.int64 and counts.sum() == 15 * 32  # every sample of every step
    absent = counts == 0
    np.testing.assert_array_equal(reply.arrays["class-logits"][absent], 0.0)
    fd.fit_phase().check(reply)  # consistent with the work asked for
    # The personal model stays on the node, in its state, for the next round.
    assert any(k.startswith("model/") for k in client.state)


def test_distillation_term_pulls_predictions_towards_targets(tmp_path: Path) -> None:
    # Every class gets the same target: all mass on class 0. With a large distillation weight
    # the client's predicted probability of class 0 on its own data rises far above training
    # without the term.
    probs = []
    for weight in (0.0, 5.0):
        cfg, client, fd = digits_client(tmp_path, **{"distill.weight": weight})
        c = client.num_classes
        targets = np.zeros((c, c), np.float32)
        targets[:, 0] = 1.0
        request = Payload(arrays={"targets": targets, "target-mask": np.ones(c, np.uint8)},
                          config={"round": 1})
        fd.client_phase("fit", request, client)
        model = fd.personal_model(client)
        p = torch.softmax(torch.from_numpy(predict_logits(model, client.data.train.x)), 1)
        probs.append(float(p[:, 0].mean()))
    assert probs[1] > probs[0] + 0.2


def test_fd_run_uploads_only_class_logits(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({"algorithm": "fd", "num-server-rounds": 3}, 3, tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1].get("global-accuracy") is None  # FD has no server model
    assert rows[-1]["personalized-accuracy"] > 0.3  # digits, 10 classes: chance is 0.1
    assert rows[-1]["classes-with-teachers"] == 10
    fits = [a for a in audit if a["phase"] == "fit"]
    assert len(fits) == 9 and all(a["status"] == "accepted" for a in fits)
    for a in fits:  # Flower ships arrays in .npy format: the data plus a 128-byte header
        assert a["arrays"] == {
            "arrays/class-logits": {"shape": [10, 10], "dtype": "float32", "bytes": 400 + 128},
            "arrays/class-counts": {"shape": [10], "dtype": "int64", "bytes": 80 + 128},
        }
    assert all(a["arrays"] == {} for a in audit if a["phase"] == "evaluate")
    assert max(r["bytes-up-per-client"] for r in rows) < 1_000


@pytest.mark.parametrize("rule", ["mean", "weighted", "entropy", "confidence", "era", "median",
                                  "trimmed-mean"])
def test_fd_runs_with_every_rule(tmp_path: Path, rule: str) -> None:
    rows, _, _ = run_inprocess({"algorithm": "fd", "aggregation.rule": rule,
                                "train.local-steps": 3, "federation.evaluate-clients": False},
                               3, tmp_path)
    assert len(rows) == 2 and rows[-1]["num-failures"] == 0
