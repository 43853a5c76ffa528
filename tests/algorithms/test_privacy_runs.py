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


def test_fd_refuses_half_configured_privacy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fd computes its per-class logits on private data"):
        run_inprocess({"algorithm": "fd", **DP}, 3, tmp_path)
