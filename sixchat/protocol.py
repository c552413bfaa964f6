"""
Twisted adapters for the sans-IO L{Connection}: L{PeerProtocol}, L{PeerFactory}, L{Session}
and L{connectPeer}.

The protocol feeds received bytes to the connection, writes what it queues, and owns
everything that needs a clock or a socket: the handshake timeout (§7.7), the idle timeout
(§9.2, §11.13), the bounded wait after C{close} (§8.8), back-pressure towards a peer that does
not read, and the per-responder and per-source handshake limits (§9.2). Time always comes from
the injected C{IReactorTime}.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionClosedError,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import AlertError, HandshakeTimeout, SixchatError
from sixchat.handshake import HandshakeResult, PeerConfig
from sixchat.stanzas import (
    MAX_BODY_CHARS,
    ErrorStanza,
    Message,
    Ping,
    Pong,
    Receipt,
    Typing,
    format_timestamp,
)

HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 300.0
CLOSE_WAIT = 5.0
MAX_HANDSHAKES = 256
MAX_HANDSHAKES_PER_SOURCE = 16
#: §9.2 "buffered unprocessed input per connection": records are processed as they arrive,
#: so what can pile up is received messages the observer has not stored (and receipted) yet.
#: Past this many bytes we stop reading from the peer until storage catches up.
MAX_UNPROCESSED = 256 * 1024
#: What one message awaiting storage is counted as beyond its text (id, ts, Deferred, ...),
#: so that a flood of empty messages is bounded too.
MESSAGE_OVERHEAD = 256
#: Answers (receipts, pongs, errors) written while the transport's buffer is already full.
#: Past this many bytes the peer is not reading what its own records make us send, and we
#: stop reading it until it does; below it we keep reading, so that two peers that both
#: write faster than the other reads still drain each other (see L{PeerProtocol}).
MAX_ANSWER_BACKLOG = 256 * 1024
#: Queued application stanzas are sealed and written in batches of about this many bytes.
WRITE_BATCH = 64 * 1024


class StanzaRefused(SixchatError):
    """The peer answered one of our stanzas with C{<error/>} (§8.6): final, never receipted."""

    def __init__(self, error: ErrorStanza) -> None:
        super().__init__(
            f"peer refused the stanza: {error.reason}" + (f" ({error.text})" if error.text else "")
        )
        self.reason = error.reason
        self.text = error.text


class SessionLost(SixchatError):
    """The session ended before the answer arrived; unacknowledged messages are undelivered."""


class HandshakeFailed(SixchatError):
    """The handshake did not complete; C{reason} is the alert token (ours or the peer's)."""

    def __init__(self, reason: str, text: str = "", sent_by_peer: bool = False) -> None:
        who = "peer sent" if sent_by_peer else "we sent"
        super().__init__(f"handshake failed ({who} {reason})" + (f": {text}" if text else ""))
        self.reason = reason
        self.text = text
        self.sent_by_peer = sent_by_peer


class ISessionObserver(Interface):
    """Receives what happens on sessions; implement it to embed sixchat in an application."""

    def sessionStarted(session: Session) -> None:
        """The handshake completed; C{session.result} says who and how."""

    def messageReceived(session: Session, message: Message) -> Any:
        """
        A message arrived. Return a Deferred (or None) that fires once it is durably stored:
        the receipt is sent only then (§8.2). A failure sends no receipt.
        """

    def stanzaReceived(session: Session, stanza: Any) -> None:
        """Any other application stanza for the user (typing, errors, unknown receipts)."""

    def sessionEnded(session: Session, reason: Failure) -> None:
        """The session is over (C{reason} tells whether cleanly)."""


@implementer(ISessionObserver)
class SessionObserver:
    """An observer that receipts every message at once and ignores everything else."""

    def sessionStarted(self, session: Session) -> None:
        pass

    def messageReceived(self, session: Session, message: Message) -> Any:
        return None

    def stanzaReceived(self, session: Session, stanza: Any) -> None:
        pass

    def sessionEnded(self, session: Session, reason: Failure) -> None:
        pass


def new_stanza_id() -> str:
    """
    A random id unique across devices (§8.1): 128 bits, URL-safe, not a counter. Drawn from
    the OS 256 at a time: one system call instead of one per message (ids are unique, not
    secret; the pool is emptied in a forked child so that parent and child never share).
    """
    pool = _id_pool
    if not pool:
        text = os.urandom(4096).hex()
        pool.extend(text[i : i + 32] for i in range(0, 8192, 32))
    return pool.pop()


_id_pool: list[str] = []
os.register_at_fork(after_in_child=_id_pool.clear)


def split_text(text: str, limit: int = MAX_BODY_CHARS) -> list[str]:
    """Split a long text into bodies of at most C{limit} characters (§8.1)."""
    if not text:
        return [""]
    return [text[i : i + limit] for i in range(0, len(text), limit)]


class Session:
    """
    An established, authenticated session with one peer; what applications talk to.

    @ivar result: the L{HandshakeResult}: peer identity and certificate, suite, group.
    """

    def __init__(self, protocol: PeerProtocol, result: HandshakeResult) -> None:
        self._protocol = protocol
        self.result = result
        self._pending: dict[str, defer.Deferred[Any]] = {}
        self._pings: dict[str, tuple[defer.Deferred[float], float]] = {}
        self._end_waiters: list[defer.Deferred[None]] = []
        self.ended = False
        #: Why the session ended: None while open or after a clean close, else the alert
        #: (L{HandshakeFailed}) or the transport's error.
        self.end_reason: Exception | None = None

    @property
    def peer(self) -> str:
        return self.result.peer_name

    @property
    def connection(self) -> Connection:
        return self._protocol.connection

    def address(self) -> IAddress:
        """The peer's transport address."""
        return self._protocol.transport.getPeer()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        r = self.result
        return f"<Session {r.local_name} <-> {r.peer_name} {r.suite}/{r.group}>"

    # sending --------------------------------------------------------------------------------

    def sendMessage(
        self,
        text: str,
        *,
        id: str | None = None,
        thread: str | None = None,
        reply_to: str | None = None,
        ts: str | None = None,
    ) -> defer.Deferred[Receipt]:
        """
        Send one message; the Deferred fires with the peer's L{Receipt}, or fails with
        L{StanzaRefused} or L{SessionLost}. Texts over 32,768 characters: use L{sendText}.
        """
        if len(text) > MAX_BODY_CHARS:
            raise ValueError("text over 32,768 characters: use sendText, which splits it")
        message = Message(
            id or new_stanza_id(),
            ts or self._protocol.timestamp(),
            text,
            thread,
            reply_to,
        )
        return self.send(message)

    def send(self, message: Message) -> defer.Deferred[Receipt]:
        """Send a prepared L{Message} (e.g. a retransmission keeping its id)."""
        d: defer.Deferred[Receipt] = defer.Deferred()
        if self.ended:
            d.errback(SessionLost("session already ended"))
            return d
        self._pending[message.id] = d
        try:
            self._protocol.sendStanza(message)
        except (ConnectionClosedError, ValueError) as e:
            del self._pending[message.id]
            d.errback(e if isinstance(e, ValueError) else SessionLost(str(e)))
        return d

    def sendText(self, text: str, **kw: Any) -> defer.Deferred[list[Receipt]]:
        """Send a text of any length as one or more messages; fires with every receipt."""
        parts = [self.sendMessage(part, **kw) for part in split_text(text)]
        return defer.gatherResults(parts, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f
        )

    def ping(self) -> defer.Deferred[float]:
        """Fires with the round-trip time in seconds (by the injected clock)."""
        d: defer.Deferred[float] = defer.Deferred()
        ping_id = new_stanza_id()
        self._pings[ping_id] = (d, self._protocol.clock.seconds())
        try:
            self._protocol.sendStanza(Ping(ping_id))
        except ConnectionClosedError as e:
            del self._pings[ping_id]
            d.errback(SessionLost(str(e)))
        return d

    def sendTyping(self, state: str = "composing") -> None:
        self._protocol.sendStanza(Typing(state))

    @property
    def queued(self) -> int:
        """
        Bytes of our stanzas waiting for the transport: sending never blocks and never fails
        for a full transport; stanzas wait (in order) until it drains. A sender with a lot to
        say waits for L{whenWritable} (or for receipts) to bound this.
        """
        return self._protocol._outbox_bytes

    def whenWritable(self) -> defer.Deferred[None]:
        """
        Fires once nothing of ours waits for the transport and its buffer has room: the
        moment to send more. Fails with L{SessionLost} if the session ends first.
        """
        return self._protocol._whenWritable()

    def sendReceipt(self, message_id: str) -> None:
        self._protocol.sendAnswer(Receipt(message_id))

    def rekey(self) -> None:
        """Switch our write key now (§8.5); it also happens automatically before the limits."""
        self._protocol.connection.rekey()
        self._protocol.flush()

    def abort(self, error: AlertError) -> None:
        """
        End the session now with a fatal alert for C{error} (e.g. C{CertificateRevoked} when
        a new CRL revokes the peer): nothing more is read or sent, queued stanzas are
        dropped, and C{end_reason} becomes the L{HandshakeFailed} naming the alert.
        """
        self._protocol.failWith(error)

    def close(self) -> defer.Deferred[None]:
        """Close gracefully (§8.8); fires when the connection is gone."""
        self._protocol.closeGracefully()
        return self.whenEnded()

    def whenEnded(self) -> defer.Deferred[None]:
        """A Deferred that fires (with None) once the session has ended, however it ended."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended:
            d.callback(None)
        else:
            self._end_waiters.append(d)
        return d

    # from the protocol ----------------------------------------------------------------------

    def _receipt(self, receipt: Receipt) -> bool:
        d = self._pending.pop(receipt.id, None)
        if d is None:
            return False  # a receipt for an unknown id is ignored (§8.2)
        d.callback(receipt)
        return True

    def _pong(self, pong: Pong) -> None:
        entry = self._pings.pop(pong.id, None)
        if entry is not None:
            d, started = entry
            d.callback(self._protocol.clock.seconds() - started)

    def _error(self, stanza: ErrorStanza) -> bool:
        d = self._pending.pop(stanza.ref, None) if stanza.ref else None
        if d is None:
            return False
        d.errback(StanzaRefused(stanza))
        return True

    def _ended(self, reason: Failure, clean: bool) -> None:
        self.ended = True
        if not clean:
            self.end_reason = reason.value if isinstance(reason.value, Exception) else None
        pending, self._pending = self._pending, {}
        pings, self._pings = self._pings, {}
        for d in pending.values():
            d.errback(SessionLost(f"session ended before the receipt: {reason.getErrorMessage()}"))
        for d, _ in pings.values():
            d.errback(SessionLost("session ended before the pong"))
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)


@implementer(IPushProducer)
class PeerProtocol(Protocol):
    """
    Drives one L{Connection} over a TCP transport, in either role.

    It registers itself as the transport's producer to learn when its write buffer is full.
    Then our own stanzas wait, unsealed and in order, in an outbox drained when the transport
    asks for more; answers to the peer's records (receipts, pongs, errors) still go out, and
    we keep reading. Only when more than L{MAX_ANSWER_BACKLOG} bytes of answers have piled
    up behind the full buffer does the peer evidently not read what it makes us send, and we
    stop reading it (§9.2 back-pressure): a peer cannot make us buffer answers without bound,
    and two peers that both send faster than the other reads keep draining each other
    instead of stalling for good (as they would if a full buffer alone stopped reading).
    Likewise we stop reading while more than L{MAX_UNPROCESSED} bytes of received messages
    wait for the observer to store them.
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
        # for room are class defaults until used: an idle session pays nothing for them.
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
        C{format_timestamp(self.now())}, the C{ts} of a message we send. Formatting costs
        more than the AEAD at high message rates, so the string is reused for every message
        of the same millisecond (module-wide: it depends on the clock reading only).
        """
        seconds = self.clock.seconds()
        key = int(seconds * 1000)
        cached = _last_timestamp
        if cached[0] != key:
            cached[1] = format_timestamp(datetime.fromtimestamp(seconds, UTC))
            cached[0] = key
        return cached[1]  # type: ignore[return-value]

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

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
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

    # IPushProducer: the transport tells us its write buffer is full / drained. We read only
    # while neither that nor messages awaiting storage (§9.2) hold us back.

    def pauseProducing(self) -> None:
        self._write_full = True

    def resumeProducing(self) -> None:
        self._write_full = False
        self._backlog = 0
        self._drainOutbox()
        self._updateReading()

    def _updateReading(self) -> None:
        pause = (
            self._write_full and self._backlog > MAX_ANSWER_BACKLOG
        ) or self.unstored > MAX_UNPROCESSED
        if pause == self._reading_paused or self._lost or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        pass

    # writing --------------------------------------------------------------------------------

    _outbox: deque[bytes] | None = None
    #: Bytes in the outbox.
    _outbox_bytes = 0
    #: Bytes written since the transport said its buffer is full (answers, in effect: our
    #: own stanzas wait in the outbox meanwhile).
    _backlog = 0
    _writable_waiters: list[defer.Deferred[None]] | None = None

    def flush(self) -> None:
        data = self.connection.data_to_send()
        if data and not self._lost:
            if self._write_full:
                self._backlog += len(data)
                self.transport.write(data)  # type: ignore[union-attr]
                if self._backlog > MAX_ANSWER_BACKLOG and not self._reading_paused:
                    self._updateReading()
            else:
                self.transport.write(data)  # type: ignore[union-attr]

    #: True while dataReceived handles events: sendStanza then leaves the flush to it.
    _coalescing = False

    def sendStanza(self, stanza: Any) -> None:
        """
        Send one of our application stanzas: at once while the transport has room, else
        into the outbox (checked and serialised now, so errors still reach the caller now).
        """
        if self._write_full or self._outbox:
            serialized = self.connection.prepare(stanza)
            if self._outbox is None:
                self._outbox = deque()
            self._outbox.append(serialized)
            self._outbox_bytes += len(serialized)
            return
        self.connection.send(stanza)
        if not self._coalescing:
            self.flush()

    def sendAnswer(self, stanza: Any) -> None:
        """Send a receipt: an answer, which never waits behind our own stanzas."""
        self.connection.send(stanza)
        if not self._coalescing:
            self.flush()

    def _drainOutbox(self) -> None:
        """Seal and write queued stanzas, in order, while the transport takes them."""
        outbox = self._outbox
        connection = self.connection
        while outbox and not self._write_full and not self._lost:
            if connection.state != "open":
                self._discardOutbox()
                break
            batch = 0
            while outbox and batch < WRITE_BATCH:
                serialized = outbox.popleft()
                batch += len(serialized)
                connection.send_prepared(serialized)
            self._outbox_bytes -= batch
            self.flush()  # may fill the transport again: pauseProducing stops the loop
        if not self._outbox:
            self._outbox = None
            if not self._write_full:
                self._fireWritable(None)

    def _sealOutbox(self) -> None:
        """Seal everything queued now, whatever the transport's state (before our close)."""
        outbox, self._outbox = self._outbox, None
        self._outbox_bytes = 0
        if outbox and self.connection.state == "open":
            for serialized in outbox:
                self.connection.send_prepared(serialized)

    def _discardOutbox(self) -> None:
        """The session is ending: queued stanzas will not be sent (their senders learn it)."""
        self._outbox = None
        self._outbox_bytes = 0

    def _whenWritable(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self._lost or self.connection.state != "open":
            d.errback(SessionLost("session ended"))
        elif not self._outbox and not self._write_full:
            d.callback(None)
        else:
            if self._writable_waiters is None:
                self._writable_waiters = []
            self._writable_waiters.append(d)
        return d

    def _fireWritable(self, failure: Exception | None) -> None:
        waiters, self._writable_waiters = self._writable_waiters, None
        for d in waiters or ():
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

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
        return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


def _message_cost(message: Message) -> int:
    """What a received message awaiting storage counts toward L{MAX_UNPROCESSED}."""
    size = 0
    for text in (message.body, message.thread or ""):
        # isascii() is O(1) on str; encoding just to count would copy every body twice.
        size += len(text) if text.isascii() else len(text.encode("utf-8"))
    return size + MESSAGE_OVERHEAD


#: [millisecond, its C{ts} string] for L{PeerProtocol.timestamp}.
_last_timestamp: list[int | str | None] = [None, ""]


def _internal() -> AlertError:
    from sixchat.errors import InternalError

    return InternalError("internal error")


def source_key(address: IAddress) -> str:
    """The §9.2 per-source bucket: the IPv4 address, or the IPv6 /64."""
    host = getattr(address, "host", None)
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class PeerFactory(Factory):
    """
    Accepts (responder) or opens (initiator) peer connections with one configuration.

    As a server factory it enforces the §9.2 handshake limits: past C{max_handshakes} in
    progress, or C{max_per_source} from one IPv4 address or IPv6 /64, a new TCP connection is
    closed at once without an alert.
    """

    protocol = PeerProtocol  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        config: PeerConfig,
        clock: IReactorTime,
        observer: ISessionObserver | None = None,
        *,
        role: str = RESPONDER,
        max_handshakes: int = MAX_HANDSHAKES,
        max_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
        **protocol_options: Any,
    ) -> None:
        self.config = config
        self.clock = clock
        self.observer = observer
        self.role = role
        self.max_handshakes = max_handshakes
        self.max_per_source = max_per_source
        self.protocol_options = protocol_options
        self.in_handshake: dict[str, int] = {}
        self.handshaking = 0
        self.refused = 0
        self.sessions: set[Session] = set()

    #: While True (e.g. the agent's store is not open yet) new connections are closed at once.
    paused = False

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        if self.paused:
            return None
        if self.role == RESPONDER:
            key = source_key(addr)
            if (
                self.handshaking >= self.max_handshakes
                or self.in_handshake.get(key, 0) >= self.max_per_source
            ):
                self.refused += 1
                self.log.debug("refusing connection from {key}: handshake limit", key=key)
                return None
            self.handshaking += 1
            self.in_handshake[key] = self.in_handshake.get(key, 0) + 1
        proto = PeerProtocol(
            self.config, self.role, self.clock, self.observer, **self.protocol_options
        )
        proto.factory = self
        if self.role == RESPONDER:
            proto.on_handshake_end = lambda p, key=key: self._release(key)  # type: ignore[misc]
        if self.role == RESPONDER:
            # Nobody waits on an accepted connection's handshake; failures are logged.
            proto.handshakeDone.addErrback(lambda f: None)
        return proto

    def _release(self, key: str) -> None:
        self.handshaking -= 1
        count = self.in_handshake.get(key, 0) - 1
        if count > 0:
            self.in_handshake[key] = count
        else:
            self.in_handshake.pop(key, None)

    def _track(self, session: Session) -> None:
        self.sessions.add(session)
        session.whenEnded().addCallback(lambda _: self.sessions.discard(session))


def connectPeer(
    reactor: IReactorTime,
    endpoint: Any,
    identity: Any,
    trust: Any = None,
    to: str | None = None,
    *,
    config: PeerConfig | None = None,
    observer: ISessionObserver | None = None,
    responder_cert: bytes | None = None,
    groups: list[str] | None = None,
    suites: list[str] | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    **config_options: Any,
) -> defer.Deferred[Session]:
    """
    Open a session to the UA at C{endpoint} (an C{IStreamClientEndpoint}).

    Fires with the L{Session} once the handshake completes, or fails with L{HandshakeFailed}
    (the alert, ours or the peer's), L{SessionLost} or the endpoint's connection error.
    """
    if config is None:
        identities = identity if isinstance(identity, list) else [identity]
        config = PeerConfig(identities, trust, **config_options)
    factory = PeerFactory(
        config,
        reactor,
        observer,
        role=INITIATOR,
        to=to,
        responder_cert=responder_cert,
        groups=groups,
        suites=suites,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
    )
    d = endpoint.connect(factory)
    return d.addCallback(lambda proto: proto.handshakeDone)
