"""Secure aggregation (fedkd.secagg): the field, the neighbourhoods, the protocol end to end
with real keys, shares and masks (clients and server called directly), dropouts and failures."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.algorithms.base import ExchangeResult
from fedkd.errors import ConfigError
from fedkd.protocol import Payload
from fedkd.secagg import client as secagg_client
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.field import decode_sum, expand_mask, quantise, scale_for
from fedkd.secagg.server import SecureAggregationError, neighbourhoods, secure_sum

NODES = [11, 7_000_000_000_000_000_001, 42, 9_223_372_036_854_775_000, 5]  # uint64 ids, any order


# ----- the field ------------------------------------------------------------------------------
def test_quantised_values_sum_and_decode_with_negative_values() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-3, 3, 1000) for _ in range(7)]
    scale = scale_for(7, 3.0)
    total = np.zeros(1000, np.uint32)
    for x in xs:
        total += quantise(x, scale, rng)
    err = np.abs(decode_sum(total, scale) - np.sum(xs, axis=0))
    assert err.max() <= 7 / scale  # each stochastic rounding is off by less than one step
    assert 7 * 3.0 * scale < 2**30 <= 2 * 7 * 3.0 * scale  # the largest power of two that fits


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    q = quantise(np.full(200_000, 0.3), 1.0, rng)  # 0 or 1, mean 0.3
    assert set(np.unique(q)) == {0, 1}
    assert abs(q.mean() - 0.3) < 0.005


def test_a_value_outside_the_field_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        quantise(np.array([2.0**31]), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not fit"):
        quantise(np.array([np.nan]), 1.0, np.random.default_rng(0))


def test_masks_are_a_deterministic_uniform_keystream() -> None:
    seed = bytes(range(32))
    a, b = expand_mask(seed, 100_000), expand_mask(seed, 100_000)
    assert a.dtype == np.uint32 and np.array_equal(a, b)
    assert not np.array_equal(a, expand_mask(bytes(32), 100_000))
    assert abs(a.mean() / 2**32 - 0.5) < 0.01  # uniform over the field
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(b"short", 4)


# ----- neighbourhoods -------------------------------------------------------------------------
def test_complete_graph_without_a_degree_and_a_symmetric_ring_with_one() -> None:
    nodes = list(range(100, 120))
    full = neighbourhoods(nodes, 0, np.random.default_rng(0))
    assert all(len(v) == 19 and u not in v for u, v in full.items())
    ring = neighbourhoods(nodes, 6, np.random.default_rng(0))
    assert all(len(v) == 6 and u not in v for u, v in ring.items())
    assert all(u in ring[v] for u, vs in ring.items() for v in vs)  # symmetric
    assert neighbourhoods(nodes, 5, np.random.default_rng(0)) == neighbourhoods(
        nodes, 6, np.random.default_rng(0))  # odd degrees round up


@pytest.mark.parametrize(("fraction", "degree", "expected"), [(0.6, 4, 3), (0.5, 4, 2),
                                                                (0.1, 4, 2), (1.0, 6, 6)])
def test_shamir_threshold(fraction: float, degree: int, expected: int) -> None:
    assert SecAggConfig(threshold=fraction).shamir_threshold(degree) == expected


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"neighbours": -1},
                                 {"noise_multiplier": -1.0}, {"clip": 0.0}, {"min_clients": -2},
                                 {"max_weight": 0.0}])
def test_bad_options_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match="secagg"):
        SecAggConfig(**bad)


# ----- the protocol ---------------------------------------------------------------------------
class Federation:
    """Clients answering in-process; ``drop`` maps a phase to nodes that never answer it (and
    nothing after it), as after a crash. Every reply is kept in ``seen``."""

    def __init__(self, nodes: list[int], length: int, options: SecAggConfig,
                 drop: dict[str, set[int]] | None = None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.nodes, self.options, self.drop = nodes, options, drop or {}
        self.inputs = {u: rng.uniform(0.0, 1.0, length) for u in nodes}
        self.states: dict[int, dict[str, np.ndarray]] = {u: {} for u in nodes}
        self.gone: set[int] = set()
        self.seen: list[tuple[str, int, Payload]] = []
        self.advertised = {u: Payload(arrays=secagg_client.advertise(self.states[u], self.inputs[u], 3))
                           for u in nodes}

    def __call__(self, phase, requests) -> ExchangeResult:  # noqa: ANN001
        self.gone |= self.drop.get(phase.name, set())
        replies = {}
        for u, request in requests.items():
            if u in self.gone:
                continue
            reply = secagg_client.answer(phase.name, request, self.states[u], u, self.options)
            self.seen.append((phase.name, u, reply))
            replies[u] = reply
        return ExchangeResult(replies=replies)

    def run(self, length: int):  # noqa: ANN201
        return secure_sum(self, 3, self.advertised, length, 1.0, self.options,
                          np.random.default_rng(0))


def test_secure_sum_equals_the_plain_sum() -> None:
    fed = Federation(NODES, 500, SecAggConfig())
    result = fed.run(500)
    assert result.survivors == tuple(sorted(NODES)) and result.dropped == ()
    plain = np.sum([fed.inputs[u] for u in NODES], axis=0)
    assert np.abs(result.total - plain).max() < 1e-6


@pytest.mark.parametrize("phase", [secagg_client.MASK, secagg_client.UNMASK])
def test_one_of_five_dropping_leaves_the_sum_exact(phase: str) -> None:
    # MASK: it shared its keys, then vanished before sending its input (its pairwise masks are
    # removed with its rebuilt key); UNMASK: it sent its masked input, then vanished (its input
    # stays, its self-mask is removed with its rebuilt seed).
    lost = NODES[1]
    fed = Federation(NODES, 500, SecAggConfig(), drop={phase: {lost}})
    result = fed.run(500)
    kept = [u for u in NODES if u != lost] if phase == secagg_client.MASK else NODES
    assert set(result.survivors) == set(kept)
    assert result.dropped == ((lost,) if phase == secagg_client.MASK else ())
    plain = np.sum([fed.inputs[u] for u in kept], axis=0)
    assert np.abs(result.total - plain).max() < 1e-6


def test_below_the_threshold_the_round_fails_clearly() -> None:
    # 5 clients, 4 neighbours each, threshold ceil(0.6 * 4) = 3: two lost at unmasking leave
    # each survivor's seed with 2 shares
    fed = Federation(NODES, 50, SecAggConfig(), drop={secagg_client.UNMASK: set(NODES[:2])})
    with pytest.raises(SecureAggregationError, match=r"needs 3 shares and only 2 .*discarded"):
        fed.run(50)


def test_a_sparse_neighbourhood_sums_exactly_with_a_dropout() -> None:
    nodes = list(range(1, 13))
    fed = Federation(nodes, 200, SecAggConfig(neighbours=4), drop={secagg_client.MASK: {5}})
    result = fed.run(200)
    plain = np.sum([fed.inputs[u] for u in nodes if u != 5], axis=0)
    assert np.abs(result.total - plain).max() < 1e-6
    # each client exchanged shares with 4 others only
    assert all(p.arrays["ciphertexts"].shape[0] == 4 for name, _, p in fed.seen
               if name == secagg_client.SHARE_KEYS)


def test_the_server_never_receives_an_unmasked_input() -> None:
    fed = Federation(NODES, 2000, SecAggConfig())
    result = fed.run(2000)
    for name, node, reply in fed.seen:
        for key, array in reply.arrays.items():
            assert array.dtype in (np.uint8, np.uint32, np.uint64), (name, key)
            if array.dtype == np.uint32:  # the masked input: uniform over the field
                x = fed.inputs[node]
                assert abs(array.mean() / 2**32 - 0.5) < 0.05
                assert abs(np.corrcoef(array.astype(np.float64), x)[0, 1]) < 0.1
                assert not np.allclose(decode_sum(array, 2.0**20), x, atol=1e-3)
    assert np.abs(result.total - np.sum(list(fed.inputs.values()), axis=0)).max() < 1e-6


def test_distributed_dp_noise_sums_to_the_calibrated_std() -> None:
    options = SecAggConfig(noise_multiplier=1.0, clip=1.0, min_clients=5)
    fed = Federation(NODES, 20_000, options)
    for u in NODES:  # inputs of norm <= clip are not rescaled: zero inputs isolate the noise
        fed.states[u]["secagg/vector"] = np.zeros(20_000)
    result = fed.run(20_000)
    assert result.noise_multiplier == pytest.approx(1.0)
    assert np.std(result.total) == pytest.approx(1.0, rel=0.05)  # 5 shares of std 1/sqrt(5)


def test_distributed_dp_clips_each_contribution() -> None:
    options = SecAggConfig(noise_multiplier=1e-9, clip=2.0, min_clients=2)
    fed = Federation(NODES, 100, options)
    result = fed.run(100)
    clipped = [x * min(1.0, 2.0 / np.linalg.norm(x)) for x in fed.inputs.values()]
    assert np.abs(result.total - np.sum(clipped, axis=0)).max() < 1e-4


def test_too_few_inputs_for_the_distributed_noise_fail_the_round() -> None:
    options = SecAggConfig(noise_multiplier=1.0, min_clients=5)
    fed = Federation(NODES, 10, options, drop={secagg_client.MASK: {NODES[0]}})
    with pytest.raises(SecureAggregationError, match="calibrated for at least 5"):
        fed.run(10)


# ----- a client refuses requests that break the protocol -------------------------------------
def _shared(fed: Federation) -> None:
    """Run the protocol up to (and including) the masked inputs."""
    fed.drop = {secagg_client.UNMASK: set(fed.nodes)}
    with pytest.raises(SecureAggregationError):
        fed.run(20)


def test_a_client_answers_unmask_once_and_never_both_ways() -> None:
    fed = Federation(NODES, 20, SecAggConfig())
    _shared(fed)
    u, v = NODES[0], NODES[1]
    both = Payload(arrays={"survivors": np.array([v], np.uint64),
                           "dropped": np.array([v], np.uint64)}, config={"round": 3})
    with pytest.raises(secagg_client.SecAggClientError, match="both ways"):
        secagg_client.answer(secagg_client.UNMASK, both, fed.states[u], u, fed.options)
    once = Payload(arrays={"survivors": np.array([v], np.uint64),
                           "dropped": np.zeros(0, np.uint64)}, config={"round": 3})
    reply = secagg_client.answer(secagg_client.UNMASK, once, fed.states[u], u, fed.options)
    assert reply.arrays["b-shares"].shape[0] == 1
    assert not any(k.startswith("secagg/") for k in fed.states[u])  # every secret forgotten
    swapped = Payload(arrays={"survivors": np.zeros(0, np.uint64),
                              "dropped": np.array([v], np.uint64)}, config={"round": 3})
    with pytest.raises(secagg_client.SecAggClientError, match="no contribution"):
        secagg_client.answer(secagg_client.UNMASK, swapped, fed.states[u], u, fed.options)


def test_a_client_refuses_a_request_for_another_round() -> None:
    state: dict[str, np.ndarray] = {}
    secagg_client.advertise(state, np.zeros(3), rnd=3)
    with pytest.raises(secagg_client.SecAggClientError, match="round 4"):
        secagg_client.answer(secagg_client.SHARE_KEYS, Payload(config={"round": 4}), state, 1,
                             SecAggConfig())
