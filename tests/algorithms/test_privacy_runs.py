"""Privacy through the real round loop and client app (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.compose import build_config
from fedkd.config import ConfigError
from tests.algorithms.inprocess import run_inprocess

DP = {"privacy.dp-sgd": True, "privacy.noise-multiplier": 1.0, "train.local-steps": 5}


def epsilons(rows: list[dict]) -> list[dict[str, float]]:
    return [{n: c["epsilon"] for n, c in r["clients"].items()} for r in rows]


def test_fd_with_dp_reports_a_growing_epsilon_for_every_client(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({"algorithm": "fd", **DP, "privacy.output-noise": 2.0,
                                "num-server-rounds": 3}, 3, tmp_path)
    per_round = epsilons(rows)
    for node in per_round[0]:
        assert 0 < per_round[0][node] < per_round[1][node] < per_round[2][node]
    last = rows[-1]
    assert last["epsilon-max"] == max(per_round[2].values())
    assert last["privacy-accountant"] == "rdp" and last["delta"] == 1e-5
    assert last["privacy-unit"] == "example"
    assert "server-epsilon" not in last  # mean aggregation spends no client-level privacy


def test_budget_exhausted_clients_stop_and_the_run_continues(tmp_path: Path) -> None:
    # Digits partitions of 3 clients differ in size, so their per-round epsilon differs: with
    # this budget some clients stop after round 1 while the others go on.
    rows, _, _ = run_inprocess({"algorithm": "local", **DP, "num-server-rounds": 3,
                                "privacy.epsilon-budget": 3.3, "federation.min-replies": 1},
                               3, tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3]
    stopped = [r["budget-exhausted"] for r in rows]
    assert stopped[0] == 0 and stopped[1] >= 1
    for r in rows:
        for reason in r["failures"].get("fit", {}).values():
            assert reason.startswith("budget-exhausted")
    assert max(max(e.values()) for e in epsilons(rows)) <= 3.3  # nobody went past the budget


def test_pate_votes_are_accounted_at_client_level(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess(
        {"algorithm": "fedmd", "aggregation.rule": "pate", "distill.public-batch": 40,
         "distill.server-steps": 5, "distill.steps": 3, "train.local-steps": 5},
        3, tmp_path)
    eps = [r["server-epsilon"] for r in rows]
    assert 0 < eps[0] < eps[1]  # 40 more noisy votes per round
    assert rows[-1]["server-privacy-unit"] == "client"
    # the data-dependent figure is released once, after the last round, beside the other
    assert "server-epsilon-data-dependent" not in rows[0]
    last = rows[-1]
    assert last["pate-queries"] == last["pate-answered"] == 80  # no threshold: all answered
    assert last["server-epsilon-data-independent-answered"] == pytest.approx(eps[1], rel=1e-9)
    assert 0 < last["server-epsilon-data-dependent"] < float("inf")


def test_fd_refuses_half_configured_privacy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fd computes its per-class logits on private data"):
        run_inprocess({"algorithm": "fd", **DP}, 3, tmp_path)


# Bugs D and E: every charge to a client's ledger (training and every release) is checked
# against privacy.epsilon-budget before it is made. Each budget lies between the largest
# epsilon after round 2 and after round 3 of the same run without a budget (measured), so some
# client must stop in round 3 or 4.
_PUBLIC = {"distill.public-batch": 40, "distill.server-steps": 3, "distill.steps": 2}
_SYNTHETIC = {"fedgen-logits.synthetic-batch": 20, "distill.server-steps": 3,
              "fedgen.generator-steps": 2, "distill.steps": 2}
_NOISE_ONLY = {"train.local-steps": 5, "privacy.output-noise": 2.0,
               "aggregation.max-abs-logit": 1e7}  # noised logits of a non-DP model are large
_DP_NOISE = {**DP, "privacy.output-noise": 2.0}
_SYNTHESIS = {"algorithm": "synthetic-proxy", "synthesis.method": "inversion",
              "synthesis.steps": 5, "synthesis.per-class": 2, "synthesis.every": 2, **_PUBLIC}
BUDGET_CASES = {
    "fedavg/dp-sgd": ({"algorithm": "fedavg", **DP}, 3.9),
    "local/dp-sgd": ({"algorithm": "local", **DP}, 3.9),
    "fd/dp-sgd+output-noise": ({"algorithm": "fd", **_DP_NOISE}, 6.4),
    "fedgen/dp-sgd+output-noise": ({"algorithm": "fedgen", "train.model": "fedgen-cnn",
                                    "fedgen.generator-steps": 2, **_DP_NOISE}, 5.2),
    "fedmd/dp-sgd": ({"algorithm": "fedmd", **_PUBLIC, **DP}, 3.9),
    "fedmd/output-noise": ({"algorithm": "fedmd", **_PUBLIC, **_NOISE_ONLY}, 3.5),  # bug D
    "fedgen-logits/dp-sgd": ({"algorithm": "fedgen-logits", **_SYNTHETIC, **DP}, 3.9),
    "fedgen-logits/weighted+dp-sgd+output-noise": (  # bug E
        {"algorithm": "fedgen-logits", "aggregation.rule": "weighted", **_SYNTHETIC,
         **_DP_NOISE}, 5.2),
    "fedgen-logits/output-noise": ({"algorithm": "fedgen-logits", **_SYNTHETIC, **_NOISE_ONLY},
                                   3.5),
    # DS-FL: logits of a DP model (free), noised logits and noised num-examples of a non-DP
    # model, noised label counts (classwise rule). Largest epsilon after rounds 1-3 without a
    # budget: 3.10 3.71 4.19 / 3.19 4.73 5.98 / 4.28 5.84 7.17.
    "dsfl/dp-sgd": ({"algorithm": "dsfl", **_PUBLIC, **DP}, 3.9),
    "dsfl/output-noise": ({"algorithm": "dsfl", **_PUBLIC, **_NOISE_ONLY}, 5.4),
    "dsfl/classwise+dp-sgd+output-noise": (
        {"algorithm": "dsfl", "aggregation.rule": "classwise", **_PUBLIC, **_DP_NOISE}, 6.5),
    # student-down releases what DS-FL releases (the student that comes down is free): the same
    # epsilons, so the same budgets bite in round 3.
    "student-down/dp-sgd": ({"algorithm": "student-down", **_PUBLIC, **DP}, 3.9),
    "student-down/output-noise": ({"algorithm": "student-down", **_PUBLIC, **_NOISE_ONLY}, 5.4),
    # synthetic-proxy: the inverted images of a DP model are free (the same epsilon as DS-FL's);
    # round 3 synthesises again, so the budget bites in a synthesis round. Largest epsilon after
    # rounds 1-3: 3.10 3.71 4.19 / 4.28 5.84 7.17.
    "synthetic-proxy/dp-sgd": ({**_SYNTHESIS, **DP}, 3.9),
    "synthetic-proxy/classwise+dp-sgd+output-noise": (
        {**_SYNTHESIS, "aggregation.rule": "classwise", **_DP_NOISE}, 6.5),
    # synthetic-student-down: synthetic-proxy's releases with the student coming down (free)
    "synthetic-student-down/dp-sgd": ({**_SYNTHESIS, "algorithm": "synthetic-student-down",
                                       **DP}, 3.9),
}


@pytest.mark.parametrize("case", sorted(BUDGET_CASES))
def test_no_client_ever_exceeds_the_budget(case: str, tmp_path: Path) -> None:
    from fedkd.algorithms.base import QuorumError
    from fedkd.results import read_metrics

    overrides, budget = BUDGET_CASES[case]
    try:  # when every client has stopped, the round fails for want of replies: that is fine
        run_inprocess({**overrides, "num-server-rounds": 4, "privacy.epsilon-budget": budget,
                       "federation.min-replies": 1}, 3, tmp_path)
    except QuorumError as err:
        assert "budget-exhausted" in str(err)
    rows = read_metrics(tmp_path / "run")
    audit = read_metrics(tmp_path / "run", "replies.jsonl")
    reported = [c["epsilon"] for r in rows for c in r["clients"].values() if "epsilon" in c]
    assert reported and max(reported) <= budget
    assert any(a["status"] == "budget-exhausted" for a in audit)  # the budget did bite


def test_every_algorithm_that_releases_under_privacy_has_a_budget_case() -> None:
    from fedkd.algorithms import ALGORITHMS

    covered = {case.split("/")[0] for case in BUDGET_CASES}
    # selective-fd refuses every privacy setting (below): it releases nothing under DP
    assert covered == set(ALGORITHMS.names()) - {"selective-fd"}


SELECTIVE_FD_REASON = ("selective-fd's answer mask is computed from private data by a "
                       "density-ratio estimator that no DP mechanism here covers")


@pytest.mark.parametrize("privacy", [DP, _NOISE_ONLY, _DP_NOISE,
                                     {**DP, "privacy.target-epsilon": 8.0}],
                         ids=["dp-sgd", "output-noise", "both", "target-epsilon"])
def test_selective_fd_refuses_privacy_with_its_reason(privacy: dict, tmp_path: Path) -> None:
    # Its answer mask depends on the private data through the density-ratio estimator, with no
    # noise and no accounting: any privacy setting would report an epsilon that the mask breaks.
    # Refused when the configuration is built, before any round (nothing is written).
    overrides = {"algorithm": "selective-fd", "data.public-labels": False, **privacy}
    with pytest.raises(ConfigError, match=SELECTIVE_FD_REASON):
        build_config(overrides)
    with pytest.raises(ConfigError, match=SELECTIVE_FD_REASON):
        run_inprocess(overrides, 3, tmp_path)
    assert not (tmp_path / "run").exists()
    build_config({"algorithm": "selective-fd"})  # accepted without privacy


def test_synthetic_proxy_refuses_inversion_of_a_non_private_model() -> None:
    # Under output noise alone the images would be inverted from a model trained without DP and
    # released unnoised and uncharged, while the run reported an epsilon.
    with pytest.raises(ConfigError, match="inverted from a model trained without DP"):
        build_config({**_SYNTHESIS, **_NOISE_ONLY})


def _dsfl_client(overrides: dict):  # noqa: ANN202
    from client.app import client_context
    from fedkd.algorithms import ALGORITHMS

    cfg = build_config({"algorithm": "dsfl", "data.dataset": "digits", "train.model": "mlp",
                        "data.public-fraction": 0.2, "train.local-steps": 3,
                        "data.num-partitions": 2, **overrides})
    client = client_context(cfg, 1000, {"partition-id": 0, "num-partitions": 2}, {})
    return ALGORITHMS.get(cfg.algorithm)(cfg, client.num_classes, client.input_shape), client


def test_num_examples_is_noised_once_per_round_and_charged() -> None:
    import numpy as np

    from fedkd.protocol import Payload

    algorithm, client = _dsfl_client({"privacy.output-noise": 20.0})
    n = len(client.data.train)
    fit = algorithm.answer("fit", Payload(config={"round": 1, "indices": [0, 1, 2]}), client)
    history = list(algorithm.client_privacy(client).history)
    assert len(history) == 2  # the noised logits and the noised num-examples
    noised = fit.metrics["num-examples"]
    assert noised != n and noised >= 1
    distill = algorithm.answer("distill", Payload(
        config={"round": 1, "indices": [0, 1, 2]},
        arrays={"targets": np.full((3, 10), 0.1, np.float32)}), client)
    assert distill.metrics["num-examples"] == noised  # reused: no second release
    assert algorithm.client_privacy(client).history == history
    again = algorithm.answer("fit", Payload(config={"round": 2, "indices": [0, 1, 2]}), client)
    assert len(algorithm.client_privacy(client).history) == 4 and again.metrics["num-examples"] >= 1


def test_num_examples_is_withheld_under_dp_sgd_where_the_server_does_not_need_it() -> None:
    from fedkd.protocol import Payload

    algorithm, client = _dsfl_client(DP)
    fit = algorithm.answer("fit", Payload(config={"round": 1, "indices": [0, 1]}), client)
    assert fit.metrics["num-examples"] == 1
    evaluation = algorithm.answer("evaluate", Payload(config={"round": 1}), client)
    assert evaluation.metrics["num-examples"] == len(client.data.test)  # diagnostics, not a release
