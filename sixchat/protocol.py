"""
The Twisted adapter for the sans-IO L{Connection}: L{PeerProtocol}.

The protocol feeds received bytes to the connection, writes what it queues, and owns
everything that needs a clock or a socket: the handshake timeout (§7.7), the idle timeout
(§9.2, §11.13), dead-peer detection by keep-alive pings (L{sixchat.keepalive}), the bounded
wait after C{close} (§8.8) and back-pressure towards a peer that does not read
(L{sixchat.flow}). Time always comes from the injected C{IReactorTime}.

Its neighbours: L{sixchat.session} (the L{Session} applications talk to, the observer
interface, the errors), L{sixchat.flow} (the outbox) and L{sixchat.peers} (L{PeerFactory}
with the §9.2 handshake limits, L{connectPeer}). Every name of those that this module used to
define is still importable from here, as docs/api.md shows (C{from sixchat.protocol import
connectPeer}); new code imports them from their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import AlertError, HandshakeTimeout, SixchatError
from sixchat.flow import MAX_ANSWER_BACKLOG, MAX_UNPROCESSED, WRITE_BATCH, FlowControl
from sixchat.handshake import HandshakeResult, PeerConfig
from sixchat.keepalive import KEEPALIVE, KeepAlive, PeerUnresponsive
from sixchat.netaddr import format_hostport
from sixchat.session import (
    HandshakeFailed,
    ISessionObserver,
    Session,
    SessionLost,
    SessionObserver,
    StanzaRefused,
    _id_pool,
    new_stanza_id,
    split_text,
)
from sixchat.stanzas import ErrorStanza, Message, Ping, Pong, Receipt, format_timestamp

if TYPE_CHECKING:
    from sixchat.peers import (
        MAX_HANDSHAKES,
        MAX_HANDSHAKES_PER_SOURCE,
        PeerFactory,
        connectPeer,
        source_key,
    )

__all__ = [
    "CLOSE_WAIT",
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "INITIATOR",
    "KEEPALIVE",
    "MAX_ANSWER_BACKLOG",
    "MAX_HANDSHAKES",
    "MAX_HANDSHAKES_PER_SOURCE",
    "MAX_UNPROCESSED",
    "MESSAGE_OVERHEAD",
    "RESPONDER",
    "WRITE_BATCH",
    "HandshakeFailed",
    "ISessionObserver",
    "PeerFactory",
    "PeerProtocol",
    "Session",
    "SessionLost",
    "SessionObserver",
    "StanzaRefused",
    "_id_pool",
    "connectPeer",
    "new_stanza_id",
    "source_key",
    "split_text",
]

HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 300.0
CLOSE_WAIT = 5.0
#: What one message awaiting storage is counted as beyond its text (id, ts, Deferred, ...),
#: so that a flood of empty messages is bounded too.
MESSAGE_OVERHEAD = 256


class PeerProtocol(FlowControl):
    """
    Drives one L{Connection} over a TCP transport, in either role: feeds it the bytes
    received, handles its events, and owns its timers. Writing, with the outbox and
    back-pressure, is L{FlowControl}'s half.
    """

    log = Logger()

    def __init__(
        self,
        config: PeerConfig,
        role: str,
        clock: IReactorTime,
        observer: ISessionObserver | None = None,
        *,
        to: str | None = None,
        responder_cert: bytes | None = None,
        groups: list[str] | None = None,
        suites: list[str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        close_wait: float = CLOSE_WAIT,
        keepalive: float | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.clock = clock
        self.observer: ISessionObserver = observer or SessionObserver()
        self.connection = Connection(
            config, role, to=to, responder_cert=responder_cert, groups=groups, suites=suites
        )
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.close_wait = close_wait
        #: Seconds from the peer's last record to declaring it dead (None or 0: never, the
        #: library default; the agent's is L{KEEPALIVE}, 30 s).
        self.keepalive = keepalive
        self._keepalive: KeepAlive | None = None
        #: Application stanzas received (not pongs; pings never get here): the keep-alive's
        #: measure of an idle session.
        self.stanzas_received = 0
        self.session: Session | None = None
        # Cancelling a pending handshake (e.g. Happy Eyeballs picked another contact) drops
        # the connection.
        self.handshakeDone: defer.Deferred[Session] = defer.Deferred(self._cancelHandshake)
        self.failure: SixchatError | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._receipts_pending = 0
        #: Bytes of received messages not yet stored (§9.2, see L{MAX_UNPROCESSED}).
        self.unstored = 0
        self._write_full = False  # the transport paused us: its write buffer is full
        self._reading_paused = False
        # The outbox, its size, the answers written since the buffer filled, and who waits
        # for room are class defaults of FlowControl until used: an idle session pays
        # nothing for them.
        self._close_requested = False
        self._lost = False
        self.on_handshake_end: Callable[[PeerProtocol], None] | None = None

    def _cancelHandshake(self, d: defer.Deferred[Session]) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def now(self) -> datetime:
        """Wall-clock time by the injected clock (message timestamps)."""
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def timestamp(self) -> str:
        """
        C{format_timestamp} of the clock's reading, to the millisecond: the C{ts} of a
        message we send. Formatting a C{datetime} costs more than the AEAD of a small message
        (about 7 µs), and on a busy machine nearly every bulk message falls in a millisecond
        of its own, so only the part up to the seconds is formatted, once a second, and the
        milliseconds are appended (module-wide: it depends on the clock reading only).
        """
        return _format_ms(int(self.clock.seconds() * 1000))

    # Twisted callbacks ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._handshake_timer = self.clock.callLater(
            self.handshake_timeout, self._handshakeTimedOut
        )
        self.connection.start()
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        connection = self.connection
        established = connection.result is not None
        before = connection.records_received
        try:
            events = connection.receive_data(data)
        except Exception:  # a bug must not take the reactor down, and must not leak details
            self.log.failure("internal error handling data from {peer}", peer=self._peerAddr())
            events = connection.fail(_internal())
        if established and connection.records_received != before:
            self._resetIdle()
        self.flush()
        # Whatever the events make us send (receipts of stored messages, above all) leaves in
        # one transport write after the loop instead of one write per stanza; each stanza is
        # still its own record (§2). _drop flushes first, so nothing is left behind.
        self._coalescing = True
        try:
            for event in events:
                self._handle(event)
        finally:
            self._coalescing = False
        self.flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._discardOutbox()
        if self._writable_waiters:
            self._fireWritable(SessionLost("session ended"))
        self._cancelTimers()
        self._handshakeEnded()
        if self.failure is not None:
            reason = Failure(self.failure)
        clean = self.failure is None and self.connection.closed_cleanly
        if self.session is not None:
            session, self.session = self.session, None
            session._ended(reason, clean)
            self.observer.sessionEnded(session, reason)
        elif not self.handshakeDone.called:
            failure = self.failure or SessionLost(
                f"connection lost during the handshake: {reason.getErrorMessage()}"
            )
            self.handshakeDone.errback(failure)

    # events ---------------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            self._handshakeComplete(event.result)
        elif isinstance(event, StanzaReceived):
            self._stanza(event.stanza)
        elif isinstance(event, CloseReceived):
            if event.answered:
                self._drop()
            else:
                self._close_requested = True
                self._maybeAnswerClose()
        elif isinstance(event, AlertReceived):
            self._failed(event.alert.reason, event.alert.text, by_peer=True)
        elif isinstance(event, ConnectionFailed):
            self._failed(event.error.reason, event.error.text, by_peer=False)

    def _handshakeComplete(self, result: HandshakeResult) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        self.connection.release_handshake()  # idle-session memory: docs/benchmarks.md
        self._handshakeEnded()
        self._resetIdle()
        session = self.session = Session(self, result)
        if self.keepalive:
            self._keepalive = KeepAlive(
                self.clock,
                self.keepalive,
                self.idle_timeout,
                records=lambda: self.connection.records_received,
                activity=lambda: self.stanzas_received,
                waiting=lambda: bool(session._pending or self._outbox),
                ping=self._sendKeepalivePing,
                dead=self._peerUnresponsive,
            )
            self._keepalive.start()
        from sixchat.peers import PeerFactory  # the factory module imports this one

        if isinstance(self.factory, PeerFactory):
            self.factory._track(session)
        self.log.info(
            "session {local} <-> {peer} established ({role}, version {version}, suite {suite}, "
            "group {group}, peer key {fingerprint})",
            local=result.local_name,
            peer=result.peer_name,
            role=self.role,
            version=result.version,
            suite=result.suite,
            group=result.group,
            fingerprint=result.peer.spki_sha256.hex(),
        )
        if result.pin_status == "changed":
            policy = getattr(self.config.pins, "policy", "warn")
            emit = self.log.info if policy == "accept" else self.log.warn
            emit(
                "KEY CHANGE: {peer} presented a key not seen before ({fingerprint}); "
                "pin policy {policy}",
                peer=result.peer_name,
                fingerprint=result.peer.spki_sha256.hex(),
                policy=policy,
            )
        self.observer.sessionStarted(session)
        self.handshakeDone.callback(session)

    def _stanza(self, stanza: Any) -> None:
        session = self.session
        assert session is not None
        self.stanzas_received += 1
        if isinstance(stanza, Message):
            self._receipts_pending += 1
            cost = _message_cost(stanza)
            self.unstored += cost
            try:
                stored = self.observer.messageReceived(session, stanza)
            except BaseException:
                stored = Failure()
            if stored is None:
                # Stored synchronously (the common embedding): receipt at once, without the
                # Deferred that maybeDeferred would make and fire on the spot.
                self._stored(None, stanza, cost)
            else:
                d = defer.maybeDeferred(lambda: stored)  # a Deferred, coroutine or Failure
                d.addCallbacks(
                    self._stored,
                    self._notStored,
                    callbackArgs=(stanza, cost),
                    errbackArgs=(stanza, cost),
                )
            self._updateReading()
            return
        if isinstance(stanza, Receipt) and session._receipt(stanza):
            return
        if isinstance(stanza, Pong):
            self.stanzas_received -= 1  # a pong is keep-alive traffic, not activity
            session._pong(stanza)
            return
        if isinstance(stanza, ErrorStanza) and session._error(stanza):
            return
        self.observer.stanzaReceived(session, stanza)

    def _stored(self, _: object, message: Message, cost: int) -> None:
        self._receipts_pending -= 1
        self.unstored -= cost
        if not self._lost and self.connection.state in ("open", "closing"):
            self.sendAnswer(Receipt(message.id))
        self._maybeAnswerClose()
        self._updateReading()

    def _notStored(self, failure: Failure, message: Message, cost: int) -> None:
        self._receipts_pending -= 1
        self.unstored -= cost
        self.log.failure("could not store message {id}; no receipt sent", failure, id=message.id)
        self._maybeAnswerClose()
        self._updateReading()

    def _maybeAnswerClose(self) -> None:
        """§8.8: after the peer's close, finish pending receipts, answer, then drop."""
        if self._close_requested and self._receipts_pending == 0 and not self._lost:
            self._discardOutbox()  # §8.8: the peer is done; what we had queued stays unsent
            self.connection.close()
            self.flush()
            self._drop()

    def _failed(self, reason: str, text: str, by_peer: bool) -> None:
        if by_peer:
            self.log.info("peer {peer} sent alert {reason}", peer=self._peerAddr(), reason=reason)
        else:
            self.log.info("sent alert {reason} to {peer}", peer=self._peerAddr(), reason=reason)
        self.failure = HandshakeFailed(reason, text, by_peer)
        self._drop()

    # timers ---------------------------------------------------------------------------------

    def _cancelTimers(self) -> None:
        for timer in (self._handshake_timer, self._idle_timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._idle_timer = self._close_timer = None
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    def _resetIdle(self) -> None:
        """§11.13: idle means no record received for the idle period."""
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.idle_timeout)
        else:
            self._idle_timer = self.clock.callLater(self.idle_timeout, self._idle)

    def _handshakeTimedOut(self) -> None:
        self._handshake_timer = None
        self.failWith(HandshakeTimeout("handshake not complete in time"))

    def failWith(self, error: AlertError) -> None:
        """Send the alert for C{error} and drop the connection (a fatal error we noticed)."""
        if self._lost:
            return
        events = self.connection.fail(error)
        self.flush()
        for event in events:
            self._handle(event)
        if not events:  # the connection had already failed: just make sure it goes
            self._drop()

    def _idle(self) -> None:
        self._idle_timer = None
        self.log.info("closing idle session with {peer}", peer=self._peerAddr())
        self.closeGracefully()

    def _sendKeepalivePing(self) -> None:
        if not self._lost and self.connection.state == "open":
            self.sendStanza(Ping(new_stanza_id()))  # its pong is ignored: any record counts

    def _peerUnresponsive(self) -> None:
        """The keep-alive bound passed without a record: the peer is gone; abort."""
        self._keepalive = None
        if self._lost:
            return
        self.log.info(
            "peer {peer} answered no ping in {bound} s: session ended as dead",
            peer=self._peerAddr(),
            bound=self.keepalive,
        )
        why = f"peer answered no keep-alive ping within {self.keepalive:g} s"
        self.abandon(PeerUnresponsive(why))

    def abandon(self, failure: SixchatError) -> None:
        """
        End the connection now without a word to the peer, which cannot hear us (it stopped
        answering, or our address is gone): queued stanzas are dropped, the TCP connection
        is reset (one RST, no FIN retransmitted for minutes), and C{failure} becomes the
        session's end reason (unreceipted sends fail with L{SessionLost}).
        """
        if self._lost:
            return
        self.failure = failure
        self._discardOutbox()
        _reset_on_close(self.transport)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def closeGracefully(self) -> None:
        """Send C{close}; drop the connection when the peer answers or after C{close_wait}."""
        if self._lost:
            return
        if self.connection.state != "open":
            self._drop()
            return
        self._sealOutbox()  # everything we queued goes before our close
        self.connection.close()
        self.flush()
        self._close_timer = self.clock.callLater(self.close_wait, self._abort)

    def _drop(self) -> None:
        """Close after the queued bytes are written; abort if the peer never reads them."""
        if self._lost:
            return
        self._discardOutbox()
        self.flush()  # records queued while coalescing (see dataReceived) go first
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self._close_timer is None or not self._close_timer.active():
            self._close_timer = self.clock.callLater(self.close_wait, self._abort)

    def _abort(self) -> None:
        self._close_timer = None
        if not self._lost:
            self.transport.abortConnection()  # type: ignore[union-attr]

    # limits bookkeeping -----------------------------------------------------------------

    def _handshakeEnded(self) -> None:
        if self.on_handshake_end is not None:
            callback, self.on_handshake_end = self.on_handshake_end, None
            callback(self)

    def _peerAddr(self) -> str:
        try:
            peer = self.transport.getPeer()  # type: ignore[union-attr]
        except Exception:
            return "?"
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        return format_hostport(host, port)


def _message_cost(message: Message) -> int:
    """What a received message awaiting storage counts toward L{MAX_UNPROCESSED}."""
    size = 0
    for text in (message.body, message.thread or ""):
        # isascii() is O(1) on str; encoding just to count would copy every body twice.
        size += len(text) if text.isascii() else len(text.encode("utf-8"))
    return size + MESSAGE_OVERHEAD


#: [millisecond, its C{ts} string, second, C{ts} up to and with the "." of that second]
#: for L{_format_ms}.
_last_timestamp: list[int | str | None] = [None, "", None, ""]


def _format_ms(ms: int) -> str:
    """
    C{format_timestamp} of C{ms} milliseconds since the epoch (UTC), reusing the last
    result within a millisecond and the formatted second within a second.
    """
    cached = _last_timestamp
    if cached[0] == ms:
        return cached[1]  # type: ignore[return-value]
    second, milli = divmod(ms, 1000)
    if cached[2] != second:
        whole = format_timestamp(datetime.fromtimestamp(second, UTC))  # "....:SS.000Z"
        cached[3] = whole[:-4]
        cached[2] = second
    text = f"{cached[3]}{milli:03d}Z"
    cached[0] = ms
    cached[1] = text
    return text


def _internal() -> AlertError:
    from sixchat.errors import InternalError

    return InternalError("internal error")


#: Defined in L{sixchat.peers}, which imports this module: a plain import here would be a
#: cycle, so they are looked up on first use (PEP 562).
_FROM_PEERS = frozenset(
    {"MAX_HANDSHAKES", "MAX_HANDSHAKES_PER_SOURCE", "PeerFactory", "connectPeer", "source_key"}
)


def __getattr__(name: str) -> Any:
    if name in _FROM_PEERS:
        from sixchat import peers

        return getattr(peers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reset_on_close(transport: Any) -> None:
    """
    Make closing C{transport}'s socket send one RST (SO_LINGER 0) rather than a FIN the
    kernel would retransmit for minutes to a peer that cannot answer, from an address that
    may be gone (L{PeerProtocol.abandon}). Transports without a socket are left alone.
    """
    import socket
    import struct

    try:
        handle = transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, OSError, TypeError):
        pass
