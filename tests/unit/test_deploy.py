from __future__ import annotations

import ipaddress
import signal
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedkd.runtime.deploy import main, make_certificates, make_node_key
from fedkd.runtime.launch import _alive, descendants


def test_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path, ["127.0.0.1", "fedkd.example"])
    ca = x509.load_pem_x509_certificate(paths["ca-cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server-cert"].read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["fedkd.example"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca-key", "server-key"):
        assert stat.S_IMODE(paths[key].stat().st_mode) == 0o600


def test_node_keys_are_p384_in_openssh_format(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path, "node0")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_cli_requires_a_host(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["certs", "--out", str(tmp_path)])
    assert main(["node-keys", "--out", str(tmp_path), "--name", "a", "--name", "b"]) == 0
    assert (tmp_path / "a.pub").exists() and (tmp_path / "b").exists()


def test_local_federation_writes_a_tls_connection_and_reaps_what_a_kill_orphans(tmp_path: Path) -> None:
    from fedkd.runtime.deploy import LocalFederation, _start_time

    fed = LocalFederation(tmp_path)
    config = (tmp_path / "flwr-home" / "config.toml").read_text()
    assert f'address = "127.0.0.1:{fed.port}"' in config
    assert f'root-certificates = "{fed.certs["ca-cert"]}"' in config and "insecure" not in config
    # A crash (SIGKILL) leaves the child behind; stop() ends it, identified by PID and start time.
    parent = fed.start("parent", "sh", "-c", "sleep 60 & wait")
    deadline = time.monotonic() + 10
    while not (children := descendants(parent.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) == 1 and _start_time(children[0])
    fed.kill(parent)
    assert parent.returncode == -signal.SIGKILL and _start_time(children[0])  # orphaned, alive
    fed.stop()
    deadline = time.monotonic() + 5
    while _alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(children[0])
