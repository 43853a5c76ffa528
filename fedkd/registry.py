"""One small name -> object registry, used for algorithms, aggregation rules, models and datasets.

A registry maps a user-facing name (as written in the run config) to a class or factory. Looking
up an unknown name raises :class:`UnknownNameError`, which lists every valid name, so a typo in a
config file gives an error that says how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """Raised when a name is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from names to objects, filled with the :meth:`register` decorator.

    Parameters
    ----------
    kind
        What the registry holds (``"model"``, ``"algorithm"``...), used in error messages.
    on_register
        Called with ``(name, obj)`` before an entry is added (the algorithm and rule registries
        register the entry's own config section this way).

    Examples
    --------
    >>> MODELS: Registry[type] = Registry("model")
    >>> @MODELS.register("mlp")
    ... class MLP: ...
    >>> MODELS.get("mlp") is MLP
    True
    """

    def __init__(self, kind: str, on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._on_register = on_register

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``.

        A class that declares a ``name`` (``name: ClassVar[str]``, as algorithms, aggregation
        rules and synthesis methods do) gets ``name`` set to the registered name: a plugin
        states its name once, in the decorator. A class that sets its own ``name`` must set
        the same one (``ValueError`` otherwise).
        """

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            _set_name(self.kind, name, obj)
            if self._on_register is not None:  # e.g. register the entry's config section
                self._on_register(name, obj)
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises
        ------
        UnknownNameError
            If ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError as err:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {valid}"
            ) from err

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _set_name(kind: str, name: str, obj: object) -> None:
    """Set the class attribute ``name`` of a registered class that declares one (annotated, as
    ``name: ClassVar[str]``, or assigned a string, here or in a base)."""
    if not isinstance(obj, type):
        return
    bases = [c for c in obj.__mro__ if c is not object]
    if not any("name" in vars(c) or "name" in vars(c).get("__annotations__", {}) for c in bases):
        return
    inherited = next((vars(c)["name"] for c in bases if "name" in vars(c)), None)
    if inherited is not None and not isinstance(inherited, str):
        return  # a property or method called name: not a registered name
    own = vars(obj).get("name")
    if own is not None and own != name:
        raise ValueError(f"{kind} {obj.__qualname__} says name = {own!r} but is registered as "
                         f"{name!r}; drop its name attribute (registering sets it)")
    obj.name = name  # type: ignore[attr-defined]


def import_submodules(package: str) -> list[str]:
    """Import every module of ``package`` (a package scan), so that each registers itself.

    A new algorithm or rule is one new file: nothing lists it. Modules whose name starts with
    ``_`` are skipped. Returns the imported module names.
    """
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    names = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
            names.append(info.name)
    return names
