"""
One connection of the registry (L{IRPServerProtocol}) and the factory that builds them
(L{IRPServerFactory}), which holds what a connection needs besides its transport: the store,
the CA, the L{RegistryHub} and the C{peer_for} callable that names the connection's validated
client certificate.

The protocol speaks plain bytes: TLS is a wrapper around the factory
(L{sixchat.irp.server.tls.GuardedTLSFactory}), and the only thing the protocol needs from it,
the validated client certificate, comes through C{peer_for}. So tests drive the whole request
handling with C{iosim} or a string transport and a chosen certificate, and only the
TLS-specific behaviour needs real sockets.

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
  - B{Watches} (§3.4), B{expiry} and B{CRLs}: see L{sixchat.irp.server.hub}.
  - B{Served domains}: see L{RegistryConfig.domains}.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.errors import AlertError
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
from sixchat.irp.server.authority import Authority
from sixchat.irp.server.config import MAX_PUSH_BACKLOG, RegistryConfig
from sixchat.irp.server.fastpaths import _nodes, fast_lookup, record_bytes
from sixchat.irp.server.hub import RegistryHub, Subscription, identity_key
from sixchat.record import MAX_PLAINTEXT, RecordReader, plain_record
from sixchat.trust import PeerCertificate
from sixchat.xmlcodec import Element, parse, serialize

if TYPE_CHECKING:
    from sixchat.irp.server.tls import GuardedTLSFactory

__all__ = ["IRPServerFactory", "IRPServerProtocol"]


class _ServerTransport(TypingProtocol):
    """
    What a connection uses of its transport: Twisted's TLS protocol in the registry, a
    C{StringTransport} in tests. Both provide all of it, though C{ITransport} names only
    C{write} and C{loseConnection}.
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def _der(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.DER))


@functools.lru_cache(maxsize=64)
def _issuer_der_of(cert: Any) -> bytes:
    """
    DER of a connection's issuer (a CA certificate, the same few objects on every
    connection): revocation is rechecked about once a second per connection.
    """
    return _der(cert)



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
        self.watches: dict[str, Subscription] = {}
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
        transport = self._transport()
        assert transport is not None
        transport.registerProducer(self, True)
        self._producing = True

    # IPushProducer: the transport's write buffer is full / drained.

    def pauseProducing(self) -> None:
        self._write_full = True
        transport = self._transport()
        if transport is not None:  # None once the connection is lost
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._write_full = False
        self._push_backlog = 0
        transport = self._transport()
        if not self._closing and transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def _transport(self) -> _ServerTransport | None:
        return cast("_ServerTransport | None", self.transport)

    def close(self) -> None:
        """Close once what is queued is written (without a producer, which holds TLS open)."""
        self._closing = True
        transport = self._transport()
        if transport is None:
            return
        if self._producing:
            self._producing = False
            transport.unregisterProducer()
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.factory.connections.discard(self)
        # Its identity and its watches end with it.
        if self._identity_key is not None:
            self.factory.hub.untrack(self._identity_key, self)
        for key in list(self.watches):
            self._unwatch(key)
        self._release_tls()
        # The TLS wrapper keeps us as its producer after the connection is lost, and we keep
        # it as our transport: without this, every closed connection (TLS state included)
        # would wait for a full garbage collection (see sixchat.irp.server.gcpolicy).
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
            self._identity_key = identity_key(peer.names[0])
            if self._identity_key is not None:
                self.factory.hub.track(self._identity_key, self)

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
        if not factory.hub.ready or not factory.serves(request.identity):
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
            transport = self._transport()
            if self._push_backlog > MAX_PUSH_BACKLOG and transport is not None:
                self.log.info("closing a registry connection that does not read its pushes")
                self._closing = True
                transport.abortConnection()

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
                self.factory.hub.revocation_seen()

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
        if self._identity_key is not None:
            self.factory.hub.untrack(self._identity_key, self)
        self._identity_key = None
        if not self.config.public:
            for key in list(self.watches):
                self._unwatch(key)

    def _unwatch(self, key: str) -> None:
        self.watches.pop(key, None)
        self.factory.hub.remove_watch(self, key)

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
            key = identity_key(request.identity)
            if key is not None:
                self._unwatch(key)
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
        factory.hub.binding_added(until)
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
        key = identity_key(request.identity)
        assert key is not None  # parse_request checked the identity
        watch = self.watches.get(key)
        if watch is None:
            if len(self.watches) >= self.config.max_watches:
                raise IRPError("rate_limited", f"at most {self.config.max_watches} watches")
            watch = factory.hub.add_watch(self, key)
            self.watches[key] = watch
            seq, state = await factory.hub.fetch(request.identity)
            watch.offer(seq, state)
            state = watch.pending or state
            self._answered([Ack("watching", rid).to_element()], rid)
            self.push(state)
            watch.pending = None
            watch.active = True
            return []
        # A second watch of the same identity answers the same way and adds nothing (§7.5).
        seq, state = await factory.hub.fetch(request.identity)
        watch.last_seq = max(watch.last_seq, seq)
        self._answered([Ack("watching", rid).to_element()], rid)
        self.push(state)
        return []


class IRPServerFactory(Factory[IRPServerProtocol]):
    """
    Builds the registry's connections and holds what they need besides their transport:
    the store, the CA, the L{RegistryHub} and C{peer_for}. The hub's timers run from
    L{start} to L{stop}.

    @param store: an opened L{IRegistryStore}.
    @param authority: the registry's CA over the same store.
    @param clock: C{IReactorTime}; the registry's notion of now.
    @param peer_for: given a connection's transport, its validated client certificate or
        None; L{IRPServerService} reads it from L{ServerTLS}.
    """

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
        self.hub = RegistryHub(store, authority, clock, self.config)

    def buildProtocol(self, addr: IAddress | None) -> IRPServerProtocol:
        return IRPServerProtocol(self)

    def start(self) -> defer.Deferred[None]:
        """Start the hub (store subscription, first CRL, timers); the store is open."""
        return self.hub.start()

    def stop(self) -> defer.Deferred[None]:
        """Stop the hub's timers; fires once work they started is over."""
        return self.hub.stop()

    @property
    def running(self) -> bool:
        """Between L{start} and L{stop}."""
        return self.hub.running

    def whenReady(self) -> defer.Deferred[None]:
        return self.hub.whenReady()

    def now(self) -> datetime:
        return self.hub.now()

    def serves(self, identity: str) -> bool:
        return self.hub.serves(identity)
