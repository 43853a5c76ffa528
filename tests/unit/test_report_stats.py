"""Paired statistics over seeds (fedkd.experiments.report) and the benchmark tables built on them.

The same seed gives every algorithm the same partitions and sampled clients, so a row's value
minus FedAvg's on one seed is a paired difference; its mean ± sample std (n - 1, as
``report.mean_std``) over the seeds both have goes in the benchmarks' "Δ vs FedAvg (paired)"
column. The tables are fed in-memory per-seed results shaped as each benchmark's run function
returns them: nothing runs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks import datafree, datafree_ceiling, logit_global, membership_inference
from fedkd.experiments import report

ROW = {0: 0.8, 1: 0.7, 2: 0.9}
FEDAVG = {0: 0.75, 1: 0.72, 2: 0.85}
#: ROW - FEDAVG per seed: [0.05, -0.02, 0.05]; mean 0.08 / 3; sample std (n - 1) sqrt(0.0049 / 3).
MEAN = 0.08 / 3
STD = (0.0049 / 3) ** 0.5


# ----- the helpers ----------------------------------------------------------------------------
def test_paired_differences_known_values() -> None:
    diffs = report.paired_differences(ROW, FEDAVG)
    assert list(diffs) == [0, 1, 2]
    assert list(diffs.values()) == pytest.approx([0.05, -0.02, 0.05])


def test_paired_mean_std_known_values() -> None:
    mean, std, n = report.paired_mean_std(ROW, FEDAVG)
    assert n == 3
    assert mean == pytest.approx(0.026667, abs=1e-6)
    assert mean == pytest.approx(MEAN)
    assert std == pytest.approx(0.040415, abs=1e-6)
    assert std == pytest.approx(STD)
    # Sample standard deviation (n - 1), the same choice as mean_std's.
    assert std == pytest.approx(statistics.stdev([0.05, -0.02, 0.05]))
    assert report.mean_std([0.05, -0.02, 0.05]) == pytest.approx((mean, std, 3))


def test_paired_uses_only_the_seeds_both_have() -> None:
    row = {0: 0.8, 1: 0.7, 2: 0.9, 5: 0.1, 6: None}
    base = {2: 0.85, 1: 0.72, 0: 0.75, 3: 0.4, 6: 0.5}
    assert report.paired_differences(row, base) == pytest.approx({0: 0.05, 1: -0.02, 2: 0.05})
    assert report.paired_mean_std(row, base) == pytest.approx((MEAN, STD, 3))
    # A value of None on either side leaves the seed out.
    assert report.paired_mean_std({0: 0.8, 1: 0.7}, {0: 0.75, 1: None}) == pytest.approx(
        (0.05, None, 1))


def test_paired_mean_std_one_seed_and_none() -> None:
    assert report.paired_mean_std({3: 0.5}, {3: 0.25}) == (0.25, None, 1)
    assert report.paired_mean_std({0: 0.5}, {1: 0.5}) is None
    assert report.paired_mean_std({}, FEDAVG) is None
    assert report.paired_mean_std({0: None}, {0: 0.5}) is None


def test_paired_keys_need_not_be_ints() -> None:
    stat = report.paired_mean_std({"s0": 1.0, "s1": 2.0}, {"s1": 1.0, "s0": 0.5})
    assert stat == pytest.approx((0.75, statistics.stdev([0.5, 1.0]), 2))


def test_pairing_removes_the_spread_between_seeds() -> None:
    # Seeds differ a lot (hard and easy partitions); the row beats FedAvg by 0.01 on each:
    # unpaired stds are large, the paired one is zero.
    base = {0: 0.5, 1: 0.7, 2: 0.9}
    row = {s: v + 0.01 for s, v in base.items()}
    assert report.mean_std(list(row.values()))[1] == pytest.approx(0.2)
    mean, std, n = report.paired_mean_std(row, base)
    assert (mean, std, n) == (pytest.approx(0.01), pytest.approx(0.0, abs=1e-12), 3)


def test_paired_cell() -> None:
    assert report.paired_cell((0.0123, 0.0041, 3)) == "+0.012 ± 0.004 (n=3)"
    assert report.paired_cell(report.paired_mean_std(ROW, FEDAVG)) == "+0.027 ± 0.040 (n=3)"
    assert report.paired_cell(report.paired_mean_std(ROW, FEDAVG), ".4f") == \
        "+0.0267 ± 0.0404 (n=3)"
    assert report.paired_cell(report.paired_mean_std(FEDAVG, ROW), ".4f") == \
        "-0.0267 ± 0.0404 (n=3)"
    assert report.paired_cell((-0.05, None, 1), ".2f") == "-0.05 (n=1)"
    assert report.paired_cell((0.0, 0.0, 2)) == "+0.000 ± 0.000 (n=2)"
    assert report.paired_cell(None) == "-"


def test_mean_std_cell() -> None:
    assert report.mean_std_cell(report.mean_std([1.0, 2.0, None, 3.0]), ".2f") == "2.00 ± 1.00"
    assert report.mean_std_cell(report.mean_std([0.5]), ".4f") == "0.5000"
    assert report.mean_std_cell(report.mean_std([None]), ".4f") == "-"


# ----- the benchmarks' tables -----------------------------------------------------------------
def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def row_of(md: str, *first: str) -> list[str]:
    """The table row whose first cells are ``first``."""
    rows = [cells(line) for line in md.splitlines() if line.startswith("|")]
    found = [r for r in rows if r[:len(first)] == list(first)]
    assert len(found) == 1, (first, md)
    return found[0]


def column(md: str, name: str) -> int:
    header = next(cells(line) for line in md.splitlines() if line.startswith("|"))
    return header.index(name)


def assert_rectangular(md: str) -> None:
    widths = {len(cells(line)) for line in md.splitlines() if line.startswith("|")}
    assert len(widths) == 1, widths


def logit_result(name: str, seed: int, final: float, lr: float | None = None,
                 partition: str = "dir0.1") -> dict[str, Any]:
    """What logit_global.run_one returns for one run."""
    return {"name": name, "partition": partition, "seed": seed, "lr": lr, "run-dir": f"/x/{seed}",
            "final": final, "best": final + 0.01, "curve": [(1, final / 2), (2, final)],
            "swing-last-20": 0.02, "personalized": 0.9, "client-global": 0.8,
            "bytes-up": 1000.0 if name == "fedavg" else 100.0, "wall-time-per-round-s": 1.5}


def test_logit_global_table_paired_column() -> None:
    results = [logit_result("fedavg", s, v, lr=0.05) for s, v in FEDAVG.items()]
    # FedAvg at the worse learning rate: not the baseline.
    results += [logit_result("fedavg", s, 0.3, lr=0.01) for s in FEDAVG]
    results += [logit_result("dsfl", s, v) for s, v in ROW.items()]
    results += [logit_result("fedmd (mean)", s, v) for s, v in {0: 0.70, 2: 0.80}.items()]
    results += [logit_result("selective-fd", 4, 0.6)]  # a seed FedAvg lacks
    results += [logit_result("dsfl", 0, 0.6, partition="dir1.0")]  # no FedAvg there
    md = logit_global.table(results)
    assert_rectangular(md)
    col = column(md, "Δ vs FedAvg (paired)")
    assert col == column(md, "final global acc") + 1
    assert row_of(md, "dir0.1", "fedavg (lr 0.05)")[col] == "baseline"
    dsfl = row_of(md, "dir0.1", "dsfl")
    assert dsfl[col] == "+0.0267 ± 0.0404 (n=3)"
    assert dsfl[column(md, "final global acc")] == "0.8000 ± 0.1000"
    # fedmd: seeds 0 and 2 against 0.75 and 0.85: -0.05 each.
    assert row_of(md, "dir0.1", "fedmd (mean)")[col] == "-0.0500 ± 0.0000 (n=2)"
    assert row_of(md, "dir0.1", "selective-fd")[col] == "-"
    assert row_of(md, "dir1.0", "dsfl")[col] == "-"
    assert row_of(md, "dir1.0", "dsfl")[column(md, "final global acc")] == "0.6000"
    # The other columns as before.
    assert dsfl[column(md, "x fewer than FedAvg")] == "10.0"
    assert dsfl[column(md, "swing, last 20 rounds")] == "0.0200 ± 0.0000"


def test_logit_global_write_explains_the_column(tmp_path: Path) -> None:
    args = argparse.Namespace(rounds=2, model="fedgen-cnn", partitions=["dir0.1"], seeds=[0, 1, 2],
                              fedavg_lrs=[0.05], only=None, dp=False, name="lg", clients=20,
                              fraction=0.5, local_steps=20)
    results = [logit_result("fedavg", s, v, lr=0.05) for s, v in FEDAVG.items()]
    results += [logit_result("dsfl", s, v) for s, v in ROW.items()]
    logit_global.write(tmp_path, args, results)
    md = (tmp_path / "lg.md").read_text()
    assert "Δ vs FedAvg (paired): each row's final global accuracy minus FedAvg's" in md
    assert "| dir0.1 | dsfl | 3 | 0.8000 ± 0.1000 | +0.0267 ± 0.0404 (n=3) |" in md


def datafree_result(name: str, alpha: float, seed: int, global_acc: float | None,
                    **extra: Any) -> dict[str, Any]:
    """What datafree.run_one returns for one run (benchmarks.common.summarise_run's keys)."""
    return {"name": name, "alpha": alpha, "seed": seed, "global-accuracy": global_acc,
            "personalized-accuracy": 0.9, "epsilon-max": None, "epsilon-mean": None,
            "bytes-up-per-client-per-round": 6e6 if name == "fedavg" else 6e4,
            "bytes-down-per-client-per-round": 1.0, "wall-time-per-round-s": 2.0,
            "rejected-replies": 0, **extra}


def test_datafree_table_paired_column() -> None:
    results = [datafree_result("fedavg", 0.1, s, v) for s, v in FEDAVG.items()]
    results += [datafree_result("fedgen-logits", 0.1, s, v) for s, v in ROW.items()]
    results += [datafree_result("fd", 0.1, s, None) for s in FEDAVG]  # no server model
    results += [datafree_result("synthetic-proxy", 0.1, s, v, **{"leak-nn-ratio": 0.9,
                                                                "leak-mia-auc": 0.6})
                for s, v in {0: 0.70, 1: 0.69}.items()]
    results += [datafree_result("fedavg", 1.0, 0, 0.77), datafree_result("fedmd", 1.0, 0, 0.72)]
    md = datafree.table(results)
    assert_rectangular(md)
    col = column(md, "Δ vs FedAvg (paired)")
    assert col == column(md, "global acc") + 1
    assert row_of(md, "0.1", "fedavg")[col] == "baseline"
    logits = row_of(md, "0.1", "fedgen-logits")
    assert logits[col] == "+0.0267 ± 0.0404 (n=3)"
    assert logits[column(md, "global acc")] == "0.8000 ± 0.1000"
    assert logits[column(md, "x fewer than FedAvg")] == "100"
    assert row_of(md, "0.1", "fd")[col] == "-"
    assert row_of(md, "0.1", "fd")[column(md, "global acc")] == "-"
    proxy = row_of(md, "0.1", "synthetic-proxy")
    assert proxy[col] == "-0.0400 ± 0.0141 (n=2)"  # -0.05 and -0.03
    assert proxy[column(md, "leakage: NN ratio / MIA AUC")] == "0.900 / 0.600"
    # One seed: the value alone, the difference with n=1.
    fedmd = row_of(md, "1.0", "fedmd")
    assert fedmd[column(md, "global acc")] == "0.7200"
    assert fedmd[col] == "-0.0500 (n=1)"


def test_datafree_ceiling_report_format() -> None:
    args = argparse.Namespace(clients=20, alpha=0.1, teacher_steps=150, rounds=15, per_round=768,
                              student_steps=200, test_samples=0)

    def result(seed: int, acc: float, first: bool) -> dict[str, Any]:
        student = {f"{s} | {r}": acc for s, r in datafree_ceiling.STUDENT_RUNS}
        if first:
            student.update({f"{s} | {r}": acc for s, r in datafree_ceiling.FIRST_SEED_ONLY})
        return {"seed": seed, "teacher-accuracy-mean": acc / 2,
                "ensemble": {n: acc for n in datafree_ceiling.ENSEMBLE_RULES}, "student": student}

    md = datafree_ceiling.report([result(0, 0.7, True), result(1, 0.9, False)], args)
    assert "Mean single-teacher accuracy: 0.4000 ± 0.0707 (2 seeds)" in md
    assert "| classwise | 0.8000 ± 0.1414 (2 seeds) |" in md
    assert "| real public images | classwise | 0.8000 ± 0.1414 (2 seeds) |" in md
    assert "| uniform noise | classwise | 0.7000 (1 seed) |" in md


def test_membership_inference_table_format() -> None:
    cols = ("train-accuracy", "test-accuracy", "model-attack-auc", "release-attack-auc",
            "release-attack-auc-reference-model", "loss-auc-reference-model-baseline")
    results = [{"setting": "no DP", "seed": s, "noise-multiplier": 0.0, "epsilon-model": float("inf"),
                "epsilon-model-and-release": float("inf"), **{c: v for c in cols}}
               for s, v in ((0, 0.6), (1, 0.7), (2, 0.8))]
    md = membership_inference.table(results, ["no DP"], [0, 1, 2])
    assert_rectangular(md)
    assert "| **no DP** | mean ± sd | - | inf | inf | " + " | ".join(
        ["**0.700 ± 0.100**"] * len(cols)) + " |" in md
