"""`fedkd report` on hand-written run directories: grouping by seed, mean ± std, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedkd import cli
from fedkd.config import RunConfig
from fedkd.experiments import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, settings: dict[str, Any], rows: list[dict[str, Any]],
              preset: str | None, complete: bool = True) -> Path:
    """A run directory as the ServerApp and `fedkd simulate` leave it."""
    d = root / name
    d.mkdir(parents=True)
    flat = RunConfig.from_flat({**settings, "output.dir": str(d.parent),
                                "output.run-name": d.name}).to_flat()
    (d / "config.json").write_text(json.dumps({"run-config": flat}))
    if preset is not None:
        (d / "fedkd-run.json").write_text(json.dumps({"preset": preset}))
    full = [{"round": i, "num-failures": 0, **r} for i, r in enumerate(rows, start=1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    if complete:
        (d / "summary.json").write_text(json.dumps({"rounds": len(rows)}))
    return d


def fd_rows(personal: float, eps: float, up: float, wall: tuple[float, float]) -> list[dict]:
    """Two rounds of a DP FD run: no server model; the last round holds the given values."""
    return [
        {"personalized-accuracy": personal - 0.1, "epsilon-max": eps / 2, "bytes-up-per-client": up,
         "wall-time-s": wall[0]},
        {"personalized-accuracy": personal, "epsilon-max": eps, "bytes-up-per-client": up,
         "wall-time-s": wall[1]},
    ]


def fedavg_rows(globals_: list[float], personal: float, up: float) -> list[dict]:
    return [{"global-accuracy": g, "personalized-accuracy": personal, "bytes-up-per-client": up,
             "wall-time-s": 30.0 if i == 0 else 4.0} for i, g in enumerate(globals_)]


FD_DP = {"algorithm": "fd", "privacy.dp-sgd": True, "privacy.output-noise": 5.0,
         "privacy.target-epsilon": 8.0, "data.alpha": 0.1}
FEDAVG = {"algorithm": "fedavg", "data.alpha": 0.1}


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    # FD with DP, three seeds. Final personalized accuracy 0.80, 0.85, 0.90 -> 0.8500 ± 0.0500;
    # epsilon 2, 3, 4 -> 3.00 ± 1.00; bytes up 800, 900, 1000 B -> 900 ± 100 B;
    # seconds per round after round 1: 3, 5, 7 -> 5.0 ± 2.0.
    for seed, (p, e, up, w) in enumerate([(0.80, 2.0, 800, 3.0), (0.85, 3.0, 900, 5.0),
                                          (0.90, 4.0, 1000, 7.0)]):
        write_run(root, f"fd-dp-seed{seed}", {**FD_DP, "seed": seed}, fd_rows(p, e, up, (60.0, w)),
                  preset="fd-dp")
    # FedAvg, two seeds (the second one interrupted after 2 of 3 rounds). Final global accuracy
    # 0.60 and 0.70 -> 0.6500 ± 0.0707; best 0.75 and 0.70 -> 0.7250 ± 0.0354;
    # bytes up 6.6e6 and 6.8e6 -> 6.70 ± 0.14 MB; personalized 0.5 and 0.6 -> 0.5500 ± 0.0707.
    write_run(root, "fedavg-seed0", {**FEDAVG, "seed": 0, "num-server-rounds": 3},
              fedavg_rows([0.50, 0.75, 0.60], 0.5, 6.6e6), preset="fedavg")
    write_run(root, "fedavg-seed1", {**FEDAVG, "seed": 1, "num-server-rounds": 3},
              fedavg_rows([0.40, 0.70], 0.6, 6.8e6), preset="fedavg", complete=False)
    # FD without DP, one seed and no fedkd-run.json (started some other way): labelled from its
    # configuration, a group of its own, and the no-DP reference line of the epsilon plot.
    write_run(root, "other/fd-nodp", {"algorithm": "fd", "data.alpha": 0.1},
              [{"personalized-accuracy": 0.93, "bytes-up-per-client": 876, "wall-time-s": 9.0}],
              preset=None)
    return root


def table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_report_table_values(outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = cli.main(["report", str(outputs), "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    md = (out / "report.md").read_text()
    header = md.splitlines()[2]
    assert header == ("| experiment | seeds | rounds | final global acc | best global acc | "
                      "final personalized acc | bytes up / client / round | "
                      "epsilon (max over clients) | s / round (after round 1) |")
    rows = table_rows("\n".join(md.splitlines()[2:]))
    assert rows["fd-dp"] == ["fd-dp", "0, 1, 2", "2", "-", "-", "0.8500 ± 0.0500", "900 ± 100 B",
                             "3.00 ± 1.00", "5.0 ± 2.0"]
    assert rows["fedavg"] == ["fedavg", "0, 1", "2-3*", "0.6500 ± 0.0707", "0.7250 ± 0.0354",
                              "0.5500 ± 0.0707", "6.70 ± 0.14 MB", "-", "4.0 ± 0.0"]
    # One seed: the mean alone; one round: its own wall time.
    assert rows["fd fashion-mnist dirichlet 0.1"] == [
        "fd fashion-mnist dirichlet 0.1", "0", "1", "-", "-", "0.9300", "876 B", "-", "9.0"]
    assert "incomplete" in md and "`fedavg-seed1` (2/3 rounds)" in md
    assert rows["fd-dp"][0] in printed  # the table is printed too
    summary = {g["label"]: g for g in json.loads((out / "report.json").read_text())}
    assert summary["fd-dp"]["final-personalized-accuracy"] == pytest.approx(
        {"mean": 0.85, "std": 0.05, "n": 3})
    for name in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_epsilon.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"]({name})" in md


def test_runs_differing_in_more_than_the_seed_are_separate_groups(tmp_path: Path) -> None:
    root = tmp_path / "o"
    for alpha in (0.1, 1.0):
        write_run(root, f"a{alpha}", {**FEDAVG, "data.alpha": alpha},
                  fedavg_rows([0.5], 0.5, 1e6), preset="same-preset")
    write_run(root, "a-seed1", {**FEDAVG, "seed": 1, "data.seed": 3},
              fedavg_rows([0.7], 0.5, 1e6), preset="same-preset")
    groups = report.group_runs(report.find_runs([root]))
    labels = sorted(g.label for g in groups)
    assert labels == ["same-preset (data.alpha=0.1)", "same-preset (data.alpha=1.0)"]
    assert sorted(len(g.runs) for g in groups) == [1, 2]  # seed and data.seed are seeds


def test_mean_std() -> None:
    assert report.mean_std([1.0, 2.0, None, 3.0]) == (2.0, 1.0, 3)
    assert report.mean_std([5.0]) == (5.0, None, 1)
    assert report.mean_std([None]) is None


def test_report_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no run found in" in capsys.readouterr().err


def test_plot_styles_encode_algorithm_privacy_and_alpha(outputs: Path, tmp_path: Path) -> None:
    # fd-dp, fedavg, fd without DP: colour per algorithm, dashed under DP-SGD, marker per alpha.
    groups = report.group_runs(report.find_runs([outputs]))
    styles = {g.label: s for g, s in zip(groups, report._styles(groups))}
    fd_dp, fd, fedavg = styles["fd-dp"], styles["fd fashion-mnist dirichlet 0.1"], styles["fedavg"]
    assert fd_dp["color"] == fd["color"] != fedavg["color"]
    assert (fd_dp["linestyle"], fd["linestyle"], fedavg["linestyle"]) == ("--", "-", "-")
    assert fd_dp["marker"] == fd["marker"] == fedavg["marker"]  # all alpha 0.1
    # Groups the three facets cannot tell apart get a colour each instead.
    root = tmp_path / "same"
    for rule in ("mean", "median"):
        write_run(root, rule, {**FEDAVG, "aggregation.rule": rule}, fedavg_rows([0.5], 0.5, 1e6),
                  preset="fedavg")
    groups = report.group_runs(report.find_runs([root]))
    colors = [s["color"] for s in report._styles(groups)]
    assert len(groups) == 2 and colors[0] != colors[1]


def test_a_named_run_without_a_finished_round_is_left_out(outputs: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A sweep in progress: the current run has its config but no metrics yet. Naming it among
    # finished runs (a shell glob does) reports the others and says what was left out.
    started = tmp_path / "started-seed2"
    started.mkdir()
    (started / "config.json").write_text(json.dumps({"run-config": {"algorithm": "fd"}}))
    rc = cli.main(["report", str(outputs / "fd-dp-seed0"), str(started), "--out",
                   str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert rc == 0 and "started-seed2 has no finished round yet; left out" in captured.err
    assert "| fd-dp | 0 | 2 |" in captured.out
    # A folder that is not a run at all is still an error.
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2


def test_leakage_figures_and_synthetic_pictures_are_in_the_report(tmp_path: Path) -> None:
    leak = {"leak-nn-train": 4.5, "leak-nn-heldout": 5.0, "leak-nn-ratio": 0.9, "leak-mia-auc": 0.52}
    run = write_run(tmp_path / "outputs", "synth", {"algorithm": "synthetic-proxy"},
                    [{**leak, "global-accuracy": 0.5, "bytes-up-per-client": 100, "wall-time-s": 1.0},
                     {"global-accuracy": 0.6, "bytes-up-per-client": 100, "wall-time-s": 1.0}],
                    preset=None)
    (run / "artifacts").mkdir()
    for rnd in (1, 3):
        (run / "artifacts" / f"synthetic-round-00{rnd}.png").write_bytes(PNG_MAGIC + bytes([rnd]))
    report.write_report([tmp_path / "outputs"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Leakage of synthetic inputs" in md
    assert "| `synth` | 1 | 4.500 | 5.000 | 0.900 | 0.520 |" in md
    # the newest picture, copied next to the report and shown in it
    copied = tmp_path / "report" / "synth-synthetic-round-003.png"
    assert copied.read_bytes() == PNG_MAGIC + bytes([3])
    assert "![synth-synthetic-round-003](synth-synthetic-round-003.png)" in md
    # a report of runs without synthesis has neither section
    plain = write_run(tmp_path / "plain", "fedavg", FEDAVG, fedavg_rows([0.5], 0.5, 1.0), preset=None)
    report.write_report([plain.parent], tmp_path / "report2")
    assert "Leakage" not in (tmp_path / "report2" / "report.md").read_text()
