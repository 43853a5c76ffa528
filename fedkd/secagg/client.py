"""The client half of SecAgg+: keys, shares, the masked input, unmasking.

A client takes part in four messages of a round (Bell et al. 2020, "Secure single-server
aggregation with (poly)logarithmic complexity", Alg. 2; Bonawitz et al. 2017):

0. **advertise** (inside the algorithm's own phase, :func:`advertise`): it keeps its
   contribution (the rule's summands, never sent) and two fresh EC key pairs in its node state
   and sends the two public keys: ``c`` (to encrypt shares) and ``s`` (pairwise masks);
1. **share keys** (:data:`SHARE_KEYS`): it draws a self-mask seed ``b``, splits ``b`` and its
   ``s`` private key into Shamir shares (threshold ``t``) among its neighbours, and sends each
   neighbour's pair of shares encrypted under their ECDH key (via the server);
2. **mask** (:data:`MASK`): it decrypts the shares its neighbours sent it, quantises its
   contribution (distributed DP: clipped, with its share of Gaussian noise) and sends
   ``x + PRG(b) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)`` modulo 2^32;
3. **unmask** (:data:`UNMASK`): for each neighbour the server lists as a survivor it returns
   that neighbour's ``b`` share, for each one listed as dropped its ``s`` share, never both
   for one node; then it forgets every secret of the round.

Cryptography comes from Flower (``flwr.common.secure_aggregation``: ECDH + HKDF, Fernet,
Shamir over PyCryptodome) and ``cryptography`` (ChaCha20 masks, :mod:`fedkd.secagg.field`);
only the orchestration is written here. Secrets (keys, ``b``, the DP noise) come from the
operating system's CSPRNG, never from the run seed, which the server knows.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, MutableMapping

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedkd.protocol import Payload
from fedkd.secagg.config import SecAggConfig
from fedkd.secagg.field import expand_mask, quantise

#: The client's public keys, sent in the algorithm's own reply of the round's first phase.
PUBLIC_KEY_C = "secagg-pk-c"
PUBLIC_KEY_S = "secagg-pk-s"
#: Phase names of the protocol's own exchanges.
SHARE_KEYS = "secagg-share-keys"
MASK = "secagg-mask"
UNMASK = "secagg-unmask"
PHASES = (SHARE_KEYS, MASK, UNMASK)

_PREFIX = "secagg/"


class SecAggClientError(ValueError):
    """A request that breaks the protocol (wrong round, unknown node, a node asked both ways)."""


def _put(state: MutableMapping[str, np.ndarray], key: str, value: bytes) -> None:
    state[_PREFIX + key] = np.frombuffer(value, dtype=np.uint8).copy()


def _get(state: Mapping[str, np.ndarray], key: str) -> bytes:
    try:
        return np.asarray(state[_PREFIX + key], dtype=np.uint8).tobytes()
    except KeyError as err:
        raise SecAggClientError(f"secure aggregation: no {key!r} kept on this node (a request out "
                                "of order, or for a round it did not advertise in)") from err


def forget(state: MutableMapping[str, np.ndarray]) -> None:
    """Drop every secret and contribution of the protocol from the node state."""
    for key in [k for k in state if k.startswith(_PREFIX)]:
        del state[key]


def as_bytes(array: np.ndarray) -> bytes:
    return np.asarray(array, dtype=np.uint8).tobytes()


def pairwise_seed(private_key: bytes, public_key: bytes) -> bytes:
    """The 32-byte mask seed two clients share: ECDH, then HKDF-SHA256 (Flower's
    ``generate_shared_key``, which returns it base64-encoded for Fernet)."""
    key = generate_shared_key(bytes_to_private_key(private_key), bytes_to_public_key(public_key))
    return base64.urlsafe_b64decode(key)


def advertise(state: MutableMapping[str, np.ndarray], contribution: np.ndarray,
              rnd: int) -> dict[str, np.ndarray]:
    """Keep ``contribution`` (float, flat) and two fresh key pairs for round ``rnd``; return
    the public keys, the arrays to add to the reply."""
    forget(state)
    state[_PREFIX + "round"] = np.array([rnd], dtype=np.int64)
    state[_PREFIX + "vector"] = np.asarray(contribution, dtype=np.float64).reshape(-1).copy()
    out = {}
    for name, array_key in (("c", PUBLIC_KEY_C), ("s", PUBLIC_KEY_S)):
        private, public = generate_key_pairs()
        _put(state, f"sk-{name}", private_key_to_bytes(private))
        out[array_key] = np.frombuffer(public_key_to_bytes(public), dtype=np.uint8).copy()
    return out


def answer(phase: str, request: Payload, state: MutableMapping[str, np.ndarray], client_id: int,
           options: SecAggConfig) -> Payload:
    """Answer one protocol request of the client ``client_id`` (the id the server addresses it by)."""
    rnd = int(request.config.get("round", -1))
    kept = state.get(_PREFIX + "round")
    if kept is None or int(kept[0]) != rnd:
        raise SecAggClientError(f"secure aggregation: phase {phase!r} of round {rnd}, but this "
                                "node holds no contribution for that round")
    try:
        if phase == SHARE_KEYS:
            arrays = _share_keys(request, state, client_id)
        elif phase == MASK:
            arrays = _mask(request, state, client_id, options)
        elif phase == UNMASK:
            arrays = _unmask(request, state)
            forget(state)  # one unmask per round: a second request learns nothing more
        else:
            raise SecAggClientError(f"secure aggregation has no phase {phase!r}")
    except Exception:
        forget(state)  # a failed round leaves no secret behind
        raise
    return Payload(arrays=arrays, metrics={"num-examples": 0})


def _node_list(request: Payload, name: str) -> list[int]:
    ids = np.asarray(request.arrays.get(name, np.zeros(0, np.uint64)))
    if ids.ndim != 1 or ids.dtype != np.uint64 or len(set(ids.tolist())) != len(ids):
        raise SecAggClientError(f"secure aggregation: {name!r} must be distinct uint64 node ids")
    return [int(i) for i in ids]


def _share_keys(request: Payload, state: MutableMapping[str, np.ndarray],
                client_id: int) -> dict[str, np.ndarray]:
    neighbours = _node_list(request, "neighbours")
    threshold = int(request.config["threshold"])
    pk_c, pk_s = request.arrays["pk-c"], request.arrays["pk-s"]
    if _PREFIX + "b" in state:
        raise SecAggClientError("secure aggregation: keys already shared this round (a repeated "
                                "request could gather more shares of the same secrets)")
    if client_id in neighbours or not 2 <= threshold <= len(neighbours):
        raise SecAggClientError(f"secure aggregation: {len(neighbours)} neighbours (self "
                                f"excluded) with threshold {threshold}")
    if pk_c.shape[0] != len(neighbours) or pk_s.shape[0] != len(neighbours):
        raise SecAggClientError("secure aggregation: one pair of public keys per neighbour")
    seed_b = os.urandom(32)
    b_shares = create_shares(seed_b, threshold, len(neighbours))
    s_shares = create_shares(_get(state, "sk-s"), threshold, len(neighbours))
    sk_c = bytes_to_private_key(_get(state, "sk-c"))
    # one Fernet key per neighbour (ECDH + HKDF): it encrypts the shares sent now and decrypts
    # the ones received in the mask phase
    keys = [generate_shared_key(sk_c, bytes_to_public_key(as_bytes(pk))) for pk in pk_c]
    rows = [np.frombuffer(encrypt(key, share_keys_plaintext_concat(client_id, peer, b, s)), np.uint8)
            for key, peer, b, s in zip(keys, neighbours, b_shares, s_shares)]
    if len({len(r) for r in rows}) != 1:
        raise SecAggClientError("secure aggregation: ciphertexts of unequal length")
    _put(state, "b", seed_b)
    state[_PREFIX + "neighbours"] = np.array(neighbours, dtype=np.uint64)
    state[_PREFIX + "fernet"] = np.stack([np.frombuffer(k, np.uint8) for k in keys])
    state[_PREFIX + "pk-s"] = np.asarray(pk_s, dtype=np.uint8).copy()
    state[_PREFIX + "threshold"] = np.array([threshold], dtype=np.int64)
    # a commitment to b: the server checks the seed it rebuilds from shares against it
    return {"ciphertexts": np.stack(rows),
            "b-hash": np.frombuffer(hashlib.sha256(seed_b).digest(), dtype=np.uint8).copy()}


def _mask(request: Payload, state: MutableMapping[str, np.ndarray], client_id: int,
          options: SecAggConfig) -> dict[str, np.ndarray]:
    senders = _node_list(request, "senders")
    ciphertexts = request.arrays["ciphertexts"]
    if _PREFIX + "masked" in state:
        raise SecAggClientError("secure aggregation: input already masked this round (a repeated "
                                "request with other neighbours could strip the masks)")
    neighbours = [int(i) for i in state[_PREFIX + "neighbours"]]
    threshold = int(state[_PREFIX + "threshold"][0])
    unknown = set(senders) - set(neighbours)
    if unknown or len(senders) < threshold or ciphertexts.shape[0] != len(senders):
        raise SecAggClientError(
            f"secure aggregation: masking with {len(senders)} active neighbours (threshold "
            f"{threshold}; not neighbours: {sorted(unknown)[:5]})")
    position = {peer: i for i, peer in enumerate(neighbours)}
    b_held, s_held = [], []
    for peer, row in zip(senders, ciphertexts):
        key = as_bytes(state[_PREFIX + "fernet"][position[peer]])
        src, dst, b_share, s_share = share_keys_plaintext_separate(decrypt(key, as_bytes(row)))
        if (src, dst) != (peer, client_id):
            raise SecAggClientError(f"secure aggregation: shares from {src} to {dst} delivered "
                                    f"as from {peer} to {client_id}")
        b_held.append(np.frombuffer(b_share, np.uint8))
        s_held.append(np.frombuffer(s_share, np.uint8))
    state[_PREFIX + "held-from"] = np.array(senders, dtype=np.uint64)
    state[_PREFIX + "held-b"] = np.stack(b_held)
    state[_PREFIX + "held-s"] = np.stack(s_held)

    vector = state[_PREFIX + "vector"]
    # NumPy's PCG64 seeded with 128 bits from the OS CSPRNG: the noise and the rounding are
    # unknown to the server, which knows the run seed
    secret_rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    scale = float(request.config["scale"])
    if options.distributed_dp:
        norm = float(np.linalg.norm(vector))
        vector = vector * min(1.0, options.clip / norm) if norm > 0 else vector
    masked = quantise(vector, scale, secret_rng)
    if options.distributed_dp:
        masked += noise_share(options, threshold, vector.size, scale, secret_rng)
    masked += expand_mask(_get(state, "b"), vector.size)
    sk_s = _get(state, "sk-s")
    for peer in senders:
        pk_s = as_bytes(state[_PREFIX + "pk-s"][position[peer]])
        mask = expand_mask(pairwise_seed(sk_s, pk_s), vector.size)
        if peer > client_id:
            masked += mask
        else:
            masked -= mask
    state[_PREFIX + "masked"] = np.ones(1, np.int8)
    return {"masked": masked}


def noise_share(options: SecAggConfig, threshold: int, size: int, scale: float,
                rng: np.random.Generator) -> np.ndarray:
    """One client's share of the distributed Gaussian noise (:meth:`SecAggConfig.noise_std`),
    on the field's grid."""
    return quantise(rng.normal(0.0, options.noise_std(threshold), size), scale, rng)


def _unmask(request: Payload, state: MutableMapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    survivors = _node_list(request, "survivors")
    dropped = _node_list(request, "dropped")
    held = [int(i) for i in state.get(_PREFIX + "held-from", np.zeros(0, np.uint64))]
    both = set(survivors) & set(dropped)
    unknown = (set(survivors) | set(dropped)) - set(held)
    if both or unknown:
        raise SecAggClientError(
            f"secure aggregation: unmask asks for nodes both ways {sorted(both)[:5]} or for "
            f"nodes whose shares this node does not hold {sorted(unknown)[:5]}")
    b_rows = [held.index(n) for n in survivors]
    s_rows = [held.index(n) for n in dropped]
    held_b, held_s = state[_PREFIX + "held-b"], state[_PREFIX + "held-s"]
    return {
        "b-owners": np.array(survivors, dtype=np.uint64),
        "b-shares": held_b[b_rows] if b_rows else np.zeros((0, held_b.shape[1]), np.uint8),
        "s-owners": np.array(dropped, dtype=np.uint64),
        "s-shares": held_s[s_rows] if s_rows else np.zeros((0, held_s.shape[1]), np.uint8),
    }
