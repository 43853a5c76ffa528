"""Logits up, student down (``student-down``): its round, its contract and its privacy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import client_context
from fedkd.algorithms.base import PERSONAL_PREFIX
from fedkd.algorithms.public_set import ProxyAnswers
from fedkd.algorithms.certainty import CERTAINTY, support_certainty
from fedkd.algorithms.student_down import (AUGMENT_STREAM, STUDENT_MEAN, StudentDown,
                                           fedexp_ratio, heldout_kl, shifted, with_momentum)
from fedkd.compose import build_config
from fedkd.data.federated import load_federated
from fedkd.errors import ConfigError
from fedkd.protocol import InvalidReply, Payload, encode, validate_reply
from fedkd.training import predict_logits, state_to_numpy
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "student-down", "distill.public-batch": 60, "distill.server-steps": 10,
        "train.local-steps": 5, "num-server-rounds": 2}


def _setup(overrides: dict, num_clients: int = 3):
    cfg = build_config({"data.dataset": "digits", "train.model": "mlp",
                        "data.num-partitions": num_clients, **FAST, **overrides})
    data = load_federated(cfg.data)
    algorithm = StudentDown(cfg, data.num_classes, data.input_shape)
    algorithm.setup_server(data)
    clients = {pid: client_context(cfg, 1000 + pid, {"partition-id": pid,
                                                      "num-partitions": num_clients}, {})
               for pid in range(num_clients)}
    return cfg, algorithm, clients


def _personal(client) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {k[len(PERSONAL_PREFIX):]: v for k, v in client.state.items()
            if k.startswith(PERSONAL_PREFIX)}


def test_a_client_starts_from_exactly_the_student_it_was_sent() -> None:
    # At a vanishing learning rate local training moves nothing: the model the client keeps
    # after round 2 is the round-2 student it was sent, not the model it trained in round 1.
    _, algorithm, clients = _setup({"train.learning-rate": 1e-12, "student-down.local-loss": "none"})
    client = clients[0]
    client.state.update({PERSONAL_PREFIX + k: np.full_like(v, 0.5)
                         for k, v in state_to_numpy(algorithm._students["mlp"]).items()})
    announcement = algorithm.proxy_request(2, algorithm.announce())
    sent = state_to_numpy(algorithm._students["mlp"])
    assert set(announcement.arrays) == {f"mlp/{k}" for k in sent}
    reply = algorithm.answer("fit", announcement, client)
    kept = _personal(client)
    assert kept.keys() == sent.keys()
    for name, value in sent.items():
        np.testing.assert_allclose(kept[name], value, atol=1e-9, err_msg=name)
        assert not np.allclose(kept[name], 0.5)
    assert set(reply.arrays) == {"logits"}


def test_no_reply_holds_weights_and_the_student_goes_down(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({**FAST, "output.audit-replies": True}, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["teachers"] == 3
    assert rows[-1]["global-accuracy"] is not None
    fit = [a for a in audit if a["phase"] == "fit"]
    assert len(fit) == 6
    for a in fit:  # logits only: no weights, no inputs
        assert a["arrays"] == {"arrays/logits": {"shape": [60, 10], "dtype": "float32",
                                                 "bytes": 60 * 10 * 4 + 128}}
    weights = sum(v.nbytes for v in state_to_numpy(_setup({})[1]._students["mlp"]).values())
    assert all(r["bytes-down-per-client"] > weights > 4 * r["bytes-up-per-client"] for r in rows)


def test_heterogeneous_clients_each_get_their_own_architectures_student(tmp_path: Path) -> None:
    models = {"train.client-models": "mlp,fedgen-cnn,resnet"}
    _, algorithm, clients = _setup(models)
    assert list(algorithm._students) == ["mlp", "fedgen-cnn", "resnet"]
    request = algorithm.proxy_request(1, algorithm.announce())
    for pid, arch in enumerate(["mlp", "fedgen-cnn", "resnet"]):
        assert clients[pid].model_name == arch
        model = algorithm.received_student(request, clients[pid])
        for name, value in state_to_numpy(algorithm._students[arch]).items():
            np.testing.assert_array_equal(state_to_numpy(model)[name], value, err_msg=name)
    # A client whose architecture the server has no student for refuses with the reason.
    _, mlp_only, _ = _setup({})
    with pytest.raises(ValueError, match="students for mlp architecture, not for this client's "
                                         "'fedgen-cnn'"):
        mlp_only.answer("fit", mlp_only.proxy_request(1, mlp_only.announce()), clients[1])
    rows, _, _ = run_inprocess({**FAST, **models}, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["teachers"] == 3


def test_a_larger_server_student_is_trained_but_never_sent(tmp_path: Path) -> None:
    _, algorithm, _ = _setup({"student-down.server-model": "fedgen-cnn"})
    assert list(algorithm._students) == ["mlp", "fedgen-cnn"]
    assert algorithm.global_model() is algorithm._students["fedgen-cnn"]
    request = algorithm.proxy_request(1, algorithm.announce())
    assert {k.split("/", 1)[0] for k in request.arrays if "/" in k} == {"mlp"}
    rows, _, _ = run_inprocess({**FAST, "student-down.server-model": "fedgen-cnn"}, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["global-accuracy"] is not None


def test_the_ledger_is_unchanged_by_the_student_going_down(tmp_path: Path) -> None:
    # Under DP-SGD, a client of student-down (no local term) runs the same DP-SGD steps on the
    # same data as a DS-FL client; receiving the student is post-processing of public inputs
    # and released logits, so every client's epsilon is exactly DS-FL's, and the server spends
    # nothing.
    dp = {"privacy.dp-sgd": True, "privacy.noise-multiplier": 1.0, "distill.steps": 3}
    sd, _, _ = run_inprocess({**FAST, **dp, "student-down.local-loss": "none"}, 3, tmp_path / "sd")
    dsfl, _, _ = run_inprocess({**FAST, **dp, "algorithm": "dsfl"}, 3, tmp_path / "dsfl")
    for a, b in zip(sd, dsfl):
        eps_a = {n: c["epsilon"] for n, c in a["clients"].items()}
        eps_b = {n: c["epsilon"] for n, c in b["clients"].items()}
        assert eps_a == eps_b and all(e > 0 for e in eps_a.values())
        assert "server-epsilon" not in a


def test_certainty_is_declared_sent_and_used(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess(
        {**FAST, "output.audit-replies": True, "data.partitioner": "pathological",
         "student-down.certainty": "support", "student-down.certainty-threshold": 0.1,
         "train.local-steps": 20}, 3, tmp_path)
    fit = [a for a in audit if a["phase"] == "fit"]
    assert fit and all(a["arrays"][f"arrays/{CERTAINTY}"]["shape"] == [60] for a in fit)
    assert rows[-1]["num-failures"] == 0 and 0 < rows[-1]["answered"] <= 60


def test_certainty_leaves_uncertain_teachers_out_of_a_sample() -> None:
    # Two teachers, three samples, the mean rule at T = 1. Sample 0: both certain (the mean of
    # both); sample 1: only teacher 1 (its answer); sample 2: nobody (dropped).
    _, algorithm, _ = _setup({"student-down.certainty": "support", "aggregation.rule": "mean",
                              "student-down.certainty-threshold": 0.5})
    logits = np.zeros((2, 3, 10), np.float32)
    logits[0, :, 0] = np.log(9.0)  # teacher 0: p(class 0) = 0.5 on every sample
    logits[1, :, 1] = np.log(9.0)  # teacher 1: p(class 1) = 0.5
    replies = [Payload(arrays={"logits": logits[k], CERTAINTY: np.array(c, np.float32)})
               for k, c in enumerate([[0.9, 0.1, 0.0], [0.6, 0.5, 0.49]])]
    asked = ProxyAnswers(np.array([7, 8, 9]), [0, 1], replies, logits)
    indices, probs = algorithm.targets(asked)
    assert indices.tolist() == [7, 8]
    np.testing.assert_allclose(probs[0, :2], [0.5 / 2 + 0.5 / 18, 0.5 / 2 + 0.5 / 18], atol=1e-6)
    np.testing.assert_allclose(probs[1, :2], [0.5 / 9, 0.5], atol=1e-6)


def test_support_certainty_known_values() -> None:
    probs = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]])
    counts = np.array([10, 2, 0, 8])  # shares 0.5, 0.1, 0, 0.4: support 1, 0.4, 0, 1
    np.testing.assert_allclose(support_certainty(probs, counts), [0.94, 0.5, 0.6], atol=1e-6)
    with pytest.raises(ValueError, match="label counts"):
        support_certainty(probs, np.array([1, 2]))


def _phase():
    cfg = build_config({"data.dataset": "digits", "algorithm": "student-down",
                        "student-down.certainty": "support"})
    return StudentDown(cfg, 10, (1, 8, 8)).fit_phase(4)


def _reply(certainty: np.ndarray):
    return encode(Payload(arrays={"logits": np.zeros((4, 10), np.float32), CERTAINTY: certainty},
                          metrics={"num-examples": 30, "loss": 0.5, "accuracy": 0.5}))


def test_the_contract_accepts_a_certainty_per_sample() -> None:
    payload = validate_reply(_reply(np.array([0.0, 0.25, 1.0, 0.5], np.float32)), _phase())
    assert payload.arrays[CERTAINTY].tolist() == [0.0, 0.25, 1.0, 0.5]


@pytest.mark.parametrize("certainty", [
    np.array([0.5, 0.5, 0.5], np.float32),  # one short
    np.array([0.5, np.nan, 0.5, 0.5], np.float32),  # not finite
    np.array([0.5, 1.5, 0.5, 0.5], np.float32),  # above 1
    np.array([0.5, -0.1, 0.5, 0.5], np.float32),  # below 0
    np.array([1, 1, 1, 1], np.int64),  # wrong dtype
])
def test_a_malformed_certainty_is_rejected(certainty: np.ndarray) -> None:
    with pytest.raises(InvalidReply, match=CERTAINTY):
        validate_reply(_reply(certainty), _phase())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"student-down.certainty": "support", "privacy.dp-sgd": True}, "label histogram"),
    ({"student-down.certainty": "support", "aggregation.secure": True,
      "aggregation.rule": "mean"}, "secure aggregation hides"),
    ({"student-down.local-loss": "prox", "privacy.dp-sgd": True}, "not supported under DP-SGD"),
    ({"privacy.dp-sgd": True, "privacy.grad-sample-mode": "ghost"}, "ghost clipping"),
    ({"student-down.certainty": "support", "aggregation.rule": "pate"},
     "client-level privacy analysis does not cover"),
    ({"student-down.local-loss": "attention"}, "local-loss must be one of"),
    ({"student-down.server-lr": 0.0}, "server-lr"),
    ({"student-down.server-momentum": 1.0}, "server-momentum"),
    ({"student-down.server-model": "vgg"}, "not a model of the zoo"),
    ({"student-down.holdout": 1.0}, "holdout must be in"),
    ({"student-down.round-momentum": -0.1}, "round-momentum must be in"),
    ({"student-down.server-batch": -1}, "server-batch must be >= 0"),
    ({"student-down.server-lr-guard": 0.5}, "server-lr-guard must be 0 \\(off\\) or > 1"),
    ({"student-down.server-lr-rule": "adam"}, "server-lr-rule must be one of fixed, fedexp"),
    # a data-size rule under DP-SGD would weigh every client alike (the size is withheld)
    ({"aggregation.rule": "weighted-logit-mean", "privacy.dp-sgd": True},
     "which a client under DP-SGD withholds"),
    ({"student-down.server-lr-rule": "fedexp", "aggregation.secure": True,
      "aggregation.rule": "mean"}, "which secure aggregation hides"),
])
def test_refused_configurations_say_why(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg = build_config({"data.dataset": "digits", "algorithm": "student-down", **overrides})
        StudentDown(cfg, 10, (1, 8, 8))


def test_label_free_stopping_keeps_the_best_student() -> None:
    # At a vanishing learning rate the held-out KL cannot improve after the first check: the
    # student stops after check-every * (1 + patience) steps.
    _, algorithm, _ = _setup({"distill.server-steps": 400, "student-down.patience": 2,
                              "student-down.check-every": 20, "train.learning-rate": 1e-12})
    targets = np.full((60, 10), 0.1, np.float32)
    stats = algorithm.distill_students(np.arange(60), targets, rnd=1)
    assert stats["student-steps"] == 60 and stats["student-holdout-kl"] > 0
    # Without patience it runs the whole budget and reports no held-out KL.
    _, budget, _ = _setup({"distill.server-steps": 40})
    stats = budget.distill_students(np.arange(60), targets, rnd=1)
    assert stats["student-steps"] == 40 and np.isnan(stats["student-holdout-kl"])


def test_the_student_kept_is_the_best_one_on_the_held_out_part() -> None:
    # An overshooting learning rate makes the held-out KL go up again: the student the round
    # ends with is the best one seen, and its KL on the held-out part is the one reported.
    _, algorithm, _ = _setup({"distill.server-steps": 400, "student-down.patience": 3,
                              "student-down.check-every": 5, "train.learning-rate": 2.0,
                              "distill.temperature": 2.0})
    targets = np.random.default_rng(1).dirichlet(np.ones(10), size=60).astype(np.float32)
    stats = algorithm.distill_students(np.arange(60), targets, rnd=1)
    held = np.random.default_rng([algorithm.cfg.seed, 1, 0, AUGMENT_STREAM]).permutation(60)[:6]
    x = algorithm._public.x[:60]
    kept = heldout_kl(algorithm._students["mlp"], x[held], targets[held], 2.0, 512)
    assert kept == pytest.approx(stats["student-holdout-kl"], abs=1e-6)
    assert stats["student-steps"] < 400


def test_shifts_preserve_shape_and_move_pixels() -> None:
    x = np.zeros((2, 1, 5, 5), np.float32)
    x[:, 0, 2, 2] = 1.0
    out = shifted(x, 1, np.random.default_rng(0))
    assert out.shape == x.shape and np.allclose(out.sum(axis=(1, 2, 3)), 1.0)
    # rng(0) draws offsets dy = (2, 1), dx = (1, 0) in the 1-pixel padding: the pixel at (2, 2)
    # moves to (1, 2) in the first image and (2, 3) in the second
    assert np.argwhere(out == 1).tolist() == [[0, 0, 1, 2], [1, 0, 2, 3]]
    assert shifted(x, 0, np.random.default_rng(0)) is x


def test_a_server_learning_rate_moves_the_targets_further_from_the_student() -> None:
    # eta = 1 leaves the targets; eta = 2 doubles their (centred) log-distance from the
    # student's answer; both rows stay distributions.
    _, algorithm, _ = _setup({"student-down.server-lr": 2.0})
    student = algorithm._students["mlp"]
    x = algorithm._public.x[:4]
    own = torch.softmax(torch.from_numpy(predict_logits(student, x)), 1)
    targets = np.full((4, 10), 0.1, np.float32)
    moved = algorithm.extrapolated(student, x, targets, 2.0)
    np.testing.assert_allclose(moved.sum(1), 1.0, atol=1e-5)
    log_own = np.log(own.numpy())
    expected = -(log_own - log_own.mean(1, keepdims=True))  # own + 2 (uniform - own) = -own
    log_moved = np.log(moved)
    np.testing.assert_allclose(log_moved - log_moved.mean(1, keepdims=True), expected, atol=1e-4)
    _, plain, _ = _setup({})
    assert plain.extrapolated(student, x, targets, 1.0) is targets


def test_the_global_model_is_the_average_and_the_student_goes_down() -> None:
    # With average > 0 the test set sees the running average; the clients still get the
    # student itself, and after two rounds the two differ.
    _, algorithm, _ = _setup({"distill.average": 0.5})
    assert algorithm.global_model() is algorithm._students["mlp"]  # before any round
    targets = np.random.default_rng(0).dirichlet(np.ones(10), size=60).astype(np.float32)
    for rnd in (1, 2):
        algorithm.distill_students(np.arange(60), targets, rnd=rnd)
    average, student = algorithm.global_model(), algorithm._students["mlp"]
    assert average is not student
    sent = algorithm.proxy_request(3, algorithm.announce()).arrays
    for name, value in state_to_numpy(student).items():
        np.testing.assert_array_equal(sent[f"mlp/{name}"], value)
        assert not np.allclose(state_to_numpy(average)[name], value), name


def test_round_momentum_known_values() -> None:
    # beta = 0.5. Round 1: the weight moved 1 -> 3, v = 2, kept at 3. Round 2: moved 3 -> 4,
    # v = 0.5 * 2 + 1 = 2, so the weight lands at 3 + 2 = 5. Integer buffers stay as set.
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    weight = model[0].weight
    with torch.no_grad():
        weight.fill_(1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        weight.fill_(3)
        model[1].num_batches_tracked.fill_(7)
    velocity = with_momentum(model, before, None, 0.5)
    assert weight.item() == 3 and velocity["0.weight"].item() == 2
    assert "1.num_batches_tracked" not in velocity and int(model[1].num_batches_tracked) == 7
    with torch.no_grad():
        before = {k: v.clone() for k, v in model.state_dict().items()}
        weight.fill_(4)
    velocity = with_momentum(model, before, velocity, 0.5)
    assert weight.item() == 5 and velocity["0.weight"].item() == 2


def test_a_diverging_fit_is_redone_at_half_the_server_lr_and_never_kept(caplog) -> None:  # noqa: ANN001
    # At learning rate 1e6 every fit diverges: the round tries server-lr 4, 2 and 1, says so,
    # and keeps last round's student (finite, unchanged) rather than a broken one.
    _, algorithm, _ = _setup({"student-down.server-lr": 4.0, "train.learning-rate": 1e6,
                              "distill.average": 0.5})
    student = algorithm._students["mlp"]
    kept = {k: v.clone() for k, v in student.state_dict().items()}
    targets = np.random.default_rng(0).dirichlet(np.ones(10), size=60).astype(np.float32)
    with caplog.at_level("WARNING", logger="flwr"):
        stats = algorithm.distill_students(np.arange(60), targets, rnd=1)
    said = [r.getMessage() for r in caplog.records]
    assert any("diverged at server-lr 4; redone at 2" in m for m in said), said
    assert any("diverged at server-lr 2; redone at 1" in m for m in said), said
    assert any("diverged; kept as it was" in m for m in said), said
    assert stats["student-server-lr"] == 1.0 and stats["student-steps"] == 0
    for name, value in student.state_dict().items():
        assert torch.equal(value, kept[name]), name
    assert all(torch.isfinite(v).all() for v in algorithm.global_model().state_dict().values())


def test_a_growing_fit_loss_lowers_the_server_lr_and_restarts_from_the_average(caplog) -> None:  # noqa: ANN001
    # server-lr 3, guard 4: the median of the last 5 losses against the median of the (up to)
    # 20 before, at least 5 of them. One spike does not fire it; a loss whose median grows 5x
    # does: the server-lr goes 3 -> 2 for the rounds after, the record restarts, and the
    # student restarts from the running average (the global model).
    _, algorithm, _ = _setup({"student-down.server-lr": 3.0, "distill.average": 0.5})
    targets = np.random.default_rng(0).dirichlet(np.ones(10), size=60).astype(np.float32)
    for rnd in (1, 2):  # two fits: the average differs from the student
        algorithm.distill_students(np.arange(60), targets, rnd=rnd)
    student, average = algorithm._students["mlp"], algorithm.global_model()
    assert not torch.equal(student.state_dict()["body.1.weight"],
                           average.state_dict()["body.1.weight"])
    algorithm._fit_losses = []
    for loss in [1.0, 1.0, 1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0, 5.0, 6.0]:
        algorithm.guard_server_lr(loss, rnd=3)
    assert algorithm._server_lr == 3.0  # the spike, then medians of 1: no
    with caplog.at_level("WARNING", logger="flwr"):
        algorithm.guard_server_lr(7.0, rnd=4)  # median(1, 1, 5, 6, 7) = 5 = 5x the median of 1
    assert algorithm._server_lr == 2.0 and algorithm._fit_losses == []
    assert any("grew 5.0x over 13 rounds" in r.getMessage()
               and "server-lr 3 -> 2" in r.getMessage() for r in caplog.records)
    for name, value in average.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name
    # The next round's fit starts from server-lr 2, and the state goes into checkpoints.
    stats = algorithm.distill_students(np.arange(60), targets, rnd=5)
    assert stats["student-server-lr"] == 2.0
    state = algorithm.server_state()
    assert state["_server_lr"] == 2.0 and state["_fit_losses"] == [stats["student-distill-loss"]]
    # Down to 1 and no further: each time 7 quiet rounds, then 1000 three times (the median
    # of the last 5 turns at the third).
    for lowered in (4 / 3, 1.0, 1.0):
        algorithm._fit_losses = [1.0] * 7
        for _ in range(3):
            algorithm.guard_server_lr(1000.0, rnd=6)
        assert algorithm._server_lr == pytest.approx(lowered)
    # A loss growing 1.1x a round (3.3x between the medians) never fires it; nor does any
    # growth with the guard off.
    _, slow, _ = _setup({"student-down.server-lr": 3.0})
    for rnd in range(60):
        slow.guard_server_lr(1.1 ** rnd, rnd)
    assert slow._server_lr == 3.0 and len(slow._fit_losses) == 25
    _, off, _ = _setup({"student-down.server-lr": 3.0, "student-down.server-lr-guard": 0})
    for loss in [1.0] * 5 + [1e6] * 5:
        off.guard_server_lr(loss, rnd=1)
    assert off._server_lr == 3.0


def test_fedexp_ratio_known_values() -> None:
    # One sample, two classes, the student at 0. Teachers moved by (1, -1) and (3, -3), their
    # mean by (2, -2): mean squared move (2 + 18) / 2 = 10, over twice the mean's 8: 0.625.
    own = np.zeros((1, 2))
    teachers = np.array([[[1.0, -1.0]], [[3.0, -3.0]]])
    assert fedexp_ratio(teachers, teachers.mean(0), own) == pytest.approx(0.625)
    # Rows are centred first: a constant added to a teacher's (or the student's) row is no move.
    assert fedexp_ratio(teachers + np.array([[[5.0]], [[-2.0]]]), teachers.mean(0),
                        own + 7.0) == pytest.approx(0.625)
    # Teachers that agree: 1/2. Teachers that cancel: the aggregate did not move.
    assert fedexp_ratio(teachers[:1].repeat(4, 0), teachers[0], own) == pytest.approx(0.5)
    assert fedexp_ratio(np.array([[[1.0, -1.0]], [[-1.0, 1.0]]]), np.zeros((1, 2)),
                        own) == float("inf")
    # Two teachers at right angles (one sample, three classes, after centring): 1.
    a, b = np.array([2.0, -1.0, -1.0]), np.array([-1.0, 2.0, -1.0])
    assert fedexp_ratio(np.stack([a, b])[:, None], ((a + b) / 2)[None], np.zeros((1, 3))) == (
        pytest.approx((6 + 6) / 2 / (2 * 1.5)))


def test_the_fedexp_rule_sets_the_rounds_server_lr_from_the_spread_clipped_to_server_lr() -> None:
    _, algorithm, _ = _setup({"student-down.server-lr": 3.0, "student-down.server-lr-rule":
                              "fedexp", "aggregation.rule": "logit-mean"})
    indices = np.array([3, 5, 9])
    own = predict_logits(algorithm._students["mlp"], algorithm._public.x[indices], batch_size=8)
    rng = np.random.default_rng(0)

    def asked_with(moves: np.ndarray) -> ProxyAnswers:  # moves [K, 3, 10] from the student
        logits = (own[None] + moves).astype(np.float32)
        return ProxyAnswers(indices, list(range(len(moves))),
                            [Payload(arrays={"logits": z}) for z in logits], logits)
    common = 0.2 * rng.normal(size=(1, 3, 10))  # ten teachers' moves: one shared, one each
    etas, ratios = [], []
    for spread in (0.0, 0.3, 3.0):
        asked = asked_with(common + spread * rng.normal(size=(10, 3, 10)))
        _, probs = algorithm.targets(asked)
        eta, stats = algorithm.round_server_lr(asked, indices, probs)
        ratio = fedexp_ratio(asked.logits, asked.logits.mean(0), own)
        assert stats["student-fedexp-ratio"] == pytest.approx(ratio, rel=1e-4)
        etas, ratios = [*etas, eta], [*ratios, ratio]
    # agreeing teachers: plain averaging; some spread: extrapolated by the ratio; far apart:
    # extrapolated, but never past server-lr
    assert ratios[0] == pytest.approx(0.5, rel=1e-4) and etas[0] == 1.0
    assert 1.0 < etas[1] < 3.0 and etas[1] == pytest.approx(ratios[1], rel=1e-4)
    assert etas[2] == 3.0 < ratios[2]
    # The fixed rule (the default) leaves the round at server-lr, as the guard left it.
    _, fixed, _ = _setup({"student-down.server-lr": 3.0})
    fixed._server_lr = 2.0
    assert fixed.round_server_lr(asked, indices, probs) == (2.0, {})


def test_the_server_sends_the_calibration_reference_the_client_would_compute() -> None:
    # prior calibration re-centres a client's logits on its student's mean over the batch; the
    # server computes it once and sends it: the reply is the one the client computes alone
    _, algorithm, clients = _setup({"student-down.calibrate": "prior",
                                    "student-down.server-lr": 2.0})
    request = algorithm.proxy_request(1, algorithm.announce())
    mean = request.arrays[f"{STUDENT_MEAN}mlp"]
    assert mean.shape == (10,) and np.isfinite(mean).all()
    x = algorithm._public.x[algorithm._answers[0]]
    np.testing.assert_array_equal(
        mean, predict_logits(algorithm._students["mlp"], x, batch_size=512).mean(0))
    without = Payload(arrays={k: v for k, v in request.arrays.items() if k != f"{STUDENT_MEAN}mlp"},
                      config=request.config)
    sent = algorithm.answer("fit", request, clients[0])
    alone = algorithm.answer("fit", without, clients[0])
    np.testing.assert_array_equal(sent.arrays["logits"], alone.arrays["logits"])
    # what the server announced is what the extrapolation and FedExP read, sample for sample
    some = algorithm._answers[0][[1, 4, 7]]
    np.testing.assert_array_equal(algorithm.announced_answer("mlp", some),
                                  algorithm._answers[1]["mlp"][[1, 4, 7]])
    assert algorithm.announced_answer("mlp", np.array([-1])) is None  # not announced: computed


@pytest.mark.parametrize("mean", [np.zeros(9, np.float32), np.full(10, np.nan, np.float32)])
def test_a_malformed_calibration_reference_from_the_server_is_refused(mean: np.ndarray) -> None:
    _, algorithm, clients = _setup({"student-down.calibrate": "prior"})
    request = algorithm.proxy_request(1, algorithm.announce())
    request.arrays[f"{STUDENT_MEAN}mlp"] = mean
    with pytest.raises(ValueError, match="must be 10 finite values"):
        algorithm.answer("fit", request, clients[0])


def test_a_data_size_rule_runs_under_dp_sgd_only_with_a_noised_count(tmp_path: Path) -> None:
    # under DP-SGD with output noise the count is released noised (and charged), so the
    # weighted rule is accepted; under secure aggregation the size stays inside the sum
    dp = {"data.dataset": "digits", "algorithm": "student-down", "privacy.dp-sgd": True,
          "aggregation.rule": "weighted-logit-mean"}
    StudentDown(build_config({**dp, "privacy.output-noise": 1.0}), 10, (1, 8, 8))
    StudentDown(build_config({**dp, "aggregation.secure": True}), 10, (1, 8, 8))
