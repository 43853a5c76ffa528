"""One launcher: a validated configuration through the real Flower simulation engine, offline.

Both front ends run through here: ``fedkd simulate`` / ``fedkd sweep`` (:mod:`fedkd.cli`) and
``make run`` (:mod:`simulations.run`). A run

1. is validated completely before anything starts (:func:`resolve_config`, which goes through
   :func:`fedkd.compose.build_config`: the algorithm's own checks included), and its dataset
   and port are checked;
2. gets a run directory with the partition's label histogram (``partition.txt``);
3. goes to our own simulation SuperLink on 127.0.0.1 (:class:`fedkd.runtime.launch.SimulationSuperLink`:
   private ``FLWR_HOME``, telemetry and update checks off) with ``flwr run --stream``;
4. ends with its status from ``flwr ls`` (``flwr run`` exits 0 even when the ServerApp failed),
   and every process it started stopped: also on Ctrl-C or SIGTERM
   (:func:`interrupt_on_signals`), which raise :class:`KeyboardInterrupt` after clean-up.

What a run prints is its :class:`Console`: progress lines from ``metrics.jsonl``
(:data:`PROGRESS`, the ``fedkd`` command) or the ServerApp's own log lines (:data:`SERVER_LOG`,
the main job).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedkd.config import RunConfig, Scalar, pyproject_defaults
from fedkd.errors import ConfigError
from fedkd.experiments.presets import APP_DIR, CliError, Preset, Profile, load_preset
from fedkd.runtime.launch import ANSI_ESCAPE, failure_cause
from fedkd.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_jsonl

#: What ``fedkd simulate`` records about how a run was started (the report labels runs with it).
CLI_FILE = "fedkd-run.json"
#: Keys an interrupted run may change and still continue from its checkpoint (server/loop.py).
RESUMABLE_KEYS = frozenset({"num-server-rounds", "output.resume", "output.checkpoint"})
EXIT_INTERRUPTED = 130
#: A notice ``flwr run`` prints about its default federation, which does not apply here.
_STALE_NOTICE = "default simulated SuperNodes"


# ----- configuration ------------------------------------------------------------------------
def resolve_config(
    preset: Preset | None,
    overrides: Mapping[str, Scalar] | None = None,
    *,
    seed: int | None = None,
    rounds: int | None = None,
    output_dir: Path | None = None,
    run_name: str | None = None,
    one_machine: bool = True,
) -> tuple[RunConfig, dict[str, Scalar]]:
    """Validate pyproject defaults + preset (if any) + overrides with
    :func:`fedkd.compose.build_config` (every key, value and the algorithm's own checks); return
    the config and the run config to submit (the preset's keys and everything set here, on top
    of pyproject's defaults). Raises :class:`CliError`.

    ``one_machine``: the simulation runs on this machine (no Ray cluster), so every simulated
    client can keep its state beside the run's outputs: unless the preset or an override says
    otherwise, and as long as the run checkpoints and resumes, ``federation.client-state`` is
    ``"run"``, and a resumed run continues every client exactly. (On a cluster a client's next
    message may run on another machine: Flower's node state, which travels with the messages.)"""
    from fedkd.compose import build_config

    run_config: dict[str, Scalar] = {**(preset.values if preset else {}), **(overrides or {})}
    if seed is not None:
        run_config["seed"] = seed
    if rounds is not None:
        run_config["num-server-rounds"] = rounds
    if output_dir is not None:
        run_config["output.dir"] = str(Path(output_dir).resolve())
    if run_name is not None:
        run_config["output.run-name"] = run_name
    data_dir = run_config.get("data.data-dir")
    if isinstance(data_dir, str) and data_dir and not Path(data_dir).is_absolute():
        # Flower's apps run in the SuperLink's working directory: pass absolute paths.
        run_config["data.data-dir"] = str(Path(data_dir).resolve())
    flat = {**pyproject_defaults(APP_DIR / "pyproject.toml"), **run_config}
    if (one_machine and "federation.client-state" not in run_config
            and flat.get("output.checkpoint") is True and flat.get("output.resume") is True):
        run_config["federation.client-state"] = flat["federation.client-state"] = "run"
    try:
        check_given(run_config)
        cfg = build_config(flat)
        check_output_dir(run_dir_of(cfg))
    except ConfigError as err:
        raise CliError(f"preset {preset.name}: {err}" if preset else str(err)) from None
    return cfg, run_config


def check_given(run_config: Mapping[str, Scalar]) -> None:
    """Refuse values that only a key given explicitly (by the preset or ``--set``) can get wrong.

    ``privacy.target-epsilon``: its default, 0, means "no target" (DP-SGD then trains at
    ``privacy.noise-multiplier``), so :class:`~fedkd.config.PrivacyConfig` cannot tell a 0 given
    on purpose from the default; a target of 0 or below is meaningless, and was silently run at
    noise multiplier 1.0. Raises :class:`ConfigError`.
    """
    target = run_config.get("privacy.target-epsilon")
    if isinstance(target, (int, float)) and not isinstance(target, bool) and not target > 0:
        raise ConfigError(
            f"privacy.target-epsilon must be > 0, got {target!r}: it is the epsilon DP-SGD's "
            "noise is calibrated to spend over the run (0, the default, means no target: DP-SGD "
            "then trains at privacy.noise-multiplier); give a positive target, or leave the key "
            "out to train at privacy.noise-multiplier")


def check_output_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or written, before anything starts.

    Nothing is created here: the nearest existing ancestor must be a directory this process
    may write to (and ``run_dir`` itself, if it exists, a directory). Raises
    :class:`ConfigError` naming the path in the way.
    """
    run_dir = Path(run_dir).absolute()
    way_out = "pass an --output-dir (output.dir) in a directory you can write to"
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output.dir: cannot create the run directory {run_dir}: {existing} is "
                          f"a file, not a directory; {way_out}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir: cannot create the run directory {run_dir}: {existing} is "
                          f"not writable; {way_out}")


#: Ray's ``init`` arguments it refuses when attaching to an existing cluster.
CLUSTER_REFUSED_KEYS = ("init-args-num-cpus", "init-args-num-gpus")


def simulated_nodes(cfg: RunConfig) -> int:
    """The SuperNodes a simulation starts: one per partition, or ``federation.supernodes``
    serving the population's logical clients."""
    return cfg.federation.supernodes or cfg.data.num_partitions


def federation_config(profile: Profile, cfg: RunConfig,
                      ray_address: str | None = None) -> dict[str, Scalar]:
    """The simulation's federation config: one SuperNode per partition (or
    ``federation.supernodes``, :func:`simulated_nodes`), plus the profile's keys.

    On this machine (``ray_address`` ``None``), Ray gets this machine's CPU count. On an existing
    cluster the cluster's own resources count: ``init-args-num-cpus`` and ``-num-gpus``, which Ray
    refuses when it attaches, are left out (a profile that sets them is refused), and the GPU
    check is left to the cluster (its head may have none)."""
    if ray_address:
        refused = [k for k in CLUSTER_REFUSED_KEYS if k in profile.federation]
        if refused:
            raise CliError(
                f"profile {profile.name} sets {', '.join(refused)}, which Ray refuses when it "
                f"attaches to the cluster at {ray_address} (the cluster's own resources count); "
                "use --profile cluster, or a profile without them")
        return {"num-supernodes": simulated_nodes(cfg), **profile.federation}
    fed: dict[str, Scalar] = {
        "num-supernodes": simulated_nodes(cfg),
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


def run_dir_of(cfg: RunConfig) -> Path:
    """Where a run writes: ``<output.dir>/<output.run-name>``."""
    return Path(cfg.output.dir) / cfg.output.run_name


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
    return read_jsonl(path, growing=True)


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


#: A log line at level WARNING or above, as Flower formats them (``WARNING :   ...``): the level
#: opens the line, so a DEBUG line that merely mentions ``'ERROR'`` is not one.
_ATTENTION = re.compile(r"^(WARNING|ERROR|CRITICAL)\b")


def _needs_attention(line: str) -> str | None:
    # Rounds come from metrics.jsonl; from the log only what needs attention.
    line = ANSI_ESCAPE.sub("", line)
    if _STALE_NOTICE in line:
        return None
    return line if _ATTENTION.match(line) or "[fedkd] resuming" in line else None


def _server_lines(line: str) -> str | None:
    # The ServerApp's own lines ("[fedkd] round 2/5 ...", "[fedkd] done ...") and what went wrong.
    line = ANSI_ESCAPE.sub("", line)
    if _STALE_NOTICE in line:
        return None
    return line if "[fedkd]" in line or _ATTENTION.match(line) else None


@dataclass(frozen=True)
class Console:
    """What a run prints while it runs (every log line also goes to ``run.log``).

    ``echo`` maps a line of the run's log to the line to print, or ``None``; ``progress`` prints
    one line per round from ``metrics.jsonl`` and a closing ``[fedkd] done: ...`` line;
    ``show_partition`` prints the label histogram (always saved as ``partition.txt``).
    """

    echo: Callable[[str], str | None]
    progress: bool
    show_partition: bool


#: The ``fedkd`` command: a progress bar per round, warnings and errors from the log.
PROGRESS = Console(echo=_needs_attention, progress=True, show_partition=False)
#: The main job (``make run``): the label histogram, then the ServerApp's own log lines.
SERVER_LOG = Console(echo=_server_lines, progress=False, show_partition=True)


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


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """:func:`install_signal_handlers` for the block, then the handlers as they were (only in the
    main thread, where Python allows signal handlers; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install_signal_handlers()
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ----- one run --------------------------------------------------------------------------------
@dataclass
class RunResult:
    """How one run ended: ``completed`` or ``failed`` (an interrupted run raises KeyboardInterrupt)."""

    outcome: str
    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    elapsed_s: float = 0.0


def run_simulation(
    cfg: RunConfig,
    run_config: Mapping[str, Scalar],
    federation: Mapping[str, Scalar],
    *,
    header: str,
    port: int | None = None,
    timeout: float = 24 * 3600.0,
    out: TextIO | None = None,
    record: Mapping[str, Any] | None = None,
    console: Console = PROGRESS,
    ray_address: str | None = None,
) -> RunResult:
    """Run one configuration (validated by :func:`resolve_config`) through the simulation engine.

    Checks the dataset and the port first (:class:`CliError`), writes ``record`` (if given) to
    ``fedkd-run.json`` and the label histogram to ``partition.txt`` in the run directory, prints
    ``header``, starts our own SuperLink, streams the run (its log to ``run.log``, the lines
    ``console`` picks to ``out``), and checks the run's final status. Raises
    :class:`KeyboardInterrupt` after stopping everything it started, if interrupted.
    """
    from fedkd.data.datasets import load_dataset
    from fedkd.data.federated import load_federated
    from fedkd.data.idx import DataFileError
    from fedkd.runtime.launch import LaunchError, SimulationSuperLink, port_is_free

    def say(line: str) -> None:
        print(line, file=out or sys.stdout, flush=True)

    try:
        load_dataset(cfg.data.dataset, cfg.data.data_dir)  # a missing dataset says how to get it
    except DataFileError as err:
        raise CliError(str(err)) from None
    if port is not None and not port_is_free(port):
        raise CliError(f"port {port} on 127.0.0.1 is already in use; pass another --port, or "
                       "leave --port out to let fedkd pick a free one")
    check_planned_run(cfg, federation)
    run_dir = run_dir_of(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"output.dir: cannot create the run directory {run_dir}: "
                       f"{err.strerror or err}; pass an --output-dir (output.dir) in a "
                       "directory you can write to") from None
    if record is not None:
        (run_dir / CLI_FILE).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n")
    say(header)
    partition = load_federated(cfg.data).describe()
    (run_dir / "partition.txt").write_text(partition + "\n")
    if console.show_partition:
        say(partition)

    log_path = run_dir / "run.log"
    follower: Any = nullcontext()
    if console.progress:
        follower = MetricsFollower(run_dir / METRICS_FILE, cfg.num_server_rounds, say)
        if follower.previous_rounds:
            say(f"[fedkd] {follower.previous_rounds} round(s) already in {run_dir}: the run "
                "continues after its checkpoint")
    start = time.monotonic()
    link = None
    try:
        link = SimulationSuperLink(port=port, log_path=run_dir / "superlink.log",
                                   ray_address=ray_address)
        # start() inside the try: a Ctrl-C while the SuperLink starts still stops it.
        link.start()
        with log_path.open("w") as log, follower:
            def on_line(line: str) -> None:
                line = ANSI_ESCAPE.sub("", line)  # Flower colours its levels, even into a pipe
                log.write(line + "\n")
                log.flush()
                shown = console.echo(line)
                if shown is not None:
                    say(shown)

            run_id, status = link.run_streaming(APP_DIR, run_config, federation, on_line, timeout)
    except LaunchError as err:
        return RunResult("failed", run_dir, read_rows(run_dir / METRICS_FILE), str(err),
                         time.monotonic() - start)
    finally:
        if link is not None:
            link.stop()
    elapsed = time.monotonic() - start
    rows = read_rows(run_dir / METRICS_FILE)
    if status != "finished:completed":
        cause = failure_cause(_read_lines(log_path), _read_text(run_dir / "superlink.log"))
        return RunResult("failed", run_dir, rows,
                         f"run {run_id} ended with status {status!r}"
                         + (f": {cause}" if cause else "") + f"; full log: {log_path}",
                         elapsed)
    if console.progress:
        last = rows[-1] if rows else {}
        summary = [f"{len(rows)} rounds in {elapsed:.0f} s"]
        for key, label, spec in (("global-accuracy", "global acc", ".4f"),
                                 ("personalized-accuracy", "personal acc", ".4f"),
                                 ("epsilon-max", "eps", ".2f")):
            if last.get(key) is not None:
                summary.append(f"{label} {last[key]:{spec}}")
        say(f"[fedkd] done: {', '.join(summary)}; results in {run_dir}")
    return RunResult("completed", run_dir, rows, elapsed_s=elapsed)


def check_planned_run(cfg: RunConfig, federation: Mapping[str, Scalar]) -> None:
    """The checks that need the simulated federation (:func:`fedkd.compose.check_simulation`:
    the quorum against its SuperNodes, a DP target against its clients' data), as a
    :class:`CliError`; run before anything starts."""
    from fedkd.compose import check_simulation
    from fedkd.data.idx import DataFileError

    nodes = federation.get("num-supernodes", simulated_nodes(cfg))
    try:
        check_simulation(cfg, int(nodes))  # type: ignore[arg-type]
    except ConfigError as err:
        raise CliError(str(err)) from None
    except DataFileError as err:
        raise CliError(str(err)) from None


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def run_preset(
    preset: Preset,
    cfg: RunConfig,
    run_config: Mapping[str, Scalar],
    federation: Mapping[str, Scalar],
    *,
    port: int | None = None,
    timeout: float = 24 * 3600.0,
    out: TextIO | None = None,
    extra_record: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
) -> RunResult:
    """:func:`run_simulation` for a preset, as ``fedkd simulate`` and ``fedkd sweep`` run it:
    progress lines, and how the run was started recorded in ``fedkd-run.json``."""
    run_dir = run_dir_of(cfg)
    record = {"preset": preset.name, "preset-path": str(preset.path),
              "run-config": dict(run_config), "federation-config": dict(federation),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "ray-address": ray_address, **(extra_record or {})}
    header = (f"[fedkd] {preset.name}: {cfg.algorithm} on {cfg.data.dataset}, "
              f"{cfg.data.num_partitions} clients, {cfg.num_server_rounds} rounds, seed "
              f"{cfg.seed}; outputs in {run_dir} (label histogram: partition.txt, full log: "
              "run.log)")
    return run_simulation(cfg, run_config, federation, header=header, port=port,
                          timeout=timeout, out=out, record=record, console=PROGRESS,
                          ray_address=ray_address)


def interrupted_message(run_dir: Path) -> str:
    """What an interrupted run leaves: every process stopped, its finished rounds kept."""
    rows = read_rows(run_dir / METRICS_FILE)
    return (f"interrupted: every process this run started was stopped; {len(rows)} finished "
            f"round(s) kept in {run_dir / METRICS_FILE}")


# ----- sweeps ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep, validated: ``<output-dir>/<preset>-seed<N>/``."""

    preset: Preset
    seed: int
    cfg: RunConfig
    run_config: dict[str, Scalar]
    federation: dict[str, Scalar]


def plan_sweep(
    specs: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Scalar],
    profile: Profile,
    *,
    output_dir: Path,
    rounds: int | None = None,
    ray_address: str | None = None,
) -> list[PlannedRun]:
    """Every preset x seed, validated before any starts: a typo in the last preset fails now,
    not hours in. Raises :class:`CliError`."""
    plan = []
    for spec in specs:
        preset = load_preset(spec)
        for seed in seeds:
            cfg, run_config = resolve_config(preset, overrides, seed=seed, rounds=rounds,
                                             output_dir=output_dir,
                                             run_name=f"{preset.name}-seed{seed}",
                                             one_machine=not ray_address)
            federation = federation_config(profile, cfg, ray_address)
            try:
                check_planned_run(cfg, federation)
            except CliError as err:
                raise CliError(f"preset {preset.name} seed {seed}: {err}") from None
            plan.append(PlannedRun(preset, seed, cfg, run_config, federation))
    return plan


@dataclass
class SweepResult:
    """How a sweep went; ``interrupted`` holds the run directory a Ctrl-C stopped."""

    completed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    interrupted: Path | None = None


def run_sweep(
    plan: Sequence[PlannedRun],
    *,
    port: int | None = None,
    timeout: float = 24 * 3600.0,
    extra_record: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
) -> SweepResult:
    """Run the plan one run after another: a finished run is skipped, an interrupted one continues
    after its last round, a directory holding another configuration is reported and left alone.
    A Ctrl-C stops the current run (every process it started) and the sweep."""
    result = SweepResult()
    for i, run in enumerate(plan, start=1):
        run_dir = run_dir_of(run.cfg)
        state, detail = run_state(run_dir, run.cfg)
        head = f"[fedkd] [{i}/{len(plan)}] {run.preset.name} seed {run.seed}"
        if state == "done":
            print(f"{head}: skipped, already done ({detail})", flush=True)
            result.skipped += 1
            continue
        if state == "conflict":
            print(f"{head}: not run: {detail}", file=sys.stderr, flush=True)
            result.failures.append(f"{run.preset.name} seed {run.seed}: {detail}")
            continue
        print(f"{head}: {'continuing, ' + detail + ' done' if state == 'partial' else 'starting'}",
              flush=True)
        try:
            outcome = run_preset(run.preset, run.cfg, run.run_config, run.federation, port=port,
                                 timeout=timeout, extra_record=extra_record,
                                 ray_address=ray_address)
        except KeyboardInterrupt:
            result.interrupted = run_dir
            return result
        if outcome.outcome == "completed":
            result.completed += 1
        else:
            result.failures.append(f"{run.preset.name} seed {run.seed}: {outcome.message}")
            print(f"{head}: failed: {outcome.message}", file=sys.stderr, flush=True)
    return result
