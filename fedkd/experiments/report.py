"""Run directories read back into a report: a Markdown table (mean ± std over seeds) and plots.

:func:`write_report` finds run directories (:func:`find_runs`), groups the runs that differ only
by seed (:func:`group_runs`: ``seed``, ``data.seed``), and writes ``report.md``, ``report.json``
and three PNG plots (accuracy vs round, vs cumulative upload, vs epsilon). Nothing here starts a
run; matplotlib is imported only to plot. The statistics (:func:`mean_std`, and
:func:`paired_mean_std` for per-seed differences from a baseline) and their cell formatters
are the benchmarks' too.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedkd.experiments.presets import CliError
from fedkd.experiments.runner import CLI_FILE, read_rows
from fedkd.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

#: Config keys that tell seeds apart: runs that differ only in these are one experiment.
SEED_KEYS = frozenset({"seed", "data.seed"})


@dataclass
class RunRecord:
    """One run directory's outputs, read back."""

    directory: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    cli: dict[str, Any]
    complete: bool

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.cli.get("run-config", {}).get("seed"))

    @property
    def planned_rounds(self) -> int | None:
        value = self.config.get("num-server-rounds")
        return int(value) if value is not None else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def find_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run directory (one holding ``metrics.jsonl``) at or below the given paths."""
    dirs: list[Path] = []
    for spec in paths:
        p = Path(spec)
        if not p.exists():
            raise CliError(f"{p} does not exist")
        found = [p] if (p / METRICS_FILE).is_file() else sorted(
            m.parent for m in p.rglob(METRICS_FILE))
        if not found and ((p / CONFIG_FILE).is_file() or (p / CLI_FILE).is_file()):
            # A run that has started but not finished a round (a sweep in progress).
            print(f"warning: {p} has no finished round yet; left out", file=sys.stderr)
            continue
        if not found:
            raise CliError(f"no run found in {p} (a run directory holds {METRICS_FILE})")
        dirs.extend(d.resolve() for d in found)
    runs = []
    for d in dict.fromkeys(dirs):  # keep order, drop duplicates
        rows = sorted(read_rows(d / METRICS_FILE), key=lambda r: r.get("round", 0))
        if not rows:
            print(f"warning: {d} has no finished round yet; left out", file=sys.stderr)
            continue
        config = _read_json(d / CONFIG_FILE).get("run-config", {})
        runs.append(RunRecord(d, rows, config, _read_json(d / CLI_FILE),
                              complete=(d / SUMMARY_FILE).is_file()))
    return runs


@dataclass
class Group:
    """Runs that differ only by seed: one experiment."""

    label: str
    runs: list[RunRecord]
    config: dict[str, Any]


def _experiment_key(run: RunRecord) -> tuple[Any, ...]:
    if not run.config:  # no config.json: group by directory name without its seed
        return ("dir", run.directory.name.rsplit("-seed", 1)[0])
    return tuple(sorted((k, json.dumps(v)) for k, v in run.config.items()
                        if k not in SEED_KEYS and not k.startswith("output.")))


def _default_label(runs: Sequence[RunRecord]) -> str:
    presets = {r.cli.get("preset") for r in runs}
    if len(presets) == 1 and None not in presets:
        return str(presets.pop())
    c = runs[0].config
    if not c:
        return runs[0].directory.name.rsplit("-seed", 1)[0]
    label = f"{c.get('algorithm')} {c.get('data.dataset')} {c.get('data.partitioner')}"
    if c.get("data.partitioner") == "dirichlet":
        label += f" {c.get('data.alpha')}"
    if c.get("privacy.dp-sgd") or (c.get("privacy.output-noise") or 0) > 0:
        label += " DP"
    return label


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Group runs by their configuration without seeds and output keys; label each group by its
    preset (or algorithm, dataset, partition and DP), plus the keys that tell same-label groups
    apart."""
    by_key: dict[tuple[Any, ...], list[RunRecord]] = {}
    for run in runs:
        by_key.setdefault(_experiment_key(run), []).append(run)
    def by_seed(r: RunRecord) -> tuple[bool, int, str]:
        return (not isinstance(r.seed, int), r.seed if isinstance(r.seed, int) else 0,
                str(r.directory))

    groups = [Group(_default_label(rs), sorted(rs, key=by_seed), rs[0].config)
              for rs in by_key.values()]
    by_label: dict[str, list[Group]] = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.config} - SEED_KEYS)
        differing = [k for k in keys if not k.startswith("output.")
                     and len({json.dumps(g.config.get(k)) for g in same}) > 1]
        for g in same:
            extra = " ".join(f"{k}={g.config.get(k)}" for k in differing[:4])
            g.label = f"{g.label} ({extra or g.runs[0].directory.name})"
    return sorted(groups, key=lambda g: g.label)


def run_stats(run: RunRecord) -> dict[str, float | None]:
    """One run's numbers for the table."""
    rows = run.rows
    last = rows[-1]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    globals_ = values("global-accuracy")
    up = values("bytes-up-per-client")
    # Round 1 includes the simulation's start-up (Ray, worker processes, imports): left out.
    wall = [float(r["wall-time-s"]) for r in rows[1:] if r.get("wall-time-s") is not None] \
        or values("wall-time-s")
    eps = values("epsilon-max")
    server_eps = values("server-epsilon")
    return {
        "final-global-accuracy": last.get("global-accuracy"),
        "best-global-accuracy": max(globals_) if globals_ else None,
        "final-personalized-accuracy": last.get("personalized-accuracy"),
        "bytes-up-per-client-per-round": statistics.fmean(up) if up else None,
        "epsilon": eps[-1] if eps else None,
        "server-epsilon": server_eps[-1] if server_eps else None,
        "wall-time-per-round-s": statistics.fmean(wall) if wall else None,
        "rounds": float(len(rows)),
    }


#: What :func:`mean_std` returns: mean, sample standard deviation (n - 1; ``None`` for one
#: value) and count.
Stat = tuple[float, float | None, int]

#: A seed, or whatever else pairs a row's runs with the baseline's (any hashable key).
SeedT = TypeVar("SeedT", bound=Hashable)


def mean_std(values: Sequence[float | None]) -> Stat | None:
    """Mean, sample standard deviation (n - 1; ``None`` for one value) and count of the values
    that are not ``None``; ``None`` when there are none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def mean_std_cell(stat: Stat | None, spec: str) -> str:
    """A table cell for a :func:`mean_std` result.

    Parameters
    ----------
    stat : tuple of (float, float or None, int) or None
        Mean, sample standard deviation (``None`` for one value) and count, as
        :func:`mean_std` returns them.
    spec : str
        Format specification of the mean and the standard deviation, e.g. ``".4f"``.

    Returns
    -------
    str
        ``"mean ± std"``; the mean alone when there is no standard deviation (one value);
        ``"-"`` for ``None`` (no value).

    Examples
    --------
    >>> mean_std_cell(mean_std([1.0, 2.0, 3.0]), ".2f")
    '2.00 ± 1.00'
    >>> mean_std_cell(mean_std([0.5]), ".3f"), mean_std_cell(None, ".3f")
    ('0.500', '-')
    """
    if stat is None:
        return "-"
    mean, std, _ = stat
    return f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"


def paired_differences(values: Mapping[SeedT, float | None],
                       baseline: Mapping[SeedT, float | None]) -> dict[SeedT, float]:
    """Per-seed differences of a row's values from the baseline's, over the seeds both have.

    With the same seed an experiment runs on the same partitions and samples the same clients
    each round whatever the algorithm, so the difference on one seed compares two algorithms
    on the same draw, and the spread of the differences leaves out the spread between draws.

    Parameters
    ----------
    values : Mapping[SeedT, float or None]
        The row's value per seed (``None``: not measured on that seed).
    baseline : Mapping[SeedT, float or None]
        The baseline's (e.g. FedAvg's) value per seed.

    Returns
    -------
    dict[SeedT, float]
        ``values[s] - baseline[s]`` for every seed ``s`` with a value (not ``None``) in both, in
        the order of ``values``; empty when no seed is shared.

    Examples
    --------
    >>> paired_differences({0: 0.75, 1: 0.5, 2: None}, {1: 0.75, 0: 0.5, 2: 0.5, 3: 1.0})
    {0: 0.25, 1: -0.25}
    """
    return {seed: float(v) - float(b) for seed, v in values.items()
            if v is not None and (b := baseline.get(seed)) is not None}


def paired_mean_std(values: Mapping[SeedT, float | None],
                    baseline: Mapping[SeedT, float | None]) -> Stat | None:
    """Mean, sample standard deviation and count of the per-seed differences from a baseline.

    Parameters
    ----------
    values : Mapping[SeedT, float or None]
        The row's value per seed (``None``: not measured on that seed).
    baseline : Mapping[SeedT, float or None]
        The baseline's (e.g. FedAvg's) value per seed.

    Returns
    -------
    tuple of (float, float or None, int) or None
        :func:`mean_std` of :func:`paired_differences`: the mean difference, the sample
        standard deviation of the differences (n - 1 in the denominator, as :func:`mean_std`;
        ``None`` for a single shared seed) and n, the number of seeds both have; ``None`` when
        they share no seed.

    Examples
    --------
    >>> mean, std, n = paired_mean_std({0: 0.8, 1: 0.7, 2: 0.9}, {0: 0.75, 1: 0.72, 2: 0.85})
    >>> round(mean, 6), round(std, 6), n
    (0.026667, 0.040415, 3)
    """
    return mean_std(list(paired_differences(values, baseline).values()))


def paired_cell(stat: Stat | None, spec: str = ".3f") -> str:
    """A table cell for a :func:`paired_mean_std` result: signed mean ± std and n.

    Parameters
    ----------
    stat : tuple of (float, float or None, int) or None
        Mean difference, its sample standard deviation (``None`` for one seed) and the number
        of seeds, as :func:`paired_mean_std` returns them.
    spec : str, default ".3f"
        Format specification of the mean and the standard deviation, without a sign (the mean
        always gets one).

    Returns
    -------
    str
        ``"+0.012 ± 0.004 (n=3)"``; ``"+0.012 (n=1)"`` for a single seed; ``"-"`` for ``None``
        (no seed shared with the baseline).

    Examples
    --------
    >>> paired_cell((0.0123, 0.0041, 3))
    '+0.012 ± 0.004 (n=3)'
    >>> paired_cell((-0.05, None, 1), ".2f"), paired_cell(None)
    ('-0.05 (n=1)', '-')
    """
    if stat is None:
        return "-"
    mean, std, n = stat
    spread = "" if std is None else f" ± {std:{spec}}"
    return f"{mean:+{spec}}{spread} (n={n})"


def table_lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table as lines: the header, the separator and one line per row.

    Every table fedkd and its benchmarks write goes through here, with the cells formatted by
    :func:`mean_std_cell`, :func:`paired_cell` or the caller.

    Parameters
    ----------
    header : Sequence[str]
        The column titles.
    rows : Iterable[Sequence[object]]
        The rows, one cell per column (``str(cell)``; an empty cell stays empty).

    Returns
    -------
    list[str]
        ``"| a | b |"``, ``"|---|---|"``, then one such line per row; join them with newlines.

    Examples
    --------
    >>> table_lines(["rule", "acc"], [["mean", "0.81"], ["median", ""]])
    ['| rule | acc |', '|---|---|', '| mean | 0.81 |', '| median | |']
    """
    def line(cells: Sequence[object]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _bytes_cell(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    mean, std, _ = stat
    unit, size = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if mean >= s),
                      ("B", 1.0))
    spec = ".0f" if unit == "B" else ".2f"
    return f"{mean / size:{spec}} {unit}" if std is None else \
        f"{mean / size:{spec}} ± {std / size:{spec}} {unit}"


COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("final-global-accuracy", "final global acc", ".4f"),
    ("best-global-accuracy", "best global acc", ".4f"),
    ("final-personalized-accuracy", "final personalized acc", ".4f"),
    ("bytes-up-per-client-per-round", "bytes up / client / round", "bytes"),
    ("epsilon", "epsilon (max over clients)", ".2f"),
    ("server-epsilon", "client-level epsilon (server)", ".2f"),
    ("wall-time-per-round-s", "s / round (after round 1)", ".1f"),
)


def group_summary(group: Group) -> dict[str, Any]:
    """Mean, std and n over the group's runs for every column, plus seeds and rounds."""
    stats = [run_stats(r) for r in group.runs]
    out: dict[str, Any] = {
        "label": group.label,
        "seeds": [r.seed for r in group.runs],
        "runs": [str(r.directory) for r in group.runs],
        "rounds": sorted({len(r.rows) for r in group.runs}),
        "incomplete": [str(r.directory) for r in group.runs if not r.complete],
    }
    for key, _, _ in COLUMNS:
        stat = mean_std([s[key] for s in stats])
        out[key] = None if stat is None else {"mean": stat[0], "std": stat[1], "n": stat[2]}
    return out


def markdown_table(groups: Sequence[Group]) -> str:
    """The report's table: one row per experiment, mean ± std over seeds."""
    summaries = [group_summary(g) for g in groups]
    columns = [c for c in COLUMNS if c[0] != "server-epsilon"
               or any(s["server-epsilon"] for s in summaries)]
    header = ["experiment", "seeds", "rounds"] + [c[1] for c in columns]
    rows = []
    for s in summaries:
        rounds = "-".join(str(r) for r in (s["rounds"][0], s["rounds"][-1])) \
            if len(s["rounds"]) > 1 else str(s["rounds"][0])
        if s["incomplete"]:
            rounds += "*"
        cells = [s["label"], ", ".join(str(x) for x in s["seeds"]), rounds]
        for key, _, spec in columns:
            st = s[key]
            stat = None if st is None else (st["mean"], st["std"], st["n"])
            cells.append(_bytes_cell(stat) if spec == "bytes" else mean_std_cell(stat, spec))
        rows.append(cells)
    return "\n".join(table_lines(header, rows)) + "\n"


# ----- plots ----------------------------------------------------------------------------------
def _curve(group: Group, key: str, x_of: Callable[[RunRecord], list[float | None]] | None = None):
    """Mean and std over seeds of ``key`` per round; x is the round, or ``x_of``'s mean."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for run in group.runs:
        xs = x_of(run) if x_of else [float(r["round"]) for r in run.rows]
        for x, row in zip(xs, run.rows):
            if x is not None and row.get(key) is not None:
                by_round.setdefault(int(row["round"]), []).append((float(x), float(row[key])))
    rounds = sorted(by_round)
    x = [statistics.fmean(p[0] for p in by_round[r]) for r in rounds]
    y = [statistics.fmean(p[1] for p in by_round[r]) for r in rounds]
    s = [statistics.stdev(p[1] for p in by_round[r]) if len(by_round[r]) > 1 else 0.0
         for r in rounds]
    return x, y, s


def _cumulative_mb(run: RunRecord) -> list[float | None]:
    total, out = 0.0, []
    for row in run.rows:
        total += float(row.get("bytes-up-per-client") or 0.0)
        out.append(total / 1e6)
    return out


def _epsilons(run: RunRecord) -> list[float | None]:
    return [None if r.get("epsilon-max") is None else float(r["epsilon-max"]) for r in run.rows]


ACCURACY_PANELS = (
    ("global-accuracy", "global accuracy (server model, official test set)"),
    ("personalized-accuracy", "personalized accuracy (mean over clients' local test splits)"),
)


def _styles(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One line style per group, read from its configuration so that a sweep's plot decodes at a
    glance: colour = algorithm, line = privacy (solid: none, dashed: DP-SGD), marker = the
    partition's Dirichlet alpha. Groups that share all three (e.g. the same preset under
    different overrides) are told apart by colour instead."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    markers = ("o", "s", "^", "D", "v", "P")

    def facet(g: Group) -> tuple[str, bool, str]:
        return (str(g.config.get("algorithm", "")), bool(g.config.get("privacy.dp-sgd")),
                json.dumps(g.config.get("data.alpha")))

    facets = [facet(g) for g in groups]
    if len(set(facets)) < len(facets):  # not enough to tell the groups apart: one colour each
        return [{"color": colors[i % 10], "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4],
                 "marker": "o"} for i in range(len(groups))]
    algorithms = list(dict.fromkeys(f[0] for f in facets))
    alphas = list(dict.fromkeys(f[2] for f in facets))
    return [{"color": colors[algorithms.index(a) % 10], "linestyle": "--" if dp else "-",
             "marker": markers[alphas.index(alpha) % len(markers)]} for a, dp, alpha in facets]


def _legend_columns(entries: int) -> int:
    """Two to four legend columns: at most about five rows of entries."""
    return min(4, max(2, math.ceil(entries / 5)))


def _figure(title: str, n_groups: int):
    import matplotlib.pyplot as plt

    rows = math.ceil(n_groups / _legend_columns(n_groups))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2 + 0.22 * rows),
                             squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _finish(fig, axes, path: Path) -> None:
    handles, labels = {}, {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
            labels[lab] = lab
        if not ax.has_data():
            ax.text(0.5, 0.5, "no run reports this", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    ncol = _legend_columns(len(handles))
    if handles:
        fig.legend(list(handles.values()), list(labels), loc="lower center", ncol=ncol,
                   fontsize="small", frameon=False)
    rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, min(0.45, 0.05 + 0.045 * rows), 1, 1))
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_accuracy_vs_round(groups: Sequence[Group], path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure("Accuracy per round (mean over seeds, band: ± 1 std)", len(groups))
    styles = _styles(groups)
    for ax, (key, title) in zip(axes, ACCURACY_PANELS):
        for g, style in zip(groups, styles):
            x, y, s = _curve(g, key)
            if not x:
                continue
            ax.plot(x, y, markersize=3, label=g.label, **style)
            ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)],
                            color=style["color"], alpha=0.15)
        ax.set(title=title, xlabel="round", ylabel="accuracy (fraction correct)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _finish(fig, axes, path)


def plot_accuracy_vs_bytes(groups: Sequence[Group], path: Path) -> None:
    fig, axes = _figure("Accuracy vs communication (mean over seeds)", len(groups))
    styles = _styles(groups)
    for ax, (key, title) in zip(axes, ACCURACY_PANELS):
        for g, style in zip(groups, styles):
            x, y, _ = _curve(g, key, _cumulative_mb)
            pts = [(a, b) for a, b in zip(x, y) if a > 0]
            if pts:
                ax.plot(*zip(*pts), markersize=3, label=g.label, **style)
        ax.set(title=title, xlabel="cumulative upload per client (MB, log scale)",
               ylabel="accuracy (fraction correct)")
        if ax.has_data():
            ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    _finish(fig, axes, path)


def _without_privacy(config: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, json.dumps(v)) for k, v in config.items()
                        if k not in SEED_KEYS and not k.startswith(("output.", "privacy."))))


def plot_accuracy_vs_epsilon(groups: Sequence[Group], path: Path) -> None:
    fig, axes = _figure("Accuracy vs privacy spent (example-level epsilon, max over clients; "
                        "dotted: the same experiment without DP)", len(groups))
    deltas = {g.config.get("privacy.delta") for g in groups if g.config}
    delta = f", delta = {deltas.pop():g}" if len(deltas) == 1 else ""
    private = [g for g in groups if any(r.get("epsilon-max") is not None
                                        for run in g.runs for r in run.rows)]
    public = {_without_privacy(g.config): g for g in groups if g not in private and g.config}
    styles = _styles(groups)
    for ax, (key, title) in zip(axes, ACCURACY_PANELS):
        for g, style in zip(groups, styles):
            if g not in private:
                continue
            x, y, _ = _curve(g, key, _epsilons)
            if not x:
                continue
            ax.plot(x, y, markersize=3, label=g.label, **style)
            twin = public.get(_without_privacy(g.config))
            if twin is not None:
                _, ty, _ = _curve(twin, key)
                if ty:
                    ax.axhline(ty[-1], color=style["color"], linestyle=":", linewidth=1.2,
                               label=f"{twin.label} (no DP, final)")
        ax.set(title=title, xlabel=f"epsilon spent so far{delta}",
               ylabel="accuracy (fraction correct)")
        ax.grid(alpha=0.3)
        if not private:
            ax.text(0.5, 0.4, "no run used differential privacy", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    _finish(fig, axes, path)


PLOTS = {
    "accuracy_vs_round.png": plot_accuracy_vs_round,
    "accuracy_vs_bytes.png": plot_accuracy_vs_bytes,
    "accuracy_vs_epsilon.png": plot_accuracy_vs_epsilon,
}


LEAKAGE_KEYS = ("leak-nn-train", "leak-nn-heldout", "leak-nn-ratio", "leak-mia-auc")
LEAKAGE_NOTE = (
    "Measured on the clients that synthesised inputs without privacy (fedkd/synthesis/leakage.py), "
    "mean over them, per synthesis round: the mean L2 distance from a synthetic image to the "
    "nearest training image and to the nearest held-out image of the same client (ratio < 1: "
    "closer to the training set), and the AUC of a membership-inference attack that scores an "
    "image by its distance to the nearest synthetic image (0.5: no signal). Without DP the "
    "synthetic images are a function of the data, with no bound on what they reveal.")


def leakage_table(runs: Sequence[RunRecord]) -> str:
    """A row per run and synthesis round that reported leakage figures ('' when none did)."""
    rows = [[f"`{run.directory.name}`", row["round"], *(f"{float(row[k]):.3f}" for k in LEAKAGE_KEYS)]
            for run in runs for row in run.rows
            if all(row.get(k) is not None for k in LEAKAGE_KEYS)]
    if not rows:
        return ""
    header = ["run", "round", "NN distance to train", "to held-out", "ratio", "membership AUC"]
    return "\n".join(table_lines(header, rows)) + "\n"


def copy_synthetic_pictures(runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Each run's newest picture of its synthetic proxy set (``artifacts/synthetic-round-*.png``),
    copied next to the report as ``<run>-synthetic-round-<r>.png``."""
    copied = []
    for run in runs:
        found = sorted((run.directory / "artifacts").glob("synthetic-round-*.png"))
        if found:
            target = out_dir / f"{run.directory.name}-{found[-1].name}"
            shutil.copyfile(found[-1], target)
            copied.append(target)
    return copied


def write_report(paths: Sequence[str | Path], out_dir: Path) -> tuple[str, list[Path]]:
    """Find runs, group them, write ``report.md``, ``report.json`` and the PNGs to ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    runs = find_runs(paths)
    if not runs:
        raise CliError("no run with a finished round in " + ", ".join(map(str, paths)))
    groups = group_runs(runs)
    table = markdown_table(groups)
    notes = [
        "Each row is one experiment: runs that differ only by seed. Cells are mean ± sample "
        "standard deviation (n - 1) over the seeds (the mean alone for one seed); `-`: not "
        "reported by this algorithm (no server model, or no DP). Final = last finished round; "
        "bytes up are means over rounds; s / round is the mean over rounds 2 and later (round 1 "
        "includes the simulation's start-up); epsilon is the example-level epsilon of the last "
        "round, the largest over clients.",
    ]
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        notes.append("\\* incomplete runs (no summary.json; their last finished round is used): "
                     + ", ".join(f"`{r.directory.name}` ({len(r.rows)}"
                                 f"{'/' + str(r.planned_rounds) if r.planned_rounds else ''}"
                                 " rounds)" for r in incomplete))
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for name, plot in PLOTS.items():
        plot(groups, out_dir / name)
        images.append(out_dir / name)
    body = ["# fedkd results", "", table, *(n + "\n" for n in notes),
            *(f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in images)]
    leaks = leakage_table(runs)
    if leaks:
        body += ["## Leakage of synthetic inputs", "", LEAKAGE_NOTE, "", leaks]
    pictures = copy_synthetic_pictures(runs, out_dir)
    if pictures:
        body += ["## Synthetic inputs the clients shared", "",
                 *(f"![{p.stem}]({p.name})\n" for p in pictures)]
        images += pictures
    (out_dir / "report.md").write_text("\n".join(body))
    (out_dir / "report.json").write_text(
        json.dumps([group_summary(g) for g in groups], indent=2) + "\n")
    return table + "\n" + "\n".join(notes) + "\n", images

