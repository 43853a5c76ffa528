"""The package has layers, and no lower layer imports a higher one (no import cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Each module, imported alone in a fresh interpreter, must not pull in the higher layers.
LAYERS = {
    "fedkd.errors": ("fedkd.config", "fedkd.algorithms", "fedkd.aggregation", "fedkd.compose"),
    "fedkd.registry": ("fedkd.config", "fedkd.algorithms", "fedkd.aggregation", "fedkd.compose"),
    # The shared validators sit beside the errors: nothing of fedkd but fedkd.errors, no numpy.
    "fedkd.validate": ("fedkd.registry", "fedkd.config", "fedkd.data", "fedkd.models",
                       "fedkd.losses", "fedkd.algorithms", "fedkd.aggregation", "numpy", "torch"),
    "fedkd.config": ("fedkd.algorithms", "fedkd.aggregation", "fedkd.privacy", "fedkd.compose",
                     "fedkd.training", "torch"),
    "fedkd.aggregation": ("fedkd.algorithms", "fedkd.compose", "fedkd.training", "torch"),
    "fedkd.privacy.dpsgd": ("fedkd.algorithms", "fedkd.compose", "fedkd.aggregation"),
    "fedkd.training": ("fedkd.algorithms", "fedkd.compose", "fedkd.aggregation", "fedkd.config"),
    "fedkd.protocol": ("fedkd.algorithms", "fedkd.compose", "fedkd.config"),
    "fedkd.secagg": ("fedkd.algorithms", "fedkd.compose", "fedkd.training", "torch",
                     "dp_accounting"),
    "fedkd.algorithms": ("fedkd.compose", "fedkd.experiments", "server", "client"),
    "fedkd.compose": ("fedkd.experiments", "server", "client"),
    # A deployed client starts one process per message: with DP off it must not pay for the DP
    # libraries (dp_accounting and scipy: about 1 s; opacus) or the experiment tooling.
    "client.app": ("dp_accounting", "scipy", "opacus", "fedkd.experiments", "sklearn"),
    # The ClientApp component itself stays light: torch and the app load in the warm worker,
    # or on a node's first message (client/entry.py).
    "client.entry": ("torch", "fedkd.algorithms", "client.app"),
}


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_a_module_imports_alone_without_higher_layers(module: str) -> None:
    forbidden = LAYERS[module]
    code = (f"import sys; import {module}; "
            f"print(','.join(m for m in {forbidden!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_every_package_imports_alone() -> None:
    # An import cycle shows up as an ImportError (partially initialised module) when a package
    # is the first thing imported.
    for package in ("fedkd.aggregation", "fedkd.algorithms", "fedkd.privacy", "fedkd.data",
                    "fedkd.models", "fedkd.experiments", "fedkd.compose", "server.app", "client.app"):
        out = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{package}: {out.stderr[-2000:]}"
