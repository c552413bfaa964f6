"""
Deciding whether a peer's certificate chain proves its identity (spec §4, §11.7, §11.8), and
remembering which keys we have seen for each identity (§9.3, §11.15).

How validation is split between OpenSSL and this module:

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
    at: it is trusted by configuration, not by its signature.

  - B{Revocation} (§11.8) is ours too, with C{cryptography}, on the verified path. OpenSSL's
    C{CRL_CHECK} flags give the wrong semantics for this protocol: a missing CRL is a hard
    failure there (we must soft-fail and log), a CRL past C{nextUpdate} is rejected there (we
    must use it and log that it is stale), and its delta/indirect CRL processing goes beyond
    what version 1 defines. Here a CRL counts for a certificate when its issuer name equals
    the certificate's issuer and its signature verifies with the key of the next
    certificate on the path; that is the whole rule.

  - B{The leaf profile} of §4 (rfc822Name, keyUsage, EKU, cA=FALSE, key type) is checked
    last, once the chain is known to be trusted.

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
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    PublicKeyAlgorithmOID,
    SignatureAlgorithmOID,
)
from OpenSSL import crypto
from zope.interface import Interface, implementer

from sixchat import sigalgs
from sixchat.errors import (
    AlertError,
    BadCertificate,
    CertificateExpired,
    CertificateRevoked,
    SixchatError,
    UnknownCA,
)
from sixchat.identity import (
    MAX_CHAIN,
    normalize_identity,
    same_identity,
    san_rfc822_names,
    spki_sha256,
)

__all__ = [
    "OPENSSL_ERRORS",
    "PIN_POLICIES",
    "IPinStore",
    "InMemoryPinStore",
    "PeerCertificate",
    "PinPolicy",
    "TrustLoadError",
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

_STRONG_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"})
_EDDSA_SIGNATURES = frozenset({SignatureAlgorithmOID.ED25519, SignatureAlgorithmOID.ED448})
_STRONG_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_LEAF_EKUS = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION})
_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_SECOND = datetime.timedelta(seconds=1)
_MIN_SECOND = (datetime.datetime.min.replace(tzinfo=datetime.UTC) - _EPOCH) // _ONE_SECOND
_MAX_SECOND = (datetime.datetime.max.replace(tzinfo=datetime.UTC) - _EPOCH) // _ONE_SECOND

#: Validated chains a trust store keeps by default (see L{TrustStore._cached}).
CHAIN_CACHE_SIZE = 512
_BASIC_CONSTRAINTS = ExtensionOID.BASIC_CONSTRAINTS
_KEY_USAGE = ExtensionOID.KEY_USAGE
_EXTENDED_KEY_USAGE = ExtensionOID.EXTENDED_KEY_USAGE


class TrustLoadError(SixchatError):
    """The trust anchors or CRLs could not be loaded; one actionable line for the user."""


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


def _der_skip(data: bytes, pos: int, tag: int | None = None) -> int:
    """The position after the DER element at C{pos} (of C{tag}, if given)."""
    if tag is not None and data[pos] != tag:
        raise ValueError("unexpected tag")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        return pos + first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise ValueError("unsupported length")
    return pos + n + int.from_bytes(data[pos : pos + n], "big")


def _der_enter(data: bytes, pos: int, tag: int) -> int:
    """The position of the first element inside the constructed element at C{pos}."""
    if data[pos] != tag:
        raise ValueError("unexpected tag")
    first = data[pos + 1]
    return pos + 2 + (first & 0x7F if first >= 0x80 else 0)


def _issuer_field(der: bytes) -> bytes | None:
    """
    The bytes of the issuer field of a certificate's DER (Certificate, tbsCertificate,
    [0] version, serialNumber, signature, issuer), or None if they are not there.
    """
    try:
        pos = _der_enter(der, _der_enter(der, 0, 0x30), 0x30)
        if der[pos] == 0xA0:
            pos = _der_skip(der, pos)
        pos = _der_skip(der, _der_skip(der, pos, 0x02), 0x30)
        end = _der_skip(der, pos, 0x30)
    except (IndexError, ValueError):
        return None
    if end > len(der):
        return None
    return der[pos:end]


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is datetime.UTC:
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:  # pragma: no cover - undecodable attribute values
        return "(unprintable subject)"


def _name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "(empty name)"
    except ValueError:  # pragma: no cover
        return "(unprintable name)"


def _crl_is_newer(new: x509.CertificateRevocationList, old: x509.CertificateRevocationList) -> bool:
    """Whether C{new} supersedes C{old}: by CRL number when both have one, else by thisUpdate."""

    def number(crl: x509.CertificateRevocationList) -> int | None:
        try:
            return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (x509.ExtensionNotFound, ValueError):
            return None

    n_new, n_old = number(new), number(old)
    if n_new is not None and n_old is not None and n_new != n_old:
        return n_new > n_old
    return new.last_update_utc >= old.last_update_utc


#: Unverified CRLs held per issuer besides the newest genuine one (see TrustStore._crls).
MAX_CRL_CANDIDATES = 4


def _crl_age_key(crl: x509.CertificateRevocationList) -> tuple[int, datetime.datetime]:
    """Sort key: CRL number, then thisUpdate (what _crl_is_newer compares)."""
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        number = -1
    return number, crl.last_update_utc


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _crl_key_id(crl: x509.CertificateRevocationList) -> bytes | None:
    try:
        return crl.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except (x509.ExtensionNotFound, ValueError):
        return None


def _check_key_strength(cert: x509.Certificate, depth: int) -> None:
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


def _check_signature_strength(cert: x509.Certificate, depth: int) -> None:
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


def _check_leaf(
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
        self._issuer_names: dict[bytes, bytes] = {}
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
        # Per (issuer name, authority key id): candidate CRLs, newest first. Only a CRL that
        # names an anchor can be checked when it is added; one from an intermediate is
        # checked against the path's issuer at validation. Keeping candidates (not just the
        # newest) means an unverifiable CRL with a higher number cannot displace the genuine
        # one and turn revocation into a soft fail; validation then drops what it proves
        # forged or superseded.
        self._crls: dict[tuple[x509.Name, bytes | None], list[x509.CertificateRevocationList]] = {}
        self._crl_verified: dict[tuple[bytes, bytes], bool] = {}
        self._warned: set[object] = set()
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
        anchors = _load_anchors(Path(trust_path))
        crls = [crl for path in crl_paths for crl in _load_crls(Path(path))]
        return cls(anchors, crls, warn=warn)

    @property
    def anchors(self) -> list[x509.Certificate]:
        return list(self._anchors)

    @property
    def crls(self) -> list[x509.CertificateRevocationList]:
        """The newest CRL held per issuer (name and key identifier)."""
        return [candidates[0] for candidates in self._crls.values()]

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
        issuer = crl.issuer
        named_anchors = [a for a in self._anchors if a.subject == issuer]
        if named_anchors and not any(self._crl_signed_by(crl, a) for a in named_anchors):
            return f"CRL of {_name(issuer)} is not signed by that anchor's key; ignored"
        key = (issuer, _crl_key_id(crl))
        candidates = self._crls.get(key, [])
        if named_anchors:
            # Verified just now: it supersedes every candidate it is newer than.
            if candidates and not _crl_is_newer(crl, candidates[0]):
                return f"CRL of {_name(issuer)} is older than the one already held; ignored"
            candidates = [crl]
        else:
            good = [c for c in candidates if self._crl_known_good(c)]
            if (good and not _crl_is_newer(crl, good[0])) or any(
                c.fingerprint(hashes.SHA256()) == crl.fingerprint(hashes.SHA256())
                for c in candidates
            ):
                return f"CRL of {_name(issuer)} is older than the one already held; ignored"
            candidates = sorted([*candidates, crl], key=_crl_age_key, reverse=True)
            while len(candidates) > MAX_CRL_CANDIDATES:
                # Drop the oldest candidate, never the newest one known to be genuine.
                keep = good[0] if good else None
                victim = next(c for c in reversed(candidates) if c is not keep)
                candidates.remove(victim)
        self._crls[key] = candidates
        self._generation += 1
        self._validated.clear()
        return None

    def _crl_known_good(self, crl: x509.CertificateRevocationList) -> bool:
        """Has C{crl} verified with some issuer's key (at validation) before?"""
        digest = hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).digest()
        return any(ok for (d, _), ok in self._crl_verified.items() if d == digest)

    def _crl_signed_by(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        cache_key = (
            hashlib.sha256(crl.public_bytes(serialization.Encoding.DER)).digest(),
            spki_sha256(issuer.public_key()),
        )
        verified = self._crl_verified.get(cache_key)
        if verified is None:
            try:
                verified = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except (TypeError, ValueError, UnsupportedAlgorithm):
                verified = False
            if len(self._crl_verified) > 4096:
                self._crl_verified.clear()
            self._crl_verified[cache_key] = verified
        return verified

    def _warn_once(self, key: object, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

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
                _check_key_strength(cert, depth)
                _check_signature_strength(cert, depth)
            elif id(cert) not in strong_anchors:
                # The path ends at a trust anchor; one of our own anchor objects (the store
                # hands back ours) is checked once, its key being part of our configuration.
                _check_key_strength(cert, depth)
                if any(cert is anchor for anchor in self._anchors):
                    strong_anchors.add(id(cert))
        for depth in range(last):
            cert = path[depth]
            self._check_revocation(cert, path[depth + 1], now, depth, ders.get(id(cert)))

        names, alg, public_key = _check_leaf(path[0], require_key_encipherment)
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
            self._check_revocation(chain[depth], chain[depth + 1], now, depth, ders[depth])
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
        """
        C{cert.issuer.public_bytes()}, remembered by the issuer field's bytes in C{der}: the
        same value (it is made from those bytes alone) without building the name's objects
        on every handshake.
        """
        raw = _issuer_field(der) if der is not None else None
        if raw is None:
            return cert.issuer.public_bytes()
        known = self._issuer_names.get(raw)
        if known is None:
            known = cert.issuer.public_bytes()
            if len(self._issuer_names) >= 256:
                self._issuer_names.clear()
            self._issuer_names[raw] = known
        return known

    def _check_revocation(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        depth: int,
        der: bytes | None = None,
    ) -> None:
        """C{der}, if given, is C{cert}'s DER (it saves parsing the issuer name)."""
        usable = []
        for (name, key_id), candidates in list(self._crls.items()):
            if name != cert.issuer:
                continue
            forged = []
            chosen = None
            for crl in candidates:
                if self._crl_signed_by(crl, issuer):
                    chosen = crl
                    usable.append(crl)
                    break  # newest first: older candidates are superseded
                self._warn_once(
                    (
                        "bad-signature",
                        crl.fingerprint(hashes.SHA256()),
                        issuer.fingerprint(hashes.SHA256()),
                    ),
                    f"CRL naming {_name(name)} is not signed by that issuer's key; ignored",
                )
                if key_id is not None and key_id == _subject_key_id(issuer):
                    forged.append(crl)  # names this very key, yet its signature fails
            if chosen is not None:
                # Keep the genuine one and what is newer but not proven forged; drop the
                # superseded older ones.
                index = next(i for i, c in enumerate(candidates) if c is chosen)
                kept = [c for c in candidates[:index] if all(c is not f for f in forged)]
                if len(kept) != index or index + 1 != len(candidates):
                    self._crls[(name, key_id)] = [*kept, chosen]
            elif forged and len(forged) < len(candidates):
                self._crls[(name, key_id)] = [
                    c for c in candidates if all(c is not f for f in forged)
                ]
        if not usable:
            # Keyed by the issuer name's DER, and the message made only the first time: this
            # runs on every handshake with a peer whose CA publishes no CRL.
            key = ("no-crl", self._issuer_name_der(cert, der))
            if key not in self._warned:
                self._warn_once(
                    key,
                    f"no CRL for issuer {_name(cert.issuer)}: revocation of the certificates "
                    "it issued is not checked",
                )
            return
        crl = usable[0]
        for other in usable[1:]:
            if _crl_is_newer(other, crl):
                crl = other
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            self._warn_once(
                ("stale", crl.fingerprint(hashes.SHA256())),
                f"CRL of {_name(crl.issuer)} is stale (its next update was due "
                f"{next_update:%Y-%m-%d %H:%M}Z); using it anyway",
            )
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CertificateRevoked(
                f"certificate at depth {depth} ({_subject(cert)}) is revoked"
            )


# -- loading anchors and CRLs -------------------------------------------------------------

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TrustLoadError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise TrustLoadError(f"cannot read {what} {path}: {e.strerror}") from None


def _certs_in(data: bytes, path: Path) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise TrustLoadError(f"a certificate in {path} is damaged") from None
    return []


def _load_anchors(path: Path) -> list[x509.Certificate]:
    if path.is_dir():
        anchors: list[x509.Certificate] = []
        try:
            entries = sorted(path.iterdir())
        except OSError as e:
            raise TrustLoadError(f"cannot list trust directory {path}: {e.strerror}") from None
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            anchors += _certs_in(_read(entry, "trust anchor file"), entry)
        if not anchors:
            raise TrustLoadError(f"no PEM certificate found in trust directory {path}")
        return anchors
    data = _read(path, "trust anchor file")
    anchors = _certs_in(data, path)
    if not anchors:
        try:
            anchors = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise TrustLoadError(f"no certificate found in trust anchor file {path}") from None
    return anchors


def _load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    data = _read(path, "CRL file")
    try:
        if b"-----BEGIN" in data:
            crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
            if not crls:
                raise TrustLoadError(f"{path} holds no X509 CRL")
            return crls
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustLoadError(f"{path} is not a readable CRL (PEM or DER)") from None


# -- pins (§9.3, §11.15) ------------------------------------------------------------------

#: The configurable reactions to a key change (§9.3).
PIN_POLICIES = ("accept", "warn", "refuse")


class IPinStore(Interface):
    """
    Per identity, the set of SPKI SHA-256 hashes accepted so far (§11.15). Identities are
    given normalized (L{normalize_identity}); implementations need not normalize again.
    """

    def known(identity: str) -> frozenset[bytes]:
        """The SPKI hashes accepted for C{identity}; empty if none."""

    def add(identity: str, spki_sha256: bytes) -> None:
        """Remember one more accepted SPKI hash for C{identity}."""


@implementer(IPinStore)
class InMemoryPinStore:
    """Pins for one process lifetime (tests, and UAs configured not to persist pins)."""

    def __init__(self) -> None:
        self._pins: dict[str, set[bytes]] = {}

    def known(self, identity: str) -> frozenset[bytes]:
        return frozenset(self._pins.get(normalize_identity(identity), ()))

    def add(self, identity: str, spki_sha256: bytes) -> None:
        self._pins.setdefault(normalize_identity(identity), set()).add(bytes(spki_sha256))


class PinPolicy:
    """
    What to do when an identity shows a key we have never accepted for it (§9.3).

    L{check} only classifies; recording is the caller's decision, made after the handshake
    is accepted (§11.15: the set holds keys "seen in an accepted handshake"), with L{add}.
    L{enforce} is L{check} plus the C{refuse} policy; a responder calls it only after M7 and
    M8 verified (§11.15).
    """

    def __init__(self, store: IPinStore | None = None, policy: str = "warn") -> None:
        if policy not in PIN_POLICIES:
            raise ValueError(f"pin policy must be one of {', '.join(PIN_POLICIES)}, not {policy!r}")
        self.store: IPinStore = store if store is not None else InMemoryPinStore()
        self.policy = policy

    def check(self, identity: str, spki_sha256: bytes) -> str:
        """C{'new'} (first contact), C{'known'} (in the set) or C{'changed'} (another key)."""
        if len(spki_sha256) != 32:
            raise ValueError("a pin is a 32-byte SHA-256")
        known = self.store.known(normalize_identity(identity))
        if not known:
            return "new"
        return "known" if bytes(spki_sha256) in known else "changed"

    def enforce(self, identity: str, spki_sha256: bytes) -> str:
        """
        L{check}, raising for a changed key under policy C{refuse}.

        @raise BadCertificate: the key changed and the policy is C{refuse} (§9.3).
        """
        result = self.check(identity, spki_sha256)
        if result == "changed" and self.policy == "refuse":
            raise BadCertificate(f"the key of {identity} changed and pin policy is refuse")
        return result

    def add(self, identity: str, spki_sha256: bytes) -> None:
        """Accept a key for C{identity} (an accepted handshake, or a certificate from IRP)."""
        if len(spki_sha256) != 32:
            raise ValueError("a pin is a 32-byte SHA-256")
        self.store.add(normalize_identity(identity), bytes(spki_sha256))
