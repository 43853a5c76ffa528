"""Unit tests for :mod:`fedkd.models`: shapes, feature/head split, parameter counts, DP-SGD."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from fedkd.models import MODELS, Classifier, build_model
from fedkd.registry import UnknownNameError

FMNIST = (1, 28, 28)
DIGITS = (1, 8, 8)
SHAPES = [FMNIST, DIGITS]
NUM_CLASSES = 10
BATCH = 3

# Parameter counts with 1 input channel and 10 classes, worked out by hand:
#
# cnn (McMahan et al. 2017): conv1 1*32*25+32 = 832; conv2 32*64*25+64 = 51,264;
#   head 512*10+10 = 5,130; fc (64*s*s)*512+512 with s = H/4:
#   28x28: s=7, 3136*512+512 = 1,606,144 -> total 1,663,370 (the published figure)
#    8x8:  s=2,  256*512+512 =   131,584 -> total   188,810
# fedgen-cnn (Zhu et al. 2021): conv1 1*6*9+6 = 60; GN(2,6) 12; conv2 6*16*9+16 = 880;
#   GN(2,16) 32; head 32*10+10 = 330; fc (16*s*s)*32+32 with s = ceil(ceil(H/2)/2):
#   28x28: s=7, 784*32+32 = 25,120 -> total 26,434 (same as the BatchNorm original)
#    8x8:  s=2,  64*32+32 =  2,080 -> total  3,394
# mlp (McMahan et al. 2017, "2NN"): (H*W)*200+200 + 200*200+200 (40,200) + 200*10+10 (2,010):
#   784 inputs: 157,000 -> total 199,210 (the published figure)
#    64 inputs:  13,000 -> total  55,210
# resnet (ResNet-8, GroupNorm, bias-free convs; independent of H and W):
#   stem 1*16*9 + GN 32 = 176
#   block 16->16: 2*(16*16*9) + 2*32 = 4,672
#   block 16->32: 16*32*9 + 32*32*9 + 16*32 (1x1 shortcut) + 3*64 = 14,528
#   block 32->64: 32*64*9 + 64*64*9 + 32*64 (1x1 shortcut) + 3*128 = 57,728
#   head 64*10+10 = 650 -> total 77,754
PARAM_COUNTS: dict[tuple[str, tuple[int, int, int]], int] = {
    ("cnn", FMNIST): 1_663_370,
    ("cnn", DIGITS): 188_810,
    ("fedgen-cnn", FMNIST): 26_434,
    ("fedgen-cnn", DIGITS): 3_394,
    ("mlp", FMNIST): 199_210,
    ("mlp", DIGITS): 55_210,
    ("resnet", FMNIST): 77_754,
    ("resnet", DIGITS): 77_754,
}
FEATURE_DIMS = {"cnn": 512, "fedgen-cnn": 32, "mlp": 200, "resnet": 64}
EXPECTED_NAMES = sorted(FEATURE_DIMS)

ALL_CASES = [(name, shape) for name in EXPECTED_NAMES for shape in SHAPES]
CASE_IDS = [f"{name}-{shape[1]}x{shape[2]}" for name, shape in ALL_CASES]


def _build(name: str, shape: tuple[int, int, int], seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(name, shape, NUM_CLASSES)


def _batch(shape: tuple[int, int, int], batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=generator)


def test_registered_names() -> None:
    assert MODELS.names() == EXPECTED_NAMES


@pytest.mark.parametrize(("name", "shape"), ALL_CASES, ids=CASE_IDS)
def test_shapes_and_feature_head_split(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape).eval()
    x = _batch(shape)
    assert isinstance(model, Classifier)
    assert model.num_classes == NUM_CLASSES
    assert model.feature_dim == FEATURE_DIMS[name]
    assert model.input_shape == shape
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert model.classifier.out_features == NUM_CLASSES
    with torch.no_grad():
        logits = model(x)
        z = model.features(x)
        assert logits.shape == (BATCH, NUM_CLASSES)
        assert z.shape == (BATCH, model.feature_dim)
        assert torch.equal(logits, model.head(z))
        # The head runs on arbitrary (e.g. generated) features on its own.
        generated = torch.randn(5, model.feature_dim)
        assert model.head(generated).shape == (5, NUM_CLASSES)


@pytest.mark.parametrize(("name", "shape"), ALL_CASES, ids=CASE_IDS)
def test_param_counts(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[(name, shape)]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_no_batchnorm_and_opacus_compatible(name: str) -> None:
    model = _build(name, FMNIST)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []


# Inputs do not require grad, so torch warns that Opacus' full backward hooks fire on outputs.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_per_sample_gradients(name: str) -> None:
    model = _build(name, DIGITS)
    gsm = GradSampleModule(model, loss_reduction="sum")
    x = _batch(DIGITS)
    y = torch.tensor([0, 1, 2])
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    params = [p for p in gsm.parameters() if p.requires_grad]
    assert params
    for p in params:
        assert p.grad_sample is not None
        assert p.grad_sample.shape == (BATCH, *p.shape)
        # Per-sample gradients of a summed loss add up to the ordinary gradient.
        torch.testing.assert_close(p.grad_sample.sum(0), p.grad, rtol=1e-4, atol=1e-5)
    gsm.to_standard_module()  # removes the hooks and grad_sample attributes


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_deterministic_init(name: str) -> None:
    np_state, py_state = np.random.get_state(), random.getstate()
    a, b, c = _build(name, DIGITS, 0), _build(name, DIGITS, 0), _build(name, DIGITS, 1)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert any(
        not torch.equal(value, c.state_dict()[key]) for key, value in a.state_dict().items()
    )
    # Building a model consumes no numpy / Python randomness.
    assert random.getstate() == py_state
    new_np_state = np.random.get_state()
    assert new_np_state[1].tolist() == np_state[1].tolist()
    assert new_np_state[2] == np_state[2]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_other_channel_counts_and_class_counts(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (3, 12, 10), 2)
    with torch.no_grad():
        assert model(_batch((3, 12, 10), batch=2)).shape == (2, 2)


def test_list_input_shape_accepted() -> None:
    model = build_model("mlp", [1, 8, 8], 10)
    assert model.input_shape == (1, 8, 8)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        build_model("lenet", FMNIST, NUM_CLASSES)
    message = str(excinfo.value)
    assert "lenet" in message
    for name in EXPECTED_NAMES:
        assert name in message
    # UnknownNameError is also a KeyError and a ValueError.
    assert isinstance(excinfo.value, KeyError)


@pytest.mark.parametrize(
    "shape",
    [
        (28, 28),
        (1, 28, 28, 1),
        (0, 28, 28),
        (1, -8, 8),
        (1, 28.0, 28),
        (True, 8, 8),
        "1x28x28",
        None,
        28,
    ],
)
def test_bad_input_shape(shape: object) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", shape, NUM_CLASSES)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True, "10", None])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", DIGITS, num_classes)  # type: ignore[arg-type]


def test_input_too_small_for_cnn() -> None:
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), NUM_CLASSES)
    for name in ("fedgen-cnn", "resnet", "mlp"):
        model = build_model(name, (1, 1, 1), NUM_CLASSES)
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 1, 1)).shape == (2, NUM_CLASSES)
