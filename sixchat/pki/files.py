"""
The files that carry a CA and identities: CA directories, PKCS#12 identities, and private
files written so that no other user can read them and no reader sees half a file.

CA directory format (what C{sixchat pki init-ca} writes and L{load_ca} reads)::

    DIR/            mode 0700
    DIR/ca.pem      the CA certificate, PEM (this is the trust anchor to give to peers)
    DIR/ca.key      the CA private key, PKCS#8 PEM, mode 0600

The key is B{not encrypted} by default: a small CA usually signs from scripts, and the
directory's 0700 mode is the protection. Pass a password to L{init_ca} (C{--password-file})
for an encrypted PKCS#8 key. L{load_ca} also reads CAs made by hand with the C{openssl}
tool: besides the canonical names it looks for C{ca.crt}, C{cacert.pem}, C{ca-cert.pem} and
C{ca-key.pem}, C{ca.key.pem}, C{private/cakey.pem}, and a key stored inside C{ca.pem}, in
PKCS#8 or the traditional C{EC}/C{RSA PRIVATE KEY} forms.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12

from sixchat.errors import SixchatError
from sixchat.pki.issue import create_ca

__all__ = [
    "CA_CERT_NAMES",
    "CA_KEY_NAMES",
    "P12_KDF_ROUNDS",
    "PKIError",
    "init_ca",
    "load_ca",
    "load_ca_cert",
    "load_ca_chain",
    "write_ca",
    "write_p12",
    "write_private_file",
]

#: Canonical names first; the others are what people commonly get from C{openssl req -x509}.
CA_CERT_NAMES = ("ca.pem", "ca.crt", "cacert.pem", "ca-cert.pem")
CA_KEY_NAMES = ("ca.key", "ca-key.pem", "ca.key.pem", "private/cakey.pem")

#: PBKDF2-SHA256 rounds for password-protected PKCS#12 files (the OWASP 2023 figure). Loading
#: costs well under a second, once per process start, and slows offline guessing accordingly.
P12_KDF_ROUNDS = 600_000


class PKIError(SixchatError):
    """A CA operation failed; the message is one actionable line for the command line."""


def write_private_file(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> None:
    """
    Write C{data} so that no other user can ever read it and no reader sees half a file.

    The bytes go to a fresh temporary file created with mode 0600 (C{O_CREAT|O_EXCL}, so a
    planted file or symlink is never followed) in the target's directory, then are renamed
    over the target. Without C{overwrite} an existing target is refused (L{PKIError}).
    """
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise PKIError(f"{path} already exists (remove it or use --force)")
    directory = path.parent
    for _attempt in range(16):
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 16 collisions of 48 random bits
        raise PKIError(f"cannot create a temporary file in {directory}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not overwrite:
            # link() fails if the target appeared meanwhile, unlike replace().
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PKIError(f"{path} already exists (remove it or use --force)") from None
            except OSError:
                # Filesystems without hard links: fall back to the (racy) check above.
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_p12(
    path: str | os.PathLike[str],
    key: PrivateKeyTypes,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: bytes | None,
    *,
    overwrite: bool = False,
    friendly_name: bytes | None = None,
) -> None:
    """
    Write an identity as PKCS#12, mode 0600, atomically (see L{write_private_file}).

    C{chain} (intermediates, and the root if you like: loaders drop self-signed certificates)
    goes into the file so the identity is complete on its own. With a password, key and
    certificates are encrypted with PBES2 (PBKDF2-SHA256, AES-256-CBC) and the MAC uses
    HMAC-SHA-256, the modern profile OpenSSL 3 also writes; without one the file is plain and
    only its mode protects the key.
    """
    if password is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    else:
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(P12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password)
        )
    data = pkcs12.serialize_key_and_certificates(
        friendly_name,
        key,  # type: ignore[arg-type]
        cert,
        list(chain) or None,
        encryption,
    )
    write_private_file(path, data, overwrite=overwrite)


def _pem_key(key: PrivateKeyTypes, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_ca(
    directory: str | os.PathLike[str],
    key: PrivateKeyTypes,
    cert: x509.Certificate,
    *,
    password: bytes | None = None,
) -> None:
    """
    Store a CA in the directory format of this module. The directory may exist but must be
    empty: a second CA in the same place would silently orphan every certificate of the first.
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise PKIError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()):
            raise PKIError(f"{directory} is not empty; refusing to create a CA there")
        os.chmod(directory, 0o700)
    else:
        try:
            directory.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise PKIError(f"cannot create {directory}: {e.strerror}") from None
    write_private_file(directory / "ca.key", _pem_key(key, password))
    cert_path = directory / "ca.pem"
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def init_ca(
    directory: str | os.PathLike[str],
    common_name: str = "sixchat CA",
    key_type: str = "ed25519",
    days: int = 3650,
    *,
    password: bytes | None = None,
) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """L{create_ca} followed by L{write_ca}: what C{sixchat pki init-ca} does."""
    directory = Path(directory)
    if directory.exists() and directory.is_dir() and any(directory.iterdir()):
        raise PKIError(f"{directory} is not empty; refusing to create a CA there")
    key, cert = create_ca(common_name, key_type, days)
    write_ca(directory, key, cert, password=password)
    return key, cert


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PKIError(f"cannot read {path}: {e.strerror}") from None


def _load_private_key(data: bytes, where: Path, password: bytes | None) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise PKIError(
                f"{where} is encrypted (give its password with --ca-password-file)"
            ) from None
        # A password for an unencrypted key: the key is usable, the password was just spare.
        return serialization.load_pem_private_key(data, None)
    except ValueError:
        if password is not None:
            raise PKIError(f"wrong password for {where}, or the key is damaged") from None
        raise PKIError(f"{where} does not hold a readable private key") from None
    except Exception:  # UnsupportedAlgorithm and friends
        raise PKIError(f"{where} holds a private key of an unsupported type") from None


def load_ca(
    directory: str | os.PathLike[str], password: bytes | None = None
) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """
    Read a CA directory (the format in the module docstring, or an C{openssl}-made one).

    @raise PKIError: if the directory, certificate or key is missing or unreadable, the key
        is encrypted and no password was given, the key does not belong to the certificate,
        or the certificate is not a CA (basicConstraints cA=TRUE, keyCertSign if keyUsage).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PKIError(f"CA directory {directory} does not exist (create one with "
                       "'sixchat pki init-ca')")
    cert_path = next((directory / n for n in CA_CERT_NAMES if (directory / n).is_file()), None)
    if cert_path is None:
        raise PKIError(f"no CA certificate in {directory} (expected {directory / 'ca.pem'})")
    cert_data = _read(cert_path)
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(cert_data)]
        except ValueError:
            raise PKIError(f"{cert_path} holds no readable certificate") from None
    cert = certs[0]

    key_path = next((directory / n for n in CA_KEY_NAMES if (directory / n).is_file()), None)
    if key_path is None:
        if b"PRIVATE KEY-----" in cert_data:
            key_path, key_data = cert_path, cert_data
        else:
            raise PKIError(f"no CA key in {directory} (expected {directory / 'ca.key'})")
    else:
        key_data = _read(key_path)
    key = _load_private_key(key_data, key_path, password)
    if not isinstance(
        key,
        ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey,
    ):
        raise PKIError(f"{key_path} holds a {type(key).__name__}, which cannot sign certificates")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise PKIError(f"{key_path} is not the key of {cert_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PKIError(f"{cert_path} is not a CA certificate (it lacks basicConstraints cA=TRUE)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.key_cert_sign:
        raise PKIError(f"{cert_path} may not sign certificates (keyUsage lacks keyCertSign)")
    return key, cert


def load_ca_cert(directory: str | os.PathLike[str]) -> x509.Certificate:
    """
    Only the CA certificate of a CA directory, without its key: enough to name the issuer
    of a revocation, and readable by someone who may not read the key.

    @raise PKIError: if the directory or certificate is missing or unreadable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PKIError(f"CA directory {directory} does not exist")
    cert_path = next((directory / n for n in CA_CERT_NAMES if (directory / n).is_file()), None)
    if cert_path is None:
        raise PKIError(f"no CA certificate in {directory} (expected {directory / 'ca.pem'})")
    data = _read(cert_path)
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise PKIError(f"{cert_path} holds no readable certificate") from None


def load_ca_chain(directory: str | os.PathLike[str]) -> list[x509.Certificate]:
    """
    The certificates after the first in the CA certificate file: the chain above an
    intermediate CA, which its leaves must carry. Empty for a root CA.
    """
    directory = Path(directory)
    cert_path = next((directory / n for n in CA_CERT_NAMES if (directory / n).is_file()), None)
    if cert_path is None:
        return []
    data = _read(cert_path)
    try:
        return x509.load_pem_x509_certificates(data)[1:]
    except ValueError:
        return []


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
