"""The ClientApp component (``client.entry:app`` in pyproject.toml): light on purpose.

Flower starts one ``flwr-clientapp`` process per message on a deployed SuperNode, and this is the
module it imports. It imports neither torch nor the algorithms: a node started with node config
``warm-dir`` forwards each message to its warm worker (:mod:`client.warm`), which keeps them
loaded; any other node (and every simulation worker) imports :mod:`client.app` on its first
message and answers in-process.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


def dispatch(msg: Message, context: Context) -> Message:
    """Answer in a warm worker (node config ``warm-dir``) or in this process."""
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
