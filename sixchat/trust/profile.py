"""
The checks of a peer chain that are ours and not OpenSSL's, apart from revocation: chain
strength (spec §11.7) on every certificate of the verified path, and the leaf profile (§4).

OpenSSL 4.0 as linked here accepts RSA-1024 keys and SHA-1 and MD5 signatures anywhere in a
chain (its security-level checks apply to TLS, not to C{X509_verify_cert} with the default
auth level), and §4's leaf profile is not OpenSSL's "SSL client" purpose: hence these.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    PublicKeyAlgorithmOID,
    SignatureAlgorithmOID,
)

from sixchat import sigalgs
from sixchat.errors import BadCertificate
from sixchat.identity import san_rfc822_names

__all__ = [
    "check_constrained_mailboxes",
    "check_key_strength",
    "check_leaf",
    "check_signature_strength",
]

_STRONG_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"})
_EDDSA_SIGNATURES = frozenset({SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448})
_STRONG_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_LEAF_EKUS = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION})
_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_BASIC_CONSTRAINTS = ExtensionOID.BASIC_CONSTRAINTS
_KEY_USAGE = ExtensionOID.KEY_USAGE
_EXTENDED_KEY_USAGE = ExtensionOID.EXTENDED_KEY_USAGE
_NAME_CONSTRAINTS = ExtensionOID.NAME_CONSTRAINTS


def check_key_strength(cert: x509.Certificate, depth: int) -> None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadCertificate(f"certificate at depth {depth} has an unsupported key") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in _STRONG_CURVES:
            return
        raise BadCertificate(f"certificate at depth {depth} uses weak curve {key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= sigalgs.MIN_RSA_BITS:
            return
        raise BadCertificate(
            f"certificate at depth {depth} has a {key.key_size}-bit RSA key (2048 or more needed)"
        )
    raise BadCertificate(f"certificate at depth {depth} has a {type(key).__name__} key")


def check_signature_strength(cert: x509.Certificate, depth: int) -> None:
    try:
        if cert.signature_algorithm_oid in _EDDSA_SIGNATURES:
            return
        digest = cert.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        raise BadCertificate(
            f"certificate at depth {depth} has an unsupported signature algorithm"
        ) from None
    if digest is None or digest.name not in _STRONG_HASHES:
        name = digest.name.upper() if digest is not None else "no hash"
        raise BadCertificate(f"certificate at depth {depth} is signed with {name}")


def check_leaf(
    leaf: x509.Certificate, require_key_encipherment: bool
) -> tuple[tuple[str, ...], str, CertificatePublicKeyTypes]:
    """The §4 leaf profile; returns the names, C{alg} and the public key."""
    # One pass over the parsed extensions, by OID: the same values the class lookups would
    # find (C{cryptography} parses an extension of these OIDs into exactly these classes, and
    # refuses the certificate's extensions as a whole if one is malformed or repeated).
    try:
        values = {ext.oid: ext.value for ext in leaf.extensions}
        san = values.get(_SAN)
        names = san_rfc822_names(san) if san is not None else ()
    except ValueError:
        raise BadCertificate("leaf certificate has malformed extensions") from None
    if not names:
        raise BadCertificate("leaf certificate has no rfc822Name identity")
    bc = values.get(_BASIC_CONSTRAINTS)
    if bc is not None and bc.ca:
        raise BadCertificate("leaf certificate is a CA (basicConstraints cA=TRUE)")
    ku = values.get(_KEY_USAGE)
    if ku is not None:
        if not ku.digital_signature:
            raise BadCertificate("leaf keyUsage does not allow digitalSignature")
        if require_key_encipherment and not ku.key_encipherment:
            raise BadCertificate("leaf keyUsage does not allow keyEncipherment")
    eku = values.get(_EXTENDED_KEY_USAGE)
    if eku is not None and not _LEAF_EKUS.intersection(eku):
        raise BadCertificate("leaf extendedKeyUsage has neither clientAuth nor emailProtection")
    if leaf.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        raise BadCertificate("RSA-PSS (id-RSASSA-PSS) leaf keys are not allowed")
    try:
        public_key = leaf.public_key()
        alg = sigalgs.alg_for_public_key(public_key)
    except UnsupportedAlgorithm:
        raise BadCertificate("leaf key type is not allowed") from None
    return names, alg, public_key


def _malformed_mailbox(name: str) -> bool:
    local, at, domain = name.partition("@")
    return not (at and local and domain) or "@" in domain


def check_constrained_mailboxes(path: tuple[x509.Certificate, ...]) -> None:
    """
    Under a CA with name constraints, every rfc822Name below it must be a plain mailbox
    (one "@", a local part and a domain): OpenSSL splits C{a@b@x.example.com} at the first
    "@" and finds the domain C{b@x.example.com} inside a permitted C{.example.com}, so such a
    name could pass a constraint it does not meet. Refused (C{bad_certificate}) instead; a
    path without name constraints is not looked at (one extension lookup per CA).
    """
    for depth in range(1, len(path)):
        # A scan of the parsed extensions rather than get_extension_for_oid, whose miss (the
        # usual case: no CA on the path is constrained) builds and raises an exception: 1 µs
        # instead of 3 for a leaf under an anchor (docs/benchmarks.md, first contact).
        try:
            constrained = any(ext.oid == _NAME_CONSTRAINTS for ext in path[depth].extensions)
        except ValueError:  # pragma: no cover - OpenSSL refused the path already
            raise BadCertificate("malformed extensions on the path") from None
        if not constrained:
            continue
        for below in range(depth):
            try:
                san = path[below].extensions.get_extension_for_oid(_SAN).value
            except x509.ExtensionNotFound:
                continue
            except ValueError:
                raise BadCertificate(
                    f"certificate at depth {below}: malformed extensions"
                ) from None
            assert isinstance(san, x509.SubjectAlternativeName)
            for name in san.get_values_for_type(x509.RFC822Name):
                if _malformed_mailbox(name):
                    raise BadCertificate(
                        f"certificate at depth {below} has rfc822Name {name!r}, which is not a "
                        "mailbox, under name constraints"
                    )
        return
