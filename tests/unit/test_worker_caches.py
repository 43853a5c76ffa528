"""Per-worker caches and copy-free payloads (issue 8): each gives what the uncached path gives.

* fedkd.data's on-disk cache (dataset arrays, partitions) and the per-partition client cache;
* ``fedkd.training.model_with_state`` (one model per architecture instead of one per message);
* the protocol's one-copy ``.npy`` codec and the shared encoding of a request sent to many nodes;
* FedAvg's streaming weighted average;
* devices: ``train.device`` resolution and the device scope (CPU only here);
* the client app's node state in a file (``federation.client-state = "disk"``).
"""

from __future__ import annotations

import gzip
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, Context, Message, Metadata, RecordDict

from fedkd.algorithms.fedavg import weighted_average
from fedkd.compose import build_config
from fedkd.config import ConfigError, RunConfig
from fedkd.data import DataSpec, clear_data_caches, load_dataset, load_federated
from fedkd.data.cache import CACHE_ENV, cache_key, cached_arrays
from fedkd.data.federated import CLIENT_CACHE_SIZE
from fedkd.models import build_model
from fedkd.protocol import PHASE_KEY, Payload, decode, encode, from_array, to_array
from fedkd.training import (
    current_device,
    device_scope,
    fit_supervised,
    load_numpy_state,
    model_with_state,
    resolve_device,
    seeded_generator,
    state_to_numpy,
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    clear_data_caches()
    yield folder
    clear_data_caches()


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion(folder: Path, n_train: int = 200, n_test: int = 50) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    _idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return folder


# ----- fedkd.data ---------------------------------------------------------------------------


def test_dataset_cache_maps_the_same_arrays_as_a_fresh_load(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = str(fake_fashion(tmp_path / "fmnist"))
    monkeypatch.setenv(CACHE_ENV, "off")
    fresh = load_dataset("fashion-mnist", data_dir)
    monkeypatch.setenv(CACHE_ENV, str(cache_dir))
    for attempt in ("written", "read back"):
        clear_data_caches()
        cached = load_dataset("fashion-mnist", data_dir)
        for split in ("train", "test"):
            a, b = getattr(fresh, split), getattr(cached, split)
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
            assert b.x.dtype == np.float32 and b.y.dtype == np.int64
            assert isinstance(b.x, np.memmap), attempt  # shared through the page cache
            assert not b.x.flags.writeable and not b.y.flags.writeable
    assert len(list(cache_dir.glob("fashion-mnist-*"))) == 1


def test_dataset_cache_key_follows_the_files(cache_dir: Path, tmp_path: Path) -> None:
    data_dir = fake_fashion(tmp_path / "fmnist", n_train=100)
    first = load_dataset("fashion-mnist", str(data_dir))
    fake_fashion(data_dir, n_train=120)  # rewritten: new size and mtime, so a new entry
    clear_data_caches()
    second = load_dataset("fashion-mnist", str(data_dir))
    assert len(first.train) == 100 and len(second.train) == 120


def test_partition_cache_returns_what_a_fresh_split_returns(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DataSpec(dataset="digits", partitioner="dirichlet", num_partitions=7, alpha=0.3, seed=3)
    monkeypatch.setenv(CACHE_ENV, "off")
    fresh = load_federated(spec)
    monkeypatch.setenv(CACHE_ENV, str(cache_dir))
    for _ in range(2):  # the first load writes the entry, the second reads it
        clear_data_caches()
        cached = load_federated(spec)
        assert len(cached.partitions) == len(fresh.partitions)
        for a, b in zip(fresh.partitions, cached.partitions):
            np.testing.assert_array_equal(a, b)
            assert not b.flags.writeable
        np.testing.assert_array_equal(fresh.pool_indices, cached.pool_indices)
        np.testing.assert_array_equal(fresh.public.x, cached.public.x)
        for pid in (0, 6):
            a, b = fresh.client(pid), cached.cached_client(pid)
            np.testing.assert_array_equal(a.train.x, b.train.x)
            np.testing.assert_array_equal(a.test.y, b.test.y)
    assert len(list(cache_dir.glob("partition-*"))) == 1


def test_partition_cache_repeats_the_partitioners_warnings(cache_dir: Path) -> None:
    spec = DataSpec(dataset="digits", partitioner="pathological", num_partitions=3,
                    classes_per_client=1, seed=0)
    for _ in range(2):
        clear_data_caches()
        with pytest.warns(UserWarning, match="assigned classes"):
            load_federated(spec)


def test_cached_client_is_shared_read_only_and_bounded(cache_dir: Path) -> None:
    fd = load_federated(DataSpec(dataset="digits", partitioner="iid", num_partitions=80))
    first = fd.cached_client(3)
    assert fd.cached_client(3) is first
    assert not first.train.x.flags.writeable and not first.test.y.flags.writeable
    assert fd.client(3).train.x.flags.writeable  # client() still hands out fresh copies
    for pid in range(80):
        fd.cached_client(pid)
    assert len(fd._clients) == CLIENT_CACHE_SIZE
    with pytest.raises(ValueError, match="out of range"):
        fd.cached_client(80)


def test_cache_off_and_unwritable_folders_fall_back_to_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built = {"a": np.arange(5)}
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cached_arrays(cache_key("t", 1), ["a"], lambda: built)["a"] is built["a"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level("WARNING", logger="fedkd.data.cache"):
        np.testing.assert_array_equal(cached_arrays(cache_key("t", 2), ["a"], lambda: built)["a"],
                                      built["a"])
    # not silently: the warning names the folder and the cause
    assert [r.getMessage() for r in caplog.records] == [
        f"cache folder {blocker / 'cache'} cannot be written (NotADirectoryError: [Errno 20] Not "
        f"a directory: '{blocker / 'cache'}'): the arrays are kept in memory only"]


# ----- models, payloads, aggregation --------------------------------------------------------


def test_model_with_state_equals_a_fresh_model_with_those_weights() -> None:
    torch.manual_seed(1)
    source = build_model("mlp", (1, 8, 8), 10)
    arrays = state_to_numpy(source)
    fresh = build_model("mlp", (1, 8, 8), 10)
    load_numpy_state(fresh, arrays)
    rng_before = torch.random.get_rng_state()
    reused = model_with_state("mlp", (1, 8, 8), 10, arrays)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # no global RNG drawn
    for (k, a), (_, b) in zip(fresh.state_dict().items(), reused.state_dict().items()):
        assert torch.equal(a, b), k
    # a later message gets the same instance, fully overwritten, gradients cleared
    x = torch.randn(4, 1, 8, 8)
    reused(x).sum().backward()
    reused.eval()
    again = model_with_state("mlp", (1, 8, 8), 10, arrays)
    assert again is reused and again.training
    assert all(p.grad is None and p.requires_grad for p in again.parameters())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                  again.state_dict().values()))


@pytest.mark.parametrize("value", [
    np.random.default_rng(0).standard_normal((64, 3, 5)).astype(np.float32),
    np.arange(7, dtype=np.int64), np.zeros((0, 4), np.float32), np.ones(3, bool),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.arange(24.0).reshape(4, 6)[:, ::2],
])
def test_npy_codec_matches_flowers(value: np.ndarray) -> None:
    ours, theirs = to_array(value), Array(np.ascontiguousarray(value))
    assert ours.data == theirs.data and ours.shape == theirs.shape and ours.dtype == theirs.dtype
    fortran = Array(value)  # Flower keeps Fortran order; the decoder must read it back
    decoded = from_array(fortran)
    np.testing.assert_array_equal(decoded, fortran.numpy())
    assert decoded.flags.writeable and decoded.dtype == value.dtype


def test_from_array_rejects_what_np_load_rejects() -> None:
    good = to_array(np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError):
        from_array(Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=b"junk" * 10))
    with pytest.raises(ValueError):  # fewer bytes than the header promises
        from_array(Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=good.data[:-4]))
    with pytest.raises(TypeError):
        from_array(Array(dtype="float32", shape=(6,), stype="other", data=good.data))


def test_a_request_sent_to_many_nodes_is_encoded_once() -> None:
    weights = {"w": np.ones((3, 3), np.float32)}
    cache: dict = {}
    a = encode(Payload(arrays=weights, config={"round": 1}), arrays_cache=cache)
    b = encode(Payload(arrays=weights, config={"round": 1, PHASE_KEY: "fit"}), arrays_cache=cache)
    c = encode(Payload(arrays={"w": np.zeros((3, 3), np.float32)}), arrays_cache=cache)
    assert a["arrays"] is b["arrays"] and c["arrays"] is not a["arrays"]
    np.testing.assert_array_equal(decode(b).arrays["w"], weights["w"])
    assert decode(b).config[PHASE_KEY] == "fit"


def test_streaming_weighted_average_is_bitwise_the_stacked_one() -> None:
    rng = np.random.default_rng(0)
    states = [{"a": rng.standard_normal(5000).astype(np.float32),
               "b": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(60)]
    counts = rng.integers(1, 100, 60).astype(float)
    w = counts / counts.sum()
    got = weighted_average(states, list(counts))
    for key in states[0]:
        stacked = np.sum([wi * s[key].astype(np.float64) for wi, s in zip(w, states)], axis=0)
        np.testing.assert_array_equal(got[key], stacked.astype(np.float32))


# ----- devices ------------------------------------------------------------------------------


def test_device_resolution_and_scope_on_a_cpu_machine() -> None:
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda:0")
    assert current_device().type == "cpu"
    with device_scope("cpu") as dev:
        assert dev.type == "cpu" and current_device() == dev
    with pytest.raises(ConfigError, match="train.device"):
        build_config({"train.device": "tpu"})


def test_training_in_a_cpu_device_scope_is_unchanged() -> None:
    data = load_federated(DataSpec(dataset="digits", num_partitions=2)).client(0).train

    def run() -> dict[str, np.ndarray]:
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 10)
        fit_supervised(model, data, steps=3, batch_size=16, learning_rate=0.1,
                       generator=seeded_generator(0, 1, 0))
        return state_to_numpy(model)

    plain = run()
    with device_scope("cpu"):
        scoped = run()
    for k in plain:
        np.testing.assert_array_equal(plain[k], scoped[k])


# ----- node state on disk -------------------------------------------------------------------


def _message(node_id: int, content: RecordDict) -> Message:
    metadata = Metadata(run_id=77, message_id=f"m{node_id}", src_node_id=0, dst_node_id=node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                        message_type="train")
    return Message(content=content, metadata=metadata)


def test_disk_client_state_gives_the_same_rounds_as_node_state(tmp_path: Path) -> None:
    """Two FD rounds on one node: the personal model lives in a file instead of Context.state,
    and the replies are identical."""
    from client.app import STATE_KEY, _handle, client_state_path

    replies = {}
    for store in ("node", "disk"):
        run_config = {"algorithm": "fd", "data.dataset": "digits", "train.model": "mlp",
                      "train.local-steps": 3, "data.num-partitions": 2,
                      "federation.client-state": store, "output.dir": str(tmp_path / store)}
        context = Context(run_id=77, node_id=5, node_config={"partition-id": 1, "num-partitions": 2},
                          state=RecordDict(), run_config=run_config)
        out = []
        for rnd in (1, 2):
            request = encode(Payload(arrays={"targets": np.full((10, 10), 0.1, np.float32),
                                             "target-mask": np.ones(10, np.uint8)},
                                     config={"round": rnd, PHASE_KEY: "fit"}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reply = _handle(_message(5, request), context)
            out.append(decode(reply.content))
        cfg = build_config(run_config)
        path = client_state_path(cfg, 77, 5)
        if store == "disk":
            assert STATE_KEY not in context.state and path.exists()
        else:
            assert STATE_KEY in context.state and not path.exists()
        replies[store] = out
    for a, b in zip(replies["node"], replies["disk"]):
        np.testing.assert_array_equal(a.arrays["class-logits"], b.arrays["class-logits"])
        assert a.metrics == b.metrics
