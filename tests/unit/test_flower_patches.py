"""fedkd.runtime.flower_patches: the indexed ``get_message_ins`` answers exactly as Flower 1.42's."""

from __future__ import annotations

import logging
import secrets
import time
import uuid

import pytest
from flwr.app import Message, Metadata, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager

from fedkd.runtime.flower_patches import (
    PATCHED_FLOWER_VERSION,
    patch_simulation_engine,
    unpatch_simulation_engine,
)


def _state() -> tuple[InMemoryLinkState, int, list[int]]:
    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                             ObjectStoreFactory()).state()
    run_id = state.create_run(None, None, None, {}, "@none/default", None, None, "serverapp")
    nodes = []
    for _ in range(12):
        node = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                 heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        nodes.append(node)
    return state, run_id, nodes


def _store(state: InMemoryLinkState, run_id: int, dst: int, msg_id: str,
           ttl: float = 3600.0) -> None:
    metadata = Metadata(run_id=run_id, message_id="", src_node_id=1, dst_node_id=dst,
                        reply_to_message_id="", group_id="1", created_at=time.time(),
                        ttl=ttl, message_type="train")
    message = Message(content=RecordDict(), metadata=metadata)
    message.metadata.__dict__["_message_id"] = msg_id
    assert state.store_message_ins(message) == msg_id


def _scenario(patched: bool) -> list[list[str]]:
    """Messages stored, polled node by node as the engine does, some deleted, some expired."""
    unpatch_simulation_engine()
    if patched:
        assert patch_simulation_engine()
    state, run_id, nodes = _state()
    ids = [str(uuid.UUID(int=i)) for i in range(40)]
    for i, msg_id in enumerate(ids[:30]):  # several messages per node, interleaved
        _store(state, run_id, nodes[(i * 7) % 9], msg_id)
    seen: list[list[str]] = []

    def sweep() -> None:
        for node in nodes:
            seen.append([m.metadata.message_id for m in state.get_message_ins(node, limit=1)])

    sweep()
    state.delete_messages(message_ins_ids=set(ids[:10]))
    for msg_id in ids[30:35]:
        _store(state, run_id, nodes[3], msg_id)
    _store(state, run_id, nodes[10], ids[35], ttl=0.05)  # expires before the next sweep
    _store(state, run_id, nodes[11], ids[36], ttl=0.05)
    time.sleep(0.1)
    sweep()
    sweep()
    seen.append(sorted(m.metadata.message_id for m in state.get_message_ins(nodes[3], limit=None)))
    seen.append([m.metadata.message_id for m in state.get_message_ins(nodes[11], limit=None)])
    seen.append(sorted(state.message_ins_store))
    for node in nodes:  # drain: everything left, in order
        seen.append([m.metadata.message_id for m in state.get_message_ins(node, limit=None)])
    assert all(m.metadata.delivered_at for m in state.message_ins_store.values())
    return seen


@pytest.fixture(autouse=True)
def _restore():
    yield
    unpatch_simulation_engine()


def test_indexed_get_message_ins_answers_as_flowers() -> None:
    original = _scenario(patched=False)
    assert any(original)  # the scenario delivers messages
    assert _scenario(patched=True) == original


def test_expired_messages_are_never_delivered() -> None:
    assert patch_simulation_engine()
    state, run_id, nodes = _state()
    _store(state, run_id, nodes[0], str(uuid.uuid4()), ttl=0.05)
    time.sleep(0.1)
    fresh = str(uuid.uuid4())
    _store(state, run_id, nodes[0], fresh)
    assert [m.metadata.message_id for m in state.get_message_ins(nodes[0], limit=None)] == [fresh]
    assert len(state.message_ins_store) == 1  # the expired one was deleted


def test_the_patch_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDKD_FLOWER_PATCHES", "0")
    assert not patch_simulation_engine()
    assert not getattr(InMemoryLinkState.get_message_ins, "_fedkd_patched", False)


class _RebuildCounter:
    """Counts rebuilds of the patch's per-destination index: each rebuild stores a new tuple."""

    def __init__(self, state: InMemoryLinkState) -> None:
        self.state = state
        self.last = state.__dict__.get("_fedkd_index")
        self.rebuilds = 0

    def check(self) -> None:
        current = self.state.__dict__.get("_fedkd_index")
        if current is not self.last:  # self.last stays referenced: no identity reuse
            self.rebuilds += 1
            self.last = current


def test_polls_do_not_rebuild_the_index() -> None:
    """Flower's empty ``delete_messages`` calls (one per checked message) keep the index."""
    assert patch_simulation_engine()
    state, run_id, nodes = _state()
    ids = [str(uuid.UUID(int=i)) for i in range(20)]
    for i, msg_id in enumerate(ids):
        _store(state, run_id, nodes[i % 4], msg_id)
    counter = _RebuildCounter(state)
    delivered = []
    for poll in range(36):  # as the engine polls, plus an explicit empty deletion
        delivered += state.get_message_ins(nodes[poll % 12], limit=1)
        state.delete_messages(set())
        counter.check()
    assert counter.rebuilds == 1  # the first poll builds it; the old code rebuilt it 36 times
    assert len(delivered) == 12  # nodes 0-3 got one message per poll, 3 polls each
    state.delete_messages(message_ins_ids={ids[0]})  # a real deletion
    state.get_message_ins(nodes[0], limit=1)
    counter.check()
    assert counter.rebuilds == 2
    state.delete_messages(message_ins_ids={str(uuid.UUID(int=999))})  # not stored: no change
    state.get_message_ins(nodes[1], limit=1)
    counter.check()
    assert counter.rebuilds == 2
    _store(state, run_id, nodes[5], ids[0])  # a store rebuilds it too
    assert [m.metadata.message_id for m in state.get_message_ins(nodes[5], limit=1)] == [ids[0]]
    counter.check()
    assert counter.rebuilds == 3


def test_another_flower_version_is_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    unpatch_simulation_engine()
    with caplog.at_level(logging.WARNING):
        assert patch_simulation_engine(version="1.43.0") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "1.43.0" in message and PATCHED_FLOWER_VERSION in message
    assert "polling patch is OFF" in message
    assert not getattr(InMemoryLinkState.get_message_ins, "_fedkd_patched", False)


def test_the_installed_flower_version_is_checked(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import flwr

    unpatch_simulation_engine()
    monkeypatch.setattr(flwr, "__version__", "1.41.9")
    with caplog.at_level(logging.WARNING):
        assert patch_simulation_engine() is False
    assert any("1.41.9" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(flwr, "__version__", PATCHED_FLOWER_VERSION)
    caplog.clear()
    assert patch_simulation_engine() is True
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
