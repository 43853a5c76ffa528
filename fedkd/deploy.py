"""Credentials for a deployed fedkd federation: a TLS CA and server certificate, node keys.

``python -m fedkd.deploy certs --out certs/ --host 127.0.0.1 --host localhost`` makes

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority (keep ``ca.key`` private);
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, with every
  ``--host`` in its subjectAltName (IP addresses and DNS names) and ``serverAuth`` usage: what
  ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``
  serves, and what SuperNodes and the ``flwr`` CLI trust with ``ca.crt``.

``python -m fedkd.deploy node-keys --out keys/ --name node0 --name node1`` makes ECDSA P-384 key
pairs in OpenSSH format (``node0`` private, ``node0.pub`` public) for SuperNode authentication:
register the public key with ``flwr supernode register node0.pub <connection>`` and start the
SuperNode with ``--auth-supernode-private-key node0``.

Private keys are written with mode 0600. Use real host names or addresses for real devices; the
certificate must name the address clients connect to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedkd.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="a CA and a SuperLink certificate",
                           epilog="example: python -m fedkd.deploy certs --out certs --host 127.0.0.1 --host localhost")
    certs.add_argument("--out", required=True, type=Path)
    certs.add_argument("--host", action="append", required=True,
                       help="an IP address or DNS name clients use to reach the SuperLink; repeatable")
    certs.add_argument("--days", type=int, default=365)
    keys = sub.add_parser("node-keys", help="SuperNode authentication key pairs",
                          epilog="example: python -m fedkd.deploy node-keys --out keys --name node0")
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
