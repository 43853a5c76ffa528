"""Quantisation to the field Z_{2^32} and mask expansion.

Values become signed integers ``round(x * scale)`` (stochastic rounding, unbiased, from an
explicit generator) stored modulo ``2^32`` as ``uint32``; numpy's ``uint32`` arithmetic wraps, so
sums and masks need no explicit modulus. A sum of integers whose true value lies in
``(-2^31, 2^31)`` decodes exactly (:func:`decode_sum`); :func:`scale_for` picks the largest scale
that keeps the round's sum there.

Masks are the keystream of ChaCha20 (``cryptography``) under a 32-byte seed: a
cryptographically secure expansion. (Flower's ``pseudo_rand_gen`` folds its seed to 32 bits for
NumPy's Mersenne Twister, so a mask could be found by trying 2^32 seeds; Flower's ``quantize``
rounds with NumPy's global generator. Neither is used here.)
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

#: Bits of the field: values live modulo 2^32.
FIELD_BITS = 32
#: A decoded sum must lie strictly inside +-2^31.
HALF_FIELD = 2 ** (FIELD_BITS - 1)
_NONCE = bytes(16)  # each seed is used for one mask only


def scale_for(num_clients: int, bound: float) -> float:
    """The largest power-of-two scale at which ``num_clients`` values, each within ``+-bound``
    (after rounding), sum to strictly less than ``2^30`` in magnitude (half the decodable range:
    room for rounding and noise tails)."""
    if num_clients < 1 or not bound > 0:
        raise ValueError(f"need num_clients >= 1 and bound > 0, got {num_clients}, {bound}")
    exponent = np.floor(np.log2((2.0 ** 30 - num_clients) / (num_clients * bound)))
    return float(2.0 ** exponent)


def quantise(x: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` (float) as field elements: ``floor(x * scale + u)``, ``u ~ U[0, 1)`` (unbiased
    stochastic rounding), modulo 2^32, ``uint32``."""
    scaled = np.asarray(x, dtype=np.float64) * scale
    if not np.isfinite(scaled).all() or np.abs(scaled).max(initial=0.0) >= HALF_FIELD:
        raise ValueError("a value does not fit the field at this scale")
    q = np.floor(scaled + rng.random(scaled.shape)).astype(np.int64)
    return (q & 0xFFFFFFFF).astype(np.uint32)


def decode_sum(total: np.ndarray, scale: float) -> np.ndarray:
    """A ``uint32`` sum of quantised values back to floats (read as a signed 32-bit integer)."""
    signed = np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64)
    return signed / scale


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform field elements from a 32-byte ``seed`` (ChaCha20 keystream)."""
    if len(seed) != 32:
        raise ValueError(f"a mask seed is 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype=np.uint32)
