"""``federation.sampling``: "fixed" is the sample it always was, and "poisson" is what the server
ledger's amplification by sampling assumes (``PoissonSampledDpEvent(q, ...)``): every client of
a round is taken independently of the others, and of earlier rounds, with probability ``q``.

The statistics run the round loop's generator (one ``np.random.default_rng([seed, 0x5A3F])``
for every round, as ``server.loop.run_rounds`` does) over many rounds with a fixed seed, so each
test is deterministic; each bound is wide enough (5 standard deviations, a chi-square quantile
at 1e-4) that a correct sampler passes for practically any seed, and narrow enough that a
sampler off by a little fails: see the comment on each bound.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from fedkd.compose import build_config, check_federation_size
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from server.loop import sample_nodes, skip_probability, skip_reason

# Real ids from a Flower 1.42 simulation: some above 2**63, some below.
NODES = [1857415176174798123, 2459221175014713999, 9259491361924665001, 14445676664421566999,
         18446744073709551615, 5]

N, Q, ROUNDS = 20, 0.3, 20_000


def _old_fixed_sample(nodes, fraction, rng):  # noqa: ANN001, ANN202 - the code before poisson
    k = max(1, int(np.ceil(fraction * len(nodes))))
    if k >= len(nodes):
        return list(nodes)
    picked = rng.choice(len(nodes), size=k, replace=False)
    return sorted(int(nodes[i]) for i in picked)


def _inclusions(seed: int = 0, n: int = N, q: float = Q, rounds: int = ROUNDS) -> np.ndarray:
    """[rounds, n] booleans: whether client i was sampled in round r, by the loop's generator."""
    rng = np.random.default_rng([seed, 0x5A3F])
    ids = list(range(n))
    out = np.zeros((rounds, n), dtype=bool)
    for r in range(rounds):
        out[r, sample_nodes(ids, q, rng, "poisson")] = True
    return out


@pytest.fixture(scope="module")
def inclusions() -> np.ndarray:
    return _inclusions()


# ----- fixed: unchanged ---------------------------------------------------------------------


def test_fixed_sampling_is_the_sample_it_always_was() -> None:
    # Same samples and the same generator calls (the state after each round is the same), so a
    # run of the default configuration draws exactly what it drew before federation.sampling.
    for nodes in (NODES, list(range(20)), [3]):
        for fraction in (0.01, 0.3, 0.5, 0.99, 1.0):
            new, old = np.random.default_rng(7), np.random.default_rng(7)
            for _ in range(5):
                assert sample_nodes(nodes, fraction, new) == _old_fixed_sample(nodes, fraction, old)
                assert sample_nodes(nodes, fraction, new, "fixed") == _old_fixed_sample(
                    nodes, fraction, old)
                assert new.bit_generator.state == old.bit_generator.state


def test_an_unknown_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="'fixed' or 'poisson'"):
        sample_nodes(NODES, 0.5, np.random.default_rng(0), "uniform")
    with pytest.raises(ConfigError, match="federation.sampling must be one of 'fixed', 'poisson'"):
        build_config({"federation.sampling": "uniform"})


# ----- poisson: what the accountant assumes --------------------------------------------------


def test_poisson_samples_are_online_ids_of_any_size_and_seeded() -> None:
    sizes = set()
    for seed in range(200):
        picked = sample_nodes(NODES, 0.5, np.random.default_rng(seed), "poisson")
        assert picked == sorted(picked) and set(picked) <= set(NODES)  # not rounded via float64
        assert all(type(n) is int for n in picked)
        sizes.add(len(picked))
        assert picked == sample_nodes(NODES, 0.5, np.random.default_rng(seed), "poisson")
    assert sizes == set(range(len(NODES) + 1))  # empty and full rounds happen too
    assert sample_nodes(NODES, 1.0, np.random.default_rng(0), "poisson") == sorted(NODES)


def test_each_client_is_sampled_with_probability_q(inclusions: np.ndarray) -> None:
    # Each client's count over ROUNDS rounds is Binomial(ROUNDS, Q) if the sampler is right:
    # std sqrt(Q (1 - Q) / ROUNDS) = 0.0032 on the frequency. Within 5 std for all 20 clients
    # (a correct sampler fails with probability < 2e-5 over seeds); a rate off by 0.02 (say
    # ceil-rounding or a fixed-size draw of 6 of 20) is 6 std away.
    std = math.sqrt(Q * (1 - Q) / ROUNDS)
    freq = inclusions.mean(axis=0)
    assert np.all(np.abs(freq - Q) < 5 * std), freq
    # and an exact two-sided binomial test per client, Bonferroni-corrected at 1e-3
    for count in inclusions.sum(axis=0):
        assert stats.binomtest(int(count), ROUNDS, Q).pvalue > 1e-3 / N


def test_clients_are_sampled_independently_of_each_other(inclusions: np.ndarray) -> None:
    # Pairwise co-inclusion of independent clients: Q^2 = 0.09, std sqrt(Q^2 (1 - Q^2) / ROUNDS)
    # = 0.0020; within 5 std for all 190 pairs. Fixed-size sampling (6 of 20) gives
    # 6/20 * 5/19 = 0.079: 5.5 std below, so it fails here.
    co = inclusions.T.astype(float) @ inclusions.astype(float) / ROUNDS
    std = math.sqrt(Q**2 * (1 - Q**2) / ROUNDS)
    for i, j in combinations(range(N), 2):
        assert abs(co[i, j] - Q * Q) < 5 * std, (i, j, co[i, j])
    # and a three-way check: all of clients 0, 1, 2 together at Q^3
    triple = inclusions[:, :3].all(axis=1).mean()
    assert abs(triple - Q**3) < 5 * math.sqrt(Q**3 * (1 - Q**3) / ROUNDS)


def test_rounds_are_independent_of_each_other(inclusions: np.ndarray) -> None:
    # A client sampled in round r is sampled in round r + 1 with probability Q, not more or less.
    both = (inclusions[:-1] & inclusions[1:]).mean()
    assert abs(both - Q * Q) < 5 * math.sqrt(Q**2 * (1 - Q**2) / (N * (ROUNDS - 1)))


def test_the_round_size_is_binomial(inclusions: np.ndarray) -> None:
    # Chi-square goodness of fit of the ROUNDS sizes to Binomial(N, Q), bins with fewer than 5
    # expected pooled into the tails; the statistic must stay below the 1 - 1e-4 quantile.
    sizes = inclusions.sum(axis=1)
    observed = np.bincount(sizes, minlength=N + 1).astype(float)
    expected = ROUNDS * stats.binom.pmf(np.arange(N + 1), N, Q)
    lo = int(np.argmax(expected >= 5))
    hi = int(N - np.argmax(expected[::-1] >= 5))
    obs = np.concatenate([[observed[:lo + 1].sum()], observed[lo + 1:hi], [observed[hi:].sum()]])
    exp = np.concatenate([[expected[:lo + 1].sum()], expected[lo + 1:hi], [expected[hi:].sum()]])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, len(obs) - 1), (chi2, obs, exp)
    assert abs(sizes.mean() - N * Q) < 5 * math.sqrt(N * Q * (1 - Q) / ROUNDS)
    assert sizes.var() == pytest.approx(N * Q * (1 - Q), rel=0.05)


def test_fixed_size_samples_would_fail_these_checks() -> None:
    # The checks above tell the two samplers apart: ceil(0.3 * 20) = 6 every round.
    rng = np.random.default_rng([0, 0x5A3F])
    fixed = np.zeros((2000, N), dtype=bool)
    for r in range(2000):
        fixed[r, sample_nodes(list(range(N)), Q, rng)] = True
    assert set(fixed.sum(axis=1)) == {6}
    co = (fixed[:, 0] & fixed[:, 1]).mean()
    assert co == pytest.approx(6 / 20 * 5 / 19, abs=0.02) and abs(co - Q * Q) > 0.005


# ----- rounds that sample too few: skipped, never redrawn -----------------------------------


def _cfg(**federation: object) -> RunConfig:
    flat = {"data.num-partitions": 10, "federation.sampling": "poisson",
            "federation.fraction-train": 0.3, "federation.min-replies": 2,
            "num-server-rounds": 100}
    flat.update({f"federation.{k.replace('_', '-')}": v for k, v in federation.items()})
    return build_config(flat)


def test_a_round_with_fewer_than_min_replies_is_skipped_with_its_reason() -> None:
    cfg = _cfg()
    online = list(range(10))
    assert skip_reason(cfg, online, [3, 7]) is None
    reason = skip_reason(cfg, online, [3])
    assert reason is not None and "drew 1 of 10" in reason and "min-replies = 2" in reason
    assert "skipped, not redrawn" in skip_reason(cfg, online, [])
    fixed = build_config({"federation.fraction-train": 0.3})
    assert skip_reason(fixed, online, []) is None  # fixed-size rounds are never skipped


def test_more_clients_online_than_the_population_is_refused() -> None:
    with pytest.raises(ValueError, match="more than the population of 10"):
        skip_reason(_cfg(), list(range(11)), [1, 2, 3])
    assert skip_reason(_cfg(population=50), list(range(11)), [1, 2, 3]) is None


def test_the_skip_probability_bound() -> None:
    # rounds * P(Binomial(10, 0.3) < 2) = 100 * (0.7^10 + 10 * 0.3 * 0.7^9)
    expected = 100 * (0.7**10 + 10 * 0.3 * 0.7**9)
    assert skip_probability(_cfg()) == pytest.approx(min(1.0, expected))
    big = _cfg(population=10_000)
    assert skip_probability(big) < 1e-12  # a cohort of 3,000 on average: never below 2
    assert skip_probability(build_config({})) is None


def test_poisson_configurations_a_simulation_cannot_meet_are_refused() -> None:
    check_federation_size(_cfg(), 10)  # 3 expected, 2 needed
    with pytest.raises(ConfigError, match="Poisson sampling draws on average"):
        check_federation_size(_cfg(min_replies=4, min_nodes=4), 10)
    with pytest.raises(ConfigError, match="federation.population \\(5\\) is less than the 10"):
        check_federation_size(_cfg(population=5), 10)
    with pytest.raises(ConfigError, match="secagg.min-clients = 3 > federation.min-replies = 2"):
        build_config({"algorithm": "dsfl", "aggregation.secure": True,
                      "federation.sampling": "poisson", "secagg.noise-multiplier": 1.0,
                      "secagg.min-clients": 3, "federation.min-replies": 2})


def test_the_sampling_rate_the_algorithms_charge_with() -> None:
    assert _cfg().client_sampling_rate() == 0.3
    assert build_config({"federation.fraction-train": 0.3}).client_sampling_rate() is None
    assert _cfg().client_population() == 10 and _cfg(population=77).client_population() == 77
    with pytest.raises(ConfigError, match="federation.population must be >= 0"):
        build_config({"federation.population": -1})
