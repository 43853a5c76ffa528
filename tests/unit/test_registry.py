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


def test_register_sets_the_name_of_a_class_that_declares_one() -> None:
    from typing import ClassVar

    reg: Registry[type] = Registry("widget")

    class Base:
        name: ClassVar[str]

    @reg.register("a")
    class A(Base): ...

    @reg.register("b")
    class B(A): ...  # inherits A's name, gets its own

    assert A.name == "a" and B.name == "b"

    @reg.register("plain")
    class Plain: ...  # declares no name: left alone

    assert not hasattr(Plain, "name")


def test_a_stated_name_must_match_the_registered_one() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("same")
    class Same:
        name = "same"  # harmless: the registry sets the same value

    assert Same.name == "same"
    with pytest.raises(ValueError, match=r"widget .*Other says name = 'other' but is registered "
                                         r"as 'different'"):
        @reg.register("different")
        class Other:
            name = "other"
    assert "different" not in reg


def test_every_plugin_carries_its_registered_name() -> None:
    from fedkd.aggregation import AGGREGATORS
    from fedkd.algorithms import ALGORITHMS
    from fedkd.compose import load_plugins
    from fedkd.synthesis import SYNTHESIZERS

    load_plugins()
    for registry in (ALGORITHMS, AGGREGATORS, SYNTHESIZERS):
        for name in registry:
            assert registry.get(name).name == name
