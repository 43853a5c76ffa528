"""Tests for fedkd.data: IDX reader, dataset loaders, partitioning, federated split.

Fast: they use scikit-learn's embedded digits and tiny IDX files written here. Only
``test_real_fashion_mnist`` reads the real Fashion-MNIST files (skipped if not installed).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedkd.data import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    SCHEMES,
    ArrayDataset,
    DataFileError,
    DataSpec,
    FederatedData,
    TrainTestData,
    clear_data_caches,
    format_label_histogram,
    label_histogram,
    load_dataset,
    load_federated,
    partition_indices,
    read_idx,
    stratified_split,
)
from fedkd.registry import UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[2]
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
HAVE_FASHION_MNIST = all((Path(DEFAULT_FASHION_MNIST_DIR) / f).is_file() for f in FASHION_FILES)

IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


# --------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """Serialise ``array`` as an IDX file (header written with struct)."""
    code = IDX_CODES[array.dtype] if code is None else code
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    data = idx_bytes(array)
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_fake_fashion(folder: Path, *, gz: bool = True, n_train: int = 30, n_test: int = 10,
                       size: int = 5) -> Path:
    """Write four tiny Fashion-MNIST-like IDX files; returns the folder."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


def assert_data_file_error(excinfo: pytest.ExceptionInfo[DataFileError], path: Path) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert "dataset-fashion-mnist" in message
    assert "data-dir" in message


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fed_digest(fd: FederatedData) -> str:
    c0, c1 = fd.client(0), fd.client(fd.num_partitions - 1)
    return digest(
        fd.public.x, fd.public.y, fd.pool_indices, *fd.partitions,
        c0.train.x, c0.train.y, c0.test.y, c1.train.y, c1.test.x,
    )


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_data_caches()
    yield
    clear_data_caches()


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return np.asarray(load_dataset("digits").train.y)


def balanced_labels(per_class: int = 1000, num_classes: int = 10) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(123).permutation(labels)


# --------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_round_trip_images_and_labels(tmp_path: Path, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    images = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    img = read_idx(write_idx(tmp_path / f"img-idx3-ubyte{suffix}", images))
    lab = read_idx(write_idx(tmp_path / f"lab-idx1-ubyte{suffix}", labels))
    np.testing.assert_array_equal(img, images)
    np.testing.assert_array_equal(lab, labels)
    assert img.dtype == np.uint8 and img.shape == (4, 3, 2) and img.flags.writeable
    assert lab.shape == (4,)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_other_dtypes_big_endian(tmp_path: Path, dtype: type) -> None:
    values = np.array([[-3, 2], [1000 if dtype != np.int8 else 100, -7]], dtype=dtype)
    out = read_idx(write_idx(tmp_path / "x.idx", values))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_idx_gzip_detected_from_content(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3], dtype=np.uint8)
    path = tmp_path / "labels-no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {
        "truncated": good[:-1],
        "oversized": good + b"\x00",
        "bad-magic": b"\x01" + good[1:],
        "wrong-dtype-code": good[:2] + b"\x07" + good[3:],
        "zero-dims": b"\x00\x00\x08\x00",
        "short-header": good[:6],
        "empty": b"",
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / f"{name}-idx3-ubyte"
        paths[name].write_bytes(data)
    paths["corrupt-gz"] = tmp_path / "corrupt-idx3-ubyte.gz"
    paths["corrupt-gz"].write_bytes(gzip.compress(good)[:-12])
    paths["not-gz"] = tmp_path / "plain-named-idx3-ubyte.gz"
    paths["not-gz"].write_bytes(good)
    paths["missing"] = tmp_path / "missing-idx3-ubyte.gz"
    return paths


@pytest.mark.parametrize(
    "case",
    ["truncated", "oversized", "bad-magic", "wrong-dtype-code", "zero-dims", "short-header",
     "empty", "corrupt-gz", "not-gz", "missing"],
)
def test_idx_bad_file_raises_data_file_error(tmp_path: Path, case: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(DataFileError) as excinfo:
        read_idx(path)
    assert_data_file_error(excinfo, path)
    assert isinstance(excinfo.value, OSError)
    assert excinfo.value.path == str(path)


def test_idx_error_messages_say_what_is_wrong(tmp_path: Path) -> None:
    paths = _bad_files(tmp_path)
    expected = {
        "truncated": "truncated IDX payload",
        "oversized": "oversized IDX payload",
        "bad-magic": "bad IDX magic",
        "wrong-dtype-code": "0x07",
        "missing": "not found",
        "corrupt-gz": "gzip",
    }
    for case, fragment in expected.items():
        with pytest.raises(DataFileError, match=fragment):
            read_idx(paths[case])


def test_data_file_error_pickles(tmp_path: Path) -> None:
    import pickle

    err = DataFileError(tmp_path / "x", "IDX file not found")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.path == err.path


# --------------------------------------------------------------------------------------------
# datasets


def test_array_dataset_validation() -> None:
    x = np.zeros((3, 1, 2, 2), np.float32)
    y = np.zeros(3, np.int64)
    assert len(ArrayDataset(x, y)) == 3
    assert ArrayDataset(x, y).input_shape == (1, 2, 2)
    with pytest.raises(TypeError, match="float32"):
        ArrayDataset(x.astype(np.float64), y)
    with pytest.raises(TypeError, match="int64"):
        ArrayDataset(x, y.astype(np.int32))
    with pytest.raises(ValueError, match="N, C, H, W"):
        ArrayDataset(np.zeros((3, 2, 2), np.float32), y)
    with pytest.raises(ValueError, match=r"\[N\]"):
        ArrayDataset(x, np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="3 samples but y has 2"):
        ArrayDataset(x, y[:2])
    empty = ArrayDataset(np.zeros((0, 1, 2, 2), np.float32), np.zeros(0, np.int64))
    assert len(empty) == 0


def test_train_test_data_validation() -> None:
    ds = ArrayDataset(np.zeros((2, 1, 2, 2), np.float32), np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="labels must be in"):
        TrainTestData("toy", ds, ds, num_classes=2, input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        TrainTestData("toy", ds, ds, num_classes=3, input_shape=(1, 3, 3))


def test_registry_names_and_unknown_dataset() -> None:
    assert {"fashion-mnist", "digits"} <= set(DATASETS.names())
    with pytest.raises(UnknownNameError, match="digits, fashion-mnist"):
        load_dataset("mnist", None)


def test_digits_dataset() -> None:
    data = load_dataset("digits", None)
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == round(0.2 * 1797)
    for split in (data.train, data.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.min() == -1.0 and split.x.max() == 1.0
        assert not split.x.flags.writeable  # cached: protected against in-place edits
    # stratified: every class is ~20 % test
    train_counts = np.bincount(data.train.y, minlength=10)
    test_counts = np.bincount(data.test.y, minlength=10)
    share = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(share - 0.2) < 0.01)
    # data_dir is ignored and the cache returns the same object
    assert load_dataset("digits", "/nonexistent") is data


def test_fake_fashion_mnist_loads_gz_and_plain(tmp_path: Path) -> None:
    for gz in (True, False):
        folder = write_fake_fashion(tmp_path / f"gz{gz}", gz=gz)
        data = load_dataset("fashion-mnist", str(folder))
        assert data.input_shape == (1, 5, 5) and data.num_classes == 10
        assert data.train.x.shape == (30, 1, 5, 5) and data.test.x.shape == (10, 1, 5, 5)
        assert data.train.x[0, 0, 0, 0] == -1.0 and data.train.x[0, 0, 0, 1] == 1.0
        assert data.train.x.min() >= -1.0 and data.train.x.max() <= 1.0
        np.testing.assert_array_equal(data.train.y, np.arange(30) % 10)
        # cached per resolved folder: another spelling of the same folder hits the cache
        assert load_dataset("fashion-mnist", str(folder) + "/") is data


@pytest.mark.parametrize("missing", FASHION_FILES)
def test_fashion_mnist_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    folder = write_fake_fashion(tmp_path / "fm")
    (folder / missing).unlink()
    with pytest.raises(DataFileError) as excinfo:
        load_dataset("fashion-mnist", str(folder))
    assert_data_file_error(excinfo, folder / missing)


def test_fashion_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as excinfo:
        load_dataset("fashion-mnist", str(tmp_path / "nope"))
    assert_data_file_error(excinfo, tmp_path / "nope")


def test_fashion_mnist_inconsistent_files(tmp_path: Path) -> None:
    folder = write_fake_fashion(tmp_path / "fm")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataFileError, match="29 labels do not match the 30 images"):
        load_dataset("fashion-mnist", str(folder))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(30, 10, np.uint8))
    with pytest.raises(DataFileError, match="out of range"):
        load_dataset("fashion-mnist", str(folder))


@pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason=f"Fashion-MNIST not installed in {DEFAULT_FASHION_MNIST_DIR} "
    "(apt-get install -y dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", None)
    assert data.train.x.shape == (60000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.y.shape == (60000,) and data.test.y.shape == (10000,)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.train.x.min() == -1.0 and data.train.x.max() == 1.0
    assert data.test.x.min() >= -1.0 and data.test.x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(data.train.y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.test.y), np.full(10, 1000))
    assert load_dataset("fashion-mnist", DEFAULT_FASHION_MNIST_DIR) is data


# --------------------------------------------------------------------------------------------
# partitioning


def _check_disjoint_complete(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no duplicates
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_disjoint_complete_deterministic(
    scheme: str, digits_labels: np.ndarray
) -> None:
    parts = partition_indices(digits_labels, 10, scheme, seed=3)
    assert len(parts) == 10
    _check_disjoint_complete(parts, len(digits_labels))
    again = partition_indices(digits_labels, 10, scheme, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(digits_labels, 10, scheme, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_partitions_are_balanced_and_mixed(digits_labels: np.ndarray) -> None:
    parts = partition_indices(digits_labels, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    hist = label_histogram(digits_labels, parts, 10)
    assert np.all(hist > 0)  # shuffled before sharding: every client sees every class


def test_dirichlet_alpha_controls_skew() -> None:
    labels = balanced_labels()
    uniform = label_histogram(labels, partition_indices(labels, 5, "dirichlet", alpha=1000.0), 10)
    shares = uniform / uniform.sum(axis=1, keepdims=True)
    assert np.all(np.abs(shares - 0.1) < 0.02)
    skewed = label_histogram(labels, partition_indices(labels, 5, "dirichlet", alpha=0.1), 10)
    skewed_shares = skewed / skewed.sum(axis=1, keepdims=True)
    assert skewed_shares.max(axis=1).mean() > 0.4
    assert shares.max(axis=1).mean() < 0.13


def test_dirichlet_min_partition_size(digits_labels: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="draw was repeated"):  # seed 0 needs a redraw
        parts = partition_indices(
            digits_labels, 10, "dirichlet", alpha=0.1, seed=0, min_partition_size=40
        )
    assert min(len(p) for p in parts) >= 40
    with pytest.raises(ValueError, match="increase alpha"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            partition_indices(digits_labels, 10, "dirichlet", alpha=0.01, min_partition_size=100)
    with pytest.raises(ValueError, match="impossible"):
        partition_indices(digits_labels, 10, "dirichlet", min_partition_size=1000)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_classes_per_partition(k: int, digits_labels: np.ndarray) -> None:
    parts = partition_indices(digits_labels, 10, "pathological", classes_per_partition=k)
    hist = label_histogram(digits_labels, parts, 10)
    assert np.all((hist > 0).sum(axis=1) == k)
    _check_disjoint_complete(parts, len(digits_labels))


def test_pathological_unused_classes_warn(digits_labels: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="assigned classes .* to no partition"):
        parts = partition_indices(
            digits_labels, 2, "pathological", classes_per_partition=1, class_assignment="random"
        )
    hist = label_histogram(digits_labels, parts, 10)
    assert np.all((hist > 0).sum(axis=1) == 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "shards"}, "valid schemes: iid, dirichlet, pathological"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"classes_per_partition": 0}, "classes_per_partition"),
        ({"classes_per_partition": 11}, "classes_per_partition"),
        ({"num_partitions": 0}, "num_partitions"),
        ({"num_partitions": 10_000}, "num_partitions"),
        ({"num_partitions": 2.5}, "num_partitions"),
        ({"seed": -1}, "seed"),
        ({"min_partition_size": -1}, "min_partition_size"),
        ({"class_assignment": "round-robin"}, "class_assignment"),
    ],
)
def test_partition_invalid_arguments(kwargs: dict, match: str, digits_labels: np.ndarray) -> None:
    args = {"num_partitions": 5, "scheme": "dirichlet", **kwargs}
    with pytest.raises(ValueError, match=match):
        partition_indices(digits_labels, **args)


def test_partition_invalid_labels() -> None:
    with pytest.raises(ValueError, match="1-D"):
        partition_indices(np.zeros((4, 2), np.int64), 2, "iid")
    with pytest.raises(ValueError, match="integers"):
        partition_indices(np.zeros(4), 2, "iid")
    with pytest.raises(ValueError, match="empty"):
        partition_indices(np.zeros(0, np.int64), 1, "iid")


def test_label_histogram_and_format() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2], np.int64)
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    hist = label_histogram(labels, parts, 4)
    np.testing.assert_array_equal(hist, [[1, 1, 0, 0], [0, 1, 3, 0]])
    text = format_label_histogram(hist)
    lines = text.splitlines()
    assert lines[0].split()[-5:] == ["0", "1", "2", "3", "total"]
    assert lines[2].split() == ["client", "0", "1", "1", "0", "0", "2"]
    assert lines[3].split() == ["client", "1", "0", "1", "3", "0", "4"]
    assert lines[-1].split() == ["total", "1", "2", "3", "0", "6"]
    with pytest.raises(ValueError, match="labels must be in"):
        label_histogram(labels, parts, 2)


def test_stratified_split() -> None:
    labels = balanced_labels(per_class=33, num_classes=7)
    chosen, rest = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert len(chosen) == round(0.25 * len(labels))
    assert len(np.intersect1d(chosen, rest)) == 0 and len(chosen) + len(rest) == len(labels)
    counts = np.bincount(labels[chosen], minlength=7)
    assert counts.max() - counts.min() <= 1
    empty, everything = stratified_split(labels, 0.0, np.random.default_rng(0))
    assert len(empty) == 0 and len(everything) == len(labels)


# --------------------------------------------------------------------------------------------
# federated split


def digits_spec(**overrides: object) -> DataSpec:
    fields: dict = {"dataset": "digits", "num_partitions": 5, **overrides}
    return DataSpec(**fields)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_federated_split_is_disjoint_and_complete(scheme: str) -> None:
    # 10 clients >= 10 classes, so the pathological scheme uses every class too
    fd = load_federated(digits_spec(partitioner=scheme, num_partitions=10))
    official = load_dataset("digits")
    n_train = len(official.train)
    assert fd.global_test is official.test
    assert fd.num_classes == 10 and fd.input_shape == (1, 8, 8)
    # public set: a stratified 10 % of the official train set, outside the pool
    assert len(fd.public) == round(0.1 * n_train)
    assert len(fd.public) + len(fd.pool_indices) == n_train
    public_counts = np.bincount(fd.public.y, minlength=10)
    assert public_counts.max() - public_counts.min() <= 2
    client_sets = [fd.client_indices(p) for p in range(fd.num_partitions)]
    all_client = np.concatenate([np.concatenate(pair) for pair in client_sets])
    assert len(np.unique(all_client)) == len(all_client) == len(fd.pool_indices)
    np.testing.assert_array_equal(np.sort(all_client), fd.pool_indices)
    public_positions = np.setdiff1d(np.arange(n_train), fd.pool_indices)
    np.testing.assert_array_equal(fd.public.y, official.train.y[public_positions])
    np.testing.assert_array_equal(fd.public.x, official.train.x[public_positions])
    for pid, (train_idx, test_idx) in enumerate(client_sets):
        assert len(np.intersect1d(train_idx, test_idx)) == 0
        n = len(fd.partitions[pid])
        assert len(train_idx) + len(test_idx) == n
        assert len(test_idx) == round(0.2 * n)
        client = fd.client(pid)
        assert client.partition_id == pid
        np.testing.assert_array_equal(client.train.y, official.train.y[train_idx])
        np.testing.assert_array_equal(client.test.x, official.train.x[test_idx])
        assert client.train.x.flags.writeable  # fresh copy
    hist = fd.label_histogram()
    assert hist.shape == (10, 10) and hist.sum() == len(fd.pool_indices)


def test_federated_cache_and_determinism() -> None:
    spec = digits_spec(partitioner="dirichlet", alpha=0.3, seed=7)
    fd = load_federated(spec)
    assert load_federated(digits_spec(partitioner="dirichlet", alpha=0.3, seed=7)) is fd
    assert not fd.public.x.flags.writeable and not fd.partitions[0].flags.writeable
    first = fed_digest(fd)
    clear_data_caches()
    fd_again = load_federated(spec)
    assert fd_again is not fd and fed_digest(fd_again) == first
    other = load_federated(digits_spec(partitioner="dirichlet", alpha=0.3, seed=8))
    assert fed_digest(other) != first


def test_federated_deterministic_in_fresh_process(tmp_path: Path) -> None:
    """Same spec -> same arrays in a new process; no network access, no HF cache writes."""
    code = f"""
import socket
attempts = []
def _blocked(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled in this test")
socket.socket.connect = _blocked
socket.getaddrinfo = _blocked
import sys
sys.path.insert(0, {str(tmp_path)!r})
from test_helpers_digest import fed_digest
from fedkd.data import DataSpec, load_federated
spec = DataSpec(dataset="digits", num_partitions=5, partitioner="dirichlet", alpha=0.3, seed=7)
print(fed_digest(load_federated(spec)))
print("network attempts:", len(attempts))
"""
    # The helper hashes exactly as this module does.
    import inspect

    (tmp_path / "test_helpers_digest.py").write_text(
        "from __future__ import annotations\nimport hashlib\nimport numpy as np\n"
        + inspect.getsource(digest)
        + inspect.getsource(fed_digest)
    )
    hf_home = tmp_path / "hf-home"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(hf_home)}
    # Without the offline switches conftest sets: fedkd.data must not need them.
    for name in ("HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    out_digest, attempts = result.stdout.strip().splitlines()[-2:]
    assert attempts == "network attempts: 0"
    expected = fed_digest(load_federated(
        digits_spec(partitioner="dirichlet", alpha=0.3, seed=7)
    ))
    assert out_digest == expected
    assert not hf_home.exists() or not any(hf_home.rglob("*")), "datasets wrote to its cache"


def test_federated_public_fraction_zero_and_tiny_clients() -> None:
    fd = load_federated(digits_spec(public_fraction=0.0, partitioner="iid"))
    assert len(fd.public) == 0 and fd.public.x.shape == (0, 1, 8, 8)
    assert len(fd.pool_indices) == len(load_dataset("digits").train)
    # one sample per client: it stays in the local train set
    n_pool = len(load_federated(digits_spec(partitioner="iid")).pool_indices)
    tiny = load_federated(digits_spec(partitioner="iid", num_partitions=n_pool))
    client = tiny.client(n_pool - 1)
    assert len(client.train) == 1 and len(client.test) == 0
    two = load_federated(digits_spec(partitioner="iid", num_partitions=n_pool // 2))
    assert len(two.client(0).train) >= 1


def test_federated_errors() -> None:
    fd = load_federated(digits_spec())
    for bad in (-1, 5, True, 1.0):
        with pytest.raises(ValueError, match="partition_id .* out of range"):
            fd.client(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_partitions=100000 exceeds"):
        load_federated(digits_spec(num_partitions=100_000))
    with pytest.raises(ValueError, match="classes_per_client=11 exceeds the 10 classes"):
        load_federated(digits_spec(partitioner="pathological", classes_per_client=11))


def test_describe_lists_every_client() -> None:
    fd = load_federated(digits_spec(num_partitions=12, partitioner="pathological"))
    text = fd.describe()
    for pid in range(12):
        assert f"client {pid} " in text
    assert "public 144" in text and "global test 359" in text
    assert "pathological(2 classes per client)" in text
    assert text.splitlines()[-1].split()[-1] == str(len(fd.pool_indices))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "cifar10"),
        ("partitioner", "shards"),
        ("num_partitions", 0),
        ("num_partitions", 2.0),
        ("alpha", 0),
        ("alpha", float("inf")),
        ("classes_per_client", 0),
        ("local_test_fraction", 1.0),
        ("local_test_fraction", -0.1),
        ("public_fraction", 1.0),
        ("public_fraction", "0.1"),
        ("seed", -1),
        ("seed", True),
        ("data_dir", None),
    ],
)
def test_data_spec_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DataSpec(**{field: value})  # type: ignore[arg-type]


def test_data_spec_defaults_and_normalisation() -> None:
    spec = DataSpec()
    assert (spec.dataset, spec.data_dir, spec.partitioner, spec.num_partitions) == (
        "fashion-mnist", DEFAULT_FASHION_MNIST_DIR, "dirichlet", 10
    )
    assert (spec.alpha, spec.classes_per_client, spec.local_test_fraction) == (0.5, 2, 0.2)
    assert (spec.public_fraction, spec.seed) == (0.1, 0)
    normalised = DataSpec(alpha=1, public_fraction=0)
    assert isinstance(normalised.alpha, float) and isinstance(normalised.public_fraction, float)
    assert hash(normalised) == hash(DataSpec(alpha=1.0, public_fraction=0.0))
