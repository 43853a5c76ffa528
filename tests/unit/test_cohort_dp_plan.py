"""benchmarks/cohort_dp.py's plan: every row is a valid configuration, and every noise spends the
target client-level epsilon by the server ledger's own (amplified) accounting."""

from __future__ import annotations

import argparse

import dp_accounting
import pytest

from benchmarks.cohort_dp import plan
from fedkd.compose import build_config
from fedkd.privacy.accounting import planned_epsilon


@pytest.mark.parametrize("cohort", [10, 1000])
def test_every_row_is_valid_and_calibrated_to_its_epsilon(cohort: int) -> None:
    args = argparse.Namespace(
        seed=0, rounds=10, partitioner="pathological", alpha=0.1, classes_per_client=2,
        population=10_000, model="fedgen-cnn", local_steps=10, samples=200, server_steps=200,
        clip=11.0, neighbours=16, fedavg_clip=0.5, delta=1e-5, epsilons=[1.0, 8.0])
    rows = plan(args, cohort)
    assert len(rows) == 2 + 3 * len(args.epsilons)
    for name, settings in rows.items():
        cfg = build_config(settings)
        assert cfg.client_sampling_rate() == pytest.approx(cohort / 10_000)
        eps = float(name.rsplit(" ", 1)[1]) if "eps" in name else None
        z = settings.get("secagg.noise-multiplier", settings.get("fedavg.dp-noise-multiplier"))
        sigma = settings.get("aggregation.pate.sigma")
        if z is not None:
            event = dp_accounting.GaussianDpEvent(z)
        elif sigma is not None:  # 200 votes a round, each a Gaussian of sigma / sqrt(2)
            event = dp_accounting.SelfComposedDpEvent(
                dp_accounting.GaussianDpEvent(sigma / 2 ** 0.5), 200)
        else:
            assert eps is None
            continue
        spent = planned_epsilon([event], 10, 1e-5, sampling_rate=cohort / 10_000)
        assert spent == pytest.approx(eps, rel=0.01), name
