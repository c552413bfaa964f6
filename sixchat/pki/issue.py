"""
Making keys and certificates for the protocol's PKI (spec §4): roots, intermediates,
leaves and registry server certificates.

Everything here is a pure function over C{cryptography} objects so that the C{sixchat pki}
command line, the registry's CA and the tests all make certificates the same way; nothing in
this package talks to the network or imports Twisted.

Signature hashes follow the signing key: none for EdDSA, SHA-256 for RSA (PKCS#1 v1.5) and
P-256, SHA-384 for P-384 and SHA-512 for P-521, so no certificate we make ever falls below the
chain-strength floor of §11.7.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLOCK_SKEW",
    "EKU_NAMES",
    "KEY_TYPES",
    "create_ca",
    "create_intermediate",
    "describe_key",
    "generate_key",
    "issue_leaf",
    "issue_server",
    "random_serial",
]

#: Key types the command line offers: exactly the leaf key types of spec §4 (and 3072-bit RSA).
KEY_TYPES = ("ed25519", "p256", "p384", "rsa2048", "rsa3072")

#: Extended key usages by the names used in this API.
EKU_NAMES = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}

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
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),
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
        .public_key(public_key)
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),
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
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),
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
