"""Signing certificates: the operator's, or one livefuse makes for itself once.

C2PA accepts a leaf certificate only with SubjectKeyIdentifier, AuthorityKeyIdentifier,
KeyUsage digitalSignature and an extended key usage such as emailProtection; the
self-signed one made here has all four. Readers show it as valid but not trusted: it
proves the file is unchanged since this installation signed it, not who runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from livefuse.provenance.credentials import CredentialsError, SigningKey

log = logging.getLogger(__name__)

#: Where, under LIVEFUSE_HOME, the self-signed certificate and its key live.
SELF_SIGNED_DIR = "credentials"
SELF_SIGNED_CERT = "livefuse-signer.pem"
SELF_SIGNED_KEY = "livefuse-signer.key"


def algorithm_of(key_pem: bytes, where: os.PathLike[str] | str = "key") -> str:
    """The C2PA algorithm name for a PEM private key (EC P-256/384/521, Ed25519 or RSA)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(
            f"{where} is not an unencrypted PEM private key ({exc}); C2PA signing needs one"
        ) from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
        raise CredentialsError(f"{where}: EC curve {key.curve.name} is not one C2PA signs with (P-256, P-384, P-521)")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise CredentialsError(f"{where}: a {type(key).__name__} cannot sign C2PA manifests; use EC P-256 or RSA")


def make_self_signed(common_name: str, organisation: str = "livefuse (self-signed)") -> SigningKey:
    """A new EC P-256 key and a 10-year self-signed leaf certificate C2PA accepts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(cert.public_bytes(serialization.Encoding.PEM), key_pem, "es256")


def self_signed_key(home: Path) -> SigningKey:
    """This installation's own signing key in ``home``, made on first use (key file mode 0600)."""
    directory = home / SELF_SIGNED_DIR
    cert_path, key_path = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    if cert_path.is_file() and key_path.is_file():
        return SigningKey.load(cert_path, key_path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        made = make_self_signed(f"livefuse {os.uname().nodename if hasattr(os, 'uname') else 'install'}")
        # Key first, then the certificate: a half-made pair is never mistaken for a whole one.
        _write_new(key_path, made.key_pem, 0o600)
        _write_new(cert_path, made.cert_pem, 0o644)
    except OSError as exc:
        raise CredentialsError(
            f"cannot create the self-signed signing certificate in {directory} ({exc}); make it writable, "
            "or pass your own with --sign-cert/--sign-key"
        ) from exc
    log.info("made a self-signed signing certificate in %s (readers show it as valid but untrusted)", directory)
    return made


def _write_new(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
