"""docs/configuration.md is generated from the code (fedkd/experiments/configdoc.py) and kept
up to date; every run-config key and every registry entry has a doc line."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from fedkd.experiments import configdoc

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_md_is_up_to_date() -> None:
    path = ROOT / "docs" / "configuration.md"
    current = path.read_text() if path.is_file() else ""
    assert current == configdoc.render(), (
        f"docs/configuration.md is out of date; regenerate it: {configdoc.COMMAND}")


def test_every_key_has_a_doc_line_in_pyproject() -> None:
    missing = [k.key for k in configdoc.key_docs() if not k.doc]
    assert not missing, ("run-config keys without a doc line; add a comment beside each in "
                         f"pyproject.toml's [tool.flwr.app.config]: {', '.join(missing)}")


def test_every_registry_is_documented_with_a_line_per_entry() -> None:
    # Every module-level Registry(...) in fedkd, found in the source: a new registry fails here
    # until configdoc.REGISTRIES lists it.
    documented = [doc.load() for doc in configdoc.REGISTRIES]
    for path in (ROOT / "fedkd").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for name in re.findall(r"^([A-Z_]+)\s*(?::[^=\n]+)?=\s*Registry\(", path.read_text(), re.M):
            registry = getattr(importlib.import_module(module), name)
            assert any(registry is d for d in documented), f"{module}.{name}: not in REGISTRIES"
    keys = {k.key for k in configdoc.key_docs()}
    for doc in configdoc.REGISTRIES:
        assert set(doc.keys) <= keys, f"{doc.title}: {doc.keys} are not all run-config keys"
        rows = configdoc.registry_rows(doc)
        assert rows and all(row["summary"] for row in rows), f"{doc.title}: an entry has no doc"


def test_pyproject_comments_continue_below_a_key_and_skip_quoted_hashes(tmp_path: Path) -> None:
    toml = tmp_path / "pyproject.toml"
    toml.write_text(
        "[tool.other]\nx = 1  # not ours\n"
        "[tool.flwr.app.config]\n"
        'algorithm = "a#b"     # the # inside the string is not a comment\n'
        "seed = 0\n"
        "# a comment of the table, not of seed\n"
        "[tool.flwr.app.config.train]\n"
        "model = 'cnn'  # first line;\n"
        "               # second line\n"
        "\n"
        "               # after a blank line: nobody's\n"
        "steps = 3 # three\n")
    assert configdoc.pyproject_comments(toml) == {
        "algorithm": "the # inside the string is not a comment", "seed": "",
        "train.model": "first line; second line", "train.steps": "three"}


def test_the_command_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert configdoc.main(["--check", str(out)]) == 1
    assert configdoc.main(["--write", str(out)]) == 0
    assert configdoc.main(["--check", str(out)]) == 0
