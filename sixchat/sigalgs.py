"""
The leaf key types of spec §4 and the one signature algorithm each implies (no negotiation).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from sixchat.errors import BadCertificate, DecryptError

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-secp256r1-sha256"
ECDSA_P384 = "ecdsa-secp384r1-sha384"
RSA_PSS = "rsa-pss-sha256"

SIGNATURE_ALGORITHMS = (ED25519, ECDSA_P256, ECDSA_P384, RSA_PSS)

MIN_RSA_BITS = 2048

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def alg_for_public_key(key: CertificatePublicKeyTypes) -> str:
    """
    The C{alg} token a leaf key implies (§4 table).

    @raise BadCertificate: for any other key type, curve or an RSA key under 2048 bits.
    """
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_P256
        if isinstance(key.curve, ec.SECP384R1):
            return ECDSA_P384
        raise BadCertificate(f"leaf key on curve {key.curve.name} is not allowed")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadCertificate(f"RSA leaf key of {key.key_size} bits is too small")
        return RSA_PSS
    raise BadCertificate(f"leaf key type {type(key).__name__} is not allowed")


def alg_for_private_key(key: PrivateKeyTypes) -> str:
    """The C{alg} our own key signs with (same table as L{alg_for_public_key})."""
    return alg_for_public_key(key.public_key())  # type: ignore[arg-type]


def sign(key: PrivateKeyTypes, data: bytes) -> bytes:
    """Sign C{data} with the algorithm C{key} implies."""
    return sign_as(alg_for_private_key(key), key, data)


def sign_as(alg: str, key: PrivateKeyTypes, data: bytes) -> bytes:
    """Sign C{data} with C{alg}, which must be L{alg_for_private_key}C{(key)}."""
    if alg == ED25519:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(data)
    if alg == ECDSA_P256:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if alg == ECDSA_P384:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA384()))
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.sign(data, _PSS, hashes.SHA256())


def verify(key: CertificatePublicKeyTypes, alg: str, data: bytes, signature: bytes) -> None:
    """
    Check a C{verify} signature (§7.5).

    @raise DecryptError: if C{alg} is not the one the key implies (§11.5), or the signature
        (including an ECDSA signature that is not valid DER) does not verify.
    """
    expected = alg_for_public_key(key)
    if alg != expected:
        raise DecryptError(f"alg {alg!r} does not match the leaf key ({expected})")
    try:
        if alg == ED25519:
            assert isinstance(key, ed25519.Ed25519PublicKey)
            key.verify(signature, data)
        elif alg in (ECDSA_P256, ECDSA_P384):
            assert isinstance(key, ec.EllipticCurvePublicKey)
            digest = hashes.SHA256() if alg == ECDSA_P256 else hashes.SHA384()
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, data, _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise DecryptError("signature does not verify") from None
