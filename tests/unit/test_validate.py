"""The shared number validators (fedkd/validate.py): the messages their call sites' tests pin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkd.errors import ConfigError
from fedkd.validate import finite_non_negative, finite_positive, positive


def test_positive_config_values() -> None:
    positive("train.batch-size", 1)
    for bad in (0, -1.5, math.nan):
        with pytest.raises(ConfigError, match=r"^train.batch-size must be > 0, got "):
            positive("train.batch-size", bad)
    with pytest.raises(ValueError, match=r"^x must be > 0, got 0$") as info:
        positive("x", 0, error=ValueError)
    assert type(info.value) is ValueError


def test_finite_positive_and_non_negative() -> None:
    assert finite_positive("sigma", 2) == 2.0 and isinstance(finite_positive("sigma", 2), float)
    assert finite_positive("sigma", np.float32(0.5)) == 0.5
    assert finite_non_negative("sigma", 0) == 0.0
    for bad in (True, "1", None):
        with pytest.raises(ValueError, match=rf"^sigma must be a real number, got {bad!r}$"):
            finite_positive("sigma", bad)
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^sigma must be a finite number > 0, got "):
            finite_positive("sigma", bad)
    for bad in (-1e-9, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^sigma must be a finite number >= 0, got "):
            finite_non_negative("sigma", bad)


def test_coerce_takes_what_float_takes_and_shows_the_value_given() -> None:
    assert finite_positive("lam", "0.5", coerce=True) == 0.5
    with pytest.raises(ValueError, match=r"^lam must be a finite number > 0, got 0$"):
        finite_positive("lam", 0, coerce=True)
    with pytest.raises(TypeError):
        finite_positive("lam", None, coerce=True)
