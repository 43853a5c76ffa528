"""Data for fedkd: datasets, IDX files, partitioning and the federated split.

* :func:`load_dataset` -- a registered dataset's official train/test sets
  (:class:`TrainTestData` of :class:`ArrayDataset`), cached per process;
* :func:`partition_indices` -- split labelled samples among clients with Flower Datasets'
  partitioners (``"iid"``, ``"dirichlet"``, ``"pathological"``);
* :func:`load_federated` -- public set + client partitions + global test set for a
  :class:`DataSpec`, cached per process; :meth:`FederatedData.client` gives one client's
  :class:`ClientData`;
* :class:`SyntheticPopulation` -- LEAF's Synthetic(alpha, beta), every client generated on
  demand from its own seed (``data.dataset = "synthetic"``: populations of millions).

Importing this package is cheap: ``datasets``/``flwr_datasets`` and scikit-learn are imported
only when partitioning or loading ``digits``. Nothing here uses the network.
"""

from __future__ import annotations

from fedkd.data.datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    ArrayDataset,
    DatasetSource,
    TrainTestData,
    clear_dataset_cache,
    load_dataset,
    resolve_data_dir,
)
from fedkd.data.federated import (
    ClientData,
    DataSpec,
    FederatedData,
    clear_data_caches,
    load_federated,
)
from fedkd.data.idx import DataFileError, read_idx
from fedkd.data.synthetic import SyntheticPopulation  # registers the "synthetic" dataset
from fedkd.data.partition import (
    CLASS_ASSIGNMENT_MODES,
    DEFAULT_MIN_PARTITION_SIZE,
    SCHEMES,
    format_label_histogram,
    label_histogram,
    partition_indices,
    stratified_split,
)

__all__ = [
    "CLASS_ASSIGNMENT_MODES",
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "DEFAULT_MIN_PARTITION_SIZE",
    "FASHION_MNIST_FILES",
    "SCHEMES",
    "ArrayDataset",
    "ClientData",
    "SyntheticPopulation",
    "DataFileError",
    "DataSpec",
    "DatasetSource",
    "FederatedData",
    "TrainTestData",
    "clear_data_caches",
    "clear_dataset_cache",
    "format_label_histogram",
    "label_histogram",
    "load_dataset",
    "load_federated",
    "partition_indices",
    "read_idx",
    "resolve_data_dir",
    "stratified_split",
]
