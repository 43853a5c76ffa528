"""DS-FL and the unlabeled proxy set, through the real round loop and client app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedkd.compose import build_config
from fedkd.data.federated import load_federated
from fedkd.errors import ConfigError
from tests.algorithms.inprocess import run_inprocess

FAST = {"distill.public-batch": 60, "distill.server-steps": 10, "distill.steps": 3,
        "train.local-steps": 5, "num-server-rounds": 2}


def test_dsfl_shares_logits_on_announced_samples_and_distils_a_student(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({"algorithm": "dsfl", "aggregation.rule": "era", **FAST,
                                    "train.client-models": "mlp,fedgen-cnn,resnet"}, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["teachers"] == 3
    assert rows[-1]["global-accuracy"] is not None and rows[-1]["answered"] == 60
    for a in audit:
        if a["phase"] == "fit":  # logits only: no weights, no inputs
            assert a["arrays"] == {"arrays/logits": {"shape": [60, 10], "dtype": "float32",
                                                     "bytes": 60 * 10 * 4 + 128}}
        else:
            assert a["arrays"] == {}, a


def test_count_rules_make_clients_send_label_counts(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({"algorithm": "dsfl", "aggregation.rule": "classwise", **FAST},
                                   3, tmp_path)
    fit = [a for a in audit if a["phase"] == "fit"]
    assert fit and all(a["arrays"]["arrays/label-counts"]["shape"] == [10] for a in fit)
    assert rows[-1]["num-failures"] == 0


def _without(rows: list[dict], *keys: str) -> str:
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k not in ("wall-time-s", *keys)}
        r["clients"] = sorted((c["partition-id"], c["accuracy"], c["loss"]) for c in r["clients"].values()
                              if "accuracy" in c)
        out.append(r)
    return json.dumps(out, sort_keys=True)


@pytest.mark.parametrize("algorithm", ["dsfl", "fedmd"])
def test_public_labels_are_never_read(algorithm: str, tmp_path: Path) -> None:
    # Withheld labels read -1 (training on them would fail); the run is exactly the run with the
    # labels present: no algorithm reads them (only the consensus-accuracy metric does, when
    # there are labels to compare with).
    hidden = build_config({"data.dataset": "digits", "data.public-labels": False})
    assert (load_federated(hidden.data).public.y == -1).all()
    assert (load_federated(build_config({"data.dataset": "digits"}).data).public.y >= 0).all()
    overrides = {"algorithm": algorithm, **FAST}
    labelled, _, _ = run_inprocess(overrides, 3, tmp_path / "labelled")
    unlabeled, _, _ = run_inprocess({**overrides, "data.public-labels": False}, 3,
                                    tmp_path / "unlabeled")
    assert "consensus-accuracy" in labelled[-1] and "consensus-accuracy" not in unlabeled[-1]
    assert _without(labelled, "consensus-accuracy") == _without(unlabeled, "consensus-accuracy")


def test_pretraining_on_public_labels_needs_labels() -> None:
    with pytest.raises(ConfigError, match="needs data.public-labels = true"):
        build_config({"algorithm": "fedmd", "distill.pretrain-public-steps": 5,
                      "data.public-labels": False})


def test_student_replays_earlier_rounds(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({"algorithm": "dsfl", **FAST, "num-server-rounds": 3,
                                "distill.replay-rounds": 3}, 3, tmp_path)
    assert all(r["global-accuracy"] is not None for r in rows)
    assert np.isfinite([r["student-distill-loss"] for r in rows]).all()


def test_replay_rounds_default_is_this_round_only() -> None:
    # distill.replay-rounds = 0 (the default) is the algorithm's own: 1 for the public-set ones.
    from fedkd.algorithms.dsfl import DSFL

    for flat, rounds in (({}, 1), ({"distill.replay-rounds": 3}, 3)):
        cfg = build_config({"algorithm": "dsfl", "data.dataset": "digits", **flat})
        assert DSFL(cfg, 10, (1, 8, 8))._replay.maxlen == rounds


def test_dsfl_clients_send_a_certainty_per_sample_when_asked(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({"algorithm": "dsfl", **FAST, "output.audit-replies": True,
                                    "dsfl.certainty": "support",
                                    "dsfl.certainty-threshold": 0.1}, 3, tmp_path)
    fit = [a for a in audit if a["phase"] == "fit"]
    assert fit and all(a["arrays"]["arrays/certainty"]["shape"] == [60] for a in fit)
    assert rows[-1]["num-failures"] == 0 and 0 < rows[-1]["answered"] <= 60


def test_dsfl_leaves_uncertain_teachers_out_of_a_sample() -> None:
    # Two teachers, three samples, the mean rule: sample 0 over both, sample 1 over teacher 1
    # alone, sample 2 (nobody certain) dropped.
    from fedkd.algorithms.dsfl import DSFL
    from fedkd.algorithms.public_set import ProxyAnswers
    from fedkd.protocol import Payload

    cfg = build_config({"data.dataset": "digits", "algorithm": "dsfl", "aggregation.rule": "mean",
                        "dsfl.certainty": "support", "dsfl.certainty-threshold": 0.5})
    algorithm = DSFL(cfg, 10, (1, 8, 8))
    logits = np.zeros((2, 3, 10), np.float32)
    logits[0, :, 0] = np.log(9.0)  # p(class 0) = 0.5
    logits[1, :, 1] = np.log(9.0)  # p(class 1) = 0.5
    replies = [Payload(arrays={"logits": logits[k], "certainty": np.array(c, np.float32)},
                       metrics={"num-examples": 10, "loss": 0.1, "accuracy": 0.9})
               for k, c in enumerate([[0.9, 0.1, 0.0], [0.6, 0.5, 0.49]])]
    indices, probs, metrics = algorithm.combine_answers(
        ProxyAnswers(np.array([7, 8, 9]), [0, 1], replies, logits))
    assert indices.tolist() == [7, 8] and metrics["answered"] == 2
    np.testing.assert_allclose(probs[0, :2], [0.5 / 2 + 0.5 / 18] * 2, atol=1e-6)
    np.testing.assert_allclose(probs[1, :2], [0.5 / 9, 0.5], atol=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"algorithm": "selective-fd", "dsfl.certainty": "support"}, "applies to dsfl only"),
    ({"algorithm": "dsfl", "dsfl.certainty": "support", "privacy.dp-sgd": True},
     "label histogram"),
    ({"algorithm": "dsfl", "dsfl.certainty": "mask"}, "must be one of none, support"),
])
def test_dsfl_certainty_refusals_say_why(overrides: dict, message: str) -> None:
    from fedkd.algorithms import ALGORITHMS

    with pytest.raises(ConfigError, match=message):
        cfg = build_config({"data.dataset": "digits", **overrides})
        ALGORITHMS.get(cfg.algorithm)(cfg, 10, (1, 8, 8))


def test_the_global_model_is_the_running_average_of_the_student() -> None:
    # distill.average = 0.5 on a public-set algorithm: after two distillations the global model
    # is 0.5 * (round-1 student) + 0.5 * (round-2 student), weight by weight; the student itself
    # stays what it was trained to.
    from fedkd.algorithms.dsfl import DSFL
    from fedkd.training import state_to_numpy

    cfg = build_config({"algorithm": "dsfl", "data.dataset": "digits", **FAST,
                        "distill.average": 0.5, "data.num-partitions": 3})
    data = load_federated(cfg.data)
    algorithm = DSFL(cfg, data.num_classes, data.input_shape)
    algorithm.setup_server(data)
    assert algorithm.global_model() is algorithm._student
    targets = np.random.default_rng(0).dirichlet(np.ones(10), size=60).astype(np.float32)
    algorithm.distill_student(np.arange(60), targets, rnd=1)
    first = state_to_numpy(algorithm._student)
    algorithm.distill_student(np.arange(60, 120), targets, rnd=2)
    second = state_to_numpy(algorithm._student)
    average = state_to_numpy(algorithm.global_model())
    for name, value in average.items():
        np.testing.assert_allclose(value, 0.5 * first[name] + 0.5 * second[name], atol=1e-6)
        assert not np.allclose(value, second[name]), name
