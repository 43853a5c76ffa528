from __future__ import annotations

import pytest

from fedkd.registry import Registry, UnknownNameError


def test_register_and_get() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A: ...

    assert reg.get("a") is A
    assert "a" in reg and "b" not in reg
    assert reg.names() == ["a"] and len(reg) == 1


def test_unknown_name_lists_valid_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("beta")(2)
    reg.register("alpha")(1)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'gamma'; valid names: alpha, beta"):
        reg.get("gamma")


def test_duplicate_registration_is_an_error() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("x")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(2)
