"""
Deciding whether a peer's certificate chain proves its identity (spec §4, §11.7, §11.8): the
trust store, its path validation through OpenSSL and its cache of validated chains.

How validation is split between OpenSSL and this package:

  - B{Path building and RFC 5280 checks} are OpenSSL's (through pyOpenSSL's C{X509Store} and
    C{X509StoreContext}), never ours: signatures, validity periods, basicConstraints,
    pathLen, keyCertSign, unknown critical extensions. The store gets the configured anchors,
    the validation time and C{X509_V_FLAG_PARTIAL_CHAIN}, so every configured certificate is
    an anchor even if it is not self-signed (RFC 5280 §6.1: an anchor is a name and a key),
    C{X509_V_FLAG_POLICY_CHECK} (certificate policies; L{sixchat.trust.policy} decides the
    one case OpenSSL cannot) and C{X509_V_FLAG_X509_STRICT} (see C{_VERIFY_FLAGS}). OpenSSL
    takes the first presented issuer that fits; when a path fails and the peer sent
    alternative issuers, others are tried (L{sixchat.trust.paths.orderings}, bounded).
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
    failure there (the default C{soft} mode must soft-fail and log), a CRL past
    C{nextUpdate} is rejected there (soft mode must use it and log that it is stale), and
    its delta/indirect CRL processing goes beyond what version 1 defines. Every rule is in
    L{sixchat.trust.crl} (which the agent uses too): which CRLs are usable, their scope,
    their signers (with key rollover: L{TrustStore._crl_signers}), and the C{soft} and
    C{hard} revocation modes.

  - B{The leaf profile} of §4 (rfc822Name, keyUsage, EKU, cA=FALSE, key type) is checked
    last, once the chain is known to be trusted (L{sixchat.trust.profile}).

Order of checks, so that each failure gets one predictable alert: count (≤ 8) → parse →
OpenSSL path validation → chain strength → revocation → leaf profile.

A chain that passed is remembered (L{TrustStore} C{chain_cache}, see C{_cached}): presented
again while no validity period of a candidate certificate starts or ends and the CRLs are
the same, it gets the same result without the parsing, path validation and profile checks;
revocation is checked again at every use. So is the path above its leaf when the leaf's
issuer is an intermediate (C{issuer_cache}, see C{_via_known_issuer}): a new leaf presented
with exactly those intermediates is verified by OpenSSL against its issuer alone, the rest
of the path being known; revocation of the whole path is again checked at every use.
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
from sixchat.trust.cache import EPOCH, ONE_SECOND, KnownIssuer, Validated, ValidationCaches
from sixchat.trust.crl import REVOCATION_MODES
from sixchat.trust.crlset import CRLSet
from sixchat.trust.files import TrustLoadError, load_anchors, load_crls
from sixchat.trust.paths import orderings
from sixchat.trust.policy import explicit_policy_holds
from sixchat.trust.profile import (
    check_constrained_mailboxes,
    check_key_strength,
    check_leaf,
    check_signature_strength,
)

__all__ = [
    "CHAIN_CACHE_SIZE",
    "ISSUER_CACHE_SIZE",
    "OPENSSL_ERRORS",
    "PeerCertificate",
    "TrustStore",
]

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


#: OpenSSL verification flags: every configured certificate is an anchor (PARTIAL_CHAIN);
#: RFC 5280 §6.1 policy processing is on (POLICY_CHECK: the requireExplicitPolicy,
#: inhibitPolicyMapping and inhibitAnyPolicy constraints of the certificates, and policy
#: mapping, are enforced) with the default inputs: user-initial-policy-set any-policy,
#: initial-explicit-policy, -policy-mapping-inhibit and -any-policy-inhibit false; and
#: X509_STRICT: the RFC 5280 profile rules OpenSSL checks only in strict mode (a CA without
#: keyUsage or subjectKeyIdentifier, a non-root without authorityKeyIdentifier, an empty CA
#: subject, a root without basicConstraints, a leaf with keyCertSign, ...) are refused too
#: (docs/security.md, "X509_STRICT").
_VERIFY_FLAGS = (
    crypto.X509StoreFlags.PARTIAL_CHAIN
    | crypto.X509StoreFlags.POLICY_CHECK
    | crypto.X509StoreFlags.X509_STRICT
)
#: The same without policy processing: for a path OpenSSL refuses with
#: X509_V_ERR_NO_EXPLICIT_POLICY, which L{explicit_policy_holds} then decides.
_NO_POLICY_FLAGS = crypto.X509StoreFlags.PARTIAL_CHAIN | crypto.X509StoreFlags.X509_STRICT
_NO_EXPLICIT_POLICY = 43

#: Validated chains a trust store keeps by default (see L{TrustStore._cached}).
CHAIN_CACHE_SIZE = 512
#: Validated paths above a leaf (issuing intermediate to anchor) it keeps by default (see
#: L{TrustStore._via_known_issuer}).
ISSUER_CACHE_SIZE = 64


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


def _openssl_alert(error: crypto.X509StoreContextError) -> AlertError:
    code, depth, message = error.errors[0], error.errors[1], error.errors[2]
    return OPENSSL_ERRORS.get(code, BadCertificate)(f"certificate at depth {depth}: {message}")


def _mapped(
    cert: crypto.X509, ours: dict[Any, x509.Certificate], known: dict[Any, x509.Certificate]
) -> x509.Certificate:
    """A certificate of OpenSSL's verified path as our parsed object (see L{_validate})."""
    return ours.get(cert._x509) or known.get(cert._x509) or cert.to_cryptography()


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is datetime.UTC:
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


def _peer(
    path: tuple[x509.Certificate, ...], leaf_der: bytes, require_key_encipherment: bool
) -> PeerCertificate:
    """The result for a verified C{path}, once the leaf passes the §4 profile."""
    names, alg, public_key = check_leaf(path[0], require_key_encipherment)
    # The leaf object the checks used caches every parsed extension (about 3 KiB per
    # session, held as long as the session): keep a fresh, lean parse of the same DER.
    leaf = x509.load_der_x509_certificate(leaf_der)
    return PeerCertificate(
        leaf=leaf,
        leaf_der=leaf_der,
        names=names,
        alg=alg,
        public_key=public_key,
        spki_sha256=spki_sha256(public_key),
        chain=(leaf, *path[1:]),
    )


class TrustStore(ValidationCaches):
    """
    The locally configured trust anchors and CRLs, and the validator of peer chains.

    @param warn: called with one human-readable line when revocation could not be checked
        for an issuer (no usable CRL) or had to use a stale CRL; the Twisted layer passes a
        logger here. Each situation is reported once per issuer or CRL, not per handshake.
    """

    _verify_flags = _VERIFY_FLAGS
    _result = staticmethod(_peer)

    def __init__(
        self,
        anchors: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
        *,
        warn: Callable[[str], None] | None = None,
        chain_cache: int = CHAIN_CACHE_SIZE,
        issuer_cache: int = ISSUER_CACHE_SIZE,
        revocation: str = "soft",
    ) -> None:
        if revocation not in REVOCATION_MODES:
            raise ValueError(f"revocation must be soft or hard, not {revocation!r}")
        #: C{"soft"} or C{"hard"} (L{CRLSet.check}).
        self.revocation = revocation
        self._hard = revocation == "hard"
        self.warn = warn or _no_warning
        #: Validated chains (see L{_cached}); at most this many, 0 for none.
        self.chain_cache_size = chain_cache
        self._validated: OrderedDict[tuple[tuple[bytes, ...], bool], Validated] = OrderedDict()
        #: Validated paths above a leaf, by the exact DER of the intermediates presented with
        #: it, in order (see L{_via_known_issuer}); at most this many, 0 for none.
        self.issuer_cache_size = issuer_cache
        self._issuers: OrderedDict[tuple[bytes, ...], KnownIssuer] = OrderedDict()
        #: The OpenSSL store of each known issuer for the current second.
        self._issuer_stores: dict[tuple[bytes, ...], tuple[int, crypto.X509Store]] = {}
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
            taken, problem = self._add_crl(crl)
            if problem:
                raise TrustLoadError(problem)

    @classmethod
    def from_paths(
        cls,
        trust_path: str | Path,
        crl_paths: Iterable[str | Path] = (),
        *,
        warn: Callable[[str], None] | None = None,
        revocation: str = "soft",
    ) -> TrustStore:
        """
        Anchors from a PEM bundle (or a single DER certificate), or from every file in a
        directory that holds PEM certificates; CRLs from PEM or DER files.

        @raise TrustLoadError: if a path is missing or unreadable, a certificate or CRL is
            damaged, no certificate is found, or a CRL names an anchor that did not sign it.
        """
        anchors = load_anchors(Path(trust_path))
        crls = [crl for path in crl_paths for crl in load_crls(Path(path))]
        return cls(anchors, crls, warn=warn, revocation=revocation)

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
        taken: an older CRL than the one held, one that names an anchor as issuer but is
        not signed by it, or one that cannot be used at all (L{sixchat.trust.crl.crl_unusable}:
        a delta CRL, an unrecognised critical extension, ...).
        """
        taken, problem = self._add_crl(crl)
        if problem:
            self.warn(problem)
        return taken

    def _add_crl(self, crl: x509.CertificateRevocationList) -> tuple[bool, str | None]:
        """(taken, why not): an unusable CRL is not taken, its warning given already."""
        if self._crls.refuse_unusable(crl):
            return False, None
        problem = self._crls.add(crl, self._anchors)
        if problem is None:
            self._generation += 1
            self._validated.clear()
            self._issuers.clear()
            self._issuer_stores.clear()
        return problem is None, problem

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
        found = None
        if self.issuer_cache_size > 0 and len(certs_der) > 1:
            found = self._via_known_issuer(certs_der, now, require_key_encipherment)
        if found is None:
            found = self._validate(certs_der, now, require_key_encipherment)
            if self.issuer_cache_size > 0 and len(certs_der) > 1:
                self._remember_issuer(certs_der, *found, now)
        peer, presented, ders, signers = found
        if key is not None and all(
            any(s is c for c in peer.chain) for found in signers for s in found
        ):
            # A chain whose CRLs were verified with a signer off its path (key rollover) is
            # not kept: that signer's own checks would have to be made again at each use.
            self._remember(key, peer, presented, ders, signers, now)
        return peer

    def _validate(
        self, certs_der: Sequence[bytes], now: datetime.datetime, require_key_encipherment: bool
    ) -> tuple[
        PeerCertificate,
        list[x509.Certificate],
        tuple[bytes | None, ...],
        tuple[tuple[x509.Certificate, ...], ...],
    ]:
        """
        L{validate} itself: the peer, the presented certificates as parsed, the DER of each
        certificate of the path but the anchor, and the other CRL signers of each one's
        issuer (L{_crl_signers}).
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
        known = self._anchor_objects()
        first_error: AlertError | None = None
        verified = None
        for untrusted in orderings(parsed[1:], ours):
            try:
                verified = self._openssl_path(store, parsed[0], untrusted, ours, known, now)
                break
            except AlertError as e:
                first_error = first_error or e
        if verified is None:
            assert first_error is not None
            raise first_error
        path = tuple(_mapped(c, ours, known) for c in verified)

        check_constrained_mailboxes(path)
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
        signers = self._crl_signers(path, parsed, ours, store, now)
        hard = self._hard
        for depth in range(last):
            cert = path[depth]
            self._crls.check(
                cert, path[depth + 1], now, depth, ders.get(id(cert)),
                signers=signers[depth], hard=hard,
            )  # fmt: skip

        peer = _peer(path, certs_der[0], require_key_encipherment)
        ders_out = tuple(ders.get(id(c)) for c in path[:-1])
        return peer, list(ours.values()), ders_out, signers

    def _openssl_path(
        self,
        store: crypto.X509Store,
        leaf: crypto.X509,
        untrusted: list[crypto.X509],
        ours: dict[Any, x509.Certificate],
        known: dict[Any, x509.Certificate],
        now: datetime.datetime,
    ) -> list[crypto.X509]:
        """OpenSSL's verified path for C{leaf} with these intermediates, or its alert."""
        try:
            return crypto.X509StoreContext(store, leaf, untrusted).get_verified_chain()
        except crypto.X509StoreContextError as e:
            if e.errors[0] != _NO_EXPLICIT_POLICY:
                raise _openssl_alert(e) from None
        # OpenSSL's reading of an empty user-initial-policy-set (sixchat.trust.policy): the
        # path without policy processing, then policy processing here.
        unchecked = self._verify_store(now, policy=False)
        try:
            verified = crypto.X509StoreContext(unchecked, leaf, untrusted).get_verified_chain()
        except crypto.X509StoreContextError as again:
            raise _openssl_alert(again) from None
        if not explicit_policy_holds([_mapped(c, ours, known) for c in verified]):
            raise BadCertificate(
                "no certificate policy acceptable on the path, and its CA certificates "
                "require one (requireExplicitPolicy)"
            )
        return verified

    def _crl_signers(
        self,
        path: tuple[x509.Certificate, ...],
        parsed: list[crypto.X509],
        ours: dict[Any, x509.Certificate],
        store: crypto.X509Store,
        now: datetime.datetime,
    ) -> tuple[tuple[x509.Certificate, ...], ...]:
        """
        For each certificate of C{path} but the anchor, the other certificates of its issuer
        whose key may have signed the issuer's CRLs (RFC 5280 §6.3.3 (f): key rollover, a
        separate CRL-signing key): certificates higher on C{path} with the issuer's subject
        (self-issued), and presented certificates off the path with that subject whose own
        path validates to the same anchor, with the chain strength and revocation checks.
        A peer sending just its path (the usual case) costs a name comparison or two.
        """
        on_path = {id(c) for c in path}
        extra = [(o, c) for o, c in zip(parsed, ours.values(), strict=True)
                 if id(c) not in on_path]  # fmt: skip
        out = []
        for depth in range(len(path) - 1):
            issuer = path[depth + 1]
            found = [c for c in path[depth + 2 :] if c.subject == issuer.subject]
            for ossl, cert in extra:
                if cert.subject == issuer.subject and self._valid_signer(
                    ossl, parsed, ours, store, now, path[-1]
                ):
                    found.append(cert)
            out.append(tuple(found))
        return tuple(out)

    def _valid_signer(
        self,
        ossl: crypto.X509,
        parsed: list[crypto.X509],
        ours: dict[Any, x509.Certificate],
        store: crypto.X509Store,
        now: datetime.datetime,
        anchor: x509.Certificate,
    ) -> bool:
        """Whether a presented certificate off the path is a valid CRL signer (above)."""
        context = crypto.X509StoreContext(store, ossl, [o for o in parsed if o is not ossl])
        try:
            verified = context.get_verified_chain()
        except crypto.X509StoreContextError:
            return False
        known = self._anchor_objects()
        path = [_mapped(c, ours, known) for c in verified]
        if path[-1] is not anchor:
            return False
        try:
            for depth in range(len(path) - 1):
                check_key_strength(path[depth], depth)
                check_signature_strength(path[depth], depth)
                self._crls.check(path[depth], path[depth + 1], now, depth, hard=self._hard)
        except AlertError:
            return False
        return True

    def _verify_store(self, now: datetime.datetime, policy: bool = True) -> crypto.X509Store:
        """
        The OpenSSL store of our anchors for validations at C{now}, reused while the second
        is the same (OpenSSL's validation time has one-second resolution; a store's time
        can be set only once, hence one store per second rather than one per handshake).
        """
        # calendar.timegm(now.timetuple()), as pyOpenSSL's set_time computes it (whole
        # seconds, rounded down), in integer arithmetic without building a time tuple.
        second = (now - EPOCH) // ONE_SECOND
        if not policy:
            store = crypto.X509Store()
            for anchor in self._openssl_anchors:
                store.add_cert(anchor)
            store.set_time(now)
            store.set_flags(_NO_POLICY_FLAGS)
            return store
        if self._store is None or self._store_second != second:
            store = crypto.X509Store()
            for anchor in self._openssl_anchors:
                store.add_cert(anchor)
            store.set_time(now)
            store.set_flags(_VERIFY_FLAGS)
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
