"""Run configuration: frozen dataclasses built once from Flower's flat ``run_config``.

Flower hands the apps a flat mapping of scalars (``bool | int | float | str``); TOML tables in
``[tool.flwr.app.config]`` arrive as dotted keys (``data.alpha``). This module turns that mapping
into a tree of frozen dataclasses, once, at the app boundary:

* a top-level key maps to a field of :class:`RunConfig` (``num-server-rounds`` ->
  ``num_server_rounds``);
* ``<section>.<key>`` maps to field ``<key>`` (hyphens become underscores) of the section's
  dataclass (``data`` -> :class:`fedkd.data.DataSpec`, ``train`` -> :class:`TrainConfig`...).

Plugin sections: an algorithm or an aggregation rule owns its own section, a frozen dataclass
next to its code, registered with :func:`register_section` when its module is imported (the
``fedgen`` section lives in ``fedkd/algorithms/fedgen.py``; a rule's options under
``aggregation.<rule>``, e.g. ``aggregation.pate.sigma``). :meth:`RunConfig.from_flat` takes the
registered sections; :func:`fedkd.compose.build_config` is the one place that loads every plugin
and builds the whole configuration. This module imports nothing of fedkd but the data spec, the
attack registry, the errors and the validators: it is the bottom layer the others build on.

Unknown keys, values of the wrong type and out-of-range values raise :class:`ConfigError` naming
the key, so a typo never silently falls back to a default. :func:`to_flat` is the inverse and is
what ``outputs/<run>/config.json`` records; a test keeps the defaults here and in
``pyproject.toml`` identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fedkd.attacks import ATTACKS
from fedkd.data.federated import DataSpec
from fedkd.errors import ConfigError
from fedkd.validate import positive

Scalar = Union[bool, int, float, str]

#: Sections owned by plugins (algorithms, aggregation rules): dotted path -> frozen dataclass.
SECTIONS: dict[str, type] = {}


def register_section(path: str, cls: type) -> None:
    """Register ``cls`` (a frozen dataclass) as the config section at ``path`` (``"fedgen"``,
    ``"aggregation.pate"``). Registering the same class twice is a no-op; another class at a
    taken path, or a path of a core section, is an error."""
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"config section {path!r}: {cls!r} is not a frozen dataclass")
    if path.split(".", 1)[0] in _core_fields() and "." not in path:
        raise ValueError(f"config section {path!r} is a core section of RunConfig")
    if SECTIONS.get(path, cls) is not cls:
        raise ValueError(f"config section {path!r} is already owned by {SECTIONS[path].__qualname__}")
    SECTIONS[path] = cls


def _core_fields() -> set[str]:
    return {_key(f.name) for f in dataclasses.fields(RunConfig) if f.name != "sections"}


@dataclass(frozen=True)
class TrainConfig:
    """Local training on a client (``train.*`` keys)."""

    model: str = "cnn"
    local_steps: int = 50
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_batch_size: int = 512
    num_threads: int = 1
    client_models: str = ""
    device: str = "cpu"

    @property
    def client_model_list(self) -> tuple[str, ...]:
        """``client-models`` split on commas (empty: every client uses ``model``)."""
        return tuple(m.strip() for m in self.client_models.split(",") if m.strip())

    def model_for(self, partition_id: int, node_model: str | None = None) -> str:
        """The architecture of one client.

        A node's own choice (``--node-config model=...``) wins; otherwise ``client-models``
        is cycled by partition id (``"cnn,mlp,resnet"``: client 0 cnn, 1 mlp, 2 resnet, 3 cnn...);
        otherwise every client uses ``model``.
        """
        if node_model:
            return node_model
        models = self.client_model_list
        return models[partition_id % len(models)] if models else self.model

    def __post_init__(self) -> None:
        for name in ("local_steps", "batch_size", "learning_rate", "eval_batch_size", "num_threads"):
            positive(f"train.{name.replace('_', '-')}", getattr(self, name))
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight-decay must be >= 0, got {self.weight_decay!r}")
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"train.device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {self.device!r}"
            )


#: Where a client's persistent state (personal model, optimiser, algorithm state, privacy ledger)
#: lives, ``federation.client-state``: ``"node"``, Flower's node state (in memory, for one run:
#: a resumed run restarts every client's state); ``"run"``, journaled files beside the run's
#: outputs (``<output.dir>/<output.run-name>/client-state/``), so that a resumed run continues
#: exactly where the interrupted one stopped: for a simulation on one machine, where the runner
#: chooses it (every client writes where the server does; a simulated client's secrets on that
#: disk are no boundary); ``"disk"``, one file per node and run id, removed when the run ends (a
#: simulation's memory stays flat with many clients; not resumable).
CLIENT_STATE_STORES = ("node", "run", "disk")

#: How the round loop samples clients, ``federation.sampling``: ``"fixed"``, a seeded sample of
#: ``ceil(fraction-train * N)`` online clients without replacement; ``"poisson"``, each online
#: client independently with probability ``fraction-train`` (what amplification by sampling
#: assumes: :meth:`RunConfig.client_sampling_rate`).
CLIENT_SAMPLINGS = ("fixed", "poisson")


@dataclass(frozen=True)
class FederationConfig:
    """Sampling, quorum and timeouts of the server's round loop (``federation.*`` keys).

    ``sampling``: ``"fixed"`` takes ``ceil(fraction-train * N)`` of the ``N`` online clients
    without replacement; ``"poisson"`` takes each online client independently with probability
    ``fraction-train`` (any round size, 0 included; a round with fewer than ``min-replies``
    sampled is skipped, never redrawn), which lets the server ledger claim amplification by
    sampling (:meth:`RunConfig.client_sampling_rate`). ``population``: the number of clients
    sampling draws from (0: ``data.num-partitions``, a simulation's clients).

    ``supernodes``: 0 (default), each SuperNode is one client (its node config ``partition-id``
    or ``client-id`` says which); ``k > 0``, the clients are *logical*: the server samples
    client ids from the whole population (``federation.population``, else
    ``data.num-partitions``), every message names the client it is for, and the online
    SuperNodes (a simulation starts ``k``) serve whichever clients they are sent, each
    client's state kept on disk by client id (``client-state`` ``"disk"`` or ``"run"``). This is
    how a population of millions runs on one machine: Flower holds per-node records only for
    the ``k`` nodes, and nothing is held for a client that was never sampled.
    """

    fraction_train: float = 1.0
    sampling: str = "fixed"
    population: int = 0
    supernodes: int = 0
    min_nodes: int = 2
    min_replies: int = 2
    round_timeout: float = 300.0
    first_round_timeout: float = 900.0
    node_wait_timeout: float = 300.0
    evaluate_clients: bool = True
    evaluate_every: int = 1
    client_state: str = "node"
    max_num_examples: int = 10_000_000
    client_global_test: int = 0
    client_global_test_every: int = 10

    def exchange_timeout(self, rnd: int) -> float:
        """Seconds an exchange of round ``rnd`` waits for replies: round 1 includes the workers'
        start-up (``first-round-timeout``), later rounds ``round-timeout``."""
        return self.first_round_timeout if rnd == 1 else self.round_timeout

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigError(
                f"federation.fraction-train must be in (0, 1], got {self.fraction_train!r}"
            )
        for name in ("min_nodes", "min_replies", "round_timeout", "first_round_timeout",
                     "node_wait_timeout", "max_num_examples"):
            positive(f"federation.{name.replace('_', '-')}", getattr(self, name))
        if self.evaluate_every < 0:
            raise ConfigError(
                f"federation.evaluate-every must be >= 0 (0: never), got {self.evaluate_every!r}"
            )
        if self.client_global_test < 0:
            raise ConfigError(
                "federation.client-global-test must be >= 0 (samples of the official test set "
                f"each client also evaluates its own model on; 0: off), got {self.client_global_test!r}"
            )
        positive("federation.client-global-test-every", self.client_global_test_every)
        if self.client_state not in CLIENT_STATE_STORES:
            raise ConfigError(
                f"federation.client-state must be one of {', '.join(map(repr, CLIENT_STATE_STORES))}, "
                f"got {self.client_state!r}"
            )
        if self.sampling not in CLIENT_SAMPLINGS:
            raise ConfigError(
                f"federation.sampling must be one of {', '.join(map(repr, CLIENT_SAMPLINGS))}, "
                f"got {self.sampling!r}")
        if self.population < 0:
            raise ConfigError(
                f"federation.population must be >= 0 (0: data.num-partitions), got {self.population!r}")
        if self.supernodes < 0:
            raise ConfigError(
                f"federation.supernodes must be >= 0 (0: one SuperNode per client), got "
                f"{self.supernodes!r}")
        if self.supernodes and self.client_state == "node":
            raise ConfigError(
                "federation.supernodes > 0 (logical clients: a SuperNode serves many clients) "
                "needs a client state kept by client id: set federation.client-state to "
                "\"disk\" or \"run\" (\"node\" would mix the clients a node serves)")
        if self.supernodes and self.min_nodes > self.supernodes:
            raise ConfigError(
                f"federation.min-nodes ({self.min_nodes}) is more than federation.supernodes "
                f"({self.supernodes}): the server would wait for nodes that never come")
        if not self.supernodes and self.min_replies > self.min_nodes:
            raise ConfigError(
                f"federation.min-replies ({self.min_replies}) cannot exceed "
                f"federation.min-nodes ({self.min_nodes})"
            )


@dataclass(frozen=True)
class AggregationConfig:
    """The multi-teacher aggregation rule for logit-sharing algorithms (``aggregation.*`` keys).

    ``rule`` names an entry of :data:`fedkd.aggregation.AGGREGATORS`; ``temperature`` softens every
    teacher; ``max-abs-logit`` bounds every logit a reply may carry. A rule's own options are its
    section ``aggregation.<rule>`` (its ``Options`` dataclass, next to the rule's code);
    :func:`fedkd.aggregation.build_rule` builds the configured rule. ``secure``: clients send
    only masked shares of the rule's sums and the server sees their total (secure aggregation,
    :mod:`fedkd.secagg`; options in the ``secagg`` section).
    """

    rule: str = "mean"
    temperature: float = 1.0
    max_abs_logit: float = 1000.0
    secure: bool = False

    def __post_init__(self) -> None:
        positive("aggregation.temperature", self.temperature)
        positive("aggregation.max-abs-logit", self.max_abs_logit)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation towards aggregated targets, shared by the distilling algorithms (``distill.*``).

    ``loss`` names the distillation loss in :data:`fedkd.losses.DISTILLATION_LOSSES` (``kl``:
    T^2 KL on softened probabilities; ``l1-logits``: FedMD's L1 on logits; ``mse-logits``);
    ``weight`` is FD's gamma (CE + weight * distillation loss); ``steps`` are FedMD's digest steps
    on the public batch per round; ``replay-rounds`` is how many rounds of (inputs, targets) the
    server's student distils on (1: this round's only; 0: the algorithm's own default, its
    ``REPLAY_ROUNDS``: 1 for the public-set algorithms, 10 for fedgen-logits); ``exclude-self`` is
    FD's rule of leaving a client's own logits out of its targets (Jeong et al. 2018);
    ``average`` > 0 makes a public-set algorithm's global model the running average of its
    student's weights over rounds, with that decay (:func:`fedkd.training.averaged`).
    """

    loss: str = "kl"
    weight: float = 1.0
    temperature: float = 1.0
    steps: int = 20
    exclude_self: bool = True
    public_batch: int = 500
    server_steps: int = 100
    pretrain_public_steps: int = 0
    replay_rounds: int = 0
    average: float = 0.0

    def __post_init__(self) -> None:
        positive("distill.temperature", self.temperature)
        if not 0.0 <= self.average < 1.0:
            raise ConfigError(f"distill.average must be in [0, 1), got {self.average!r}")
        positive("distill.public-batch", self.public_batch)
        for name in ("weight", "steps", "server_steps", "pretrain_public_steps", "replay_rounds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name.replace('_', '-')} must be >= 0")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (``privacy.*`` keys); see README "Privacy" for the units.

    Example level (one training example of one client): ``dp-sgd`` trains every client update
    with Opacus DP-SGD (``noise-multiplier``, or a ``target-epsilon`` the planned rounds spend;
    ``max-grad-norm``; ``accountant`` rdp or prv; ``grad-sample-mode`` auto, hooks or ghost), each
    client's accountant carried across rounds in its node state; ``output-noise`` > 0 clips every
    released logit row to ``output-clip`` and adds Gaussian noise to what leaves the client (and
    its counts), accounted in the same ledger; ``epsilon-budget`` > 0 stops a client whose next
    round would exceed it. Client level (one client's whole data): randomised aggregation
    (``aggregation.rule = "pate"``) in the server's ledger (``server-accountant`` rdp or pld).
    """

    dp_sgd: bool = False
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"
    epsilon_budget: float = 0.0
    output_noise: float = 0.0
    output_clip: float = 10.0
    server_accountant: str = "rdp"

    def __post_init__(self) -> None:
        positive("privacy.max-grad-norm", self.max_grad_norm)
        positive("privacy.output-clip", self.output_clip)
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta!r}")
        for name in ("noise_multiplier", "target_epsilon", "epsilon_budget", "output_noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"privacy.{name.replace('_', '-')} must be >= 0")
        if self.grad_sample_mode not in ("auto", "hooks", "ghost"):
            raise ConfigError(
                "privacy.grad-sample-mode must be 'auto', 'hooks' or 'ghost' (the modes that "
                "handle the empty batches Poisson sampling gives small clients), got "
                f"{self.grad_sample_mode!r}")
        if self.dp_sgd and self.noise_multiplier == 0 and self.target_epsilon == 0:
            raise ConfigError("privacy.dp-sgd needs noise-multiplier > 0 or target-epsilon > 0")

    @property
    def enabled(self) -> bool:
        """Whether anything a client releases is differentially private (example level)."""
        return self.dp_sgd or self.output_noise > 0


@dataclass(frozen=True)
class AttackConfig:
    """Simulated misbehaving clients, for robustness tests and benchmarks (``attack.*`` keys).

    Clients whose partition id is listed in ``partitions`` corrupt every array they upload with
    ``mode``; off (empty) by default. See :mod:`fedkd.attacks`.
    """

    partitions: str = ""
    mode: str = "none"
    scale: float = 100.0

    @property
    def partition_ids(self) -> frozenset[int]:
        try:
            return frozenset(int(p) for p in self.partitions.split(",") if p.strip())
        except ValueError:
            raise ConfigError(
                f"attack.partitions must be comma-separated integers, got {self.partitions!r}"
            ) from None

    def __post_init__(self) -> None:
        _ = self.partition_ids
        if self.mode != "none" and self.mode not in ATTACKS:
            raise ConfigError(
                f"attack.mode: unknown attack {self.mode!r}; valid names: none, "
                f"{', '.join(ATTACKS.names())}"
            )


@dataclass(frozen=True)
class OutputConfig:
    """Where results go (``output.*`` keys).

    ``audit-replies`` writes ``replies.jsonl``: one line per client reply (round, phase, node,
    accepted or why not, and the name, shape, dtype and size of every array it carried), so what
    left each client can be checked after the run. ``checkpoint`` writes the server's state
    after every round (``checkpoint.pt``, atomically); with ``resume``, a run whose directory
    holds a checkpoint continues after its last complete round.
    """

    dir: str = "outputs"
    run_name: str = ""
    audit_replies: bool = True
    checkpoint: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if not self.dir:
            raise ConfigError("output.dir must not be empty")
        if "/" in self.run_name or self.run_name in (".", ".."):
            raise ConfigError(f"output.run-name must be a plain name, got {self.run_name!r}")


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration: the core sections and the plugins' own sections.

    Build it with :func:`fedkd.compose.build_config` (every plugin loaded, every name and the
    algorithm's own checks validated) or, for the core sections and given plugin sections only,
    :meth:`from_flat`. ``sections`` holds the plugin sections as sorted ``(path, instance)``
    pairs; read one with :meth:`section`.
    """

    algorithm: str = "fedavg"
    seed: int = 0
    num_server_rounds: int = 5
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sections: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        positive("num-server-rounds", self.num_server_rounds)
        fed = self.federation
        if fed.supernodes and fed.population not in (0, self.data.num_partitions):
            raise ConfigError(
                f"federation.supernodes > 0 (logical clients) serves the clients of the run's "
                f"dataset, data.num-partitions = {self.data.num_partitions}; federation.population "
                f"({fed.population}) must be 0 or that number")

    def client_population(self) -> int:
        """The number of clients the round loop samples from: ``federation.population``, else
        ``data.num-partitions`` (a simulation's clients). A deployment whose clients bring
        their own data sets ``federation.population``; under Poisson sampling the round loop
        refuses a round with more clients online than this."""
        return self.federation.population or self.data.num_partitions

    def client_sampling_rate(self) -> float | None:
        """The probability ``q`` with which each client takes part in a round, independently
        of the others, under ``federation.sampling = "poisson"`` (``fraction-train``); ``None``
        under fixed-size sampling. Client-level releases are then accounted as
        ``PoissonSampledDpEvent(q, ...)`` (amplification by sampling)."""
        fed = self.federation
        return fed.fraction_train if fed.sampling == "poisson" else None

    def section(self, path: str) -> Any:
        """The plugin section at ``path`` (``"fedgen"``, ``"aggregation.pate"``)."""
        for name, value in self.sections:
            if name == path:
                return value
        raise KeyError(f"no config section {path!r} in this configuration; sections: "
                       f"{', '.join(n for n, _ in self.sections) or '(none)'}")

    def has_section(self, path: str) -> bool:
        return any(name == path for name, _ in self.sections)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Scalar],
                  sections: Mapping[str, type] | None = None) -> RunConfig:
        """Build the configuration from a flat Flower ``run_config``.

        ``sections`` are the plugin sections to build (path -> dataclass; default: none). Keys
        not given keep their defaults. Raises :class:`ConfigError` for an unknown key, a value of
        the wrong type, or a value a section rejects.
        """
        sections = dict(sections or {})
        core: dict[str, Scalar] = {}
        routed: dict[str, dict[str, Scalar]] = {path: {} for path in sections}
        for key, value in flat.items():
            owner = max((p for p in sections if key.startswith(p + ".")), key=len, default=None)
            if owner is None:
                core[key] = value
            else:
                routed[owner][key[len(owner) + 1:]] = value
        try:
            cfg = _build(cls, core, prefix="")
        except ConfigError as err:
            if sections and str(err).startswith("unknown config key"):
                raise ConfigError(f"{err}; plugin sections: {', '.join(sorted(sections))}") from None
            raise
        built = tuple((path, _build(sections[path], routed[path], prefix=path + "."))
                      for path in sorted(sections))
        return dataclasses.replace(cfg, sections=built)

    def to_flat(self) -> dict[str, Scalar]:
        """The flat ``run_config`` mapping this configuration was (or could be) built from."""
        out = _flatten(self, prefix="")
        for path, value in self.sections:
            out.update(_flatten(value, prefix=path + "."))
        return out

    def with_overrides(self, **sections: Any) -> RunConfig:
        """A copy with whole fields replaced (``cfg.with_overrides(seed=1)``)."""
        return dataclasses.replace(self, **sections)


def pyproject_defaults(path: str | Path) -> dict[str, Scalar]:
    """The flat defaults of ``[tool.flwr.app.config]`` in a ``pyproject.toml``, as Flower sees them.

    Nested tables become dotted keys (``[tool.flwr.app.config.data] alpha`` -> ``data.alpha``).
    """
    with open(path, "rb") as fh:
        return flatten_table(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def toml_value(value: Scalar) -> str:
    """A run-config scalar written as a TOML value (``--run-config``, ``--set KEY=VALUE``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string for ordinary text


def flatten_table(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested TOML table as flat run-config keys (``{"data": {"alpha": 1}}`` -> ``data.alpha``)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(flatten_table(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _key(name: str) -> str:
    return name.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted where floats are."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be finite, got {value!r}")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string (TOML-quoted on the command line), got {value!r}")
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is Union:
        raise TypeError(f"config field {key} must have a single scalar type, not {tp}")
    raise TypeError(f"unsupported config field type {tp} for {key}")


def _build(cls: type, flat: Mapping[str, Scalar], prefix: str) -> Any:
    hints = _hints(cls)
    fields = {_key(f.name): f for f in dataclasses.fields(cls) if f.name != "sections"}
    kwargs: dict[str, Any] = {}
    sections: dict[str, dict[str, Scalar]] = {}
    for key, value in flat.items():
        head, dot, rest = key.partition(".")
        full = prefix + key
        if head not in fields:
            valid = ", ".join(sorted(prefix + k for k in fields))
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {valid}")
        f = fields[head]
        tp = hints[f.name]
        if _is_section(tp):
            if not dot:
                raise ConfigError(f"{full!r} is a section; set its keys as {full}.<key>")
            sections.setdefault(f.name, {})[rest] = value
        else:
            if dot:
                raise ConfigError(f"unknown config key {full!r}: {prefix + head!r} is not a section")
            kwargs[f.name] = _coerce(full, value, tp)
    for name, sub in sections.items():
        kwargs[name] = _build(hints[name], sub, prefix=f"{prefix}{_key(name)}.")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a section's own validation (e.g. DataSpec)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from err


def _flatten(obj: Any, prefix: str) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for f in dataclasses.fields(obj):
        if f.name == "sections":
            continue
        value = getattr(obj, f.name)
        key = prefix + _key(f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out
