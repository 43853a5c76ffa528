"""A real deployment on 127.0.0.1: SuperLink with TLS and node authentication, SuperNodes, FD.

Marked ``e2e`` (left out of the default run; ``.venv/bin/python -m pytest -m e2e`` runs it).
Every process is started in its own session and stopped, with its children, by PID.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedkd.deploy import make_certificates, make_node_key
from fedkd.launch import bin_path, free_port, offline_env, stop_process
from fedkd.results import read_metrics

APP_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


class Federation:
    """Processes of one local deployment, stopped together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = offline_env(root / "flwr-home")
        self.certs = make_certificates(root / "certs", ["127.0.0.1", "localhost"])
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        (root / "flwr-home").mkdir()
        (root / "flwr-home" / "config.toml").write_text(
            '[superlink]\ndefault = "tls"\n\n[superlink.tls]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca-cert"]}"\n'
        )

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(list(args), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def superlink(self) -> None:
        c = self.certs
        self.start("superlink", bin_path("flower-superlink"), "--ssl-ca-certfile", str(c["ca-cert"]),
                   "--ssl-certfile", str(c["server-cert"]), "--ssl-keyfile", str(c["server-key"]),
                   "--disable-runtime-dependency-installation", "--enable-supernode-auth",
                   "--database", str(self.root / "state.db"), "--host", "127.0.0.1",
                   "--port", str(self.port))
        import ssl

        context = ssl.create_default_context(cafile=str(c["ca-cert"]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=2,
                                            context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the TLS SuperLink did not become healthy")

    def flwr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([bin_path("flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def supernode(self, name: str, key: Path, partition: int, partitions: int) -> subprocess.Popen[bytes]:
        return self.start(name, bin_path("flower-supernode"), "--root-certificates",
                          str(self.certs["ca-cert"]), "--superlink", f"127.0.0.1:{self.port}",
                          "--host", "127.0.0.1", "--port", str(free_port()),
                          "--auth-supernode-private-key", str(key),
                          "--node-config", f"partition-id={partition} num-partitions={partitions}")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # SuperNodes first, then the SuperLink
            stop_process(proc, grace=15.0)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()


def test_fd_over_tls_with_node_authentication(federation: Federation, tmp_path: Path) -> None:
    federation.superlink()
    keys = [make_node_key(tmp_path / "keys", f"node{i}") for i in range(3)]
    for _, public in keys:
        reg = federation.flwr("supernode", "register", str(public), "tls", "--format", "json")
        assert json.loads(reg.stdout)["success"], reg.stdout + reg.stderr
    for i, (private, _) in enumerate(keys):
        federation.supernode(f"node{i}", private, i, 3)

    # A SuperNode whose key was never registered is refused and exits.
    rogue_key, _ = make_node_key(tmp_path / "keys", "rogue")
    rogue = federation.supernode("rogue", rogue_key, 0, 3)
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate" in (tmp_path / "rogue.log").read_text()

    (tmp_path / "run.toml").write_text(
        'algorithm = "fd"\nnum-server-rounds = 2\n[data]\ndataset = "digits"\n'
        'num-partitions = 3\n[train]\nmodel = "mlp"\nlocal-steps = 10\n[federation]\n'
        f'min-nodes = 3\n[output]\ndir = "{tmp_path / "out"}"\nrun-name = "fd"\n'
    )
    run = federation.flwr("run", str(APP_DIR), "tls", "--run-config", str(tmp_path / "run.toml"),
                          "--stream", timeout=900)
    assert "[fedkd] done" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    status = json.loads(federation.flwr("ls", "tls", "--format", "json").stdout)["runs"][0]["status"]
    assert status == "finished:completed"
    rows = read_metrics(tmp_path / "out" / "fd")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["num-failures"] == 0 and len(r["clients"]) == 3 for r in rows)
