"""
What the trust store remembers of a chain that passed (L{sixchat.trust.chain.TrustStore}'s
caches), and the whole seconds in which it may be used again, bounded by every validity
period involved. Revocation is never cached: it is checked again at every use.

  - L{Validated}: a whole chain (the same peer again): its result, used without OpenSSL.
  - L{ValidationCaches}: both caches, the part of L{sixchat.trust.chain.TrustStore} that
    keeps and uses them.
  - L{KnownIssuer}: the validated path above a leaf, from its issuing intermediate up to the
    anchor (a new peer under a CA seen before): a new leaf presented with exactly these
    intermediates is verified by OpenSSL against the intermediate alone, one signature.
    Only paths on which nothing above the leaf can change OpenSSL's verdict on a leaf are
    kept (L{issuer_path_cacheable}).
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from OpenSSL import crypto

from sixchat.trust.profile import (
    check_constrained_mailboxes,
    check_key_strength,
    check_signature_strength,
)

if TYPE_CHECKING:
    from sixchat.trust.chain import PeerCertificate
    from sixchat.trust.crlset import CRLSet

__all__ = [
    "EPOCH",
    "MAX_SECOND",
    "MIN_SECOND",
    "ONE_SECOND",
    "KnownIssuer",
    "ValidationCaches",
    "Validated",
    "boundaries",
    "issuer_path_cacheable",
    "window",
]

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


@dataclass(frozen=True)
class KnownIssuer:
    """
    The validated path above a leaf: its issuing intermediate first, ending with the anchor,
    as a full validation found it (L{TrustStore._remember_issuer}).
    """

    #: The issuing intermediate first, then its own issuers, ending with the anchor.
    path: tuple[x509.Certificate, ...]
    #: The DER of each certificate of C{path} but the anchor (revocation, every use).
    ders: tuple[bytes | None, ...]
    #: The other CRL signers of the issuer of each certificate of C{path} but the anchor.
    signers: tuple[tuple[x509.Certificate, ...], ...]
    #: The intermediate as OpenSSL's object: the one trusted certificate of the leaf's step.
    openssl: Any
    generation: int
    #: The whole seconds (since the epoch) in which it may be used: [first, end).
    first: int
    end: int


#: Extensions that make OpenSSL's verdict on a leaf depend on certificates above its issuer,
#: or on path length beyond one step: name constraints (applied from every CA above) and
#: policy processing (requireExplicitPolicy, inhibitPolicyMapping and inhibitAnyPolicy count
#: certificates along the whole path; policy mappings rewrite what lies below).
_PATH_DEPENDENT = frozenset(
    {
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)


def issuer_path_cacheable(certs: Iterable[x509.Certificate]) -> bool:
    """
    Whether none of C{certs} carries an extension that makes the verdict on a certificate
    below depend on more than its issuer (C{_PATH_DEPENDENT}); C{False} if any extensions
    cannot be read.
    """
    try:
        for cert in certs:
            for extension in cert.extensions:
                if extension.oid in _PATH_DEPENDENT:
                    return False
    except ValueError:
        return False
    return True


def window(bounds: Iterable[int], second: int) -> tuple[int, int] | None:
    """
    The whole seconds [first, end) around C{second} in which none of C{bounds} (notBefore and
    notAfter in whole seconds) falls, with two seconds of margin each side; C{None} when one
    falls right now (within the margin): not worth keeping.
    """
    first, end = MIN_SECOND, MAX_SECOND
    for bound in bounds:
        if bound <= second - 2:
            first = max(first, bound + 2)
        elif bound >= second + 2:
            end = min(end, bound - 1)
        else:
            return None
    return first, end


class ValidationCaches:
    """
    The validated-chain and known-issuer caches of L{sixchat.trust.chain.TrustStore}, which
    sets everything declared here.
    """

    chain_cache_size: int
    issuer_cache_size: int
    _validated: OrderedDict[tuple[tuple[bytes, ...], bool], Validated]
    _issuers: OrderedDict[tuple[bytes, ...], KnownIssuer]
    _issuer_stores: dict[tuple[bytes, ...], tuple[int, crypto.X509Store]]
    _generation: int
    _hard: bool
    _crls: CRLSet
    _anchors: list[x509.Certificate]
    _openssl_anchors: list[crypto.X509]
    _anchor_bounds: list[int] | None
    #: OpenSSL's verification flags (the trust store's).
    _verify_flags: Any
    #: The result for a verified path once the leaf passes the §4 profile.
    _result: Callable[[tuple[x509.Certificate, ...], bytes, bool], PeerCertificate]

    # -- validated chains ----------------------------------------------------------------
    #
    # A chain presented again (the same peer reconnecting) skips the parsing, OpenSSL's path
    # validation and the profile checks, and gets the very result a validation would give:
    #
    #   - keyed by the exact DER of every presented certificate, in order, and by
    #     require_key_encipherment; only successes are kept;
    #   - everything those checks depend on is fixed for a given key, except time and CRLs:
    #     our anchors never change, and OpenSSL's path building and verification depend on
    #     the time only through the validity periods of the candidate certificates (ours and
    #     the presented ones). An entry is used only while the time, in OpenSSL's whole
    #     seconds, lies in the interval around its validation in which no notBefore or
    #     notAfter of any of them falls (two seconds of margin on either side): every
    #     certificate is valid or invalid there exactly as when it was validated;
    #   - revocation is checked again at every use, with the current CRLs and time (it is
    #     cheap, and its warnings, such as a stale CRL, depend on the time); a change of
    #     CRLs also empties the cache (generation);
    #   - bounded: the least recently used of more than chain_cache_size entries goes.

    def _cached(
        self, key: tuple[tuple[bytes, ...], bool], now: datetime.datetime
    ) -> PeerCertificate | None:
        entry = self._validated.get(key)
        if entry is None or entry.generation != self._generation:
            return None
        if not entry.first <= (now - EPOCH) // ONE_SECOND < entry.end:
            return None
        self._validated.move_to_end(key)
        chain = entry.peer.chain
        ders = entry.ders
        signers = entry.signers
        hard = self._hard
        for depth in range(len(chain) - 1):
            self._crls.check(
                chain[depth], chain[depth + 1], now, depth, ders[depth],
                signers=signers[depth], hard=hard,
            )  # fmt: skip
        return entry.peer

    def _remember(
        self,
        key: tuple[tuple[bytes, ...], bool],
        peer: PeerCertificate,
        presented: list[x509.Certificate],
        ders: tuple[bytes | None, ...],
        signers: tuple[tuple[x509.Certificate, ...], ...],
        now: datetime.datetime,
    ) -> None:
        second = (now - EPOCH) // ONE_SECOND
        try:
            bounds = self._anchor_boundaries() + boundaries(presented)
        except (ValueError, OverflowError):  # pragma: no cover - a time we cannot read
            return
        held = window(bounds, second)
        if held is None:
            return  # a validity period starts or ends right now: not worth keeping
        first, end = held
        validated = self._validated
        validated[key] = Validated(peer, ders, signers, self._generation, first, end)
        validated.move_to_end(key)
        while len(validated) > self.chain_cache_size:
            validated.popitem(last=False)

    # -- known issuers ---------------------------------------------------------------------
    #
    # A new leaf presented with intermediates seen before (a new peer under a known CA)
    # costs OpenSSL one step, the leaf against its issuer, instead of the whole path:
    #
    #   - kept after a full validation in which the peer presented exactly its path above
    #     the leaf, in order, ending below an anchor (keyed by the exact DER of those
    #     intermediates); the leaf's issuer has a name no anchor has (so OpenSSL's path
    #     building could not have picked another issuer for a leaf), every CRL signer is
    #     on the path, and no certificate above the leaf (anchor included) carries name
    #     constraints or policy constraints, mappings or inhibitAnyPolicy, the only
    #     extensions through which OpenSSL's verdict on a leaf depends on more than its
    #     issuer (path length never counts the leaf);
    #   - used while the time, in OpenSSL's whole seconds, lies where no notBefore or
    #     notAfter of an anchor or of those intermediates falls (as for the chain cache) and
    #     the CRLs are the same (a change empties it); the leaf itself is checked by OpenSSL
    #     with the issuer as the one trusted certificate (every leaf check, validity,
    #     signature, X509_STRICT, is OpenSSL's, as in a full validation), must carry none
    #     of the extensions above, and anything OpenSSL refuses there is validated in full,
    #     so errors are always the full validation's;
    #   - then the rest of a validation as usual: chain strength of the leaf (the path
    #     above passed it), revocation of every certificate of the path with the current
    #     CRLs and time, the leaf profile;
    #   - bounded: the least recently used of more than issuer_cache_size entries goes.

    def _via_known_issuer(
        self, certs_der: Sequence[bytes], now: datetime.datetime, require_key_encipherment: bool
    ) -> (
        tuple[
            PeerCertificate,
            list[x509.Certificate],
            tuple[bytes | None, ...],
            tuple[tuple[x509.Certificate, ...], ...],
        ]
        | None
    ):
        """L{_validate}'s result through a known issuer, or C{None}: validate in full."""
        try:
            key = tuple(certs_der[1:])
            entry = self._issuers.get(key)
        except TypeError:  # not bytes (unhashable)
            return None
        if entry is None or entry.generation != self._generation:
            return None
        second = (now - EPOCH) // ONE_SECOND
        leaf_der = certs_der[0]
        if not entry.first <= second < entry.end or leaf_der in key:
            return None
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
            ossl = crypto.load_certificate(crypto.FILETYPE_ASN1, leaf_der)
        except Exception:
            return None
        if not issuer_path_cacheable((leaf,)):
            return None
        store = self._issuer_store(key, entry, now, second)
        try:
            verified = crypto.X509StoreContext(store, ossl, []).get_verified_chain()
        except crypto.X509StoreContextError:
            return None
        if len(verified) != 2 or verified[1]._x509 != entry.openssl._x509:
            return None  # pragma: no cover - the store holds the issuer alone
        self._issuers.move_to_end(key)
        path = (leaf, *entry.path)
        check_constrained_mailboxes(path)
        check_key_strength(leaf, 0)
        check_signature_strength(leaf, 0)
        issuer = path[1]
        signers = (tuple(c for c in path[2:] if c.subject == issuer.subject), *entry.signers)
        ders = (leaf_der, *entry.ders)
        hard = self._hard
        for depth in range(len(path) - 1):
            self._crls.check(
                path[depth], path[depth + 1], now, depth, ders[depth],
                signers=signers[depth], hard=hard,
            )  # fmt: skip
        peer = self._result(path, leaf_der, require_key_encipherment)
        return peer, [leaf, *entry.path[:-1]], ders, signers

    def _remember_issuer(
        self,
        certs_der: Sequence[bytes],
        peer: PeerCertificate,
        presented: list[x509.Certificate],
        ders: tuple[bytes | None, ...],
        signers: tuple[tuple[x509.Certificate, ...], ...],
        now: datetime.datetime,
    ) -> None:
        """Keep the path above the leaf of a chain that passed, when it may be (above)."""
        path = peer.chain
        if len(path) < 3 or len(certs_der) != len(path) - 1:
            return
        key = tuple(certs_der[1:])
        if key != ders[1:]:
            return  # not exactly the path above the leaf, in order
        entry = self._issuers.get(key)
        if entry is not None and entry.generation == self._generation:
            return
        upper = path[1:]
        if not all(any(s is c for c in upper) for found in signers[1:] for s in found):
            return
        if not issuer_path_cacheable(upper):
            return
        try:
            openssl = crypto.load_certificate(crypto.FILETYPE_ASN1, key[0])
            issuer_name = openssl.get_subject()
            if any(issuer_name == a.get_subject() for a in self._openssl_anchors):
                return  # OpenSSL could chain a leaf to that anchor instead (X509_NAME_cmp)
            bounds = self._anchor_boundaries() + boundaries(upper[:-1])
        except (crypto.Error, ValueError, OverflowError):  # pragma: no cover
            return
        held = window(bounds, (now - EPOCH) // ONE_SECOND)
        if held is None:
            return
        issuers = self._issuers
        issuers[key] = KnownIssuer(
            upper, ders[1:], signers[1:], openssl, self._generation, held[0], held[1]
        )
        issuers.move_to_end(key)
        self._issuer_stores.pop(key, None)
        while len(issuers) > self.issuer_cache_size:
            gone, _ = issuers.popitem(last=False)
            self._issuer_stores.pop(gone, None)

    def _issuer_store(
        self, key: tuple[bytes, ...], entry: KnownIssuer, now: datetime.datetime, second: int
    ) -> crypto.X509Store:
        """An OpenSSL store trusting C{entry}'s issuer alone, for validations at C{now}."""
        held = self._issuer_stores.get(key)
        if held is not None and held[0] == second:
            return held[1]
        store = crypto.X509Store()
        store.add_cert(entry.openssl)
        store.set_time(now)
        store.set_flags(self._verify_flags)
        self._issuer_stores[key] = (second, store)
        return store

    def _anchor_boundaries(self) -> list[int]:
        bounds = self._anchor_bounds
        if bounds is None:
            bounds = self._anchor_bounds = boundaries(self._anchors)
        return bounds
