"""``renkei dev-ca``: a development CA, a server certificate and a client certificate.

For development and tests only (production certificates come from the region's CA). Every file
is written 0600 in a 0700 folder: ca.pem / ca-key.pem, server.pem / server-key.pem (SAN: the
hosts given, by default localhost and 127.0.0.1), client.pem / client-key.pem (for system
clients or the hub's own Kafka connection).
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
VALID_DAYS = 365


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode on open: set it


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Renkei Hub development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _issue(ca_key, ca_name, subject: str, usage, hosts: list[str] | None):  # noqa: ANN001
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_dev_ca(folder: Path, hosts: list[str] | None = None) -> dict[str, Path]:
    hosts = list(hosts or DEFAULT_HOSTS)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Renkei Hub development CA")
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server = _issue(ca_key, ca_name, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    client_key, client = _issue(
        ca_key, ca_name, "renkei-dev-client", ExtendedKeyUsageOID.CLIENT_AUTH, None
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca": (folder / "ca.pem", ca.public_bytes(pem)),
        "ca_key": (folder / "ca-key.pem", _key_pem(ca_key)),
        "server": (folder / "server.pem", server.public_bytes(pem)),
        "server_key": (folder / "server-key.pem", _key_pem(server_key)),
        "client": (folder / "client.pem", client.public_bytes(pem)),
        "client_key": (folder / "client-key.pem", _key_pem(client_key)),
    }
    for path, data in files.values():
        _write(path, data)
    return {name: path for name, (path, _data) in files.items()}
