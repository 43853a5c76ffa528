"""A warm worker behind the ClientApp: torch and the app stay loaded across messages on a device.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message a SuperNode receives,
and that process exits after one reply. Importing torch and the app costs each message about as
much as the work itself. With node config ``warm-dir='/run/fedkd'`` the ClientApp process stays
light (:mod:`client.entry`): it forwards the message and the node's ``Context`` to a worker
process that keeps the app imported (and its caches: parsed config, algorithm, data split,
models), and returns the worker's reply. Flower itself is not changed: it still starts and ends
one process per message, and still holds the node state, which travels to the worker and back.

The worker:

* is started by the first message that finds none (a lock file keeps two from starting), in
  its own session, as ``python -m client.warm serve <dir>``, with the app's directory on its
  path; its PID is in ``<dir>/<app>/worker.pid``;
* listens on a Unix socket ``<dir>/<app>/worker.sock`` in a directory only this user may enter,
  and accepts only clients that know the random key in ``worker.key`` (``multiprocessing``'s
  HMAC challenge); ``<app>`` names the app's code, so a new app version gets a new worker;
* answers one message at a time, as the node would, and exits after ``warm-idle-s`` seconds
  (default 600) without one.

An error in the worker reaches the server as the client error it would have been without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

#: The Flower version whose message and context serialisation (``flwr.common.serde``, an internal
#: module) this was written against and tested with; on another one ``warm-dir`` is refused.
TESTED_FLOWER_VERSION = "1.42.0"
#: How long a message waits for a worker it started to accept connections (torch import, etc.).
START_TIMEOUT_S = 120.0
DEFAULT_IDLE_S = 600.0
APP_DIR = Path(__file__).resolve().parents[1]


class WarmWorkerError(RuntimeError):
    """The worker could not be reached or started, or it failed on the message."""


def app_key(app_dir: Path = APP_DIR) -> str:
    """Names the app's code: the hash of its directory path and of every Python file's contents
    and modification time (a new FAB, or an edited checkout, gets a new worker)."""
    digest = hashlib.sha256(str(app_dir).encode())
    for path in sorted(app_dir.glob("*/**/*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        stat = path.stat()
        digest.update(f"{path.relative_to(app_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


#: The longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107


def worker_dir(root: Path, app_dir: Path = APP_DIR) -> Path:
    """``<root>/<app key>``, made private to this user (mode 0700)."""
    path = Path(root).expanduser().absolute() / app_key(app_dir)
    if len(str(path / "worker.sock").encode()) > MAX_SOCKET_PATH:
        raise WarmWorkerError(
            f"warm-dir {root} is too long for a Unix socket ({path / 'worker.sock'} exceeds "
            f"{MAX_SOCKET_PATH} bytes): choose a shorter directory")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _connect(directory: Path) -> Connection | None:
    sock, key = directory / "worker.sock", directory / "worker.key"
    if not sock.exists() or not key.exists():
        return None
    try:
        return Client(str(sock), family="AF_UNIX", authkey=key.read_bytes())
    except (ConnectionRefusedError, FileNotFoundError):
        return None


def _start_worker(directory: Path, idle_s: float) -> None:
    """Start ``python -m client.warm serve`` in its own session (output to ``worker.log``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APP_DIR), env.get("PYTHONPATH", "")) if p)
    with (directory / "worker.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "client.warm", "serve", str(directory), "--idle-s", str(idle_s)],
            cwd=APP_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def connect(root: Path, idle_s: float = DEFAULT_IDLE_S) -> Connection:
    """A connection to this app's worker under ``root``, starting it if there is none."""
    directory = worker_dir(root)
    conn = _connect(directory)
    if conn is not None:
        return conn
    with _locked(directory / "spawn.lock"):
        conn = _connect(directory)  # another message may have started it meanwhile
        if conn is not None:
            return conn
        for stale in ("worker.sock", "worker.key"):
            (directory / stale).unlink(missing_ok=True)
        _start_worker(directory, idle_s)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            conn = _connect(directory)
            if conn is not None:
                return conn
            time.sleep(0.05)
    log = (directory / "worker.log").read_text(errors="replace")[-3000:]
    raise WarmWorkerError(f"the warm worker in {directory} did not start within "
                          f"{START_TIMEOUT_S:g} s; its log ends:\n{log}")


def check_flower_version(version: str | None = None) -> None:
    """Refuse to run on a Flower version other than :data:`TESTED_FLOWER_VERSION`."""
    if version is None:
        import flwr

        version = getattr(flwr, "__version__", None)
    if version != TESTED_FLOWER_VERSION:
        raise WarmWorkerError(
            f"node config warm-dir relies on Flower {TESTED_FLOWER_VERSION}'s internal message "
            f"serialisation, and this node runs Flower {version}: remove warm-dir from the node "
            "config (every message then runs in its own process)")


def forward(root: Path, message: Any, context: Any, idle_s: float = DEFAULT_IDLE_S) -> Any:
    """Have the worker answer ``message`` for ``context`` (Flower ``Message`` and ``Context``);
    returns the reply ``Message`` and updates ``context.state`` in place."""
    check_flower_version()
    from flwr.app import Message
    from flwr.common.serde import (
        context_from_proto,
        context_to_proto,
        message_from_proto,
        message_to_proto,
    )

    request = (message_to_proto(message).SerializeToString(),
               context_to_proto(context).SerializeToString())
    conn = connect(root, idle_s)
    try:
        conn.send(request)
        status, payload = conn.recv()
    except (EOFError, OSError) as err:
        raise WarmWorkerError(f"the warm worker under {root} dropped the connection: {err}") from err
    finally:
        conn.close()
    if status != "ok":
        raise WarmWorkerError(f"the warm worker failed on the message:\n{payload}")
    reply_bytes, state_bytes = payload
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    reply = message_from_proto(ProtoMessage.FromString(reply_bytes))
    context.state = context_from_proto(ProtoContext.FromString(state_bytes)).state
    return Message(content=reply.content, reply_to=message)


def _worker_log(line: str) -> None:
    """One line in the worker's log (its stderr is ``worker.log``)."""
    print(f"client.warm worker {os.getpid()}: {line}", file=sys.stderr, flush=True)


def serve(directory: Path, idle_s: float,
          handle: Callable[[Any, Any], Any] | None = None) -> None:
    """The worker: answer messages until ``idle_s`` seconds pass without one."""
    import socket
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import answer_challenge, deliver_challenge

    from flwr.common.serde import (
        context_from_proto,
        context_to_proto,
        message_from_proto,
        message_to_proto,
    )
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    if handle is None:
        from client.app import _handle as handle  # the heavy imports, once

    key = secrets.token_bytes(32)
    sock_path, key_path = directory / "worker.sock", directory / "worker.key"
    sock_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    server.listen()
    server.settimeout(idle_s)
    tmp = directory / f".worker.key.{os.getpid()}"
    tmp.write_bytes(key)
    os.chmod(tmp, 0o600)
    os.replace(tmp, key_path)  # published last: a client that reads it finds a listener
    (directory / "worker.pid").write_text(f"{os.getpid()}\n")
    try:
        while True:
            try:
                accepted, _ = server.accept()
            except socket.timeout:
                break  # idle: exit; the next message starts a new worker
            accepted.setblocking(True)
            conn = Connection(accepted.detach())
            with conn:
                try:  # the same mutual HMAC challenge as multiprocessing's Listener
                    deliver_challenge(conn, key)
                    answer_challenge(conn, key)
                    message_bytes, context_bytes = conn.recv()
                except (AuthenticationError, EOFError, OSError, ValueError) as err:
                    # a client without the key, or one that went away: refused, in worker.log
                    _worker_log(f"connection refused before a message ({type(err).__name__}: "
                                f"{err})")
                    continue
                try:
                    message = message_from_proto(ProtoMessage.FromString(message_bytes))
                    context = context_from_proto(ProtoContext.FromString(context_bytes))
                    reply = handle(message, context)
                    answer = ("ok", (message_to_proto(reply).SerializeToString(),
                                     context_to_proto(context).SerializeToString()))
                except Exception:
                    answer = ("error", traceback.format_exc())
                try:
                    conn.send(answer)
                except OSError as err:  # the message's process went away: it saw no answer
                    _worker_log(f"the answer could not be sent ({type(err).__name__}: {err})")
    finally:
        server.close()
        if key_path.exists() and key_path.read_bytes() == key:  # still ours
            key_path.unlink(missing_ok=True)
            sock_path.unlink(missing_ok=True)
            (directory / "worker.pid").unlink(missing_ok=True)


def stop_workers(root: Path, wait_s: float = 5.0) -> list[int]:
    """SIGTERM every worker whose PID file lies under ``root`` (any node, any app version) and
    wait up to ``wait_s`` for each to exit; returns their PIDs. For whoever started the nodes
    (tests, benchmarks): a worker otherwise exits after its idle time."""
    import signal

    pids = []
    for pid_file in Path(root).glob("**/worker.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue  # a stale PID file: that worker is gone
        except (ValueError, OSError) as err:  # unreadable, not a PID, or not ours to signal
            print(f"client.warm: cannot stop the worker of {pid_file} ({type(err).__name__}: "
                  f"{err})", file=sys.stderr)
            continue
        pids.append(pid)
    deadline = time.monotonic() + wait_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    return pids


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m client.warm")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run a warm worker in DIRECTORY (started by the ClientApp)")
    p.add_argument("directory", type=Path)
    p.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    serve(args.directory, args.idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
