"""``docs/configuration.md``, generated from the code: every run-config key and every registry.

The reference is built from what the code registers, so it cannot drift from it:

* the keys, their types and defaults come from the config sections (the core sections of
  :class:`fedkd.config.RunConfig` and every plugin section in :data:`fedkd.config.SECTIONS`,
  once every plugin is loaded);
* each key's doc line is the comment beside it in ``pyproject.toml``'s
  ``[tool.flwr.app.config]`` (comment lines right below a key continue it): the one place a key
  is documented, next to its default, where a user reads and edits it;
* the algorithms, aggregation rules, models, datasets, losses and the other named choices come
  from their registries, each entry described by the first paragraph of its docstring.

``python -m fedkd.experiments.configdoc --write docs/configuration.md`` rewrites the file;
``--check`` exits 1 when it is out of date; without either it prints the document.
``tests/unit/test_configdoc.py`` fails when the file is out of date or a key has no doc line.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkd.config import SECTIONS, RunConfig, toml_value
from fedkd.registry import Registry

__all__ = ["REGISTRIES", "ROOT", "RegistryDoc", "key_docs", "pyproject_comments", "render",
           "main"]

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DOC = ROOT / "docs" / "configuration.md"
COMMAND = "python -m fedkd.experiments.configdoc --write docs/configuration.md"
_TABLE = "tool.flwr.app.config"


# --------------------------------------------------------------------------------------------
# doc lines: pyproject.toml's comments
# --------------------------------------------------------------------------------------------


def pyproject_comments(path: Path | str = PYPROJECT) -> dict[str, str]:
    """Each flat key of ``[tool.flwr.app.config]`` -> the comment beside it ('' when none).

    A comment-only line indented below a key continues that key's comment; a blank line, a
    table header or a comment at the start of a line ends it.
    """
    docs: dict[str, str] = {}
    table: str | None = None
    last: str | None = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            header = line[1:line.index("]")].strip()
            table = (header[len(_TABLE) + 1:] if header.startswith(_TABLE + ".") else
                     "" if header == _TABLE else None)
            last = None
        elif table is None or not line:
            last = None
        elif line.startswith("#"):
            if raw[0].isspace() and last is not None:
                docs[last] = f"{docs[last]} {line[1:].strip()}".strip()
            else:
                last = None
        else:
            key, _, rest = line.partition("=")
            last = f"{table}.{key.strip()}" if table else key.strip()
            docs[last] = _comment(rest)
    return docs


def _comment(rest: str) -> str:
    """The comment after a TOML value (a ``#`` inside a quoted string is not one)."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            if char == "\\" and quote == '"':
                continue
            if char == quote and rest[i - 1] != "\\":
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return rest[i + 1:].strip()
    return ""


# --------------------------------------------------------------------------------------------
# the keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    """One run-config key: its dotted name, type, default (TOML) and doc line."""

    key: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class SectionDoc:
    """One section: its path (``""`` for the top-level keys), its dataclass, who owns it."""

    path: str
    cls: type
    owner: str
    keys: tuple[KeyDoc, ...]


def _load() -> None:
    from fedkd.compose import load_plugins

    load_plugins()
    for module in _REGISTRY_MODULES:
        __import__(module)


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)  # Sphinx roles as plain code
    return text[:-1] + "." if text.endswith(":") else text  # a paragraph that leads to a formula


def _file(obj: Any) -> str:
    module = sys.modules[obj.__module__]
    try:
        return Path(module.__file__ or "").resolve().relative_to(ROOT).as_posix()
    except ValueError:  # a plugin from another package
        return obj.__module__


def _fields(cls: type, path: str, docs: dict[str, str]) -> tuple[KeyDoc, ...]:
    hints = typing.get_type_hints(cls)
    defaults = cls()
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name == "sections" or dataclasses.is_dataclass(tp):
            continue
        key = f"{path}.{f.name.replace('_', '-')}" if path else f.name.replace("_", "-")
        out.append(KeyDoc(key, tp.__name__, toml_value(getattr(defaults, f.name)),
                          docs.get(key, "")))
    return tuple(out)


def _owner(path: str, cls: type) -> str:
    from fedkd.aggregation import AGGREGATORS
    from fedkd.algorithms import ALGORITHMS

    rules = [n for n in AGGREGATORS if AGGREGATORS.get(n).Options is cls]
    if rules:
        return f"the options of the `{rules[0]}` rule"
    algorithms = [n for n in ALGORITHMS
                  if getattr(ALGORITHMS.get(n), "config_sections", {}).get(path) is cls]
    if algorithms:
        return "declared by " + ", ".join(f"`{a}`" for a in algorithms)
    return "core"


def sections(pyproject: Path | str = PYPROJECT) -> list[SectionDoc]:
    """Every config section, core then plugin ones, with its keys (plugins loaded)."""
    _load()
    docs = pyproject_comments(pyproject)
    hints = typing.get_type_hints(RunConfig)
    out = [SectionDoc("", RunConfig, "core", _fields(RunConfig, "", docs))]
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            path = f.name.replace("_", "-")
            out.append(SectionDoc(path, hints[f.name], "core", _fields(hints[f.name], path, docs)))
    for path in sorted(SECTIONS):
        cls = SECTIONS[path]
        out.append(SectionDoc(path, cls, _owner(path, cls), _fields(cls, path, docs)))
    return out


def key_docs(pyproject: Path | str = PYPROJECT) -> list[KeyDoc]:
    """Every run-config key, in document order."""
    return [key for section in sections(pyproject) for key in section.keys]


# --------------------------------------------------------------------------------------------
# the registries
# --------------------------------------------------------------------------------------------


def _algorithm_columns(cls: Any) -> dict[str, str]:
    return {"sections": ", ".join(f"`{p}`" for p in getattr(cls, "config_sections", {})),
            "uploads weights": _yes(cls.shares_weights),
            "secure aggregation": _yes(cls.SECURE_AGGREGATION)}


_RULE_CAPABILITIES = ("uses_weights", "requires_weights", "needs_counts", "needs_logits",
                      "sum_decomposable", "randomized", "client_level_privacy",
                      "data_dependent_privacy")


def _rule_columns(cls: Any) -> dict[str, str]:
    options = ([f"`{f.name.replace('_', '-')}`" for f in dataclasses.fields(cls.Options)]
               if cls.Options is not None else [])
    return {"options": ", ".join(options),
            "capabilities": ", ".join(c for c in _RULE_CAPABILITIES if getattr(cls, c))}


def _dataset_columns(source: Any) -> dict[str, str]:
    return {"classes": str(source.num_classes),
            "input shape": "x".join(map(str, source.input_shape)),
            "default data dir": f"`{source.default_data_dir}`" if source.default_data_dir else
            "(embedded)"}


def _synthesis_columns(cls: Any) -> dict[str, str]:
    return {"reads the data": _yes(cls.reads_data)}


def _yes(flag: bool) -> str:
    return "yes" if flag else ""


@dataclass(frozen=True)
class RegistryDoc:
    """How one registry is documented: its title, where it lives, the key that picks an entry,
    and the extra columns of an entry (``describe``: the object -> column -> text)."""

    title: str
    registry: str  # "module:NAME"
    keys: tuple[str, ...]
    describe: Callable[[Any], dict[str, str]] | None = None
    summary: Callable[[Any], str] = _summary

    def load(self) -> Registry[Any]:
        module, name = self.registry.split(":")
        return getattr(__import__(module, fromlist=[name]), name)


#: Every registry of fedkd, as documented; a test checks that none is missing.
REGISTRIES: tuple[RegistryDoc, ...] = (
    RegistryDoc("Algorithms", "fedkd.algorithms:ALGORITHMS", ("algorithm",), _algorithm_columns),
    RegistryDoc("Aggregation rules", "fedkd.aggregation:AGGREGATORS", ("aggregation.rule",),
                _rule_columns),
    RegistryDoc("Models", "fedkd.models:MODELS", ("train.model", "train.client-models")),
    RegistryDoc("Datasets", "fedkd.data.datasets:DATASETS", ("data.dataset",), _dataset_columns,
                summary=lambda source: _summary(source.load)),
    RegistryDoc("Distillation losses", "fedkd.losses:DISTILLATION_LOSSES", ("distill.loss",)),
    RegistryDoc("Synthesis methods", "fedkd.synthesis:SYNTHESIZERS", ("synthesis.method",),
                _synthesis_columns),
    RegistryDoc("Input generators", "fedkd.models.generators:INPUT_GENERATORS",
                ("fedgen-logits.input-generator",)),
    RegistryDoc("Server accountants", "fedkd.privacy.accounting:ACCOUNTANTS",
                ("privacy.server-accountant",)),
    RegistryDoc("Attacks", "fedkd.attacks:ATTACKS", ("attack.mode",)),
)

_REGISTRY_MODULES = tuple(doc.registry.split(":")[0] for doc in REGISTRIES)


def registry_rows(doc: RegistryDoc) -> list[dict[str, str]]:
    """One row per entry of ``doc``'s registry: name, summary, extra columns, file."""
    registry = doc.load()
    rows = []
    for name in registry:
        obj = registry.get(name)
        row = {"name": f"`{name}`", "summary": doc.summary(obj)}
        row.update(doc.describe(obj) if doc.describe else {})
        target = obj.load if doc.title == "Datasets" else obj
        row["file"] = f"`{_file(target)}`"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------


_HEAD = f"""# Configuration reference

<!-- Generated: do not edit by hand. Regenerate with {COMMAND} -->

Generated from the code (regenerate it with `{COMMAND}`;
`tests/unit/test_configdoc.py` fails when it is out of date): the keys, types and defaults from
the registered config sections, each key's doc line from the comment beside it in
`pyproject.toml`, the named choices from their registries.

Every key has its default in `pyproject.toml`'s `[tool.flwr.app.config]` (Flower rejects a key
that is not there). Set one for a run with `--set KEY=VALUE` (`python -m simulations.run`,
`python -m fedkd simulate`) or `flwr run --run-config`; values are TOML, so strings are quoted
(`--set 'train.model="mlp"'`). A wrong key, type or value, or an unknown name, is refused before
anything starts, with the valid choices.

A plugin owns its section: an algorithm declares it (`config_sections`), a rule's options are
its `Options` dataclass (section `aggregation.<rule>`). A new algorithm or rule is one file in
`fedkd/algorithms/` or `fedkd/aggregation/` plus its section in `pyproject.toml`; this file is
then regenerated.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render(pyproject: Path | str = PYPROJECT) -> str:
    """The whole document."""
    out = [_HEAD, "## Contents", ""]
    secs = sections(pyproject)
    out += ["- [Run-config keys](#run-config-keys): "
            + ", ".join(f"`{s.path or 'top level'}`" for s in secs)]
    out += [f"- [{doc.title}](#{doc.title.lower().replace(' ', '-')})" for doc in REGISTRIES]
    out += ["", "## Run-config keys", ""]
    for section in secs:
        title = f"`{section.path}`" if section.path else "Top level"
        cls = section.cls
        out += [f"### {title}", "",
                f"{_summary(cls)} `{cls.__name__}` in `{_file(cls)}`"
                + ("" if section.owner == "core" else f"; {section.owner}") + ".", ""]
        out += _table(["key", "type", "default", "description"],
                      [(f"`{k.key}`", k.type, f"`{k.default}`", k.doc) for k in section.keys])
        out.append("")
    for doc in REGISTRIES:
        rows = registry_rows(doc)
        header = list(rows[0]) if rows else ["name", "summary", "file"]
        chosen = " and ".join(f"`{key}`" for key in doc.keys)
        out += [f"## {doc.title}", "", f"Chosen by {chosen}.", ""]
        out += _table([h if h != "summary" else "description" for h in header],
                      [[row[h] for h in header] for row in rows])
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedkd.experiments.configdoc",
                                     description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="PATH", help="write the document to PATH")
    group.add_argument("--check", type=Path, metavar="PATH",
                       help="exit 1 if PATH differs from the generated document")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"wrote {args.write}")
    elif args.check:
        if not args.check.is_file() or args.check.read_text() != text:
            print(f"{args.check} is out of date; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
