"""Credentials for a deployed fedkd federation: a TLS CA and server certificate, node keys.

``python -m fedkd.runtime.deploy certs --out certs/ --host 127.0.0.1 --host localhost`` makes

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority (keep ``ca.key`` private);
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, with every
  ``--host`` in its subjectAltName (IP addresses and DNS names) and ``serverAuth`` usage: what
  ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``
  serves, and what SuperNodes and the ``flwr`` CLI trust with ``ca.crt``.

``python -m fedkd.runtime.deploy node-keys --out keys/ --name node0 --name node1`` makes ECDSA P-384 key
pairs in OpenSSH format (``node0`` private, ``node0.pub`` public) for SuperNode authentication:
register the public key with ``flwr supernode register node0.pub <connection>`` and start the
SuperNode with ``--auth-supernode-private-key node0``.

:class:`LocalFederation` runs a whole deployment on 127.0.0.1 (a TLS SuperLink with node
authentication, registered SuperNodes, runs submitted with ``flwr``) for the end-to-end tests and
the deployed-vs-simulation benchmark.

Private keys are written with mode 0600. Use real host names or addresses for real devices; the
certificate must name the address clients connect to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedkd.runtime.launch import (bin_path, descendants, free_port, offline_env, run_config_toml,
                                  stop_process)

_log = logging.getLogger(__name__)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def make_certificates(out: Path, hosts: Sequence[str], days: int = 365) -> dict[str, Path]:
    """Write a CA and a server certificate for ``hosts``; return the file paths by role."""
    if not hosts:
        raise ValueError("give at least one host name or IP address for the server certificate")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedkd CA")).issuer_name(_name("fedkd CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    key_format = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                      encryption_algorithm=serialization.NoEncryption())
    paths = {"ca-cert": out / "ca.crt", "ca-key": out / "ca.key",
             "server-cert": out / "server.pem", "server-key": out / "server.key"}
    _write(paths["ca-cert"], ca_cert.public_bytes(pem))
    _write(paths["ca-key"], ca_key.private_bytes(**key_format), private=True)
    _write(paths["server-cert"], server_cert.public_bytes(pem))
    _write(paths["server-key"], server_key.private_bytes(**key_format), private=True)
    return paths


def make_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write an ECDSA P-384 key pair in OpenSSH format: ``<name>`` and ``<name>.pub``."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write(private, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def _start_time(pid: int) -> str:
    """A process's start time (``/proc/<pid>/stat`` field 22): with the PID, its identity."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class Node:
    """One SuperNode of a :class:`LocalFederation`."""

    name: str
    proc: subprocess.Popen[bytes]
    node_id: int | None  # from its registration (None without node authentication)


#: The directory holding the ``fedkd`` package (on a SuperNode's path for ``fedkd.runtime.supernode``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Flower's SuperExec (the process that starts a ClientApp for each message a SuperNode holds, and
#: the ServerApp on the SuperLink) looks for new work every 1 s by default, and every phase of a
#: round waits for it. At 0.1 s it asks its own SuperNode (on loopback) ten times a second.
SUPEREXEC_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


class LocalFederation:
    """A whole deployment on 127.0.0.1 for tests and benchmarks: a TLS SuperLink (with node
    authentication unless ``node_auth=False``), registered SuperNodes, runs submitted with ``flwr``.

    Every process gets the offline environment and a private ``FLWR_HOME`` under ``root``, runs
    in its own session, logs to ``root/<name>.log``, and is stopped, with whatever it started, by
    :meth:`stop` (SuperNodes first). The ``flwr`` connection is named :attr:`CONNECTION`.
    """

    CONNECTION = "tls"

    def __init__(self, root: Path, node_auth: bool = True, warm: bool = False,
                 poll_interval: float | None = None) -> None:
        self.root = root
        self.node_auth = node_auth
        # SuperNodes started as `python -m fedkd.runtime.supernode --poll-interval <s>` (Flower's
        # SuperNode with its 3 s idle wait shortened, fedkd/runtime/supernode.py), or flower-supernode
        self.poll_interval = poll_interval
        # warm workers (client/warm.py): one directory per node under a short path (Unix
        # socket paths are limited to 108 bytes); stop() stops the workers by their PID files
        self.warm_root = Path(tempfile.mkdtemp(prefix="fkw-", dir="/tmp")) if warm else None
        (root / "flwr-home").mkdir(parents=True, exist_ok=True)
        self.env = {**offline_env(root / "flwr-home"), **SUPEREXEC_POLL}
        self.certs = make_certificates(root / "certs", ["127.0.0.1", "localhost"])
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.superlink_proc: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, Node] = {}
        # descendants of processes killed on purpose, (pid, start time): reaped on stop
        self._killed: list[tuple[int, str]] = []
        (root / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.CONNECTION}"\n\n[superlink.{self.CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca-cert"]}"\n'
        )

    # ----- processes ----------------------------------------------------------------------
    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a daemon in its own session, output to ``root/<name>.log``."""
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(list(args), env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def superlink(self, ready_timeout: float = 60.0) -> None:
        """Start the TLS SuperLink (state in ``root/state.db``) and wait for its health check."""
        c = self.certs
        auth = ["--enable-supernode-auth"] if self.node_auth else []
        self.superlink_proc = self.start(
            "superlink", bin_path("flower-superlink"), "--ssl-ca-certfile", str(c["ca-cert"]),
            "--ssl-certfile", str(c["server-cert"]), "--ssl-keyfile", str(c["server-key"]),
            "--disable-runtime-dependency-installation", *auth,
            "--database", str(self.root / "state.db"), "--host", "127.0.0.1",
            "--port", str(self.port))
        context = ssl.create_default_context(cafile=str(c["ca-cert"]))
        deadline = time.monotonic() + ready_timeout
        last_error: Exception | None = None  # why the last health check failed
        while time.monotonic() < deadline:
            if self.superlink_proc.poll() is not None:
                last_error = RuntimeError(f"it exited with code {self.superlink_proc.returncode}")
                break
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=2,
                                            context=context) as resp:
                    if resp.status == 200:
                        return
                    last_error = RuntimeError(f"health check answered HTTP {resp.status}")
            except OSError as err:
                last_error = err  # not listening yet: try again until the deadline
                time.sleep(0.5)
        raise RuntimeError(f"the TLS SuperLink did not become healthy ({last_error}); see "
                           f"{self.root / 'superlink.log'}") from last_error

    def flwr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command with this federation's ``FLWR_HOME``."""
        return subprocess.run([bin_path("flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def supernode(self, name: str, key: Path | None, partition: int, partitions: int,
                  node_config: str = "") -> subprocess.Popen[bytes]:
        """Start a SuperNode for ``partition`` of ``partitions`` (``key``: its private key)."""
        auth = ["--auth-supernode-private-key", str(key)] if key is not None else []
        config = f"partition-id={partition} num-partitions={partitions} {node_config}".strip()
        command, env = [bin_path("flower-supernode")], self.env
        if self.poll_interval is not None:
            command = [sys.executable, "-m", "fedkd.runtime.supernode", "--poll-interval",
                       str(self.poll_interval)]
            env = {**self.env, "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), self.env.get("PYTHONPATH", "")) if p)}
        return self.start(name, *command, "--root-certificates",
                          str(self.certs["ca-cert"]), "--superlink", f"127.0.0.1:{self.port}",
                          "--host", "127.0.0.1", "--port", str(free_port()), *auth,
                          "--node-config", config)

    def register(self, public_key: Path) -> int:
        """Register a node's public key; returns the node id the SuperLink gave it."""
        reg = self.flwr("supernode", "register", str(public_key), self.CONNECTION, "--format", "json")
        failed = f"registering {public_key} failed:\n{reg.stdout}\n{reg.stderr}"
        try:
            out = json.loads(reg.stdout)
        except json.JSONDecodeError as err:
            raise RuntimeError(failed) from err
        if not out.get("success"):
            raise RuntimeError(failed)
        return int(out["node-id"])

    def add_nodes(self, count: int, node_config: str = "") -> list[Node]:
        """Make keys, register them (with node authentication) and start ``count`` SuperNodes,
        ``node<i>`` holding partition ``i`` of ``count``; ``{name}`` in ``node_config`` becomes
        the node's name (``state-dir=/data/{name}``)."""
        nodes = []
        for i in range(count):
            name = f"node{i}"
            key, node_id = None, None
            if self.node_auth:
                key, public = make_node_key(self.root / "keys", name)
                node_id = self.register(public)
            config = node_config.replace("{name}", name)
            if self.warm_root is not None:
                config = f"{config} warm-dir='{self.warm_root / name}'".strip()
            node = Node(name, self.supernode(name, key, i, count, config), node_id)
            self.nodes[name] = node
            nodes.append(node)
        return nodes

    def restart_node(self, name: str, node_config: str = "") -> Node:
        """Start SuperNode ``name`` again (after :meth:`kill`), with its key and partition."""
        old = self.nodes[name]
        i, count = int(name.removeprefix("node")), len(self.nodes)
        key = self.root / "keys" / name if self.node_auth else None
        proc = self.supernode(name, key, i, count, node_config.replace("{name}", name))
        self.nodes[name] = Node(name, proc, old.node_id)
        return self.nodes[name]

    def online_nodes(self) -> list[int]:
        """Ids of the nodes the SuperLink lists as online (needs node authentication)."""
        out = self.flwr("supernode", "list", self.CONNECTION, "--format", "json", timeout=60)
        try:
            nodes = json.loads(out.stdout).get("nodes", [])
        except json.JSONDecodeError as err:  # polled: the next call may succeed
            _log.warning("flwr supernode list: no JSON (%s), counted as no node online: %s",
                         err, (out.stdout + out.stderr)[-500:])
            return []
        return [int(n["node-id"]) for n in nodes if n.get("status") == "online"]

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` nodes are online."""
        deadline = time.monotonic() + timeout
        while len(self.online_nodes()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} SuperNodes online after {timeout:g} s")
            time.sleep(1.0)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL one process, as a crash would (its children are left to notice by
        themselves, as Flower's are meant to; :meth:`stop` reaps any that do not)."""
        self._killed.extend((pid, _start_time(pid)) for pid in descendants(proc.pid))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def serverapp_pids(self) -> list[int]:
        """PIDs of the running ``flwr-serverapp`` processes under the SuperLink."""
        if self.superlink_proc is None:
            return []
        pids = []
        for pid in descendants(self.superlink_proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"flwr-serverapp") for part in cmdline[:2]):
                pids.append(pid)
        return pids

    def stop(self) -> None:
        """Stop every process started here, SuperNodes first, then the SuperLink."""
        for proc in reversed(self.procs):
            stop_process(proc, grace=15.0)
        for pid, started in self._killed:
            if started and _start_time(pid) == started:  # still the same process
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.warm_root is not None:  # the warm workers the nodes started, by their PID files
            from client.warm import stop_workers

            stop_workers(self.warm_root)
            shutil.rmtree(self.warm_root, ignore_errors=True)

    # ----- runs ---------------------------------------------------------------------------
    def write_run_config(self, name: str, flat: dict[str, bool | int | float | str]) -> Path:
        """Flat dotted run-config keys as a TOML file under ``root``."""
        path = self.root / f"{name}.toml"
        path.write_text(run_config_toml(flat))
        return path

    def run(self, app_dir: Path, run_config: Path, timeout: float = 900) -> tuple[int | None, str, str]:
        """``flwr run --stream``: wait for the run to end. Returns ``(run id, status, log)``;
        the status comes from ``flwr ls`` (``flwr run`` exits 0 even when the ServerApp failed).
        """
        out = self.flwr("run", str(app_dir), self.CONNECTION, "--run-config", str(run_config),
                        "--stream", timeout=timeout)
        found = re.search(r"Successfully started run (\d+)", out.stdout)
        if found is None:
            return None, "not started", out.stdout + out.stderr
        run_id = int(found.group(1))
        return run_id, self.status(run_id), out.stdout + out.stderr

    def submit(self, app_dir: Path, run_config: Path) -> int:
        """Submit a run without waiting; returns its run id."""
        out = self.flwr("run", str(app_dir), self.CONNECTION, "--run-config", str(run_config),
                        "--format", "json", timeout=300)
        try:
            return int(json.loads(out.stdout)["run-id"])
        except (json.JSONDecodeError, KeyError) as err:
            raise RuntimeError(f"flwr run did not start a run:\n{out.stdout}\n{out.stderr}") from err

    def status(self, run_id: int) -> str:
        """A run's status, e.g. ``running`` or ``finished:completed``."""
        out = self.flwr("ls", self.CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            runs = json.loads(out.stdout).get("runs", [])
        except json.JSONDecodeError as err:  # polled: the next call may succeed
            _log.warning("flwr ls --run-id %d: no JSON (%s), status unknown: %s", run_id, err,
                         (out.stdout + out.stderr)[-500:])
            runs = []
        return str(runs[0]["status"]) if runs else "unknown"

    def log(self, run_id: int) -> str:
        """A run's log so far."""
        return self.flwr("log", str(run_id), self.CONNECTION, "--show", timeout=60).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedkd.runtime.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="a CA and a SuperLink certificate",
                           epilog="example: python -m fedkd.runtime.deploy certs --out certs --host 127.0.0.1 --host localhost")
    certs.add_argument("--out", required=True, type=Path)
    certs.add_argument("--host", action="append", required=True,
                       help="an IP address or DNS name clients use to reach the SuperLink; repeatable")
    certs.add_argument("--days", type=int, default=365)
    keys = sub.add_parser("node-keys", help="SuperNode authentication key pairs",
                          epilog="example: python -m fedkd.runtime.deploy node-keys --out keys --name node0")
    keys.add_argument("--out", required=True, type=Path)
    keys.add_argument("--name", action="append", required=True, help="key file name; repeatable")
    args = parser.parse_args(argv)
    if args.command == "certs":
        for role, path in make_certificates(args.out, args.host, args.days).items():
            print(f"{role}: {path}")
    else:
        for name in args.name:
            private, public = make_node_key(args.out, name)
            print(f"{name}: {private} (private, for the SuperNode), {public} (register it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
