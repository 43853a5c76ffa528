"""Tests for fedkd.losses.

Known values are hand-computed on tiny inputs; the arithmetic is written next to each expectation
and evaluated with plain ``math`` (never by calling the function under test). Logits are chosen as
logs of "nice" distributions so that softmax gives exact fractions:

* ``U = [1/3, 1/3, 1/3]`` = softmax([0, 0, 0])
* ``A = [1/2, 1/4, 1/4]`` = softmax([ln 1/2, ln 1/4, ln 1/4])
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fedkd import losses as L

LN = math.log
DT = torch.float64


def t(data: object, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(data, dtype=DT, requires_grad=requires_grad)


Z_U = [0.0, 0.0, 0.0]  # softmax -> U
Z_A = [LN(0.5), LN(0.25), LN(0.25)]  # softmax -> A

# KL(A || U) = 1/2 ln(1/2 / 1/3) + 2 * 1/4 ln(1/4 / 1/3) = 1/2 ln(3/2) + 1/2 ln(3/4) = 1/2 ln(9/8)
KL_A_U = 0.5 * LN(1.5) + 0.5 * LN(0.75)
# CE for student rows [U, A] with labels [0, 1]: (-ln 1/3 - ln 1/4) / 2 = (ln 3 + ln 4) / 2
CE_UA = (LN(3) + LN(4)) / 2


def student_ua() -> torch.Tensor:
    return t([Z_U, Z_A], requires_grad=True)


def labels_01() -> torch.Tensor:
    return torch.tensor([0, 1])


def close(x: torch.Tensor, expected: float, tol: float = 1e-10) -> bool:
    return math.isclose(val(x), expected, rel_tol=tol, abs_tol=tol)


def val(x: torch.Tensor) -> float:
    return x.detach().item()


def sgd_step(x: torch.Tensor, loss: torch.Tensor, lr: float) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, x)
    return (x - lr * grad).detach().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# eqs. (1.1.1)-(1.1.3): softened probabilities and KD-KL
# ---------------------------------------------------------------------------------------------


def test_softened_probs_known_value() -> None:
    # [ln 4, 0, 0] / T=2 = [ln 2, 0, 0] -> exp: [2, 1, 1] / 4 = [1/2, 1/4, 1/4]
    p = L.softened_probs(t([[LN(4), 0.0, 0.0]]), temperature=2.0)
    assert torch.allclose(p, t([[0.5, 0.25, 0.25]]), atol=1e-12)


def test_kd_kl_known_value_t1() -> None:
    # rows: student [U, A], teacher [A, A] -> (KL(A||U) + KL(A||A)) / 2 = (1/2 ln 9/8 + 0) / 2
    loss = L.kd_kl(student_ua(), t([Z_A, Z_A]), temperature=1.0)
    assert close(loss, KL_A_U / 2)
    assert close(loss, 0.25 * LN(9 / 8))


def test_kd_kl_known_value_t2_includes_division_and_t_squared() -> None:
    # teacher [ln 4, 0, 0] at T=2 -> A (see softened_probs test); student [0,0,0] -> U at any T.
    # L = T^2 * KL(A || U) = 4 * 1/2 ln(9/8) = 2 ln(9/8)
    loss = L.kd_kl(t([Z_U]), t([[LN(4), 0.0, 0.0]]), temperature=2.0)
    assert close(loss, 2 * LN(9 / 8))


def test_kd_kl_temperature_squared_scaling() -> None:
    # softmax(2z / 2) == softmax(z / 1), so the KL is the same and only T^2 changes: ratio 4
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 7, generator=g, dtype=DT), torch.randn(5, 7, generator=g, dtype=DT)
    l1 = L.kd_kl(zs, zt, 1.0)
    l2 = L.kd_kl(2 * zs, 2 * zt, 2.0)
    assert val(l1) > 0
    assert close(l2, 4 * val(l1), tol=1e-9)


def test_kd_kl_zero_for_identical_and_shifted_logits() -> None:
    z = t([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0]])
    assert abs(val(L.kd_kl(z, z.clone(), 3.0))) < 1e-12
    # softmax is invariant to a per-row additive constant
    assert abs(val(L.kd_kl(z, z + t([[5.0], [-2.0]]), 3.0))) < 1e-12


def test_kd_kl_is_batchmean_not_sum_or_elementwise_mean() -> None:
    # doubling the batch with copies leaves the batchmean unchanged
    one = L.kd_kl(t([Z_U]), t([Z_A]), 1.0)
    two = L.kd_kl(t([Z_U, Z_U]), t([Z_A, Z_A]), 1.0)
    assert close(one, KL_A_U)
    assert close(two, KL_A_U)


def test_kd_kl_gradient_moves_student_towards_teacher() -> None:
    zs = t([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    zt = t([[0.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    target = zt.argmax(dim=1)  # [1, 2]
    loss0 = L.kd_kl(zs, zt, 2.0)
    p0 = torch.softmax(zs.detach(), 1).gather(1, target[:, None])
    zs1 = sgd_step(zs, loss0, lr=0.5)
    loss1 = L.kd_kl(zs1, zt, 2.0)
    p1 = torch.softmax(zs1.detach(), 1).gather(1, target[:, None])
    assert val(loss1) < val(loss0)
    assert bool((p1 > p0).all())


def test_kd_kl_gradient_known_value() -> None:
    # dL/dz_s = T^2 * (1/T) * (p_s - p_t) / N.  T=1, N=1, student U, teacher A:
    # (1/3 - 1/2, 1/3 - 1/4, 1/3 - 1/4) = (-1/6, 1/12, 1/12)
    zs = t([Z_U], requires_grad=True)
    (g,) = torch.autograd.grad(L.kd_kl(zs, t([Z_A]), 1.0), zs)
    assert torch.allclose(g, t([[-1 / 6, 1 / 12, 1 / 12]]), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# KD-KL from teacher probabilities
# ---------------------------------------------------------------------------------------------


def test_kd_kl_from_probs_with_exact_zeros_known_value_and_gradient() -> None:
    # student U (logits 0), teacher rows [1, 0, 0] and [1/2, 1/2, 0], T = 1:
    #   row 0: 1 * ln(1 / (1/3)) + 0 + 0 = ln 3
    #   row 1: 2 * 1/2 ln((1/2) / (1/3)) + 0 = ln(3/2)
    #   mean = (ln 3 + ln 1.5) / 2
    zs = t([Z_U, Z_U], requires_grad=True)
    pt = t([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    loss = L.kd_kl_from_probs(zs, pt, 1.0)
    assert close(loss, (LN(3) + LN(1.5)) / 2)
    # gradient (p_s - p_t) / N: row 0 (1/3-1, 1/3, 1/3)/2, row 1 (1/3-1/2, 1/3-1/2, 1/3)/2
    (g,) = torch.autograd.grad(loss, zs)
    expected = t([[-1 / 3, 1 / 6, 1 / 6], [-1 / 12, -1 / 12, 1 / 6]])
    assert torch.isfinite(g).all()
    assert torch.allclose(g, expected, atol=1e-12)


def test_kd_kl_from_probs_temperature_squared() -> None:
    # student U at any T; teacher [1, 0, 0] used as given: T^2 * ln 3 with T = 3 -> 9 ln 3
    loss = L.kd_kl_from_probs(t([Z_U]), t([[1.0, 0.0, 0.0]]), 3.0)
    assert close(loss, 9 * LN(3))


def test_kd_kl_from_probs_zero_when_probs_match() -> None:
    assert abs(val(L.kd_kl_from_probs(t([Z_A]), t([[0.5, 0.25, 0.25]]), 1.0))) < 1e-12


def test_kd_kl_from_probs_with_zero_teacher_prob_and_extreme_student_is_finite() -> None:
    zs = torch.tensor([[-1e4, 0.0, 1e4]], requires_grad=True)  # float32, p_s[0] underflows to 0
    pt = torch.tensor([[0.0, 0.0, 1.0]])
    loss = L.kd_kl_from_probs(zs, pt, 1.0)
    (g,) = torch.autograd.grad(loss, zs)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert val(loss) < 1e-6


def test_kd_kl_from_probs_agrees_with_logit_version() -> None:
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 6, generator=g, dtype=DT), torch.randn(4, 6, generator=g, dtype=DT)
    pt = torch.softmax(zt / 2.5, dim=1)
    assert close(L.kd_kl_from_probs(zs, pt, 2.5), val(L.kd_kl(zs, zt, 2.5)), tol=1e-9)


# ---------------------------------------------------------------------------------------------
# eq. (1.1.4): cross-entropy
# ---------------------------------------------------------------------------------------------


def test_cross_entropy_known_value_indices_and_distributions() -> None:
    assert close(L.cross_entropy(student_ua(), labels_01()), CE_UA)
    onehot = t([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert close(L.cross_entropy(student_ua(), onehot), CE_UA)
    # int32 labels are accepted too
    assert close(L.cross_entropy(student_ua(), labels_01().int()), CE_UA)


# ---------------------------------------------------------------------------------------------
# eq. (1.2.1): feature-based
# ---------------------------------------------------------------------------------------------


def test_feature_loss_known_value() -> None:
    # sample 0: ||(1,0) - (1,2)||^2 = 0 + 4 = 4; sample 1: ||(3,4) - (0,0)||^2 = 9 + 16 = 25
    # (4 + 25) / 2 = 14.5   (mse over all elements would be 29 / 4 = 7.25)
    s = t([[1.0, 2.0], [0.0, 0.0]])
    te = t([[1.0, 0.0], [3.0, 4.0]])
    assert close(L.feature_loss(s, te), 14.5)
    # non-batch dims are flattened: [2, 1, 1, 2] gives the same
    assert close(L.feature_loss(s.reshape(2, 1, 1, 2), te.reshape(2, 1, 1, 2)), 14.5)


def test_feature_loss_gradient_moves_student_towards_teacher() -> None:
    s = t([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    te = t([[1.0, 0.0], [3.0, 4.0]])
    loss0 = L.feature_loss(s, te)
    (g,) = torch.autograd.grad(loss0, s)
    # d/dS of (1/N) sum ||T - S||^2 = 2 (S - T) / N = (S - T) for N = 2
    assert torch.allclose(g, t([[0.0, 2.0], [-3.0, -4.0]]), atol=1e-12)
    s1 = (s - 0.1 * g).detach()
    assert val(L.feature_loss(s1, te)) < val(loss0)


# ---------------------------------------------------------------------------------------------
# eqs. (1.3.1)-(1.3.3): relation-based
# ---------------------------------------------------------------------------------------------


def test_pairwise_distance_matrix_known_value() -> None:
    # points (0,0), (3,4), (6,8): distances 5 (3-4-5 triangle), 10, 5
    d = L.pairwise_distance_matrix(t([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]))
    expected = t([[0.0, 5.0, 10.0], [5.0, 0.0, 5.0], [10.0, 5.0, 0.0]])
    assert torch.allclose(d, expected, atol=1e-9)


def test_pairwise_distance_matrix_large_offset_keeps_precision() -> None:
    # same triangle shifted by 1e4 in float32: centring keeps the Gram formula accurate
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]) + 1e4
    assert torch.allclose(L.pairwise_distance_matrix(x)[0, 1], torch.tensor(5.0), atol=1e-3)


def test_pairwise_distance_matrix_gradient_finite_on_diagonal_and_duplicates() -> None:
    x = t([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)  # rows 0 and 1 coincide
    d = L.pairwise_distance_matrix(x)
    assert val(d[0, 1]) == 0.0 and bool((d.diagonal() == 0).all())
    (g,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(g).all()
    # only the pairs with row 2 (distance 5, direction (3,4)/5) carry gradient; each of the
    # entries d[0,2], d[2,0], d[1,2], d[2,1] pushes row 2 by (0.6, 0.8): total 4 * (0.6, 0.8)
    assert torch.allclose(g, t([[-1.2, -1.6], [-1.2, -1.6], [2.4, 3.2]]), atol=1e-9)


def test_pairwise_distance_matrix_gradcheck() -> None:
    x = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(L.pairwise_distance_matrix, (x.requires_grad_(True),))


def test_pairwise_cosine_matrix_known_value() -> None:
    # (1,0), (1,1), (0,2): cos = 1/sqrt2 between neighbours, 0 between first and last
    c = L.pairwise_cosine_matrix(t([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    r = 1 / math.sqrt(2)
    expected = t([[1.0, r, 0.0], [r, 1.0, r], [0.0, r, 1.0]])
    assert torch.allclose(c, expected, atol=1e-12)


def test_pairwise_cosine_matrix_zero_vector_is_finite() -> None:
    x = t([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    c = L.pairwise_cosine_matrix(x)
    (g,) = torch.autograd.grad(c.sum(), x)
    assert torch.isfinite(c).all() and torch.isfinite(g).all()
    assert val(c[0, 1]) == 0.0


def test_relation_loss_distance_known_value_and_different_dims() -> None:
    # R_T off-diagonal 5, R_S off-diagonal 10, diagonals 0: (2 * (5 - 10)^2) / 2^2 = 50 / 4
    te = t([[0.0, 0.0], [3.0, 4.0]])
    s = t([[0.0, 0.0], [6.0, 8.0]])
    assert close(L.relation_loss(s, te, "distance"), 12.5, tol=1e-9)
    # the student may have another feature dimension: (0,0,0)-(0,0,10) is also at distance 10
    s3 = t([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    assert close(L.relation_loss(s3, te), 12.5, tol=1e-9)


def test_relation_loss_distance_gradient_known_value() -> None:
    # L = (1/4) * 2 * (5 - d)^2 with d = ||s1 - s0|| = 10, dd/ds1 = (s1 - s0)/d = (0.6, 0.8)
    # dL/ds1 = (d - 5) * (0.6, 0.8) = (3, 4); dL/ds0 = (-3, -4): pulls the points together
    s = t([[0.0, 0.0], [6.0, 8.0]], requires_grad=True)
    (g,) = torch.autograd.grad(L.relation_loss(s, t([[0.0, 0.0], [3.0, 4.0]])), s)
    assert torch.allclose(g, t([[-3.0, -4.0], [3.0, 4.0]]), atol=1e-9)


def test_relation_loss_cosine_known_value() -> None:
    # R_T = I (orthogonal), R_S: cos((1,0),(1,1)) = 1/sqrt2; (2 * (0 - 1/sqrt2)^2) / 4 = 1/4
    te = t([[1.0, 0.0], [0.0, 1.0]])
    s = t([[1.0, 0.0], [1.0, 1.0]])
    assert close(L.relation_loss(s, te, kind="cosine"), 0.25)


def test_relation_loss_gradient_step_reduces_loss() -> None:
    g = torch.Generator().manual_seed(3)
    te = torch.randn(5, 4, generator=g, dtype=DT)
    for kind in ("distance", "cosine"):
        s = torch.randn(5, 3, generator=g, dtype=DT, requires_grad=True)
        loss0 = L.relation_loss(s, te, kind)
        s1 = sgd_step(s, loss0, lr=0.01)
        assert val(L.relation_loss(s1, te, kind)) < val(loss0)


# ---------------------------------------------------------------------------------------------
# FedGen diversity loss
# ---------------------------------------------------------------------------------------------


def test_diversity_loss_known_value_two_samples() -> None:
    # D_eps(0,1) = ((1-0)^2 + (1-0)^2)/2 = 1; D_g(0,1) = (1 + 2 + 3)/3 = 2; diagonal terms 0
    # exp(-(1/4) * (1*2 + 1*2)) = exp(-1)
    noise = t([[0.0, 0.0], [1.0, 1.0]])
    out = t([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    assert close(L.diversity_loss(noise, out), math.exp(-1))
    # outputs are flattened: [2, 1, 3] gives the same value
    assert close(L.diversity_loss(noise, out.reshape(2, 1, 3)), math.exp(-1))


def test_diversity_loss_known_value_three_samples() -> None:
    # noise (0,0), (1,1), (2,0): D_eps(0,1) = 1, D_eps(0,2) = (4+0)/2 = 2, D_eps(1,2) = (1+1)/2 = 1
    # outputs 0, 0, (1,2,3):     D_g(0,1) = 0,   D_g(0,2) = 2,           D_g(1,2) = 2
    # sum over ordered pairs = 2 * (1*0 + 2*2 + 1*2) = 12;  exp(-12 / 9) = exp(-4/3)
    noise = t([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    out = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    loss = L.diversity_loss(noise, out)
    assert close(loss, math.exp(-4 / 3))
    (g,) = torch.autograd.grad(loss, out)
    assert torch.isfinite(g).all()  # rows 0 and 1 coincide: |0| has a zero subgradient


def test_diversity_loss_decreases_when_outputs_spread() -> None:
    noise = t([[0.0, 0.0], [1.0, 1.0]])
    out = t([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    # doubling the spread doubles D_g: exp(-2) < exp(-1); collapsed outputs give exp(0) = 1
    assert close(L.diversity_loss(noise, 2 * out), math.exp(-2))
    assert close(L.diversity_loss(noise, torch.zeros_like(out)), 1.0)
    # a gradient step spreads the outputs apart and lowers the loss
    g = torch.Generator().manual_seed(6)
    eps = torch.randn(6, 4, generator=g, dtype=DT)
    o = (0.1 * torch.randn(6, 5, generator=g, dtype=DT)).requires_grad_(True)
    loss0 = L.diversity_loss(eps, o)
    o1 = sgd_step(o, loss0, lr=1.0)
    assert val(L.diversity_loss(eps, o1)) < val(loss0)
    assert val(torch.cdist(o1, o1, p=1).mean()) > val(torch.cdist(o, o, p=1).mean())


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        L.kd_kl(t([Z_U]), t([Z_A]), temperature)
    with pytest.raises(ValueError, match="temperature"):
        L.kd_kl_from_probs(t([Z_U]), t([[1.0, 0.0, 0.0]]), temperature)
    with pytest.raises(ValueError, match="temperature"):
        L.softened_probs(t([Z_U]), temperature)


def test_shape_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        L.kd_kl(t([Z_U, Z_U]), t([[0.0, 0.0, 0.0, 0.0]] * 2), 1.0)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        L.kd_kl(t(Z_U), t(Z_A), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        L.kd_kl_from_probs(t([Z_U]), t([[0.5, 0.5]]), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        L.feature_loss(t([[1.0, 2.0]]), t([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="batch size"):
        L.relation_loss(t([[1.0], [2.0]]), t([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError, match="batch size"):
        L.diversity_loss(torch.zeros(3, 2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[B, d_eps\]"):
        L.diversity_loss(torch.zeros(3), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="empty batch"):
        L.kd_kl(torch.zeros(0, 3), torch.zeros(0, 3), 1.0)


def test_bad_labels_raise() -> None:
    zs = student_ua()
    with pytest.raises(ValueError, match="entries"):
        L.cross_entropy(zs, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="lie in"):
        L.cross_entropy(zs, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="lie in"):
        L.cross_entropy(zs, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        L.cross_entropy(zs, t([0.0, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        L.cross_entropy(zs, t([[1.0, 0.0], [0.0, 1.0]]))


def test_bad_teacher_probs_raise() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        L.kd_kl_from_probs(t([Z_U]), t([[1.2, -0.2, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        L.kd_kl_from_probs(t([Z_U]), t([[0.5, 0.2, 0.1]]), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        L.kd_kl_from_probs(t([Z_U]), t([[float("nan"), 0.5, 0.5]]), 1.0)


def test_bad_options_raise() -> None:
    bad: Any = "p"  # not a valid Literal; the functions must reject it at run time
    with pytest.raises(ValueError, match="kind"):
        L.relation_loss(t([[1.0]]), t([[1.0]]), kind=bad)


def test_distillation_losses_by_name_golden_values() -> None:
    from fedkd.losses import DISTILLATION_LOSSES, distillation_loss

    assert sorted(DISTILLATION_LOSSES) == ["kl", "l1-logits", "mse-logits"]
    student = torch.tensor([[2.0, 0.0, 1.0]])
    # targets whose T log p, centred, is (1, -1, 0) at T = 1
    target_logits = torch.tensor([[1.0, -1.0, 0.0]])
    probs = torch.softmax(target_logits, dim=1)
    # centred student: (1, -1, 0): both logit losses vanish
    assert float(distillation_loss("l1-logits")(student, probs, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss("mse-logits")(student, probs, 1.0)) == pytest.approx(0.0, abs=1e-6)
    # shift the student's first logit by 3: centred differences (2, -1, -1)
    moved = student + torch.tensor([[3.0, 0.0, 0.0]])
    assert float(distillation_loss("l1-logits")(moved, probs, 1.0)) == pytest.approx(4 / 3, rel=1e-5)
    assert float(distillation_loss("mse-logits")(moved, probs, 1.0)) == pytest.approx(2.0, rel=1e-5)
    # at T = 2 the target logits double: T log p centred = (2, -2, 0)
    assert float(distillation_loss("l1-logits")(student, probs, 2.0)) == pytest.approx(2 / 3, rel=1e-5)
    assert distillation_loss("kl") is L.kd_kl_from_probs
    with pytest.raises(ValueError, match="unknown distillation loss 'huber'; valid names: kl, l1-logits"):
        distillation_loss("huber")
