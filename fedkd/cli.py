"""The ``fedkd`` command: run experiment presets, sweep them over seeds, and report the results.

Subcommands (``fedkd <command> --help`` shows each one's options and examples)::

    fedkd presets                                   # the experiment presets and profiles
    fedkd simulate fd-fmnist-dir0.1 --seed 0        # one run, one line of progress per round
    fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2   # resumable
    fedkd report outputs/ --out outputs/report      # Markdown table + PNG plots

A *preset* is a TOML file of run-config overrides in ``simulations/configs/`` (the keys of
``[tool.flwr.app.config]`` in pyproject.toml, with TOML tables for the sections); the same file
works with ``flwr run . <connection> --run-config simulations/configs/<preset>.toml``. A
*profile* (``simulations/configs/profiles/``) holds the simulation's federation config (the CPU
and GPU share of each simulated client) and, in an optional ``[run-config]`` table, run-config
keys that go with it (such as the device clients train on).

Every run goes through the real Flower simulation engine exactly as ``python -m
simulations.run`` does (:class:`fedkd.launch.SimulationSuperLink`: our own SuperLink on
127.0.0.1, private ``FLWR_HOME``, telemetry and update checks off), and stops every process it
started when the run ends, fails, or is interrupted (Ctrl-C or SIGTERM). It works from a
checkout of this repository: the checkout is the Flower app that ``flwr run`` submits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import sys
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedkd.config import ConfigError, RunConfig, Scalar, flatten_table, pyproject_defaults
from fedkd.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

APP_DIR = Path(__file__).resolve().parent.parent
PRESET_DIR = APP_DIR / "simulations" / "configs"
PROFILE_DIR = PRESET_DIR / "profiles"
#: What ``fedkd simulate`` records about how a run was started (the report labels runs with it).
CLI_FILE = "fedkd-run.json"
#: Config keys that tell seeds apart: runs that differ only in these are one experiment.
SEED_KEYS = frozenset({"seed", "data.seed"})
#: Keys an interrupted run may change and still continue from its checkpoint (server/loop.py).
RESUMABLE_KEYS = frozenset({"num-server-rounds", "output.resume", "output.checkpoint"})
EXIT_INTERRUPTED = 130
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class CliError(Exception):
    """A mistake on the command line or in a preset: printed as ``error: ...``, exit status 2."""


# ----- presets and profiles -----------------------------------------------------------------
def _load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise CliError(f"{what} {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise CliError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _description(path: Path) -> str:
    """The first comment line of a preset or profile file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


@dataclass(frozen=True)
class Preset:
    """One experiment: a name and its flat run-config overrides."""

    name: str
    path: Path
    values: dict[str, Scalar]

    @property
    def description(self) -> str:
        return _description(self.path)


def preset_names() -> list[str]:
    """The presets in ``simulations/configs/``, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def profile_names() -> list[str]:
    """The profiles in ``simulations/configs/profiles/``, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_preset(spec: str) -> Preset:
    """A preset by name (``fd-fmnist-dir0.1``) or by the path of a TOML file."""
    path = Path(spec).expanduser()
    if path.suffix == ".toml" or os.sep in spec:
        if not path.is_file():
            raise CliError(f"preset file {spec} not found")
        name = path.stem
    else:
        path = PRESET_DIR / f"{spec}.toml"
        if not path.is_file():
            raise CliError(
                f"unknown preset {spec!r}; valid names: {', '.join(preset_names())} "
                "(or the path of a .toml file of run-config overrides; `fedkd presets` describes them)"
            )
        name = spec
    return Preset(name=name, path=path.resolve(), values=flatten_table(_load_toml(path, "preset")))


@dataclass(frozen=True)
class Profile:
    """Simulation resources: flat federation-config keys, plus optional run-config overrides (a
    ``[run-config]`` table, e.g. the device clients train on) applied before ``--set``."""

    name: str
    federation: dict[str, Scalar]
    run_config: dict[str, Scalar]


def load_profile(spec: str) -> Profile:
    """A profile by name (``cpu``, ``gpu``) or by the path of a TOML file."""
    path = Path(spec).expanduser()
    if path.suffix != ".toml" and os.sep not in spec:
        path = PROFILE_DIR / f"{spec}.toml"
        if not path.is_file():
            raise CliError(f"unknown profile {spec!r}; valid names: {', '.join(profile_names())} "
                           "(or the path of a .toml file of federation-config keys)")
    elif not path.is_file():
        raise CliError(f"profile file {spec} not found")
    values = _load_toml(path, "profile")
    run_config = values.pop("run-config", {})
    nested = [k for k, v in values.items() if isinstance(v, Mapping)]
    if nested or not isinstance(run_config, Mapping):
        raise CliError(f"profile {path}: federation-config keys are flat, and the only table is "
                       f"[run-config]; found {nested or ['run-config']}")
    return Profile(path.stem, values, flatten_table(run_config))


def parse_sets(pairs: Sequence[str]) -> dict[str, Scalar]:
    """``KEY=VALUE`` overrides with TOML values, parsed as ``python -m simulations.run`` does."""
    try:
        from simulations.run import parse_overrides
    except ImportError:  # the console script started outside the checkout: the app is APP_DIR
        sys.path.insert(0, str(APP_DIR))
        from simulations.run import parse_overrides
    try:
        return parse_overrides(list(pairs))
    except ConfigError as err:
        raise CliError(str(err)) from None


def check_algorithm(cfg: RunConfig) -> None:
    """Build the algorithm once, as the ServerApp will, so its own checks fail before Flower starts
    (e.g. FD under DP-SGD needs ``privacy.output-noise``)."""
    from fedkd.algorithms import ALGORITHMS
    from fedkd.data.datasets import DATASETS

    source = DATASETS.get(cfg.data.dataset)
    ALGORITHMS.get(cfg.algorithm)(cfg, source.num_classes, source.input_shape)


def resolve_config(
    preset: Preset,
    overrides: Mapping[str, Scalar] | None = None,
    *,
    seed: int | None = None,
    rounds: int | None = None,
    output_dir: Path | None = None,
    run_name: str | None = None,
) -> tuple[RunConfig, dict[str, Scalar]]:
    """Validate pyproject defaults + preset + overrides; return the config and the run config to
    submit (the preset's keys and everything set here, on top of pyproject's defaults)."""
    run_config: dict[str, Scalar] = {**preset.values, **(overrides or {})}
    if seed is not None:
        run_config["seed"] = seed
    if rounds is not None:
        run_config["num-server-rounds"] = rounds
    if output_dir is not None:
        run_config["output.dir"] = str(output_dir.resolve())
    if run_name is not None:
        run_config["output.run-name"] = run_name
    data_dir = run_config.get("data.data-dir")
    if isinstance(data_dir, str) and data_dir and not Path(data_dir).is_absolute():
        # Flower's apps run in the SuperLink's working directory: pass absolute paths.
        run_config["data.data-dir"] = str(Path(data_dir).resolve())
    flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **run_config}
    try:
        cfg = RunConfig.from_flat(flat)
        check_algorithm(cfg)
    except ConfigError as err:
        raise CliError(f"preset {preset.name}: {err}") from None
    return cfg, run_config


def federation_config(profile: Profile, cfg: RunConfig) -> dict[str, Scalar]:
    """The simulation's federation config: one SuperNode per partition, plus the profile's keys."""
    fed: dict[str, Scalar] = {
        "num-supernodes": cfg.data.num_partitions,
        "init-args-num-cpus": os.cpu_count() or 1,
        **profile.federation,
    }
    gpus = fed.get("client-resources-num-gpus", 0.0)
    if isinstance(gpus, (int, float)) and gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise CliError(
                f"the profile gives each client {gpus:g} GPU, but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}); Ray would find no worker to start. Use --profile cpu"
            )
    return fed


# ----- progress -----------------------------------------------------------------------------
def _human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_round(row: Mapping[str, Any], total: int, width: int = 20) -> str:
    """One progress line: ``round 3/10 [######--------------] global acc 0.7012 | ...``."""
    rnd = int(row.get("round", 0))
    done = min(width, round(width * rnd / total)) if total else width
    head = f"round {rnd}/{total} [{'#' * done}{'-' * (width - done)}]"
    parts = []
    if row.get("global-accuracy") is not None:
        parts.append(f"global acc {row['global-accuracy']:.4f}")
    if row.get("personalized-accuracy") is not None:
        parts.append(f"personal acc {row['personalized-accuracy']:.4f}")
    if row.get("epsilon-max") is not None:
        parts.append(f"eps {row['epsilon-max']:.2f}")
    if row.get("server-epsilon") is not None:
        parts.append(f"server eps {row['server-epsilon']:.2f}")
    if row.get("bytes-up-per-client") is not None:
        parts.append(f"up {_human_bytes(row['bytes-up-per-client'])}/client")
    if row.get("num-failures"):
        parts.append(f"failures {row['num-failures']}")
    if row.get("wall-time-s") is not None:
        parts.append(f"{row['wall-time-s']:.1f} s")
    return f"{head} {' | '.join(parts)}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a ``metrics.jsonl`` being written (a torn last line is left for later)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsFollower:
    """Prints one line per new row of ``metrics.jsonl`` while a run writes it (a thread polls)."""

    def __init__(self, path: Path, total_rounds: int, emit: Callable[[str], None],
                 interval: float = 0.5) -> None:
        self.path = path
        self.total = total_rounds
        self.emit = emit
        self.interval = interval
        # Rows already there (a run continuing after its checkpoint) are not printed again.
        self._seen = {self._key(r) for r in read_rows(path)}
        self.previous_rounds = len(self._seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedkd-progress", daemon=True)

    @staticmethod
    def _key(row: Mapping[str, Any]) -> tuple[Any, Any]:
        return row.get("round"), row.get("wall-time-s")

    def poll(self) -> None:
        for row in read_rows(self.path):
            key = self._key(row)
            if key not in self._seen:
                self._seen.add(key)
                self.emit(format_round(row, self.total))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> MetricsFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.poll()


def _raise_interrupt(signum: int, frame: object) -> None:
    # One signal is enough: a second Ctrl-C must not cut short the clean-up it started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM raise :class:`KeyboardInterrupt`, which unwinds through the ``finally``
    blocks that stop every process a run started; further signals are ignored meanwhile. (Also
    re-arms SIGINT, which a shell's background job may start with ignored.)"""
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)


# ----- one run --------------------------------------------------------------------------------
@dataclass
class RunResult:
    """How one run ended: ``completed`` or ``failed`` (an interrupted run raises KeyboardInterrupt)."""

    outcome: str
    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def run_simulation(
    preset: Preset,
    cfg: RunConfig,
    run_config: Mapping[str, Scalar],
    federation: Mapping[str, Scalar],
    *,
    port: int | None = None,
    timeout: float = 24 * 3600.0,
    out: TextIO = sys.stdout,
    extra_record: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run one configuration through the simulation engine, printing progress from metrics.jsonl.

    Raises :class:`KeyboardInterrupt` after stopping everything it started, if interrupted.
    """
    from fedkd.data.datasets import load_dataset
    from fedkd.data.federated import load_federated
    from fedkd.data.idx import DataFileError
    from fedkd.launch import LaunchError, SimulationSuperLink, port_is_free

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        load_dataset(cfg.data.dataset, cfg.data.data_dir)  # a missing dataset says how to get it
    except DataFileError as err:
        raise CliError(str(err)) from None
    if port is not None and not port_is_free(port):
        raise CliError(f"port {port} on 127.0.0.1 is already in use; pass another --port, or "
                       "leave --port out to let fedkd pick a free one")
    run_dir = Path(cfg.output.dir) / cfg.output.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"preset": preset.name, "preset-path": str(preset.path),
              "run-config": dict(run_config), "federation-config": dict(federation),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **(extra_record or {})}
    (run_dir / CLI_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    partition = load_federated(cfg.data).describe()
    (run_dir / "partition.txt").write_text(partition + "\n")
    say(f"[fedkd] {preset.name}: {cfg.algorithm} on {cfg.data.dataset}, "
        f"{cfg.data.num_partitions} clients, {cfg.num_server_rounds} rounds, seed {cfg.seed}; "
        f"outputs in {run_dir} (label histogram: partition.txt, full log: run.log)")

    log_path = run_dir / "run.log"
    link = SimulationSuperLink(port=port, log_path=run_dir / "superlink.log")
    follower = MetricsFollower(run_dir / METRICS_FILE, cfg.num_server_rounds, say)
    if follower.previous_rounds:
        say(f"[fedkd] {follower.previous_rounds} round(s) already in {run_dir}: the run continues "
            "after its checkpoint")
    start = time.monotonic()
    try:
        # start() inside the try: a Ctrl-C while the SuperLink starts still stops it.
        link.start()
        with log_path.open("w") as log, follower:
            def on_line(line: str) -> None:
                log.write(line + "\n")
                log.flush()
                if "default simulated SuperNodes" in line:  # flwr's stale notice
                    return
                # Rounds come from metrics.jsonl; from the log only what needs attention.
                if "ERROR" in line or "WARNING" in line or "[fedkd] resuming" in line:
                    say(ANSI_ESCAPE.sub("", line))

            run_id, status = link.run_streaming(APP_DIR, run_config, federation, on_line, timeout)
    except LaunchError as err:
        return RunResult("failed", run_dir, read_rows(run_dir / METRICS_FILE), str(err))
    finally:
        link.stop()
    rows = read_rows(run_dir / METRICS_FILE)
    if status != "finished:completed":
        return RunResult("failed", run_dir, rows,
                         f"run {run_id} ended with status {status!r}; full log: {log_path}")
    elapsed = time.monotonic() - start
    last = rows[-1] if rows else {}
    summary = [f"{len(rows)} rounds in {elapsed:.0f} s"]
    for key, label, spec in (("global-accuracy", "global acc", ".4f"),
                             ("personalized-accuracy", "personal acc", ".4f"),
                             ("epsilon-max", "eps", ".2f")):
        if last.get(key) is not None:
            summary.append(f"{label} {last[key]:{spec}}")
    say(f"[fedkd] done: {', '.join(summary)}; results in {run_dir}")
    return RunResult("completed", run_dir, rows)


def _interrupted_message(run_dir: Path) -> str:
    rows = read_rows(run_dir / METRICS_FILE)
    return (f"interrupted: every process this run started was stopped; {len(rows)} finished "
            f"round(s) kept in {run_dir / METRICS_FILE}")


# ----- simulate -------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    profile = load_profile(args.profile)
    overrides = {**profile.run_config, **parse_sets(args.overrides)}
    output_dir = Path(args.output_dir)
    name = args.name
    if name is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        seed = args.seed if args.seed is not None else overrides.get("seed", preset.values.get("seed"))
        name = f"{preset.name}-seed{seed if seed is not None else 0}-{stamp}"
    cfg, run_config = resolve_config(preset, overrides, seed=args.seed, rounds=args.rounds,
                                     output_dir=output_dir, run_name=name)
    federation = federation_config(profile, cfg)
    try:
        result = run_simulation(preset, cfg, run_config, federation, port=args.port,
                                timeout=args.timeout, extra_record={"profile": args.profile,
                                                                    "argv": sys.argv})
    except KeyboardInterrupt:
        run_dir = output_dir.resolve() / name
        print(f"\n{_interrupted_message(run_dir)}\nto continue after the last finished round, run "
              f"the same command with --name {name}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.outcome != "completed":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    return 0


# ----- sweep ----------------------------------------------------------------------------------
def run_state(run_dir: Path, cfg: RunConfig) -> tuple[str, str]:
    """``("done" | "partial" | "new" | "conflict", detail)`` for a sweep's run directory."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        return "new", ""
    try:
        saved = json.loads(config_path.read_text()).get("run-config", {})
    except (OSError, json.JSONDecodeError):
        saved = {}
    current = cfg.to_flat()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
    if changed:
        return "conflict", (f"{run_dir} holds a run with another configuration "
                            f"({', '.join(changed[:6])}); use another --output-dir or remove it")
    rounds = {r.get("round") for r in read_rows(run_dir / METRICS_FILE)}
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.exists():
        try:
            if int(json.loads(summary_path.read_text()).get("rounds", 0)) >= cfg.num_server_rounds:
                return "done", f"{cfg.num_server_rounds} rounds, summary.json"
        except (OSError, ValueError, json.JSONDecodeError):
            pass
    if set(range(1, cfg.num_server_rounds + 1)) <= rounds:
        return "done", f"all {cfg.num_server_rounds} rounds in metrics.jsonl"
    return ("partial", f"{len(rounds)} of {cfg.num_server_rounds} rounds") if rounds else ("new", "")


def cmd_sweep(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    overrides = {**profile.run_config, **parse_sets(args.overrides)}
    output_dir = Path(args.output_dir).resolve()
    # Validate every run before starting any: a typo in the last preset fails now, not hours in.
    plan = []
    for spec in args.presets:
        preset = load_preset(spec)
        for seed in args.seeds:
            name = f"{preset.name}-seed{seed}"
            cfg, run_config = resolve_config(preset, overrides, seed=seed, rounds=args.rounds,
                                             output_dir=output_dir, run_name=name)
            plan.append((preset, seed, cfg, run_config, federation_config(profile, cfg)))
    print(f"[fedkd] sweep: {len(args.presets)} preset(s) x {len(args.seeds)} seed(s) = "
          f"{len(plan)} runs in {output_dir}", flush=True)
    counts = {"completed": 0, "skipped": 0, "failed": 0}
    failures: list[str] = []
    for i, (preset, seed, cfg, run_config, federation) in enumerate(plan, start=1):
        run_dir = output_dir / cfg.output.run_name
        state, detail = run_state(run_dir, cfg)
        head = f"[fedkd] [{i}/{len(plan)}] {preset.name} seed {seed}"
        if state == "done":
            print(f"{head}: skipped, already done ({detail})", flush=True)
            counts["skipped"] += 1
            continue
        if state == "conflict":
            print(f"{head}: not run: {detail}", file=sys.stderr, flush=True)
            counts["failed"] += 1
            failures.append(f"{preset.name} seed {seed}: {detail}")
            continue
        print(f"{head}: {'continuing, ' + detail + ' done' if state == 'partial' else 'starting'}",
              flush=True)
        try:
            result = run_simulation(preset, cfg, run_config, federation, port=args.port,
                                    timeout=args.timeout,
                                    extra_record={"profile": args.profile, "argv": sys.argv})
        except KeyboardInterrupt:
            print(f"\n{_interrupted_message(run_dir)}\nsweep stopped after {counts['completed']} "
                  f"completed and {counts['skipped']} skipped run(s); run the same command again "
                  "to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        if result.outcome == "completed":
            counts["completed"] += 1
        else:
            counts["failed"] += 1
            failures.append(f"{preset.name} seed {seed}: {result.message}")
            print(f"{head}: failed: {result.message}", file=sys.stderr, flush=True)
    print(f"[fedkd] sweep: {counts['completed']} completed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; tables and plots: fedkd report {output_dir}", flush=True)
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


# ----- report ---------------------------------------------------------------------------------
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


def mean_std(values: Sequence[float | None]) -> tuple[float, float | None, int] | None:
    """Mean, sample standard deviation (n - 1; ``None`` for one value) and count of the values
    that are not ``None``; ``None`` when there are none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def _cell(stat: tuple[float, float | None, int] | None, spec: str) -> str:
    if stat is None:
        return "-"
    mean, std, _ = stat
    return f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"


def _bytes_cell(stat: tuple[float, float | None, int] | None) -> str:
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        rounds = "-".join(str(r) for r in (s["rounds"][0], s["rounds"][-1])) \
            if len(s["rounds"]) > 1 else str(s["rounds"][0])
        if s["incomplete"]:
            rounds += "*"
        cells = [s["label"], ", ".join(str(x) for x in s["seeds"]), rounds]
        for key, _, spec in columns:
            st = s[key]
            stat = None if st is None else (st["mean"], st["std"], st["n"])
            cells.append(_bytes_cell(stat) if spec == "bytes" else _cell(stat, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    (out_dir / "report.md").write_text("\n".join(body))
    (out_dir / "report.json").write_text(
        json.dumps([group_summary(g) for g in groups], indent=2) + "\n")
    return table + "\n" + "\n".join(notes) + "\n", images


def cmd_report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    text, images = write_report(args.dirs, out_dir)
    print(text)
    print(f"[fedkd] report: {out_dir / 'report.md'}, {out_dir / 'report.json'}, "
          + ", ".join(str(p) for p in images))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(map(len, names), default=0)
    print(f"presets ({PRESET_DIR}):")
    for name in names:
        print(f"  {name:<{width}}  {_description(PRESET_DIR / f'{name}.toml')}")
    print(f"\nprofiles for --profile ({PROFILE_DIR}):")
    for name in profile_names():
        print(f"  {name:<{width}}  {_description(PROFILE_DIR / f'{name}.toml')}")
    return 0


# ----- argument parsing -----------------------------------------------------------------------
def _common_run_options(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override on top of the preset, TOML value (strings quoted: "
                        "'train.model=\"mlp\"'); repeatable")
    p.add_argument("--rounds", type=int, help="num-server-rounds (default: the preset's)")
    p.add_argument("--output-dir", default="outputs", help=output_help)
    p.add_argument("--profile", default="cpu",
                   help="simulation resources: cpu (default), gpu, or a profile .toml file "
                        "(see `fedkd presets`)")
    p.add_argument("--port", type=int,
                   help="SuperLink port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=24 * 3600.0,
                   help="seconds before a run is stopped (default: 24 h)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fedkd", formatter_class=fmt,
        description="Federated knowledge distillation on Flower: run experiment presets through "
                    "the Flower simulation engine, sweep them over seeds, and tabulate and plot "
                    "the results.",
        epilog=textwrap.dedent("""\
            examples:
              fedkd presets
              fedkd simulate tiny
              fedkd simulate fd-fmnist-dir0.1 --seed 1 --set train.local-steps=50
              fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2 --output-dir outputs/sweep
              fedkd report outputs/sweep --out outputs/sweep/report
            (also: python -m fedkd ...)"""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "presets", help="list the experiment presets and resource profiles", formatter_class=fmt,
        description="List the experiment presets (simulations/configs/*.toml) and the resource "
                    "profiles (simulations/configs/profiles/*.toml), with what each one is.",
        epilog="example:\n  fedkd presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "simulate", help="run one preset through the Flower simulation engine",
        formatter_class=fmt,
        description=textwrap.dedent("""\
            Run one preset through the real Flower simulation engine (own SuperLink on 127.0.0.1,
            offline), printing one line per finished round (round i/N, accuracy, epsilon, bytes)
            as it is written to metrics.jsonl. The configuration is checked before anything
            starts. Ctrl-C stops every process the run started; the finished rounds stay in
            <output-dir>/<name>/metrics.jsonl, and the same command with --name <name>
            continues after the last one."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd simulate tiny
              fedkd simulate fd-fmnist-dir0.1-dp --seed 2 --rounds 5
              fedkd simulate fedmd-fmnist-dir1.0 --set 'aggregation.rule="median"' --profile gpu
              fedkd simulate my-experiment.toml --output-dir outputs/mine"""))
    p.add_argument("preset", help="preset name (`fedkd presets` lists them) or path of a .toml file")
    p.add_argument("--seed", type=int, help="run seed (default: the preset's, else 0)")
    p.add_argument("--name", help="run directory name (default <preset>-seed<N>-<UTC time>)")
    _common_run_options(p, "parent of the run directory (default: outputs)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "sweep", help="run presets x seeds; resumable", formatter_class=fmt,
        description=textwrap.dedent("""\
            Run every preset with every seed, one after another, into
            <output-dir>/<preset>-seed<N>/. Every configuration is checked before the first run
            starts. Resumable: a run whose directory already holds summary.json (or every round
            in metrics.jsonl) is skipped, an interrupted one continues after its last finished
            round, and a directory holding a run of another configuration is reported, never
            overwritten. Ctrl-C stops the current run and the sweep."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd sweep fd-fmnist-dir0.1 fedavg-fmnist-dir0.1 --seeds 0 1 2
              fedkd sweep simulations/configs/*-dir0.1*.toml --seeds 0 1 2 --output-dir outputs/a01
              fedkd report outputs/a01"""))
    p.add_argument("presets", nargs="+", help="preset names or .toml paths")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="N",
                   help="run seeds (default: 0)")
    _common_run_options(p, "where the runs go (default: outputs)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="Markdown table and PNG plots across runs", formatter_class=fmt,
        description=textwrap.dedent("""\
            Read run directories (or folders holding them), group runs that differ only by seed,
            and write report.md (a table of mean ± std over seeds: final and best global
            accuracy, final personalized accuracy, bytes up per client per round, epsilon, wall
            time per round), report.json (the same numbers) and three PNG plots: accuracy vs
            round, accuracy vs cumulative upload, accuracy vs epsilon. The table is also
            printed."""),
        epilog=textwrap.dedent("""\
            examples:
              fedkd report outputs/sweep
              fedkd report outputs/fd-fmnist-dir0.1-seed0 outputs/fd-fmnist-dir0.1-seed1 --out /tmp/r"""))
    p.add_argument("dirs", nargs="+", help="run directories, or folders that hold them")
    p.add_argument("--out", default="report", help="where report.md and the PNGs go "
                                                   "(default: ./report)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedkd`` console script and of ``python -m fedkd``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if args.command in ("simulate", "sweep") and \
            threading.current_thread() is threading.main_thread():
        install_signal_handlers()
    try:
        return int(args.func(args))
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run (while validating, loading data...)
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
