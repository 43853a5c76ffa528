"""Multi-teacher aggregation rules: the shared contract (every registered rule) and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, AggregationRule, build_aggregator, label_weights
from fedkd.registry import UnknownNameError

RULES = AGGREGATORS.names()
# randomised rules (pate) are tested through aggregate(..., rng=...) in their own test file
DETERMINISTIC = [name for name in RULES if not AGGREGATORS.get(name).randomized]
LOG3 = math.log(3.0)


# ------------------------------------------------------------------------------------------
# helpers (independent of the implementation)
# ------------------------------------------------------------------------------------------


def ref_softmax(x: np.ndarray) -> np.ndarray:
    """Plain softmax over the last axis, for reference values."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def call(rule: AggregationRule, z: np.ndarray, *, mask=None, weights=None) -> np.ndarray:
    """Call a rule, giving weight-taking rules default weights (1, 2, ..., K) if none given."""
    if rule.uses_weights and weights is None:
        weights = np.arange(1.0, z.shape[0] + 1.0)
    return rule(z, weights=weights, mask=mask)


def logits(k: int, n: int, c: int, seed: int = 0, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(k, n, c))


# ------------------------------------------------------------------------------------------
# registry and construction
# ------------------------------------------------------------------------------------------


def test_all_rules_registered() -> None:
    expected = {"mean", "weighted", "classwise", "entropy", "confidence", "era", "median",
                "trimmed-mean"}
    assert set(RULES) >= expected
    for name in RULES:
        cls = AGGREGATORS.get(name)
        assert issubclass(cls, AggregationRule) and cls.name == name
        assert isinstance(build_aggregator(name), cls)


def test_unknown_rule_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_aggregator("avg")
    msg = str(info.value)
    assert "'avg'" in msg
    for name in RULES:
        assert name in msg


def test_unknown_option_lists_valid_options() -> None:
    valid = "valid options: temperature, trim_fraction"
    with pytest.raises(TypeError, match=rf"unknown option.*'beta'.*{valid}"):
        build_aggregator("trimmed-mean", beta=0.1)
    with pytest.raises(TypeError, match="unknown option"):
        build_aggregator("mean", trim_fraction=0.1)


def test_options_accept_kebab_case() -> None:
    rule = build_aggregator("trimmed-mean", **{"trim-fraction": 0.4, "temperature": 3})
    assert rule.options() == {"temperature": 3.0, "trim_fraction": 0.4}
    era = build_aggregator("era", era_temperature=0.2, mode="power", beta=3)
    assert era.options() == {
        "temperature": 1.0,
        "era_temperature": 0.2,
        "mode": "power",
        "beta": 3.0,
    }


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("mean", {"temperature": 0.0}),
        ("mean", {"temperature": -1.0}),
        ("mean", {"temperature": float("nan")}),
        ("mean", {"temperature": float("inf")}),
        ("median", {"temperature": "2"}),
        ("era", {"era_temperature": 1.0}),
        ("era", {"era_temperature": 2.0}),
        ("era", {"era_temperature": 0.0}),
        ("era", {"era_temperature": -0.1}),
        ("era", {"mode": "sharpen"}),
        ("era", {"beta": 1.0}),
        ("era", {"beta": 0.5}),
        ("trimmed-mean", {"trim_fraction": 0.5}),
        ("trimmed-mean", {"trim_fraction": -0.1}),
    ],
)
def test_invalid_option_values_raise(name: str, options: dict) -> None:
    with pytest.raises(ValueError):
        build_aggregator(name, **options)


# ------------------------------------------------------------------------------------------
# shared contract, every registered rule
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_output_is_a_float32_distribution(name: str, temperature: float) -> None:
    rule = build_aggregator(name, temperature=temperature)
    z = logits(5, 7, 4, scale=10.0)
    mask = np.ones((5, 7), dtype=bool)
    mask[[0, 2, 4], [1, 3, 6]] = False
    for m in (None, mask):
        out = call(rule, z, mask=m)
        assert out.shape == (7, 4) and out.dtype == np.float32
        assert np.isfinite(out).all() and (out >= 0).all()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_single_teacher_and_extreme_logits_stay_finite(name: str) -> None:
    rule = build_aggregator(name)
    z = np.array([[[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]])  # K=1, N=2, C=3
    out = call(rule, z)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert out[0].argmax() == 0


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_teacher_order_invariance(name: str) -> None:
    rule = build_aggregator(name, temperature=1.5)
    k, n = 6, 5
    z = logits(k, n, 3, seed=1)
    weight_cols = 3 if rule.weight_axis == "class" else n  # [K, C] or [K, N]
    weights = np.random.default_rng(2).uniform(0.5, 3.0, size=(k, weight_cols))
    mask = np.random.default_rng(3).random((k, n)) > 0.3
    mask[0] = True
    perm = np.array([3, 0, 5, 1, 4, 2])
    w = weights if rule.uses_weights else None
    wp = weights[perm] if rule.uses_weights else None
    np.testing.assert_allclose(call(rule, z[perm], weights=wp), call(rule, z, weights=w), atol=1e-6)
    np.testing.assert_allclose(
        call(rule, z[perm], weights=wp, mask=mask[perm]),
        call(rule, z, weights=w, mask=mask),
        atol=1e-6,
    )


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_identical_teachers(name: str, temperature: float) -> None:
    rule = build_aggregator(name, temperature=temperature)
    one = logits(1, 6, 5, seed=4)
    z = np.repeat(one, 4, axis=0)
    out = call(rule, z)
    teacher = ref_softmax(one[0] / temperature)
    if name == "era":  # ERA sharpens: only the argmax is kept (notes §9)
        np.testing.assert_array_equal(out.argmax(axis=1), teacher.argmax(axis=1))
    else:
        np.testing.assert_allclose(out, teacher, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_masked_out_garbage_is_ignored(name: str) -> None:
    rule = build_aggregator(name)
    k, n, c = 4, 5, 3
    z = logits(k, n, c, seed=5)
    weights = np.arange(1.0, k + 2.0)  # k + 1 weights for the k + 1 teachers below
    garbage = np.full((1, n, c), 1e30)
    garbage[..., 1] = -1e30
    # a fully masked-out extra teacher == that teacher absent
    mask = np.ones((k + 1, n), dtype=bool)
    mask[k] = False
    uses = rule.uses_weights
    z_all = np.concatenate([z, garbage])
    with_garbage = call(rule, z_all, mask=mask, weights=weights if uses else None)
    without = call(rule, z, weights=weights[:k] if uses else None)
    np.testing.assert_allclose(with_garbage, without, atol=1e-6)
    # a partly masked teacher: whatever sits in its masked entries does not matter
    partial = np.ones((k, n), dtype=bool)
    partial[1, [0, 3]] = False
    partial[2, 3] = False
    z_garbage = z.copy()
    z_garbage[1, [0, 3]] = garbage[0, 0]
    z_garbage[2, 3] = -garbage[0, 0]
    w = weights[:k] if uses else None
    np.testing.assert_allclose(
        call(rule, z_garbage, mask=partial, weights=w),
        call(rule, z, mask=partial, weights=w),
        atol=1e-6,
    )


@pytest.mark.parametrize("name", RULES)
def test_sample_without_valid_teacher_raises(name: str) -> None:
    rule = build_aggregator(name)
    mask = np.ones((3, 4), dtype=bool)
    mask[:, 2] = False
    with pytest.raises(ValueError, match="at least one valid teacher.*2"):
        call(rule, logits(3, 4, 3), mask=mask)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_logits_raise(name: str, bad: float, word: str) -> None:
    z = logits(3, 2, 3)
    z[1, 0, 2] = bad
    with pytest.raises(ValueError, match=f"logits contain {word}"):
        call(build_aggregator(name), z)


@pytest.mark.parametrize("name", RULES)
def test_bad_shapes_and_dtypes_raise(name: str) -> None:
    rule = build_aggregator(name)
    with pytest.raises(ValueError, match="3-D"):
        call(rule, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="3-D"):
        call(rule, np.zeros((2, 4, 3, 1)))
    with pytest.raises(ValueError, match="K >= 1"):
        rule(np.zeros((0, 4, 3)))
    with pytest.raises(ValueError, match="N >= 1"):
        call(rule, np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match="C >= 2"):
        call(rule, np.zeros((2, 4, 1)))
    with pytest.raises(ValueError, match="numeric"):
        call(rule, np.zeros((2, 4, 3), dtype=bool))
    z = logits(2, 4, 3)
    with pytest.raises(ValueError, match="mask must have shape"):
        call(rule, z, mask=np.ones((4, 2), dtype=bool))
    with pytest.raises(ValueError, match="mask must be a boolean"):
        call(rule, z, mask=np.ones((2, 4), dtype=int))


@pytest.mark.parametrize("name", RULES)
def test_weights_only_for_rules_that_use_them(name: str) -> None:
    rule = build_aggregator(name)
    z = logits(2, 4, 3)
    if rule.uses_weights:
        with pytest.raises(ValueError, match="requires weights"):
            rule(z)
        wrong_second = 4 if rule.weight_axis == "sample" else 3  # z has N = 4, C = 3
        with pytest.raises(ValueError, match=r"requires weights \(\[K\] or \[K, [NC]\]\)"):
            rule(z)
        for bad, word in [
            (np.ones(3), "shape"),
            (np.ones((2, 7 - wrong_second)), "shape"),
            (np.ones((2, 4, 1)), "shape"),
            (np.array([1.0, -1.0]), "non-negative"),
            (np.array([1.0, np.nan]), "NaN"),
            (np.array([1.0, np.inf]), "Inf"),
        ]:
            with pytest.raises(ValueError, match=word):
                rule(z, weights=bad)
    else:
        with pytest.raises(ValueError, match="does not use weights.*weighted"):
            rule(z, weights=np.ones(2))


def test_accepts_lists_and_integer_logits() -> None:
    out = build_aggregator("mean")([[[0, 0]], [[0, 0]]])
    np.testing.assert_allclose(out, [[0.5, 0.5]])


# ------------------------------------------------------------------------------------------
# known values, rule by rule
# ------------------------------------------------------------------------------------------


def test_mean_known_values() -> None:
    # teacher 1: z = (0, ln 3) -> p = (1/4, 3/4); teacher 2: z = (0, 0) -> p = (1/2, 1/2)
    # mean = ((1/4 + 1/2) / 2, (3/4 + 1/2) / 2) = (3/8, 5/8)
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])
    np.testing.assert_allclose(build_aggregator("mean")(z), [[3 / 8, 5 / 8]], atol=1e-7)
    # T = 2: teacher 1 -> z/2 = (0, ln 3 / 2) -> p = (1, sqrt 3) / (1 + sqrt 3); teacher 2 unchanged
    s3 = math.sqrt(3.0)
    expected = [[(1 / (1 + s3) + 0.5) / 2, (s3 / (1 + s3) + 0.5) / 2]]
    np.testing.assert_allclose(build_aggregator("mean", temperature=2.0)(z), expected, atol=1e-7)


def test_mean_with_mask_known_values() -> None:
    # sample 0: both teachers -> (3/8, 5/8); sample 1: teacher 2 only -> (1/2, 1/2)
    z = np.array([[[0.0, LOG3], [0.0, LOG3]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[True, False], [True, True]])
    out = build_aggregator("mean")(z, mask=mask)
    np.testing.assert_allclose(out, [[3 / 8, 5 / 8], [0.5, 0.5]], atol=1e-7)


def test_weighted_known_values() -> None:
    # p1 = (1/4, 3/4), p2 = (1/2, 1/2), weights (1, 3):
    # t = (1 * p1 + 3 * p2) / 4 = ((1/4 + 3/2) / 4, (3/4 + 3/2) / 4) = (7/16, 9/16)
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])
    rule = build_aggregator("weighted")
    np.testing.assert_allclose(rule(z, weights=np.array([1.0, 3.0])), [[7 / 16, 9 / 16]], atol=1e-7)
    # weights scale-free: (10, 30) gives the same
    np.testing.assert_allclose(rule(z, weights=np.array([10, 30])), [[7 / 16, 9 / 16]], atol=1e-7)


def test_weighted_k_and_kn_weights_agree() -> None:
    z = logits(3, 5, 4, seed=6)
    w = np.array([2.0, 0.5, 7.0])
    rule = build_aggregator("weighted", temperature=2.0)
    per_sample = np.tile(w[:, None], (1, 5))
    np.testing.assert_allclose(rule(z, weights=w), rule(z, weights=per_sample), atol=1e-7)


def test_weighted_zero_weight_equals_masking() -> None:
    z = logits(3, 4, 3, seed=7)
    rule = build_aggregator("weighted")
    zero = rule(z, weights=np.array([1.0, 0.0, 2.0]))
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False
    masked = rule(z, weights=np.array([1.0, 5.0, 2.0]), mask=mask)
    np.testing.assert_allclose(zero, masked, atol=1e-7)
    # per sample too: a [K, N] zero for one (teacher, sample) == masking that entry
    w = np.ones((3, 4))
    w[2, 1] = 0.0
    mask = np.ones((3, 4), dtype=bool)
    mask[2, 1] = False
    masked = rule(z, weights=np.ones((3, 4)), mask=mask)
    np.testing.assert_allclose(rule(z, weights=w), masked, atol=1e-7)


def test_weighted_zero_total_weight_raises() -> None:
    z = logits(2, 3, 3)
    rule = build_aggregator("weighted")
    with pytest.raises(ValueError, match="sum to 0 for samples: 1"):
        rule(z, weights=np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 2.0]]))
    # valid weight only on a masked-out teacher also counts as zero
    mask = np.array([[True, True, True], [False, True, True]])
    with pytest.raises(ValueError, match="sum to 0 for samples: 0"):
        rule(z, weights=np.array([0.0, 1.0]), mask=mask)


def test_label_weights_known_values() -> None:
    counts = np.array([[5, 0, 1], [2, 3, 0]])
    labels = np.array([0, 2, 1, 0])
    w = label_weights(counts, labels)
    np.testing.assert_array_equal(w, [[5, 1, 0, 5], [2, 0, 3, 2]])
    assert w.dtype == np.float64
    # with the weighted rule: for label 0 the teachers weigh 5/7 and 2/7
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])  # p1 = (1/4, 3/4), p2 = (1/2, 1/2)
    out = build_aggregator("weighted")(z, weights=label_weights(counts[:, :2], np.array([0])))
    # t = (5 * (1/4, 3/4) + 2 * (1/2, 1/2)) / 7 = (9/4, 19/4) / 7 = (9/28, 19/28)
    np.testing.assert_allclose(out, [[9 / 28, 19 / 28]], atol=1e-7)


@pytest.mark.parametrize(
    ("counts", "labels", "word"),
    [
        (np.ones(3), np.array([0]), "2-D"),
        (np.array([[1.0, -1.0]]), np.array([0]), "non-negative"),
        (np.array([[1.0, np.nan]]), np.array([0]), "NaN"),
        (np.ones((2, 3)), np.array([0, 3]), r"\[0, 3\)"),
        (np.ones((2, 3)), np.array([-1]), r"\[0, 3\)"),
        (np.ones((2, 3)), np.array([0.0, 1.0]), "integer"),
        (np.ones((2, 3)), np.array([[0]]), "1-D"),
    ],
)
def test_label_weights_validation(counts: np.ndarray, labels: np.ndarray, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        label_weights(counts, labels)


def test_classwise_known_values() -> None:
    # p1 = (1/4, 3/4), p2 = (1/2, 1/2); teacher 1 holds 3 samples of class 0 and none of class 1,
    # teacher 2 holds 1 of each. Column 0: (3 * 1/4 + 1 * 1/2) / 4 = 5/16; column 1: teacher 2
    # only, 1/2. Renormalised: (5/16, 8/16) / (13/16) = (5/13, 8/13).
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])
    counts = np.array([[3.0, 0.0], [1.0, 1.0]])
    out = build_aggregator("classwise")(z, weights=counts)
    np.testing.assert_allclose(out, [[5 / 13, 8 / 13]], atol=1e-7)
    # the weighted rule with per-sample label weights gives another answer on the same inputs
    assert not np.allclose(out, build_aggregator("weighted")(z, weights=label_weights(counts, [0])))


def test_classwise_teacher_weights_equal_weighted_rule() -> None:
    z = logits(4, 6, 5, seed=8)
    w = np.array([1.0, 2.0, 0.5, 3.0])
    mask = np.random.default_rng(9).random((4, 6)) > 0.3
    mask[3] = True
    np.testing.assert_allclose(build_aggregator("classwise", temperature=2.0)(z, weights=w, mask=mask),
                               build_aggregator("weighted", temperature=2.0)(z, weights=w, mask=mask),
                               atol=1e-6)


def test_classwise_class_nobody_holds_gets_zero() -> None:
    z = logits(2, 3, 3, seed=10)
    counts = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 0.0]])  # nobody holds class 2
    out = build_aggregator("classwise")(z, weights=counts)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    # a masked-out teacher's counts do not count: sample 0 sees only teacher 2, which lacks class 0
    mask = np.array([[False, True, True], [True, True, True]])
    out = build_aggregator("classwise")(z, weights=counts, mask=mask)
    np.testing.assert_allclose(out[0], [0.0, 1.0, 0.0], atol=1e-7)


def test_weights_from_counts_follows_the_rules_axis() -> None:
    counts = np.array([[5.0, 0.0, 1.0], [2.0, 3.0, 0.0]])
    labels = np.array([0, 2, 1, 0])
    np.testing.assert_array_equal(build_aggregator("classwise").weights_from_counts(counts, labels),
                                  counts)
    np.testing.assert_array_equal(build_aggregator("weighted").weights_from_counts(counts, labels),
                                  label_weights(counts, labels))


def test_entropy_known_values_two_teachers() -> None:
    # teacher 1: z = (ln 9, 0) -> p = (0.9, 0.1), H1 = -(0.9 ln 0.9 + 0.1 ln 0.1)
    # teacher 2: z = (0, 0)    -> p = (0.5, 0.5), H2 = ln 2
    # w1 = (1 - H1 / (H1 + H2)) / (2 - 1) = H2 / (H1 + H2), w2 = H1 / (H1 + H2)
    h1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h2 = math.log(2.0)
    w1, w2 = h2 / (h1 + h2), h1 / (h1 + h2)
    assert w1 > w2  # the confident teacher weighs more
    z = np.array([[[math.log(9.0), 0.0]], [[0.0, 0.0]]])
    out = build_aggregator("entropy")(z)
    np.testing.assert_allclose(out, [[w1 * 0.9 + w2 * 0.5, w1 * 0.1 + w2 * 0.5]], atol=1e-7)
    assert out[0, 0] > build_aggregator("mean")(z)[0, 0]  # pulled toward the confident teacher


def test_entropy_known_values_three_teachers_with_mask() -> None:
    # teachers p = (0.9, 0.1), (0.5, 0.5), (0.2, 0.8); w_k = (1 - H_k / sum H) / (3 - 1)
    probs = [(0.9, 0.1), (0.5, 0.5), (0.2, 0.8)]
    hs = [-(a * math.log(a) + b * math.log(b)) for a, b in probs]
    ws = [(1 - h / sum(hs)) / 2 for h in hs]
    expected0 = [sum(w * p[c] for w, p in zip(ws, probs)) for c in range(2)]
    # sample 1 masks teacher 3 out -> the two-teacher formula on teachers 1 and 2
    w1, w2 = hs[1] / (hs[0] + hs[1]), hs[0] / (hs[0] + hs[1])
    expected1 = [w1 * 0.9 + w2 * 0.5, w1 * 0.1 + w2 * 0.5]
    z1 = np.log(np.array(probs))  # softmax(log p) = p
    z = np.stack([z1, z1], axis=1)  # [3, 2, 2]
    mask = np.array([[True, True], [True, True], [True, False]])
    out = build_aggregator("entropy")(z, mask=mask)
    np.testing.assert_allclose(out, [expected0, expected1], atol=1e-7)


def test_entropy_edge_cases_are_uniform() -> None:
    # every teacher one-hot (H = 0 in float64: exp(-1000) underflows) -> uniform weights
    z = np.array([[[1000.0, 0.0]], [[0.0, 1000.0]], [[0.0, 1000.0]]])
    np.testing.assert_allclose(build_aggregator("entropy")(z), [[1 / 3, 2 / 3]], atol=1e-7)
    # a single valid teacher -> that teacher
    z = np.array([[[0.0, LOG3]], [[5.0, 0.0]]])
    mask = np.array([[True], [False]])
    np.testing.assert_allclose(build_aggregator("entropy")(z, mask=mask), [[0.25, 0.75]], atol=1e-7)


def test_confidence_known_values() -> None:
    # p1 = (1/4, 3/4) -> w ∝ 3/4; p2 = (1/2, 1/2) -> w ∝ 1/2; normalised (3/5, 2/5)
    # t = 3/5 (1/4, 3/4) + 2/5 (1/2, 1/2) = (3/20 + 4/20, 9/20 + 4/20) = (7/20, 13/20)
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])
    np.testing.assert_allclose(build_aggregator("confidence")(z), [[7 / 20, 13 / 20]], atol=1e-7)


def test_era_known_values() -> None:
    # p1 = (1/4, 3/4), p2 = (1/2, 1/2) -> pbar = (3/8, 5/8)
    z = np.array([[[0.0, LOG3]], [[0.0, 0.0]]])
    # temperature mode, T_era = 0.1: softmax(3.75, 6.25) = (1, e^2.5) / (1 + e^2.5)
    e = math.exp(2.5)
    out = build_aggregator("era")(z)
    np.testing.assert_allclose(out, [[1 / (1 + e), e / (1 + e)]], atol=1e-7)
    # T_era = 0.5: softmax(0.75, 1.25) = (1, e^0.5) / (1 + e^0.5)
    e = math.exp(0.5)
    out = build_aggregator("era", era_temperature=0.5)(z)
    np.testing.assert_allclose(out, [[1 / (1 + e), e / (1 + e)]], atol=1e-7)
    # power mode, beta = 2: (9/64, 25/64) / (34/64) = (9/34, 25/34)
    out = build_aggregator("era", mode="power")(z)
    np.testing.assert_allclose(out, [[9 / 34, 25 / 34]], atol=1e-7)
    # beta = 3: (27, 125) / 152
    np.testing.assert_allclose(
        build_aggregator("era", mode="power", beta=3)(z), [[27 / 152, 125 / 152]], atol=1e-7
    )


@pytest.mark.parametrize("mode", ["temperature", "power"])
def test_era_keeps_argmax_and_lowers_entropy_on_flat_inputs(mode: str) -> None:
    # many disagreeing, unsure teachers over 3 classes -> a flat pbar
    z = logits(8, 40, 3, seed=8, scale=0.5)
    pbar = ref_softmax(z).mean(axis=0)
    out = build_aggregator("era", mode=mode)(z)
    np.testing.assert_array_equal(out.argmax(axis=1), pbar.argmax(axis=1))
    assert (ref_entropy(out) < ref_entropy(pbar)).all()


def test_era_power_mode_lowers_entropy_over_ten_classes() -> None:
    z = logits(8, 40, 10, seed=9, scale=1.0)
    pbar = ref_softmax(z).mean(axis=0)
    out = build_aggregator("era", mode="power")(z)
    np.testing.assert_array_equal(out.argmax(axis=1), pbar.argmax(axis=1))
    assert (ref_entropy(out) < ref_entropy(pbar)).all()


def test_era_raises_entropy_on_peaked_input() -> None:
    # notes §4: two one-hot teachers on classes 0 and 1 -> pbar = (0.5, 0.5, 0, ..., 0), C = 10
    # softmax(pbar / 0.1) = (e^5, e^5, 1 x 8) / (2 e^5 + 8)
    z = np.full((2, 1, 10), -1000.0)
    z[0, 0, 0] = z[1, 0, 1] = 0.0
    zsum = 2 * math.exp(5) + 8
    a, b = math.exp(5) / zsum, 1 / zsum
    h = -(2 * a * math.log(a) + 8 * b * math.log(b))
    assert h == pytest.approx(0.85, abs=0.005) and h > math.log(2)
    out = build_aggregator("era")(z)
    np.testing.assert_allclose(out[0], [a, a] + [b] * 8, atol=1e-7)
    assert ref_entropy(out)[0] == pytest.approx(h, abs=1e-5)


def test_era_temperature_mode_can_raise_entropy_on_a_flat_input_too() -> None:
    # pbar = (2, 2, 2, 2, 2, 1, 1, 1, 1, 1) / 15 (one teacher, z = log pbar):
    # softmax(pbar / 0.1) = (e^{4/3} x 5, e^{2/3} x 5) / (5 e^{4/3} + 5 e^{2/3})
    # H(pbar) = 2.2460, H(era) = 2.2500: ERA lifts the low classes when C * T_era = 1
    pbar = np.array([2.0] * 5 + [1.0] * 5) / 15
    zsum = 5 * math.exp(4 / 3) + 5 * math.exp(2 / 3)
    a, b = math.exp(4 / 3) / zsum, math.exp(2 / 3) / zsum
    h_era = -5 * (a * math.log(a) + b * math.log(b))
    h_pbar = -5 * (2 / 15 * math.log(2 / 15) + 1 / 15 * math.log(1 / 15))
    assert h_era > h_pbar
    out = build_aggregator("era")(np.log(pbar)[None, None, :])
    np.testing.assert_allclose(out[0], [a] * 5 + [b] * 5, atol=1e-7)
    assert out[0].argmax() == 0


def test_median_known_values() -> None:
    # three teachers, C = 3: (1, 2, 3), (4, 0, 0), (2, 8, -1) -> coordinate medians (2, 2, 0)
    z = np.array([[[1.0, 2.0, 3.0]], [[4.0, 0.0, 0.0]], [[2.0, 8.0, -1.0]]])
    zsum = 2 * math.exp(2) + 1
    expected = [[math.exp(2) / zsum, math.exp(2) / zsum, 1 / zsum]]
    np.testing.assert_allclose(build_aggregator("median")(z), expected, atol=1e-7)
    # T = 2: medians (1, 1, 0) -> (e, e, 1) / (2e + 1)
    zsum = 2 * math.e + 1
    expected = [[math.e / zsum, math.e / zsum, 1 / zsum]]
    np.testing.assert_allclose(build_aggregator("median", temperature=2.0)(z), expected, atol=1e-7)
    # mask out teacher 3: even count -> mean of the two middle values: (2.5, 1, 1.5)
    mask = np.array([[True], [True], [False]])
    e = np.exp([2.5, 1.0, 1.5])
    np.testing.assert_allclose(build_aggregator("median")(z, mask=mask), [e / e.sum()], atol=1e-7)


def test_trimmed_mean_known_values() -> None:
    # K = 5, trim 0.2 -> cut int(0.2 * 5) = 1 per side
    # class 0: (0, 1, 2, 3, 100) -> drop 0 and 100 -> mean 2
    # class 1: (5, -50, 1, 1, 1) -> sorted (-50, 1, 1, 1, 5) -> mean 1
    # softmax(2, 1) = (e, 1) / (e + 1)
    z = np.array([[[0.0, 5.0]], [[1.0, -50.0]], [[2.0, 1.0]], [[3.0, 1.0]], [[100.0, 1.0]]])
    e = math.e
    out = build_aggregator("trimmed-mean")(z)
    np.testing.assert_allclose(out, [[e / (e + 1), 1 / (e + 1)]], atol=1e-7)
    # T = 2 halves the trimmed means: softmax(1, 0.5)
    e = math.exp(0.5)
    out = build_aggregator("trimmed-mean", temperature=2.0)(z)
    np.testing.assert_allclose(out, [[e / (e + 1), 1 / (e + 1)]], atol=1e-7)
    # trim 0 -> plain mean of logits: (106 / 5, -42 / 5)
    out = build_aggregator("trimmed-mean", trim_fraction=0.0)(z)
    np.testing.assert_allclose(out, [ref_softmax(np.array([106 / 5, -42 / 5]))], atol=1e-7)


def test_trimmed_mean_cut_follows_valid_count() -> None:
    # same five teachers on two samples; sample 1 masks teacher 5 out -> K_n = 4 -> cut int(0.8) = 0
    # sample 0: as above, softmax(2, 1); sample 1: plain mean of the first four: (6/4, -43/4)
    col = np.array([[0.0, 5.0], [1.0, -50.0], [2.0, 1.0], [3.0, 1.0], [100.0, 1.0]])
    z = np.stack([col, col], axis=1)
    mask = np.ones((5, 2), dtype=bool)
    mask[4, 1] = False
    out = build_aggregator("trimmed-mean")(z, mask=mask)
    expected = ref_softmax(np.array([[2.0, 1.0], [1.5, -43 / 4]]))
    np.testing.assert_allclose(out, expected, atol=1e-7)
    # trim 0.4 with K_n = 5 -> cut 2 -> the median; with K_n = 4 -> cut 1 -> mean of the middle two
    out = build_aggregator("trimmed-mean", trim_fraction=0.4)(z, mask=mask)
    expected = ref_softmax(np.array([[2.0, 1.0], [1.5, 1.0]]))
    np.testing.assert_allclose(out, expected, atol=1e-7)


# ------------------------------------------------------------------------------------------
# robustness to a poisoned teacher
# ------------------------------------------------------------------------------------------


def test_median_and_trimmed_mean_resist_a_poisoned_teacher() -> None:
    # four honest but unsure teachers favour class 0 (logit margin about 0.5);
    # one poisoned teacher sends a huge logit for class 1 on every sample
    rng = np.random.default_rng(10)
    n, c = 20, 3
    honest = np.zeros((4, n, c))
    honest[:, :, 0] = 0.5
    honest += rng.uniform(-0.05, 0.05, size=honest.shape)
    poisoned = np.zeros((1, n, c))
    poisoned[0, :, 1] = 1000.0
    z = np.concatenate([honest, poisoned])

    reference = build_aggregator("mean")(honest)
    assert (reference.argmax(axis=1) == 0).all()

    # the mean of probabilities is bounded (the attacker moves at most 1/K of the mass) but
    # here that is enough to flip every sample; the mean of logits (trim 0) flips too
    mean = build_aggregator("mean")(z)
    assert (mean.argmax(axis=1) == 1).all()
    assert (build_aggregator("trimmed-mean", trim_fraction=0.0)(z).argmax(axis=1) == 1).all()

    median = build_aggregator("median")(z)
    trimmed = build_aggregator("trimmed-mean")(z)  # cut int(0.2 * 5) = 1: drops the attacker
    for robust in (median, trimmed):
        assert (robust.argmax(axis=1) == 0).all()
        shift = np.abs(robust - reference).sum(axis=1).max()
        assert shift < 0.1 < np.abs(mean - reference).sum(axis=1).min()
