"""Split a labelled pool of samples among federated clients.

:func:`partition_indices` runs one of Flower Datasets' partitioners (``flwr-datasets``) on an
in-memory ``datasets.Dataset`` made from the labels, and returns plain index arrays. Nothing
is downloaded and nothing is written to disk: the dataset is built with
``datasets.Dataset.from_dict`` and only ever held in memory (``datasets`` only fetches or
caches for hub and file loads, which are never used here).

Schemes (:data:`SCHEMES`):

``"iid"``
    :class:`flwr_datasets.partitioner.IidPartitioner`, applied to a seeded random
    permutation of the pool (the partitioner itself cuts contiguous shards and does not
    shuffle): partitions of equal size (within one sample) and the pool's label mix.
``"dirichlet"``
    :class:`flwr_datasets.partitioner.DirichletPartitioner` on the labels: each class is
    divided among the partitions in proportions drawn from ``Dirichlet(alpha)``. Small
    ``alpha`` (0.1) gives very skewed label mixes, large ``alpha`` (1000) near-uniform ones.
    The draw is repeated (up to 10 times) while a partition has fewer than
    ``min_partition_size`` samples.
``"pathological"``
    :class:`flwr_datasets.partitioner.PathologicalPartitioner`: every partition gets samples
    of exactly ``classes_per_partition`` classes; each class is divided evenly among the
    partitions that have it.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CLASS_ASSIGNMENT_MODES",
    "DEFAULT_MIN_PARTITION_SIZE",
    "SCHEMES",
    "format_label_histogram",
    "label_histogram",
    "partition_indices",
    "stratified_split",
]

#: Valid partitioning scheme names.
SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "pathological")

#: Valid ``class_assignment`` values for the pathological scheme (see
#: :class:`flwr_datasets.partitioner.PathologicalPartitioner`).
CLASS_ASSIGNMENT_MODES: tuple[str, ...] = ("first-deterministic", "random", "deterministic")

#: Default smallest partition the Dirichlet scheme accepts (Flower Datasets' default).
DEFAULT_MIN_PARTITION_SIZE = 10

_DIRICHLET_RETRY_WARNING = "The specified min_partition_size"
_PATHOLOGICAL_UNUSED_WARNING = "will NOT be used due to the chosen configuration"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a class-stratified random subset of ``round(fraction * N)`` samples.

    Each class contributes in proportion to its size; rounding is by largest remainder, so
    the subset has exactly ``round(fraction * N)`` samples and every class is within one
    sample of its exact share.

    Parameters
    ----------
    labels
        Integer labels ``[N]``.
    fraction
        Size of the subset as a fraction of ``N``, in ``[0, 1]``.
    rng
        Source of randomness (the only one used, so the result is a function of its state).

    Returns
    -------
    selected, rest : numpy.ndarray
        Sorted int64 positions into ``labels``: the subset and the remaining samples.
    """
    y = _check_labels(labels)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    classes, counts = np.unique(y, return_counts=True)
    target = int(math.floor(fraction * len(y) + 0.5))
    exact = fraction * counts.astype(np.float64)
    quota = np.floor(exact).astype(np.int64)
    remainder = target - int(quota.sum())
    if remainder > 0:
        # Largest fractional part first; ties broken by class order (stable sort).
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:remainder]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota, strict=True)
    ]
    selected = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[selected] = False
    return selected.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def _validate(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    alpha: float,
    classes_per_partition: int,
    seed: int,
    min_partition_size: int,
    class_assignment: str,
) -> int:
    """Check the arguments of :func:`partition_indices`; return the number of classes."""
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown partitioning scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}"
        )
    n = len(labels)
    if n == 0:
        raise ValueError("cannot partition an empty set of labels")
    if not _is_int(num_partitions) or not 1 <= num_partitions <= n:
        raise ValueError(
            f"num_partitions must be an integer in [1, {n}] (the number of samples), "
            f"got {num_partitions!r}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
        math.isfinite(alpha) and alpha > 0
    ):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    num_classes = len(np.unique(labels))
    if not _is_int(classes_per_partition) or not 1 <= classes_per_partition <= num_classes:
        raise ValueError(
            f"classes_per_partition must be an integer in [1, {num_classes}] (the number of "
            f"classes present), got {classes_per_partition!r}"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_int(min_partition_size) or min_partition_size < 0:
        raise ValueError(
            f"min_partition_size must be a non-negative integer, got {min_partition_size!r}"
        )
    if scheme == "dirichlet" and min_partition_size * num_partitions > n:
        raise ValueError(
            f"min_partition_size={min_partition_size} is impossible for {num_partitions} "
            f"partitions of {n} samples; lower min_partition_size or num_partitions"
        )
    if class_assignment not in CLASS_ASSIGNMENT_MODES:
        raise ValueError(
            f"unknown class_assignment {class_assignment!r}; valid values: "
            f"{', '.join(CLASS_ASSIGNMENT_MODES)}"
        )
    return num_classes


def _make_partitioner(
    scheme: str,
    num_partitions: int,
    *,
    alpha: float,
    classes_per_partition: int,
    seed: int,
    min_partition_size: int,
    self_balancing: bool,
    class_assignment: str,
) -> Any:
    # Imported here: ``datasets`` and ``flwr_datasets`` take seconds to import.
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if scheme == "iid":
        return IidPartitioner(num_partitions=int(num_partitions))
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=int(num_partitions),
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=int(min_partition_size),
            self_balancing=bool(self_balancing),
            shuffle=False,  # order is irrelevant: the indices are sorted afterwards
            seed=int(seed),
        )
    return PathologicalPartitioner(
        num_partitions=int(num_partitions),
        partition_by="label",
        num_classes_per_partition=int(classes_per_partition),
        class_assignment_mode=class_assignment,  # type: ignore[arg-type]
        shuffle=False,
        seed=int(seed),
    )


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
    min_partition_size: int = DEFAULT_MIN_PARTITION_SIZE,
    self_balancing: bool = False,
    class_assignment: str = "first-deterministic",
) -> list[np.ndarray]:
    """Split positions ``0..N-1`` of a labelled pool among ``num_partitions`` clients.

    Parameters
    ----------
    labels
        Integer labels ``[N]`` of the pool.
    num_partitions
        Number of partitions (clients), ``1 <= num_partitions <= N``.
    scheme
        ``"iid"``, ``"dirichlet"`` or ``"pathological"`` (see the module docstring).
    alpha
        Dirichlet concentration, ``> 0`` (checked for every scheme, used by ``"dirichlet"``).
    classes_per_partition
        Classes per partition for ``"pathological"``; ``1 <= k <=`` number of classes
        present (checked for every scheme).
    seed
        Seed (non-negative) of all randomness; the result is a function of the arguments.
    min_partition_size
        Smallest acceptable partition for ``"dirichlet"`` (the Dirichlet draw is repeated,
        at most 10 times, until every partition has at least this many samples). Other schemes
        ignore it: ``"iid"`` partitions have ``N // num_partitions`` or one more samples, and
        ``"pathological"`` ones at least one.
    self_balancing
        ``"dirichlet"`` only: stop giving samples to a partition once it holds more than
        ``N / num_partitions`` (Flower Datasets' ``self_balancing``).
    class_assignment
        ``"pathological"`` only: how classes are assigned to partitions, one of
        :data:`CLASS_ASSIGNMENT_MODES`. ``"first-deterministic"`` (the paper's choice) gives
        partition ``i`` class ``i mod C`` and random others, so every class is used when
        ``num_partitions >= C``.

    Returns
    -------
    list of numpy.ndarray
        ``num_partitions`` sorted, pairwise disjoint int64 arrays of positions into ``labels``.
        Their union is every position, except with ``"pathological"`` when some class is
        assigned to no partition (then a warning names the unused classes).

    Raises
    ------
    ValueError
        For an unknown scheme (the message lists the valid ones), out-of-range arguments, or
        a Dirichlet split that cannot meet ``min_partition_size``.

    Warns
    -----
    UserWarning
        When the Dirichlet draw had to be repeated, or pathological partitioning left classes
        unused.
    """
    y = _check_labels(labels)
    _validate(
        y,
        num_partitions,
        scheme,
        alpha,
        classes_per_partition,
        seed,
        min_partition_size,
        class_assignment,
    )
    n = len(y)
    import datasets  # local import, see _make_partitioner

    if scheme == "iid":
        # IidPartitioner cuts contiguous shards without shuffling: shuffle the rows first.
        order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    else:
        order = np.arange(n, dtype=np.int64)
    # In memory only (no cache files); arrow format makes column reads vectorised.
    table = datasets.Dataset.from_dict({"label": y[order], "idx": order}).with_format("arrow")
    partitioner = _make_partitioner(
        scheme,
        num_partitions,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        seed=seed,
        min_partition_size=min_partition_size,
        self_balancing=self_balancing,
        class_assignment=class_assignment,
    )
    partitioner.dataset = table
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parts = [partitioner.load_partition(pid) for pid in range(num_partitions)]
        except ValueError as exc:
            if scheme == "dirichlet" and "max number of attempts" in str(exc):
                raise ValueError(
                    f"dirichlet partitioning could not give each of {num_partitions} "
                    f"partitions at least min_partition_size={min_partition_size} of {n} "
                    f"samples in 11 draws with alpha={alpha}; increase alpha, or lower "
                    "min_partition_size or num_partitions"
                ) from exc
            raise ValueError(f"{scheme} partitioning failed: {exc}") from exc
    _reissue_warnings(caught, scheme, min_partition_size)
    result = [
        np.sort(np.asarray(part[:]["idx"].to_numpy(), dtype=np.int64)) for part in parts
    ]
    used = np.concatenate(result)
    if len(np.unique(used)) != len(used):  # pragma: no cover - would be a partitioner bug
        raise RuntimeError(f"{scheme} partitioner returned overlapping partitions")
    if scheme == "pathological" and len(used) < n:
        unused = np.setdiff1d(np.unique(y), np.unique(y[used]))
        warnings.warn(
            f"pathological partitioning assigned classes {unused.tolist()} to no partition; "
            f"their {n - len(used)} samples are left out. Use num_partitions >= number of "
            "classes (with class_assignment='first-deterministic') to use every class.",
            UserWarning,
            stacklevel=2,
        )
    return result


def _reissue_warnings(
    caught: Sequence[warnings.WarningMessage], scheme: str, min_partition_size: int
) -> None:
    """Summarise Flower Datasets' warnings, re-issue unknown ones unchanged."""
    retries = 0
    for record in caught:
        text = str(record.message)
        if _DIRICHLET_RETRY_WARNING in text:
            retries += 1
        elif _PATHOLOGICAL_UNUSED_WARNING in text:
            continue  # replaced by partition_indices' own, accurate warning
        else:
            warnings.warn_explicit(
                record.message, record.category, record.filename, record.lineno
            )
    if retries:
        warnings.warn(
            f"{scheme}: a partition had fewer than min_partition_size={min_partition_size} "
            f"samples, so the Dirichlet draw was repeated {retries} time(s); the result is "
            "still deterministic in the seed",
            UserWarning,
            stacklevel=3,
        )


def label_histogram(
    labels: np.ndarray, partitions: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Count the labels of each partition.

    Parameters
    ----------
    labels
        Integer labels ``[N]`` in ``range(num_classes)``.
    partitions
        Index arrays into ``labels``.
    num_classes
        Number of classes ``C``.

    Returns
    -------
    numpy.ndarray
        int64 counts ``[P, C]``: row ``p`` counts the labels of ``partitions[p]``.
    """
    y = _check_labels(labels)
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), found range [{y.min()}, {y.max()}]"
        )
    hist = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for row, part in enumerate(partitions):
        hist[row] = np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=num_classes)
    return hist


def format_label_histogram(hist: np.ndarray) -> str:
    """Format a ``[P, C]`` label histogram as a text table.

    Parameters
    ----------
    hist
        Counts, one row per client, one column per class.

    Returns
    -------
    str
        A table with a header row of class ids, one row per client (``client 0`` ...), a
        ``total`` column (samples per client) and a ``total`` row (samples per class).
    """
    counts = np.asarray(hist)
    if counts.ndim != 2:
        raise ValueError(f"hist must be 2-D [clients, classes], got shape {counts.shape}")
    counts = counts.astype(np.int64)
    num_clients, num_classes = counts.shape
    row_totals = counts.sum(axis=1)
    col_totals = counts.sum(axis=0)
    grand_total = int(counts.sum())
    header = ["client \\ class", *(str(c) for c in range(num_classes)), "total"]
    rows = [
        [f"client {p}", *(str(int(v)) for v in counts[p]), str(int(row_totals[p]))]
        for p in range(num_clients)
    ]
    rows.append(["total", *(str(int(v)) for v in col_totals), str(grand_total)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = " ".join(
            cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)
        )
        return f"{first}  {rest}".rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])
