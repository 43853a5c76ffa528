"""A performance fix for Flower 1.42's simulation engine, applied by the ServerApp.

Flower's simulation engine (``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``)
asks its in-memory link state, every 0.1 s, for the next message of *every* simulated node, and
``InMemoryLinkState.get_message_ins`` answers each of those questions by checking *every*
stored message (expiry, federation membership) before looking at its destination. With N nodes
and M messages in flight that is N x M checks ten times a second: with 100 nodes and 100
messages the engine's thread took 40 % of the simulation process's CPU in our profile (and it
holds the GIL the ServerApp needs); with 1,000 nodes it would take all of it.

:func:`patch_simulation_engine` replaces that one method with one that keeps an index of the
stored messages by destination node (rebuilt only after a message was stored or actually
deleted: Flower calls ``delete_messages`` with an empty set for every message it checks, which
must not invalidate the index) and
checks only the node's own messages, with the same checks, in the same order, marking them
delivered the same way. What differs: an expired message for another node is deleted when
that node is polled (in the same sweep) rather than when any node is.

It patches only Flower 1.42.0 (the version whose code was read and tested; on any other version
it logs a WARNING naming both versions and leaves Flower alone), only in the process
that calls it (in a simulation that is the process running both the ServerApp and the engine;
in a deployment the link state lives in the SuperLink, where nothing is patched), and not at all
when ``FEDKD_FLOWER_PATCHES=0``.
"""

from __future__ import annotations

import logging
import os
from logging import WARNING
from typing import Any

PATCHED_FLOWER_VERSION = "1.42.0"
ENV = "FEDKD_FLOWER_PATCHES"


def patch_simulation_engine(*, version: str | None = None) -> bool:
    """Install the indexed ``get_message_ins``; returns whether it is (now) installed.

    ``version`` is the Flower version to check against :data:`PATCHED_FLOWER_VERSION`
    (default: the installed ``flwr.__version__``; tests pass another one). On a mismatch
    nothing is patched and a WARNING says so on Flower's logger.
    """
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    try:
        import flwr
        from flwr.common.logger import log
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
        from flwr.supercore.date import now
    except ImportError as err:  # pragma: no cover - another Flower layout
        logging.getLogger("flwr").warning(
            "[fedkd] the simulation-engine polling patch is OFF: Flower's layout differs from "
            "the one it was written for (%s: %s)", type(err).__name__, err)
        return False
    if version is None:
        version = getattr(flwr, "__version__", None)
    if version != PATCHED_FLOWER_VERSION:
        log(WARNING, "[fedkd] Flower %s is installed, but fedkd's simulation-engine polling patch "
            "(fedkd/runtime/flower_patches.py) is pinned to Flower %s: the polling patch is OFF "
            "(Flower's own get_message_ins, O(nodes x messages) per poll)",
            version, PATCHED_FLOWER_VERSION)
        return False
    if getattr(InMemoryLinkState.get_message_ins, "_fedkd_patched", False):
        return True

    original_store = InMemoryLinkState.store_message_ins
    original_delete = InMemoryLinkState.delete_messages

    def store_message_ins(self: Any, message: Any) -> Any:
        try:
            return original_store(self, message)
        finally:
            self.__dict__["_fedkd_generation"] = self.__dict__.get("_fedkd_generation", 0) + 1

    def delete_messages(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Flower calls this with an empty set for every message it checks (every poll): only a
        # call that removed a stored instruction invalidates the index. Replies live in another
        # store; the index does not see them. The lock is an RLock, so no store can slip in
        # between the two lengths.
        with self.lock:
            before = len(self.message_ins_store)
            try:
                return original_delete(self, *args, **kwargs)
            finally:
                if len(self.message_ins_store) != before:
                    self.__dict__["_fedkd_generation"] = (
                        self.__dict__.get("_fedkd_generation", 0) + 1)

    def _by_destination(self: Any) -> dict[int, list[str]]:
        generation = self.__dict__.get("_fedkd_generation", 0)
        cached = self.__dict__.get("_fedkd_index")
        if cached is None or cached[0] != generation or cached[1] != len(self.message_ins_store):
            index: dict[int, list[str]] = {}
            for msg_id, message in self.message_ins_store.items():  # store (insertion) order
                index.setdefault(message.metadata.dst_node_id, []).append(msg_id)
            cached = (generation, len(self.message_ins_store), index)
            self.__dict__["_fedkd_index"] = cached
        return cached[2]

    def get_message_ins(self: Any, node_id: int, limit: int | None, *,
                        run_id: int | None = None) -> list[Any]:
        """Flower 1.42's ``get_message_ins``, looking only at ``node_id``'s own messages."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        message_ins_list: list[Any] = []
        with self.lock:
            for msg_id in list(_by_destination(self).get(node_id, ())):
                self._check_stored_messages({msg_id})
                if (
                    (msg_ins := self.message_ins_store.get(msg_id))
                    and msg_ins.metadata.dst_node_id == node_id
                    and (run_id is None or msg_ins.metadata.run_id == run_id)
                    and msg_ins.metadata.delivered_at == ""
                ):
                    message_ins_list.append(msg_ins)
                if limit and len(message_ins_list) == limit:
                    break
        delivered_at = now().isoformat()
        for msg_ins in message_ins_list:
            msg_ins.metadata.delivered_at = delivered_at
        return message_ins_list

    get_message_ins._fedkd_patched = True  # type: ignore[attr-defined]
    get_message_ins._fedkd_originals = (  # type: ignore[attr-defined]
        InMemoryLinkState.get_message_ins, original_store, original_delete)
    InMemoryLinkState.store_message_ins = store_message_ins
    InMemoryLinkState.delete_messages = delete_messages
    InMemoryLinkState.get_message_ins = get_message_ins
    return True


def unpatch_simulation_engine() -> None:
    """Put Flower's own methods back (for tests)."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    originals = getattr(InMemoryLinkState.get_message_ins, "_fedkd_originals", None)
    if originals is not None:
        (InMemoryLinkState.get_message_ins, InMemoryLinkState.store_message_ins,
         InMemoryLinkState.delete_messages) = originals
