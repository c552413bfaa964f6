"""
What applications talk to: the L{Session} (an established, authenticated session with one
peer), the L{ISessionObserver} they implement to hear about sessions, and the errors a send
can fail with.

A session is a thin face on its L{sixchat.protocol.PeerProtocol}: sending goes through the
protocol's flow-controlled outbox (L{sixchat.flow}), and the protocol tells the session about
receipts, pongs, refusals and the end.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sixchat.connection import Connection, ConnectionClosedError
from sixchat.errors import AlertError, SixchatError
from sixchat.handshake import HandshakeResult
from sixchat.stanzas import MAX_BODY_CHARS, ErrorStanza, Message, Ping, Pong, Receipt, Typing

if TYPE_CHECKING:
    from sixchat.protocol import PeerProtocol

__all__ = [
    "HandshakeFailed",
    "ISessionObserver",
    "Session",
    "SessionLost",
    "SessionObserver",
    "StanzaRefused",
    "new_stanza_id",
    "split_text",
]


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

    def localAddress(self) -> IAddress:
        """Our own transport address (which of our addresses the session is bound to)."""
        return self._protocol.transport.getHost()  # type: ignore[union-attr]

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

    def send(self, message: Any) -> defer.Deferred[Receipt]:
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

    @property
    def writable(self) -> bool:
        """
        True when L{whenWritable} would fire at once: a sender of many stanzas (a file's
        chunks) checks this and waits on L{whenWritable} only when it is False, instead of
        a Deferred per stanza.
        """
        return self._protocol._writable()

    def whenWritable(self) -> defer.Deferred[None]:
        """
        Fires once nothing of ours waits for the transport and its buffer has room: the
        moment to send more. Fails with L{SessionLost} if the session ends first.
        """
        return self._protocol._whenWritable()

    def sendReceipt(self, message_id: str) -> None:
        self._protocol.sendAnswer(Receipt(message_id))

    # file transfer (§8.7; the stanzas and state machines are sixchat.filetransfer) ----------

    def offerFile(self, offer: Any) -> defer.Deferred[Receipt]:
        """
        Send a C{file} offer; the Deferred fires with the peer's L{Receipt} (the file is
        stored), or fails with L{StanzaRefused} (an C{error}, or a C{reject} passed to
        L{fileRejected}) or L{SessionLost}, like L{send}.
        """
        return self.send(offer)

    def fileRejected(self, reject: Any) -> bool:
        """A C{reject} (§11.9: final, like an error) for one of our offers; False if unknown."""
        return self._error(ErrorStanza(reject.reason, reject.id, "rejected"))

    def sendStanza(self, stanza: Any) -> None:
        """Send one of our own stanzas (a C{chunk}, C{done}), behind what we queued before."""
        self._protocol.sendStanza(stanza)

    def sendAnswer(self, stanza: Any) -> None:
        """Send an answer (C{accept}, C{reject}, C{receipt}, C{error}): never waits behind ours."""
        self._protocol.sendAnswer(stanza)

    def holdInput(self, nbytes: int) -> None:
        """
        Count C{nbytes} of received file data as held for the disk: past
        L{sixchat.flow.MAX_HELD} we stop reading the peer until L{releaseInput}.
        Meanwhile the transport reads at most the room left (L{sixchat.flow.READ_MAX}).
        """
        self._protocol.holdInput(nbytes)

    def releaseInput(self, nbytes: int) -> None:
        self._protocol.releaseInput(nbytes)

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

    def abandon(self, why: str) -> None:
        """
        End the session now without a word to the peer, which can no longer hear us (the
        local address it is bound to vanished): unreceipted sends fail with L{SessionLost}
        saying C{why}, and C{end_reason} is that L{SessionLost}.
        """
        self._protocol.abandon(SessionLost(why))

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
