"""Client-side input synthesis (fedkd.synthesis): the loss terms' known values, the wire form,
the data guard, both synthesisers and the leakage figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedkd.data.datasets import ArrayDataset
from fedkd.errors import ConfigError
from fedkd.synthesis import (SYNTHESIZERS, DataAccessError, GuardedDataset, SynthesisConfig,
                             dequantise, quantise)
from fedkd.synthesis.inversion import (BatchNormStatistics, batchnorm_statistics_loss,
                                       same_label_similarity, total_variation)
from fedkd.synthesis.leakage import leakage, nearest_distances, roc_auc
from fedkd.synthesis.matching import embedding_network, mean_embedding_loss


# ----- DeepInversion's batch-norm statistic term: known values -----------------------------------
def hand_built_batchnorm() -> nn.Module:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 1.0]))
    return nn.Sequential(bn).eval()


def test_bn_statistic_loss_of_a_hand_built_model() -> None:
    # channel 0 sees 1 and 3 (mean 2, biased variance 1), channel 1 sees 0 and 4 (mean 2, var 4):
    # |(2, 2) - (0.5, -1)| + |(1, 4) - (2, 1)| = sqrt(1.5^2 + 3^2) + sqrt(1 + 9)
    model = hand_built_batchnorm()
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    stats = BatchNormStatistics(model)
    model(x)
    assert stats.loss().item() == pytest.approx(math.sqrt(11.25) + math.sqrt(10.0), rel=1e-6)
    model(torch.tensor([[0.5, -1.0], [0.5, -1.0]]).reshape(2, 2, 1, 1))
    # the running means, variance 0: only the variance gap (2, 1) is left
    assert stats.loss().item() == pytest.approx(math.sqrt(5.0), rel=1e-6)
    stats.close()


def test_bn_statistic_loss_is_zero_without_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2))
    stats = BatchNormStatistics(model)
    model(torch.randn(4, 1, 5, 5))
    assert stats.layers == [] and stats.loss().item() == 0.0


def test_bn_statistic_loss_as_a_pure_function() -> None:
    value = batchnorm_statistics_loss([torch.tensor([3.0, 4.0])], [torch.tensor([1.0])],
                                      [torch.zeros(2)], [torch.tensor([1.0])])
    assert value.item() == pytest.approx(5.0)
    assert batchnorm_statistics_loss([], [], [], []).item() == 0.0


def test_total_variation_and_diversity_known_values() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    assert total_variation(x).item() == pytest.approx(1.0)  # 0.5 down + 0.5 across
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # images 0 and 1 share label 0 and are identical: similarity 1; image 2 is alone
    assert same_label_similarity(features, torch.tensor([0, 0, 1])).item() == pytest.approx(1.0)
    assert same_label_similarity(features, torch.tensor([0, 1, 2])).item() == 0.0


# ----- the wire form and the guard ---------------------------------------------------------------
def test_quantisation_round_trip_and_range() -> None:
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    u = quantise(x)
    assert u.dtype == np.uint8 and u[0] == 0 and u[-1] == 255
    assert np.abs(dequantise(u) - x).max() <= 0.5 / 127.5 + 1e-6
    assert quantise(np.array([-3.0, 7.0, np.float32(0)])).tolist() == [0, 255, 128]


def test_the_guard_refuses_every_read() -> None:
    guard = GuardedDataset("inversion")
    for read in (lambda: guard.x, lambda: guard.y, lambda: len(guard), lambda: guard[0]):
        with pytest.raises(DataAccessError, match="inversion"):
            read()
    assert guard.attempts == 4


def test_config_is_checked() -> None:
    assert sorted(SYNTHESIZERS.names()) == ["inversion", "matching"]
    with pytest.raises(ConfigError, match="synthesis.method must be one of inversion, matching"):
        SynthesisConfig(method="gan")
    with pytest.raises(ConfigError, match="synthesis.per-class must be >= 1"):
        SynthesisConfig(per_class=0)
    with pytest.raises(ConfigError, match="synthesis.every must be >= 0"):
        SynthesisConfig(every=-1)


# ----- the two synthesisers ----------------------------------------------------------------------
def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def test_inversion_reads_only_the_model_and_reaches_its_labels() -> None:
    model = small_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    guard = GuardedDataset("inversion")
    method = SYNTHESIZERS.get("inversion")(SynthesisConfig(method="inversion", steps=150, lr=0.1))
    labels = np.repeat(np.arange(3), 4)
    images = method.synthesise(model, guard, labels, (1, 4, 4), torch.Generator().manual_seed(1))
    assert guard.attempts == 0  # never touched the data
    assert images.shape == (12, 1, 4, 4) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        predicted = model(torch.as_tensor(images)).argmax(1).numpy()
    assert (predicted == labels).mean() >= 0.9  # the model sees the conditioning labels
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # left as it was found


def test_distribution_matching_moves_towards_each_class_embedding() -> None:
    rng = np.random.default_rng(0)
    # class 0: a bright left half, class 1: a bright right half (plus noise)
    x = rng.normal(0, 0.1, (200, 1, 8, 8)).astype(np.float32) - 0.5
    y = np.repeat([0, 1], 100).astype(np.int64)
    x[:100, :, :, :4] += 1.0
    x[100:, :, :, 4:] += 1.0
    data = ArrayDataset(x=np.clip(x, -1, 1), y=y)
    options = SynthesisConfig(method="matching", steps=150, lr=0.05, per_class=3, embed_width=8)
    method = SYNTHESIZERS.get("matching")(options)
    labels = np.repeat([0, 1], 3)
    images = method.synthesise(small_classifier(), data, labels, (1, 8, 8),
                               torch.Generator().manual_seed(2))
    assert images.shape == (6, 1, 8, 8)
    left, right = images[..., :4].mean(axis=(1, 2, 3)), images[..., 4:].mean(axis=(1, 2, 3))
    assert (left[:3] > right[:3]).all() and (right[3:] > left[3:]).all()
    with pytest.raises(ValueError, match=r"no training image of class \[2\]"):
        method.synthesise(small_classifier(), data, np.array([2]), (1, 8, 8),
                          torch.Generator().manual_seed(0))


def test_embedding_networks_are_drawn_from_the_generator() -> None:
    a = embedding_network(1, 4, torch.Generator().manual_seed(3))
    b = embedding_network(1, 4, torch.Generator().manual_seed(3))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a(x), b(x)) and a(x).shape == (2, 4 * 2 * 2)
    assert mean_embedding_loss(torch.ones(3, 2), torch.zeros(1, 2)).item() == 2.0


# ----- leakage -----------------------------------------------------------------------------------
def test_nearest_distances_and_auc_known_values() -> None:
    refs = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert nearest_distances(np.array([[0.0, 1.0], [3.0, 4.0]]), refs).tolist() == [1.0, 0.0]
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_copies_of_training_images_leak_and_fresh_ones_do_not() -> None:
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (100, 1, 4, 4))
    heldout = rng.uniform(-1, 1, (100, 1, 4, 4))
    copied = leakage(train[:20], train, heldout)
    assert copied["leak-nn-train"] == pytest.approx(0.0, abs=1e-6) and copied["leak-nn-ratio"] < 0.01
    assert copied["leak-mia-auc"] > 0.55  # the 20 copied members are found
    fresh = leakage(rng.uniform(-1, 1, (20, 1, 4, 4)), train, heldout)
    assert 0.8 < fresh["leak-nn-ratio"] < 1.25 and 0.35 < fresh["leak-mia-auc"] < 0.65
