"""FedGen (official-code form): pure pieces, the client's reply, the real loop in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import client_context
from fedkd.algorithms.fedgen import (
    GENERATOR_PREFIX,
    LABEL_COUNTS,
    FedGen,
    label_weights,
    regularizer_weights,
    teacher_loss_code,
    teacher_loss_weighted,
)
from fedkd.compose import build_config
from fedkd.algorithms.fedgen import FedGenConfig
from fedkd.config import ConfigError, RunConfig
from fedkd.data.federated import load_federated
from fedkd.protocol import InvalidReply, Payload
from server.loop import Traffic
from tests.algorithms.inprocess import FIRST_NODE_ID, InProcessExchange, run_inprocess

#: Small and fast: digits, FedGen's CNN (8x8 -> 4x4 -> 2x2 -> 32-d latent), few steps.
FAST = {"algorithm": "fedgen", "train.model": "fedgen-cnn", "train.local-steps": 5,
        "fedgen.generator-steps": 10, "federation.evaluate-clients": False}


# ----- pure pieces ----------------------------------------------------------------------------
def test_teacher_loss_code_form_is_mean_ce_times_mean_weight() -> None:
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    # The code's broadcast: [B] * [B, 1] -> [B, B], then the mean.
    assert float(teacher_loss_code(ce, w)) == pytest.approx(2.5 * 0.25)
    assert float(teacher_loss_code(ce, w)) == pytest.approx(float(ce.mean() * w.mean()))
    # The intended form: a per-sample weighted mean.
    assert float(teacher_loss_weighted(ce, w)) == pytest.approx((0.1 + 0.4 + 0.9 + 1.6) / 4)
    # They agree when the weights are constant, and only then.
    c = torch.full((4,), 0.3)
    assert float(teacher_loss_code(ce, c)) == pytest.approx(float(teacher_loss_weighted(ce, c)))


def test_alpha_beta_schedule() -> None:
    cfg = FedGenConfig()
    assert regularizer_weights(cfg, 0) is None  # round 0: L = CE
    assert regularizer_weights(cfg, 1) == pytest.approx((9.8, 9.8))
    assert regularizer_weights(cfg, 2) == pytest.approx((10 * 0.98**2, 10 * 0.98**2))
    assert regularizer_weights(cfg, 1000) == (1e-4, 1e-4)  # the floor
    emnist = FedGenConfig(beta0=1.0)
    assert regularizer_weights(emnist, 1) == pytest.approx((9.8, 0.98))


def test_label_weights_and_qualified_labels() -> None:
    counts = np.array([[1, 5, 1], [1, 1, 3]])  # 2 clients, 3 labels; label 0 unseen this round
    w, qualified = label_weights(counts)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w[:, 1], [5 / 6, 1 / 6])
    assert qualified.tolist() == [1, 2]


def test_half_configured_privacy_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs both privacy.dp-sgd .* and privacy.output-noise"):
        FedGen(build_config({"algorithm": "fedgen", "privacy.dp-sgd": True}), 10, (1, 8, 8))
    with pytest.raises(ConfigError, match="needs both privacy.dp-sgd"):
        FedGen(build_config({"algorithm": "fedgen", "privacy.output-noise": 1.0}), 10,
               (1, 8, 8))


def test_fedgen_with_dp_sgd_accumulates_epsilon_and_sends_noised_counts(tmp_path) -> None:
    # Round 2 has the generator terms: the latent KL goes through the DP step, the generated
    # term through a non-private step with the hooks off (it would crash the next DP step
    # otherwise), and the released counts are a noised histogram.
    rows, audit, _ = run_inprocess(
        {**FAST, "privacy.dp-sgd": True, "privacy.output-noise": 3.0, "num-server-rounds": 2,
         "federation.evaluate-clients": True},
        3, tmp_path)
    assert [r["num-failures"] for r in rows] == [0, 0]
    first, second = ({n: c["epsilon"] for n, c in r["clients"].items()} for r in rows)
    assert all(0 < first[n] < second[n] for n in first)
    fits = [a for a in audit if a["phase"] == "fit"]
    assert all(a["status"] == "accepted" and "arrays/label-counts" in a["arrays"] for a in fits)


# ----- client half ----------------------------------------------------------------------------
def digits_fedgen(**flat: object):
    cfg = build_config({**FAST, "data.dataset": "digits", "data.num-partitions": 3, **flat})
    client = client_context(cfg, 7, {"partition-id": 0, "num-partitions": 3}, {})
    algorithm = FedGen(cfg, client.num_classes, client.input_shape)
    algorithm.setup_server(load_federated(cfg.data))
    return cfg, client, algorithm


def fit_request(algorithm: FedGen, rnd: int) -> Payload:
    arrays = {k: v.detach().numpy().copy()
              for k, v in algorithm.global_model().state_dict().items()}
    arrays.update({GENERATOR_PREFIX + k: v for k, v in algorithm.generator_state().items()})
    return Payload(arrays=arrays, config={"round": rnd})


@pytest.mark.parametrize("rnd", [1, 2])  # round 1 (t = 0): CE only; round 2: generator terms on
def test_client_reply_is_weights_and_label_counts(rnd: int) -> None:
    cfg, client, algorithm = digits_fedgen()
    model_keys = set(algorithm.global_model().state_dict())
    rng_before = torch.random.get_rng_state()
    reply = algorithm.client_phase("fit", fit_request(algorithm, rnd), client)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # no global RNG use
    assert set(reply.arrays) == model_keys | {LABEL_COUNTS}
    counts = reply.arrays[LABEL_COUNTS]
    assert counts.dtype == np.int64 and counts.shape == (10,) and counts.min() >= 1
    assert counts.sum() == cfg.train.local_steps * cfg.train.batch_size + 10  # 1 + batch counts
    assert set(reply.metrics) == {"num-examples", "loss", "accuracy"}
    algorithm.fit_phase().check(reply)
    # A client that lies about its counts is rejected.
    reply.arrays[LABEL_COUNTS] = counts + 1
    with pytest.raises(InvalidReply, match="label counts sum to"):
        algorithm.fit_phase().check(reply)


def test_generator_terms_change_the_update_from_round_two() -> None:
    _, client, algorithm = digits_fedgen()
    plain = algorithm.client_phase("fit", fit_request(algorithm, 1), client)
    # Same global weights and batches; round 2 adds the generator terms (and decays the lr by
    # 0.99), so the loss is much larger and the weights differ.
    regularised = algorithm.client_phase("fit", fit_request(algorithm, 2), client)
    assert regularised.metrics["loss"] > plain.metrics["loss"] + 1.0
    assert not np.allclose(regularised.arrays["classifier.weight"],
                           plain.arrays["classifier.weight"])


# ----- server half and the real loop ----------------------------------------------------------
class RecordingExchange(InProcessExchange):
    """An in-process exchange that keeps the requests it sends."""

    def __init__(self, sent: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent = sent

    def __call__(self, phase, requests, **kwargs):  # noqa: ANN001
        self.sent.append({n: p.arrays for n, p in requests.items()})
        return super().__call__(phase, requests, **kwargs)


@pytest.mark.parametrize("teacher_loss", ["code", "weighted"])
def test_generator_is_trained_and_broadcast_every_round(teacher_loss: str) -> None:
    cfg = build_config({**FAST, "data.dataset": "digits", "data.num-partitions": 3,
                               "fedgen.teacher-loss": teacher_loss})
    data = load_federated(cfg.data)
    algorithm = FedGen(cfg, data.num_classes, data.input_shape)
    algorithm.setup_server(data)
    clients = {FIRST_NODE_ID + p: client_context(cfg, FIRST_NODE_ID + p,
                                                 {"partition-id": p, "num-partitions": 3}, {})
               for p in range(3)}
    sent: list = []
    states = [algorithm.generator_state()]
    rng_before = torch.random.get_rng_state()
    for rnd in (1, 2):
        exchange = RecordingExchange(sent, clients, rnd, 60.0, 2, Traffic())
        metrics = algorithm.run_round(rnd, sorted(clients), exchange)
        states.append(algorithm.generator_state())
        assert metrics["qualified-labels"] == 10 and metrics["generator-change"] > 0
        assert np.isfinite(metrics["generator-teacher-loss"])
        assert 0 < metrics["generator-diversity-loss"] <= 1
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    # The generator moved in each round, and round 2's request carried the round-1 generator.
    for a, b in zip(states, states[1:]):
        assert not np.allclose(a["out.weight"], b["out.weight"])
    req1, req2 = (next(iter(r.values())) for r in sent)
    np.testing.assert_array_equal(req2[GENERATOR_PREFIX + "out.weight"], states[1]["out.weight"])
    assert not np.array_equal(req1[GENERATOR_PREFIX + "out.weight"],
                              req2[GENERATOR_PREFIX + "out.weight"])
    assert int(req2[GENERATOR_PREFIX + "bn.num_batches_tracked"]) == cfg.section("fedgen").generator_steps
    # The generator's lr decays by 0.98 per round.
    assert algorithm._optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.98**2)


def test_fedgen_run_learns_and_uploads_weights_and_label_counts(tmp_path: Path) -> None:
    overrides = {**FAST, "train.local-steps": 10, "fedgen.generator-steps": 20,
                 "federation.evaluate-clients": True, "num-server-rounds": 3}
    rows, audit, _ = run_inprocess(overrides, 3, tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["num-failures"] == 0 and r["generator-change"] > 0 for r in rows)
    assert rows[-1]["global-accuracy"] > 0.2  # digits, 10 classes: chance is 0.1
    assert rows[-1]["personalized-accuracy"] is not None
    algorithm = FedGen(build_config({"algorithm": "fedgen", "train.model": "fedgen-cnn"}),
                       10, (1, 8, 8))
    expected = {f"arrays/{k}": {"shape": list(v.shape), "dtype": "float32"}
                for k, v in algorithm.global_model().state_dict().items()}
    expected["arrays/label-counts"] = {"shape": [10], "dtype": "int64"}
    fits = [a for a in audit if a["phase"] == "fit"]
    assert len(fits) == 9 and all(a["status"] == "accepted" for a in fits)
    for a in fits:
        got = {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in a["arrays"].items()}
        assert got == expected
    assert all(a["arrays"] == {} for a in audit if a["phase"] == "evaluate")


def test_seeded_runs_are_reproducible(tmp_path: Path) -> None:
    keys = ("global-accuracy", "global-loss", "train-loss", "generator-teacher-loss")
    runs = []
    for name in ("a", "b"):
        rows, _, _ = run_inprocess({**FAST, "seed": 3}, 3, tmp_path / name)
        runs.append([[r[k] for k in keys] for r in rows])
    assert runs[0] == runs[1]
