"""
Flow control of the peer protocol: the outbox our stanzas wait in while the transport's write
buffer is full, and when to stop reading the peer (§9.2 back-pressure).

L{FlowControl} is the writing half of L{sixchat.protocol.PeerProtocol}, kept apart because
it is one concern with rules of its own: it registers as the transport's producer to learn
when the write buffer is full. Then our own stanzas wait, unsealed and in order, in an outbox
drained when the transport asks for more; answers to the peer's records (receipts, pongs,
errors) still go out, and we keep reading. Only when more than L{MAX_ANSWER_BACKLOG} bytes of
answers have piled up behind the full buffer does the peer evidently not read what it makes
us send, and we stop reading it: a peer cannot make us buffer answers without bound, and two
peers that both send faster than the other reads keep draining each other instead of
stalling for good (as they would if a full buffer alone stopped reading). Likewise we stop
reading while more than L{MAX_UNPROCESSED} bytes of received messages wait for the observer
to store them. File data opened, checked and waiting for the disk (L{FlowControl.holdInput})
has a limit of its own, L{MAX_HELD}.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from sixchat.connection import Connection
from sixchat.session import SessionLost

__all__ = ["MAX_ANSWER_BACKLOG", "MAX_HELD", "MAX_UNPROCESSED", "WRITE_BATCH", "FlowControl"]

#: §9.2 "buffered unprocessed input per connection": records are processed as they arrive,
#: so what can pile up is received messages the observer has not stored (and receipted) yet.
#: Past this many bytes we stop reading from the peer until storage catches up.
MAX_UNPROCESSED = 256 * 1024
#: Answers (receipts, pongs, errors) written while the transport's buffer is already full.
#: Past this many bytes the peer is not reading what its own records make us send, and we
#: stop reading it until it does; below it we keep reading, so that two peers that both
#: write faster than the other reads still drain each other (see L{FlowControl}).
MAX_ANSWER_BACKLOG = 256 * 1024
#: Up to this many queued pieces go to the transport as a sequence, more are joined first.
_PIECES_AS_SEQUENCE = 16
#: Queued application stanzas are sealed and written in batches of about this many bytes.
WRITE_BATCH = 64 * 1024
#: File data received, opened, checked and handed to the file's writer, waiting for the disk
#: (L{sixchat.session.Session.holdInput}): past this many bytes we stop reading from the
#: peer until the disk catches up. It is a bound of its own beside L{MAX_UNPROCESSED} (which
#: counts input not yet processed: messages not yet stored): a disk thread needs several
#: large batches in flight to keep up with the network (docs/benchmarks.md, "Files"), and
#: 256 KiB held two batches of 128 KiB, so reading stopped and started again at every batch.
MAX_HELD = 2 * 1024 * 1024
#: While received data is held for the disk, the transport reads at most the room left under
#: L{MAX_HELD}, within these bounds, instead of Twisted's 64 KiB: large reads while there is
#: room (fewer reads, reactor turns and records joined across reads), and never a read that
#: completes more than one chunk record past the limit.
READ_MIN = 16 * 1024
READ_MAX = 512 * 1024
_READ_DEFAULT = 64 * 1024


@implementer(IPushProducer)
class FlowControl(Protocol):
    """
    A protocol that writes what its L{Connection} queues, holding our own stanzas back while
    the transport is full (see the module docstring). The subclass sets the attributes below
    in its constructor.
    """

    connection: Connection
    #: Bytes of received messages not yet stored (§9.2, see L{MAX_UNPROCESSED}).
    unstored: int
    _write_full: bool  # the transport paused us: its write buffer is full
    _reading_paused: bool
    _lost: bool

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
        held = self._held
        pause = (
            (self._write_full and self._backlog > MAX_ANSWER_BACKLOG)
            or self.unstored - held > MAX_UNPROCESSED
            or held > MAX_HELD
        )
        if pause == self._reading_paused or self._lost or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        pass

    #: Of L{unstored}, the bytes held through L{holdInput} (file chunks awaiting the disk),
    #: bounded by L{MAX_HELD} rather than L{MAX_UNPROCESSED}.
    _held = 0

    def holdInput(self, nbytes: int) -> None:
        self.unstored += nbytes
        self._held += nbytes
        self._fitReads()
        self._updateReading()

    def releaseInput(self, nbytes: int) -> None:
        self.unstored -= nbytes
        self._held -= nbytes
        self._fitReads()
        self._updateReading()

    def _fitReads(self) -> None:
        """Read at most the room left under L{MAX_HELD} while input is held (L{READ_MIN})."""
        transport = self.transport
        if transport is None or getattr(transport, "bufferSize", None) is None:
            return
        if self._held > 0:
            size = min(READ_MAX, max(READ_MIN, MAX_HELD - self._held))
        else:
            size = _READ_DEFAULT
        transport.bufferSize = size  # type: ignore[attr-defined]

    # writing --------------------------------------------------------------------------------

    _outbox: deque[bytes] | None = None
    #: Bytes in the outbox.
    _outbox_bytes = 0
    #: Bytes written since the transport said its buffer is full (answers, in effect: our
    #: own stanzas wait in the outbox meanwhile).
    _backlog = 0
    _writable_waiters: list[defer.Deferred[None]] | None = None

    def flush(self) -> None:
        pieces = self.connection.pieces_to_send()
        if not pieces or self._lost:
            return
        # The transport joins what it is given before sending: a few pieces (large records,
        # their header and ciphertext apart) go as they are instead of being joined twice;
        # many small records are joined here, in one C call rather than its Python loops.
        transport = self.transport
        full = self._write_full  # answers written while the buffer is full count
        if len(pieces) == 1:
            data = pieces[0]
            transport.write(data)  # type: ignore[union-attr]
            size = len(data)
        elif len(pieces) <= _PIECES_AS_SEQUENCE:
            transport.writeSequence(pieces)  # type: ignore[union-attr]
            size = sum(map(len, pieces)) if full else 0
        else:
            data = b"".join(pieces)
            transport.write(data)  # type: ignore[union-attr]
            size = len(data)
        if full:
            self._backlog += size
            if self._backlog > MAX_ANSWER_BACKLOG and not self._reading_paused:
                self._updateReading()

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

    def _writable(self) -> bool:
        """True when L{_whenWritable} would fire at once (no Deferred needed)."""
        return (
            not self._outbox
            and not self._write_full
            and not self._lost
            and self.connection.state == "open"
        )

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
