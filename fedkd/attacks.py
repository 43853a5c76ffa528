"""Simulated misbehaving clients: corruptions applied to what a client uploads.

Used by the robustness tests and benchmarks, never by default: a client whose partition id is
listed in ``attack.partitions`` passes every reply's arrays through the attack named by
``attack.mode`` before sending. Two kinds:

* malformed replies, which the server's contract check must reject: ``nan``, ``inf``,
  ``wrong-shape``, ``oversize``, ``extra-key``;
* well-formed but poisoned values, which only a robust aggregation rule resists: ``random``
  (noise of the logits' own scale), ``flip`` (class order reversed), ``scale`` (multiplied by
  ``attack.scale``).

Each attack is a pure function ``(arrays, rng, scale) -> arrays``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedkd.registry import Registry

Arrays = dict[str, np.ndarray]
Attack = Callable[[Arrays, np.random.Generator, float], Arrays]

ATTACKS: Registry[Attack] = Registry("attack")


def _floats(arrays: Arrays) -> list[str]:
    return [k for k, v in arrays.items() if v.dtype.kind == "f"]


@ATTACKS.register("nan")
def nan_values(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Every float array becomes NaN."""
    return {k: np.full_like(v, np.nan) if k in _floats(arrays) else v for k, v in arrays.items()}


@ATTACKS.register("inf")
def inf_values(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """The first value of every float array becomes +Inf."""
    out = {k: v.copy() for k, v in arrays.items()}
    for k in _floats(out):
        out[k].reshape(-1)[:1] = np.inf
    return out


@ATTACKS.register("wrong-shape")
def wrong_shape(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Every array loses its last column (or element)."""
    return {k: v[..., :-1] if v.ndim else v for k, v in arrays.items()}


@ATTACKS.register("oversize")
def oversize(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Every array is repeated along its first axis until it holds at least 1 MiB (a huge reply)."""
    return {k: np.concatenate([v] * max(2, -(-(2**20) // max(v.nbytes, 1)))) if v.ndim else v
            for k, v in arrays.items()}


@ATTACKS.register("extra-key")
def extra_key(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """An undeclared array rides along (as if a client leaked its weights)."""
    return {**arrays, "weights": rng.normal(size=(64, 64)).astype(np.float32)}


@ATTACKS.register("random")
def random_values(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Float arrays replaced by Gaussian noise with their own standard deviation."""
    out = dict(arrays)
    for k in _floats(arrays):
        std = float(arrays[k].std()) or 1.0
        out[k] = rng.normal(0.0, std, size=arrays[k].shape).astype(arrays[k].dtype)
    return out


@ATTACKS.register("flip")
def flip_classes(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Float arrays with the class axis (last) reversed: confident in the wrong class."""
    return {k: np.ascontiguousarray(v[..., ::-1]) if k in _floats(arrays) else v
            for k, v in arrays.items()}


@ATTACKS.register("scale")
def scale_values(arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Float arrays multiplied by ``scale``."""
    return {k: (v * scale).astype(v.dtype) if k in _floats(arrays) else v for k, v in arrays.items()}


def apply_attack(mode: str, arrays: Arrays, rng: np.random.Generator, scale: float) -> Arrays:
    """Apply the attack named ``mode`` (``"none"`` returns ``arrays`` unchanged)."""
    if mode == "none" or not arrays:
        return arrays
    return ATTACKS.get(mode)(arrays, rng, scale)
