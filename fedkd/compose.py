"""The composition root: a flat run configuration -> a validated :class:`RunConfig` -> objects.

Every entry point (the ServerApp, the ClientApp, the ``fedkd`` CLI and ``make run``) builds what a
run needs through these functions, so a configuration that the launcher accepts is exactly one
that the apps accept, and every check (keys, types, names, the rule's options, the privacy
accountants, the algorithm's own :meth:`~fedkd.algorithms.Algorithm.check_config`) runs before
any process starts.

Plugins are found, not listed: importing :mod:`fedkd.algorithms` and :mod:`fedkd.aggregation`
imports every module in them, and each module registers itself (and its config sections).
Packages outside fedkd can add plugins through the ``fedkd.plugins`` entry-point group: each
entry point names a module to import.

Layers, bottom first (:data:`LAYERS`; ``x`` is ``fedkd.x`` unless it is ``server`` or ``client``).
A module imports only from its own entry (the longest name listed that its name starts with) and
from earlier layers, lazy imports inside functions included; tests/unit/test_layering.py checks
every import against this list and imports each entry alone:

1. ``errors``, ``registry``, ``runtime``: no fedkd import: the error type; the registries and the
   package scan; process management for Flower (offline launcher, patched SuperNode,
   simulation-engine patch, timing trace)
2. ``validate``, ``data``, ``models``, ``losses``, ``attacks``: the shared validators; datasets and
   partitions; the model zoo and generators; distillation losses; simulated misbehaving clients
3. ``config``, ``protocol``, ``training``: the core config sections; the message contract; the one
   training loop
4. ``aggregation``, ``privacy``, ``secagg``, ``synthesis``, ``results``, ``runtime.launch``: one
   file per rule; DP-SGD, output noise and ledgers (on the training loop); secure aggregation;
   client-side input synthesis; run outputs; the offline launcher (which writes run configs)
5. ``algorithms``: one file per algorithm (Selective-FD's selectors beside it)
6. ``compose``: the composition root (this module)
7. ``experiments``, ``server``, ``client``: presets, the runner and the report; the ServerApp; the
   ClientApp
8. ``cli``, ``runtime.deploy``: the ``fedkd`` command; local deployments (which stop the client's
   warm workers)
9. ``__main__``: ``python -m fedkd``
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Mapping
from importlib.metadata import entry_points

from fedkd.config import SECTIONS, RunConfig, Scalar
from fedkd.errors import ConfigError

__all__ = ["ConfigError", "build_algorithm", "build_config", "check_federation_size",
           "check_simulation", "load_plugins"]

ENTRY_POINT_GROUP = "fedkd.plugins"

#: The layers of fedkd, server and client, bottom first: (the entries of the layer, what they
#: are). An entry is a module or package; a module belongs to the longest entry its name starts
#: with (``fedkd.runtime.deploy`` is not in ``fedkd.runtime``'s layer). A module imports only from
#: its own entry and from earlier layers, lazy imports inside functions included; the module
#: docstring renders this and tests/unit/test_layering.py checks every import against it.
LAYERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("fedkd.errors", "fedkd.registry", "fedkd.runtime"),
     "no fedkd import: the error type; the registries and the package scan; process management "
     "for Flower (offline launcher, patched SuperNode, simulation-engine patch, timing trace)"),
    (("fedkd.validate", "fedkd.data", "fedkd.models", "fedkd.losses", "fedkd.attacks"),
     "the shared validators; datasets and partitions; the model zoo and generators; distillation "
     "losses; simulated misbehaving clients"),
    (("fedkd.config", "fedkd.protocol", "fedkd.training"),
     "the core config sections; the message contract; the one training loop"),
    (("fedkd.aggregation", "fedkd.privacy", "fedkd.secagg", "fedkd.synthesis", "fedkd.results",
      "fedkd.runtime.launch"),
     "one file per rule; DP-SGD, output noise and ledgers (on the training loop); secure "
     "aggregation; client-side input synthesis; run outputs; the offline launcher (which writes "
     "run configs)"),
    (("fedkd.algorithms",), "one file per algorithm (Selective-FD's selectors beside it)"),
    (("fedkd.compose",), "the composition root (this module)"),
    (("fedkd.experiments", "server", "client"),
     "presets, the runner and the report; the ServerApp; the ClientApp"),
    (("fedkd.cli", "fedkd.runtime.deploy"),
     "the ``fedkd`` command; local deployments (which stop the client's warm workers)"),
    (("fedkd.__main__",), "``python -m fedkd``"),
)


@functools.cache
def load_plugins() -> tuple[str, ...]:
    """Import every algorithm and rule (fedkd's own and the ``fedkd.plugins`` entry points).

    Idempotent; returns the names of the external plugin modules imported.
    """
    importlib.import_module("fedkd.aggregation")
    importlib.import_module("fedkd.algorithms")
    importlib.import_module("fedkd.models")
    external = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value)
        external.append(ep.value)
    return tuple(external)


def build_config(flat: Mapping[str, Scalar]) -> RunConfig:
    """Validate a flat run config completely and return it as a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type or value, an unknown algorithm, model, rule, dataset or
        accountant, or a combination the algorithm refuses; the message names the key and,
        for names, lists the valid ones.
    """
    load_plugins()
    from fedkd.aggregation import build_rule
    from fedkd.algorithms import ALGORITHMS
    from fedkd.data.datasets import DATASETS
    from fedkd.losses import DISTILLATION_LOSSES
    from fedkd.models import MODELS
    from fedkd.privacy import check_privacy_config

    cfg = RunConfig.from_flat(flat, sections=SECTIONS)
    checks = [(ALGORITHMS, cfg.algorithm, "algorithm"), (MODELS, cfg.train.model, "train.model"),
              (DATASETS, cfg.data.dataset, "data.dataset")]
    checks += [(MODELS, m, "train.client-models") for m in cfg.train.client_model_list]
    _check_names(checks)
    build_rule(cfg)
    _check_names([(DISTILLATION_LOSSES, cfg.distill.loss, "distill.loss")])
    algorithm = ALGORITHMS.get(cfg.algorithm)
    algorithm.check_config(cfg)
    if cfg.aggregation.secure:
        check_secure_aggregation(cfg, algorithm, ALGORITHMS)
    check_sampling(cfg)
    check_privacy_config(cfg.privacy, cfg.num_server_rounds * algorithm.releases_per_round(cfg))
    return cfg


def _check_names(checks) -> None:  # noqa: ANN001 - (registry, name, key) triples
    """Refuse a name that its registry lacks, naming the key and listing the valid names."""
    for registry, name, key in checks:
        if name not in registry:
            raise ConfigError(f"{key}: unknown {registry.kind} {name!r}; valid names: "
                              f"{', '.join(registry.names())}")


def check_secure_aggregation(cfg: RunConfig, algorithm: type, algorithms) -> None:  # noqa: ANN001
    """``aggregation.secure`` needs an algorithm that aggregates logits through a rule, and a
    rule whose targets are a function of sums over clients (``algorithms``: the registry, for
    the list of those that can)."""
    from fedkd.aggregation import AGGREGATORS

    if not algorithm.SECURE_AGGREGATION:
        raise ConfigError(
            f"aggregation.secure: {cfg.algorithm} cannot run under secure aggregation (it does not "
            "aggregate its clients' uploads as sums through the rule); algorithms that can: "
            + ", ".join(n for n in algorithms.names()
                        if algorithms.get(n).SECURE_AGGREGATION))
    rule = AGGREGATORS.get(cfg.aggregation.rule)
    if not rule.sum_decomposable:
        why = ("its noisy vote is drawn by the server from every teacher's vote"
               if rule.client_level_privacy else
               "its targets need each teacher's logits, not only their sum")
        raise ConfigError(
            f"aggregation.secure: the {cfg.aggregation.rule!r} rule is not sum-decomposable ({why});"
            " under secure aggregation the server sees only the sum over clients. Rules that "
            "can: " + ", ".join(n for n in AGGREGATORS.names() if AGGREGATORS.get(n).sum_decomposable))


def check_sampling(cfg: RunConfig) -> None:
    """``federation.sampling = "poisson"``: a round has any size, and one with fewer sampled
    clients than ``federation.min-replies`` is skipped (``server/loop.py``); distributed DP
    under secure aggregation must then be calibrated for no more clients than that, or a round
    between the two would fail instead of being skipped."""
    fed = cfg.federation
    if fed.sampling != "poisson" or not cfg.aggregation.secure or not cfg.has_section("secagg"):
        return
    options = cfg.section("secagg")
    if options.distributed_dp and options.min_clients > fed.min_replies:
        raise ConfigError(
            f"federation.sampling = 'poisson' with secagg.min-clients = {options.min_clients} > "
            f"federation.min-replies = {fed.min_replies}: a round that samples between the two "
            "would fail secure aggregation instead of being skipped; set federation.min-replies "
            f"to at least {options.min_clients}")


def check_federation_size(cfg: RunConfig, num_nodes: int) -> None:
    """Refuse a quorum that a federation of ``num_nodes`` nodes cannot meet.

    Needs the federation's size, which only a simulation knows before it starts (one SuperNode
    per partition); in a deployment ``federation.min-nodes`` is the least the server waits for
    and more may join. The round loop (``server/loop.py``) waits for ``min-nodes`` online nodes,
    samples ``k = max(1, ceil(fraction-train * nodes))`` of them each round and needs
    ``min-replies`` valid replies from those ``k``. Under Poisson sampling ``k`` is random: the
    average ``fraction-train * nodes`` must reach ``min-replies``, and ``federation.population``
    (when set) must count every simulated client.
    """
    fed = cfg.federation
    if fed.min_nodes > num_nodes:
        raise ConfigError(
            f"federation.min-nodes ({fed.min_nodes}) is more than the {num_nodes} simulated "
            f"clients (data.num-partitions): the server would wait federation.node-wait-timeout "
            f"({fed.node_wait_timeout:g} s) for nodes that never come; set federation.min-nodes "
            f"to at most {num_nodes}, or simulate more clients")
    if fed.supernodes:  # logical clients: the SuperNodes serve the whole population
        num_nodes = cfg.client_population()
    if fed.sampling == "poisson":
        population = cfg.client_population()
        if population < num_nodes:
            raise ConfigError(
                f"federation.population ({population}) is less than the {num_nodes} simulated "
                "clients: Poisson sampling's accounting would assume the wrong population; "
                "leave it 0 (data.num-partitions) or set it to at least the number of clients")
        expected = fed.fraction_train * num_nodes
        if fed.min_replies > expected:
            raise ConfigError(
                f"federation.min-replies ({fed.min_replies}) is more than the {expected:g} "
                f"clients Poisson sampling draws on average (federation.fraction-train "
                f"{fed.fraction_train:g} x {num_nodes}): most rounds would be skipped; set "
                f"federation.min-replies to at most {max(1, math.floor(expected))}, or "
                f"federation.fraction-train to at least {_fraction_for(fed.min_replies, num_nodes)}")
        return
    sampled = max(1, math.ceil(fed.fraction_train * num_nodes))
    if fed.min_replies > sampled:
        raise ConfigError(
            f"federation.min-replies ({fed.min_replies}) is more than the {sampled} of "
            f"{num_nodes} clients sampled each round (federation.fraction-train "
            f"{fed.fraction_train:g} x {num_nodes}, rounded up): every round would fail its "
            f"quorum; set federation.min-replies to at most {sampled}, or "
            f"federation.fraction-train to at least {_fraction_for(fed.min_replies, num_nodes)}")


def _fraction_for(replies: int, nodes: int) -> str:
    """The smallest fraction, to 3 significant digits rounded up, that samples ``replies`` of
    ``nodes`` (``ceil(fraction * nodes) >= replies``)."""
    exact = replies / nodes
    scale = 10 ** (2 - math.floor(math.log10(exact)))
    return f"{min(1.0, math.ceil(exact * scale - 1e-9) / scale):g}"


def check_simulation(cfg: RunConfig, num_nodes: int) -> None:
    """What a simulation of ``num_nodes`` SuperNodes can check before it starts, beyond
    :func:`build_config`: the quorum (:func:`check_federation_size`) and, with DP-SGD calibrated
    to ``privacy.target-epsilon``, that the target is within reach for every client
    (:func:`fedkd.privacy.check_target_reachable`, with the smallest local training set among
    the ``num_nodes`` partitions, which each client trains on in a simulation: exact for the
    run). Loads the dataset only in that last case. Raises :class:`ConfigError`."""
    check_federation_size(cfg, num_nodes)
    if not (cfg.privacy.dp_sgd and cfg.privacy.target_epsilon > 0):
        return
    if cfg.federation.supernodes:  # logical clients: each checks its own data when sampled
        return
    load_plugins()
    from fedkd.algorithms import ALGORITHMS
    from fedkd.data.federated import load_federated
    from fedkd.privacy import check_target_reachable

    # A simulated client's partition: num-partitions from its node config (= the SuperNodes).
    data = load_federated(dataclasses.replace(cfg.data, num_partitions=num_nodes))
    smallest = min(len(data.client_indices(p)[0]) for p in range(num_nodes))
    check_target_reachable(
        cfg.privacy, train_size=smallest, batch_size=cfg.train.batch_size,
        steps_per_round=cfg.train.local_steps, planned_rounds=cfg.num_server_rounds,
        releases_per_round=ALGORITHMS.get(cfg.algorithm).releases_per_round(cfg))


def build_algorithm(cfg: RunConfig, num_classes: int, input_shape: tuple[int, int, int]):  # -> Algorithm
    """The configured algorithm for a dataset of ``num_classes`` and ``input_shape``."""
    load_plugins()
    from fedkd.algorithms import ALGORITHMS

    return ALGORITHMS.get(cfg.algorithm)(cfg, num_classes, input_shape)
