"""
Deciding whether a peer's certificate chain proves its identity (spec §4, §11.7, §11.8): the
trust store, its path validation through OpenSSL and its cache of validated chains.

How validation is split between OpenSSL and this package:

  - B{Path building and RFC 5280 checks} are OpenSSL's (through pyOpenSSL's C{X509Store} and
    C{X509StoreContext}), never ours: signatures, validity periods, basicConstraints,
    pathLen, keyCertSign, unknown critical extensions. The store gets the configured anchors,
    the validation time and C{X509_V_FLAG_PARTIAL_CHAIN}, so every configured certificate is
    an anchor even if it is not self-signed (RFC 5280 §6.1: an anchor is a name and a key).
    No purpose is set: §4's leaf profile is not OpenSSL's "SSL client" purpose, so it is
    checked here. OpenSSL's verification error codes are mapped to alerts by
    L{OPENSSL_ERRORS}; any code not listed there is C{bad_certificate}.

  - B{Chain strength} (§11.7) is ours, on the path OpenSSL returns from
    C{get_verified_chain()}: OpenSSL 4.0 as linked here accepts RSA-1024 keys and SHA-1 and
    MD5 signatures anywhere in a chain (its security-level checks apply to TLS, not to
    C{X509_verify_cert} with the default auth level). The anchor's signature is never looked
    at: it is trusted by configuration, not by its signature. (L{sixchat.trust.profile})

  - B{Revocation} (§11.8) is ours too, with C{cryptography}, on the verified path. OpenSSL's
    C{CRL_CHECK} flags give the wrong semantics for this protocol: a missing CRL is a hard
    failure there (we must soft-fail and log), a CRL past C{nextUpdate} is rejected there (we
    must use it and log that it is stale), and its delta/indirect CRL processing goes beyond
    what version 1 defines. Here a CRL counts for a certificate when its issuer name equals
    the certificate's issuer and its signature verifies with the key of the next
    certificate on the path; that is the whole rule (L{sixchat.trust.crl}, which the agent
    uses too).

  - B{The leaf profile} of §4 (rfc822Name, keyUsage, EKU, cA=FALSE, key type) is checked
    last, once the chain is known to be trusted (L{sixchat.trust.profile}).

Order of checks, so that each failure gets one predictable alert: count (≤ 8) → parse →
OpenSSL path validation → chain strength → revocation → leaf profile.

A chain that passed is remembered (L{TrustStore} C{chain_cache}, see C{_cached}): presented
again while no validity period of a candidate certificate starts or ends and the CRLs are
the same, it gets the same result without the parsing, path validation and profile checks;
revocation is checked again at every use.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from OpenSSL import crypto

from sixchat.errors import (
    AlertError,
    BadCertificate,
    CertificateExpired,
    CertificateRevoked,
    UnknownCA,
)
from sixchat.identity import MAX_CHAIN, same_identity, spki_sha256
from sixchat.trust.crl import CRLSet
from sixchat.trust.files import TrustLoadError, load_anchors, load_crls
from sixchat.trust.profile import check_key_strength, check_leaf, check_signature_strength

__all__ = ["CHAIN_CACHE_SIZE", "OPENSSL_ERRORS", "PeerCertificate", "TrustStore"]

#: OpenSSL C{X509_V_ERR_*} codes and the alert each becomes; every other code is
#: C{bad_certificate} (bad signature, CA without cA=TRUE, pathLen exceeded, unknown critical
#: extension, malformed validity fields, …).
OPENSSL_ERRORS: dict[int, type[AlertError]] = {
    2: UnknownCA,  # UNABLE_TO_GET_ISSUER_CERT
    9: CertificateExpired,  # CERT_NOT_YET_VALID: §4 treats "not yet valid" as expired
    10: CertificateExpired,  # CERT_HAS_EXPIRED
    18: UnknownCA,  # DEPTH_ZERO_SELF_SIGNED_CERT: self-signed leaf that is not an anchor
    19: UnknownCA,  # SELF_SIGNED_CERT_IN_CHAIN: the peer sent a root we do not trust
    20: UnknownCA,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY: unknown root or missing intermediate
    21: UnknownCA,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE: lone leaf whose issuer we lack
    23: CertificateRevoked,  # CERT_REVOKED (not raised today: CRLs are checked here)
    27: UnknownCA,  # CERT_UNTRUSTED
}

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_SECOND = datetime.timedelta(seconds=1)
_MIN_SECOND = (datetime.datetime.min.replace(tzinfo=datetime.UTC) - _EPOCH) // _ONE_SECOND
_MAX_SECOND = (datetime.datetime.max.replace(tzinfo=datetime.UTC) - _EPOCH) // _ONE_SECOND

#: Validated chains a trust store keeps by default (see L{TrustStore._cached}).
CHAIN_CACHE_SIZE = 512


def _no_warning(message: str) -> None:
    pass


@dataclass(frozen=True)
class PeerCertificate:
    """
    A peer's certificate chain that passed L{TrustStore.validate}.

    @ivar names: the rfc822Name identities the leaf proves, in certificate order.
    @ivar alg: the C{verify} algorithm the leaf key implies (§4).
    @ivar chain: the verified path, leaf first, ending with the anchor.
    """

    leaf: x509.Certificate
    leaf_der: bytes
    names: tuple[str, ...]
    alg: str
    public_key: CertificatePublicKeyTypes
    spki_sha256: bytes
    chain: tuple[x509.Certificate, ...]

    def fingerprint(self) -> str:
        """The SPKI pin as lowercase hex without separators."""
        return self.spki_sha256.hex()

    @property
    def leaf_sha256(self) -> bytes:
        """SHA-256 of the leaf DER: what an C{rsa-oaep} share's C{key} names (§5.2)."""
        return hashlib.sha256(self.leaf_der).digest()

    def proves(self, name: str) -> bool:
        """Whether the leaf carries C{name} (§3 comparison): the §7.4 C{identity_mismatch} check."""
        return any(same_identity(name, n) for n in self.names)


@dataclass(frozen=True)
class _Validated:
    """A chain that passed L{TrustStore.validate}: its result and where it holds."""

    peer: PeerCertificate
    #: The DER of each certificate of C{peer.chain} but the anchor (None if unknown).
    ders: tuple[bytes | None, ...]
    generation: int
    #: The whole seconds (since the epoch) in which it may be used: [first, end).
    first: int
    end: int


def _boundaries(certs: Iterable[x509.Certificate]) -> list[int]:
    """The notBefore and notAfter of C{certs}, in whole seconds since the epoch."""
    out = []
    for cert in certs:
        out.append((cert.not_valid_before_utc - _EPOCH) // _ONE_SECOND)
        out.append((cert.not_valid_after_utc - _EPOCH) // _ONE_SECOND)
    return out


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is datetime.UTC:
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


class TrustStore:
    """
    The locally configured trust anchors and CRLs, and the validator of peer chains.

    @param warn: called with one human-readable line when revocation could not be checked
        for an issuer (no usable CRL) or had to use a stale CRL; the Twisted layer passes a
        logger here. Each situation is reported once per issuer or CRL, not per handshake.
    """

    def __init__(
        self,
        anchors: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
        *,
        warn: Callable[[str], None] | None = None,
        chain_cache: int = CHAIN_CACHE_SIZE,
    ) -> None:
        self.warn = warn or _no_warning
        #: Validated chains (see L{_cached}); at most this many, 0 for none.
        self.chain_cache_size = chain_cache
        self._validated: OrderedDict[tuple[tuple[bytes, ...], bool], _Validated] = OrderedDict()
        #: Bumped whenever the CRLs change: cached validations of an older generation are
        #: not used.
        self._generation = 0
        self._anchor_bounds: list[int] | None = None
        self._anchors: list[x509.Certificate] = []
        self._openssl_anchors: list[crypto.X509] = []
        self._store: crypto.X509Store | None = None
        self._store_second = 0
        self._anchor_map: dict[Any, x509.Certificate] | None = None
        #: ids of our anchor objects whose key passed the §11.7 strength check.
        self._strong_anchors: set[int] = set()
        seen: set[bytes] = set()
        for anchor in anchors:
            der = anchor.public_bytes(serialization.Encoding.DER)
            if der in seen:
                continue
            seen.add(der)
            self._anchors.append(anchor)
            self._openssl_anchors.append(crypto.X509.from_cryptography(anchor))
        if not self._anchors:
            raise TrustLoadError("no trust anchor given; every peer would be refused")
        #: The CRLs and the revocation step (§11.8); warnings go through L{warn}, which
        #: may be replaced after construction.
        self._crls = CRLSet(lambda message: self.warn(message))
        for crl in crls:
            problem = self._add_crl(crl)
            if problem:
                raise TrustLoadError(problem)

    @classmethod
    def from_paths(
        cls,
        trust_path: str | Path,
        crl_paths: Iterable[str | Path] = (),
        *,
        warn: Callable[[str], None] | None = None,
    ) -> TrustStore:
        """
        Anchors from a PEM bundle (or a single DER certificate), or from every file in a
        directory that holds PEM certificates; CRLs from PEM or DER files.

        @raise TrustLoadError: if a path is missing or unreadable, a certificate or CRL is
            damaged, no certificate is found, or a CRL names an anchor that did not sign it.
        """
        anchors = load_anchors(Path(trust_path))
        crls = [crl for path in crl_paths for crl in load_crls(Path(path))]
        return cls(anchors, crls, warn=warn)

    @property
    def anchors(self) -> list[x509.Certificate]:
        return list(self._anchors)

    @property
    def crls(self) -> list[x509.CertificateRevocationList]:
        """The newest CRL held per issuer (name and key identifier)."""
        return self._crls.newest()

    def add_crl(self, crl: x509.CertificateRevocationList) -> bool:
        """
        Use C{crl} from now on, replacing an older CRL from the same issuer (same issuer
        name and authority key identifier). Returns C{False}, and warns, if it was not
        taken: an older CRL than the one held, or one that names an anchor as issuer but is
        not signed by it.
        """
        problem = self._add_crl(crl)
        if problem:
            self.warn(problem)
            return False
        return True

    def _add_crl(self, crl: x509.CertificateRevocationList) -> str | None:
        problem = self._crls.add(crl, self._anchors)
        if problem is None:
            self._generation += 1
            self._validated.clear()
        return problem

    def validate(
        self,
        certs_der: Sequence[bytes],
        now: datetime.datetime,
        *,
        require_key_encipherment: bool = False,
    ) -> PeerCertificate:
        """
        Validate a peer's C{identity} certificates (leaf first, then intermediates in any
        order) at time C{now} (naive means UTC).

        @param require_key_encipherment: for the responder's leaf under C{rsa-oaep} (§4).
        @raise BadCertificate, UnknownCA, CertificateExpired, CertificateRevoked: as §4 says.
        """
        if not certs_der:
            raise BadCertificate("no certificate")
        if len(certs_der) > MAX_CHAIN:
            raise BadCertificate(f"{len(certs_der)} certificates (at most {MAX_CHAIN})")
        now = _utc(now)
        key: tuple[tuple[bytes, ...], bool] | None = None
        if self.chain_cache_size > 0:
            try:
                key = (tuple(certs_der), bool(require_key_encipherment))
                hit = self._cached(key, now)
            except TypeError:  # not bytes (unhashable): validate without the cache
                key = hit = None
            if hit is not None:
                return hit
        peer, presented, ders = self._validate(certs_der, now, require_key_encipherment)
        if key is not None:
            self._remember(key, peer, presented, ders, now)
        return peer

    def _validate(
        self, certs_der: Sequence[bytes], now: datetime.datetime, require_key_encipherment: bool
    ) -> tuple[PeerCertificate, list[x509.Certificate], tuple[bytes | None, ...]]:
        """
        L{validate} itself: the peer, the presented certificates as parsed, and the DER of
        each certificate of the path but the anchor.
        """
        # Each certificate is parsed once by each library, straight from its DER; the
        # verified path is then mapped back to these objects (and to our anchors) by the
        # identity of OpenSSL's X509 structures instead of being re-encoded and re-parsed
        # (docs/benchmarks.md: about a third of a handshake's validation time).
        parsed: list[crypto.X509] = []
        ours: dict[Any, x509.Certificate] = {}
        ders: dict[int, bytes] = {}
        for i, der in enumerate(certs_der):
            try:
                cert = x509.load_der_x509_certificate(der)
                ossl = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
            except Exception:  # cryptography and OpenSSL each refuse in their own way
                raise BadCertificate(f"certificate {i + 1} cannot be parsed") from None
            parsed.append(ossl)
            ours[ossl._x509] = cert
            ders[id(cert)] = der

        store = self._verify_store(now)
        context = crypto.X509StoreContext(store, parsed[0], parsed[1:])
        try:
            verified = context.get_verified_chain()
        except crypto.X509StoreContextError as e:
            code, depth, message = e.errors[0], e.errors[1], e.errors[2]
            alert = OPENSSL_ERRORS.get(code, BadCertificate)
            raise alert(f"certificate at depth {depth}: {message}") from None
        known = self._anchor_objects()
        path = tuple(
            ours.get(c._x509) or known.get(c._x509) or c.to_cryptography() for c in verified
        )

        last = len(path) - 1
        strong_anchors = self._strong_anchors
        for depth, cert in enumerate(path):
            if depth < last:
                check_key_strength(cert, depth)
                check_signature_strength(cert, depth)
            elif id(cert) not in strong_anchors:
                # The path ends at a trust anchor; one of our own anchor objects (the store
                # hands back ours) is checked once, its key being part of our configuration.
                check_key_strength(cert, depth)
                if any(cert is anchor for anchor in self._anchors):
                    strong_anchors.add(id(cert))
        for depth in range(last):
            cert = path[depth]
            self._crls.check(cert, path[depth + 1], now, depth, ders.get(id(cert)))

        names, alg, public_key = check_leaf(path[0], require_key_encipherment)
        # The leaf object the checks used caches every parsed extension (about 3 KiB per
        # session, held as long as the session): keep a fresh, lean parse of the same DER.
        leaf = x509.load_der_x509_certificate(certs_der[0])
        peer = PeerCertificate(
            leaf=leaf,
            leaf_der=certs_der[0],
            names=names,
            alg=alg,
            public_key=public_key,
            spki_sha256=spki_sha256(public_key),
            chain=(leaf, *path[1:]),
        )
        return peer, list(ours.values()), tuple(ders.get(id(c)) for c in path[:-1])

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
        if not entry.first <= (now - _EPOCH) // _ONE_SECOND < entry.end:
            return None
        self._validated.move_to_end(key)
        chain = entry.peer.chain
        ders = entry.ders
        for depth in range(len(chain) - 1):
            self._crls.check(chain[depth], chain[depth + 1], now, depth, ders[depth])
        return entry.peer

    def _remember(
        self,
        key: tuple[tuple[bytes, ...], bool],
        peer: PeerCertificate,
        presented: list[x509.Certificate],
        ders: tuple[bytes | None, ...],
        now: datetime.datetime,
    ) -> None:
        second = (now - _EPOCH) // _ONE_SECOND
        try:
            bounds = self._anchor_boundaries() + _boundaries(presented)
        except (ValueError, OverflowError):  # pragma: no cover - a time we cannot read
            return
        first, end = _MIN_SECOND, _MAX_SECOND
        for bound in bounds:
            if bound <= second - 2:
                first = max(first, bound + 2)
            elif bound >= second + 2:
                end = min(end, bound - 1)
            else:
                return  # a validity period starts or ends right now: not worth keeping
        validated = self._validated
        validated[key] = _Validated(peer, ders, self._generation, first, end)
        validated.move_to_end(key)
        while len(validated) > self.chain_cache_size:
            validated.popitem(last=False)

    def _anchor_boundaries(self) -> list[int]:
        bounds = self._anchor_bounds
        if bounds is None:
            bounds = self._anchor_bounds = _boundaries(self._anchors)
        return bounds

    def _verify_store(self, now: datetime.datetime) -> crypto.X509Store:
        """
        The OpenSSL store of our anchors for validations at C{now}, reused while the second
        is the same (OpenSSL's validation time has one-second resolution; a store's time
        can be set only once, hence one store per second rather than one per handshake).
        """
        # calendar.timegm(now.timetuple()), as pyOpenSSL's set_time computes it (whole
        # seconds, rounded down), in integer arithmetic without building a time tuple.
        second = (now - _EPOCH) // _ONE_SECOND
        if self._store is None or self._store_second != second:
            store = crypto.X509Store()
            for anchor in self._openssl_anchors:
                store.add_cert(anchor)
            store.set_time(now)
            store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
            self._store = store
            self._store_second = second
        return self._store

    def _anchor_objects(self) -> dict[Any, x509.Certificate]:
        """Our anchors by their OpenSSL X509 structure (the store hands back the same ones)."""
        mapping = self._anchor_map
        if mapping is None:
            mapping = {o._x509: a for o, a in zip(self._openssl_anchors, self._anchors,
                                                  strict=True)}  # fmt: skip
            self._anchor_map = mapping
        return mapping

    def _issuer_name_der(self, cert: x509.Certificate, der: bytes | None) -> bytes:
        """The key of the once-per-issuer "no CRL" warning (see L{CRLSet.issuer_name_der})."""
        return self._crls.issuer_name_der(cert, der)
