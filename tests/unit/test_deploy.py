from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedkd.deploy import main, make_certificates, make_node_key


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
