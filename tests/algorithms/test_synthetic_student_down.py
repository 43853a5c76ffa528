"""``synthetic-student-down``: student-down on a proxy set pooled from the clients' synthetic
images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.app import client_context
from fedkd.algorithms import ALGORITHMS
from fedkd.algorithms.base import PERSONAL_PREFIX, ExchangeResult
from fedkd.compose import build_config
from fedkd.data.federated import load_federated
from fedkd.algorithms.student_down import STUDENT_MEAN
from fedkd.errors import ConfigError
from fedkd.protocol import Payload
from fedkd.training import state_to_numpy
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "synthetic-student-down", "synthesis.steps": 10, "synthesis.per-class": 3,
        "distill.public-batch": 60, "distill.server-steps": 5, "train.local-steps": 5,
        "student-down.local-loss": "none", "student-down.calibrate": "prior",
        "aggregation.rule": "logit-mean"}
DP = {"privacy.dp-sgd": True, "privacy.noise-multiplier": 1.0}


def algorithm_for(overrides: dict, num_clients: int = 3) -> tuple:
    cfg = build_config({"data.dataset": "digits", "train.model": "mlp",
                        "data.num-partitions": num_clients, **FAST, **overrides})
    data = load_federated(cfg.data)
    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    algorithm.setup_server(data)
    clients = {pid: client_context(cfg, 1000 + pid, {"partition-id": pid,
                                                      "num-partitions": num_clients}, {})
               for pid in range(num_clients)}
    return cfg, algorithm, clients


def test_a_run_pools_synthetic_images_and_the_student_goes_down(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({**FAST, "num-server-rounds": 3, "synthesis.every": 2,
                                    "output.audit-replies": True}, 3, tmp_path)
    first, second, third = rows
    # rounds 1 and 3 synthesise; round 2 reuses the pool
    assert first["synthetic-uploaded"] == first["synthetic-pool"] > 0
    assert "synthetic-pool" not in second
    assert third["synthetic-pool"] == first["synthetic-pool"] + third["synthetic-uploaded"]
    assert all(r["teachers"] == 3 and r["answered"] > 0 and r["num-failures"] == 0 for r in rows)
    assert all(r["global-accuracy"] is not None for r in rows)
    # a synthesis round trains once (before synthesising) and answers without training again
    assert {a["phase"] for a in audit} == {"synthesise", "answer", "fit", "evaluate"}
    assert [a["round"] for a in audit if a["phase"] == "answer"] == [1, 1, 1, 3, 3, 3]
    assert [a["round"] for a in audit if a["phase"] == "fit"] == [2, 2, 2]
    # nothing but synthetic images and logits ever went up: no weights, no data
    names = {k.rsplit("/", 1)[-1] for a in audit for k in a["arrays"]}
    assert names == {"synthetic", "synthetic-labels", "logits"}
    # the students came down (more than the logits and images went up)
    assert all(r["bytes-down-per-client"] > r["bytes-up-per-client"] for r in rows)


def test_a_client_synthesises_from_the_student_it_was_sent_and_answers_with_that_model() -> None:
    # At a vanishing learning rate local training moves nothing: the model a client synthesises
    # from and keeps is exactly the student the synthesis request carried, not its old model.
    _, algorithm, clients = algorithm_for({"train.learning-rate": 1e-12})
    client = clients[0]
    student = state_to_numpy(algorithm._students["mlp"])
    client.state.update({PERSONAL_PREFIX + k: np.full_like(v, 0.5) for k, v in student.items()})
    request = algorithm.synthesis_request(1)
    assert set(request.arrays) == {f"mlp/{k}" for k in student}
    upload = algorithm.answer("synthesise", request, client)
    assert set(upload.arrays) == {"synthetic", "synthetic-labels"}
    kept = {k[len(PERSONAL_PREFIX):]: v for k, v in client.state.items()
            if k.startswith(PERSONAL_PREFIX)}
    for name, value in student.items():
        np.testing.assert_allclose(kept[name], value, atol=1e-9, err_msg=name)
    # the pool from that upload; the announcement carries its images (uint8), not indices
    algorithm.collect(1, [0], lambda phase, requests: ExchangeResult(replies={0: upload}))
    indices = algorithm.announce()
    announcement = algorithm.proxy_request(1, indices)
    assert announcement.config == {"round": 1}
    assert announcement.arrays["inputs"].dtype == np.uint8
    assert len(announcement.arrays["inputs"]) == len(indices) == len(upload.arrays["synthetic"])
    answer = algorithm.answer("answer", announcement, client)
    assert set(answer.arrays) == {"logits"} and answer.arrays["logits"].shape == (len(indices), 10)
    # without the calibration reference the client computes it from the student it was sent,
    # not from its own model (here made unlike the student): the same reply
    client.state.update({PERSONAL_PREFIX + k: np.full_like(v, 0.01) for k, v in student.items()})
    answer = algorithm.answer("answer", announcement, client)
    alone = Payload(arrays={k: v for k, v in announcement.arrays.items()
                            if not k.startswith(STUDENT_MEAN)}, config=announcement.config)
    assert len(alone.arrays) == len(announcement.arrays) - 1
    np.testing.assert_array_equal(algorithm.answer("answer", alone, client).arrays["logits"],
                                  answer.arrays["logits"])


def test_data_reading_synthesis_is_refused_under_dp_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="reads the clients' data"):
        algorithm_for({**DP, "synthesis.method": "matching"})
    with pytest.raises(ConfigError, match="synthetic-student-down under privacy.output-noise"):
        algorithm_for({"privacy.output-noise": 1.0, "synthesis.method": "inversion"})
    algorithm_for({**DP, "synthesis.method": "inversion"})  # accepted


def test_the_ledger_is_the_synthetic_proxy_s(tmp_path: Path) -> None:
    # one DP-SGD training per round and post-processing otherwise (inverted images of the DP
    # model, logits, the student that comes down): every client's epsilon is synthetic-proxy's
    common = {**DP, "num-server-rounds": 2, "synthesis.method": "inversion", "synthesis.every": 1,
              "federation.evaluate-clients": True}
    rows, _, _ = run_inprocess({**FAST, **common}, 3, tmp_path / "ssd")
    baseline, _, _ = run_inprocess({**FAST, **common, "algorithm": "synthetic-proxy",
                                    "distill.steps": 3}, 3, tmp_path / "sp")
    for a, b in zip(rows, baseline):
        eps_a = {n: c["epsilon"] for n, c in a["clients"].items()}
        eps_b = {n: c["epsilon"] for n, c in b["clients"].items()}
        assert eps_a == eps_b and all(e > 0 for e in eps_a.values())
        assert "server-epsilon" not in a
