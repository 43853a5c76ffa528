"""Which client a node is: the stable id the server samples, addresses and records it by.

Light on purpose (no torch, no fedkd): :mod:`client.entry` answers the server's ``identify``
phase with it before anything else is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def stable_client_id(node_config: Mapping[str, Any]) -> int | None:
    """The client id this node answers for, from its node config: ``partition-id`` (a
    simulation, or a SuperNode given a partition of the run's dataset), else ``client-id`` (a
    device's own, an integer >= 0); ``None`` when it has neither (the server then addresses it
    by its Flower node id, which is stable only while the SuperLink keeps its database and the
    SuperNode its authentication key)."""
    for key in ("partition-id", "client-id"):
        if key in node_config:
            value = node_config[key]
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = -1
            if isinstance(value, bool) or number < 0 or float(number) != float(value):
                raise ValueError(f"node config {key}={value!r}: must be an integer >= 0")
            return number
    return None


def client_id(node_config: Mapping[str, Any], node_id: int) -> int:
    """The id the server addresses this node's client by (:func:`stable_client_id`, else the
    Flower node id)."""
    stable = stable_client_id(node_config)
    return node_id if stable is None else stable
