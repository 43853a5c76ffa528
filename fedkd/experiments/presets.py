"""Experiment presets, resource profiles and ``KEY=VALUE`` overrides: what a run is made of.

A *preset* is a TOML file of run-config overrides in ``simulations/configs/`` (the keys of
``[tool.flwr.app.config]`` in pyproject.toml, with TOML tables for the sections); the same file
works with ``flwr run . <connection> --run-config simulations/configs/<preset>.toml``. A
*profile* (``simulations/configs/profiles/``) holds the simulation's federation config (the CPU
and GPU share of each simulated client) and, in an optional ``[run-config]`` table, run-config
keys that go with it (such as the device clients train on).

Nothing here validates a whole configuration: :func:`fedkd.experiments.runner.resolve_config`
does, through :func:`fedkd.compose.build_config`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkd.config import Scalar, flatten_table
from fedkd.errors import ConfigError

#: The checkout: the Flower app that ``flwr run`` submits (pyproject.toml, server/, client/).
APP_DIR = Path(__file__).resolve().parents[2]
PRESET_DIR = APP_DIR / "simulations" / "configs"
PROFILE_DIR = PRESET_DIR / "profiles"


class CliError(Exception):
    """A mistake on the command line or in a preset: printed as ``error: ...``, exit status 2."""


def _load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise CliError(f"{what} {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise CliError(f"cannot read {what} {path}: {err.strerror or err}") from None


def describe(path: Path) -> str:
    """The first comment line of a preset or profile file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


@dataclass(frozen=True)
class Preset:
    """One experiment: a name and its flat run-config overrides."""

    name: str
    path: Path
    values: dict[str, Scalar]

    @property
    def description(self) -> str:
        return describe(self.path)


def preset_names() -> list[str]:
    """The presets in ``simulations/configs/``, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def profile_names() -> list[str]:
    """The profiles in ``simulations/configs/profiles/``, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_preset(spec: str) -> Preset:
    """A preset by name (``fd-fmnist-dir0.1``) or by the path of a TOML file."""
    path = Path(spec).expanduser()
    if path.suffix == ".toml" or os.sep in spec:
        if not path.is_file():
            raise CliError(f"preset file {spec} not found")
        name = path.stem
    else:
        path = PRESET_DIR / f"{spec}.toml"
        if not path.is_file():
            raise CliError(
                f"unknown preset {spec!r}; valid names: {', '.join(preset_names())} "
                "(or the path of a .toml file of run-config overrides; `fedkd presets` describes them)"
            )
        name = spec
    return Preset(name=name, path=path.resolve(), values=flatten_table(_load_toml(path, "preset")))


@dataclass(frozen=True)
class Profile:
    """Simulation resources: flat federation-config keys, plus optional run-config overrides (a
    ``[run-config]`` table, e.g. the device clients train on) applied before ``--set``."""

    name: str
    federation: dict[str, Scalar]
    run_config: dict[str, Scalar]


def load_profile(spec: str) -> Profile:
    """A profile by name (``cpu``, ``gpu``) or by the path of a TOML file."""
    path = Path(spec).expanduser()
    if path.suffix != ".toml" and os.sep not in spec:
        path = PROFILE_DIR / f"{spec}.toml"
        if not path.is_file():
            raise CliError(f"unknown profile {spec!r}; valid names: {', '.join(profile_names())} "
                           "(or the path of a .toml file of federation-config keys)")
    elif not path.is_file():
        raise CliError(f"profile file {spec} not found")
    values = _load_toml(path, "profile")
    run_config = values.pop("run-config", {})
    nested = [k for k, v in values.items() if isinstance(v, Mapping)]
    if nested or not isinstance(run_config, Mapping):
        raise CliError(f"profile {path}: federation-config keys are flat, and the only table is "
                       f"[run-config]; found {nested or ['run-config']}")
    return Profile(path.stem, values, flatten_table(run_config))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Scalar]:
    """``KEY=VALUE`` pairs with TOML values (``data.alpha=0.1``, ``train.model="mlp"``).

    Raises :class:`fedkd.errors.ConfigError` for a pair that is not ``KEY=VALUE`` or whose value
    is not TOML.
    """
    out: dict[str, Scalar] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {pair!r} is not key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"override {pair!r}: value is not TOML (quote strings: {key.strip()}=\"text\")"
            ) from None
    return out


def parse_sets(pairs: Sequence[str]) -> dict[str, Scalar]:
    """:func:`parse_overrides` for the command line: a bad pair is a :class:`CliError`."""
    try:
        return parse_overrides(pairs)
    except ConfigError as err:
        raise CliError(str(err)) from None
