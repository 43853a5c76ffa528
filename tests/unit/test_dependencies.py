"""Every third-party package the shipped code imports is declared in pyproject.toml.

The code under ``fedkd/``, ``server/`` and ``client/`` is parsed with :mod:`ast` (nothing is
imported), so lazy imports inside functions count as much as top-level ones. Each absolute
import's top-level module name is mapped to the distribution that provides it (``PIL`` ->
``pillow``, ``sklearn`` -> ``scikit-learn``) and must appear in ``[project].dependencies``,
where every requirement also carries a version bound.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The directories whose code is shipped and must import only declared packages.
SOURCE_DIRS = ("fedkd", "server", "client")

#: The project's own top-level packages: imports of them are not third-party.
OWN_PACKAGES = frozenset({"fedkd", "server", "client", "simulations", "benchmarks", "tests"})

#: A declared requirement must carry one of these version operators.
BOUND_OPERATORS = ("==", ">=", "~=")

#: ``name [extras] specifiers ; markers`` (PEP 508, without URL requirements).
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[^;]*?)\s*(?:;.*)?$")


def normalise(name: str) -> str:
    """Normalise a distribution name as PEP 503 does.

    Parameters
    ----------
    name : str
        A distribution name as written anywhere (``tomli_w``, ``Pillow``, ``dp.accounting``).

    Returns
    -------
    str
        The name lower-cased, with every run of ``-``, ``_`` and ``.`` replaced by ``-``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(requirement: str) -> tuple[str, str]:
    """Split a requirement string into its normalised name and its version specifiers.

    Parameters
    ----------
    requirement : str
        A PEP 508 requirement such as ``"flwr[simulation]==1.42.0"``.

    Returns
    -------
    tuple of (str, str)
        The PEP 503 name without extras, and the specifier part (empty when unbounded);
        environment markers are dropped.

    Raises
    ------
    ValueError
        When the string is not a requirement this parser understands.
    """
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return normalise(match["name"]), match["spec"].strip()


def declared_requirements(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """Read ``[project].dependencies`` from a pyproject file.

    Parameters
    ----------
    pyproject : Path, optional
        The file to read; the repository's own by default.

    Returns
    -------
    dict of str to str
        Each declared distribution's PEP 503 name mapped to its version specifiers.
    """
    with pyproject.open("rb") as handle:
        project = tomllib.load(handle)["project"]
    return dict(parse_requirement(r) for r in project.get("dependencies", []))


def imported_modules(source: str, filename: str = "<string>") -> set[str]:
    """Collect the top-level module names of every absolute import in some source code.

    Parameters
    ----------
    source : str
        Python source code.
    filename : str, optional
        Used in syntax error messages.

    Returns
    -------
    set of str
        The first dotted component of each ``import a.b`` and ``from a.b import c`` anywhere
        in the tree (inside functions, classes and ``try`` blocks too); relative imports
        (``from . import x``) are left out.
    """
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.partition(".")[0])
    return modules


def source_files(dirs: Iterable[str] = SOURCE_DIRS) -> list[Path]:
    """List the Python files of the shipped code.

    Parameters
    ----------
    dirs : iterable of str, optional
        Directories relative to the repository root.

    Returns
    -------
    list of Path
        Every ``*.py`` file below them, sorted.
    """
    return sorted(path for d in dirs for path in (ROOT / d).rglob("*.py"))


@functools.cache
def third_party_imports() -> dict[str, tuple[str, ...]]:
    """Map each third-party module the shipped code imports to the files importing it.

    Returns
    -------
    dict of str to tuple of str
        Top-level module name -> repository-relative paths of the files that import it;
        standard-library modules and the project's own packages are left out.
    """
    found: dict[str, set[str]] = {}
    for path in source_files():
        for module in imported_modules(path.read_text(encoding="utf-8"), str(path)):
            if module in sys.stdlib_module_names or module in OWN_PACKAGES:
                continue
            found.setdefault(module, set()).add(path.relative_to(ROOT).as_posix())
    return {module: tuple(sorted(files)) for module, files in sorted(found.items())}


@functools.cache
def module_distributions() -> dict[str, tuple[str, ...]]:
    """Map installed top-level module names to the PEP 503 names of their distributions.

    Returns
    -------
    dict of str to tuple of str
        From :func:`importlib.metadata.packages_distributions`, names normalised.
    """
    return {module: tuple(sorted({normalise(d) for d in dists}))
            for module, dists in importlib.metadata.packages_distributions().items()}


def test_the_scanner_sees_lazy_and_nested_imports_but_not_relative_ones() -> None:
    """The AST scan finds imports wherever they sit, and only absolute ones."""
    source = (
        "import os.path, numpy as np\n"
        "from PIL import Image\n"
        "from . import sibling\n"
        "from .sub import thing\n"
        "def plot():\n"
        "    import matplotlib.pyplot as plt\n"
        "    class Inner:\n"
        "        from scipy.special import expit\n"
        "try:\n"
        "    import tomli_w\n"
        "except ImportError:\n"
        "    pass\n"
    )
    assert imported_modules(source) == {"os", "numpy", "PIL", "matplotlib", "scipy", "tomli_w"}


@pytest.mark.parametrize(("requirement", "expected"), [
    ("flwr[simulation]==1.42.0", ("flwr", "==1.42.0")),
    ("tomli_w >= 1.2", ("tomli-w", ">= 1.2")),
    ("Pillow>=13.0; python_version >= '3.11'", ("pillow", ">=13.0")),
    ("dp.accounting", ("dp-accounting", "")),
])
def test_requirements_parse_to_normalised_names(requirement: str,
                                                expected: tuple[str, str]) -> None:
    """Extras, markers and spelling variants do not hide a requirement's name."""
    assert parse_requirement(requirement) == expected


def test_the_shipped_code_imports_third_party_packages() -> None:
    """Guard against a scan that silently finds nothing (wrong root, wrong directories)."""
    imports = third_party_imports()
    assert {"numpy", "torch", "flwr"} <= set(imports), sorted(imports)


def test_every_imported_package_is_a_declared_dependency() -> None:
    """Each third-party import resolves to a distribution listed in [project].dependencies."""
    declared = set(declared_requirements())
    distributions = module_distributions()
    problems = []
    for module, files in third_party_imports().items():
        where = ", ".join(files)
        providers = distributions.get(module)
        if not providers:
            problems.append(f"{module!r} (imported by {where}) is not provided by any "
                            f"installed distribution")
        elif not declared.intersection(providers):
            problems.append(f"distribution {' or '.join(providers)!r} (module {module!r}, "
                            f"imported by {where}) is missing from [project].dependencies")
    assert not problems, "undeclared third-party imports:\n  " + "\n  ".join(problems)


def test_every_declared_dependency_has_a_version_bound() -> None:
    """No requirement in [project].dependencies is left unbounded."""
    unbounded = [name for name, spec in declared_requirements().items()
                 if not any(op in spec for op in BOUND_OPERATORS)]
    assert not unbounded, (f"dependencies without a version bound ({', '.join(BOUND_OPERATORS)}): "
                           f"{unbounded}")
