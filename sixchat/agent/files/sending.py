"""
Sending files (§8.7): L{FileOutbox.deliver} is the outbox's way to deliver an entry that is a
file. It offers the file on the session (one file at a time per session, so a receiver's
concurrency limit never refuses our own queue), and once the peer accepts it streams the
file from disk from the accepted offset (the peer's durable prefix: a resume): reads of
L{READ_BLOCK} run in a thread one block ahead, each chunk of at most 32,768 bytes is sent when
the session's flow control says it has room (L{Session.writable}, else
L{Session.whenWritable}: the session is the transport's registered
producer, so a slow reader pauses the file instead of filling memory), then C{done}. The
Deferred fires with the receipt or fails like a message send (L{StanzaRefused} for a
C{reject} or C{error}, final; L{SessionLost}, retried by the outbox on a new session).
"""

from __future__ import annotations

import contextlib
import io
import mimetypes
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from sixchat.agent import events, views
from sixchat.agent.errors import AgentError
from sixchat.agent.files.disk import file_digest
from sixchat.agent.store.files import TransferRecord, TransferStore
from sixchat.agent.store.records import OutgoingMessage
from sixchat.connection import ConnectionClosedError
from sixchat.errors import StanzaError
from sixchat.filetransfer import MAX_CHUNK, Accept, FileOffer, FileSender, OutgoingFile, Reject
from sixchat.session import Session, SessionLost, SessionObserver, new_stanza_id
from sixchat.stanzas import ErrorStanza, Receipt

__all__ = ["PROGRESS_EVERY", "FileOutbox", "OneFileSender"]

log = Logger(namespace="sixchat.agent.service")

#: Emit a progress event every this many bytes sent.
PROGRESS_EVERY = 8 * 1024 * 1024
#: The file is read in blocks of this many bytes (one thread hop each), one block ahead, into
#: two buffers of this size allocated once per transfer (2 MiB).
READ_BLOCK = 32 * MAX_CHUNK


class FileOutbox:
    """The sending side of file transfer for every session of the agent."""

    def __init__(
        self,
        reactor: Any,
        transfers: TransferStore | None,
        emit: Callable[[dict[str, Any]], None],
        now: Callable[[], datetime],
    ) -> None:
        self.reactor = reactor
        self.transfers = transfers
        self.emit = emit
        self.now = now
        #: Ids of our outgoing files (loaded when the store opens, added by L{queue} and by
        #: own-device sync): the outbox delivers these as files, never as messages.
        self.ids: set[str] = set()
        #: Those whose bytes this node holds (queued here, or a spooled copy from another
        #: node of ours), and which other own nodes are known to hold each: the delivery
        #: rule (docs/protocol.md 8.6, "Files").
        self.held: set[str] = set()
        self.holders: dict[str, set[str]] = {}
        #: Offers that hand a file on to another node of ours: no events, no progress.
        self._quiet: set[tuple[Session, str]] = set()
        self._senders: dict[Session, FileSender] = {}
        self._locks: dict[Session, defer.DeferredLock] = {}
        self._records: dict[tuple[Session, str], TransferRecord] = {}
        #: Bytes sent per file in the current attempt (for C{sixchat files}).
        self.progress: dict[str, int] = {}
        #: The offset the peer last accepted each file from (a resume if not 0).
        self.resumed: dict[str, int] = {}

    async def queue(self, to: str, path: str, kick: Callable[[str], None]) -> dict[str, Any]:
        """
        Queue the file at C{path} for C{to} (L{UserAgentService.sendFile}): hashed now (in a
        thread), stored as an outgoing message plus its transfer record, then the outbox is
        C{kick}ed; the file itself is read from disk when it is delivered.
        """
        assert self.transfers is not None
        try:
            size, digest = await self._thread(file_digest, path)
        except OSError as e:
            raise AgentError(f"cannot read {path}: {e.strerror or e}") from None
        now = self.now()
        name = os.path.basename(path)
        record = TransferRecord(
            "out", to, to, secrets.token_hex(16), name, size, digest,
            mimetypes.guess_type(name)[0], path, None, 0, 0, "offered", None, now, now,
        )  # fmt: skip
        await self.transfers.queue_file(record, now)
        self.ids.add(record.id)
        self.held.add(record.id)
        status = await self.transfers.store.status(record.id)
        if status is not None:
            self.emit(events.delivery_event(status))
        kick(to)
        return views.transfer_dict(record, "queued", 0)

    async def describe_all(self) -> list[dict[str, Any]]:
        """Every transfer of both directions as C{sixchat files} shows it, with our progress."""
        assert self.transfers is not None
        result = []
        for record in await self.transfers.all():
            if record.direction == "in":
                result.append(views.transfer_dict(record, record.state, record.received))
                continue
            status = await self.transfers.store.status(record.id)
            if status is not None:
                state = status.state
            elif (record.state == "spooled" and record.path) or (
                record.state == "receiving" and record.partial
            ):
                state = "queued"  # a copy from another node of ours before its message came
            else:
                state = "failed"  # cancelled
            sent = self.progress.get(record.id, 0)
            held = record.size if state == "delivered" else sent
            resumed = self.resumed.get(record.id, 0)
            result.append(views.transfer_dict(record, state, held, resumed))
        return result

    def _thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def deliver(self, session: Session, message: OutgoingMessage) -> defer.Deferred[Any]:
        """The outbox's send: a file if C{message} is one of our files, else the message."""
        if message.id not in self.ids:
            return session.send(message.stanza)
        return defer.ensureDeferred(self._deliver(session, message))

    async def _deliver(self, session: Session, message: OutgoingMessage) -> Receipt:
        lock = self._locks.get(session)
        if lock is None:
            lock = self._locks[session] = defer.DeferredLock()
        await lock.acquire()
        try:
            if session.ended:
                raise SessionLost("session ended")
            assert self.transfers is not None
            record = await self.transfers.get("out", message.to, message.id)
            if record is None:
                raise SessionLost(f"file {message.id} has no transfer record")
            if record.path is None:  # known from another node of ours, bytes not here
                raise SessionLost(f"file {message.id}: its bytes are not on this node")
            return await self.offer(session, record)
        finally:
            lock.release()

    async def offer(
        self,
        session: Session,
        record: TransferRecord,
        origin: str | None = None,
        to: str | None = None,
    ) -> Receipt:
        """
        Offer the file of C{record} on C{session} and stream it once accepted; returns the
        receipt (or raises like L{Session.send}). The outbox calls it one file at a time per
        session; C{sixchat probe --send-file} calls it directly. With C{origin}, C{record} is
        a file we received from that peer, handed on to another node of ours (docs/protocol.md
        8.6, "Files"; L{sixchat.agent.files.handon}); with C{to}, the bytes of our outgoing
        file to that peer, handed to another node of ours so that it can deliver it. Neither
        is a delivery: no events, no progress.
        """
        offer = FileOffer(
            record.id, record.name, record.size, record.sha256, record.mime, origin, to
        )
        sender = self._senders.get(session)
        if sender is None:
            sender = self._senders[session] = FileSender()
        if sender.get(offer.id) is not None:
            raise SessionLost("file already offered on this session")
        sender.offer(offer)
        key = (session, offer.id)
        self._records[key] = record
        quiet = origin is not None or to is not None
        if quiet:
            self._quiet.add(key)
        try:
            receipt: Receipt = await session.offerFile(offer)
        except Exception as e:
            sender.error(offer.id, getattr(e, "reason", "lost"))
            raise
        finally:
            self._records.pop(key, None)
            self._quiet.discard(key)
        sender.receipt(receipt)
        if not quiet:
            if record.direction == "out":
                self.progress[record.id] = record.size
            self._tell(session, record, "delivered")
        return receipt

    def _tell(self, session: Session, record: TransferRecord, state: str, **extra: Any) -> None:
        """An event about one of our outgoing files (none for a file handed on)."""
        if record.direction == "out" and (session, record.id) not in self._quiet:
            self.emit(events.file_event(record, state, **extra))

    # answers -------------------------------------------------------------------------------

    def stanza(self, session: Session, stanza: object) -> None:
        if isinstance(stanza, Accept):
            self.accepted(session, stanza)
        elif isinstance(stanza, Reject):
            self.rejected(session, stanza)

    def accepted(self, session: Session, accept: Accept) -> None:
        sender = self._senders.get(session)
        record = self._records.get((session, accept.id))
        try:
            if sender is None or record is None:
                raise StanzaError("bad_request", "<accept> for an unknown file", accept.id)
            outgoing = sender.accept(accept)
        except StanzaError as e:
            session.sendAnswer(ErrorStanza(e.reason, e.ref, e.text))
            return
        if record.direction == "out" and (session, accept.id) not in self._quiet:
            self.resumed[accept.id] = accept.offset
        self._tell(session, record, "sending", sent=accept.offset, resumed_from=accept.offset)
        d = defer.ensureDeferred(self._stream(session, outgoing, record))
        d.addErrback(self._streamFailed, session, outgoing)

    def rejected(self, session: Session, reject: Reject) -> None:
        sender = self._senders.get(session)
        try:
            if sender is None:
                raise StanzaError("bad_request", "<reject> for an unknown file", reject.id)
            sender.reject(reject)
        except StanzaError as e:
            session.sendAnswer(ErrorStanza(e.reason, e.ref, e.text))
            return
        record = self._records.get((session, reject.id))
        if record is not None:
            self._tell(session, record, "rejected", reason=reject.reason)
        session.fileRejected(reject)  # the outbox entry for this node fails (§11.9)

    async def _stream(
        self, session: Session, outgoing: OutgoingFile, record: TransferRecord
    ) -> None:
        assert record.path is not None
        size = outgoing.offer.size
        quiet = (session, outgoing.id) in self._quiet
        progress: dict[str, int] = {} if quiet else self.progress
        f: io.BufferedReader = await self._thread(open, record.path, "rb")
        reading: defer.Deferred[int] | None = None
        try:
            await self._thread(f.seek, outgoing.sent)
            progress[outgoing.id] = outgoing.sent
            last_event = outgoing.sent
            # Blocks of READ_BLOCK bytes, one ahead: one thread hop per block, not per chunk,
            # read into two buffers in turn (no fresh memory per block: each chunk copies
            # its bytes out, so a buffer is free again once its chunks are made).
            buffers = (memoryview(bytearray(READ_BLOCK)), memoryview(bytearray(READ_BLOCK)))
            turn = 0
            offset = outgoing.sent
            want = min(READ_BLOCK, size - offset)
            reading = self._thread(f.readinto, buffers[turn][:want]) if want else None
            while reading is not None:
                got: int = await reading
                if outgoing.finished:
                    return  # refused or lost meanwhile
                if got != want:
                    # The file changed under us: say done; the peer rejects it (size).
                    log.warn("file {path} changed while being sent", path=record.path)
                    break
                view = buffers[turn][:got]
                offset += want
                want = min(READ_BLOCK, size - offset)
                turn ^= 1
                reading = self._thread(f.readinto, buffers[turn][:want]) if want else None
                for start in range(0, got, MAX_CHUNK):
                    # A Deferred only when the session has no room: while the transport
                    # takes them, chunks go one after another without a hop through the
                    # reactor (the transport's pauseProducing ends the run).
                    if not session.writable:
                        await session.whenWritable()
                        if outgoing.finished:
                            return
                    session.sendStanza(outgoing.next_chunk(bytes(view[start : start + MAX_CHUNK])))
                progress[outgoing.id] = outgoing.sent
                if outgoing.sent - last_event >= PROGRESS_EVERY:
                    last_event = outgoing.sent
                    self._tell(session, record, "sending", sent=outgoing.sent)
            if outgoing.state == "sending":
                done = outgoing.finish() if not outgoing.want() else outgoing.cut_short()
                session.sendStanza(done)
        finally:
            if reading is not None and not reading.called:
                with contextlib.suppress(Exception):
                    await reading  # the file is closed only after its last read
            await self._thread(f.close)

    def _streamFailed(self, failure: Any, session: Session, outgoing: OutgoingFile) -> None:
        if (
            failure.check(SessionLost, ConnectionClosedError)
            or session.ended
            or session.connection.state != "open"
        ):
            return  # the offer's Deferred fails too; the outbox retries on a new session
        log.failure("sending file {id} failed", failure, id=outgoing.id)
        if outgoing.state == "sending" and not session.ended:
            # Nothing more comes: the peer rejects the file, which fails our offer.
            session.sendStanza(outgoing.cut_short())

    def sessionEnded(self, session: Session) -> None:
        sender = self._senders.pop(session, None)
        self._locks.pop(session, None)
        if sender is not None:
            for outgoing in sender.abandon():
                outgoing.failed("lost")
        for key in [k for k in self._records if k[0] is session]:
            del self._records[key]
        self._quiet = {k for k in self._quiet if k[0] is not session}


class OneFileSender(SessionObserver):
    """
    A session observer that sends one file without an agent (C{sixchat probe --send-file},
    the benchmark): connect with it as the observer and a C{PeerConfig} with
    C{file_transfer=True}, then C{await send(reactor, session)}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        self.outbox: FileOutbox | None = None

    def stanzaReceived(self, session: Session, stanza: Any) -> None:
        if self.outbox is not None:
            self.outbox.stanza(session, stanza)

    def sessionEnded(self, session: Session, reason: Any) -> None:
        if self.outbox is not None:
            self.outbox.sessionEnded(session)

    async def send(self, reactor: Any, session: Session) -> Receipt:
        """Hash the file (in a thread), offer it, stream it; the peer's receipt."""
        size, digest = await threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), file_digest, self.path
        )
        self.size = size
        now = datetime.now(UTC)
        name = os.path.basename(self.path)
        record = TransferRecord(
            "out", session.peer, session.peer, new_stanza_id(), name, size, digest,
            None, self.path, None, 0, 0, "offered", None, now, now,
        )  # fmt: skip
        self.outbox = FileOutbox(reactor, None, lambda event: None, lambda: now)
        return await self.outbox.offer(session, record)
