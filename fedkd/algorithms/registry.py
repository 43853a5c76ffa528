"""The algorithm registry (kept apart from ``__init__`` so algorithm modules can import it).

Registering an algorithm also registers the config sections it owns (``config_sections``).
"""

from __future__ import annotations

from fedkd.config import register_section
from fedkd.registry import Registry


def _register_sections(name: str, cls: type) -> None:
    for path, section in getattr(cls, "config_sections", {}).items():
        register_section(path, section)


ALGORITHMS: Registry[type] = Registry("algorithm", _register_sections)
