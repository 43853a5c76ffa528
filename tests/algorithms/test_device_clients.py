"""A SuperNode with its own data (node config ``data-path``) beside partition clients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.app import client_context
from fedkd.compose import build_config
from fedkd.config import RunConfig
from fedkd.data.device import DeviceDataError
from fedkd.data.federated import load_federated
from tests.algorithms.inprocess import run_inprocess


def device_file(tmp_path: Path, n: int = 120) -> Path:
    # The device's data: digits test images (never in any partition), in [-1, 1] floats.
    data = load_federated(build_config({"data.dataset": "digits"}).data).global_test
    path = tmp_path / "device.npz"
    np.savez(path, x=data.x[:n, 0], y=data.y[:n])
    return path


def test_fd_with_a_device_client(tmp_path: Path) -> None:
    path = device_file(tmp_path)
    rows, audit, _ = run_inprocess({"algorithm": "fd", "num-server-rounds": 2}, 3, tmp_path,
                                   node_configs={2: {"data-path": str(path)}})
    assert [r["num-failures"] for r in rows] == [0, 0]
    device = rows[-1]["clients"]["1002"]
    assert device["num-examples"] == 24  # 20% of its 120 examples are its local test split
    assert all(set(a["arrays"]) <= {"arrays/class-logits", "arrays/class-counts"} for a in audit)


def test_device_data_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 28, 28), np.uint8), y=np.zeros(10, np.int64))
    cfg = build_config({"data.dataset": "digits"})
    with pytest.raises(DeviceDataError, match=r"\(1, 28, 28\), but this federation's data is \(1, 8, 8\)"):
        client_context(cfg, 5, {"data-path": str(path)}, {})


def test_node_config_needs_data(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="neither 'data-path'.* nor 'partition-id'"):
        client_context(build_config({"data.dataset": "digits"}), 5, {}, {})
