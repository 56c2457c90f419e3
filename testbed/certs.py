"""Certificates and keys for the local control plane.

One self-signed CA signs the API server's serving certificate and a client
certificate per identity (the admin, the controller-manager, the scheduler,
the simulator, and the deployer that the benchmark runs). The service-account
signing key is a separate RSA key pair. Files are written with mode 0600
because they hold private keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
# The first address of the service range; pods reach the API server through it.
SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's subject: user name and RBAC groups."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


CLIENT_IDENTITIES = (
    ClientIdentity("admin", "kubernetes-admin", ("system:masters",)),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("simulator", "ventros-simulator", ("system:masters",)),
    # The benchmark's worker and helm: the audit policy logs every request of
    # this user, so each deploy's API requests can be counted.
    ClientIdentity("deployer", "ventros-deployer", ("system:masters",)),
)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations
    ]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def generate(directory: Path) -> None:
    """Write ca, apiserver, client and service-account key files into directory.

    Existing files are kept, so a restarted cluster keeps trusting the tokens
    and kubeconfigs it issued before. An identity added since the files were
    written gets its certificate from the existing CA.
    """
    ca_name = _name("ventros-local-ca")
    if (directory / "ca.crt").exists():
        ca_key = serialization.load_pem_private_key(
            (directory / "ca.key").read_bytes(), password=None
        )
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        for identity in CLIENT_IDENTITIES:
            if not (directory / f"{identity.file_stem}.crt").exists():
                _issue(
                    directory,
                    ca_key,
                    ca_name,
                    identity.file_stem,
                    _name(identity.user, identity.groups),
                    server=False,
                )
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        _builder(ca_name, ca_name)
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    _issue(directory, ca_key, ca_name, "apiserver", _name("kube-apiserver"), True)
    for identity in CLIENT_IDENTITIES:
        subject = _name(identity.user, identity.groups)
        _issue(directory, ca_key, ca_name, identity.file_stem, subject, server=False)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(directory / "sa.key", _key_pem(sa_key))
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    _write_private(directory / "ca.key", _key_pem(ca_key))
    # ca.crt last: its presence marks the set as complete.
    (directory / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    stem: str,
    subject: x509.Name,
    server: bool,
) -> None:
    """Write stem.key and stem.crt, a certificate for subject signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(subject, ca_name).public_key(key.public_key())
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName(dns)
            for dns in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        names += [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)
        ]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(directory / f"{stem}.key", _key_pem(key))
    (directory / f"{stem}.crt").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
    )
