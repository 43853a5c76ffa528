"""Poisson sampling inside real rounds (the round loop, the client app, PATE and distributed DP
under secure aggregation): the loop samples what ``sample_nodes`` draws, a round that samples
fewer than ``min-replies`` is skipped with its reason (not redrawn, not charged), and the server
ledger charges each round that ran as one ``PoissonSampledDpEvent(fraction-train, ...)``."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from fedkd.privacy.accounting import gnmax_epsilon, planned_epsilon
from server.loop import sample_nodes
from tests.algorithms.inprocess import FIRST_NODE_ID, run_inprocess

CLIENTS, Q, SEED = 6, 0.5, 20  # seed 20 samples 3, 3 and 1 of the 6 clients in rounds 1-3
POISSON = {"algorithm": "dsfl", "seed": SEED, "num-server-rounds": 3,
           "federation.sampling": "poisson", "federation.fraction-train": Q,
           "federation.min-replies": 2, "data.public-fraction": 0.2, "distill.public-batch": 30,
           "distill.steps": 3, "distill.server-steps": 10, "train.local-steps": 5,
           "federation.evaluate-clients": False}


def expected_samples(rounds: int) -> list[list[int]]:
    rng = np.random.default_rng([SEED, 0x5A3F])  # the round loop's sampling generator
    nodes = [FIRST_NODE_ID + p for p in range(CLIENTS)]
    return [sample_nodes(nodes, Q, rng, "poisson") for _ in range(rounds)]


def check_rounds(rows: list[dict]) -> None:
    samples = expected_samples(3)
    assert [len(s) for s in samples] == [3, 3, 1]
    assert [r["sampled-clients"] for r in rows] == samples
    assert "skipped" not in rows[0] and "skipped" not in rows[1]
    assert "drew 1 of 6 online clients" in rows[2]["skipped"]
    assert rows[2]["trained-clients"] == [] and rows[2]["bytes-up"] == 0
    assert rows[1]["trained-clients"] == samples[1]
    # nothing released in the skipped round: its epsilon is round 2's
    assert rows[2]["server-epsilon"] == rows[1]["server-epsilon"]
    assert rows[2]["server-sampling-rate"] == Q
    # 3 rounds x P(Binomial(6, 0.5) < 2) = 3 x 7/64
    assert rows[2]["server-skip-probability"] == pytest.approx(3 * 7 / 64)


def test_pate_rounds_are_charged_as_poisson_sampled(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({**POISSON, "aggregation.rule": "pate"}, CLIENTS, tmp_path)
    check_rounds(rows)
    n, sigma = POISSON["distill.public-batch"], 40.0  # aggregation.pate.sigma's default
    votes = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / np.sqrt(2)), n)
    for rounds, row in zip((1, 2, 2), rows):
        assert row["server-epsilon"] == pytest.approx(
            planned_epsilon([votes], rounds, 1e-5, sampling_rate=Q), rel=1e-9)
        assert row["server-epsilon-unamplified"] == pytest.approx(
            gnmax_epsilon(sigma, rounds * n, 1e-5), rel=1e-9)
        assert row["server-epsilon"] < row["server-epsilon-unamplified"]


def test_distributed_dp_rounds_are_charged_at_the_calibrated_noise(tmp_path: Path) -> None:
    z = 2.0
    rows, _, _ = run_inprocess({**POISSON, "aggregation.rule": "era", "aggregation.secure": True,
                                "secagg.noise-multiplier": z, "secagg.clip": 5.0},
                               CLIENTS, tmp_path)
    check_rounds(rows)
    # 3 inputs where the noise is calibrated for the Shamir threshold of 2: the sum carries
    # z sqrt(3/2), but under Poisson sampling the ledger charges the floor z (the round's size,
    # and so the extra noise, depends on who was sampled)
    assert rows[1]["server-epsilon"] == pytest.approx(
        planned_epsilon([dp_accounting.GaussianDpEvent(z)], 2, 1e-5, sampling_rate=Q), rel=1e-9)
    assert rows[1]["server-epsilon-unamplified"] == pytest.approx(
        planned_epsilon([dp_accounting.GaussianDpEvent(z)], 2, 1e-5), rel=1e-9)
