from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedkd.data.device import DeviceDataError, load_device_data

SHAPE = (1, 8, 8)


def npz(tmp_path: Path, x: np.ndarray, y: np.ndarray, name: str = "mine.npz") -> Path:
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return path


def test_npz_is_scaled_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8)).astype(np.uint8)  # [N, H, W] pixels 0..255
    y = rng.integers(0, 10, 50)
    data = load_device_data(npz(tmp_path, x, y), SHAPE, 10, test_fraction=0.2, seed=1)
    assert len(data.train) == 40 and len(data.test) == 10
    assert data.train.x.shape == (40, 1, 8, 8) and data.train.x.dtype == np.float32
    assert data.train.x.min() >= -1.0 and data.train.x.max() <= 1.0
    # Every example lands in exactly one split, with its own label.
    both = np.concatenate([data.train.x, data.test.x]).reshape(50, -1)
    expected = (x.astype(np.float32) / 127.5 - 1).reshape(50, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, expected))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int64), r"shape \(1, 28, 28\).*\(1, 8, 8\)"),
        (np.zeros((5, 8, 8), np.uint8), np.full(5, 10), r"labels must be in 0..9"),
        (np.zeros((5, 8, 8), np.uint8), np.zeros(4, np.int64), r"5 images but y has shape"),
        (np.full((5, 8, 8), np.nan, np.float32), np.zeros(5, np.int64), r"NaN or Inf"),
        (np.full((5, 8, 8), 3.0, np.float32), np.zeros(5, np.int64), r"scaled to \[-1, 1\]"),
        (np.zeros((1, 8, 8), np.uint8), np.zeros(1, np.int64), r"at least 2 examples"),
        (np.zeros((5, 8, 8), np.uint8), np.zeros(5, np.float32), r"labels must be integers"),
    ],
)
def test_bad_npz_gives_clear_errors(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    path = npz(tmp_path, x, y)
    with pytest.raises(DeviceDataError, match=message) as info:
        load_device_data(path, SHAPE, 10, 0.2, 0)
    assert str(path) in str(info.value)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DeviceDataError, match="no such file"):
        load_device_data(tmp_path / "absent.npz", SHAPE, 10, 0.2, 0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DeviceDataError, match="not a readable .npz"):
        load_device_data(tmp_path / "junk.npz", SHAPE, 10, 0.2, 0)
    np.savez(tmp_path / "nox.npz", y=np.zeros(3, np.int64))
    with pytest.raises(DeviceDataError, match=r"missing arrays \['x'\]"):
        load_device_data(tmp_path / "nox.npz", SHAPE, 10, 0.2, 0)


def test_image_folder(tmp_path: Path) -> None:
    for label in (0, 3):
        (tmp_path / "imgs" / str(label)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * label + i, np.uint8)).save(
                tmp_path / "imgs" / str(label) / f"{i}.png")
    data = load_device_data(tmp_path / "imgs", SHAPE, 10, test_fraction=0.0, seed=0)
    assert len(data.test) == 0 and sorted(data.train.y.tolist()) == [0, 0, 0, 3, 3, 3]
    (tmp_path / "imgs" / "cats").mkdir()
    with pytest.raises(DeviceDataError, match="named by the class index"):
        load_device_data(tmp_path / "imgs", SHAPE, 10, 0.0, 0)
