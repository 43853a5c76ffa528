"""Sum-decomposable rules as functions of sums over teachers (what secure aggregation reveals):
known values, agreement with the plain rule, and refusal by the others."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.aggregation import AGGREGATORS, build_aggregator
from fedkd.compose import build_config, load_plugins

load_plugins()

DECOMPOSABLE = ["mean", "weighted", "classwise", "era", "logit-mean", "weighted-logit-mean"]


def _sums(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.sum([p[k] for p in parts], axis=0) for k in parts[0]}


def test_known_values_of_the_classwise_sums() -> None:
    # two teachers, one sample, two classes; p_1 = (0.5, 0.5), p_2 = (1, 0) (logit gap 40)
    rule = build_aggregator("classwise")
    a = rule.summands(np.array([[0.0, 0.0]]), weight=np.array([1.0, 3.0]))
    b = rule.summands(np.array([[40.0, 0.0]]), weight=np.array([1.0, 0.0]))
    np.testing.assert_allclose(a["num"], [[0.5, 1.5]])
    np.testing.assert_allclose(b["den"], [[1.0, 0.0]])
    # class 0: (0.5 + 1) / 2 = 0.75; class 1: 1.5 / 3 = 0.5; renormalised: 0.6, 0.4
    targets = rule.from_sums(_sums([a, b]), 2)
    np.testing.assert_allclose(targets.probs, [[0.6, 0.4]], atol=1e-7)
    assert targets.answered.all()


def test_known_values_of_the_mean_sums_without_a_denominator() -> None:
    rule = build_aggregator("mean")
    parts = [rule.summands(np.array([[0.0, 0.0]])), rule.summands(np.array([[40.0, 0.0]]))]
    assert set(parts[0]) == {"num"}  # the teacher count stands in for the denominator
    np.testing.assert_allclose(rule.from_sums(_sums(parts), 2).probs, [[0.75, 0.25]], atol=1e-7)


@pytest.mark.parametrize("name", DECOMPOSABLE)
@pytest.mark.parametrize("masked", [False, True])
def test_sums_give_the_plain_rule_s_targets(name: str, masked: bool) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 9, 5)) * 4
    mask = rng.random((6, 9)) > 0.4 if masked else None
    if mask is not None:
        mask[0] = True
    rule = build_aggregator(name)
    weights = None
    if name in ("weighted", "weighted-logit-mean"):
        weights = rng.integers(1, 500, 6).astype(float)
    elif name == "classwise":
        weights = rng.integers(0, 300, (6, 5)).astype(float) + 1e-6
    plain = rule(z, weights=weights, mask=mask)
    parts = [rule.summands(z[k], weight=None if weights is None else weights[k],
                           mask=None if mask is None else mask[k]) for k in range(6)]
    layout = rule.sum_layout(9, 5, masked=masked)
    assert {k: v.shape for k, v in parts[0].items()} == layout
    targets = rule.from_sums(_sums(parts), 6)
    np.testing.assert_allclose(targets.probs, plain, atol=1e-6)


def test_noisy_sums_still_give_distributions() -> None:
    rule = build_aggregator("era")
    sums = {"num": np.array([[-0.5, 2.0, 1.0], [-1.0, -1.0, -1.0]])}
    targets = rule.from_sums(sums, 3)
    np.testing.assert_allclose(targets.probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.probs >= 0).all()


@pytest.mark.parametrize("name", sorted(set(AGGREGATORS.names()) - set(DECOMPOSABLE)))
def test_other_rules_cannot_run_on_sums(name: str) -> None:
    rule = build_aggregator(name)
    assert not rule.sum_decomposable
    with pytest.raises(TypeError, match="not a function of sums"):
        rule.summands(np.zeros((2, 3)))


BASE = {"algorithm": "dsfl", "data.dataset": "digits", "aggregation.secure": True}


@pytest.mark.parametrize(("rule", "why"), [
    ("median", "need each teacher.s logits"), ("trimmed-mean", "need each teacher.s logits"),
    ("entropy", "need each teacher.s logits"), ("pate", "noisy vote"),
])
def test_secure_aggregation_refuses_a_rule_that_is_not_sum_decomposable(rule: str, why: str) -> None:
    with pytest.raises(Exception, match=rf"aggregation.secure: the '{rule}' rule is not "
                                        rf"sum-decomposable \(.*{why}.*Rules that can: classwise, era, logit-mean, mean, weighted, "
                                        r"weighted-logit-mean"):
        build_config({**BASE, "aggregation.rule": rule})


@pytest.mark.parametrize("algorithm", ["fedavg", "fd", "selective-fd", "fedgen-logits"])
def test_secure_aggregation_refuses_an_algorithm_that_cannot_use_it(algorithm: str) -> None:
    with pytest.raises(Exception, match=rf"aggregation.secure: {algorithm} cannot run under "
                                        r"secure aggregation.*can: dsfl, fedmd"):
        build_config({**BASE, "algorithm": algorithm})


def test_secure_aggregation_accepts_a_decomposable_rule() -> None:
    cfg = build_config({**BASE, "aggregation.rule": "classwise", "secagg.neighbours": 4})
    assert cfg.aggregation.secure and cfg.section("secagg").neighbours == 4
