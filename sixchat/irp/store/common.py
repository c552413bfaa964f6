"""
What both registry stores (L{sixchat.irp.store.sqlite}, L{sixchat.irp.store.postgres}) must
do alike, written once: how a CA is named in revocations and issued certificates
(L{issuer_key}), how a certificate's issuer is found, how contacts are stored, how an
identity is spelled in answers (L{identity_state}).

Two backends that disagreed here would revoke differently: a registry moved from SQLite to
PostgreSQL (or an administrator's tool using the other one) must find the same CRL.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509

from sixchat.irp.messages import Contact
from sixchat.irp.store.interfaces import Binding, IdentityState

__all__ = [
    "REVOKED_SQL",
    "cert_issuer_name",
    "contact_pairs",
    "contacts_of",
    "identity_state",
    "issuer_key",
    "sha256",
]


#: The revocation rule as SQL (both backends embed this one text), true for a row C{x} of
#: C{bindings} or C{presented} whose certificate is revoked: a revocation has its serial and,
#: where both issuer names are known, its issuer name (serials are unique per issuer, not
#: globally). Where a name is unknown (bytes that are no certificate: only tests) the serial
#: alone decides.
REVOKED_SQL = (
    "EXISTS (SELECT 1 FROM revocations r WHERE r.serial = x.serial AND (x.issuer_name IS NULL"
    " OR r.issuer_name IS NULL OR r.issuer_name = x.issuer_name))"
)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@functools.lru_cache(maxsize=256)
def issuer_key(issuer: bytes) -> tuple[bytes, bytes | None]:
    """
    How revocations and issued certificates name their CA, given the CA certificate's DER:
    the SHA-256 (32 bytes) of its subject name (DER), and that name. A CA is its name, so a
    re-issued CA certificate with the same name keeps its CRL; the hash keeps the key short
    (a name can exceed the size of an index entry). Bytes that are no certificate (only
    tests pass such) are keyed by C{SHA-256(b"raw:" + bytes)}, with no name: the prefix
    keeps them apart from any name's hash.

    Cached: every revocation check of every connection names the same few CAs.
    """
    try:
        name = x509.load_der_x509_certificate(issuer).subject.public_bytes()
    except ValueError:
        return sha256(b"raw:" + issuer), None
    return sha256(name), name


@functools.lru_cache(maxsize=1024)
def cert_issuer_name(cert: bytes) -> bytes | None:
    """
    The issuer name (DER) of a leaf, or None for bytes that are no certificate (only tests
    do that). With the serial it identifies the certificate for revocation: serials are
    unique per issuer, not globally.
    """
    try:
        return x509.load_der_x509_certificate(cert).issuer.public_bytes()
    except ValueError:
        return None


def contact_pairs(contacts: Iterable[Contact]) -> list[list[Any]]:
    """The stored (JSON) form of contacts: C{[[host, port], …]}."""
    return [[c.host, c.port] for c in contacts]


def contacts_of(pairs: Iterable[Sequence[Any]]) -> tuple[Contact, ...]:
    """Contacts back from their stored form."""
    return tuple(Contact(str(h), int(p)) for h, p in pairs)


def identity_state(
    asked: str,
    bindings: tuple[Binding, ...],
    latest: tuple[bytes, str] | None,
    binding_spelling: str | None,
) -> IdentityState:
    """
    An identity's state from what a store read: its live C{bindings} (each stored with the
    spelling of its certificate, C{binding_spelling} being one of them, or None without
    bindings) and C{latest}, the identity-level certificate (irp-1 §7.4) with its spelling.
    Answers spell the identity as the most recent certificate still answered does (irp-1
    §3.3), else as a live binding's certificate does, else as it was C{asked}.
    """
    if latest is not None:
        return IdentityState(latest[1], bindings, bytes(latest[0]))
    return IdentityState(binding_spelling or asked, bindings, None)
