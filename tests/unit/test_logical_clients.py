"""Logical clients (``federation.supernodes > 0``): a few SuperNodes serve a whole population,
every message naming its client; each client's state is kept by client id."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict

from client.app import STATE_KEY, _handle, client_state_path, logical_client
from fedkd.compose import build_config
from fedkd.errors import ConfigError
from fedkd.protocol import LOGICAL_CLIENT_KEY, PHASE_KEY, Payload, decode, encode
from server.loop import FlowerExchange, LogicalRoute, Traffic, sample_nodes

BASE = {"data.dataset": "digits", "train.model": "mlp", "data.num-partitions": 50,
        "federation.supernodes": 3, "federation.min-nodes": 3, "federation.min-replies": 5,
        "federation.client-state": "disk"}


def test_the_route_spreads_the_population_over_the_online_nodes() -> None:
    route = LogicalRoute(1_000_000)
    route.update([30, 10, 20])
    assert [route[c] for c in (0, 1, 2, 3, 999_999)] == [10, 20, 30, 10, 10]
    assert len(route) == 1_000_000 and route.clients() == range(1_000_000)
    for missing in (-1, 1_000_000):
        with pytest.raises(KeyError):
            route[missing]
    # sampling from the population never materialises it: a seeded sample of ids
    picked = sample_nodes(route.clients(), 0.001, np.random.default_rng(0))
    assert len(picked) == 1000 and len(set(picked)) == 1000 and max(picked) < 1_000_000
    assert picked == sample_nodes(route.clients(), 0.001, np.random.default_rng(0))


def test_only_a_logical_route_names_the_client_in_the_request() -> None:
    route = LogicalRoute(100)
    route.update([7])
    logical = FlowerExchange(None, 1, 10.0, 1, Traffic(), route=route)  # type: ignore[arg-type]
    plain = FlowerExchange(None, 1, 10.0, 1, Traffic(), route={5: 7})  # type: ignore[arg-type]
    assert logical.addressing(42) == {LOGICAL_CLIENT_KEY: 42}
    assert logical.node_details(42) == {"flower-node-id": 7}
    assert plain.addressing(5) == {}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"federation.client-state": "node"}, 'needs a client state kept by client id'),
    ({"federation.min-nodes": 4}, r"min-nodes \(4\) is more than federation.supernodes \(3\)"),
    ({"federation.population": 70}, r"federation.population \(70\) must be 0 or that number"),
    ({"federation.supernodes": -1}, "federation.supernodes must be >= 0"),
])
def test_refused_configurations(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **overrides})


def test_min_replies_counts_clients_not_nodes() -> None:
    cfg = build_config(BASE)  # 5 replies from 3 nodes: the clients reply, not the nodes
    assert cfg.federation.min_replies == 5 and cfg.client_population() == 50


def _request(client: int | None, node: int, phase: str = "evaluate") -> Message:
    config = {PHASE_KEY: phase, "round": 1}
    if client is not None:
        config[LOGICAL_CLIENT_KEY] = client
    metadata = Metadata(run_id=9, message_id=f"m{node}-{client}", src_node_id=0, dst_node_id=node,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type="evaluate")
    return Message(content=encode(Payload(config=config)), metadata=metadata)


@pytest.mark.parametrize(("value", "node_config", "message"), [
    (50, {}, "not a client id of the run's population of 50"),
    (-1, {}, "not a client id"),
    (True, {}, "not a client id"),
    (3, {"data-path": "/x.npz"}, "its own data-path in its node config: it answers only as itself"),
    (3, {"client-id": 4}, "its own client-id"),
])
def test_a_node_refuses_a_logical_client_it_cannot_be(value: object, node_config: dict,
                                                      message: str) -> None:
    cfg = build_config(BASE)
    with pytest.raises(ValueError, match=message):
        logical_client(_request(value, 1), cfg, node_config)  # type: ignore[arg-type]
    assert logical_client(_request(None, 1), cfg, node_config) is None


def test_one_node_answers_as_each_client_it_is_sent_and_keeps_each_state_apart(
        tmp_path: Path) -> None:
    """One SuperNode, two logical clients: each reply is the named client's (its own local
    split), and each client's state is a file of its own, not the node's."""
    run_config = {**BASE, "algorithm": "fd", "train.local-steps": 2, "output.dir": str(tmp_path)}
    cfg = build_config(run_config)
    context = Context(run_id=9, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
                      state=RecordDict(), run_config=run_config)
    counts = {}
    for client in (4, 17):
        request = encode(Payload(arrays={"targets": np.full((10, 10), 0.1, np.float32),
                                         "target-mask": np.ones(10, np.uint8)},
                                 config={"round": 1, PHASE_KEY: "fit", LOGICAL_CLIENT_KEY: client}))
        msg = Message(content=request, metadata=_request(client, 1).metadata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reply = decode(_handle(msg, context).content)
        counts[client] = reply.metrics["num-examples"]
        assert client_state_path(cfg, 9, 1, client).exists()
    from fedkd.data.federated import load_federated

    data = load_federated(cfg.data)
    assert counts == {c: len(data.client(c).train) for c in (4, 17)}
    assert not client_state_path(cfg, 9, 1).exists()  # the node's own file: never written
    assert STATE_KEY not in context.state
