"""
The registry's certificate authority (irp-1 §4): invitations, enrolment, renewal, revocation
and CRLs, over an L{IRegistryStore}.

The certificate work is plain functions without Twisted (L{check_csr}, L{new_token},
L{token_hash}); L{Authority} strings them together with the store, whose methods return
Deferreds, so it composes them but never touches a reactor. Time comes from the C{now}
callable the server derives from its injected clock.

Why these choices:

  - B{Tokens} are 256 bits from C{secrets}, URL-safe text (fits a URL, a chat message or a
    QR code). Only their SHA-256 is stored; lookup is by that hash, so no comparison of
    secret bytes ever happens in Python and the time a lookup takes says nothing about how
    close a guess was (constant-time comparison by construction). A token is consumed
    before the certificate is made, atomically in the store, so a token can never issue two
    certificates, even with two registry instances racing.
  - B{The CSR is checked before the token is spent}: a client whose CSR we refuse can fix
    it and retry with the same invitation.
  - B{The name the client expects is checked first}: an C{enroll} that carries an
    C{identity} attribute (an extension; the C{sixchat enroll} command sends it) for another
    identity than the invitation's is refused with C{forbidden} before the token is spent,
    so a typo does not waste the invitation.
  - B{Names in the CSR are ignored}: the leaf proves exactly the token's identity (or, on
    renewal, the connection's), over the CSR's public key, with the profile of irp-1 §4.2
    made by L{sixchat.pki.issue_leaf}; its lifetime never outlasts the CA's.
  - B{CRLs}: one per CA whose key the registry holds (the CA directory's certificate, which
    is also the anchor when it is a root; an intermediate's root is operated elsewhere and
    its CRL is not ours to sign). Each is valid for 7 days (C{nextUpdate}), reissued on
    every revocation seen (ours, or another process's, through L{Authority.refresh_crls}),
    and whenever the current one is more than a day old, so clients that cache a CRL never
    hold one near its C{nextUpdate}. CRL numbers increase strictly (milliseconds of the
    issue time, or the previous number plus one), so a newer CRL always supersedes an older
    one in every L{TrustStore}. Each new CRL is also fed to L{Authority.trust}, the store the
    registry validates client certificates with, so a revoked certificate is refused in the
    TLS handshake (alert certificate_revoked, irp-1 §7.1).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import PublicKeyAlgorithmOID
from twisted.internet import defer
from twisted.logger import Logger

from sixchat import pki, sigalgs
from sixchat.errors import BadCertificate
from sixchat.identity import is_valid_identity, same_identity
from sixchat.irp.messages import IRPError
from sixchat.irp.store.interfaces import IRegistryStore
from sixchat.trust import TrustStore

__all__ = [
    "CRL_MAX_AGE",
    "CRL_VALIDITY",
    "DEFAULT_INVITE_DAYS",
    "DEFAULT_LEAF_DAYS",
    "Authority",
    "check_csr",
    "create_invitation",
    "new_token",
    "token_hash",
]

log = Logger()

TOKEN_BYTES = 32
DEFAULT_INVITE_DAYS = 7
DEFAULT_LEAF_DAYS = 365
#: nextUpdate of every CRL (irp-1 §4.5: no more than 7 days ahead).
CRL_VALIDITY = timedelta(days=7)
#: A CRL older than this is reissued even without a new revocation.
CRL_MAX_AGE = timedelta(days=1)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def new_token() -> str:
    """
    A fresh invitation token: 256 bits from C{secrets}, URL-safe base64 without padding,
    never beginning with C{-}: a person types it after C{--token}, where a leading dash
    reads as an option (one token in 64 did; drawing again costs 0.02 bits of the 256).
    """
    while (token := secrets.token_urlsafe(TOKEN_BYTES)).startswith("-"):
        pass
    return token


def token_hash(token: str) -> bytes:
    """What the store keeps of a token, and what a presented token is looked up by."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def create_invitation(
    store: IRegistryStore, identity: str, expires: datetime
) -> defer.Deferred[str]:
    """
    Store a new token for C{identity} (its hash only) and fire with the token, which the
    caller hands to the user and never logs.

    @raise ValueError: if C{identity} is not a valid identity.
    """
    if not is_valid_identity(identity):
        raise ValueError(f"{identity!r} is not a valid identity (local@domain)")
    token = new_token()
    d: defer.Deferred[Any] = defer.maybeDeferred(
        store.add_token, token_hash(token), identity, expires
    )
    return d.addCallback(lambda _: token)


def check_csr(der: bytes) -> CertificatePublicKeyTypes:
    """
    The public key of a PKCS#10 request, if the request is well-formed, its signature (proof
    of possession) verifies, and the key is one of the leaf key types of E2E §4.

    @raise IRPError: C{bad_csr} otherwise (without id; the caller adds it).
    """
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise IRPError("bad_csr", "not a DER PKCS#10 request") from None
    try:
        if not csr.is_signature_valid:
            raise IRPError("bad_csr", "the request's signature does not verify")
        if getattr(csr, "public_key_algorithm_oid", None) == PublicKeyAlgorithmOID.RSASSA_PSS:
            raise IRPError("bad_csr", "RSA-PSS (id-RSASSA-PSS) keys are not allowed")
        key = csr.public_key()
        sigalgs.alg_for_public_key(key)
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise IRPError("bad_csr", "unsupported key or signature algorithm") from None
    except BadCertificate as e:
        raise IRPError(
            "bad_csr", f"{e.text}; use Ed25519, ECDSA P-256/P-384 or RSA >= 2048"
        ) from None
    return key


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:
        return False
    return True


class Authority:
    """
    The registry's CA.

    @param ca_key: the issuing CA's private key.
    @param ca_cert: the issuing CA's certificate (a root, or an intermediate whose chain up
        to the root is C{chain}).
    @param store: where invitations, issued certificates and revocations live.
    @param chain: the certificates above C{ca_cert}, as L{pki.load_ca_chain} reads them.
    @param now: the current time (timezone-aware UTC); the server passes its clock's.
    @param leaf_days: validity of the certificates issued (irp-1 §4.2: one year by default).
    """

    def __init__(
        self,
        ca_key: CertificateIssuerPrivateKeyTypes,
        ca_cert: x509.Certificate,
        store: IRegistryStore,
        *,
        chain: Sequence[x509.Certificate] = (),
        now: Callable[[], datetime] | None = None,
        leaf_days: int = DEFAULT_LEAF_DAYS,
        invite_days: int = DEFAULT_INVITE_DAYS,
        warn: Callable[[str], None] | None = None,
        revocation: str = "soft",
    ) -> None:
        self.ca_key = ca_key
        self.ca_cert = ca_cert
        self.store = store
        self.now = now or (lambda: datetime.now(UTC))
        self.leaf_days = leaf_days
        self.invite_days = invite_days
        path = [ca_cert, *chain]
        anchors = [c for c in path if _is_self_signed(c)] or [path[-1]]
        self.anchors: list[x509.Certificate] = anchors
        anchor_ders = {_der(a) for a in anchors}
        #: What follows an issued leaf in C{issued}: every intermediate, not the anchor.
        self.intermediates: list[bytes] = [_der(c) for c in path if _der(c) not in anchor_ders]
        self.issuer_der = _der(ca_cert)
        #: The trust store of the registry's users: the anchors, and our CRLs as they are made.
        self.trust = TrustStore(anchors, warn=warn, revocation=revocation)
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_der: bytes | None = None
        self._crl_serials: frozenset[int] | None = None
        self._crl_made: datetime | None = None
        self._crl_number = 0
        self._crl_lock = defer.DeferredLock()

    @classmethod
    def from_directory(
        cls,
        directory: str | os.PathLike[str],
        store: IRegistryStore,
        *,
        password: bytes | None = None,
        **kwargs: Any,
    ) -> Authority:
        """
        The CA of a directory in the L{sixchat.pki} format.

        @raise sixchat.pki.PKIError: with one line for the administrator.
        """
        key, cert = pki.load_ca(directory, password)
        return cls(key, cert, store, chain=pki.load_ca_chain(directory), **kwargs)

    @property
    def anchors_der(self) -> list[bytes]:
        """What C{ca} answers (irp-1 §4.1)."""
        return [_der(a) for a in self.anchors]

    # --- invitations and issuing ------------------------------------------------------------

    def invite(self, identity: str, valid_days: float | None = None) -> defer.Deferred[str]:
        """A one-time enrolment token for C{identity}, valid C{valid_days} (default 7)."""
        days = self.invite_days if valid_days is None else valid_days
        return create_invitation(self.store, identity, self.now() + timedelta(days=days))

    def enroll(
        self, token: str, csr: bytes, expected: str | None = None
    ) -> defer.Deferred[list[bytes]]:
        """
        irp-1 §4.2: fires with the leaf and the intermediates (DER), or fails with
        L{IRPError} C{bad_csr} or C{invalid_token} (without id).

        @param expected: the identity the client asked for (the C{identity} attribute, an
            extension): an invitation for another identity is refused with C{forbidden}
            I{before} the token is spent, so a typo in the name does not waste it.
        """
        return defer.ensureDeferred(self._enroll(token, csr, expected))

    async def _enroll(self, token: str, csr: bytes, expected: str | None = None) -> list[bytes]:
        public_key = check_csr(csr)
        hashed = token_hash(token)
        if expected is not None:
            invited = await self.store.token_identity(hashed, self.now())
            if invited is None:
                raise IRPError("invalid_token", "unknown, used or expired token")
            if not same_identity(invited, expected):
                # Only a holder of this valid token learns the name: they may enrol as it.
                raise IRPError(
                    "forbidden",
                    f"this invitation is for {invited}, not {expected}; the token was not used",
                )
        identity = await self.store.consume_token(hashed, self.now())
        if identity is None:
            raise IRPError("invalid_token", "unknown, used or expired token")
        chain = await self._issue(identity, public_key)
        log.info("enrolled {identity}", identity=identity)
        return chain

    def renew(self, identity: str, csr: bytes) -> defer.Deferred[list[bytes]]:
        """irp-1 §4.3: a new certificate for C{identity} (the connection's), same profile."""
        return defer.ensureDeferred(self._renew(identity, csr))

    async def _renew(self, identity: str, csr: bytes) -> list[bytes]:
        public_key = check_csr(csr)
        chain = await self._issue(identity, public_key)
        log.info("renewed the certificate of {identity}", identity=identity)
        return chain

    async def _issue(self, identity: str, public_key: CertificatePublicKeyTypes) -> list[bytes]:
        now = self.now().astimezone(UTC).replace(microsecond=0)
        not_after = min(now + timedelta(days=self.leaf_days), self.ca_cert.not_valid_after_utc)
        not_before = now - pki.CLOCK_SKEW
        if not_after <= now:
            log.error("cannot issue for {identity}: the CA certificate has expired",
                      identity=identity)  # fmt: skip
            raise IRPError("internal", "the registry's CA certificate has expired")
        leaf = pki.issue_leaf(
            self.ca_key, self.ca_cert, [identity], public_key,
            not_before=not_before, not_after=not_after,
        )  # fmt: skip
        leaf_der = _der(leaf)
        await self.store.record_issued(identity, leaf.serial_number, self.issuer_der, leaf_der)
        log.info(
            "issued certificate serial {serial} for {identity}, valid until {until}",
            serial=format(leaf.serial_number, "x"),
            identity=identity,
            until=not_after.isoformat(),
        )
        return [leaf_der, *self.intermediates]

    # --- revocation and CRLs ----------------------------------------------------------------

    def revoke(self, serial: int, issuer: bytes | None = None) -> defer.Deferred[set[str]]:
        """
        Revoke a certificate (idempotent): record it, drop its bindings (the store notifies
        watchers), and reissue the CRL at once. Fires with the identities whose bindings
        were removed.

        @param issuer: DER of the issuing CA; default: this authority's CA.
        """
        return defer.ensureDeferred(self._revoke(serial, issuer or self.issuer_der))

    async def _revoke(self, serial: int, issuer: bytes) -> set[str]:
        touched: set[str] = await self.store.revoke(serial, issuer, self.now())
        log.info("revoked certificate serial {serial}", serial=format(serial, "x"))
        await self.refresh_crls(force=True)
        return touched

    def crls(self) -> defer.Deferred[list[bytes]]:
        """irp-1 §4.5: the current CRL (DER) of every CA we hold the key of."""
        return defer.ensureDeferred(self._crls())

    async def _crls(self) -> list[bytes]:
        await self.refresh_crls()
        assert self._crl_der is not None
        return [self._crl_der]

    def refresh_crls(self, force: bool = False) -> defer.Deferred[bool]:
        """
        Reissue the CRL if there is none yet, it is older than L{CRL_MAX_AGE}, the store's
        revocations differ from those it lists (another process revoked), or C{force}.
        Fires with whether a new CRL was made.
        """
        return self._crl_lock.run(lambda: defer.ensureDeferred(self._refresh(force)))

    async def _refresh(self, force: bool) -> bool:
        now = self.now()
        revoked: list[tuple[int, datetime]] = await self.store.revoked(self.issuer_der)
        serials = frozenset(serial for serial, _when in revoked)
        fresh = self._crl_made is not None and now - self._crl_made < CRL_MAX_AGE
        if not force and fresh and serials == self._crl_serials:
            return False
        self._issue_crl(revoked, now)
        return True

    def _issue_crl(self, revoked: Iterable[tuple[int, datetime]], now: datetime) -> None:
        revoked = list(revoked)
        last_update = now.astimezone(UTC).replace(microsecond=0)
        self._crl_number = max(self._crl_number + 1, int(now.timestamp() * 1000))
        crl = pki.issue_crl(
            self.ca_key,
            self.ca_cert,
            revoked,
            last_update=last_update,
            next_update=last_update + CRL_VALIDITY,
            crl_number=self._crl_number,
        )
        self._crl = crl
        self._crl_der = crl.public_bytes(serialization.Encoding.DER)
        self._crl_serials = frozenset(serial for serial, _when in revoked)
        self._crl_made = now
        self.trust.add_crl(crl)
        log.info(
            "issued CRL number {number} of {ca} listing {count} certificate(s)",
            number=self._crl_number,
            ca=self.ca_cert.subject.rfc4514_string(),
            count=len(revoked),
        )

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        """The current CRL, if one was made yet."""
        return self._crl
