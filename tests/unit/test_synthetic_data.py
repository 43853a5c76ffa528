"""LEAF/FedProx Synthetic(alpha, beta): clients generated on demand from their own seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.data import DATASETS, DataSpec, load_federated
from fedkd.data.synthetic import (
    DIMENSION,
    MAX_CLIENT_SAMPLES,
    NUM_CLASSES,
    TEST_SAMPLES_PER_CLIENT,
    SyntheticPopulation,
    synthetic_client,
)


def spec(**kw) -> DataSpec:
    return DataSpec(**{"dataset": "synthetic", "num_partitions": 1000, **kw})


def test_a_client_is_the_fedprox_generator_drawn_from_its_own_seed() -> None:
    # The documented draws, in the documented order, from the same generator: the labels are
    # the argmax of the client's own model W x + b, the inputs N(v, diag((j+1)^-1.2)).
    x, y = synthetic_client(np.random.default_rng(7), 1.0, 1.0)
    rng = np.random.default_rng(7)
    n = min(int(rng.lognormal(4.0, 2.0)) + 50, MAX_CLIENT_SAMPLES)
    u, big_b = rng.normal(0.0, 1.0), rng.normal(0.0, 1.0)
    w = rng.normal(u, 1.0, (DIMENSION, NUM_CLASSES))
    b = rng.normal(u, 1.0, NUM_CLASSES)
    v = rng.normal(big_b, 1.0, DIMENSION)
    noise = rng.standard_normal((n, DIMENSION))
    expected_x = v + noise * np.arange(1, DIMENSION + 1) ** -0.6
    assert x.shape == (n, 1, 1, DIMENSION) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x.reshape(n, DIMENSION), expected_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, np.argmax(expected_x @ w + b, axis=1))


def test_alpha_and_beta_spread_the_clients_apart() -> None:
    # beta = 0 puts every client's input mean around 0; a large beta spreads them apart
    def centre_spread(beta: float) -> float:
        centres = [synthetic_client(np.random.default_rng(k), 0.0, beta, 200)[0].mean()
                   for k in range(200)]
        return float(np.std(centres))

    assert centre_spread(0.0) < 0.3 < 2.0 < centre_spread(5.0)


def test_the_same_spec_gives_the_same_clients_in_any_process_and_no_client_is_held() -> None:
    a, b = SyntheticPopulation(spec(num_partitions=1_000_000)), SyntheticPopulation(
        spec(num_partitions=1_000_000))
    assert len(a._clients) == 0  # nothing per client until asked
    for k in (0, 1, 999_999):
        ca, cb = a.client(k), b.client(k)
        np.testing.assert_array_equal(ca.train.x, cb.train.x)
        np.testing.assert_array_equal(ca.test.y, cb.test.y)
        assert 50 <= len(ca.train) + len(ca.test) <= MAX_CLIENT_SAMPLES
        assert len(ca.test) == round(0.2 * (len(ca.train) + len(ca.test)))
    assert not np.array_equal(a.client(0).train.x[:5], a.client(1).train.x[:5])
    other_seed = SyntheticPopulation(spec(num_partitions=1_000_000, seed=1))
    assert not np.array_equal(a.client(0).train.x[:5], other_seed.client(0).train.x[:5])


def test_cached_clients_are_bounded_and_read_only() -> None:
    pop = SyntheticPopulation(spec())
    for k in range(100):
        pop.cached_client(k)
    assert len(pop._clients) == 64
    data = pop.cached_client(99)
    with pytest.raises(ValueError):
        data.train.x[0, 0, 0, 0] = 1.0


def test_global_test_is_the_local_test_splits_of_population_clients() -> None:
    pop = SyntheticPopulation(spec(num_partitions=20))
    # 20 clients < TEST_CLIENTS: every client's local test split, at most 20 samples of each
    expected = np.concatenate([pop.client(k).test.y[:TEST_SAMPLES_PER_CLIENT] for k in range(20)])
    np.testing.assert_array_equal(pop.global_test.y, expected)
    assert pop.global_test.x.shape[1:] == (1, 1, DIMENSION)


def test_public_set_is_sized_by_public_fraction_and_can_withhold_its_labels() -> None:
    labelled = SyntheticPopulation(spec(public_fraction=0.1))
    assert len(labelled.public) == 2000 and labelled.public.y.min() >= 0
    unlabeled = SyntheticPopulation(spec(public_fraction=0.1, public_labels=False))
    np.testing.assert_array_equal(unlabeled.public.x, labelled.public.x)
    assert (unlabeled.public.y == -1).all()
    assert len(SyntheticPopulation(spec(public_fraction=0.0)).public) == 0


def test_load_federated_dispatches_to_the_generated_population() -> None:
    data = load_federated(spec(num_partitions=50_000))
    assert isinstance(data, SyntheticPopulation)
    assert data.num_partitions == 50_000 and data.input_shape == (1, 1, DIMENSION)
    assert DATASETS.get("synthetic").federate is SyntheticPopulation
    assert "50000 clients generated on demand" in data.describe()


@pytest.mark.parametrize("client", [-1, 1000, 2.0, True])
def test_a_client_outside_the_population_is_refused(client: object) -> None:
    with pytest.raises(ValueError, match="out of range: the synthetic population has 1000"):
        SyntheticPopulation(spec()).client(client)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["synthetic_alpha", "synthetic_beta"])
@pytest.mark.parametrize("value", [-0.5, float("nan"), "1"])
def test_priors_must_be_finite_and_non_negative(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number >= 0"):
        spec(**{field: value})
