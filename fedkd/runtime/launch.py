"""Start and stop Flower processes offline: our own simulation SuperLink, ``flwr run``, status.

Flower's default ``local`` connection installs app dependencies from the package index on every
run and leaves a detached SuperLink behind, so fedkd never uses it. Instead this module starts its
own ``flower-superlink --simulation --disable-runtime-dependency-installation`` on 127.0.0.1 with
a private ``FLWR_HOME``, update checks and telemetry off, submits runs to it with ``flwr run``, and
stops exactly the processes it started, by PID.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import tomli_w

from fedkd.config import toml_value

_log = logging.getLogger(__name__)

#: Environment every Flower process gets: nothing may call out.
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
}

CONNECTION = "fedkd-sim"
TERMINAL_PREFIX = "finished"


class LaunchError(RuntimeError):
    """A Flower process could not be started, or a run did not complete."""


def bin_path(name: str) -> str:
    """Path of a console script installed next to the running Python (the venv's ``bin``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def offline_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus :data:`OFFLINE_ENV`, ``FLWR_HOME`` and
    the running interpreter's ``bin`` directory first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    # Flower starts helpers (flower-superexec, flwr-serverapp) by name: put our venv first.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux ``/proc``), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # the command name (field 2) may contain spaces; fields after ')' are fixed
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        out.extend(nxt)
        frontier = nxt
    return out


def _signal_all(pids: list[int], groups: set[int], sig: int) -> None:
    """Send ``sig`` to each group and process; one already gone is skipped, one this process
    may not signal is named in a WARNING (it may outlive the stop)."""
    for kind, ids, send in (("process group", groups, os.killpg), ("process", pids, os.kill)):
        for target in ids:
            try:
                send(target, sig)
            except ProcessLookupError:
                pass  # already gone
            except PermissionError as err:
                _log.warning("cannot send signal %d to %s %d (%s): it may still be running",
                             sig, kind, target, err)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are already dead
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything it started.

    Flower's SuperLink starts ``flower-superexec`` in a session of its own, which starts the
    simulation process and Ray; if the SuperLink is stopped mid-run they are orphaned and keep
    running. So the whole process tree is recorded first, then each process group in it gets
    SIGTERM, and whatever is still alive after ``grace`` seconds gets SIGKILL. Only descendants
    of ``proc`` are touched.
    """
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    groups = {proc.pid}
    for pid in tree:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never signal our own group
    _signal_all(tree, groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not any(_alive(p) for p in tree):
            return
        time.sleep(0.2)
    _signal_all([p for p in tree if _alive(p)], groups, signal.SIGKILL)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired as err:
        _log.warning("process %d did not exit within %g s of SIGKILL (%s)", proc.pid,
                     err.timeout, err)


def run_config_toml(flat: Mapping[str, bool | int | float | str]) -> str:
    """Flat dotted run-config overrides as a TOML document with nested tables."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        table = nested
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"run-config key {key!r} conflicts with a scalar key")
        table[leaf] = value
    return tomli_w.dumps(nested)


#: This repository: the Flower app (``client``, ``server``, ``fedkd``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Terminal colour codes, stripped from Flower's output where it is shown or searched.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_ANSI_BYTES = re.compile(rb"\x1b\[[0-9;]*m")


def flower_error_lines(flwr_output: Sequence[str], superlink_log: str) -> list[str]:
    """Flower's own reasons for a run that did not start: the text of ``flwr run``'s error box
    and the SuperLink's ``ERROR`` lines (without colour codes), in that order, deduplicated."""
    found: list[str] = []
    for line in flwr_output:
        text = ANSI_ESCAPE.sub("", line).strip().strip("│╭╮╰╯─ ")
        if text not in ("", "Error") and ("code:" in text or "rror" in text):
            found.append(text)
    for line in superlink_log.splitlines():
        text = ANSI_ESCAPE.sub("", line).strip()
        if "ERROR" in text:
            found.append(text.split("ERROR", 1)[1].lstrip(" :"))
    return list(dict.fromkeys(found))


#: Flower's own lines around a failure, which say that it failed but not why.
_GENERIC_FAILURE = re.compile(
    r"Simulation raised an exception|Exit Code: \d+|An unhandled exception occurred|"
    r"For more information, visit|ServerApp thread raised an exception")
#: The last line of a traceback: ``package.module.SomeError: what went wrong``.
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?P<rest>:.*)?$")


def failure_cause(run_log: Sequence[str], superlink_log: str = "") -> str | None:
    """Why a run failed, in one line, from its log (``flwr run --stream``'s lines): the
    exception the last traceback ends with (``QuorumError: round 1, phase 'fit': ...``, the
    module path left out), else the last ``ERROR`` line that is more than Flower's "Simulation
    raised an exception" / "Exit Code: 700", else the SuperLink's first reason
    (:func:`flower_error_lines`). ``None`` when the logs say nothing more."""
    lines = [ANSI_ESCAPE.sub("", line).rstrip() for line in run_log]
    starts = [i for i, line in enumerate(lines)
              if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1:]:
            if not line or line[0].isspace():
                continue  # frames, source lines, carets
            match = _EXCEPTION_LINE.match(line)
            if match and not line.startswith(("ERROR", "WARNING", "INFO", "DEBUG")):
                return match["name"].rsplit(".", 1)[-1] + (match["rest"] or "")
            break
    for line in reversed(lines):
        if line.startswith(("ERROR", "CRITICAL")) and not _GENERIC_FAILURE.search(line):
            text = line.split(":", 1)[1].strip() if ":" in line else line
            if text:
                return text
    reasons = [r for r in flower_error_lines([], superlink_log) if not _GENERIC_FAILURE.search(r)]
    return reasons[0] if reasons else None


def _port_in_use(port: int) -> str:
    return (f"port {port} on 127.0.0.1 is already in use; choose another one (--port N of "
            "`fedkd simulate` and `python -m simulations.run`), leave the port out to let fedkd "
            "pick a free one, or stop whatever listens there")


class SimulationSuperLink:
    """Our own simulation SuperLink on 127.0.0.1, with a private ``FLWR_HOME``.

    Use it as a context manager; on exit it stops the SuperLink's process group and removes the
    temporary ``FLWR_HOME`` it made.

    Parameters
    ----------
    port
        Port to bind; ``None`` picks a free one.
    flwr_home
        Directory for Flower's config and state; ``None`` makes a temporary one.
    log_path
        Where the SuperLink's output goes; default ``<flwr_home>/superlink.log`` (a temporary
        ``FLWR_HOME`` is removed on stop, so pass a path to keep the log).
    ray_address
        An existing Ray cluster for the simulation's clients (``RAY_ADDRESS`` of the SuperLink and
        the simulation process it starts: ``<head-ip>:6379`` or ``ray://<head-ip>:10001``);
        ``None`` starts a private Ray instance on this machine, whatever ``RAY_ADDRESS`` this
        process has. With a cluster, the federation config must not carry ``init-args-num-cpus``
        or ``init-args-num-gpus`` (Ray refuses resources when it attaches).
    """

    def __init__(
        self, port: int | None = None, flwr_home: Path | None = None, log_path: Path | None = None,
        ray_address: str | None = None,
    ) -> None:
        if port is not None and not port_is_free(port):
            raise LaunchError(_port_in_use(port))
        self.port = port or free_port()
        self._own_home = flwr_home is None
        self.flwr_home = Path(flwr_home or tempfile.mkdtemp(prefix="fedkd-flwr-home-"))
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path or self.flwr_home / "superlink.log"
        self.env = offline_env(self.flwr_home)
        self.ray_address = ray_address
        self.env.pop("RAY_ADDRESS", None)
        if ray_address:
            self.env["RAY_ADDRESS"] = ray_address
            # Flower's Ray backend gives every worker the simulation process's sys.path; the
            # app it unpacks under FLWR_HOME exists on this machine only, so the workers of other
            # machines import the app from this repository (at the same path on every node).
            self.env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._runs_submitted = 0
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> SimulationSuperLink:
        """Start the SuperLink and wait until its health endpoint answers."""
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n'
        )
        self._log = self.log_path.open("ab")
        self._log_offset = self._log.tell()  # the log may hold earlier runs' lines
        self.proc = subprocess.Popen(
            [
                bin_path("flower-superlink"), "--insecure", "--simulation",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.flwr_home / "superlink.db"),
            ],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:  # whatever interrupts the wait (Ctrl-C included) stops what was started
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready_timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + ready_timeout
        last_error: Exception | None = None  # why the last health check failed
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self._new_log_text():
                    raise LaunchError(f"{_port_in_use(self.port)}; see {self.log_path}")
                raise LaunchError(
                    f"flower-superlink exited with code {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.address}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last_error = LaunchError(f"health check answered HTTP {resp.status}")
            except (urllib.error.URLError, ConnectionError, OSError) as err:
                last_error = err  # not listening yet: try again until the deadline
            time.sleep(0.3)
        raise LaunchError(f"flower-superlink not ready after {ready_timeout:g} s (last health "
                          f"check: {last_error}); see {self.log_path}") from last_error

    def _new_log_text(self) -> str:
        """What the SuperLink logged since it started (this object's runs only)."""
        if self._log is not None:
            self._log.flush()
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except OSError as err:
            _log.warning("cannot read the SuperLink log %s (%s): its error lines are not shown",
                         self.log_path, err)
            return ""

    def stop(self) -> None:
        """Stop the SuperLink (its whole process group) and close its log, without the colour
        codes Flower writes into it (:meth:`_strip_log_colours`)."""
        if self.proc is not None:
            stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None
            self._strip_log_colours()
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    def _strip_log_colours(self) -> None:
        """Rewrite what this SuperLink logged without terminal colour codes: Flower colours every
        level name (``\\x1b[92mINFO \\x1b[0m``), also when its output goes to a file. Done once
        the SuperLink has stopped (it writes the file itself); earlier runs' lines are kept."""
        try:
            with self.log_path.open("rb") as fh:
                kept = fh.read(self._log_offset)
                text = fh.read()
            clean = _ANSI_BYTES.sub(b"", text)
            if clean != text:
                tmp = self.log_path.with_name(self.log_path.name + ".tmp")
                tmp.write_bytes(kept + clean)
                os.replace(tmp, self.log_path)
        except OSError as err:
            _log.warning("cannot strip the colour codes from the SuperLink log %s (%s)",
                         self.log_path, err)

    def __enter__(self) -> SimulationSuperLink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----- runs ---------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this SuperLink's ``FLWR_HOME``."""
        proc = subprocess.run(
            [bin_path("flwr"), *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise LaunchError(f"flwr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def _run_args(
        self,
        app_dir: Path,
        run_config: Mapping[str, bool | int | float | str],
        federation_config: Mapping[str, bool | int | float | str],
    ) -> list[str]:
        args = [bin_path("flwr"), "run", str(app_dir), CONNECTION]
        if run_config:
            # One TOML file, not repeated --run-config k=v: flwr 1.42 parses each k=v into a
            # nested dict and merges them with a shallow dict.update, so `data.a=1` followed by
            # `data.b=2` silently drops data.a.
            self._runs_submitted += 1
            path = self.flwr_home / f"run-config-{self._runs_submitted}.toml"
            path.write_text(run_config_toml(run_config))
            args += ["--run-config", str(path)]
        fed = " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())
        if fed:
            args += ["--federation-config", fed]
        return args

    def run_streaming(
        self,
        app_dir: Path,
        run_config: Mapping[str, bool | int | float | str],
        federation_config: Mapping[str, bool | int | float | str],
        on_line: Callable[[str], None],
        timeout: float,
    ) -> tuple[int, str]:
        """Run with ``flwr run --stream``, passing each log line to ``on_line``.

        Returns ``(run_id, status)``. ``flwr run`` exits 0 even when the ServerApp failed, so the
        status comes from ``flwr ls``; check it is ``finished:completed``.
        """
        args = self._run_args(app_dir, run_config, federation_config) + ["--stream"]
        proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True, bufsize=1,
        )
        deadline = time.monotonic() + timeout
        tail: collections.deque[str] = collections.deque(maxlen=50)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                on_line(line.rstrip("\n"))
                if time.monotonic() > deadline:
                    raise LaunchError(f"run did not finish within {timeout:g} s")
            proc.wait()
        finally:
            stop_process(proc, grace=5.0)
        runs = self.runs()
        if not runs:
            reasons = flower_error_lines(tail, self._new_log_text())
            raise LaunchError(
                f"flwr run exited with code {proc.returncode} and started no run"
                + (": " + "; ".join(reasons) if reasons else "")
                + f" (SuperLink log: {self.log_path})")
        latest = max(runs, key=lambda r: int(r["run-id"]))
        run_id = int(latest["run-id"])
        status = self.status(run_id)
        if not status.startswith(TERMINAL_PREFIX):  # stream ended early (e.g. interrupted)
            self.flwr("stop", str(run_id), CONNECTION, check=False)
        return run_id, status

    def runs(self) -> list[dict[str, Any]]:
        """All runs this SuperLink knows, as ``flwr ls --format json`` lists them."""
        proc = self.flwr("ls", CONNECTION, "--format", "json")
        return list(json.loads(proc.stdout).get("runs", []))

    def submit(
        self,
        app_dir: Path,
        run_config: Mapping[str, bool | int | float | str],
        federation_config: Mapping[str, bool | int | float | str],
    ) -> int:
        """Submit a run (non-blocking) and return its run id."""
        args = self._run_args(app_dir, run_config, federation_config)[1:] + ["--format", "json"]
        proc = self.flwr(*args, timeout=300.0)
        try:
            return int(json.loads(proc.stdout)["run-id"])
        except (ValueError, KeyError) as err:
            raise LaunchError(f"unexpected output from flwr run:\n{proc.stdout}\n{proc.stderr}") from err

    def status(self, run_id: int) -> str:
        """The run's status string, e.g. ``running`` or ``finished:completed``."""
        proc = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        runs = json.loads(proc.stdout).get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def logs(self, run_id: int) -> str:
        """The run's log so far."""
        return self.flwr("log", str(run_id), CONNECTION, "--show", check=False, timeout=60).stdout

    def wait(
        self, run_id: int, timeout: float, poll: float = 2.0, echo: IO[str] | None = None,
        echo_filter: Sequence[str] = ("[fedkd]",),
    ) -> str:
        """Wait until the run finishes; optionally echo new log lines containing a filter string.

        Returns the final status; raises :class:`LaunchError` on timeout.
        """
        deadline = time.monotonic() + timeout
        printed = 0
        while True:
            status = self.status(run_id)
            if echo is not None:
                lines = [ln for ln in self.logs(run_id).splitlines()
                         if any(f in ln for f in echo_filter)]
                for line in lines[printed:]:
                    print(line, file=echo, flush=True)
                printed = max(printed, len(lines))
            if status.startswith(TERMINAL_PREFIX):
                return status
            if time.monotonic() > deadline:
                self.flwr("stop", str(run_id), CONNECTION, check=False)
                raise LaunchError(f"run {run_id} did not finish within {timeout:g} s (status {status})")
            time.sleep(poll)
