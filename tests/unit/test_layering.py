"""The layering stated in fedkd/compose.py (:data:`fedkd.compose.LAYERS`) is the one the imports have.

Statically, every import of every module of fedkd/, server/ and client/ (the lazy ones inside
functions and ``importlib.import_module("...")`` included) goes to the module's own entry or to an
earlier layer; and at run time each entry, imported alone in a fresh interpreter, loads nothing
of its own layer's other entries or of a later layer (so no import cycle either). A few modules
must also stay light: they must not load the libraries named in :data:`LIGHT`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest

from fedkd import compose
from fedkd.compose import LAYERS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedkd", "server", "client")
ENTRIES = [name for names, _ in LAYERS for name in names]

#: Libraries (and modules) a module must not load, imported alone, beyond the layering.
LIGHT = {
    "fedkd.config": ("torch",),
    "fedkd.aggregation": ("torch",),
    "fedkd.secagg": ("torch", "dp_accounting"),
    # A deployed client starts one process per message: with DP off it must not pay for the DP
    # libraries (dp_accounting and scipy: about 1 s; opacus) or the experiment tooling.
    "client.app": ("dp_accounting", "scipy", "opacus", "fedkd.experiments", "sklearn"),
    # The ClientApp component itself stays light: torch and the app load in the warm worker,
    # or on a node's first message (client/entry.py).
    "client.entry": ("torch", "fedkd.algorithms", "client.app"),
}


def render(layers: tuple[tuple[tuple[str, ...], str], ...]) -> str:
    """The layers as compose.py's docstring states them: one numbered item per layer."""
    lines = []
    for number, (names, what) in enumerate(layers, 1):
        entries = ", ".join(f"``{name.removeprefix('fedkd.')}``" for name in names)
        lines += textwrap.wrap(f"{number}. {entries}: {what}", width=99, subsequent_indent="   ",
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def entry_of(module: str) -> str | None:
    """The longest entry of :data:`LAYERS` that ``module`` is or lies in."""
    hits = [e for e in ENTRIES if module == e or module.startswith(e + ".")]
    return max(hits, key=len) if hits else None


def layer_of(entry: str) -> int:
    return next(i for i, (names, _) in enumerate(LAYERS) if entry in names)


@cache
def modules() -> dict[str, Path]:
    """Every module of fedkd/, server/ and client/ by its dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of fedkd, server or client in a module, wherever it is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports a.b when b is a module, else a name of a
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base
                     for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and "import_module" in (getattr(node.func, "attr", None), getattr(node.func, "id", None))):
            names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return sorted(set(found))


def test_compose_docstring_states_the_layers() -> None:
    assert render(LAYERS) in (compose.__doc__ or ""), (
        "fedkd/compose.py's docstring must state LAYERS as rendered here:\n" + render(LAYERS))


def test_every_module_has_a_layer_and_every_entry_exists() -> None:
    unplaced = [m for m in modules() if m != "fedkd" and entry_of(m) is None]
    assert not unplaced, f"modules in no layer of fedkd.compose.LAYERS: {unplaced}"
    missing = [e for e in ENTRIES if e not in modules()]
    assert not missing, f"LAYERS names modules that do not exist: {missing}"
    assert len(set(ENTRIES)) == len(ENTRIES)
    # The package's own __init__ sits below every layer: it imports nothing of fedkd.
    assert imported("fedkd", modules()["fedkd"]) == []


def test_every_import_goes_to_its_own_entry_or_an_earlier_layer() -> None:
    wrong = []
    for module, path in modules().items():
        if module == "fedkd":
            continue
        own = entry_of(module)
        assert own is not None
        for line, target in imported(module, path):
            entry = entry_of(target)
            if target == "fedkd" or entry == own:
                continue
            if entry is None or layer_of(entry) >= layer_of(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {layer_of(own) + 1}) "
                             f"imports {target} (layer "
                             f"{'none' if entry is None else layer_of(entry) + 1})")
    assert not wrong, "imports against fedkd.compose.LAYERS:\n" + "\n".join(wrong)


def test_the_checks_see_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("import os\nfrom fedkd.runtime import trace\n\ndef f():\n"
                      "    from client.warm import stop_workers\n"
                      "    importlib.import_module('fedkd.algorithms')\n")
    assert imported("fedkd.runtime.x", source) == [
        (2, "fedkd.runtime.trace"), (5, "client.warm"), (6, "fedkd.algorithms")]
    assert entry_of("fedkd.runtime.deploy") == "fedkd.runtime.deploy"
    assert entry_of("fedkd.runtime.trace") == "fedkd.runtime"
    assert entry_of("fedkd.algorithms.selective_fd_selectors") == "fedkd.algorithms"


def _alone(entry: str) -> list[str]:
    """The modules an entry, or one module, is imported as when imported alone."""
    if entry in LIGHT:
        return [entry]
    return [m for m in modules() if entry_of(m) == entry and m != "fedkd.__main__"]


@pytest.mark.parametrize("entry", sorted(set(ENTRIES + list(LIGHT)) - {"fedkd.__main__"}))
def test_an_entry_imported_alone_loads_only_earlier_layers(entry: str) -> None:
    own = entry_of(entry)
    assert own is not None
    allowed = {e for e in ENTRIES if e == own or layer_of(e) < layer_of(own)}
    code = (
        "import sys\n"
        f"for m in {_alone(entry)!r}: __import__(m)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES!r})))\n"
        f"print(','.join(m for m in {LIGHT.get(entry, ())!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]  # an import cycle fails here
    loaded, heavy = (out.stdout.splitlines() + ["", ""])[:2]
    above = [m for m in loaded.split(",") if m and m != "fedkd" and entry_of(m) not in allowed]
    assert not above, f"{entry} (layer {layer_of(own) + 1}) loads {above}"
    assert heavy == "", f"{entry} loads {heavy}"
