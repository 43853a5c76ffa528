"""The server's client-level privacy ledger and the GNMax epsilon (pinned: opacus-1.6 notes §9)."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest

from fedkd.aggregation import build_aggregator
from fedkd.privacy.accounting import ServerLedger, gnmax_epsilon

SQRT2 = math.sqrt(2.0)


def votes(sigma: float, count: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / SQRT2), count)


def threshold(sigma_1: float, count: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma_1), count)


# ------------------------------------------------------------------------------------------
# pinned values
# ------------------------------------------------------------------------------------------


def test_gnmax_pinned_rdp() -> None:
    # sigma 40, 1000 queries, delta 1e-5: 5.3777 (Opacus RDP = dp-accounting RDP = closed form)
    assert gnmax_epsilon(40.0, 1000, 1e-5) == pytest.approx(5.3777, rel=1e-3)
    assert gnmax_epsilon(40.0, 1000, 1e-5, accountant="rdp") == pytest.approx(5.3777, rel=1e-3)


def test_gnmax_pinned_pld() -> None:
    assert gnmax_epsilon(40.0, 1000, 1e-5, accountant="pld") == pytest.approx(4.983, rel=1e-2)


def test_confident_gnmax_mnist_setting() -> None:
    # PATE 2018 MNIST: sigma_1 = 150, sigma_2 = 40, 640 queries, all charged as answered
    eps = gnmax_epsilon(40.0, 640, 1e-5, sigma_threshold=150.0)
    assert eps == pytest.approx(4.25, abs=0.01)
    assert eps > gnmax_epsilon(40.0, 640, 1e-5)  # the threshold step costs something


def test_gnmax_calibration_note() -> None:
    # notes §9: epsilon 2 at delta 1e-5 over 1000 queries needs sigma of about 89 (PLD)
    assert gnmax_epsilon(89.0, 1000, 1e-5, accountant="pld") == pytest.approx(2.0, abs=0.02)
    assert gnmax_epsilon(89.0, 1000, 1e-5) > 2.1  # RDP is looser


def test_gnmax_edge_cases_and_validation() -> None:
    assert gnmax_epsilon(40.0, 0, 1e-5) == 0.0
    assert gnmax_epsilon(0.0, 10, 1e-5) == math.inf
    assert gnmax_epsilon(40.0, 10, 1e-5, sigma_threshold=0.0) == math.inf
    # more noise, fewer queries -> less epsilon
    assert gnmax_epsilon(80.0, 1000, 1e-5) < gnmax_epsilon(40.0, 1000, 1e-5)
    assert gnmax_epsilon(40.0, 100, 1e-5) < gnmax_epsilon(40.0, 1000, 1e-5)
    for bad in (
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"queries": -1},
        {"queries": 2.5},
        {"delta": 0.0},
        {"delta": 1.0},
        {"accountant": "prv"},
        {"sigma_threshold": -1.0},
    ):
        kwargs = {"sigma": 40.0, "queries": 10, "delta": 1e-5} | bad
        with pytest.raises(ValueError):
            gnmax_epsilon(**kwargs)


# ------------------------------------------------------------------------------------------
# the ledger
# ------------------------------------------------------------------------------------------


def test_ledger_construction() -> None:
    assert ServerLedger(1e-5).accountant == "rdp"
    with pytest.raises(ValueError, match="'pld', 'rdp'"):
        ServerLedger(1e-5, accountant="prv")
    for delta in (0.0, 1.0, -1e-5, float("nan"), "1e-5"):
        with pytest.raises(ValueError, match="delta"):
            ServerLedger(delta)


def test_empty_ledger_reports_none() -> None:
    ledger = ServerLedger(1e-5)
    assert ledger.epsilon() is None and ledger.num_events == 0
    ledger.record([])
    assert ledger.epsilon() is None and ledger.num_events == 0


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_ledger_matches_gnmax_epsilon(accountant: str) -> None:
    ledger = ServerLedger(1e-5, accountant=accountant)
    ledger.record([votes(40.0, 1000)])
    assert ledger.num_events == 1
    assert ledger.epsilon() == pytest.approx(gnmax_epsilon(40.0, 1000, 1e-5, accountant), rel=1e-9)
    confident = ServerLedger(1e-5, accountant=accountant)
    confident.record([votes(40.0, 640), threshold(150.0, 640)])
    expected = gnmax_epsilon(40.0, 640, 1e-5, accountant, sigma_threshold=150.0)
    assert confident.epsilon() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_recording_in_rounds_equals_recording_at_once(accountant: str) -> None:
    rounds = [[votes(40.0, 64), threshold(150.0, 64)] for _ in range(10)]
    at_once = ServerLedger(1e-5, accountant)
    at_once.record([event for events in rounds for event in events])
    in_rounds = ServerLedger(1e-5, accountant)
    for events in rounds:
        in_rounds.record(events)
    assert in_rounds.num_events == at_once.num_events == 20
    assert in_rounds.epsilon() == at_once.epsilon()
    # and both equal the one-shot formula for 640 queries
    expected = gnmax_epsilon(40.0, 640, 1e-5, accountant, sigma_threshold=150.0)
    assert in_rounds.epsilon() == pytest.approx(expected, rel=1e-9)


def test_epsilon_grows_with_rounds() -> None:
    ledger = ServerLedger(1e-5)
    last = 0.0
    for _ in range(5):
        ledger.record([votes(40.0, 100)])
        eps = ledger.epsilon()
        assert eps is not None and eps > last
        last = eps


def test_composed_and_nested_events_are_flattened() -> None:
    nested = dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(votes(40.0, 10), 5), dp_accounting.NoOpDpEvent()]
    )
    ledger = ServerLedger(1e-5)
    ledger.record([nested, dp_accounting.GaussianDpEvent(40.0 / SQRT2)])
    assert ledger.epsilon() == pytest.approx(gnmax_epsilon(40.0, 51, 1e-5), rel=1e-9)


def test_non_private_event_gives_inf() -> None:
    ledger = ServerLedger(1e-5, "pld")
    ledger.record([votes(40.0, 10)])
    ledger.record([dp_accounting.NonPrivateDpEvent()])
    assert ledger.epsilon() == math.inf
    ledger.record([votes(40.0, 10)])
    assert ledger.epsilon() == math.inf  # stays infinite
    zero_noise = ServerLedger(1e-5)
    zero_noise.record([dp_accounting.GaussianDpEvent(0.0)])
    assert zero_noise.epsilon() == math.inf


def test_noop_only_costs_nothing() -> None:
    ledger = ServerLedger(1e-5)
    ledger.record([dp_accounting.NoOpDpEvent()])
    assert ledger.num_events == 1 and ledger.epsilon() == 0.0


def test_unsupported_events_are_rejected_atomically() -> None:
    ledger = ServerLedger(1e-5)
    ledger.record([votes(40.0, 10)])
    before = ledger.epsilon()
    gaussian = dp_accounting.GaussianDpEvent(1.0)
    without_replacement = dp_accounting.SampledWithoutReplacementDpEvent(100, 10, gaussian)
    sampled_laplace = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.LaplaceDpEvent(1.0))
    sampled_twice = dp_accounting.PoissonSampledDpEvent(
        0.1, dp_accounting.PoissonSampledDpEvent(0.1, gaussian))
    for bad in (without_replacement, sampled_laplace, sampled_twice,
                dp_accounting.LaplaceDpEvent(1.0)):
        with pytest.raises(ValueError, match="ServerLedger records only"):
            ledger.record([votes(40.0, 10), bad])
    assert ledger.num_events == 1 and ledger.epsilon() == before
    with pytest.raises(TypeError, match="iterable"):
        ledger.record(votes(40.0, 10))  # type: ignore[arg-type]


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_state_dict_round_trip(accountant: str) -> None:
    ledger = ServerLedger(1e-5, accountant)
    for _ in range(3):
        ledger.record([votes(40.0, 64), threshold(150.0, 64)])
    ledger.record([votes(25.0, 7)])
    state = json.loads(json.dumps(ledger.state_dict()))  # JSON-able
    restored = ServerLedger(1e-5, accountant)
    restored.load_state_dict(state)
    assert restored.num_events == ledger.num_events == 7
    assert restored.epsilon() == ledger.epsilon()
    assert restored.state_dict() == ledger.state_dict()
    # a restored ledger goes on recording as the original does
    ledger.record([votes(40.0, 64)])
    restored.record([votes(40.0, 64)])
    assert restored.epsilon() == ledger.epsilon()


def test_state_dict_round_trip_special_cases() -> None:
    empty = ServerLedger(1e-5)
    restored = ServerLedger(1e-5)
    restored.load_state_dict(empty.state_dict())
    assert restored.epsilon() is None
    non_private = ServerLedger(1e-5)
    non_private.record([votes(40.0, 3), dp_accounting.NonPrivateDpEvent()])
    restored.load_state_dict(non_private.state_dict())
    assert restored.epsilon() == math.inf and restored.num_events == 2


def test_state_dict_mismatch_and_malformed() -> None:
    state = ServerLedger(1e-5, "rdp").state_dict()
    with pytest.raises(ValueError, match="delta"):
        ServerLedger(1e-6, "rdp").load_state_dict(state)
    with pytest.raises(ValueError, match="accountant"):
        ServerLedger(1e-5, "pld").load_state_dict(state)
    for broken in (
        {k: v for k, v in state.items() if k != "events"},
        state | {"version": 99},
        state | {"events": [["laplace", 1.0, 1]]},
        state | {"events": [["gaussian", -1.0, 1]]},
        state | {"events": [["gaussian", 1.0, 0]]},
        state | {"events": [["gaussian", 1.0]]},
        state | {"num_events": -1},
    ):
        with pytest.raises(ValueError):
            ServerLedger(1e-5, "rdp").load_state_dict(broken)


def test_many_rounds_stay_compact_and_fast() -> None:
    import time

    ledger = ServerLedger(1e-5)
    start = time.perf_counter()
    for _ in range(500):
        ledger.record([votes(40.0, 20), threshold(150.0, 20)])
        eps = ledger.epsilon()  # reported every round
    assert time.perf_counter() - start < 5.0  # about 0.5 s here
    assert len(ledger.state_dict()["events"]) == 2  # compacted
    assert eps == pytest.approx(gnmax_epsilon(40.0, 10_000, 1e-5, sigma_threshold=150.0))


# ------------------------------------------------------------------------------------------
# with the pate rule
# ------------------------------------------------------------------------------------------


def test_ledger_of_pate_rounds() -> None:
    rule = build_aggregator("pate", sigma=40.0, threshold=200.0, sigma_threshold=150.0)
    rng = np.random.default_rng(0)
    ledger = ServerLedger(1e-5)
    for _ in range(10):  # 10 rounds of 64 queries: the MNIST setting's 640 queries
        z = rng.normal(size=(250, 64, 10))
        ledger.record(rule.aggregate(z, rng=rng).privacy_events)
    assert ledger.epsilon() == pytest.approx(4.25, abs=0.01)
    noiseless = ServerLedger(1e-5)
    noiseless.record(build_aggregator("pate", sigma=0.0).aggregate(z).privacy_events)
    assert noiseless.epsilon() == math.inf


# ------------------------------------------------------------------------------------------
# amplification by sampling (federation.sampling = "poisson")
# ------------------------------------------------------------------------------------------

# 100 rounds of PoissonSampledDpEvent(0.01, GaussianDpEvent(1.0)) at delta 1e-5, computed once
# with dp-accounting 0.6.0:
#   .venv/bin/python -c "import dp_accounting as d; from dp_accounting import rdp, pld
#   e = d.PoissonSampledDpEvent(0.01, d.GaussianDpEvent(1.0))
#   for a in (rdp.RdpAccountant(), pld.PLDAccountant()): a.compose(e, 100); print(repr(a.get_epsilon(1e-5)))"
PINNED_SAMPLED = {"rdp": 1.2141452944480204, "pld": 0.7180367094172235}
# the same 100 releases without sampling (GaussianDpEvent(1.0) composed 100 times), RDP
PINNED_UNSAMPLED_RDP = 96.11630842505602


def _direct(accountant: str, event: dp_accounting.DpEvent, count: int) -> float:
    from fedkd.privacy.accounting import ACCOUNTANTS

    acct = ACCOUNTANTS.get(accountant)()
    acct.compose(event, count)
    return float(acct.get_epsilon(1e-5))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_amplified_accountant_is_pinned_to_dp_accounting(accountant: str) -> None:
    event = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
    direct = _direct(accountant, event, 100)
    # the ledger of a run with federation.sampling = "poisson", fraction-train 0.01: the
    # algorithms record plain Gaussian releases, the round loop closes every round
    ledger = ServerLedger(1e-5, accountant, sampling_rate=0.01)
    for _ in range(100):
        ledger.record([dp_accounting.GaussianDpEvent(1.0)])
        ledger.end_round()
    assert abs(ledger.epsilon() - direct) < 1e-9
    # and the number itself: a change in dp-accounting or in the ledger fails here
    assert abs(ledger.epsilon() - PINNED_SAMPLED[accountant]) < 1e-9
    assert ledger.state_dict()["events"] == [["poisson", 1.0, 100, 0.01]]  # compact
    # sampled events recorded as they are, in a ledger without a sampling rate: the same
    explicit = ServerLedger(1e-5, accountant)
    explicit.record([event] * 60)
    explicit.record([dp_accounting.SelfComposedDpEvent(event, 40)])
    assert abs(explicit.epsilon() - direct) < 1e-9


def test_amplification_happens() -> None:
    # The same noise, the same rounds: Poisson sampling at q = 0.01 spends 80 times less than
    # fixed-size sampling (which claims no amplification).
    fixed = ServerLedger(1e-5)
    poisson = ServerLedger(1e-5, sampling_rate=0.01)
    for _ in range(100):
        for ledger in (fixed, poisson):
            ledger.record([dp_accounting.GaussianDpEvent(1.0)])
            ledger.end_round()
    assert fixed.epsilon() == pytest.approx(PINNED_UNSAMPLED_RDP, abs=1e-9)
    assert poisson.epsilon() < fixed.epsilon() / 50
    # the figure against whoever knows the samples is the fixed one
    assert poisson.epsilon(amplified=False) == fixed.epsilon() == fixed.epsilon(amplified=False)
    assert poisson.amplified and not fixed.amplified
    # and a sampling rate of 1 amplifies nothing
    everyone = ServerLedger(1e-5, sampling_rate=1.0)
    for _ in range(100):
        everyone.record([dp_accounting.GaussianDpEvent(1.0)])
        everyone.end_round()
    assert everyone.epsilon() == pytest.approx(fixed.epsilon(), rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_rounds_releases_share_one_sample(accountant: str) -> None:
    # PATE's votes and threshold checks of one round come from one sample of teachers: the
    # round is one PoissonSampledDpEvent of their composition (one Gaussian of noise
    # (sum k / z^2)^-1/2), not one sampled event per query, which would claim a fresh sample
    # each time and report less.
    rule = build_aggregator("pate", sigma=40.0, threshold=200.0, sigma_threshold=150.0)
    rng = np.random.default_rng(0)
    ledger = ServerLedger(1e-5, accountant, sampling_rate=0.1)
    for _ in range(10):
        ledger.record(rule.aggregate(rng.normal(size=(25, 64, 10)), rng=rng).privacy_events)
        ledger.end_round()
    z = 1.0 / math.sqrt(64 * 2 / 40.0**2 + 64 / 150.0**2)
    one_sample = _direct(accountant, dp_accounting.PoissonSampledDpEvent(
        0.1, dp_accounting.GaussianDpEvent(z)), 10)
    assert ledger.epsilon() == pytest.approx(one_sample, rel=1e-6)
    per_query = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.1, e), 64)
        for e in (dp_accounting.GaussianDpEvent(40.0 / SQRT2),
                  dp_accounting.GaussianDpEvent(150.0))])
    assert ledger.epsilon() > _direct(accountant, per_query, 10)
    # unamplified: exactly the fixed-sampling ledger of the same rounds (RDP composes exactly)
    if accountant == "rdp":
        assert ledger.epsilon(amplified=False) == pytest.approx(
            gnmax_epsilon(40.0, 640, 1e-5, sigma_threshold=150.0), rel=1e-9)


def test_an_open_round_counts_and_a_skipped_round_costs_nothing() -> None:
    ledger = ServerLedger(1e-5, sampling_rate=0.01)
    ledger.record([dp_accounting.GaussianDpEvent(2.0)])
    ledger.record([dp_accounting.GaussianDpEvent(2.0)])  # same round: one sampled event
    open_eps = ledger.epsilon()
    ledger.end_round()
    assert ledger.epsilon() == open_eps
    assert ledger.state_dict()["events"] == [["poisson", pytest.approx(math.sqrt(2.0)), 1, 0.01]]
    ledger.end_round()  # a skipped round: nothing recorded, nothing charged
    assert ledger.epsilon() == open_eps
    noisy = ServerLedger(1e-5, sampling_rate=0.01)
    noisy.record([dp_accounting.GaussianDpEvent(1.0)])
    noisy.record([dp_accounting.NonPrivateDpEvent()])
    assert noisy.epsilon() == math.inf
    free = ServerLedger(1e-5, sampling_rate=0.5)
    free.record([dp_accounting.NoOpDpEvent()])
    free.end_round()
    assert free.epsilon() == 0.0 and not free.amplified


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_sampled_state_dict_round_trip(accountant: str) -> None:
    ledger = ServerLedger(1e-5, accountant, sampling_rate=0.05)
    for z in (1.0, 1.0, 2.0):
        ledger.record([dp_accounting.GaussianDpEvent(z)])
        ledger.end_round()
    ledger.record([dp_accounting.GaussianDpEvent(3.0)])  # open: saved as closed
    state = json.loads(json.dumps(ledger.state_dict()))
    restored = ServerLedger(1e-5, accountant, sampling_rate=0.05)
    restored.load_state_dict(state)
    assert restored.epsilon() == ledger.epsilon()
    assert restored.epsilon(amplified=False) == ledger.epsilon(amplified=False)
    ledger.end_round()
    assert restored.state_dict() == ledger.state_dict()
    with pytest.raises(ValueError, match="sampling rate"):
        ServerLedger(1e-5, accountant).load_state_dict(state)
    with pytest.raises(ValueError, match="sampling rate"):
        ServerLedger(1e-5, accountant, sampling_rate=0.1).load_state_dict(state)
    # a checkpoint written before sampling existed (version 1) still loads
    old = {"version": 1, "delta": 1e-5, "accountant": accountant, "num_events": 3,
           "events": [["gaussian", 40.0, 3]]}
    v1 = ServerLedger(1e-5, accountant)
    v1.load_state_dict(old)
    assert v1.epsilon() == _direct(accountant, dp_accounting.GaussianDpEvent(40.0), 3)
    for broken in (state | {"events": [["poisson", 1.0, 1]]},
                   state | {"events": [["poisson", 1.0, 1, 0.0]]},
                   state | {"events": [["poisson", 1.0, 1, 1.5]]},
                   old | {"events": [["poisson", 1.0, 1, 0.5]]}):
        with pytest.raises(ValueError):
            ServerLedger(1e-5, accountant, sampling_rate=broken.get("sampling_rate")
                         ).load_state_dict(broken)
    for bad in (0.0, 1.5, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="sampling_rate"):
            ServerLedger(1e-5, sampling_rate=bad)


def test_planned_epsilon_is_the_ledgers_and_calibrates_with_sampling() -> None:
    from scipy.optimize import brentq

    from fedkd.privacy.accounting import planned_epsilon

    gaussian = [dp_accounting.GaussianDpEvent(1.0)]
    assert planned_epsilon(gaussian, 100, 1e-5, sampling_rate=0.01) == PINNED_SAMPLED["rdp"]
    assert planned_epsilon(gaussian, 100, 1e-5) == PINNED_UNSAMPLED_RDP
    assert planned_epsilon([votes(40.0, 100)], 10, 1e-5) == gnmax_epsilon(40.0, 1000, 1e-5)
    assert planned_epsilon(gaussian, 0, 1e-5) is None
    # calibrating distributed DP's noise multiplier to epsilon 1 over 100 rounds: sampled at
    # q = 0.01 it needs a fraction of the noise fixed-size sampling needs
    def z_for(rate: float | None) -> float:
        return brentq(lambda z: planned_epsilon([dp_accounting.GaussianDpEvent(z)], 100, 1e-5,
                                                sampling_rate=rate) - 1.0, 0.3, 500.0)
    sampled, fixed = z_for(0.01), z_for(None)
    assert sampled < fixed / 10
    assert planned_epsilon([dp_accounting.GaussianDpEvent(sampled)], 100, 1e-5,
                           sampling_rate=0.01) == pytest.approx(1.0, abs=1e-6)
