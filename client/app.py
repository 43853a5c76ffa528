"""The client half's message handler (:func:`_handle`; the ClientApp component that calls it is
the light :mod:`client.entry`).

Every message carries its phase name in the request config; the handler builds the node's context
(config, data, persistent state) and lets the algorithm answer. The reply holds only what the
algorithm returns, which the server validates against the phase contract.

A simulation worker answers many messages for many nodes, so everything that does not change
between messages is built once per process: the parsed run config and the algorithm (LRU
caches), the dataset and its split (memory-mapped from the on-disk cache, :mod:`fedkd.data`),
each partition's local split (:meth:`FederatedData.cached_client`), the torch thread count, and
one model per architecture that messages load their weights into
(:func:`fedkd.training.model_with_state`). Training runs on ``train.device``
(:func:`fedkd.training.device_scope`) for algorithms that support it.

A node's persistent state (personal model, privacy ledger) lives in Flower's node state by
default (``federation.client-state = "node"``); in a simulation that keeps every node's state in
the server's process and ships it to the worker and back with every message. With ``"disk"``
it lives in one file per node under ``<output.dir>/client-state/run-<run id>/`` instead (read
and replaced atomically by the message that uses it), so the server's memory does not grow
with the number of clients; the ServerApp removes the folder when the run ends. With ``"run"``
(what ``fedkd simulate`` and ``make run`` choose for a simulation on one machine) every client's
state is journaled beside the run's outputs, ``<output.dir>/<output.run-name>/client-state/``,
so that a resumed run continues it exactly (:func:`run_state_dir`). A device started with node
config ``state-dir=<dir>`` keeps its whole state there instead, across SuperNode restarts and
resubmitted runs (:mod:`client.state`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fedkd.runtime import trace
from fedkd.algorithms import ALGORITHMS, Algorithm, ClientContext
from fedkd.attacks import apply_attack
from fedkd.compose import build_algorithm, build_config
from fedkd.config import RunConfig
from fedkd.data.datasets import DATASETS, ArrayDataset
from fedkd.data.device import load_device_data
from fedkd.data.federated import ClientData, load_federated
from fedkd.models import MODELS
from fedkd.results import CLIENT_STATE_DIR
from client.identity import client_id
from client.state import NodeStateDir, Place, load_arrays, save_arrays
from fedkd.protocol import (
    CONFIG_KEY,
    EXCHANGE_ROUND_KEY,
    EXCHANGE_STEP_KEY,
    LOGICAL_CLIENT_KEY,
    PHASE_KEY,
    decode,
    encode,
    from_array,
)
from fedkd.training import device_scope, resolve_device

#: Key of the node's persistent algorithm state in ``Context.state``.
STATE_KEY = "fedkd-state"
#: Node-state keys of the privacy ledger (what ``state-path`` keeps across restarts and runs).
PRIVACY_PREFIX = "privacy/"


@functools.lru_cache(maxsize=8)
def _config(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return build_config(dict(items))


@functools.lru_cache(maxsize=8)
def _algorithm(cfg: RunConfig, num_classes: int, input_shape: tuple[int, int, int]) -> Algorithm:
    return build_algorithm(cfg, num_classes, input_shape)


def _model_name(cfg: RunConfig, node_config: Mapping[str, Any], partition_id: int) -> str:
    """This node's architecture: its own ``model=`` choice, else the run's rule."""
    node_model = node_config.get("model")
    model_name = cfg.train.model_for(partition_id, str(node_model) if node_model else None)
    if model_name not in MODELS:
        raise ValueError(
            f"node config model={model_name!r} is not a model of the zoo; valid names: "
            f"{', '.join(MODELS.names())}"
        )
    return model_name


def client_context(
    cfg: RunConfig, client: int, node_config: Mapping[str, Any], state: dict[str, np.ndarray]
) -> ClientContext:
    """Everything the algorithm's client half may use on this node for one message
    (``client``: the client id the server addresses it by, :func:`client_id`)."""
    if "partition-id" not in node_config and "data-path" not in node_config:
        raise KeyError(
            "node config has neither 'data-path' (a device's own data) nor 'partition-id' (a "
            "partition of the run's dataset): start the SuperNode with --node-config "
            "'data-path=/path/mine.npz' or 'partition-id=<i> num-partitions=<n>'"
        )
    if "data-path" in node_config:
        return _device_context(cfg, client, node_config, state)
    partition_id = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", cfg.data.num_partitions))
    data = load_federated(dataclasses.replace(cfg.data, num_partitions=num_partitions))
    model_name = _model_name(cfg, node_config, partition_id)
    return ClientContext(
        cfg=cfg,
        client_id=client,
        partition_id=partition_id,
        data=data.cached_client(partition_id),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        model_name=model_name,
        public=data.public,
        state=state,
        global_test=data.global_test,
    )


@functools.lru_cache(maxsize=4)
def _device_data(path: str, input_shape: tuple[int, int, int], num_classes: int,
                 test_fraction: float, seed: int) -> ClientData:
    return load_device_data(path, input_shape, num_classes, test_fraction, seed)


def _device_context(
    cfg: RunConfig, client: int, node_config: Mapping[str, Any], state: dict[str, np.ndarray]
) -> ClientContext:
    """A device with its own data (``data-path``), checked against the run's dataset shape.

    The public split (FedMD) comes from the run's dataset when this device has it; otherwise it
    is empty and public-set algorithms say so.
    """
    source = DATASETS.get(cfg.data.dataset)
    seed = int(node_config.get("seed", client % 2**31))
    data = _device_data(str(node_config["data-path"]), source.input_shape, source.num_classes,
                        cfg.data.local_test_fraction, seed)
    public_error = None
    try:
        public = load_federated(dataclasses.replace(cfg.data, num_partitions=1)).public
    except (OSError, ValueError) as err:  # kept: a public-set algorithm reports it
        public_error = f"could not load the run's dataset {cfg.data.dataset!r}: {err}"
        public = ArrayDataset(x=np.zeros((0, *source.input_shape), np.float32),
                              y=np.zeros(0, np.int64))
    model_name = _model_name(cfg, node_config, seed)
    return ClientContext(cfg=cfg, client_id=client, partition_id=seed, data=data,
                         num_classes=source.num_classes, input_shape=source.input_shape,
                         model_name=model_name, public=public, state=state,
                         public_error=public_error)


@functools.lru_cache(maxsize=8)
def client_device(name: str, algorithm: str) -> torch.device:
    """Where this process trains for ``train.device`` = ``name``: the CPU for algorithms whose
    client half is not device-ready (:attr:`Algorithm.DEVICE_READY`), said once."""
    device = resolve_device(name)
    if device.type != "cpu" and not ALGORITHMS.get(algorithm).DEVICE_READY:
        logging.getLogger(__name__).warning(
            "train.device=%s: %s's client half runs on the CPU (not device-ready)", name, algorithm)
        return torch.device("cpu")
    return device


def answer(content: RecordDict, client: ClientContext) -> RecordDict:
    """Decode a request, let the algorithm's client half answer it, encode the reply."""
    cfg = client.cfg
    request = decode(content)
    phase = str(request.config.get(PHASE_KEY, ""))
    algorithm = _algorithm(cfg, client.num_classes, client.input_shape)
    with device_scope(client_device(cfg.train.device, cfg.algorithm)):
        reply = algorithm.answer(phase, request, client)
    if phase != "evaluate" and not phase.startswith("secagg-"):
        if client.partition_id in cfg.attack.partition_ids:  # a simulated misbehaving client
            rng = np.random.default_rng([cfg.seed, int(request.config.get("round", 0)),
                                         client.partition_id])
            reply.arrays = apply_attack(cfg.attack.mode, reply.arrays, rng, cfg.attack.scale)
    return encode(reply)


def load_privacy_file(path: Path) -> dict[str, np.ndarray]:
    """The privacy ledger a device keeps in its own file (node config ``state-path``)."""
    return {k: v for k, v in load_arrays(path).items() if k.startswith(PRIVACY_PREFIX)}


def save_privacy_file(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """Write the ledger entries of ``state`` to ``path`` atomically (temporary file, rename)."""
    ledger = {k: v for k, v in state.items() if k.startswith(PRIVACY_PREFIX)}
    if ledger:
        save_arrays(path, ledger, fsync=False)


def client_state_path(cfg: RunConfig, run_id: int, node_id: int,
                      logical_client: int | None = None) -> Path:
    """The file holding a node's state with ``federation.client-state = "disk"`` (a logical
    client's own, by client id, when the message is for one)."""
    name = f"node-{node_id}" if logical_client is None else f"client-{logical_client}"
    return client_state_dir(cfg, run_id) / f"{name}.npz"


def logical_client(msg: Message, cfg: RunConfig, node_config: Mapping[str, Any]) -> int | None:
    """The client a request names (logical clients, ``federation.supernodes > 0``), checked: an
    id of the run's population, sent to a node that serves the run's dataset (a device with its
    own data or its own id answers only as itself); ``None`` when the request names none."""
    config = msg.content.get(CONFIG_KEY) if msg.content is not None else None
    if config is None or LOGICAL_CLIENT_KEY not in config:
        return None
    value = config[LOGICAL_CLIENT_KEY]
    population = cfg.client_population()
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < population:
        raise ValueError(f"request names logical client {value!r}, not a client id of the run's "
                         f"population of {population}")
    own = [k for k in ("data-path", "client-id", "state-dir", "state-path") if k in node_config]
    if own:
        raise ValueError(
            f"this node has its own {', '.join(own)} in its node config: it answers only as "
            f"itself, not as logical client {value} (federation.supernodes > 0 needs nodes that "
            "serve the run's dataset)")
    return int(value)


def client_state_dir(cfg: RunConfig, run_id: int) -> Path:
    """The folder of every node's state file in run ``run_id`` (removed when the run ends)."""
    return Path(cfg.output.dir).expanduser().resolve() / "client-state" / f"run-{run_id}"


def load_state_file(path: Path) -> dict[str, np.ndarray]:
    """A node's state saved by :func:`save_state_file` (empty before its first message)."""
    return load_arrays(path)


def save_state_file(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """Replace ``path`` with ``state`` atomically (no fsync: a simulation's state files are
    removed when the run ends)."""
    save_arrays(path, state, fsync=False)


def device_state_dir(cfg: RunConfig, context: Context) -> NodeStateDir | None:
    """The node's state directory for this run (node config ``state-dir``), if it has one."""
    root = context.node_config.get("state-dir")
    if not root:
        return None
    return NodeStateDir(Path(str(root)), cfg.output.run_name or f"run-{int(context.run_id)}")


def run_state_dir(cfg: RunConfig, client: int) -> NodeStateDir | None:
    """Client ``client``'s state beside the run's outputs (``federation.client-state = "run"``):
    ``<output.dir>/<output.run-name>/client-state/client-<id>/``, journaled like a device's
    ``state-dir``, so that a resumed run (same run name) continues each client exactly. Its
    privacy ledger, too, is never rolled back: a round replayed after an interruption is charged
    again. ``None`` for a run without a name (nothing can resume it)."""
    if cfg.federation.client_state != "run" or not cfg.output.run_name:
        return None
    root = (Path(cfg.output.dir).expanduser().resolve() / cfg.output.run_name / CLIENT_STATE_DIR
            / f"client-{client}")
    return NodeStateDir(root, cfg.output.run_name, keep_rounds=0, fsync=False)


def message_place(msg: Message) -> Place | None:
    """The request's place in the server's run (round, exchange index), if it carries one."""
    config = msg.content.get(CONFIG_KEY) if msg.content is not None else None
    if config is None or EXCHANGE_ROUND_KEY not in config or EXCHANGE_STEP_KEY not in config:
        return None
    return Place(int(config[EXCHANGE_ROUND_KEY]), int(config[EXCHANGE_STEP_KEY]))


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:  # once per worker process, not once per message
        torch.set_num_threads(n)


def _handle(msg: Message, context: Context) -> Message:
    started = trace.now()
    cfg = _config(tuple(sorted(context.run_config.items())))
    _set_threads(cfg.train.num_threads)
    state: dict[str, np.ndarray] = {}
    node_config: Mapping[str, Any] = context.node_config
    logical = logical_client(msg, cfg, node_config)
    if logical is not None:  # this node serves the population: answer as the client named
        node_config = {**node_config, "partition-id": logical,
                       "num-partitions": cfg.data.num_partitions}
    on_disk = cfg.federation.client_state == "disk"
    state_file = client_state_path(cfg, int(context.run_id), int(context.node_id),
                                   logical) if on_disk else None
    # A device's own state directory (node config state-dir, client/state.py): the whole state
    # survives SuperNode restarts and resubmitted runs, a replayed message starts from the state
    # before it.
    cid = client_id(node_config, int(context.node_id))
    node_dir = device_state_dir(cfg, context) or run_state_dir(cfg, cid)
    place = message_place(msg)
    if node_dir is not None:
        state = node_dir.load(place)
    elif state_file is not None:
        state = load_state_file(state_file)
    elif STATE_KEY in context.state:
        state = {k: from_array(a) for k, a in context.state[STATE_KEY].items()}
    # Flower keeps node state per run only: a device's privacy spend that must survive client
    # restarts and later runs lives in its own file, which wins over the node state.
    privacy_file = context.node_config.get("state-path") or (
        node_dir.privacy_path if node_dir is not None else None)
    if privacy_file:
        state.update(load_privacy_file(Path(str(privacy_file))))
    before = dict(state)  # the arrays as loaded: algorithms replace what they change
    client = client_context(cfg, cid, node_config, state)
    loaded = trace.now()
    content = answer(msg.content, client)
    answered = trace.now()
    if privacy_file:
        save_privacy_file(Path(str(privacy_file)), client.state)
    changed = client.state.keys() != before.keys() or any(
        client.state[k] is not v for k, v in before.items())
    if changed and node_dir is not None:
        node_dir.save(place, client.state)
    elif changed and state_file is not None:  # an evaluation, say, leaves the file as it is
        save_state_file(state_file, client.state)
    elif changed and client.state and logical is None:
        context.state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                                for k, v in client.state.items()})
    trace.record("handler", msg=msg.metadata.message_id, load=loaded - started,
                 work=answered - loaded, save=trace.now() - answered)
    return Message(content=content, reply_to=msg)
