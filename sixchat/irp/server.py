"""
The IRP registry server (irp-1): L{IRPServerProtocol} answers one connection's requests,
L{IRPServerFactory} holds what connections share (store, CA, watches, timers), and
L{IRPServerService} runs it all on an endpoint inside TLS.

The protocol speaks plain bytes: TLS is a wrapper around the factory
(C{TLSMemoryBIOFactory(ServerTLS(...), False, factory)}), and the only thing the protocol
needs from it, the validated client certificate, comes through the factory's C{peer_for}
callable. So tests drive the whole request handling with C{iosim} or a string transport and a
chosen certificate, and only the TLS-specific behaviour needs real sockets.

How the rules of irp-1 map onto the code:

  - B{Framing} (§1, §2): a L{RecordReader} refuses SEALED records, unknown types and
    oversized headers before buffering; each PLAIN payload goes through the hardened XML
    codec. Anything malformed, a request without a valid C{id}, or an C{id} already in flight
    ends the connection after an C{error bad_request} without id (§7.2). Everything else is
    answered with the request's id and the connection continues.
  - B{Pipelining}: every request runs as soon as it arrives, so answers leave in the order
    their work completes (irp-1 allows out-of-order answers).
  - B{Rate limit} (§6): a token bucket per connection, C{max_requests_per_second} deep and
    refilled at that rate, so bursts up to the limit pass and the sustained rate is the
    limit. A request over it gets C{rate_limited}; the connection is kept.
  - B{Idle timeout} (§5, §6): any request resets it; when it fires the connection is closed
    without an error.
  - B{Authentication}: the identity is the leaf's single rfc822Name (L{ServerTLS} refuses
    anything else at the handshake). Before every authenticated request the connection's
    certificate is checked against the store's revocations; a "not revoked" answer is
    trusted until a change notification for that identity arrives, and never longer than
    C{revocation_recheck} seconds (store notifications across processes are best effort).
    A notification also rechecks at once, so a revocation made anywhere, by the holder or
    an administrator, takes the identity (and, unless the lookup policy is public, the
    watches) away from every connection authenticated by that certificate (§7.7).
  - B{Watches} (§3.4): the factory keeps, per watched identity, the watching connections.
    Every store notification refreshes the identity's state once and pushes it to all of
    them; refreshes are numbered so that an older state never overtakes a newer one, and a
    new watch answers C{watching} followed by the newest state known.
  - B{Expiry}: a timer on the injected clock calls C{store.expire} at the next expiry and at
    least every second (bindings written by other instances expire too); the store notifies.
  - B{Served domains}: see L{RegistryConfig.domains}.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.application import service
from twisted.internet import defer, error, task
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.errors import AlertError
from sixchat.identity import Identity, is_valid_identity, normalize_identity
from sixchat.irp.authority import Authority
from sixchat.irp.gcpolicy import CollectorPolicy
from sixchat.irp.interfaces import ConflictError, IdentityState, IRegistryStore
from sixchat.irp.messages import (
    ANONYMOUS_REQUESTS,
    CA,
    CRL,
    MAX_CONTACTS,
    Ack,
    Certs,
    CRLData,
    Enroll,
    IRPError,
    Lookup,
    NodeBinding,
    Ping,
    Record,
    Register,
    Registered,
    Renew,
    Request,
    Revoke,
    Unregister,
    Unwatch,
    Watch,
    is_valid_id,
    parse_request,
)
from sixchat.irp.tls import ServerTLS
from sixchat.record import MAX_PLAINTEXT, RecordReader, plain_record
from sixchat.service import EndpointService
from sixchat.stanzas import format_timestamp
from sixchat.trust import PeerCertificate
from sixchat.xmlcodec import (
    Element,
    b64encode,
    encode_checked,
    escape_attribute,
    parse,
    serialize,
)

__all__ = [
    "DEFAULT_LISTEN",
    "LOOKUP_POLICIES",
    "IRPServerFactory",
    "IRPServerProtocol",
    "IRPServerService",
    "RegistryConfig",
]

DEFAULT_LISTEN = "tcp6:4604"
LOOKUP_POLICIES = ("authenticated", "public")
#: A client that does not read its pushes is disconnected once this many bytes of
#: C{presence} were written while its write buffer was full. (Answers need no such bound:
#: while the buffer is full we stop reading, so no new requests arrive.)
MAX_PUSH_BACKLOG = 1024 * 1024


@dataclass(frozen=True)
class RegistryConfig:
    """
    The registry's policies and limits (irp-1 §3.3, §6).

    @ivar lookup_policy: C{authenticated} (default) or C{public} (C{lookup} and C{watch}
        become anonymous, for federation).
    @ivar allow_private_addresses: accept loopback, link-local, unspecified, multicast and
        broadcast contacts (tests, private networks).
    @ivar domains: the domains this registry serves, lowercase. C{None} (default) serves every
        domain the registry's CA has issued for: every identity that can register here holds
        a certificate from the registry's anchors, so nothing needs filtering, and an identity
        the registry has never seen is C{not_found} anyway. Given explicitly, a C{lookup} or
        C{watch} of any other domain is C{not_found} (§7.4) and a C{register} by a
        certificate of another domain is C{forbidden}.
    @ivar revocation_recheck: seconds a connection trusts a "not revoked" answer without a
        change notification.
    @ivar tls_handshake_timeout: seconds a new connection has to complete its TLS handshake.
    @ivar max_tls_handshakes_per_source: connections from one source (IPv4 address, IPv6
        /64) that may be in their TLS handshake at once; past it (or past
        C{max_tls_handshakes} in all) a new TCP connection is closed at once. irp-1 sets no
        such limits; these have the shape of E2E §9.2, sized for many clients behind one
        address. Connections that completed TLS are not counted.
    """

    lookup_policy: str = "authenticated"
    allow_private_addresses: bool = False
    domains: frozenset[str] | None = None
    max_requests_per_second: int = 50
    max_watches: int = 1000
    max_nodes: int = 16
    idle_timeout: float = 600.0
    expiry_interval: float = 1.0
    crl_check_interval: float = 60.0
    revocation_recheck: float = 1.0
    tls_handshake_timeout: float = 15.0
    max_tls_handshakes: int = 1024
    max_tls_handshakes_per_source: int = 64

    def __post_init__(self) -> None:
        if self.lookup_policy not in LOOKUP_POLICIES:
            raise ValueError(f"lookup policy must be one of {', '.join(LOOKUP_POLICIES)}")
        if self.domains is not None:
            object.__setattr__(self, "domains", frozenset(d.lower() for d in self.domains))

    @property
    def public(self) -> bool:
        return self.lookup_policy == "public"


def _der(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.DER))


@functools.lru_cache(maxsize=64)
def _issuer_der_of(cert: Any) -> bytes:
    """
    DER of a connection's issuer (a CA certificate, the same few objects on every
    connection): revocation is rechecked about once a second per connection.
    """
    return _der(cert)


#: What L{fast_lookup} takes without the parser: ids as irp-1 §1 allows them, identities
#: of characters that need no escaping in an attribute (anything else goes the long way).
_LOOKUP_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_LOOKUP_IDENTITY = re.compile(rb"[A-Za-z0-9.@_+-]{3,320}")


def fast_lookup(payload: bytes) -> Lookup | None:
    """
    The request in C{payload} when it is a C{lookup} written exactly as
    C{<lookup id="ID" identity="IDENTITY"/>} (what clients send, sixchat's included) with a
    valid id and identity; else None, and the caller parses it. For every payload it
    accepts, the hardened parser and L{parse_request} give the same request (a property
    test checks it); it saves them on the registry's commonest request.
    """
    if not payload.startswith(b'<lookup id="') or not payload.endswith(b'"/>'):
        return None
    id_end = payload.find(b'"', 12)
    if id_end < 0 or _LOOKUP_ID.fullmatch(payload, 12, id_end) is None:
        return None
    if not payload.startswith(b'" identity="', id_end):
        return None
    start = id_end + 12
    if _LOOKUP_IDENTITY.fullmatch(payload, start, len(payload) - 3) is None:
        return None
    identity = payload[start:-3].decode("ascii")
    if not is_valid_identity(identity):
        return None
    return Lookup(payload[12:id_end].decode("ascii"), identity)


def record_bytes(state: IdentityState, rid: str) -> bytes:
    """
    C{serialize(Record(state.identity, _nodes(state), state.cert, rid).to_element())}, byte
    for byte (a property test checks it), without building the tree: the answer to
    every lookup. Everything after the id depends on the state alone and is cached by it
    (L{_record_tail}).

    @raise ValueError: where that raises (a code point outside XML C{Char}).
    """
    return b'<record id="' + encode_checked(escape_attribute(rid)) + _record_tail(state)


@functools.lru_cache(maxsize=1024)
def _record_tail(state: IdentityState) -> bytes:
    """
    The part of L{record_bytes} after the id, from its closing quote on. Memoised by the
    state's value (states are immutable): the timestamps, base64 and escaping of an
    identity's record are computed once while its bindings stay the same. The SQLite
    store hands out the very same state objects for unchanged rows, so a hit costs a hash.
    """
    esc = escape_attribute
    parts = ['" identity="', esc(state.identity), '"']
    children: list[str] = []
    for b in state.bindings:
        children.append(
            f'<node name="{esc(b.node)}" until="{esc(format_timestamp(b.until))}" '
            f'updated="{esc(format_timestamp(b.updated))}">'
        )
        for c in b.contacts:
            children.append(f'<contact host="{esc(c.host)}" port="{esc(str(c.port))}"/>')
        cert = b64encode(b.cert)  # the base64 alphabet needs no escaping
        children.append(f"<cert>{cert}</cert></node>" if cert else "<cert/></node>")
    if state.cert is not None:
        cert = b64encode(state.cert)
        children.append(f"<cert>{cert}</cert>" if cert else "<cert/>")
    if children:
        parts.append(">")
        parts.extend(children)
        parts.append("</record>")
    else:
        parts.append("/>")
    return encode_checked("".join(parts))


def _nodes(state: IdentityState) -> list[NodeBinding]:
    return [
        NodeBinding(b.node, b.contacts, b.cert, format_timestamp(b.until),
                    format_timestamp(b.updated))
        for b in state.bindings
    ]  # fmt: skip


def _key(identity: str) -> str | None:
    try:
        return normalize_identity(identity)
    except ValueError:
        return None


class _Watch:
    """One connection's watch of one identity; see the module docstring on ordering."""

    __slots__ = ("protocol", "key", "last_seq", "active", "pending")

    def __init__(self, protocol: IRPServerProtocol, key: str) -> None:
        self.protocol = protocol
        self.key = key
        self.last_seq = -1
        self.active = False
        self.pending: IdentityState | None = None

    def offer(self, seq: int, state: IdentityState) -> None:
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if self.active:
            self.protocol.push(state)
        else:
            self.pending = state


@implementer(IPushProducer, IHandshakeListener)
class IRPServerProtocol(Protocol):
    """
    One client connection of the registry (plain bytes; TLS is around it).

    It is its transport's producer: when a client stops reading and our write buffer fills,
    we stop reading its requests, so a client cannot make the registry buffer answers
    without bound; pushes past L{MAX_PUSH_BACKLOG} while the buffer is full end the
    connection.
    """

    log = Logger()
    factory: IRPServerFactory

    def __init__(self, factory: IRPServerFactory) -> None:
        self.factory = factory
        self.config = factory.config
        self._reader = RecordReader()
        self._inflight: set[str] = set()
        self._closing = False
        self._idle: IDelayedCall | None = None
        self._tokens = float(self.config.max_requests_per_second)
        self._tokens_at = 0.0
        self._resolved = False
        self._peer: PeerCertificate | None = None
        self._not_after: datetime | None = None  # the peer's leaf's (a getter builds it anew)
        self._identity_key: str | None = None
        self._checked_at: float | None = None
        self.watches: dict[str, _Watch] = {}
        self._producing = False  # registered as the transport's producer
        #: Set by L{GuardedTLSFactory}: it is told when TLS completes, or the connection ends.
        self.tls_guard: GuardedTLSFactory | None = None
        self.tls_source = ""
        self.tls_timer: IDelayedCall | None = None
        self._write_full = False  # the transport paused us: its write buffer is full
        self._push_backlog = 0  # bytes pushed since it became full

    # --- connection -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._tokens_at = self.factory.clock.seconds()
        self._idle = self.factory.clock.callLater(self.config.idle_timeout, self._idleTimeout)
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._producing = True

    # IPushProducer: the transport's write buffer is full / drained.

    def pauseProducing(self) -> None:
        self._write_full = True
        if self.transport is not None:  # None once the connection is lost
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self._write_full = False
        self._push_backlog = 0
        if not self._closing and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        pass

    def close(self) -> None:
        """Close once what is queued is written (without a producer, which holds TLS open)."""
        self._closing = True
        if self.transport is None:
            return
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self._closing = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.factory.connections.discard(self)
        self.factory.forget(self)
        self._release_tls()
        # The TLS wrapper keeps us as its producer after the connection is lost, and we keep
        # it as our transport: without this, every closed connection (TLS state included)
        # would wait for a full garbage collection (see sixchat.irp.gcpolicy).
        self.transport = None

    def handshakeCompleted(self) -> None:
        """C{IHandshakeListener}: the TLS handshake is done (see L{GuardedTLSFactory})."""
        self._release_tls()

    def _release_tls(self) -> None:
        guard = self.tls_guard
        if guard is not None:
            self.tls_guard = None
            timer, self.tls_timer = self.tls_timer, None
            guard.release(self.tls_source, timer)

    def _idleTimeout(self) -> None:
        self._idle = None
        self.log.debug("closing an idle registry connection")
        self.close()

    @property
    def peer(self) -> PeerCertificate | None:
        """The connection's validated certificate, or None (anonymous, or revoked)."""
        self._resolve()
        return self._peer

    @property
    def identity(self) -> str | None:
        peer = self.peer
        return peer.names[0] if peer is not None else None

    def _resolve(self) -> None:
        if self._resolved:
            return
        self._resolved = True
        peer = self.factory.peer_for(self.transport) if self.transport is not None else None
        if peer is not None and peer.names:
            self._peer = peer
            self._not_after = peer.leaf.not_valid_after_utc
            self._identity_key = _key(peer.names[0])
            self.factory.track(self)

    # --- input ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._resolve()
        self._reader.feed(data)
        while not self._closing:
            try:
                record = self._reader.next_record(sealed_allowed=False)
            except AlertError as e:
                self._fatal(f"record layer: {e.text or e.reason}")
                return
            if record is None:
                return
            _type, _head, payload = record
            lookup = fast_lookup(payload)
            if lookup is not None:
                self._request_lookup(lookup)
                continue
            try:
                element = parse(payload)
            except AlertError as e:
                self._fatal(e.text or "malformed XML")
                return
            self._request(element)

    def _request_lookup(self, request: Lookup) -> None:
        """L{_request} for a lookup L{fast_lookup} recognised (its id and identity valid)."""
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.config.idle_timeout)
        rid = request.id
        if rid in self._inflight:
            self._fatal(f"id {rid} is already in flight")
            return
        if not self._take_token():
            self._send(IRPError("rate_limited", "too many requests", rid).to_element())
            return
        self._inflight.add(rid)
        if not self._lookup_now(request):
            d = defer.ensureDeferred(self._dispatch(request))
            d.addCallback(self._answered, rid)

    def _request(self, element: Element) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.config.idle_timeout)
        rid = element.get("id")
        if not is_valid_id(rid):
            self._fatal("request without a valid id")
            return
        assert rid is not None
        if rid in self._inflight:
            self._fatal(f"id {rid} is already in flight")
            return
        if not self._take_token():
            self._send(IRPError("rate_limited", "too many requests", rid).to_element())
            return
        try:
            request = parse_request(element, self.config.allow_private_addresses)
        except IRPError as e:
            if e.id is None:
                self._fatal(e.text)
            else:
                self._send(e.to_element())
            return
        self._inflight.add(rid)
        if isinstance(request, Lookup) and self._lookup_now(request):
            return
        d = defer.ensureDeferred(self._dispatch(request))
        d.addCallback(self._answered, rid)

    def _lookup_now(self, request: Lookup) -> bool:
        """
        The registry's commonest request without the coroutine machinery of L{_dispatch},
        when nothing needs awaiting before the store: the registry is ready and the
        connection's identity was checked recently (or lookups are public). Same checks and
        answers as L{_dispatch} and L{_handle}, which handle every other case (errors,
        revocation rechecks). Returns False to leave the request to them. About an eighth
        of a lookup's cost (docs/benchmarks.md).
        """
        factory = self.factory
        if not factory._ready or not factory.serves(request.identity):
            return False
        store = factory.store
        when = factory.now()
        if not self.config.public:
            peer = self.peer
            if peer is None or self._not_after is None or when >= self._not_after:
                return False  # unauthenticated: L{_authenticated} answers
            now = factory.clock.seconds()
            checked = self._checked_at
            if checked is None or now - checked >= self.config.revocation_recheck:
                # The revocation recheck (about once a second per connection) and the
                # lookup go to the store together: one trip instead of two in a row.
                reads: list[defer.Deferred[Any]] = [
                    store.is_revoked(peer.leaf.serial_number, self._issuer_der(peer)),  # type: ignore[list-item]
                    store.state(request.identity, when),  # type: ignore[list-item]
                ]
                both: defer.Deferred[list[Any]] = defer.gatherResults(reads, consumeErrors=True)
                both.addCallbacks(
                    self._rechecked, self._lookup_failed, callbackArgs=(peer, now, request.id),
                    errbackArgs=(request,),
                )  # fmt: skip
                return True
        d: defer.Deferred[IdentityState] = store.state(request.identity, when)  # type: ignore[assignment]
        d.addCallbacks(
            self._looked_up, self._lookup_failed, callbackArgs=(request.id,),
            errbackArgs=(request,),
        )  # fmt: skip
        return True

    def _rechecked(
        self, results: list[Any], peer: PeerCertificate, now: float, rid: str
    ) -> None:
        """L{_authenticated}'s revocation outcome, then the lookup's answer."""
        revoked, state = results
        if self._peer is not peer or revoked:
            if self._peer is peer:
                self.lose_identity("its certificate was revoked")
            error = IRPError("unauthenticated", "the client certificate was revoked", rid)
            self._answered([error.to_element()], rid)
            return
        self._checked_at = now
        self._looked_up(state, rid)

    def _looked_up(self, state: IdentityState, rid: str) -> None:
        if not state.known:
            self._answered([IRPError("not_found", "unknown identity", rid).to_element()], rid)
            return
        self._inflight.discard(rid)
        if self._closing or self.transport is None:
            return
        try:
            data = record_bytes(state, rid)
        except ValueError:  # a code point XML cannot carry: the generic path says so
            self._send(Record(state.identity, _nodes(state), state.cert, rid).to_element())
            return
        if len(data) > MAX_PLAINTEXT:  # the generic path logs and answers "internal"
            self._send(Record(state.identity, _nodes(state), state.cert, rid).to_element())
            return
        self.transport.write(plain_record(data))

    def _lookup_failed(self, failure: Failure, request: Lookup) -> None:
        if self.factory.running:  # not the store closing under us at shutdown
            self.log.failure("registry request <{tag}> failed", failure, tag=request.tag)
        self._answered([IRPError("internal", "", request.id).to_element()], request.id)

    def _take_token(self) -> bool:
        now = self.factory.clock.seconds()
        rate = float(self.config.max_requests_per_second)
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _answered(self, elements: list[Element], rid: str) -> None:
        self._inflight.discard(rid)
        for element in elements:
            self._send(element)

    async def _dispatch(self, request: Request) -> list[Element]:
        rid = request.id
        try:
            await self.factory.whenReady()
            if request.tag not in ANONYMOUS_REQUESTS and not (
                self.config.public and request.tag in ("lookup", "watch", "unwatch")
            ):
                peer = await self._authenticated()
            else:
                peer = None
            return await self._handle(request, peer)
        except IRPError as e:
            return [IRPError(e.reason, e.text, rid).to_element()]
        except Exception:
            if self.factory.running:  # not the store closing under us at shutdown
                self.log.failure("registry request <{tag}> failed", tag=request.tag)
            return [IRPError("internal", "", rid).to_element()]

    # --- output -----------------------------------------------------------------------------

    def _send(self, element: Element) -> int:
        """Write one element; returns the bytes written."""
        if self._closing or self.transport is None:
            return 0
        data = serialize(element)
        if len(data) > MAX_PLAINTEXT:
            self.log.error(
                "a <{tag}> of {size} bytes does not fit a record; not sent",
                tag=element.tag,
                size=len(data),
            )
            rid = element.get("id")
            if rid is None:
                return 0
            data = serialize(IRPError("internal", "answer too large", rid).to_element())
        record = plain_record(data)
        self.transport.write(record)
        return len(record)

    def push(self, state: IdentityState) -> None:
        """Send a C{presence} (irp-1 §3.4: the C{node} children only)."""
        written = self._send(Record(state.identity, _nodes(state)).to_element())
        if self._write_full and written:
            self._push_backlog += written
            if self._push_backlog > MAX_PUSH_BACKLOG and self.transport is not None:
                self.log.info("closing a registry connection that does not read its pushes")
                self._closing = True
                self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fatal(self, text: str) -> None:
        """irp-1 §2 / §7.2: C{error bad_request} without id, then close."""
        self.log.debug("closing a registry connection: {why}", why=text)
        self._send(IRPError("bad_request", text).to_element())
        self.close()

    # --- authentication and revocation --------------------------------------------------------

    async def _authenticated(self) -> PeerCertificate:
        peer = self.peer
        if peer is None:
            raise IRPError("unauthenticated", "this request needs a client certificate")
        now = self.factory.clock.seconds()
        if self.factory.now() >= peer.leaf.not_valid_after_utc:
            raise IRPError("unauthenticated", "the client certificate has expired")
        recheck = self.config.revocation_recheck
        if self._checked_at is None or now - self._checked_at >= recheck:
            revoked = await self.factory.store.is_revoked(  # type: ignore[misc]
                peer.leaf.serial_number, self._issuer_der(peer)
            )
            if self._peer is not peer:  # lost meanwhile
                raise IRPError("unauthenticated", "the client certificate was revoked")
            if revoked:
                self.lose_identity("its certificate was revoked")
                raise IRPError("unauthenticated", "the client certificate was revoked")
            self._checked_at = now
        return peer

    @staticmethod
    def _issuer_der(peer: PeerCertificate) -> bytes:
        return _issuer_der_of(peer.chain[1]) if len(peer.chain) > 1 else peer.leaf_der

    def identity_changed(self) -> None:
        """
        A change notification for our identity: forget the cached revocation answer and
        check at once, so a revocation anywhere takes effect on this connection now.
        """
        self._checked_at = None
        if self._peer is None or self._closing:
            return
        peer = self._peer

        def checked(revoked: bool) -> None:
            if revoked and self._peer is peer:
                self.lose_identity("its certificate was revoked")
                self.factory.revocation_seen()

        def failed(failure: Failure) -> None:
            if self.factory.running:
                self.log.failure("revocation check failed", failure)

        d = defer.maybeDeferred(
            self.factory.store.is_revoked, peer.leaf.serial_number, self._issuer_der(peer)
        )
        d.addCallbacks(checked, failed)

    def lose_identity(self, why: str) -> None:
        """irp-1 §4.4, §7.7: later authenticated requests get C{unauthenticated}."""
        peer = self._peer
        if peer is None:
            return
        self.log.info(
            "connection of {identity} lost its identity: {why}", identity=peer.names[0], why=why
        )
        self._peer = None
        self.factory.untrack(self)
        self._identity_key = None
        if not self.config.public:
            for key in list(self.watches):
                self.factory.remove_watch(self, key)

    # --- requests ---------------------------------------------------------------------------

    async def _handle(self, request: Request, peer: PeerCertificate | None) -> list[Element]:
        rid = request.id
        factory = self.factory
        store = factory.store
        if isinstance(request, Ping):
            return [Ack("pong", rid).to_element()]
        if isinstance(request, CA):
            return [Certs(rid, factory.authority.anchors_der, "ca-certs").to_element()]
        if isinstance(request, CRL):
            crls = await factory.authority.crls()
            return [CRLData(rid, crls).to_element()]
        if isinstance(request, Enroll):
            chain = await factory.authority.enroll(request.token, request.csr)
            return [Certs(rid, chain, "issued").to_element()]
        if isinstance(request, Lookup):
            if not factory.serves(request.identity):
                raise IRPError("not_found", "this registry does not serve that domain")
            state: IdentityState = await store.state(request.identity, factory.now())  # type: ignore[misc]
            if not state.known:
                raise IRPError("not_found", "unknown identity")
            return [Record(state.identity, _nodes(state), state.cert, rid).to_element()]
        if isinstance(request, Watch):
            return await self._watch(request)
        if isinstance(request, Unwatch):
            key = _key(request.identity)
            if key is not None:
                factory.remove_watch(self, key)
            return [Ack("unwatched", rid).to_element()]
        assert peer is not None  # every other request is authenticated
        identity = peer.names[0]
        if isinstance(request, Register):
            return await self._register(request, peer)
        if isinstance(request, Unregister):
            removed = await store.unregister(identity, request.node)  # type: ignore[misc]
            if removed:
                self.log.info("unregistered {identity} node {node}", identity=identity,
                              node=request.node)  # fmt: skip
            return [Ack("unregistered", rid).to_element()]
        if isinstance(request, Renew):
            chain = await factory.authority.renew(identity, request.csr)
            return [Certs(rid, chain, "issued").to_element()]
        if isinstance(request, Revoke):
            serial = peer.leaf.serial_number
            await factory.authority.revoke(serial, self._issuer_der(peer))
            self.log.info(
                "certificate serial {serial} of {identity} revoked by its holder",
                serial=format(serial, "x"),
                identity=identity,
            )
            self.lose_identity("it revoked its certificate")
            return [Ack("revoked", rid).to_element()]
        raise IRPError("unsupported", f"<{request.tag}> is not supported")  # pragma: no cover

    async def _register(self, request: Register, peer: PeerCertificate) -> list[Element]:
        factory = self.factory
        identity = peer.names[0]
        if not factory.serves(identity):
            raise IRPError("forbidden", "this registry does not serve that domain")
        contacts = list(dict.fromkeys(request.contacts))[:MAX_CONTACTS]
        now = factory.now()
        until = now + timedelta(seconds=request.expires)
        try:
            await factory.store.register(  # type: ignore[misc]
                identity, request.node, contacts, peer.leaf_der, peer.leaf.serial_number,
                peer.leaf.not_valid_after_utc, now, until, self.config.max_nodes,
            )  # fmt: skip
        except ConflictError:
            raise IRPError(
                "conflict", f"an identity may have at most {self.config.max_nodes} nodes"
            ) from None
        factory.binding_added(until)
        self.log.info(
            "registered {identity} node {node}: {contacts} for {expires} s",
            identity=identity,
            node=request.node,
            contacts=" ".join(f"[{c.host}]:{c.port}" for c in contacts),
            expires=request.expires,
        )
        return [Registered(request.id, request.expires).to_element()]

    async def _watch(self, request: Watch) -> list[Element]:
        factory = self.factory
        rid = request.id
        if not factory.serves(request.identity):
            raise IRPError("not_found", "this registry does not serve that domain")
        key = _key(request.identity)
        assert key is not None  # parse_request checked the identity
        watch = self.watches.get(key)
        if watch is None:
            if len(self.watches) >= self.config.max_watches:
                raise IRPError("rate_limited", f"at most {self.config.max_watches} watches")
            watch = factory.add_watch(self, key)
            seq, state = await factory.fetch(request.identity)
            watch.offer(seq, state)
            state = watch.pending or state
            self._answered([Ack("watching", rid).to_element()], rid)
            self.push(state)
            watch.pending = None
            watch.active = True
            return []
        # A second watch of the same identity answers the same way and adds nothing (§7.5).
        seq, state = await factory.fetch(request.identity)
        watch.last_seq = max(watch.last_seq, seq)
        self._answered([Ack("watching", rid).to_element()], rid)
        self.push(state)
        return []


class IRPServerFactory(Factory):
    """
    What the registry's connections share: the store, the CA, the watches, and the expiry
    and CRL timers, all on the injected clock.

    @param store: an opened L{IRegistryStore}.
    @param authority: the registry's CA over the same store.
    @param clock: C{IReactorTime}; the registry's notion of now.
    @param peer_for: given a connection's transport, its validated client certificate or
        None; L{IRPServerService} reads it from L{ServerTLS}.
    """

    protocol = IRPServerProtocol  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        store: IRegistryStore,
        authority: Authority,
        clock: IReactorTime,
        config: RegistryConfig | None = None,
        peer_for: Callable[[Any], PeerCertificate | None] | None = None,
    ) -> None:
        self.store = store
        self.authority = authority
        self.clock = clock
        self.config = config or RegistryConfig()
        self.peer_for: Callable[[Any], PeerCertificate | None] = peer_for or (lambda _t: None)
        self.connections: set[IRPServerProtocol] = set()
        self._by_identity: dict[str, set[IRPServerProtocol]] = {}
        self._watchers: dict[str, dict[IRPServerProtocol, _Watch]] = {}
        self._fetch_seq = 0
        self._fetching: set[str] = set()
        self._dirty: set[str] = set()
        self._ready = False
        self._waiting: list[defer.Deferred[None]] = []
        self._running = False
        self._expiry_call: IDelayedCall | None = None
        self._expiring = False
        self._expiry_job: defer.Deferred[float] | None = None
        self._crl_loop: task.LoopingCall | None = None
        self._crl_check: IDelayedCall | None = None

    def buildProtocol(self, addr: Any) -> IRPServerProtocol:  # type: ignore[override]
        return IRPServerProtocol(self)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def serves(self, identity: str) -> bool:
        if self.config.domains is None:
            return True
        return identity.rpartition("@")[2].lower() in self.config.domains

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Subscribe to the store, make the first CRL, start the timers; the store is open."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self._running = True
        self.store.subscribe(self._changed)
        await self.authority.refresh_crls(force=True)
        self._schedule_expiry(0)
        self._crl_loop = task.LoopingCall(self._refresh_crls)
        self._crl_loop.clock = self.clock
        self._crl_loop.start(self.config.crl_check_interval, now=False)
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        """Stop the timers; fires once work they started (an expiry pass) is over."""
        self._running = False
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if self._crl_check is not None and self._crl_check.active():
            self._crl_check.cancel()
        self._crl_check = None
        if self._crl_loop is not None and self._crl_loop.running:
            self._crl_loop.stop()
        self._crl_loop = None
        job = self._expiry_job
        if job is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        job.addBoth(lambda _: done.callback(None))
        return done

    @property
    def running(self) -> bool:
        """Between L{start} and L{stop}."""
        return self._running

    def whenReady(self) -> defer.Deferred[None]:
        if self._ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    # --- identities and watches ---------------------------------------------------------------

    def track(self, protocol: IRPServerProtocol) -> None:
        if protocol._identity_key is not None:
            self._by_identity.setdefault(protocol._identity_key, set()).add(protocol)

    def untrack(self, protocol: IRPServerProtocol) -> None:
        key = protocol._identity_key
        if key is not None:
            holders = self._by_identity.get(key)
            if holders is not None:
                holders.discard(protocol)
                if not holders:
                    del self._by_identity[key]

    def forget(self, protocol: IRPServerProtocol) -> None:
        """The connection ended: its watches end with it."""
        self.untrack(protocol)
        for key in list(protocol.watches):
            self.remove_watch(protocol, key)

    def add_watch(self, protocol: IRPServerProtocol, key: str) -> _Watch:
        watch = _Watch(protocol, key)
        protocol.watches[key] = watch
        self._watchers.setdefault(key, {})[protocol] = watch
        return watch

    def remove_watch(self, protocol: IRPServerProtocol, key: str) -> None:
        protocol.watches.pop(key, None)
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.pop(protocol, None)
            if not watchers:
                del self._watchers[key]

    def fetch(self, identity: str) -> defer.Deferred[tuple[int, IdentityState]]:
        """The identity's state, numbered so later fetches win over earlier ones."""
        self._fetch_seq += 1
        seq = self._fetch_seq
        d: defer.Deferred[IdentityState] = self.store.state(identity, self.now())  # type: ignore[assignment]
        return d.addCallback(lambda state: (seq, state))

    def _changed(self, identity: str) -> None:
        """Store notification: some process changed this identity's bindings or revoked."""
        if not self._running:
            return
        key = _key(identity)
        if key is None:
            return
        for protocol in list(self._by_identity.get(key, ())):
            protocol.identity_changed()
        if key in self._watchers:
            self._refresh(key)

    def _refresh(self, key: str) -> None:
        if key in self._fetching:
            self._dirty.add(key)
            return
        self._fetching.add(key)

        def fetched(result: tuple[int, IdentityState]) -> None:
            seq, state = result
            for watch in list(self._watchers.get(key, {}).values()):
                watch.offer(seq, state)

        def failed(failure: Failure) -> None:
            self.log.failure("refreshing watchers of {key} failed", failure, key=key)

        def done(_: Any) -> None:
            self._fetching.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if self._running and key in self._watchers:
                    self._refresh(key)

        self.fetch(key).addCallbacks(fetched, failed).addBoth(done)

    # --- expiry -----------------------------------------------------------------------------

    def binding_added(self, until: datetime) -> None:
        """A binding expiring at C{until} was written: make sure the timer fires by then."""
        self._schedule_expiry(max(0.0, (until - self.now()).total_seconds()))

    def _schedule_expiry(self, delay: float) -> None:
        if not self._running:
            return
        call = self._expiry_call
        if call is not None and call.active():
            if call.getTime() <= self.clock.seconds() + delay:
                return
            call.cancel()
        self._expiry_call = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        if self._expiring:
            return
        self._expiring = True
        job = defer.ensureDeferred(self._expire_once())
        self._expiry_job = job
        job.addBoth(self._expired)

    async def _expire_once(self) -> float:
        delay = self.config.expiry_interval
        try:
            await self.store.expire(self.now())  # type: ignore[misc]
            if not self._running:
                return delay
            nxt: datetime | None = await self.store.next_expiry()  # type: ignore[misc]
        except Exception:
            if self._running:
                self.log.failure("expiring registry bindings failed")
            return delay
        if nxt is not None:
            delay = min(delay, max(0.0, (nxt - self.now()).total_seconds()))
        return delay

    def _expired(self, delay: Any) -> None:
        self._expiring = False
        self._expiry_job = None
        self._schedule_expiry(delay if isinstance(delay, float) else self.config.expiry_interval)

    # --- CRLs -------------------------------------------------------------------------------

    def _refresh_crls(self) -> defer.Deferred[Any]:
        return self.authority.refresh_crls().addErrback(
            lambda f: self.log.failure("refreshing the CRL failed", f)
        )

    def revocation_seen(self) -> None:
        """Another process revoked a certificate we hold a connection of: new CRL soon."""
        if self._crl_check is None or not self._crl_check.active():
            self._crl_check = self.clock.callLater(0, self._refresh_crls)


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


class IRPServerService(EndpointService):
    """
    The registry as a Twisted service: opens the store, listens on C{listen} (an endpoint
    string) inside TLS 1.3 with L{ServerTLS}, runs the factory's timers, and closes the store
    when stopped. The port is bound in C{privilegedStartService} so that "address in use"
    is one line on standard error before twistd daemonises.

    @param credentials: the registry's TLS server certificate and key.
    @param collector: the process's garbage-collection policy
        (L{sixchat.irp.gcpolicy.CollectorPolicy}), started and stopped with the registry and
        told to freeze once the registry is ready; None (default) leaves the collector
        alone. It is process-wide, so C{twistd sixchat-irp} passes one and library users
        decide for themselves.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        store: IRegistryStore,
        authority: Authority,
        credentials: Identity,
        listen: str = DEFAULT_LISTEN,
        config: RegistryConfig | None = None,
        collector: CollectorPolicy | None = None,
    ) -> None:
        self.store = store
        self.authority = authority
        self.collector = collector
        self.factory = IRPServerFactory(store, authority, reactor, config)
        self.tls = ServerTLS(credentials, authority.trust, now=self.factory.now)
        self.factory.peer_for = self._peer_for
        self.tls_factory = GuardedTLSFactory(self.tls, self.factory)
        super().__init__(reactor, listen, self.tls_factory)
        self._opened: defer.Deferred[Any] | None = None

    def _peer_for(self, transport: Any) -> PeerCertificate | None:
        handle = getattr(transport, "getHandle", None)
        return self.tls.peer(handle()) if handle is not None else None

    program = "sixchat-irp"
    what = "registry"

    def startService(self) -> None:
        if self.collector is not None:
            self.collector.startService()
        super().startService()
        self._opened = defer.ensureDeferred(self._open())

    async def _open(self) -> None:
        try:
            await self.store.open()  # type: ignore[misc]
            await self.factory.start()
        except Exception as e:
            text = str(e) or type(e).__name__
            self.log.critical("sixchat-irp: error: {text}", text=text)
            if self.reactor.running:
                self.reactor.stop()
            return
        if self.collector is not None:
            self.collector.freeze()  # start-up is over: modules, CA, trust store, CRL
        port = self.port
        host: Any = port.getHost() if port is not None else None
        self.log.info(
            "IRP registry for {ca} listening on {host} port {port} (lookup policy {policy})",
            ca=self.authority.ca_cert.subject.rfc4514_string(),
            host=getattr(host, "host", host),
            port=getattr(host, "port", ""),
            policy=self.factory.config.lookup_policy,
        )

    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.stopListening()
        await self.factory.stop()
        for protocol in list(self.factory.connections):
            protocol.close()
        if self._opened is not None:
            await self._opened
        await self.store.close()  # type: ignore[misc]
        if self.collector is not None and self.collector.running:
            self.collector.stopService()


def make_store(db: str, reactor: Any) -> IRegistryStore:
    """
    The store a C{--db} value names: a C{postgresql://} (or C{postgres://}) DSN opens the
    shared PostgreSQL store, anything else is a SQLite file.
    """
    if db.startswith(("postgresql://", "postgres://")):
        from sixchat.irp.postgres_store import PostgresStore  # type: ignore[import-not-found,unused-ignore]

        store: IRegistryStore = PostgresStore(db, reactor)
        return store
    from sixchat.irp.sqlite_store import SQLiteStore

    return SQLiteStore(db, reactor)
