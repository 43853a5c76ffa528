"""The algorithm registry (kept apart from ``__init__`` so algorithm modules can import it)."""

from __future__ import annotations

from fedkd.registry import Registry

ALGORITHMS: Registry[type] = Registry("algorithm")
