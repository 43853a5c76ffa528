"""Errors shared by every layer (kept apart so that no lower layer imports a higher one)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A run-config key is unknown, has the wrong type, or an invalid value."""
