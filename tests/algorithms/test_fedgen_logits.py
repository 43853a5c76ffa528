from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedkd.compose import build_config
from fedkd.config import ConfigError
from fedkd.losses import diversity_loss
from fedkd.models.generators import InputGenerator, LatentGenerator, LowFrequencyGenerator, dct_basis
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "fedgen-logits", "fedgen-logits.synthetic-batch": 40, "distill.server-steps": 10,
        "fedgen.generator-steps": 3, "distill.steps": 3, "train.local-steps": 5}


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_input_generator_shapes_and_range(shape: tuple[int, int, int]) -> None:
    g = InputGenerator(10, shape)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = g(g.sample_noise(6, gen), torch.arange(6))
    assert x.shape == (6, *shape) and float(x.abs().max()) <= 1.0


def test_latent_generator_matches_fedgen_size() -> None:
    g = LatentGenerator(10, latent_dim=32)
    assert sum(p.numel() for p in g.parameters()) == 19_744  # FedGen's MNIST generator
    z = g(g.sample_noise(5, torch.Generator().manual_seed(0)), torch.arange(5))
    assert z.shape == (5, 32)


def test_input_generator_rejects_sizes_not_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        InputGenerator(10, (1, 30, 30))


def test_dct_basis_is_orthonormal_with_known_rows() -> None:
    b = dct_basis(28, 28)
    torch.testing.assert_close(b @ b.T, torch.eye(28), atol=1e-5, rtol=0)
    torch.testing.assert_close(b[0], torch.full((28,), 28 ** -0.5))  # the constant function
    # row 1 at pixel 0: sqrt(2 / 28) cos(pi / 56)
    assert float(b[1, 0]) == pytest.approx((2 / 28) ** 0.5 * np.cos(np.pi / 56), rel=1e-6)
    with pytest.raises(ValueError, match="frequencies"):
        dct_basis(0, 28)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 12)])
def test_low_frequency_generator_untrained_samples_the_smooth_prior(shape: tuple[int, int, int]) -> None:
    g = LowFrequencyGenerator(10, shape, frequencies=5, prior_scale=2.0)
    noise = g.sample_noise(4, torch.Generator().manual_seed(1))
    assert noise.shape == (4, shape[0] * 25)
    with torch.no_grad():
        x = g(noise, torch.tensor([0, 1, 2, 3]))
        same_noise_other_labels = g(noise, torch.tensor([9, 9, 9, 9]))
    assert x.shape == (4, *shape) and float(x.abs().max()) < 1.0
    # the learned shift starts at zero: tanh of 2 * noise in the first 5 x 5 cosines, any label
    a = 2.0 * noise.view(4, shape[0], 5, 5)
    expected = torch.tanh(torch.einsum("ncab,ai,bj->ncij", a, dct_basis(5, shape[1]), dct_basis(5, shape[2])))
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(x, same_noise_other_labels)


def test_low_frequency_generator_trains_per_class() -> None:
    g = LowFrequencyGenerator(3, (1, 8, 8), frequencies=4)
    noise = g.sample_noise(6, torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    g(noise, labels)[labels == 1].mean().backward()  # a descent step lowers class 1's pixels
    with torch.no_grad():
        for p in g.parameters():
            if p.grad is not None:
                p -= 1.0 * p.grad
        moved = g(noise, labels) - torch.tanh(torch.einsum(
            "ncab,ai,bj->ncij", 3.0 * noise.view(6, 1, 4, 4), dct_basis(4, 8), dct_basis(4, 8)))
    assert float(moved[labels == 1].mean()) < -1e-3
    with pytest.raises(ValueError, match="frequencies"):
        LowFrequencyGenerator(3, (1, 8, 8), frequencies=9)
    with pytest.raises(ValueError, match="prior_scale"):
        LowFrequencyGenerator(3, (1, 8, 8), prior_scale=0.0)


def test_diversity_loss_known_value_on_generated_shapes() -> None:
    # Two samples: noise distance mean((0-1)^2, (0-1)^2) = 1 off the diagonal; outputs differ by
    # mean |0 - 2| = 2. Pairs (i, j) over 2 x 2 with zero diagonal: exp(-(2 * 1 * 2) / 4) = e^-1.
    noise = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    out = torch.tensor([[[[0.0, 0.0]]], [[[2.0, 2.0]]]])
    assert float(diversity_loss(noise, out)) == pytest.approx(np.exp(-1.0), rel=1e-6)


def test_replies_carry_only_logits(tmp_path: Path) -> None:
    rows, audit, _ = run_inprocess({**FAST, "num-server-rounds": 2}, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["global-accuracy"] is not None
    assert {a["phase"] for a in audit} == {"logits", "distill", "evaluate"}
    for a in audit:
        if a["phase"] == "logits":
            assert a["arrays"] == {"arrays/logits": {"shape": [40, 10], "dtype": "float32",
                                                     "bytes": 40 * 10 * 4 + 128}}
        else:
            assert a["arrays"] == {}


def test_weighted_rule_adds_only_the_declared_counts(tmp_path: Path) -> None:
    _, audit, _ = run_inprocess({**FAST, "aggregation.rule": "weighted"}, 3, tmp_path)
    for a in audit:
        if a["phase"] == "logits":
            assert set(a["arrays"]) == {"arrays/logits", "arrays/label-counts"}
            assert a["arrays"]["arrays/label-counts"]["shape"] == [10]


def test_low_frequency_generator_with_classwise_rule(tmp_path: Path) -> None:
    cfg = {**FAST, "aggregation.rule": "classwise", "fedgen-logits.input-generator": "low-frequency",
           "fedgen-logits.frequencies": 5, "num-server-rounds": 2}
    rows, audit, _ = run_inprocess(cfg, 3, tmp_path)
    assert [r["num-failures"] for r in rows] == [0, 0] and rows[-1]["answered"] == 40
    assert np.isfinite(rows[-1]["global-accuracy"]) and np.isfinite(rows[-1]["generator-loss"])
    for a in audit:
        if a["phase"] == "logits":  # only logits and the declared counts leave a client
            assert set(a["arrays"]) == {"arrays/logits", "arrays/label-counts"}
            assert a["arrays"]["arrays/logits"]["shape"] == [40, 10]


def test_unknown_input_generator_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fedgen-logits.input-generator must be one of conv, low-frequency"):
        run_inprocess({**FAST, "fedgen-logits.input-generator": "gan"}, 3, tmp_path)


def test_a_seeded_run_is_reproducible(tmp_path: Path) -> None:
    keys = ("global-accuracy", "global-loss", "train-loss", "generator-loss",
            "student-distill-loss", "personalized-accuracy")
    runs = []
    for i in range(2):
        rows, _, _ = run_inprocess({**FAST, "num-server-rounds": 2}, 3, tmp_path / str(i))
        runs.append([[r[k] for k in keys] for r in rows])
    assert runs[0] == runs[1]


def test_weighted_rule_under_dp_needs_noised_counts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="releases label counts"):
        run_inprocess({**FAST, "aggregation.rule": "weighted", "privacy.dp-sgd": True}, 3, tmp_path)


def test_zeroth_order_gradient_is_exact_for_a_linear_function_on_a_basis() -> None:
    # f(x) = a . x; with the d basis vectors as directions (q = d), each slope is a_j exactly and
    # (d / q) * sum_j a_j e_j = a.
    from fedkd.algorithms.fedgen_logits import zeroth_order_gradient

    a = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])  # two samples, d = 3
    x = torch.tensor([[0.2, 0.1, -0.3], [0.0, 1.0, 2.0]])
    mu = 1e-2
    directions = torch.eye(3).unsqueeze(1).expand(3, 2, 3)  # [q, n, d]
    probes = x.unsqueeze(0) + mu * directions
    values = torch.cat([(a * x).sum(1, keepdim=True).T, (a.unsqueeze(0) * probes).sum(2)])
    assert torch.allclose(zeroth_order_gradient(values, directions, mu), a, atol=1e-4)


def test_zeroth_order_gradient_points_along_the_true_gradient_with_random_directions() -> None:
    from fedkd.algorithms.fedgen_logits import zeroth_order_gradient

    gen = torch.Generator().manual_seed(0)
    d, q, mu = 20, 2000, 1e-3
    x = torch.randn(1, d, generator=gen, dtype=torch.float64)
    u = torch.randn(q, 1, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    f = lambda z: (z ** 2).sum(-1) / 2  # gradient x  # noqa: E731
    values = torch.cat([f(x).unsqueeze(0), f(x.unsqueeze(0) + mu * u)])  # [q + 1, 1]
    g = zeroth_order_gradient(values, u, mu)
    cosine = float(torch.nn.functional.cosine_similarity(g, x))
    assert cosine > 0.9
    assert float(g.norm() / x.norm()) == pytest.approx(1.0, abs=0.15)


def test_zeroth_order_queries_send_only_logits_for_the_declared_probes(tmp_path: Path) -> None:
    cfg = {**FAST, "fedgen-logits.zo-directions": 2, "fedgen-logits.generator-queries": 2,
           "fedgen.generator-steps": 0, "num-server-rounds": 2}
    rows, audit, _ = run_inprocess(cfg, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["answered"] == 2 * 40
    assert np.isfinite(rows[-1]["generator-teacher-loss"])
    logits = [a for a in audit if a["phase"] == "logits"]
    assert len(logits) == 2 * 2 * 3  # rounds x queries x clients
    for a in logits:
        assert a["arrays"] == {"arrays/logits": {"shape": [3 * 40, 10], "dtype": "float32",
                                                 "bytes": 3 * 40 * 10 * 4 + 128}}


def test_zeroth_order_needs_soft_targets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="zo-directions needs soft targets"):
        run_inprocess({**FAST, "fedgen-logits.zo-directions": 1, "aggregation.rule": "pate"}, 3, tmp_path)


def test_its_keys_live_in_its_own_section() -> None:
    from fedkd.algorithms.fedgen_logits import FedGenLogitsConfig

    cfg = build_config({"algorithm": "fedgen-logits", "fedgen-logits.zo-directions": 2})
    assert cfg.section("fedgen-logits") == FedGenLogitsConfig(zo_directions=2)
    with pytest.raises(ConfigError, match="unknown config key 'fedgen.zo-directions'"):
        build_config({"algorithm": "fedgen-logits", "fedgen.zo-directions": 2})
    with pytest.raises(ConfigError, match="unknown config key 'fedgen.replay-rounds'"):
        build_config({"algorithm": "fedgen-logits", "fedgen.replay-rounds": 2})


def test_the_student_replays_distill_replay_rounds(tmp_path: Path) -> None:
    # One key for every server student's replay: 0 (the default) is fedgen-logits' own 10 rounds.
    fast = {**FAST, "fedgen.generator-steps": 0, "distill.steps": 0, "train.local-steps": 1,
            "num-server-rounds": 3}
    rows, _, _ = run_inprocess(fast, 3, tmp_path / "default")
    assert [r["replay-samples"] for r in rows] == [40, 80, 120]
    rows, _, _ = run_inprocess({**fast, "distill.replay-rounds": 2}, 3, tmp_path / "two")
    assert [r["replay-samples"] for r in rows] == [40, 80, 80]
    with pytest.raises(ConfigError, match="distill.replay-rounds must be >= 0"):
        build_config({"algorithm": "fedgen-logits", "distill.replay-rounds": -1})
