"""The local cluster's certificates: kept across restarts, new identities added."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from testbed import certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generate_keeps_existing_files(tmp_path: Path) -> None:
    certs.generate(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    certs.generate(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before


def test_missing_identity_issued_by_same_ca(tmp_path: Path) -> None:
    certs.generate(tmp_path)
    admin = (tmp_path / "admin.crt").read_bytes()
    (tmp_path / "deployer.crt").unlink()
    (tmp_path / "deployer.key").unlink()

    certs.generate(tmp_path)

    assert (tmp_path / "admin.crt").read_bytes() == admin
    deployer = load(tmp_path / "deployer.crt")
    ca = load(tmp_path / "ca.crt")
    assert deployer.issuer == ca.subject
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert deployer.signature_hash_algorithm is not None
    public_key.verify(
        deployer.signature,
        deployer.tbs_certificate_bytes,
        ec.ECDSA(deployer.signature_hash_algorithm),
    )
    names = deployer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert names[0].value == "ventros-deployer"
    assert (tmp_path / "deployer.key").stat().st_mode & 0o777 == 0o600
