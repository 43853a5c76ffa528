"""The federated view of a dataset: public set, client partitions, global test set.

:func:`load_federated` turns a :class:`DataSpec` into a :class:`FederatedData`:

1. load the dataset's official train and test sets (:func:`fedkd.data.load_dataset`);
2. reserve a seeded, class-stratified ``public_fraction`` of the official TRAIN set as the
   public set (for algorithms that distill on public data); it is carved out before
   partitioning and never given to a client;
3. split the rest of the train set (the *pool*) among ``num_partitions`` clients with
   :func:`fedkd.data.partition_indices`;
4. keep the official TEST set whole as the global test set.

:meth:`FederatedData.client` then splits one client's partition into local train and test
sets (``local_test_fraction``). Everything is a function of the spec alone (``seed`` drives
every random choice), so the same spec gives identical arrays in any process; results are
cached per process so that a worker builds them once.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import numbers
import textwrap
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedkd.data.cache import cache_key, cached_arrays
from fedkd.data.datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    ArrayDataset,
    TrainTestData,
    clear_dataset_cache,
    load_dataset,
)
from fedkd.data.partition import (
    DEFAULT_MIN_PARTITION_SIZE,
    SCHEMES,
    format_label_histogram,
    label_histogram,
    partition_indices,
    stratified_split,
)

__all__ = [
    "ClientData",
    "DataSpec",
    "FederatedData",
    "clear_data_caches",
    "load_federated",
]

# Independent random streams derived from DataSpec.seed (numpy SeedSequence entropy words).
_PUBLIC_STREAM = 1
_LOCAL_SPLIT_STREAM = 2


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataSpec:
    """Which data, and how it is split among clients (the ``data.*`` run-config keys).

    Parameters
    ----------
    dataset
        Registered dataset name: ``"fashion-mnist"`` or ``"digits"``.
    data_dir
        Folder with the dataset's files (ignored by ``"digits"``); empty for the default.
    partitioner
        ``"iid"``, ``"dirichlet"`` or ``"pathological"``.
    num_partitions
        Number of clients, ``>= 1`` (and at most the pool size, checked on load).
    alpha
        Dirichlet concentration, ``> 0``.
    classes_per_client
        Classes per client for the pathological partitioner, ``>= 1`` (and at most the
        number of classes, checked on load).
    local_test_fraction
        Share of each client's partition held out as its local test set, in ``[0, 1)``.
    public_fraction
        Share of the official train set reserved as the public set, in ``[0, 1)``; 0 for no
        public set.
    public_labels
        Whether the public set keeps its labels. ``False`` makes it an unlabeled proxy set: its
        labels are withheld (every label reads ``-1``), so no algorithm can use them.
    seed
        Seed of the public split, the partitioning and the local splits, ``>= 0``.
    synthetic_alpha, synthetic_beta
        ``"synthetic"`` only (:mod:`fedkd.data.synthetic`): the standard deviations of LEAF's
        Synthetic(alpha, beta) priors on each client's model and inputs, ``>= 0``.

    Raises
    ------
    ValueError
        If a field is out of range; the message names the field.
    """

    dataset: str = "fashion-mnist"
    data_dir: str = DEFAULT_FASHION_MNIST_DIR
    partitioner: str = "dirichlet"
    num_partitions: int = 10
    alpha: float = 0.5
    classes_per_client: int = 2
    local_test_fraction: float = 0.2
    public_fraction: float = 0.1
    public_labels: bool = True
    seed: int = 0
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise ValueError(
                f"dataset: unknown dataset {self.dataset!r}; valid names: "
                f"{', '.join(DATASETS.names())}"
            )
        if not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a string, got {self.data_dir!r}")
        if self.partitioner not in SCHEMES:
            raise ValueError(
                f"partitioner: unknown partitioner {self.partitioner!r}; valid names: "
                f"{', '.join(SCHEMES)}"
            )
        for name, low in (("num_partitions", 1), ("classes_per_client", 1), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not _is_real(self.alpha) or not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        for name in ("synthetic_alpha", "synthetic_beta"):
            value = getattr(self, name)
            if not _is_real(value) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("local_test_fraction", "public_fraction"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))

    def describe_partitioner(self) -> str:
        """A short description of the partitioning scheme and its parameter."""
        if self.partitioner == "dirichlet":
            return f"dirichlet(alpha={self.alpha:g})"
        if self.partitioner == "pathological":
            return f"pathological({self.classes_per_client} classes per client)"
        return self.partitioner


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local data.

    Parameters
    ----------
    partition_id
        The client's partition, ``0 <= partition_id < num_partitions``.
    train
        Local training set (at least one sample).
    test
        Local test set, for personalised accuracy (may be empty).
    """

    partition_id: int
    train: ArrayDataset
    test: ArrayDataset


def _local_test_size(n: int, fraction: float) -> int:
    """Local test samples for a partition of ``n``: ``round(n * fraction)``, leaving >= 1 train."""
    return max(0, min(int(math.floor(n * fraction + 0.5)), n - 1))


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset split for federated learning; build it with :func:`load_federated`.

    Parameters
    ----------
    spec
        The spec it was built from.
    num_classes
        Number of classes.
    input_shape
        Shape ``(C, H, W)`` of one image.
    public
        The public set: a seeded, class-stratified part of the official train set, reserved
        before partitioning and never part of any client's data (empty if
        ``spec.public_fraction == 0``).
    global_test
        The official test set.
    partitions
        One sorted index array per client, into the pool (see ``pool_indices``).
    pool_indices
        Sorted positions, in ``dataset.train``, of the train samples left after removing the
        public set; ``pool_indices[partitions[p]]`` are client ``p``'s samples.
    dataset
        The official splits the above index into (shared with :func:`load_dataset`'s cache).

    Notes
    -----
    Arrays held here are read-only (the object is cached and shared within a process);
    :meth:`client` returns fresh, writable copies.
    """

    spec: DataSpec
    num_classes: int
    input_shape: tuple[int, int, int]
    public: ArrayDataset
    global_test: ArrayDataset
    partitions: tuple[np.ndarray, ...]
    pool_indices: np.ndarray
    dataset: TrainTestData = field(repr=False)
    _clients: collections.OrderedDict[int, ClientData] = field(
        default_factory=collections.OrderedDict, init=False, repr=False)

    @property
    def num_partitions(self) -> int:
        """Number of clients."""
        return len(self.partitions)

    @property
    def pool_labels(self) -> np.ndarray:
        """Labels of the pool, aligned with the positions in :attr:`partitions`."""
        return self.dataset.train.y[self.pool_indices]

    def _check_partition_id(self, partition_id: int) -> int:
        if not _is_int(partition_id) or not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"partition_id {partition_id!r} is out of range: the data is split into "
                f"{self.num_partitions} partitions (ids 0..{self.num_partitions - 1}); "
                "num-partitions must match the number of clients"
            )
        return int(partition_id)

    def client_indices(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``dataset.train`` of one client's local train and test samples.

        Parameters
        ----------
        partition_id
            The client's partition, ``0 <= partition_id < num_partitions``.

        Returns
        -------
        train, test : numpy.ndarray
            Sorted, disjoint int64 positions; ``train`` has at least one element.

        Raises
        ------
        ValueError
            If ``partition_id`` is out of range.
        """
        pid = self._check_partition_id(partition_id)
        own = self.pool_indices[self.partitions[pid]]
        n_test = _local_test_size(len(own), self.spec.local_test_fraction)
        rng = np.random.default_rng([self.spec.seed, _LOCAL_SPLIT_STREAM, pid])
        order = rng.permutation(len(own))
        return np.sort(own[order[n_test:]]), np.sort(own[order[:n_test]])

    def client(self, partition_id: int) -> ClientData:
        """One client's local train and test sets (a seeded split of its partition).

        Parameters
        ----------
        partition_id
            The client's partition, ``0 <= partition_id < num_partitions``.

        Returns
        -------
        ClientData
            ``round(local_test_fraction * n)`` of the client's ``n`` samples form the test
            set, but at least one sample always stays in the train set. Arrays are fresh
            copies.

        Raises
        ------
        ValueError
            If ``partition_id`` is out of range.
        """
        train_idx, test_idx = self.client_indices(partition_id)
        train = self.dataset.train
        return ClientData(
            partition_id=int(partition_id),
            train=train.subset(train_idx),
            test=train.subset(test_idx),
        )

    def cached_client(self, partition_id: int) -> ClientData:
        """:meth:`client`, kept for the last :data:`CLIENT_CACHE_SIZE` partitions asked for.

        What a simulation worker uses for every message: the split is computed and copied once
        per partition, not once per message. The arrays are shared and read-only.
        """
        return cached_split(self._clients, self._check_partition_id(partition_id), self.client)

    def label_histogram(self) -> np.ndarray:
        """Label counts per client, int64 ``[num_partitions, num_classes]``."""
        return label_histogram(self.pool_labels, self.partitions, self.num_classes)

    def describe(self) -> str:
        """A readable summary: split sizes and the per-client label histogram."""
        spec = self.spec
        sizes = [len(p) for p in self.partitions]
        local = [
            f"{n - _local_test_size(n, spec.local_test_fraction)}/"
            f"{_local_test_size(n, spec.local_test_fraction)}"
            for n in sizes
        ]
        c, h, w = self.input_shape
        lines = [
            f"dataset {spec.dataset}: {self.num_classes} classes, images {c}x{h}x{w}",
            f"official train {len(self.dataset.train)} = public {len(self.public)} "
            f"(public_fraction {spec.public_fraction:g}) + client pool {len(self.pool_indices)}",
            f"global test {len(self.global_test)} (official test set)",
            f"{self.num_partitions} clients, partitioner {spec.describe_partitioner()}, "
            f"seed {spec.seed}; partition sizes min {min(sizes)}, max {max(sizes)}, "
            f"total {sum(sizes)}",
            textwrap.fill(
                f"local train/test per client (local_test_fraction "
                f"{spec.local_test_fraction:g}): " + " ".join(local),
                width=100,
                subsequent_indent="  ",
            ),
            "label counts per client:",
            format_label_histogram(self.label_histogram()),
        ]
        return "\n".join(lines)


#: Partitions whose local split :meth:`FederatedData.cached_client` keeps per process.
CLIENT_CACHE_SIZE = 64
_CLIENT_CACHE_LOCK = threading.Lock()


def cached_split(cache: collections.OrderedDict[int, ClientData], client: int,
                 build: Callable[[int], ClientData]) -> ClientData:
    """``build(client)`` through ``cache``, which keeps the last :data:`CLIENT_CACHE_SIZE`
    clients asked for with their arrays made read-only (what every federated view's
    ``cached_client`` returns: a simulation worker splits each client once, not per message)."""
    with _CLIENT_CACHE_LOCK:
        hit = cache.get(client)
        if hit is not None:
            cache.move_to_end(client)
            return hit
    data = build(client)
    for part in (data.train, data.test):
        part.x.setflags(write=False)
        part.y.setflags(write=False)
    with _CLIENT_CACHE_LOCK:
        cache[client] = data
        while len(cache) > CLIENT_CACHE_SIZE:
            cache.popitem(last=False)
    return data


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _federated_min_partition_size(pool_size: int, num_partitions: int) -> int:
    """Dirichlet ``min_partition_size``: Flower's default 10, less for small pools.

    Capped at a tenth of the even share so that small pools (``digits`` with tens of clients)
    stay feasible, and at least 1 so that every client has a training sample.
    """
    return max(1, min(DEFAULT_MIN_PARTITION_SIZE, pool_size // (10 * num_partitions)))


@functools.lru_cache(maxsize=16)
def load_federated(spec: DataSpec) -> FederatedData:  # or a SyntheticPopulation (same answers)
    """Load and split a dataset as ``spec`` says; cached per process.

    Parameters
    ----------
    spec
        What to load and how to split it.

    Returns
    -------
    FederatedData
        The same object for equal specs within a process; identical arrays for equal specs
        in any process. For the Dirichlet partitioner every client gets at least
        ``min(10, pool_size // (10 * num_partitions))`` (and at least 1) samples; the draw
        is repeated (at most 10 times, with a warning) until that holds.

    Raises
    ------
    fedkd.data.DataFileError
        If the dataset's files are missing or malformed (the message says how to get them).
    ValueError
        If the spec does not fit the dataset (too many partitions or classes per client, or
        a Dirichlet split that leaves a client too small).
    """
    federate = DATASETS.get(spec.dataset).federate
    if federate is not None:  # a population generated on demand (fedkd.data.synthetic)
        return federate(spec)
    data = load_dataset(spec.dataset, spec.data_dir or None)
    if spec.partitioner == "pathological" and spec.classes_per_client > data.num_classes:
        raise ValueError(
            f"classes_per_client={spec.classes_per_client} exceeds the {data.num_classes} "
            f"classes of {spec.dataset}"
        )
    train = data.train
    public_idx, pool_idx = stratified_split(
        train.y, spec.public_fraction, np.random.default_rng([spec.seed, _PUBLIC_STREAM])
    )
    if spec.num_partitions > len(pool_idx):
        raise ValueError(
            f"num_partitions={spec.num_partitions} exceeds the {len(pool_idx)} train samples "
            f"of {spec.dataset} left for clients after the public set"
        )
    min_size = _federated_min_partition_size(len(pool_idx), spec.num_partitions)
    parts = _cached_partitions(spec, train.y[pool_idx], min_size)
    public_x = train.x[public_idx]
    # an unlabeled proxy set: the labels are withheld, never handed to an algorithm
    public_y = train.y[public_idx] if spec.public_labels else np.full(len(public_idx), -1, np.int64)
    return FederatedData(
        spec=spec,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        public=ArrayDataset(x=_readonly(public_x), y=_readonly(public_y)),
        global_test=data.test,
        partitions=tuple(_readonly(p) for p in parts),
        pool_indices=_readonly(pool_idx),
        dataset=data,
    )


def _cached_partitions(spec: DataSpec, labels: np.ndarray, min_size: int) -> list[np.ndarray]:
    """:func:`partition_indices` of the pool, through the on-disk cache.

    The entry is keyed by the pool's labels and every parameter of the split (and the
    partitioning libraries' versions), so a hit returns exactly what a fresh split would; the
    partitioner's warnings are stored with it and issued again. A process that hits the cache
    never imports Hugging Face ``datasets``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = [version("flwr-datasets"), version("datasets")]
    except PackageNotFoundError as err:  # pragma: no cover - both are dependencies
        warnings.warn(f"package {err} not found: the partition cache key leaves the "
                      "partitioning libraries' versions out", RuntimeWarning, stacklevel=2)
        versions = []
    labels = np.ascontiguousarray(labels)
    key = cache_key("partition", spec.partitioner, spec.num_partitions, spec.alpha,
                    spec.classes_per_client, spec.seed, min_size, len(labels),
                    hashlib.sha256(labels.tobytes()).hexdigest(), versions)

    def build() -> dict[str, np.ndarray]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                parts = partition_indices(
                    labels, spec.num_partitions, spec.partitioner, alpha=spec.alpha,
                    classes_per_partition=spec.classes_per_client, seed=spec.seed,
                    min_partition_size=min_size,
                )
            except ValueError as exc:
                raise ValueError(
                    f"cannot split {spec.dataset} ({len(labels)} pool samples) into "
                    f"{spec.num_partitions} {spec.describe_partitioner()} partitions: {exc}"
                ) from exc
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return {"indices": np.concatenate(parts).astype(np.int64),
                "offsets": np.cumsum([0] + [len(p) for p in parts]).astype(np.int64),
                "warnings": np.array(messages, dtype=np.str_)}

    entry = cached_arrays(key, ["indices", "offsets", "warnings"], build, mmap=False)
    for message in entry["warnings"].tolist():
        warnings.warn(message, UserWarning, stacklevel=3)
    offsets = entry["offsets"]
    indices = np.asarray(entry["indices"])
    return [indices[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def clear_data_caches() -> None:
    """Forget every cached :func:`load_federated` and :func:`load_dataset` result."""
    load_federated.cache_clear()
    clear_dataset_cache()
