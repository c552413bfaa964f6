"""
The registry's side of TLS (irp-1 §1): its server context, asking for client certificates
and validating them by the E2E §4 rules only (L{ServerTLS}), and the guard that limits
connections still in their handshake (L{GuardedTLSFactory}). The client's options are
L{sixchat.irp.tls}.

Why this reaches into pyOpenSSL's binding: irp-1 §7.1 requires that a refused client
certificate ends the TLS handshake with a *specific* alert (42, 43, 44, 45 or 48). OpenSSL
derives the alert from the error code left in the X509_STORE_CTX when the verify callback
returns 0, and pyOpenSSL's public C{set_verify} gives the callback no way to set that code
(it leaves OpenSSL's own, or X509_V_OK, which maps to certificate_unknown). So the verify
callback is installed with C{SSL_CTX_set_verify} through C{OpenSSL._util}, and sets
C{X509_STORE_CTX_set_error} to the code whose alert the spec names. Everything else about the
context is public pyOpenSSL API; the chain itself is validated by L{TrustStore} (OpenSSL's
verifier with the spec's extra rules), never by hand. C{test_irp_client.TLSRegistryTests}
pins each alert.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi  # see the module docstring
from OpenSSL._util import lib as _lib
from twisted.internet.interfaces import IAddress, IDelayedCall, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from sixchat.errors import (
    AlertError,
    BadCertificate,
    CertificateExpired,
    CertificateRevoked,
    UnknownCA,
)
from sixchat.identity import Identity, rfc822_names
from sixchat.irp.server.protocol import IRPServerFactory, IRPServerProtocol
from sixchat.irp.tls import openssl_key
from sixchat.trust import PeerCertificate, TrustStore

__all__ = ["GuardedTLSFactory", "ServerTLS", "purpose_allowed"]

log = Logger()

# OpenSSL verify error codes chosen for the TLS alert they produce (ssl_x509err2alert).
_BAD_CERTIFICATE = _lib.X509_V_ERR_CERT_REJECTED  # -> bad_certificate(42)
_UNSUPPORTED = _lib.X509_V_ERR_INVALID_PURPOSE  # -> unsupported_certificate(43)
_REVOKED = _lib.X509_V_ERR_CERT_REVOKED  # -> certificate_revoked(44)
_EXPIRED = _lib.X509_V_ERR_CERT_HAS_EXPIRED  # -> certificate_expired(45)
_UNKNOWN_CA = _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY  # -> unknown_ca(48)

_OPENSSL_TO_CODE = {
    _lib.X509_V_ERR_CERT_HAS_EXPIRED: _EXPIRED,
    _lib.X509_V_ERR_CERT_NOT_YET_VALID: _EXPIRED,  # irp-1 §7.1: expired *or* not yet valid
    _lib.X509_V_ERR_CERT_REVOKED: _REVOKED,
    _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: _UNKNOWN_CA,
    _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT: _UNKNOWN_CA,
    _lib.X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: _UNKNOWN_CA,
    _lib.X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: _UNKNOWN_CA,
    _lib.X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: _UNKNOWN_CA,
    _lib.X509_V_ERR_CERT_UNTRUSTED: _UNKNOWN_CA,
}

_ALERT_TO_CODE: dict[type[AlertError], int] = {
    CertificateExpired: _EXPIRED,
    CertificateRevoked: _REVOKED,
    UnknownCA: _UNKNOWN_CA,
    BadCertificate: _BAD_CERTIFICATE,
}

def purpose_allowed(leaf: x509.Certificate) -> bool:
    """The E2E §4 keyUsage and EKU rules (refusals here are TLS alert 43)."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    allowed = {x509.ExtendedKeyUsageOID.CLIENT_AUTH, x509.ExtendedKeyUsageOID.EMAIL_PROTECTION}
    return any(oid in allowed for oid in eku)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The registry's TLS server context (an old-style context factory, as
    C{TLSMemoryBIOFactory} accepts): TLS 1.3 only, client certificates requested but
    optional (anonymous requests exist), each presented one validated by the E2E §4 rules
    and refused with the alert irp-1 §7.1 names. No session tickets and no session cache, so
    a revoked certificate can never ride on a resumed session (§7.7).
    """

    def __init__(
        self,
        credentials: Identity,
        trust: TrustStore,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.credentials = credentials
        self.trust = trust
        self.now = now or (lambda: datetime.now(UTC))
        self._peers: weakref.WeakKeyDictionary[SSL.Connection, PeerCertificate] = (
            weakref.WeakKeyDictionary()
        )
        self._callback = _ffi.callback("int (*)(int, X509_STORE_CTX *)", self._verify)
        self._context = self._make_context()

    def _make_context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.use_privatekey(openssl_key(self.credentials.private_key))
        ctx.use_certificate(crypto.X509.from_cryptography(self.credentials.leaf))
        for der in self.credentials.chain_der[1:]:
            ctx.add_extra_chain_cert(
                crypto.X509.from_cryptography(x509.load_der_x509_certificate(der))
            )
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        assert store is not None
        for anchor in self.trust.anchors:
            store.add_cert(crypto.X509.from_cryptography(anchor))
            ctx.add_client_ca(crypto.X509.from_cryptography(anchor))
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        _lib.SSL_CTX_set_verify(ctx._context, _lib.SSL_VERIFY_PEER, self._callback)
        return ctx

    def getContext(self) -> SSL.Context:
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def peer(self, tls_connection: Any) -> PeerCertificate | None:
        """The validated client certificate of a connection (None: anonymous)."""
        try:
            return self._peers.get(tls_connection)
        except TypeError:
            return None

    # the verify callback -----------------------------------------------------------------

    def _verify(self, ok: int, store_ctx: Any) -> int:
        try:
            return self._verify_inner(ok, store_ctx)
        except Exception:  # never let an exception cross into OpenSSL
            log.failure("client certificate verification failed unexpectedly")
            _lib.X509_STORE_CTX_set_error(store_ctx, _BAD_CERTIFICATE)
            return 0

    def _verify_inner(self, ok: int, store_ctx: Any) -> int:
        if not ok:
            error = _lib.X509_STORE_CTX_get_error(store_ctx)
            if error == _lib.X509_V_ERR_INVALID_PURPOSE:
                # OpenSSL's TLS-client purpose check would demand id-kp-clientAuth; irp-1 §1
                # forbids that (S/MIME certificates must work): we apply E2E §4's rule below.
                _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)
                return 1
            _lib.X509_STORE_CTX_set_error(store_ctx, _OPENSSL_TO_CODE.get(error, _BAD_CERTIFICATE))
            return 0
        if _lib.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
            return 1
        chain = self._chain(store_ctx)
        code, peer = self._check(chain)
        if code is not None:
            _lib.X509_STORE_CTX_set_error(store_ctx, code)
            return 0
        index = _lib.SSL_get_ex_data_X509_STORE_CTX_idx()
        ssl_ptr = _lib.X509_STORE_CTX_get_ex_data(store_ctx, index)
        connection = SSL.Connection._reverse_mapping.get(ssl_ptr)
        if connection is not None and peer is not None:
            self._peers[connection] = peer
        return 1

    @staticmethod
    def _chain(store_ctx: Any) -> list[x509.Certificate]:
        stack = _lib.X509_STORE_CTX_get1_chain(store_ctx)
        if stack == _ffi.NULL:
            return []
        try:
            certs = []
            for i in range(_lib.sk_X509_num(stack)):
                # get1_chain took a reference on each; the wrapper releases it.
                raw = _lib.sk_X509_value(stack, i)
                certs.append(crypto.X509._from_raw_x509_ptr(raw).to_cryptography())
            return certs
        finally:
            _lib.sk_X509_free(stack)

    def _check(
        self, chain: Sequence[x509.Certificate]
    ) -> tuple[int | None, PeerCertificate | None]:
        if not chain:
            return _BAD_CERTIFICATE, None
        leaf = chain[0]
        try:
            names = rfc822_names(leaf)
        except ValueError:
            return _BAD_CERTIFICATE, None
        if len(names) != 1:
            return _BAD_CERTIFICATE, None  # none, or ambiguous for IRP (§1)
        if not purpose_allowed(leaf):
            return _UNSUPPORTED, None
        ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        anchors = {a.public_bytes(serialization.Encoding.DER) for a in self.trust.anchors}
        sent = [d for d in ders if d not in anchors] or ders[:1]
        try:
            peer = self.trust.validate(sent, self.now())
        except AlertError as e:
            log.info("refused client certificate {names}: {reason}", names=names, reason=e.reason)
            return _ALERT_TO_CODE.get(type(e), _BAD_CERTIFICATE), None
        return None, peer


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """
    TLS around the registry's factory, with limits on connections still in their TLS
    handshake (L{RegistryConfig.tls_handshake_timeout} and the C{max_tls_handshakes*}
    limits). Without them a client could hold any number of connections that never start
    TLS, about 55 KB each, for the whole idle timeout.

    Its connections are plain C{TLSMemoryBIOProtocol}s, not Twisted's default
    C{BufferingTLSTransport}, which gathers the writes of one reactor turn into one
    C{SSL_write} at the price of a C{callLater(0)} per write: every answer of the registry
    is one complete record written once, so there is nothing to gather, and the timer was
    about 10 µs of CPU per lookup (docs/benchmarks.md). The plaintext stream is the same.
    """

    protocol = TLSMemoryBIOProtocol
    log = Logger()

    def __init__(self, context: Any, factory: IRPServerFactory) -> None:
        super().__init__(context, False, factory)
        self.clock = factory.clock
        self.config = factory.config
        self.handshaking = 0
        self.by_source: dict[str, int] = {}
        self.refused = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:
        from sixchat.protocol import source_key

        key = source_key(addr) if addr is not None else "?"
        config = self.config
        if (
            self.handshaking >= config.max_tls_handshakes
            or self.by_source.get(key, 0) >= config.max_tls_handshakes_per_source
        ):
            self.refused += 1
            self.log.debug("refusing a registry connection from {key}: TLS limit", key=key)
            return None
        proto = super().buildProtocol(addr)
        self.handshaking += 1
        self.by_source[key] = self.by_source.get(key, 0) + 1
        wrapped = proto.wrappedProtocol
        assert isinstance(wrapped, IRPServerProtocol)
        # Plain attributes rather than a closure: nothing of this outlives the handshake.
        wrapped.tls_guard = self
        wrapped.tls_source = key
        wrapped.tls_timer = self.clock.callLater(
            config.tls_handshake_timeout, proto.abortConnection
        )
        return proto

    def release(self, key: str, timer: IDelayedCall | None) -> None:
        """A connection from C{key} completed TLS or ended: its handshake slot is free."""
        if timer is not None and timer.active():
            timer.cancel()
        self.handshaking -= 1
        count = self.by_source[key] - 1
        if count:
            self.by_source[key] = count
        else:
            del self.by_source[key]
