"""
Certificates for tests, made in memory and cached per process.

Key generation dominates the cost of certificate tests (an RSA-3072 key takes up to a second),
so CAs are cached by (key type, name) and keys by (key type, label): asking twice for the
same thing returns the same object. Certificates themselves are cheap and made fresh, so a
test can ask for odd ones (expired, wrong EKU, …) through the L{sixchat.pki.issue_leaf}
knobs without disturbing anyone else.

Typical use::

    ca = certs.make_ca()
    alice = certs.make_identity("alice@example.com", ca)
    peer = certs.trust_for(ca).validate(alice.chain_der, now)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sixchat import pki
from sixchat.identity import Identity
from sixchat.trust import TrustStore

#: Key types beyond L{pki.KEY_TYPES}, for certificates peers must refuse.
EXTRA_KEY_TYPES = ("rsa1024", "p521", "ed448")


@dataclass(frozen=True)
class TestCA:
    """
    A CA for tests. C{chain} is what a leaf it issues sends after itself: empty for a root,
    the intermediates up to (not including) the anchor otherwise.
    """

    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate
    anchor: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def anchor_pem(self) -> bytes:
        return self.anchor.public_bytes(serialization.Encoding.PEM)


_keys: dict[tuple[str, str], CertificateIssuerPrivateKeyTypes] = {}
_cas: dict[tuple[Any, ...], TestCA] = {}


def new_key(key_type: str) -> CertificateIssuerPrivateKeyTypes:
    """A fresh, uncached key of one of L{pki.KEY_TYPES} or L{EXTRA_KEY_TYPES}."""
    if key_type == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if key_type == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    return pki.generate_key(key_type)


def key_for(key_type: str, label: str = "") -> CertificateIssuerPrivateKeyTypes:
    """The process-wide key of C{key_type} for C{label} (made on first use)."""
    cache_key = (key_type, label)
    if cache_key not in _keys:
        _keys[cache_key] = new_key(key_type)
    return _keys[cache_key]


def make_ca(key_type: str = "ed25519", name: str | None = None) -> TestCA:
    """A cached self-signed root, valid from now (minus clock skew) for ten years."""
    name = name or f"sixchat test CA ({key_type})"
    cache_key = ("root", key_type, name)
    if cache_key not in _cas:
        key, cert = pki.create_ca(name, key=key_for(key_type, "ca:" + name))
        _cas[cache_key] = TestCA(key=key, cert=cert, anchor=cert)
    return _cas[cache_key]


def make_intermediate(
    parent: TestCA,
    name: str = "sixchat test intermediate",
    key_type: str = "ed25519",
    **kwargs: Any,
) -> TestCA:
    """
    An intermediate under C{parent}; cached when called without extra
    L{pki.create_intermediate} arguments.
    """
    cache_key = ("intermediate", parent.cert.fingerprint(hashes.SHA256()), name, key_type)
    if kwargs or cache_key not in _cas:
        key, cert = pki.create_intermediate(
            parent.key, parent.cert, name, key=key_for(key_type, "int:" + name), **kwargs
        )
        ca = TestCA(key=key, cert=cert, anchor=parent.anchor, chain=(cert, *parent.chain))
        if kwargs:
            return ca
        _cas[cache_key] = ca
    return _cas[cache_key]


def make_identity(
    name: str | list[str],
    ca: TestCA,
    /,
    key_type: str = "ed25519",
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    check: bool = True,
    **issue_kwargs: Any,
) -> Identity:
    """
    An L{Identity} for C{name} (or several names) issued by C{ca}, in memory. The key is the
    cached one for (C{key_type}, first name) unless C{key} is given, so two calls for the same
    name have the same SPKI (pins stay "known"); pass C{key=new_key(...)} for a key change.
    C{issue_kwargs} go to L{pki.issue_leaf} (C{name} and C{ca} are positional-only so that
    C{ca=True} reaches it); pass C{check=False} for identities a peer must refuse (no
    rfc822Name, forbidden key type).
    """
    names = [name] if isinstance(name, str) else list(name)
    if key is None:
        key = key_for(key_type, "leaf:" + (names[0] if names else ""))
    leaf = pki.issue_leaf(ca.key, ca.cert, names, key.public_key(), **issue_kwargs)
    return Identity(key, leaf, ca.chain, source=f"test identity {names}", check=check)


def trust_for(ca: TestCA, crls: Any = (), warn: Any = None) -> TrustStore:
    """A trust store whose only anchor is C{ca}'s root."""
    return TrustStore([ca.anchor], crls, warn=warn)


def write_identity_p12(
    tmpdir: str | os.PathLike[str],
    identity: Identity,
    password: bytes | None = None,
    filename: str | None = None,
) -> str:
    """Write C{identity} (with its chain) as a PKCS#12 file in C{tmpdir}; returns its path."""
    path = os.path.join(os.fspath(tmpdir), filename or f"{identity.names[0]}.p12")
    chain = [x509.load_der_x509_certificate(der) for der in identity.chain_der[1:]]
    pki.write_p12(path, identity.private_key, identity.leaf, chain, password, overwrite=True)
    return path


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
