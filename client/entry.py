"""The ClientApp component (``client.entry:app`` in pyproject.toml): light on purpose.

Flower starts one ``flwr-clientapp`` process per message on a deployed SuperNode, and this is the
module it imports. It imports neither torch nor the algorithms: a node started with node config
``warm-dir`` forwards each message to its warm worker (:mod:`client.warm`), which keeps them
loaded; any other node (and every simulation worker) imports :mod:`client.app` on its first
message and answers in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedkd.runtime import trace

app = ClientApp()
#: When this ``flwr-clientapp`` process started (for the timing trace, ``FEDKD_TRACE``).
PROCESS_START = trace.process_start_time() if trace.path() is not None else None


def dispatch(msg: Message, context: Context) -> Message:
    """Answer the message; with ``FEDKD_TRACE`` set, record this process's timing."""
    if trace.path() is None:
        return _answer(msg, context)
    start = trace.now()
    try:
        return _answer(msg, context)
    finally:
        trace.record("clientapp", msg=msg.metadata.message_id, node=int(context.node_id),
                     pid=os.getpid(), proc_start=PROCESS_START, start=start, end=trace.now())


def identify(msg: Message, context: Context) -> Message | None:
    """The answer to the server's ``identify`` phase, from the node config alone (nothing is
    loaded: no torch, no data, no worker); ``None`` for any other phase."""
    from fedkd.protocol import (CLIENT_ID_KEY, CONFIG_KEY, IDENTIFY_PHASE_NAME, PHASE_KEY,
                                Payload, encode)

    config = msg.content.get(CONFIG_KEY) if msg.content is not None else None
    if config is None or config.get(PHASE_KEY) != IDENTIFY_PHASE_NAME:
        return None
    from client.identity import stable_client_id

    stable = stable_client_id(context.node_config)
    return Message(content=encode(Payload(metrics={
        CLIENT_ID_KEY: -1 if stable is None else stable, "num-examples": 0})), reply_to=msg)


def _answer(msg: Message, context: Context) -> Message:
    """Answer in a warm worker (node config ``warm-dir``) or in this process."""
    reply = identify(msg, context)
    if reply is not None:
        return reply
    warm_dir = context.node_config.get("warm-dir")
    if warm_dir:
        from client.warm import DEFAULT_IDLE_S, forward

        idle_s = float(context.node_config.get("warm-idle-s", DEFAULT_IDLE_S))
        return forward(Path(str(warm_dir)), msg, context, idle_s)
    from client.app import _handle

    return _handle(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Training phases (``fit``, ``distill``...)."""
    return dispatch(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Personalised evaluation on the local test split."""
    return dispatch(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Phases that only ask for outputs (logits on public or synthetic inputs)."""
    return dispatch(msg, context)
