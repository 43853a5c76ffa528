"""The data-free ceiling benchmark runs end to end on a tiny budget and reports every row."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import datafree_ceiling


def test_ceiling_benchmark_smoke(tmp_path: Path) -> None:
    datafree_ceiling.main(["--seeds", "0", "--clients", "4", "--teacher-steps", "3", "--rounds", "2",
                           "--per-round", "20", "--student-steps", "3", "--test-samples", "200",
                           "--out", str(tmp_path)])
    result = json.loads((tmp_path / "datafree_ceiling.json").read_text())["results"][0]
    assert set(result["ensemble"]) == set(datafree_ceiling.ENSEMBLE_RULES) >= {"classwise", "mean"}
    runs = datafree_ceiling.STUDENT_RUNS + datafree_ceiling.FIRST_SEED_ONLY
    assert set(result["student"]) == {f"{source} | {rule}" for source, rule in runs}
    for acc in [*result["ensemble"].values(), *result["student"].values()]:
        assert 0.0 <= acc <= 1.0
    md = (tmp_path / "datafree_ceiling.md").read_text()
    assert "| real public images | classwise |" in md and "--teacher-steps 3 --student-steps 3" in md
    assert "First 200 images of the official test set" in md
