"""A device's own data: ``--node-config "data-path=/path/mine.npz"`` or an image folder.

Two formats, validated when the client starts, with errors that name the file and the problem:

* ``.npz`` with ``x`` (``[N, H, W]`` or ``[N, C, H, W]``, numeric: uint8 pixels 0..255 or floats
  already in [-1, 1]) and ``y`` (``[N]`` integer labels in ``0..num_classes-1``);
* a folder with one sub-folder per class, named by the class index (``0/``, ``1/``, ...), holding
  image files (PNG, JPEG, ...), converted to grey or RGB to match the federation's input shape.

Images must have the federation's input shape (e.g. 1x28x28 for Fashion-MNIST); pixels are
scaled to [-1, 1] like every fedkd dataset. The data is split into a local train and test set
(``data.local-test-fraction``, seeded) and never leaves the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedkd.data.datasets import ArrayDataset
from fedkd.data.federated import ClientData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DeviceDataError(ValueError):
    """A device's data file or folder is missing or does not fit the federation."""


def _scale(x: np.ndarray, source: Path) -> np.ndarray:
    if x.dtype.kind in "ui":
        if x.min() < 0 or x.max() > 255:
            raise DeviceDataError(f"{source}: integer pixels must be in 0..255")
        return (x.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if x.dtype.kind != "f":
        raise DeviceDataError(f"{source}: x must be numeric, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise DeviceDataError(f"{source}: x contains NaN or Inf")
    if x.min() < -1.0 or x.max() > 1.0:
        raise DeviceDataError(f"{source}: float pixels must already be scaled to [-1, 1]")
    return x.astype(np.float32)


def _check(x: np.ndarray, y: np.ndarray, source: Path, input_shape: tuple[int, int, int],
           num_classes: int) -> ArrayDataset:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise DeviceDataError(
            f"{source}: images of shape {tuple(x.shape[1:])}, but this federation's data is "
            f"{tuple(input_shape)} (C, H, W)"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DeviceDataError(f"{source}: {len(x)} images but y has shape {y.shape}")
    if len(x) < 2:
        raise DeviceDataError(f"{source}: at least 2 examples are needed (a train and a test one)")
    if y.dtype.kind not in "ui":
        raise DeviceDataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DeviceDataError(
            f"{source}: labels must be in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}"
        )
    return ArrayDataset(x=np.ascontiguousarray(_scale(x, source)), y=y.astype(np.int64))


def load_npz(path: Path, input_shape: tuple[int, int, int], num_classes: int) -> ArrayDataset:
    """A device's ``.npz`` with arrays ``x`` and ``y``, validated."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise DeviceDataError(f"{path}: missing arrays {sorted(missing)} (needs x and y)")
            x, y = npz["x"], npz["y"]
    except DeviceDataError:
        raise
    except FileNotFoundError as err:
        raise DeviceDataError(f"{path}: no such file (node config data-path)") from err
    except Exception as err:  # a corrupt or non-npz file
        raise DeviceDataError(f"{path}: not a readable .npz file ({err})") from err
    return _check(x, y, path, input_shape, num_classes)


def load_image_folder(root: Path, input_shape: tuple[int, int, int], num_classes: int) -> ArrayDataset:
    """A folder of class sub-folders ``0/``, ``1/``, ... holding images, validated."""
    from PIL import Image

    mode = {1: "L", 3: "RGB"}.get(input_shape[0])
    if mode is None:
        raise DeviceDataError(f"{root}: image folders need 1 or 3 channels, not {input_shape[0]}")
    xs, ys = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not sub.name.isdigit():
            raise DeviceDataError(f"{sub}: class folders must be named by the class index (0, 1, ...)")
        label = int(sub.name)
        for file in sorted(sub.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    arr = np.asarray(img.convert(mode), dtype=np.uint8)
            except Exception as err:
                raise DeviceDataError(f"{file}: not a readable image ({err})") from err
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DeviceDataError(f"{root}: no images found in class sub-folders")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DeviceDataError(f"{root}: images of different sizes {sorted(shapes)[:3]}")
    return _check(np.stack(xs), np.asarray(ys, dtype=np.int64), root, input_shape, num_classes)


def load_device_data(
    path: str | Path, input_shape: tuple[int, int, int], num_classes: int,
    test_fraction: float, seed: int,
) -> ClientData:
    """The device's data, validated and split into a local train and test set."""
    p = Path(path).expanduser()
    if p.is_dir():
        data = load_image_folder(p, input_shape, num_classes)
    elif p.suffix == ".npz" or p.exists():
        data = load_npz(p, input_shape, num_classes)
    else:
        raise DeviceDataError(f"{p}: no such file or folder (node config data-path)")
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = min(len(data) - 1, int(round(test_fraction * len(data))))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return ClientData(partition_id=-1, train=data.subset(train), test=data.subset(test))
