"""Sampling in the round loop: by client id (``ClientDirectory``), whatever Flower's node ids
(unsigned 64-bit integers, random per SuperLink)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict

from client.app import client_id
from client.entry import dispatch
from fedkd.protocol import (
    CLIENT_ID_KEY,
    IDENTIFY_PHASE_NAME,
    PHASE_KEY,
    InvalidReply,
    Payload,
    encode,
    validate_reply,
)
from server.loop import IDENTIFY_PHASE, ClientDirectory, DuplicateClientId, sample_nodes

# Real ids from a Flower 1.42 simulation: some above 2**63, some below.
NODES = [1857415176174798123, 2459221175014713999, 9259491361924665001, 14445676664421566999,
         18446744073709551615, 5]


def test_sampled_ids_are_exactly_the_online_ids() -> None:
    for seed in range(20):
        picked = sample_nodes(NODES, 0.5, np.random.default_rng(seed))
        assert len(picked) == 3 and len(set(picked)) == 3
        assert set(picked) <= set(NODES)  # not rounded through float64
        assert all(type(n) is int for n in picked)


def test_sampling_is_seeded_and_fraction_one_takes_everyone() -> None:
    assert sample_nodes(NODES, 0.5, np.random.default_rng(1)) == sample_nodes(
        NODES, 0.5, np.random.default_rng(1))
    assert sample_nodes(NODES, 1.0, np.random.default_rng(0)) == NODES
    assert len(sample_nodes(NODES, 0.01, np.random.default_rng(0))) == 1


# ----- client ids: what the server samples by ---------------------------------------------------

def _answers(ids: dict[int, int]):
    """An ``identify`` stand-in: node id -> the client id it claims (absent: no valid reply)."""
    asked: list[list[int]] = []

    def identify(unknown: list[int]) -> dict[int, Payload]:
        asked.append(list(unknown))
        return {n: Payload(metrics={CLIENT_ID_KEY: ids[n], "num-examples": 0})
                for n in unknown if n in ids}
    return identify, asked


def test_the_directory_samples_by_client_id_whatever_the_node_ids() -> None:
    # Two federations of the same three partitions under other random node ids: the same
    # client ids, so the same sample for one seed.
    first = {NODES[0]: 2, NODES[3]: 0, NODES[4]: 1}
    second = {11: 1, 7: 0, 3: 2}
    samples = []
    for ids in (first, second):
        directory = ClientDirectory()
        identify, asked = _answers(ids)
        online = directory.online(sorted(ids), identify)
        assert online == [0, 1, 2] and asked == [sorted(ids)]
        assert {directory.route[c] for c in online} == set(ids)
        samples.append(sample_nodes(online, 0.6, np.random.default_rng(5)))
        assert directory.online(sorted(ids), identify) == [0, 1, 2] and len(asked) == 1  # asked once
    assert samples[0] == samples[1]


def test_a_node_without_a_stable_id_is_known_by_its_node_id_and_failures_are_asked_again() -> None:
    directory = ClientDirectory()
    identify, asked = _answers({NODES[4]: -1, 5: 3})
    assert directory.online([5, NODES[4], 99], identify) == [3, NODES[4]]  # 99 did not answer
    assert directory.route[NODES[4]] == NODES[4]
    assert directory.online([5, 99], identify) == [3]  # node NODES[4] went offline
    assert asked[-1] == [99]


def test_two_nodes_claiming_one_client_id_are_refused_and_a_moved_client_follows_its_node() -> None:
    with pytest.raises(DuplicateClientId, match="client 0 by nodes 4, 8"):
        ClientDirectory().online([4, 8], _answers({4: 0, 8: 0})[0])
    directory = ClientDirectory()
    directory.online([4, 8], _answers({4: 0, 8: 1})[0])
    # node 4 restarted under a new node id (no node authentication), while the SuperLink still
    # lists the old one: client 0 moves to the new node, and the old one is not asked again
    identify, asked = _answers({12: 0, 4: 0})
    assert directory.online([4, 8, 12], identify) == [0, 1]
    assert directory.route == {0: 12, 1: 8} and asked == [[12]]
    assert directory.online([4, 8, 12], identify) == [0, 1]
    assert directory.route == {0: 12, 1: 8} and asked == [[12]]  # no turns between 4 and 12


@pytest.mark.parametrize("claim", [1.5, -2, [1]])
def test_a_malformed_client_id_is_a_rejected_reply(claim: object) -> None:
    content = encode(Payload(metrics={CLIENT_ID_KEY: claim, "num-examples": 0}))
    with pytest.raises(InvalidReply):
        validate_reply(content, IDENTIFY_PHASE)
    ok = validate_reply(encode(Payload(metrics={CLIENT_ID_KEY: 7, "num-examples": 0})),
                        IDENTIFY_PHASE)
    assert ok.metrics[CLIENT_ID_KEY] == 7


@pytest.mark.parametrize(("node_config", "expected"), [
    ({"partition-id": 4, "num-partitions": 10}, 4), ({"client-id": 17, "data-path": "x"}, 17),
    ({"data-path": "x"}, -1)])
def test_a_node_answers_identify_from_its_node_config_alone(node_config: dict, expected: int) -> None:
    # No run config, no data: nothing is loaded to answer.
    msg = Message(content=encode(Payload(config={PHASE_KEY: IDENTIFY_PHASE_NAME})), metadata=Metadata(
        run_id=1, message_id="m", src_node_id=1, dst_node_id=99, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=60.0, message_type="query"))
    context = Context(run_id=1, node_id=99, node_config=node_config, state=RecordDict(),
                      run_config={})
    reply = validate_reply(dispatch(msg, context).content, IDENTIFY_PHASE)  # what Flower calls
    assert reply.metrics[CLIENT_ID_KEY] == expected
    assert client_id(node_config, 99) == (99 if expected < 0 else expected)


def test_a_malformed_node_config_client_id_is_refused() -> None:
    with pytest.raises(ValueError, match="client-id=-3: must be an integer >= 0"):
        client_id({"client-id": -3}, 99)
