"""Secure aggregation (fedkd.secagg): the field, the neighbourhoods, the protocol end to end
with real keys, shares and masks (clients and server called directly), dropouts and failures."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.algorithms.base import ExchangeResult
from fedkd.errors import ConfigError
from fedkd.protocol import InvalidReply, Payload, PhaseSpec, encode, validate_reply
from fedkd.secagg import client as secagg_client
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.field import decode_sum, expand_mask, quantise, scale_for
from fedkd.secagg.server import (
    SecureAggregationError,
    check_public_keys,
    neighbourhoods,
    public_key_specs,
    secure_sum,
)

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
                                 {"neighbours": 4, "threshold": 0.5},
                                 {"noise_multiplier": -1.0}, {"clip": 0.0}, {"min_clients": -2},
                                 {"max_weight": 0.0}])
def test_bad_options_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match="secagg"):
        SecAggConfig(**bad)


# ----- the protocol ---------------------------------------------------------------------------
#: The algorithm's own phase, whose replies carry the public keys (its contract check included).
KEYS_PHASE = PhaseSpec(name="fit", reply_arrays=public_key_specs(), check=check_public_keys)


class Federation:
    """Clients answering in-process; ``drop`` maps a phase to nodes that never answer it (and
    nothing after it), as after a crash. Every reply is kept in ``seen``. Like the round's
    exchange, every reply goes through the phase's contract check (the public keys through
    :data:`KEYS_PHASE`'s, in :meth:`run`): ``rejected`` maps a phase to each rejected node's
    reason, the contract's and those reported to :meth:`reject`."""

    def __init__(self, nodes: list[int], length: int, options: SecAggConfig,
                 drop: dict[str, set[int]] | None = None, seed: int = 0,
                 tamper=None) -> None:  # noqa: ANN001 - (phase, node, reply) -> reply
        rng = np.random.default_rng(seed)
        self.nodes, self.options, self.drop, self.tamper = nodes, options, drop or {}, tamper
        self.inputs = {u: rng.uniform(0.0, 1.0, length) for u in nodes}
        self.states: dict[int, dict[str, np.ndarray]] = {u: {} for u in nodes}
        self.gone: set[int] = set()
        self.seen: list[tuple[str, int, Payload]] = []
        self.rejected: dict[str, dict[int, str]] = {}
        self.advertised = {u: Payload(arrays=secagg_client.advertise(self.states[u], self.inputs[u], 3),
                                      metrics={"num-examples": 0}) for u in nodes}

    def _checked(self, phase: PhaseSpec, replies: dict[int, Payload]) -> dict[int, Payload]:
        valid = {}
        for u, reply in replies.items():
            try:
                valid[u] = validate_reply(encode(reply), phase)
            except InvalidReply as err:
                self.rejected.setdefault(phase.name, {})[u] = str(err)
        return valid

    def __call__(self, phase, requests) -> ExchangeResult:  # noqa: ANN001
        self.gone |= self.drop.get(phase.name, set())
        replies = {}
        for u, request in requests.items():
            if u in self.gone:
                continue
            reply = secagg_client.answer(phase.name, request, self.states[u], u, self.options)
            if self.tamper is not None:
                reply = self.tamper(phase.name, u, reply)
            self.seen.append((phase.name, u, reply))
            replies[u] = reply
        return ExchangeResult(replies=self._checked(phase, replies))

    def reject(self, phase: str, node: int, reason: str) -> None:
        self.rejected.setdefault(phase, {})[node] = reason

    def run(self, length: int):  # noqa: ANN201
        return secure_sum(self, 3, self._checked(KEYS_PHASE, self.advertised), length, 1.0,
                          self.options, np.random.default_rng(0))


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
    assert not any(k.startswith("secagg/") for k in fed.states[u])  # a refusal wipes the secrets

    fed = Federation(NODES, 20, SecAggConfig())
    _shared(fed)
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


def test_a_client_lost_while_sharing_keys_is_left_out() -> None:
    fed = Federation(NODES, 100, SecAggConfig(), drop={secagg_client.SHARE_KEYS: {NODES[2]}})
    result = fed.run(100)
    kept = [u for u in NODES if u != NODES[2]]
    assert set(result.survivors) == set(kept) and result.dropped == ()
    assert np.abs(result.total - np.sum([fed.inputs[u] for u in kept], axis=0)).max() < 1e-6


@pytest.mark.parametrize("degree", [4, 6])
def test_a_sparse_ring_survives_two_lost_neighbours_or_fails_clearly(degree: int) -> None:
    # 12 clients; two ring neighbours lost while sharing keys. With 6 neighbours (threshold 4)
    # every other client keeps 4 live neighbours: the sum is exact. With 4 (threshold 3) the
    # clients next to the gap keep 2; leaving them out leaves their neighbours short in turn,
    # around the ring: the round fails, saying so, before anyone masks.
    nodes = list(range(1, 13))
    a = nodes[0]
    b = neighbourhoods(nodes, degree, np.random.default_rng(0))[a][0]
    fed = Federation(nodes, 50, SecAggConfig(neighbours=degree),
                     drop={secagg_client.SHARE_KEYS: {a, b}})
    if degree == 4:
        with pytest.raises(SecureAggregationError, match="too few to mask"):
            fed.run(50)
        assert not any(name == secagg_client.MASK for name, _, _ in fed.seen)
        # every client that shared its keys is a rejected reply, with the reason
        rejected = fed.rejected[secagg_client.SHARE_KEYS]
        assert set(rejected) == set(nodes) - {a, b}
        assert all(reason.startswith("fewer than 3 (the threshold) of its neighbours shared "
                                     "their keys") for reason in rejected.values())
        return
    result = fed.run(50)
    assert fed.rejected == {}
    assert set(result.survivors) == set(nodes) - {a, b}
    assert np.abs(result.total - np.sum([fed.inputs[u] for u in result.survivors], axis=0)).max() < 1e-6


def test_keys_on_another_curve_or_reused_are_rejected_replies_with_the_reason() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    nodes = NODES + [77, 78, 79]
    fed = Federation(nodes, 20, SecAggConfig())
    other = public_key_to_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    # a key on another curve, not even a key, the same key twice: rejected replies
    fed.advertised[nodes[0]].arrays[secagg_client.PUBLIC_KEY_C] = np.frombuffer(other, np.uint8)
    size = len(fed.advertised[nodes[3]].arrays[secagg_client.PUBLIC_KEY_S])
    fed.advertised[nodes[3]].arrays[secagg_client.PUBLIC_KEY_S] = (
        np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8))  # garbage of the right size
    fed.advertised[nodes[4]].arrays[secagg_client.PUBLIC_KEY_S] = (
        fed.advertised[nodes[4]].arrays[secagg_client.PUBLIC_KEY_C])
    fed.advertised[nodes[1]].arrays[secagg_client.PUBLIC_KEY_S] = (
        fed.advertised[nodes[2]].arrays[secagg_client.PUBLIC_KEY_S])  # a copied key: both out
    result = fed.run(20)
    assert set(result.survivors) == set(nodes[5:])
    rejected = fed.rejected["fit"]
    assert set(rejected) == {nodes[0], nodes[3], nodes[4]}
    assert rejected[nodes[0]].startswith("array 'secagg-pk-c': shape (")  # a shorter key
    with pytest.raises(InvalidReply, match=r"^public key c is not on secp384r1 \(secp256r1\)$"):
        check_public_keys(Payload(arrays={  # the same key, past the shape check
            secagg_client.PUBLIC_KEY_C: np.frombuffer(other, np.uint8),
            secagg_client.PUBLIC_KEY_S: fed.advertised[nodes[5]].arrays[secagg_client.PUBLIC_KEY_S]}))
    assert "public key s is not a key (ValueError" in rejected[nodes[3]]
    assert rejected[nodes[4]] == "public keys c and s are the same key"
    # both senders of the copied key: not asked to share keys, rejected there
    assert fed.rejected[secagg_client.SHARE_KEYS] == {
        nodes[1]: f"a public key also sent by node {nodes[2]}",
        nodes[2]: f"a public key also sent by node {nodes[1]}"}


def test_ciphertexts_for_another_number_of_neighbours_are_a_rejected_reply() -> None:
    def short(phase: str, node: int, reply: Payload) -> Payload:
        if phase == secagg_client.SHARE_KEYS and node == NODES[0]:
            reply.arrays["ciphertexts"] = reply.arrays["ciphertexts"][:-1]
        return reply

    fed = Federation(NODES, 20, SecAggConfig(), tamper=short)
    result = fed.run(20)
    assert list(fed.rejected) == [secagg_client.SHARE_KEYS]
    assert list(fed.rejected[secagg_client.SHARE_KEYS]) == [NODES[0]]
    reason = fed.rejected[secagg_client.SHARE_KEYS][NODES[0]]
    assert reason.startswith("array 'ciphertexts': shape (3, ") and "!= declared (4, " in reason
    kept = [u for u in NODES if u != NODES[0]]  # left out as if it had not shared its keys
    assert set(result.survivors) == set(kept) and result.dropped == ()
    assert np.abs(result.total - np.sum([fed.inputs[u] for u in kept], axis=0)).max() < 1e-6


def test_an_unmask_reply_with_owners_and_shares_of_unequal_counts_is_rejected() -> None:
    def extra(phase: str, node: int, reply: Payload) -> Payload:
        if phase == secagg_client.UNMASK and node == NODES[0]:
            reply.arrays["b-owners"] = np.append(reply.arrays["b-owners"], np.uint64(99))
        return reply

    fed = Federation(NODES, 20, SecAggConfig(), tamper=extra)
    result = fed.run(20)  # threshold 3 of 4 neighbours: the sum survives one missing reply
    assert fed.rejected == {secagg_client.UNMASK: {NODES[0]: "5 b-owners for 4 b-shares"}}
    assert np.abs(result.total - np.sum(list(fed.inputs.values()), axis=0)).max() < 1e-6


def test_an_unmask_reply_for_other_nodes_than_asked_is_a_rejected_reply() -> None:
    def swap(phase: str, node: int, reply: Payload) -> Payload:
        if phase == secagg_client.UNMASK and node == NODES[0]:
            owners = reply.arrays["b-owners"].copy()
            owners[0] = np.uint64(99)  # a share passed off as another node's
            reply.arrays["b-owners"] = owners
        return reply

    fed = Federation(NODES, 20, SecAggConfig(), tamper=swap)
    result = fed.run(20)  # none of its shares is used: 3 of 4 are enough
    assert fed.rejected == {secagg_client.UNMASK: {
        NODES[0]: "shares of other nodes than it was asked for: none of them is used"}}
    assert np.abs(result.total - np.sum(list(fed.inputs.values()), axis=0)).max() < 1e-6


def test_two_clients_are_refused_clearly() -> None:
    fed = Federation(NODES[:2], 10, SecAggConfig())
    with pytest.raises(SecureAggregationError, match="at least 3 clients"):
        fed.run(10)


def test_an_input_out_of_range_fails_the_round_instead_of_wrapping() -> None:
    fed = Federation(NODES, 10, SecAggConfig())
    # the server's bound is 1.0: 15 still fits one input into the field, but the sum wraps
    fed.states[NODES[0]]["secagg/vector"] = np.full(10, 15.0)
    with pytest.raises(SecureAggregationError, match="out of range"):
        fed.run(10)


def test_a_corrupted_share_is_caught_by_the_commitment() -> None:
    def corrupt(phase: str, node: int, reply: Payload) -> Payload:
        if phase == secagg_client.UNMASK and node == NODES[0] and len(reply.arrays["b-shares"]):
            shares = reply.arrays["b-shares"].copy()
            shares[0, 5] ^= 0xFF  # a byte of the first data chunk, after the 4-byte index
            reply.arrays["b-shares"] = shares
        return reply

    # threshold 1.0: every share is used, so the corrupted one is among them
    fed = Federation(NODES, 10, SecAggConfig(threshold=1.0), tamper=corrupt)
    with pytest.raises(SecureAggregationError, match="commitment|self-mask"):
        fed.run(10)


def test_a_client_masks_only_once_per_round() -> None:
    fed = Federation(NODES, 10, SecAggConfig())
    requests = {}

    def keep(phase, reqs):  # noqa: ANN001, ANN202
        requests[phase.name] = reqs
        if phase.name == secagg_client.UNMASK:
            raise SecureAggregationError("stop before unmasking")
        return fed(phase, reqs)

    with pytest.raises(SecureAggregationError, match="stop before"):
        secure_sum(keep, 3, fed.advertised, 10, 1.0, fed.options, np.random.default_rng(0))
    u = NODES[0]  # masked once; the same request again is refused (and wipes the secrets)
    with pytest.raises(secagg_client.SecAggClientError, match="already masked"):
        secagg_client.answer(secagg_client.MASK, requests[secagg_client.MASK][u], fed.states[u],
                             u, fed.options)
    assert not any(k.startswith("secagg/") for k in fed.states[u])


def test_removing_a_survivor_s_self_mask_still_leaves_its_pairwise_masks() -> None:
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares

    fed = Federation(NODES, 2000, SecAggConfig())
    fed.run(2000)
    u = NODES[0]
    shares = [bytes(share) for name, _, reply in fed.seen if name == secagg_client.UNMASK
              for owner, share in zip(reply.arrays["b-owners"], reply.arrays["b-shares"])
              if int(owner) == u]
    seed_b = combine_shares(shares)
    masked = next(r.arrays["masked"] for name, node, r in fed.seen
                  if name == secagg_client.MASK and node == u)
    without_b = masked - expand_mask(seed_b, 2000)  # what the server can compute for u
    assert abs(without_b.mean() / 2**32 - 0.5) < 0.05
    assert abs(np.corrcoef(without_b.astype(np.float64), fed.inputs[u])[0, 1]) < 0.1
