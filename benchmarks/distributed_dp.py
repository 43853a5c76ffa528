"""Client-level DP of logit sharing: distributed DP under secure aggregation against PATE.

Both protect one client's whole data against whoever sees the aggregated targets, at client
level, accounted in the server's ledger (RDP, ``delta = 1e-5``):

* ``distributed DP``: DS-FL with secure aggregation (:mod:`fedkd.secagg`); each sampled client
  clips its share of the ``era`` rule's sums (its probabilities on the round's ``N`` proxy
  samples) to L2 norm ``clip`` and adds its share of Gaussian noise, so the sum carries noise
  ``z * clip``; one Gaussian release per round, ``z`` calibrated so that ``R`` rounds spend the
  target epsilon (no amplification by sampling: the server picks the clients);
* ``PATE``: DS-FL with the ``pate`` rule (GNMax) on the same ``N`` samples; ``sigma``
  calibrated so that the ``R * N`` queries spend the target epsilon (data-independent bound;
  the data-dependent one is reported beside it).

Plus a row without DP (``era``) and one with secure aggregation without noise. Protocol:
Fashion-MNIST, 20 clients, 10 sampled per round (the ``min-clients`` the noise is calibrated
for), Dirichlet 0.1, ``fedgen-cnn``, the public split as proxy set (its labels are read only
for the ``consensus-accuracy`` diagnostic), ``R`` rounds of 20 local steps.

Run (what produced ``benchmarks/results/distributed_dp.md``)::

    .venv/bin/python -m benchmarks.distributed_dp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, fmt, run_simulation, slug, summarise_run
from fedkd.experiments.report import table_lines
from fedkd.results import read_metrics

DELTA = 1e-5


def noise_multiplier_for(epsilon: float, rounds: int, sampling_rate: float | None = None,
                         delta: float = DELTA) -> float:
    """The Gaussian noise multiplier whose ``rounds`` releases spend ``epsilon`` (RDP), by the
    server ledger's own accounting (:func:`fedkd.privacy.accounting.planned_epsilon`): one
    Gaussian per round, or under ``federation.sampling = "poisson"`` (``sampling_rate`` = its
    ``fraction-train``) one Poisson-sampled Gaussian per round; at ``delta``."""
    import dp_accounting
    from scipy.optimize import brentq

    from fedkd.privacy.accounting import planned_epsilon

    def spent(z: float) -> float:
        return planned_epsilon([dp_accounting.GaussianDpEvent(z)], rounds, delta,
                               sampling_rate=sampling_rate) - epsilon

    return float(brentq(spent, 0.05, 1000.0))


def pate_sigma_for(epsilon: float, rounds: int, samples: int,
                   sampling_rate: float | None = None, delta: float = DELTA) -> float:
    """GNMax's sigma whose ``rounds`` rounds of ``samples`` votes spend ``epsilon``
    (data-independent, RDP), by the server ledger's accounting (sampled as
    :func:`noise_multiplier_for`: each round's votes come from one sample of teachers)."""
    import dp_accounting
    from scipy.optimize import brentq

    from fedkd.privacy.accounting import planned_epsilon

    def spent(sigma: float) -> float:
        votes = dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(sigma / 2 ** 0.5), samples)
        return planned_epsilon([votes], rounds, delta, sampling_rate=sampling_rate) - epsilon

    return float(brentq(spent, 0.1, 1e5))


def plan(rounds: int, samples: int, clip: float, epsilons: list[float]) -> dict[str, dict[str, Any]]:
    """Row name -> run settings."""
    base = {"algorithm": "dsfl", "train.model": "fedgen-cnn", "data.partitioner": "dirichlet",
            "data.alpha": 0.1, "train.local-steps": 20,
            "federation.fraction-train": 0.5, "distill.public-batch": samples,
            "distill.steps": 20, "distill.server-steps": 200, "distill.replay-rounds": rounds,
            "privacy.delta": DELTA}
    rows = {"no DP (era)": {**base, "aggregation.rule": "era"},
            "secure, no DP (era)": {**base, "aggregation.rule": "era", "aggregation.secure": True}}
    for eps in epsilons:
        rows[f"distributed DP, eps {eps:g}"] = {
            **base, "aggregation.rule": "era", "aggregation.secure": True,
            "secagg.noise-multiplier": round(noise_multiplier_for(eps, rounds), 4),
            "secagg.clip": clip, "secagg.min-clients": 10}
        rows[f"PATE, eps {eps:g}"] = {**base, "aggregation.rule": "pate",
                                      "aggregation.pate.sigma": round(pate_sigma_for(eps, rounds, samples), 3)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100, help="proxy samples per round (N)")
    parser.add_argument("--clip", type=float, default=8.0,
                        help="L2 clip of a client's N x C probabilities (about 0.8 sqrt(N))")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="distributed_dp", help="results file stem")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    runs = out / "runs"
    results = []
    for name, settings in plan(args.rounds, args.samples, args.clip, args.epsilons).items():
        settings = {**settings, "seed": args.seed, "data.seed": args.seed}
        label = f"ddp-{name}-r{args.rounds}-n{args.samples}-s{args.seed}"
        run_dir = runs / slug(label)
        if (run_dir / "summary.json").exists():
            summary = summarise_run(label, settings, run_dir)
        elif args.report_only:
            continue
        else:
            print(f"running {name} ...", flush=True)
            summary = run_simulation(label, settings, clients=20, rounds=args.rounds, out_dir=runs)
        last = read_metrics(run_dir)[-1]
        results.append({"row": name, **summary,
                        "consensus-accuracy": last.get("consensus-accuracy"),
                        "server-epsilon": last.get("server-epsilon"),
                        "server-epsilon-data-dependent": last.get("server-epsilon-data-dependent"),
                        "noise": settings.get("secagg.noise-multiplier",
                                              settings.get("aggregation.pate.sigma"))})
        print(json.dumps(results[-1]["row"]), fmt(results[-1]["global-accuracy"]), flush=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"Client-level DP of logit sharing (DS-FL): distributed DP under secure aggregation against "
        f"PATE. Fashion-MNIST, 20 clients, 10 sampled per round, Dirichlet 0.1, fedgen-cnn, "
        f"{args.rounds} rounds, {args.samples} proxy samples per round (the public split; its labels "
        f"are read only for the consensus diagnostic), seed {args.seed}; "
        f"delta {DELTA:g}. Distributed DP: each client's probabilities clipped to L2 {args.clip:g}, "
        "noise multiplier z of the sum per round; PATE: GNMax sigma per vote. Runs differ in the "
        "clients sampled (simulation samples by Flower's random node ids). Command: "
        f"`.venv/bin/python -m benchmarks.distributed_dp --rounds {args.rounds} --samples "
        f"{args.samples} --clip {args.clip:g} --name {args.name}`",
        "",
        *table_lines(
            ["row", "noise (z or sigma)", "client-level epsilon (data-independent)",
             "PATE data-dependent epsilon", "final global acc", "consensus acc of the last targets",
             "bytes up / client / round"],
            ([r["row"], fmt(r["noise"], ".3g") if r["noise"] else "-",
              fmt(r["server-epsilon"], ".2f"), fmt(r["server-epsilon-data-dependent"], ".2f"),
              fmt(r["global-accuracy"]), fmt(r["consensus-accuracy"]),
              f"{r['bytes-up-per-client-per-round']:,.0f}"] for r in results)),
    ]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
