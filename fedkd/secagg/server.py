"""The server half of SecAgg+: three exchanges after the algorithm's own phase, then the sum.

The server forwards keys and encrypted shares, collects masked inputs, asks the survivors for
the shares that remove the masks, and reconstructs ``sum_u x_u`` (modulo 2^32, decoded to
floats). It never holds a client's input without masks: a masked input hides ``x_u`` behind
``PRG(b_u)`` and the pairwise masks with live neighbours; the server learns ``b_u`` only for
clients whose pairwise masks stay secret, and a dropped client's ``s`` key only for clients
whose input is not in the sum.

Nothing is dropped silently: a reply the protocol cannot use is refused by the phase's
contract check, and so counted and audited by the round's exchange as a rejected reply with its
reason: public keys that are not two distinct keys on Flower's curve (:func:`check_public_keys`,
on the algorithm's phase), ciphertexts for another number of neighbours than the node has, share
owners and shares of unequal counts. A node left out for what the other nodes sent (a public key
another node also sent, too few live neighbours), and an unmask reply with shares of other nodes
than were asked for (not used), are rejected replies too, reported with their reason through
the exchange's ``reject``.

Dropouts: a client lost after sharing keys but before masking has its pairwise masks removed
from its neighbours' inputs with its ``s`` key, rebuilt from ``t`` shares; a client lost after
masking has its input kept and its self-mask removed with its ``b``, rebuilt the same way. When
fewer than ``t`` neighbours of such a client answer the unmask request, or fewer inputs than the
distributed-DP noise is calibrated for arrive, the round fails with
:class:`SecureAggregationError` and nothing of it is used.

Threat model: an honest-but-curious server and clients (Bell et al.'s semi-honest setting).
There is no consistency round against a server that lies about who dropped, and no proof that
an input lies in range: a hostile client can shift the sum, which is why only sum-decomposable
rules run here and robust ones (median, trimmed mean) are refused.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.secagg.client import (
    MASK,
    PUBLIC_KEY_C,
    PUBLIC_KEY_S,
    SHARE_KEYS,
    UNMASK,
    as_bytes,
    pairwise_seed,
)
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.field import decode_sum, expand_mask, scale_for


class Exchange(Protocol):
    """The round's exchange (:class:`fedkd.algorithms.Exchange`): sends one phase's requests
    and returns the valid replies by node (``.replies``); ``reject`` counts, audits and logs a
    node's reply of a phase as rejected for a reason found after the exchange."""

    def __call__(self, phase: PhaseSpec, requests: Mapping[int, Payload]) -> Any: ...

    def reject(self, phase: str, node: int, reason: str) -> None: ...


class SecureAggregationError(RuntimeError):
    """The secure sum cannot be completed (too few shares or inputs): the round is discarded."""


@functools.cache
def sizes() -> dict[str, int]:
    """Byte lengths of a public key, a ``b`` share, an ``s`` share and an encrypted pair of
    shares (fixed for Flower's curve and Fernet; measured once on throw-away keys)."""
    private, public = generate_key_pairs()
    secret = private_key_to_bytes(private)
    b_share = create_shares(os.urandom(32), 2, 2)[0]
    s_share = create_shares(secret, 2, 2)[0]
    key = generate_shared_key(private, public)
    cipher = encrypt(key, share_keys_plaintext_concat(1, 2, b_share, s_share))
    return {"public-key": len(public_key_to_bytes(public)), "b-share": len(b_share),
            "s-share": len(s_share), "ciphertext": len(cipher)}


def public_key_specs() -> dict[str, ArraySpec]:
    """The two public keys a client adds to its reply of the algorithm's own phase (that
    phase's check runs :func:`check_public_keys` on them)."""
    n = sizes()["public-key"]
    return {PUBLIC_KEY_C: ArraySpec(shape=(n,), dtype="uint8"),
            PUBLIC_KEY_S: ArraySpec(shape=(n,), dtype="uint8")}


def check_public_keys(reply: Payload) -> None:
    """The contract check of a reply's two public keys (:func:`public_key_specs`): each a key on
    Flower's curve, the two distinct. Raises :class:`~fedkd.protocol.InvalidReply` with the
    reason, so the round's exchange counts and audits the reply as rejected."""
    problem = _key_problem((as_bytes(reply.arrays[PUBLIC_KEY_C]),
                            as_bytes(reply.arrays[PUBLIC_KEY_S])))
    if problem is not None:
        raise InvalidReply(problem)


def _phases(length: int, degree: int) -> dict[str, PhaseSpec]:
    """The protocol's phases for inputs of ``length`` values among nodes of ``degree``
    neighbours each (:func:`neighbourhoods` gives every node as many): a share-keys reply with
    ciphertexts for another number of neighbours is rejected by the contract check."""
    s = sizes()

    def check_unmask(reply: Payload) -> None:
        for kind in ("b", "s"):
            owners = reply.arrays[f"{kind}-owners"]
            shares = reply.arrays[f"{kind}-shares"]
            if len(owners) != len(shares):
                raise InvalidReply(f"{len(owners)} {kind}-owners for {len(shares)} {kind}-shares")
            if len(set(owners.tolist())) != len(owners):
                raise InvalidReply(f"{kind}-owners: a node listed twice")

    return {
        SHARE_KEYS: PhaseSpec(name=SHARE_KEYS, message_type="query", reply_arrays={
            "ciphertexts": ArraySpec(shape=(degree, s["ciphertext"]), dtype="uint8"),
            "b-hash": ArraySpec(shape=(32,), dtype="uint8")}),
        MASK: PhaseSpec(name=MASK, message_type="query", reply_arrays={
            "masked": ArraySpec(shape=(length,), dtype="uint32")}),
        UNMASK: PhaseSpec(name=UNMASK, message_type="query", reply_arrays={
            "b-owners": ArraySpec(shape=(None,), dtype="uint64"),
            "b-shares": ArraySpec(shape=(None, s["b-share"]), dtype="uint8"),
            "s-owners": ArraySpec(shape=(None,), dtype="uint64"),
            "s-shares": ArraySpec(shape=(None, s["s-share"]), dtype="uint8")},
            max_reply_bytes=64 * 1024 + degree * (16 + s["b-share"] + s["s-share"]),
            check=check_unmask),
    }


def neighbourhoods(nodes: Sequence[int], degree: int,
                   rng: np.random.Generator) -> dict[int, list[int]]:
    """Each node's neighbours: every other node (``degree`` 0 or at least ``len(nodes) - 1``),
    else ``ceil(degree / 2)`` on each side of it on a ring of the nodes in a random order (a
    Harary graph, as SecAgg+ uses). Every node has as many neighbours as every other."""
    nodes = sorted(nodes)
    if degree == 0 or degree >= len(nodes) - 1:
        return {u: [v for v in nodes if v != u] for u in nodes}
    half = math.ceil(degree / 2)
    ring = [nodes[i] for i in rng.permutation(len(nodes))]
    out = {}
    for i, u in enumerate(ring):
        around = {ring[(i + d) % len(ring)] for d in range(-half, half + 1) if d != 0}
        out[u] = sorted(around)
    return out


@dataclass(frozen=True)
class SecureSum:
    """What the secure sum revealed: the sum, and whose inputs it holds.

    Attributes
    ----------
    total
        ``sum_u x_u`` over the survivors (float64, flat), quantisation error at most
        ``len(survivors) / scale`` per value (plus the distributed-DP noise, if on).
    survivors
        Nodes whose inputs are in the sum.
    dropped
        Nodes that shared keys but sent no input (their masks were removed).
    noise_multiplier
        Distributed DP: the std of the sum's noise over the clip (0: off).
    """

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    noise_multiplier: float = 0.0


def secure_sum(exchange: Exchange, rnd: int, advertised: Mapping[int, Payload], length: int,
               bound: float, options: SecAggConfig, rng: np.random.Generator) -> SecureSum:
    """Run the protocol's three exchanges with the nodes that ``advertised`` their public keys
    (their replies to the algorithm's own phase) and return the sum of their inputs.

    Parameters
    ----------
    exchange
        The round's exchange (it validates every reply against the phase's contract; a node
        left out for what other nodes sent is reported to its ``reject``).
    length
        Values in each client's input.
    bound
        The largest magnitude of one client's value (before any DP noise): sets the scale.
    rng
        The server's generator (the neighbourhood ring).
    """
    keys, refused = _valid_keys(advertised)
    for node, reason in refused.items():  # not asked to share keys
        exchange.reject(SHARE_KEYS, node, reason)
    if len(keys) < 3:
        raise SecureAggregationError(f"round {rnd}: secure aggregation needs at least 3 clients "
                                     f"with valid keys (a threshold of 2 shares among at least 2 "
                                     f"neighbours each), got {len(keys)}")
    graph = neighbourhoods(list(keys), options.neighbours, rng)
    degree = min(len(v) for v in graph.values())
    threshold = options.shamir_threshold(degree)
    phases = _phases(length, degree)

    # 1. share keys: each node gets its neighbours' public keys
    requests = {u: Payload(
        arrays={"neighbours": np.array(graph[u], dtype=np.uint64),
                "pk-c": np.stack([keys[v][0] for v in graph[u]]),
                "pk-s": np.stack([keys[v][1] for v in graph[u]])},
        config={"round": rnd, "threshold": threshold}) for u in keys}
    replies = exchange(phases[SHARE_KEYS], requests).replies  # one ciphertext per neighbour
    shared = {u: p.arrays["ciphertexts"] for u, p in replies.items()}
    commitments = {u: as_bytes(replies[u].arrays["b-hash"]) for u in shared}
    u2 = _prune(set(shared), graph, threshold)
    for node in sorted(set(shared) - u2):
        exchange.reject(SHARE_KEYS, node, f"fewer than {threshold} (the threshold) of its "
                        "neighbours shared their keys, directly or after others were left out: it "
                        "could not be unmasked were it lost")
    if len(u2) < threshold + 1:
        raise SecureAggregationError(
            f"round {rnd}: {len(u2)} clients shared their keys with enough live neighbours "
            f"(threshold {threshold}): too few to mask; the round is discarded")

    # 2. masked inputs: each node gets the shares addressed to it by neighbours still present
    per_client = options.noise_std(threshold)
    scale = scale_for(len(u2), bound + 8.0 * per_client)
    requests = {}
    for u in sorted(u2):
        senders = [v for v in graph[u] if v in u2]
        requests[u] = Payload(
            arrays={"senders": np.array(senders, dtype=np.uint64),
                    "ciphertexts": np.stack([shared[v][graph[v].index(u)] for v in senders])
                    if senders else np.zeros((0, sizes()["ciphertext"]), np.uint8)},
            config={"round": rnd, "scale": scale})
    masked = {u: p.arrays["masked"] for u, p in exchange(phases[MASK], requests).replies.items()}
    u3 = set(masked)
    dropped = u2 - u3
    calibrated = options.calibrated_clients(threshold)
    if options.distributed_dp and len(u3) < calibrated:
        raise SecureAggregationError(
            f"round {rnd}: {len(u3)} masked inputs arrived; the distributed-DP noise is "
            f"calibrated for at least {calibrated} (secagg.min-clients): the round is discarded")

    # 3. unmask: b shares of the survivors, s shares of the dropped
    requests = {u: Payload(
        arrays={"survivors": np.array([v for v in graph[u] if v in u3], dtype=np.uint64),
                "dropped": np.array([v for v in graph[u] if v in dropped], dtype=np.uint64)},
        config={"round": rnd}) for u in sorted(u3)}
    unmasked = exchange(phases[UNMASK], requests).replies
    b_shares: dict[int, list[bytes]] = {u: [] for u in u3}
    s_shares: dict[int, list[bytes]] = {d: [] for d in dropped}
    for node, payload in sorted(unmasked.items()):
        asked = {kind: set(requests[node].arrays[name].tolist())
                 for kind, name in (("b", "survivors"), ("s", "dropped"))}
        answered = {kind: set(payload.arrays[f"{kind}-owners"].tolist()) for kind in asked}
        if answered != asked:  # owners listed once each: the contract check
            exchange.reject(UNMASK, node, "shares of other nodes than it was asked for: none of "
                            "them is used")
            continue
        for kind, held in (("b", b_shares), ("s", s_shares)):
            for owner, share in zip(payload.arrays[f"{kind}-owners"], payload.arrays[f"{kind}-shares"]):
                held[int(owner)].append(as_bytes(share))

    total = np.zeros(length, dtype=np.uint32)
    for u in sorted(u3):
        total += masked[u]
        seed_b = _reconstruct(rnd, u, "self-mask", b_shares[u], threshold)
        if hashlib.sha256(seed_b).digest() != commitments[u]:
            raise SecureAggregationError(
                f"round {rnd}: node {u}'s self-mask rebuilt from its neighbours' shares does not "
                "match its commitment (a corrupted share): the round is discarded")
        total -= expand_mask(seed_b, length)
    for d in sorted(dropped):
        secret = _reconstruct(rnd, d, "mask key", s_shares[d], threshold)
        if public_key_to_bytes(bytes_to_private_key(secret).public_key()) != as_bytes(keys[d][1]):
            raise SecureAggregationError(f"round {rnd}: the shares of node {d}'s mask key rebuild "
                                         "a key that does not match its public key")
        for u in graph[d]:
            if u in u3:  # u masked with d: +PRG(s_ud) if d > u, -PRG(s_ud) otherwise
                mask = expand_mask(pairwise_seed(secret, as_bytes(keys[u][1])), length)
                if d > u:
                    total -= mask
                else:
                    total += mask
    noise = 0.0
    if options.distributed_dp:
        noise = options.noise_multiplier * math.sqrt(len(u3) / calibrated)
    decoded = decode_sum(total, scale)
    # every input lies within +-bound (clipped), the noise within its tail: a larger value
    # means a client sent an input out of range and the sum may have wrapped
    limit = len(u3) * (bound + 1.0 / scale) + 8.0 * per_client * math.sqrt(len(u3))
    if np.abs(decoded).max(initial=0.0) > limit:
        raise SecureAggregationError(
            f"round {rnd}: the sum has a value of {np.abs(decoded).max():.4g}, beyond what "
            f"{len(u3)} inputs within +-{bound:g} can sum to: an input out of range, the round is "
            "discarded")
    return SecureSum(total=decoded, survivors=tuple(sorted(u3)),
                     dropped=tuple(sorted(dropped)), noise_multiplier=noise)


def _prune(alive: set[int], graph: Mapping[int, list[int]], threshold: int) -> set[int]:
    """Drop, until none is left, every node with fewer than ``threshold`` live neighbours: it
    could not be unmasked (nor its masks removed) if it were lost, and its neighbours then
    leave it out of their masks as if it had not shared its keys."""
    alive = set(alive)
    while True:
        weak = {u for u in alive if sum(v in alive for v in graph[u]) < threshold}
        if not weak:
            return alive
        alive -= weak


def _key_problem(pair: tuple[bytes, bytes]) -> str | None:
    """Why a node's public keys ``(c, s)`` cannot be used (``None``: two distinct keys on
    Flower's curve)."""
    curve = _flower_curve()
    for name, raw in zip(("c", "s"), pair):
        try:
            key = bytes_to_public_key(raw)
        except Exception as err:  # noqa: BLE001 - any failure to parse: not a key
            return f"public key {name} is not a key ({type(err).__name__}: {err})"
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            found = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
            return f"public key {name} is not on {curve.name} ({found})"
    if pair[0] == pair[1]:
        return "public keys c and s are the same key"
    return None


def _valid_keys(advertised: Mapping[int, Payload]
                ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, str]]:
    """Nodes whose two public keys are distinct keys on Flower's curve that no other node sent,
    and the others with the reason each is left out (anything else than such keys, or a key
    another node sent too: both senders are left out, their neighbours' key agreement would fail
    or be shared)."""
    raw = {node: (as_bytes(p.arrays[PUBLIC_KEY_C]), as_bytes(p.arrays[PUBLIC_KEY_S]))
           for node, p in advertised.items()}
    senders: dict[bytes, list[int]] = {}
    for node, pair in sorted(raw.items()):
        for key in set(pair):
            senders.setdefault(key, []).append(node)
    keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    refused: dict[int, str] = {}
    for node, pair in sorted(raw.items()):
        problem = _key_problem(pair)
        if problem is None:
            shared = sorted({n for k in pair for n in senders[k]} - {node})
            if shared:
                problem = (f"a public key also sent by node{'s' if len(shared) > 1 else ''} "
                           + ", ".join(map(str, shared[:5])))
        if problem is not None:
            refused[node] = problem
            continue
        keys[node] = tuple(np.frombuffer(b, np.uint8).copy() for b in pair)  # type: ignore[assignment]
    return keys, refused


@functools.cache
def _flower_curve() -> type:
    """The elliptic curve of Flower's key pairs (SECP384R1 in 1.42)."""
    return type(generate_key_pairs()[1].curve)


def _reconstruct(rnd: int, node: int, what: str, shares: list[bytes], threshold: int) -> bytes:
    if len(shares) < threshold:
        raise SecureAggregationError(
            f"round {rnd}: node {node}'s {what} needs {threshold} shares and only {len(shares)} "
            "of its neighbours answered the unmask request (below the threshold): the round is "
            "discarded, nothing of it is used")
    try:
        return combine_shares(shares[:threshold])
    except ValueError as err:
        raise SecureAggregationError(f"round {rnd}: node {node}'s {what}: {err}") from err
