"""
The certificate-authority side of the protocol's PKI (spec §4): keys, CA and leaf
certificates, CRLs, and the files that carry them.

Everything here is a pure function over C{cryptography} objects so that the C{sixchat pki}
command line, the registry's CA and the tests all make certificates the same way; nothing in
this module talks to the network or imports Twisted.

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

Signature hashes follow the signing key: none for EdDSA, SHA-256 for RSA (PKCS#1 v1.5) and
P-256, SHA-384 for P-384 and SHA-512 for P-521, so no certificate we make ever falls below the
chain-strength floor of §11.7.
"""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Iterable, Sequence
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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sixchat.errors import SixchatError

__all__ = [
    "CA_CERT_NAMES",
    "CA_KEY_NAMES",
    "EKU_NAMES",
    "KEY_TYPES",
    "P12_KDF_ROUNDS",
    "PKIError",
    "create_ca",
    "create_intermediate",
    "describe_key",
    "generate_key",
    "init_ca",
    "issue_crl",
    "issue_leaf",
    "issue_server",
    "load_ca",
    "load_ca_cert",
    "load_ca_chain",
    "random_serial",
    "write_ca",
    "write_p12",
    "write_private_file",
]

#: Key types the command line offers: exactly the leaf key types of spec §4 (and 3072-bit RSA).
KEY_TYPES = ("ed25519", "p256", "p384", "rsa2048", "rsa3072")

#: Canonical names first; the others are what people commonly get from C{openssl req -x509}.
CA_CERT_NAMES = ("ca.pem", "ca.crt", "cacert.pem", "ca-cert.pem")
CA_KEY_NAMES = ("ca.key", "ca-key.pem", "ca.key.pem", "private/cakey.pem")

#: Extended key usages by the names used in this API.
EKU_NAMES = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}

#: PBKDF2-SHA256 rounds for password-protected PKCS#12 files (the OWASP 2023 figure). Loading
#: costs well under a second, once per process start, and slows offline guessing accordingly.
P12_KDF_ROUNDS = 600_000

#: Certificates are back-dated this much so a peer whose clock runs a little behind still
#: accepts a certificate issued a moment ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)

_KEY_USAGE_FIELDS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


class PKIError(SixchatError):
    """A CA operation failed; the message is one actionable line for the command line."""


def generate_key(key_type: str) -> CertificateIssuerPrivateKeyTypes:
    """
    A fresh private key of one of L{KEY_TYPES}.

    @raise ValueError: for any other key type name.
    """
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa2048", "rsa3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r} (choose one of {', '.join(KEY_TYPES)})")


def describe_key(key: PrivateKeyTypes | CertificatePublicKeyTypes) -> str:
    """A short human name for a key, for messages and C{sixchat pki show}."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curve.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def random_serial() -> int:
    """A random positive 128-bit serial (RFC 5280 §4.1.2.2: unique, at most 20 octets)."""
    return secrets.randbits(128) or 1


def _hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 512:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
        return hashes.SHA256()
    return hashes.SHA256()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _validity(
    days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
) -> tuple[datetime.datetime, datetime.datetime]:
    if not_before is None:
        not_before = _now() - CLOCK_SKEW
    if not_after is None:
        not_after = not_before + CLOCK_SKEW + datetime.timedelta(days=days)
    if not_after <= not_before:
        raise ValueError("a certificate must end after it begins")
    return not_before, not_after


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _aki(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _key_usage(**bits: bool) -> x509.KeyUsage:
    values = dict.fromkeys(_KEY_USAGE_FIELDS, False)
    for name, value in bits.items():
        if name not in values:
            raise ValueError(f"unknown keyUsage bit {name!r}")
        values[name] = value
    return x509.KeyUsage(**values)


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
    path_length: int | None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True), critical=True
        )
    return builder


def create_ca(
    common_name: str,
    key_type: str = "ed25519",
    days: int = 3650,
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    path_length: int | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """
    A self-signed root: the trust anchor peers configure. C{key} reuses an existing key
    (C{key_type} is then ignored); C{path_length} limits how many intermediates may follow.
    """
    if key is None:
        key = generate_key(key_type)
    not_before, not_after = _validity(days, not_before, not_after)
    name = _cn(common_name)
    cert = _ca_builder(
        name, name, key.public_key(), not_before, not_after, ca=True, path_length=path_length
    ).sign(key, _hash_for(key))
    return key, cert


def create_intermediate(
    parent_key: CertificateIssuerPrivateKeyTypes,
    parent_cert: x509.Certificate,
    common_name: str,
    key_type: str = "ed25519",
    days: int = 1825,
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    path_length: int | None = 0,
    ca: bool = True,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """
    A CA certificate issued by C{parent_cert}. The default C{path_length} of 0 lets it issue
    leaves only, which is what a departmental or per-registry CA needs. C{ca=False} makes the
    broken "intermediate without cA=TRUE" that validators must refuse (for tests).
    """
    if key is None:
        key = generate_key(key_type)
    not_before, not_after = _validity(days, not_before, not_after)
    builder = _ca_builder(
        _cn(common_name),
        parent_cert.subject,
        key.public_key(),
        not_before,
        not_after,
        ca=ca,
        path_length=path_length,
    ).add_extension(_aki(parent_cert), critical=False)
    return key, builder.sign(parent_key, _hash_for(parent_key))


def issue_leaf(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    identities: Sequence[str],
    public_key: CertificatePublicKeyTypes,
    *,
    days: int = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key_encipherment: bool | None = None,
    eku: Iterable[str] | None = ("clientAuth", "emailProtection"),
    key_usage: Iterable[str] | None = None,
    ca: bool = False,
    no_san: bool = False,
    serial: int | None = None,
    subject: x509.Name | None = None,
    extra_extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """
    A user certificate proving C{identities} (spec §4), signed by the CA.

    The defaults make a certificate every conforming peer accepts: rfc822Name SANs, keyUsage
    digitalSignature (plus keyEncipherment for an RSA key, so it can also serve C{rsa-oaep}),
    EKU clientAuth + emailProtection (so it doubles as an S/MIME certificate), cA=FALSE.

    The other knobs exist so tests can make the certificates peers must refuse:
    C{key_encipherment=False} drops that bit even for RSA; C{eku=None} or C{()} omits the EKU
    extension; C{key_usage} lists the keyUsage bits by their C{cryptography} names
    (C{"digital_signature"}, …) and an empty list omits the extension; C{ca=True} marks the leaf
    as a CA; C{no_san} leaves out the subjectAltName; C{extra_extensions} adds
    C{(extension, critical)} pairs.
    """
    identities = list(identities)
    if not identities and not no_san:
        raise ValueError("a leaf needs at least one identity")
    not_before, not_after = _validity(days, not_before, not_after)
    if subject is None:
        subject = _cn(identities[0]) if identities else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(_aki(ca_cert), critical=False)
    )
    if not no_san:
        # Critical only when the subject is empty (RFC 5280 §4.2.1.6).
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(i) for i in identities]),
            critical=len(subject) == 0,
        )
    if key_usage is None:
        if key_encipherment is None:
            key_encipherment = isinstance(public_key, rsa.RSAPublicKey)
        builder = builder.add_extension(
            _key_usage(digital_signature=True, key_encipherment=key_encipherment), critical=True
        )
    else:
        bits = list(key_usage)
        if bits:
            builder = builder.add_extension(
                _key_usage(**dict.fromkeys(bits, True)), critical=True
            )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([EKU_NAMES[name] for name in eku]), critical=False
        )
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(ca_key, _hash_for(ca_key))


def issue_server(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    public_key: CertificatePublicKeyTypes,
    *,
    days: int = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    """
    A TLS server certificate for the registry (irp-1 §1): DNS names and/or IP addresses as
    subjectAltNames (an IP literal becomes an iPAddress entry, so clients connecting by
    address verify it), keyUsage digitalSignature (+ keyEncipherment for RSA), EKU serverAuth.
    """
    import ipaddress

    if not names:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name.lower()))
    not_before, not_after = _validity(days, not_before, not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(_aki(ca_cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            _key_usage(
                digital_signature=True,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    )
    return builder.sign(ca_key, _hash_for(ca_key))


def issue_crl(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    revoked_serials: Iterable[int | tuple[int, datetime.datetime]],
    next_update_days: float = 7,
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """
    A complete CRL (spec §11.8: no delta or indirect CRLs) for the certificates C{ca_cert}
    issued. The CRL number defaults to the issue time in seconds, so a later CRL from the
    same CA always compares newer. Each revoked entry is a serial (revoked "now") or a
    C{(serial, revocation time)} pair, as a registry that remembers when it revoked has it.
    """
    if last_update is None:
        last_update = _now()
    if next_update is None:
        next_update = last_update + datetime.timedelta(days=next_update_days)
    if crl_number is None:
        crl_number = int(last_update.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(_aki(ca_cert), critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for entry in revoked_serials:
        serial, when = entry if isinstance(entry, tuple) else (entry, last_update)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(min(when, last_update))
            .build()
        )
    return builder.sign(ca_key, _hash_for(ca_key))


# -- files --------------------------------------------------------------------------------


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
    if _spki(key.public_key()) != _spki(cert.public_key()):  # type: ignore[arg-type]
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
