"""The number validators every layer shares (it imports nothing of fedkd but the errors).

Two families, each with the message its callers' tests pin:

* :func:`positive`: a config value, already of the right type (the config sections check types
  first), that must be ``> 0``: ``"<key> must be > 0, got <value>"``, a
  :class:`~fedkd.errors.ConfigError` by default;
* :func:`finite_positive` and :func:`finite_non_negative`: a library argument that must be a
  finite real number ``> 0`` (``>= 0``): :class:`ValueError`, ``"<name> must be a real number,
  got <value>"`` for a non-number (a bool is not one) and ``"<name> must be a finite number > 0,
  got <value>"`` otherwise. With ``coerce=True`` anything :class:`float` accepts is taken (its
  own error otherwise). Both return the value as a float.
"""

from __future__ import annotations

import math
from numbers import Real

from fedkd.errors import ConfigError

__all__ = ["finite_non_negative", "finite_positive", "positive"]


def positive(name: str, value: float, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` unless ``value > 0`` (NaN is not)."""
    if not value > 0:
        raise error(f"{name} must be > 0, got {value!r}")


def finite_positive(name: str, value: object, *, coerce: bool = False) -> float:
    """``value`` as a float; :class:`ValueError` unless it is a finite real number ``> 0``."""
    return _finite(name, value, coerce, strict=True)


def finite_non_negative(name: str, value: object, *, coerce: bool = False) -> float:
    """``value`` as a float; :class:`ValueError` unless it is a finite real number ``>= 0``."""
    return _finite(name, value, coerce, strict=False)


def _finite(name: str, value: object, coerce: bool, *, strict: bool) -> float:
    if not coerce and (isinstance(value, bool) or not isinstance(value, Real)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    out = float(value)  # type: ignore[arg-type]
    if not math.isfinite(out) or (out <= 0.0 if strict else out < 0.0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, "
                         f"got {value!r}")
    return out
