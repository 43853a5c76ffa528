from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.algorithms.fedavg import weighted_average
from fedkd.data.datasets import ArrayDataset
from fedkd.models import build_model
from fedkd.training import (
    averaged,
    batch_indices,
    evaluate,
    fit_supervised,
    load_numpy_state,
    seeded_generator,
    state_to_numpy,
)


def test_weighted_average_known_values() -> None:
    a = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32), "b": np.array([4.0], np.float32)}
    out = weighted_average([a, b], [1, 3])  # (1*a + 3*b) / 4
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], [3.0])
    assert out["w"].dtype == np.float32


def test_weighted_average_rejects_bad_weights() -> None:
    a = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([a, a], [0, 0])
    with pytest.raises(ValueError, match="no client states"):
        weighted_average([], [])


def test_batch_indices_cover_each_pass_without_repeats() -> None:
    batches = list(batch_indices(10, 3, steps=6, generator=seeded_generator(0)))
    assert all(len(b) == 3 for b in batches)
    first_pass = torch.cat(batches[:3])  # 9 of 10 samples, no repeats within a pass
    assert len(set(first_pass.tolist())) == 9


def test_batch_indices_seeded() -> None:
    a = [b.tolist() for b in batch_indices(50, 8, 5, seeded_generator(1, 2, 3))]
    b = [b.tolist() for b in batch_indices(50, 8, 5, seeded_generator(1, 2, 3))]
    c = [b.tolist() for b in batch_indices(50, 8, 5, seeded_generator(1, 2, 4))]
    assert a == b and a != c


def test_batch_size_larger_than_dataset() -> None:
    batches = list(batch_indices(3, 32, 2, seeded_generator(0)))
    assert [sorted(b.tolist()) for b in batches] == [[0, 1, 2], [0, 1, 2]]


def _toy_data(n: int = 64) -> ArrayDataset:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 1, 4, 4)).astype(np.float32)
    x[:, 0, 0, 0] += np.where(y == 1, 1.5, -1.5)  # linearly separable on one pixel
    return ArrayDataset(x=np.clip(x, -1, 1), y=y.astype(np.int64))


def test_fit_supervised_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 2)
    data = _toy_data()
    before = evaluate(model, data)
    stats = fit_supervised(model, data, steps=60, batch_size=16, learning_rate=0.1,
                           generator=seeded_generator(0))
    after = evaluate(model, data)
    assert stats.steps == 60 and stats.samples_seen == 60 * 16
    assert after.loss < before.loss and after.accuracy >= 0.95


def test_evaluate_empty_dataset_has_zero_weight() -> None:
    model = build_model("mlp", (1, 4, 4), 2)
    empty = ArrayDataset(x=np.zeros((0, 1, 4, 4), np.float32), y=np.zeros(0, np.int64))
    assert evaluate(model, empty).num_examples == 0


def test_state_round_trip() -> None:
    torch.manual_seed(0)
    a = build_model("cnn", (1, 28, 28), 10)
    torch.manual_seed(1)
    b = build_model("cnn", (1, 28, 28), 10)
    load_numpy_state(b, state_to_numpy(a))
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(a(x), b(x))


def test_the_running_average_of_the_student_known_values() -> None:
    # d = 0.75: the first average is a copy; then 0.75 * 1 + 0.25 * 5 = 2 for every float
    # weight, and integer buffers (BatchNorm's step count) are taken as they are.
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for v in model.state_dict().values():
            v.fill_(1)
    first = averaged(None, model, 0.75)
    assert first is not model and all(torch.equal(a, b) for a, b in zip(
        first.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        for v in model.state_dict().values():
            v.fill_(5)
    second = averaged(first, model, 0.75)
    assert second is first
    for name, value in second.state_dict().items():
        expected = 5 if name.endswith("num_batches_tracked") else 2
        assert torch.all(value == expected), name
