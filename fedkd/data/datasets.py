"""In-memory image classification datasets and their loaders.

Every dataset is loaded as a :class:`TrainTestData`: an official train set and an official
test set, each an :class:`ArrayDataset` of float32 images ``[N, C, H, W]`` scaled to
``[-1, 1]`` and int64 labels ``[N]``.

Loaders are registered in :data:`DATASETS` under the name used in the run config:

``"fashion-mnist"``
    Read from the four IDX files in a data folder (default
    :data:`DEFAULT_FASHION_MNIST_DIR`, where Debian's ``dataset-fashion-mnist`` package puts
    them). 60 000 train and 10 000 test images, ``1 x 28 x 28``, 10 classes.
``"digits"``
    scikit-learn's embedded 8x8 digits (no files, no network): 1 797 images ``1 x 8 x 8``,
    10 classes, split once into train (80 %) and test (20 %) with a fixed, seeded,
    stratified split so that it has an "official" test set.

:func:`load_dataset` caches what it loads, per process, so that a worker process reads the
files once; Fashion-MNIST's converted arrays are also kept in an on-disk cache that every process
of the machine maps read-only (:mod:`fedkd.data.cache`). Cached arrays are read-only: copy them
(``np.array(a)``, ``torch.tensor(a)``) before changing them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.cache import cache_key, cached_arrays, file_stamp
from fedkd.data.idx import DataFileError, read_idx
from fedkd.data.partition import stratified_split
from fedkd.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "FASHION_MNIST_FILES",
    "ArrayDataset",
    "DatasetSource",
    "TrainTestData",
    "clear_dataset_cache",
    "load_dataset",
    "resolve_data_dir",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Role -> file name (``.gz``) of the four Fashion-MNIST IDX files. Uncompressed copies, the
#: same names without ``.gz``, are accepted too.
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: Fraction of scikit-learn's digits held out as the official test set, and the split's seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

_FASHION_MNIST_CLASSES = 10


def _readonly(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only (in place) and return it."""
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images and labels held in memory.

    Parameters
    ----------
    x
        float32 images ``[N, C, H, W]``, scaled to ``[-1, 1]`` by the loaders (the range is a
        convention, not checked).
    y
        int64 labels ``[N]``.

    Raises
    ------
    TypeError
        If ``x`` or ``y`` is not a numpy array of the right dtype.
    ValueError
        If ``x`` is not 4-D, ``y`` is not 1-D, or their lengths differ.

    Notes
    -----
    Equality and hashing are by identity (the arrays are not compared). Arrays held in the
    per-process caches are read-only.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32:
            raise TypeError(
                f"ArrayDataset.x must be a float32 numpy array, got {_describe(self.x)}"
            )
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64:
            raise TypeError(
                f"ArrayDataset.y must be an int64 numpy array, got {_describe(self.y)}"
            )
        if self.x.ndim != 4:
            raise ValueError(
                f"ArrayDataset.x must have shape [N, C, H, W], got shape {self.x.shape}"
            )
        if self.y.ndim != 1:
            raise ValueError(f"ArrayDataset.y must have shape [N], got shape {self.y.shape}")
        if len(self.x) != len(self.y):
            raise ValueError(
                f"ArrayDataset.x has {len(self.x)} samples but y has {len(self.y)} labels"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return a new dataset with the samples at ``indices`` (copied, writable).

        Parameters
        ----------
        indices
            Integer positions into this dataset.

        Returns
        -------
        ArrayDataset
            The selected samples, in the order of ``indices``.
        """
        return ArrayDataset(x=self.x[indices], y=self.y[indices])


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"an object of type {type(value).__name__}"


@dataclass(frozen=True, eq=False)
class TrainTestData:
    """A dataset's official train and test sets.

    Parameters
    ----------
    name
        The registry name of the dataset.
    train, test
        The official splits.
    num_classes
        Number of classes; labels are in ``range(num_classes)``.
    input_shape
        Shape ``(C, H, W)`` of one image.

    Raises
    ------
    ValueError
        If the splits' image shapes differ from ``input_shape`` or a label is out of range.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for split, data in (("train", self.train), ("test", self.test)):
            if data.input_shape != tuple(self.input_shape):
                raise ValueError(
                    f"{self.name} {split} images have shape {data.input_shape}, "
                    f"expected {tuple(self.input_shape)}"
                )
            if len(data) and (data.y.min() < 0 or data.y.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name} {split} labels must be in [0, {self.num_classes}), "
                    f"found range [{data.y.min()}, {data.y.max()}]"
                )


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: how to load it and where its files are by default.

    Parameters
    ----------
    load
        Called with the resolved data folder (``None`` for datasets without files).
    default_data_dir
        The folder used when the caller gives none, or ``None`` if the dataset reads no
        files (its ``data_dir`` argument is then ignored).
    num_classes, input_shape
        What every client's data must look like (a device with its own data is checked
        against them without loading the dataset).
    federate
        For a dataset whose clients are generated, not split from files: builds the federated
        view from the ``DataSpec`` (:func:`fedkd.data.load_federated` returns it instead of
        partitioning ``load``'s train set). ``None`` for a dataset that is partitioned.
    """

    load: Callable[[Path | None], TrainTestData]
    default_data_dir: str | None
    num_classes: int
    input_shape: tuple[int, int, int]
    federate: Callable[[Any], Any] | None = None


#: Dataset name -> :class:`DatasetSource`.
DATASETS: Registry[DatasetSource] = Registry("dataset")


def _find_idx_file(data_dir: Path, gz_name: str) -> Path:
    """Return the ``.gz`` file if present, else the uncompressed one, else raise."""
    gz_path = data_dir / gz_name
    plain_path = data_dir / gz_name.removesuffix(".gz")
    for candidate in (gz_path, plain_path):
        if candidate.is_file():
            return candidate
    raise DataFileError(
        gz_path, f"Fashion-MNIST file {gz_name} (or uncompressed {plain_path.name}) not found"
    )


def _scale_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W]`` in 0..255 -> float32 ``[N, 1, H, W]`` in [-1, 1]."""
    out = images.astype(np.float32)[:, None, :, :]
    out /= np.float32(127.5)
    out -= np.float32(1.0)
    return out


def _load_fashion_mnist(data_dir: Path | None) -> TrainTestData:
    """Load Fashion-MNIST from the four IDX files in ``data_dir``.

    The converted float32 arrays go through the on-disk cache (:mod:`fedkd.data.cache`): the
    first process decodes the IDX files and writes them once, every later process (simulation
    workers, the server) maps the same files read-only instead of decoding its own copy.
    """
    folder = Path(data_dir if data_dir is not None else DEFAULT_FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise DataFileError(folder, "Fashion-MNIST data folder not found")
    # Find all four files before reading any, so a missing one is reported at once.
    files = {role: _find_idx_file(folder, name) for role, name in FASHION_MNIST_FILES.items()}
    key = cache_key("fashion-mnist", {role: file_stamp(p) for role, p in sorted(files.items())})
    arrays = cached_arrays(key, ["train_x", "train_y", "test_x", "test_y"],
                           lambda: _decode_fashion_mnist(files))
    splits = {split: ArrayDataset(x=_readonly(arrays[f"{split}_x"]),
                                  y=_readonly(arrays[f"{split}_y"]))
              for split in ("train", "test")}
    train_hw, test_hw = splits["train"].input_shape, splits["test"].input_shape
    if train_hw != test_hw:
        raise DataFileError(
            files["test_images"],
            f"test images have shape {test_hw[1:]} but train images {train_hw[1:]}",
        )
    return TrainTestData(
        name="fashion-mnist",
        train=splits["train"],
        test=splits["test"],
        num_classes=_FASHION_MNIST_CLASSES,
        input_shape=train_hw,
    )


def _decode_fashion_mnist(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The four IDX files, checked, as float32 images in [-1, 1] and int64 labels."""
    arrays = {role: read_idx(path) for role, path in files.items()}
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_file, labels_file = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataFileError(
                images_file,
                f"expected uint8 images of shape [N, H, W], got {images.dtype} {images.shape}",
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataFileError(
                labels_file,
                f"expected uint8 labels of shape [N], got {labels.dtype} {labels.shape}",
            )
        if len(images) != len(labels):
            raise DataFileError(
                labels_file,
                f"{len(labels)} labels do not match the {len(images)} images in "
                f"{images_file.name}",
            )
        if len(labels) and int(labels.max()) >= _FASHION_MNIST_CLASSES:
            raise DataFileError(
                labels_file,
                f"label {int(labels.max())} out of range [0, {_FASHION_MNIST_CLASSES})",
            )
        out[f"{split}_x"] = _scale_uint8(images)
        out[f"{split}_y"] = labels.astype(np.int64)
    return out


def _load_digits(data_dir: Path | None) -> TrainTestData:
    """Load scikit-learn's digits with a fixed stratified 80/20 train/test split."""
    del data_dir  # embedded in scikit-learn; no files
    from sklearn.datasets import load_digits  # local import: scikit-learn is slow to import

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # [N, 8, 8], values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    x = images[:, None, :, :] / np.float32(8.0) - np.float32(1.0)
    test_idx, train_idx = stratified_split(
        labels, DIGITS_TEST_FRACTION, np.random.default_rng(DIGITS_SPLIT_SEED)
    )
    train = ArrayDataset(x=_readonly(x[train_idx]), y=_readonly(labels[train_idx]))
    test = ArrayDataset(x=_readonly(x[test_idx]), y=_readonly(labels[test_idx]))
    return TrainTestData(
        name="digits",
        train=train,
        test=test,
        num_classes=int(labels.max()) + 1,
        input_shape=train.input_shape,
    )


DATASETS.register("fashion-mnist")(
    DatasetSource(load=_load_fashion_mnist, default_data_dir=DEFAULT_FASHION_MNIST_DIR,
                  num_classes=10, input_shape=(1, 28, 28))
)
DATASETS.register("digits")(
    DatasetSource(load=_load_digits, default_data_dir=None, num_classes=10, input_shape=(1, 8, 8))
)


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, resolved_dir: str | None) -> TrainTestData:
    source = DATASETS.get(name)
    return source.load(Path(resolved_dir) if resolved_dir is not None else None)


def resolve_data_dir(name: str, data_dir: str | None) -> str | None:
    """Return the absolute folder the dataset ``name`` would be read from.

    Parameters
    ----------
    name
        A registered dataset name.
    data_dir
        The folder asked for, or ``None`` (or ``""``) for the dataset's default.

    Returns
    -------
    str or None
        The resolved folder, or ``None`` for datasets that read no files.

    Raises
    ------
    fedkd.registry.UnknownNameError
        If ``name`` is not registered (the message lists the valid names).
    """
    source = DATASETS.get(name)
    if source.default_data_dir is None:
        return None
    folder = Path(data_dir or source.default_data_dir).expanduser()
    return str(folder.resolve())


def load_dataset(name: str, data_dir: str | None = None) -> TrainTestData:
    """Load a registered dataset, once per process.

    Parameters
    ----------
    name
        A name registered in :data:`DATASETS` (``"fashion-mnist"``, ``"digits"``).
    data_dir
        Folder with the dataset's files; ``None`` for the dataset's default. Ignored by
        datasets that read no files.

    Returns
    -------
    TrainTestData
        The official splits. The result is cached per ``(name, resolved folder)``: a second
        call returns the same object, whose arrays are read-only.

    Raises
    ------
    fedkd.registry.UnknownNameError
        If ``name`` is not registered (a ``KeyError`` and ``ValueError``; the message lists the
        valid names).
    DataFileError
        If a file is missing or malformed (the message names it and says how to get the data).
    """
    return _load_cached(name, resolve_data_dir(name, data_dir))


def clear_dataset_cache() -> None:
    """Forget every dataset loaded by :func:`load_dataset` in this process."""
    _load_cached.cache_clear()
