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
  - B{Overload}: a request that needs the store while the factory's L{Backlog} is full (too
    many requests of all connections already wait for it) also gets C{rate_limited}, at
    once, instead of joining an unbounded queue.
  - B{Idle timeout} (§5, §6): any request resets it; when it fires the connection is closed
    without an error.
  - B{Authentication} and what each request does: L{sixchat.irp.server.requests}.
  - B{Watches} (§3.4), B{expiry} and B{CRLs}: see L{sixchat.irp.server.hub}.
  - B{Served domains}: see L{RegistryConfig.domains}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

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
from sixchat.irp.messages import (
    IRPError,
    Lookup,
    Ping,
    Record,
    is_valid_id,
    parse_request,
)
from sixchat.irp.server.authority import Authority
from sixchat.irp.server.backlog import BUSY_TEXT, Backlog
from sixchat.irp.server.config import MAX_PUSH_BACKLOG, RegistryConfig
from sixchat.irp.server.fastpaths import _nodes, fast_lookup
from sixchat.irp.server.hub import RegistryHub, Subscription
from sixchat.irp.server.requests import RequestHandler
from sixchat.irp.store.interfaces import IdentityState, IRegistryStore
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
        #: Set once the connection is closing: nothing more is read or written.
        self.closing = False
        self._idle: IDelayedCall | None = None
        self._tokens = float(self.config.max_requests_per_second)
        self._tokens_at = 0.0
        self._producing = False  # registered as the transport's producer
        #: Set by L{GuardedTLSFactory}: it is told when TLS completes, or the connection ends.
        self.tls_guard: GuardedTLSFactory | None = None
        self.tls_source = ""
        self.tls_timer: IDelayedCall | None = None
        self._write_full = False  # the transport paused us: its write buffer is full
        self._push_backlog = 0  # bytes pushed since it became full
        self.requests = RequestHandler(self, factory)

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
        if not self.closing and transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def _transport(self) -> _ServerTransport | None:
        return cast("_ServerTransport | None", self.transport)

    def close(self) -> None:
        """Close once what is queued is written (without a producer, which holds TLS open)."""
        self.closing = True
        transport = self._transport()
        if transport is None:
            return
        if self._producing:
            self._producing = False
            transport.unregisterProducer()
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.factory.connections.discard(self)
        self.requests.forget()
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

    # --- input ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.requests.resolve()
        self._reader.feed(data)
        while not self.closing:
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
            self.send(IRPError("rate_limited", "too many requests", rid).to_element())
            return
        if not self.factory.backlog.admit():
            self.send(IRPError("rate_limited", BUSY_TEXT, rid).to_element())
            return
        self._inflight.add(rid)
        if not self.requests.lookup(request):
            d = defer.ensureDeferred(self.requests.dispatch(request))
            self.factory.backlog.track(d.addCallback(self.answered, rid))

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
            self.send(IRPError("rate_limited", "too many requests", rid).to_element())
            return
        try:
            request = parse_request(element, self.config.allow_private_addresses)
        except IRPError as e:
            if e.id is None:
                self._fatal(e.text)
            else:
                self.send(e.to_element())
            return
        if not isinstance(request, Ping) and not self.factory.backlog.admit():
            self.send(IRPError("rate_limited", BUSY_TEXT, rid).to_element())
            return
        self._inflight.add(rid)
        if isinstance(request, Lookup) and self.requests.lookup(request):
            return
        d = defer.ensureDeferred(self.requests.dispatch(request))
        self.factory.backlog.track(d.addCallback(self.answered, rid))

    def _take_token(self) -> bool:
        now = self.factory.clock.seconds()
        rate = float(self.config.max_requests_per_second)
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def answered(self, elements: list[Element], rid: str) -> None:
        """The request C{rid} is over: send its answer (none: already sent, or nothing)."""
        self._inflight.discard(rid)
        for element in elements:
            self.send(element)

    def answered_with(self, payload: bytes, rid: str) -> None:
        """L{answered} with an answer serialised already (L{record_bytes})."""
        self._inflight.discard(rid)
        if self.closing or self.transport is None:
            return
        self.transport.write(plain_record(payload))

    @property
    def peer(self) -> PeerCertificate | None:
        """The connection's validated certificate, or None (anonymous, or revoked)."""
        return self.requests.peer

    @property
    def watches(self) -> dict[str, Subscription]:
        """The identities this connection watches, by L{identity_key}."""
        return self.requests.watches

    # --- output -----------------------------------------------------------------------------

    def send(self, element: Element) -> int:
        """Write one element; returns the bytes written."""
        if self.closing or self.transport is None:
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
        written = self.send(Record(state.identity, _nodes(state)).to_element())
        if self._write_full and written:
            self._push_backlog += written
            transport = self._transport()
            if self._push_backlog > MAX_PUSH_BACKLOG and transport is not None:
                self.log.info("closing a registry connection that does not read its pushes")
                self.closing = True
                transport.abortConnection()

    def _fatal(self, text: str) -> None:
        """irp-1 §2 / §7.2: C{error bad_request} without id, then close."""
        self.log.debug("closing a registry connection: {why}", why=text)
        self.send(IRPError("bad_request", text).to_element())
        self.close()


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
        #: Requests of all connections waiting for the store (their bound, and counts).
        self.backlog = Backlog(self.config.max_queued_requests)
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
