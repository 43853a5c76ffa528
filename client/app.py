"""The ClientApp (component ``client.app:app`` in pyproject.toml).

Every message carries its phase name in the request config; the handler builds the node's context
(config, data, persistent state) and lets the algorithm answer. The reply holds only what the
algorithm returns, which the server validates against the phase contract.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkd.algorithms import ALGORITHMS, Algorithm, ClientContext
from fedkd.config import RunConfig
from fedkd.data.federated import load_federated
from fedkd.protocol import PHASE_KEY, decode, encode

app = ClientApp()

#: Key of the node's persistent algorithm state in ``Context.state``.
STATE_KEY = "fedkd-state"


@functools.lru_cache(maxsize=8)
def _config(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return RunConfig.from_flat(dict(items))


@functools.lru_cache(maxsize=8)
def _algorithm(cfg: RunConfig, num_classes: int, input_shape: tuple[int, int, int]) -> Algorithm:
    return ALGORITHMS.get(cfg.algorithm)(cfg, num_classes, input_shape)


def _client_context(context: Context, cfg: RunConfig) -> ClientContext:
    node_cfg = context.node_config
    if "partition-id" not in node_cfg:
        raise KeyError(
            "node config has no 'partition-id': start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    partition_id = int(node_cfg["partition-id"])
    num_partitions = int(node_cfg.get("num-partitions", cfg.data.num_partitions))
    data = load_federated(dataclasses.replace(cfg.data, num_partitions=num_partitions))
    state: dict[str, np.ndarray] = {}
    if STATE_KEY in context.state:
        state = {k: a.numpy() for k, a in context.state[STATE_KEY].items()}
    return ClientContext(
        cfg=cfg,
        node_id=int(context.node_id),
        partition_id=partition_id,
        data=data.client(partition_id),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        state=state,
    )


def _handle(msg: Message, context: Context) -> Message:
    cfg = _config(tuple(sorted(context.run_config.items())))
    torch.set_num_threads(cfg.train.num_threads)
    request = decode(msg.content)
    phase = str(request.config.get(PHASE_KEY, ""))
    client = _client_context(context, cfg)
    algorithm = _algorithm(cfg, client.num_classes, client.input_shape)
    if phase == "evaluate":
        reply = algorithm.client_evaluate(request, client)
    else:
        reply = algorithm.client_phase(phase, request, client)
    if client.state:
        context.state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                                for k, v in client.state.items()})
    return Message(content=encode(reply), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Training phases (``fit``, ``distill``...)."""
    return _handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalised evaluation on the local test split."""
    return _handle(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Phases that only ask for outputs (logits on public or synthetic inputs)."""
    return _handle(msg, context)
