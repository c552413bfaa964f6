"""
TLS for IRP clients (irp-1 §1): the options a client connects to a registry with, and the
alerts a registry refuses a client certificate with. The registry's side (its context, the
verify callback that picks those alerts, the handshake guard) is L{sixchat.irp.server.tls}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import crypto
from twisted.internet import ssl

from sixchat.identity import Identity

__all__ = ["TLS_ALERTS", "client_options", "openssl_key"]

_OPENSSL_KEYS = (
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)


def openssl_key(key: PrivateKeyTypes) -> crypto.PKey:
    """
    pyOpenSSL's form of an identity's key, for the TLS contexts of both sides. The kinds of
    key pyOpenSSL takes are fewer than cryptography's; any other is refused here with the
    C{TypeError} pyOpenSSL itself would raise.
    """
    if not isinstance(key, _OPENSSL_KEYS):
        raise TypeError("Unsupported key type")
    return crypto.PKey.from_cryptography_key(key)

#: TLS alert numbers by IRP refusal, for clients reporting them (irp-1 §7.1).
TLS_ALERTS = {
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    48: "unknown_ca",
}


def client_options(
    hostname: str,
    anchors: Sequence[x509.Certificate] | None = None,
    identity: Identity | None = None,
) -> Any:
    """
    TLS 1.3 client options for a registry: the server certificate checked against
    C{hostname} (an IP literal or DNS name; Twisted sends SNI only for names) with
    C{service_identity}, trusting C{anchors} (None: the platform's store), presenting
    C{identity}'s certificate chain when given.
    """
    trust_root: Any
    if anchors:
        trust_root = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(a)) for a in anchors]
        )
    else:
        trust_root = ssl.platformTrust()
    client_cert = None
    extra: dict[str, Any] = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_3}
    if identity is not None:
        client_cert = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(crypto.X509.from_cryptography(identity.leaf)),
            ssl.KeyPair(openssl_key(identity.private_key)),
        )
        extra["extraCertChain"] = [
            crypto.X509.from_cryptography(x509.load_der_x509_certificate(der))
            for der in identity.chain_der[1:]
        ]
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust_root, clientCertificate=client_cert,
        extraCertificateOptions=extra,
    )  # fmt: skip
