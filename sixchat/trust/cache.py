"""
What the trust store remembers of a chain that passed (L{sixchat.trust.chain.TrustStore}'s
validated-chain cache): the result, and the whole seconds in which it may be used again
without OpenSSL, bounded by every validity period on the path. Revocation is never cached:
it is checked again at every use.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from sixchat.trust.chain import PeerCertificate

__all__ = ["EPOCH", "MAX_SECOND", "MIN_SECOND", "ONE_SECOND", "Validated", "boundaries"]

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
ONE_SECOND = datetime.timedelta(seconds=1)
MIN_SECOND = (datetime.datetime.min.replace(tzinfo=datetime.UTC) - EPOCH) // ONE_SECOND
MAX_SECOND = (datetime.datetime.max.replace(tzinfo=datetime.UTC) - EPOCH) // ONE_SECOND


@dataclass(frozen=True)
class Validated:
    """A chain that passed L{TrustStore.validate}: its result and where it holds."""

    peer: PeerCertificate
    #: The DER of each certificate of C{peer.chain} but the anchor (None if unknown).
    ders: tuple[bytes | None, ...]
    #: The other CRL signers of each certificate's issuer, all on the path (L{_crl_signers}).
    signers: tuple[tuple[x509.Certificate, ...], ...]
    generation: int
    #: The whole seconds (since the epoch) in which it may be used: [first, end).
    first: int
    end: int


def boundaries(certs: Iterable[x509.Certificate]) -> list[int]:
    """The notBefore and notAfter of C{certs}, in whole seconds since the epoch."""
    out = []
    for cert in certs:
        out.append((cert.not_valid_before_utc - EPOCH) // ONE_SECOND)
        out.append((cert.not_valid_after_utc - EPOCH) // ONE_SECOND)
    return out
