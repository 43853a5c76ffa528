"""Node sampling in the round loop: Flower node ids are unsigned 64-bit integers."""

from __future__ import annotations

import numpy as np

from server.loop import sample_nodes

# Real ids from a Flower 1.42 simulation: some above 2**63, some below.
NODES = [1857415176174798123, 2459221175014713999, 9259491361924665001, 14445676664421566999,
         18446744073709551615, 5]


def test_sampled_ids_are_exactly_the_online_ids() -> None:
    for seed in range(20):
        picked = sample_nodes(NODES, 0.5, np.random.default_rng(seed))
        assert len(picked) == 3 and len(set(picked)) == 3
        assert set(picked) <= set(NODES)  # not rounded through float64
        assert all(type(n) is int for n in picked)


def test_sampling_is_seeded_and_fraction_one_takes_everyone() -> None:
    assert sample_nodes(NODES, 0.5, np.random.default_rng(1)) == sample_nodes(
        NODES, 0.5, np.random.default_rng(1))
    assert sample_nodes(NODES, 1.0, np.random.default_rng(0)) == NODES
    assert len(sample_nodes(NODES, 0.01, np.random.default_rng(0))) == 1
