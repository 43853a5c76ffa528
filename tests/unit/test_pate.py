"""The ``pate`` rule: plain and noisy votes, Confident-GNMax threshold, privacy events."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, Targets, build_aggregator
from fedkd.aggregation.pate import PateRule

# ------------------------------------------------------------------------------------------
# helpers (independent of the implementation)
# ------------------------------------------------------------------------------------------


def logits_from_votes(votes: list[list[int]], c: int) -> np.ndarray:
    """Logits [K, N, C] whose argmax for teacher k on sample n is votes[k][n]."""
    v = np.asarray(votes)
    z = np.random.default_rng(0).uniform(-1.0, 0.0, size=(*v.shape, c))
    k_idx, n_idx = np.indices(v.shape)
    z[k_idx, n_idx, v] = 2.0
    return z


def margin_logits(k: int, n: int, c: int, top: int, runner_up: int, rng_seed: int = 0):
    """K teachers on N samples: ``top`` vote for the sample's class, ``runner_up`` for another.

    Returns (logits, true labels, other labels); the remaining teachers vote for a third class.
    """
    rng = np.random.default_rng(rng_seed)
    labels = rng.integers(0, c, size=n)
    other = (labels + 1 + rng.integers(0, c - 1, size=n)) % c
    third = np.where((labels + 1) % c == other, (labels + 2) % c, (labels + 1) % c)
    votes = np.empty((k, n), dtype=int)
    votes[:top] = labels
    votes[top : top + runner_up] = other
    votes[top + runner_up :] = third
    return logits_from_votes(votes.tolist(), c), labels, other


def one_hot(labels, c: int) -> np.ndarray:
    out = np.zeros((len(labels), c), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# votes of 3 teachers on 4 samples, C = 3
#   sample 0: 0, 0, 1 -> 0     sample 1: 1, 2, 2 -> 2
#   sample 2: 2, 2, 0 -> 2     sample 3: 0, 1, 2 -> three-way tie -> lowest class, 0
VOTES = [[0, 1, 2, 0], [0, 2, 2, 1], [1, 2, 0, 2]]
PLAIN = [0, 2, 2, 0]
# mask teachers 1 and 2 on sample 1 (only teacher 0 left: 1) and teacher 0 on sample 3
# (votes 1, 2: a tie -> 1)
MASK = np.array([[True, True, True, False], [True, False, True, True], [True, False, True, True]])
PLAIN_MASKED = [0, 1, 2, 1]


# ------------------------------------------------------------------------------------------
# registration and options
# ------------------------------------------------------------------------------------------


def test_registered_and_options() -> None:
    assert AGGREGATORS.get("pate") is PateRule
    assert PateRule.randomized and not PateRule.uses_weights
    rule = build_aggregator("pate")
    assert rule.options() == {
        "temperature": 1.0,
        "sigma": 40.0,
        "threshold": None,
        "sigma_threshold": 150.0,
    }
    rule = build_aggregator("pate", **{"sigma": 5, "threshold": 200, "sigma-threshold": 150})
    assert rule.options() == {
        "temperature": 1.0,
        "sigma": 5.0,
        "threshold": 200.0,
        "sigma_threshold": 150.0,
    }
    assert build_aggregator("pate", threshold=-3).threshold == -3.0


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"sigma": float("inf")},
        {"sigma": "40"},
        {"sigma": True},
        {"sigma_threshold": -0.5},
        {"sigma_threshold": float("inf")},
        {"threshold": float("nan")},
        {"threshold": float("inf")},
        {"threshold": "200"},
        {"temperature": 0.0},
    ],
)
def test_invalid_options_raise(options: dict) -> None:
    with pytest.raises(ValueError):
        build_aggregator("pate", **options)


# ------------------------------------------------------------------------------------------
# the noiseless vote
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.3, 7.0])
def test_sigma_zero_is_the_plain_vote(temperature: float) -> None:
    z = logits_from_votes(VOTES, 3)
    rule = build_aggregator("pate", sigma=0.0, temperature=temperature)
    np.testing.assert_array_equal(rule(z), one_hot(PLAIN, 3))
    np.testing.assert_array_equal(rule(z, mask=MASK), one_hot(PLAIN_MASKED, 3))
    for mask, expected in ((None, PLAIN), (MASK, PLAIN_MASKED)):
        out = rule.aggregate(z, mask=mask)  # noiseless: no rng needed
        assert isinstance(out, Targets)
        np.testing.assert_array_equal(out.probs, one_hot(expected, 3))
        assert out.answered.all()
        # an rng, if given, is not used
        rng = np.random.default_rng(1)
        np.testing.assert_array_equal(rule.aggregate(z, mask=mask, rng=rng).probs, out.probs)
        assert rng.random() == np.random.default_rng(1).random()


def test_teacher_tie_goes_to_lowest_class_and_masked_garbage_is_ignored() -> None:
    # teacher 0 has a tie between classes 1 and 2 -> votes 1; teacher 1 votes 2;
    # teacher 2 votes 1 -> class 1 wins 2 to 1
    z = np.array([[[0.0, 5.0, 5.0]], [[0.0, 1.0, 9.0]], [[0.0, 3.0, -1.0]]])
    rule = build_aggregator("pate", sigma=0.0)
    np.testing.assert_array_equal(rule(z), [[0.0, 1.0, 0.0]])
    # a fourth, masked-out teacher with huge logits for class 2 changes nothing
    garbage = np.array([[[-1e30, -1e30, 1e30]]])
    z4 = np.concatenate([z, garbage, garbage])
    mask = np.array([[True], [True], [True], [False], [False]])
    np.testing.assert_array_equal(rule(z4, mask=mask), [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(rule.aggregate(z4, mask=mask).probs, [[0.0, 1.0, 0.0]])
    # unmasked, the two extra teachers vote 2 -> 3 to 2 for class 2
    np.testing.assert_array_equal(rule(z4), [[0.0, 0.0, 1.0]])


def test_plain_vote_is_invariant_to_teacher_order() -> None:
    z, _, _ = margin_logits(7, 30, 4, top=3, runner_up=2, rng_seed=3)
    rng = np.random.default_rng(4)
    mask = rng.random((7, 30)) > 0.3
    mask[0] = True
    perm = rng.permutation(7)
    rule = build_aggregator("pate", sigma=0.0)
    np.testing.assert_array_equal(rule(z[perm], mask=mask[perm]), rule(z, mask=mask))


# ------------------------------------------------------------------------------------------
# the noisy vote
# ------------------------------------------------------------------------------------------


def test_large_margin_is_answered_correctly() -> None:
    # 45 of 50 teachers agree: the margin 40 is 5.7 standard deviations of the difference of
    # two noisy counts at sigma 5
    z, labels, _ = margin_logits(50, 200, 10, top=45, runner_up=5)
    rule = build_aggregator("pate", sigma=5.0)
    out = rule.aggregate(z, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out.probs.argmax(axis=1), labels)
    np.testing.assert_array_equal(out.probs, one_hot(labels, 10))
    assert out.answered.all()


def test_noise_has_the_stated_standard_deviation() -> None:
    # two classes, votes 27 vs 23: correct iff 4 + (e1 - e2) > 0 with e1 - e2 ~ N(0, 2 sigma^2)
    # -> P(correct) = Phi(4 / (sigma sqrt 2)); sigma = 4 -> Phi(0.7071) = 0.760
    n = 20_000
    z, labels, _ = margin_logits(50, n, 2, top=27, runner_up=23, rng_seed=5)
    out = build_aggregator("pate", sigma=4.0).aggregate(z, rng=np.random.default_rng(6))
    freq = float(np.mean(out.probs.argmax(axis=1) == labels))
    expected = normal_cdf(4.0 / (4.0 * math.sqrt(2.0)))
    assert expected == pytest.approx(0.7602, abs=1e-3)
    assert freq == pytest.approx(expected, abs=0.015)  # 5 binomial standard deviations


def test_noisy_vote_is_reproducible_and_rng_driven() -> None:
    z, _, _ = margin_logits(10, 300, 5, top=4, runner_up=3, rng_seed=7)
    rule = build_aggregator("pate", sigma=3.0, threshold=4.0, sigma_threshold=2.0)
    a = rule.aggregate(z, rng=np.random.default_rng(11))
    b = rule.aggregate(z, rng=np.random.default_rng(11))
    c = rule.aggregate(z, rng=np.random.default_rng(12))
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.answered, b.answered)
    assert not np.array_equal(a.probs, c.probs)


def test_output_shapes_and_dtypes() -> None:
    z, _, _ = margin_logits(9, 40, 6, top=5, runner_up=3, rng_seed=8)
    mask = np.random.default_rng(9).random((9, 40)) > 0.2
    mask[0] = True
    for rule in (
        build_aggregator("pate"),
        build_aggregator("pate", sigma=2.0, threshold=5.0, sigma_threshold=2.0),
        build_aggregator("pate", sigma=0.0, threshold=5.0, sigma_threshold=0.0),
    ):
        for m in (None, mask):
            out = rule.aggregate(z, mask=m, rng=np.random.default_rng(10))
            assert out.probs.shape == (40, 6) and out.probs.dtype == np.float32
            assert out.answered.shape == (40,) and out.answered.dtype == np.bool_
            np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-6)
            answered = out.probs[out.answered]
            assert ((answered == 0.0) | (answered == 1.0)).all()
            np.testing.assert_array_equal(out.probs[~out.answered], np.float32(1.0 / 6.0))


# ------------------------------------------------------------------------------------------
# Confident-GNMax threshold
# ------------------------------------------------------------------------------------------


def test_threshold_above_k_never_answers() -> None:
    z, _, _ = margin_logits(50, 500, 10, top=50, runner_up=0)
    # top count 50, threshold 150 = 10 sigma_threshold above it
    rule = build_aggregator("pate", sigma=5.0, threshold=150.0, sigma_threshold=10.0)
    out = rule.aggregate(z, rng=np.random.default_rng(0))
    assert not out.answered.any()
    np.testing.assert_array_equal(out.probs, np.full((500, 10), 0.1, dtype=np.float32))
    # events are charged all the same (every query, answered or not)
    assert [e.count for e in out.privacy_events] == [500, 500]


def test_threshold_below_zero_always_answers() -> None:
    z, labels, _ = margin_logits(50, 500, 10, top=45, runner_up=5)
    rule = build_aggregator("pate", sigma=5.0, threshold=-100.0, sigma_threshold=10.0)
    out = rule.aggregate(z, rng=np.random.default_rng(0))
    assert out.answered.all()
    np.testing.assert_array_equal(out.probs, one_hot(labels, 10))


def test_threshold_answer_rate() -> None:
    # top count 45, threshold 50, sigma_threshold 5: P(answer) = P(N(0, 25) >= 5) = 1 - Phi(1)
    n = 20_000
    z, _, _ = margin_logits(50, n, 10, top=45, runner_up=5, rng_seed=2)
    rule = build_aggregator("pate", sigma=1.0, threshold=50.0, sigma_threshold=5.0)
    out = rule.aggregate(z, rng=np.random.default_rng(3))
    assert float(out.answered.mean()) == pytest.approx(1.0 - normal_cdf(1.0), abs=0.013)


def test_noiseless_threshold_uses_exact_counts() -> None:
    # top counts per sample: 2, 2, 2, 1 (no mask) -> threshold 2 answers samples 0, 1, 2
    z = logits_from_votes(VOTES, 3)
    rule = build_aggregator("pate", sigma=0.0, threshold=2.0, sigma_threshold=0.0)
    out = rule.aggregate(z)  # fully deterministic: no rng needed
    np.testing.assert_array_equal(out.answered, [True, True, True, False])
    expected = one_hot(PLAIN, 3)
    expected[3] = 1.0 / 3.0
    np.testing.assert_array_equal(out.probs, expected)
    # with MASK the top counts are 2, 1, 2, 1
    out = rule.aggregate(z, mask=MASK)
    np.testing.assert_array_equal(out.answered, [True, False, True, False])


# ------------------------------------------------------------------------------------------
# misuse
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"sigma": 1.0}, {"sigma": 0.0, "threshold": 3.0}],  # the last: sigma_threshold 150
)
def test_rng_required_when_noisy(options: dict) -> None:
    rule = build_aggregator("pate", **options)
    z = logits_from_votes(VOTES, 3)
    with pytest.raises(ValueError, match="rng"):
        rule.aggregate(z)
    with pytest.raises(TypeError, match="Generator"):
        rule.aggregate(z, rng=0)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sigma": 0.0, "threshold": 1.0},
        {"sigma": 0.0, "threshold": 1.0, "sigma_threshold": 0.0},
    ],
)
def test_deterministic_call_refused_when_randomised(options: dict) -> None:
    rule = build_aggregator("pate", **options)
    with pytest.raises(ValueError, match=r"aggregate\(.*rng"):
        rule(logits_from_votes(VOTES, 3))


def test_weights_rejected() -> None:
    z = logits_from_votes(VOTES, 3)
    for rule in (build_aggregator("pate"), build_aggregator("pate", sigma=0.0)):
        with pytest.raises(ValueError, match="does not use weights"):
            rule.aggregate(z, weights=np.ones(3), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not use weights"):
        build_aggregator("pate", sigma=0.0)(z, weights=np.ones(3))


def test_invalid_inputs_raise_before_any_noise() -> None:
    rule = build_aggregator("pate")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3-D"):
        rule.aggregate(np.zeros((3, 4)), rng=rng)
    z = logits_from_votes(VOTES, 3)
    z[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rule.aggregate(z, rng=rng)
    mask = MASK.copy()
    mask[:, 2] = False
    with pytest.raises(ValueError, match="at least one valid teacher"):
        rule.aggregate(logits_from_votes(VOTES, 3), mask=mask, rng=rng)
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn


# ------------------------------------------------------------------------------------------
# privacy events
# ------------------------------------------------------------------------------------------


def test_privacy_events_gnmax() -> None:
    z, _, _ = margin_logits(20, 37, 4, top=12, runner_up=5)
    out = build_aggregator("pate", sigma=40.0).aggregate(z, rng=np.random.default_rng(0))
    (event,) = out.privacy_events
    assert isinstance(event, dp_accounting.SelfComposedDpEvent)
    assert event.count == 37
    assert isinstance(event.event, dp_accounting.GaussianDpEvent)
    assert event.event.noise_multiplier == pytest.approx(40.0 / math.sqrt(2.0), rel=1e-12)


def test_privacy_events_confident_gnmax() -> None:
    z, _, _ = margin_logits(20, 37, 4, top=12, runner_up=5)
    rule = build_aggregator("pate", sigma=40.0, threshold=15.0, sigma_threshold=150.0)
    out = rule.aggregate(z, mask=np.ones((20, 37), dtype=bool), rng=np.random.default_rng(0))
    assert len(out.privacy_events) == 2
    for event in out.privacy_events:
        assert isinstance(event, dp_accounting.SelfComposedDpEvent)
        assert isinstance(event.event, dp_accounting.GaussianDpEvent)
        assert event.count == 37  # every query, answered or not
    zs = sorted(e.event.noise_multiplier for e in out.privacy_events)
    assert zs == pytest.approx([40.0 / math.sqrt(2.0), 150.0], rel=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {"sigma": 0.0},
        {"sigma": 0.0, "threshold": 1.0, "sigma_threshold": 0.0},
        {"sigma": 3.0, "threshold": 1.0, "sigma_threshold": 0.0},  # exact threshold test
    ],
)
def test_noiseless_steps_are_non_private(options: dict) -> None:
    out = build_aggregator("pate", **options).aggregate(
        logits_from_votes(VOTES, 3), rng=np.random.default_rng(0)
    )
    (event,) = out.privacy_events
    assert isinstance(event, dp_accounting.NonPrivateDpEvent)


def test_deterministic_rules_spend_nothing() -> None:
    out = build_aggregator("mean").aggregate(logits_from_votes(VOTES, 3))
    assert out.privacy_events == () and out.answered.all()
