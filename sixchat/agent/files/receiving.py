"""
Receiving files (§8.7, §11.9): L{FileInbox} answers offers, writes chunks to the partial file
in a thread, fsyncs every L{SYNC_EVERY} bytes and records that durable prefix, verifies the
SHA-256 at C{done}, and sends the receipt only once the file is stored under its final name
and recorded. A transfer cut off (lost connection, either side crashing) resumes from the
recorded prefix: the next offer of the same id, size and sha256 is accepted at that offset,
with the hash state rebuilt from the prefix on disk. The SHA-256 is computed in the disk
thread, batch by batch as the batches are written (the state machine leaves the hash to us:
L{sixchat.filetransfer.Check}), so the reactor thread does not hash 32 KiB per chunk.

Memory stays bounded: chunks waiting for the disk count toward the session's limit on data
held for the disk (L{Session.holdInput}, L{sixchat.flow.MAX_HELD}), so a disk slower than the
network stops reading the peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.agent import events
from sixchat.agent.files.disk import FilesDir, PartialWriter
from sixchat.agent.files.provenance import OUT_KEY, provenance, receiver_key
from sixchat.agent.store.files import TransferRecord, TransferStore, file_body
from sixchat.agent.store.records import StoreClosedError
from sixchat.agent.store.store import MessageStore
from sixchat.errors import StanzaError
from sixchat.filetransfer import (
    Check,
    Chunk,
    Done,
    FileLimits,
    FileOffer,
    FileReceiver,
    IncomingFile,
    Reject,
    Verified,
)
from sixchat.filetransfer.machine import Hasher
from sixchat.identity import normalize_identity
from sixchat.session import Session
from sixchat.stanzas import ErrorStanza, Message, Receipt, format_timestamp

__all__ = ["SYNC_EVERY", "FileInbox"]

log = Logger(namespace="sixchat.agent.service")

#: fsync the partial file and record the durable prefix every this many bytes.
SYNC_EVERY = 32 * 1024 * 1024
#: Chunks are handed to the disk thread in batches of about this many bytes: one thread
#: hop per batch, not per 32 KiB chunk. A quarter of the session's limit on data held for
#: the disk (L{sixchat.flow.MAX_HELD}: chunks waiting here count toward it), so that reading
#: goes on while earlier batches are written.
WRITE_BATCH = 512 * 1024


@dataclass
class _Writing:
    """One accepted transfer's disk side: its writer and the chain of writes in order."""

    record: TransferRecord
    writer: PartialWriter
    session: Session
    #: The SHA-256 of what was written, fed in the disk thread with each batch.
    hasher: Hasher
    chain: defer.Deferred[Any] = field(default_factory=lambda: defer.succeed(None))
    unsynced: int = 0
    #: Chunks not yet handed to the disk thread (written in batches of L{WRITE_BATCH}).
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    #: Received bytes counted toward the session's input limit until written.
    pending_held: int = 0
    #: A write failed: the file on disk is not what was received (rejected at done).
    failed: bool = False
    #: Handed on by another node of ours (docs/protocol.md 8.6, "Files"), not sent by the peer.
    handed_on: bool = False


def _settled(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires (with None) once C{d} has, leaving C{d}'s result to its chain."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def wake(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(wake)
    return waiter


def _nothing(_: object) -> None:
    return None


class FileInbox:
    """The receiving side of file transfer for every session of the agent."""

    def __init__(
        self,
        reactor: Any,
        store: MessageStore,
        files: FilesDir,
        limits: FileLimits,
        emit: Callable[[dict[str, Any]], None],
        now: Callable[[], datetime],
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.transfers = TransferStore(store)
        self.files = files
        self.limits = limits
        self.emit = emit
        self.now = now
        self._receivers: dict[str, FileReceiver] = {}
        self._writing: dict[tuple[str, str], _Writing] = {}
        #: Transfers whose writer is still being closed (see L{_stop}).
        self._closing: dict[tuple[str, str], defer.Deferred[None]] = {}
        self.stopping = False
        #: Offers being decided (store and disk look-ups in flight); L{stop} waits for them.
        self._deciding: dict[tuple[str, str], defer.Deferred[None]] = {}
        #: Transfers whose C{done} came: their last writes, check and storing are in flight;
        #: L{stop} waits for them too, so none of it outlives the store.
        self._finishing: dict[tuple[str, str], defer.Deferred[None]] = {}
        #: Own-device sync (docs/protocol.md 8.6, "Files"): whether a session is with another
        #: node of ours, which may hand on a file it received (C{<file from=…>}); the peer
        #: each such offer names, by (session, id); told of every file stored (C{on_stored})
        #: and of each one an own node handed on or already held (C{on_handed_on}).
        self.is_own: Callable[[Session], bool] = lambda session: False
        #: (session, id) -> (direction, peer): C{in} a file from that peer (C{from}), C{out}
        #: the bytes of a file our identity sends to that peer (C{to}), kept in C{spool}.
        self._origins: dict[tuple[Session, str], tuple[str, str]] = {}
        self.on_stored: Callable[[TransferRecord], None] = lambda record: None
        self.on_handed_on: Callable[[Session, str, str, str], None] = (
            lambda session, direction, peer, id: None
        )
        #: Where copies of our outgoing files land (C{<data-dir>/spool}), and who is told of
        #: each one stored (it may deliver the file now).
        self.spool: FilesDir | None = None
        self.on_spooled: Callable[[TransferRecord], None] = lambda record: None

    def _thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def _peer(self, session: Session, file_id: str) -> str:
        """Whose file C{file_id} on C{session} is: the peer's, or the one an own node names."""
        return self._origins.get((session, file_id), ("in", session.peer))[1]

    def _direction(self, session: Session, file_id: str) -> str:
        """C{out} for the copy of a file our identity sends (C{to}), else C{in}."""
        return self._origins.get((session, file_id), ("in", session.peer))[0]

    def _dir(self, direction: str) -> FilesDir:
        if direction == "out":
            assert self.spool is not None
            return self.spool
        return self.files

    def _emit_for(self, direction: str, event: dict[str, Any]) -> None:
        """File events are about files we receive: none for a copy of our own outgoing file."""
        if direction == "in":
            self.emit(event)

    def _fileEvent(self, record: TransferRecord, state: str, **extra: Any) -> None:
        self._emit_for(record.direction, events.file_event(record, state, **extra))

    def _receiver(self, session: Session, file_id: str) -> tuple[str, FileReceiver]:
        key = receiver_key(self._direction(session, file_id), self._peer(session, file_id))
        receiver = self._receivers.get(key)
        if receiver is None:
            receiver = self._receivers[key] = FileReceiver(self.limits)
        return key, receiver

    # stanzas ---------------------------------------------------------------------------------

    def stanza(self, session: Session, stanza: object) -> None:
        if isinstance(stanza, FileOffer):
            self.offer(session, stanza)
        elif isinstance(stanza, Chunk):
            self.chunk(session, stanza)
        elif isinstance(stanza, Done):
            self.done(session, stanza)

    def offer(self, session: Session, offer: FileOffer) -> None:
        if self.stopping:
            return  # no answer: the session ends with the agent; the sender offers it again
        if not self._origin(session, offer):
            return
        key, receiver = self._receiver(session, offer.id)
        if (session, offer.id) in self._origins and (
            (key, offer.id) in self._writing or (key, offer.id) in self._deciding
        ):
            # The peer itself (or another node of ours) is sending us this very file: a copy
            # handed on never replaces a transfer in progress (the peer's would fail).
            del self._origins[(session, offer.id)]
            self._answer(session, Reject(offer.id, "busy"))
            return
        previous = receiver.get(offer.id)
        if previous is not None and previous.owner is not session:
            handed_on = (previous.owner, offer.id)
            if handed_on in self._origins and isinstance(previous.owner, Session):
                # A copy an own node was handing on gives way (it hears busy, final for it).
                del self._origins[handed_on]
                self._answer(previous.owner, Reject(offer.id, "busy"))
        self._stop((key, offer.id))  # a re-offer replaces the transfer in progress (§11.9)
        answer = receiver.reserve(offer, session)
        if isinstance(answer, Reject):
            log.info(
                "refused file {id} from {peer}: {reason}",
                id=offer.id,
                peer=self._peer(session, offer.id),
                reason=answer.reason,
            )
            self._answer(session, answer)
            event = self._event(session, offer, "rejected", reason=answer.reason)
            self._emit_for(self._direction(session, offer.id), event)
            return
        # Whatever the disk still does for this file — an earlier offer being decided, a
        # transfer being closed or finished — comes first: the partial file has one writer
        # at a time (a re-offer that truncated it under a finishing writer left a hole).
        earlier = [
            pending
            for pending in (
                self._deciding.get((key, offer.id)),
                self._closing.get((key, offer.id)),
                self._finishing.get((key, offer.id)),
            )
            if pending is not None
        ]
        d = defer.ensureDeferred(self._decide(session, key, receiver, answer, earlier))
        d.addErrback(self._decisionFailed, session, receiver, answer)
        deciding = self._deciding[(key, offer.id)] = _settled(d)

        def decided(_: object) -> None:
            if self._deciding.get((key, offer.id)) is deciding:
                del self._deciding[(key, offer.id)]

        deciding.addCallback(decided)

    def _origin(self, session: Session, offer: FileOffer) -> bool:
        """
        Note whose file an offer is (L{provenance}: C{from} and C{to} count only from another
        node of ours); a C{from} or C{to} that cannot be taken gets C{error bad_request}.
        """
        self._origins.pop((session, offer.id), None)
        try:
            origin = provenance(offer, session.peer, self.is_own(session), self.spool is not None)
        except ValueError as e:
            self._answer(session, ErrorStanza("bad_request", offer.id, str(e)))
            return False
        if origin is not None:
            self._origins[(session, offer.id)] = origin
        return True

    async def _decide(
        self,
        session: Session,
        key: str,
        receiver: FileReceiver,
        incoming: IncomingFile,
        earlier: list[defer.Deferred[None]],
    ) -> None:
        offer = incoming.offer
        for pending in earlier:
            await _settled(pending)
        if receiver.get(offer.id) is not incoming:
            return  # offered again meanwhile: the later offer is the one answered
        peer = self._peer(session, offer.id)
        direction = self._direction(session, offer.id)
        files = self._dir(direction)
        handed_on = (session, offer.id) in self._origins
        record = await self.transfers.get(direction, peer, offer.id)
        if receiver.get(offer.id) is not incoming:
            return  # offered again while we looked (the later offer is the one answered)
        if record is not None and (
            record.state == "received" if direction == "in" else record.path is not None
        ):
            # Stored already (§11.9); for our outgoing file: its bytes are here (we queued
            # it, or hold a copy).
            self._answer(session, receiver.already_stored(offer.id))
            if handed_on:
                self._origins.pop((session, offer.id), None)
                self.on_handed_on(session, direction, peer, offer.id)
            return
        same = (
            record is not None
            and record.state == "receiving"
            and record.size == offer.size
            and record.sha256 == offer.sha256
        )
        partial = files.partial_path(key, offer.id)
        durable = record.received if same and record is not None else 0
        offset, hasher = await self._thread(files.load_prefix, partial, durable)
        free = await self._thread(files.free_space)
        answer = receiver.accept(offer.id, offset, None, free)  # we hash, in the disk thread
        now = self.now()
        keep_at = record is not None and (same or direction == "out")  # out: when queued
        new = TransferRecord(
            direction, normalize_identity(peer), peer, offer.id, offer.name, offer.size,
            offer.sha256, offer.mime, None, partial, offset, offset, "receiving", None,
            record.at if keep_at and record is not None else now, now,
        )  # fmt: skip
        if isinstance(answer, Reject):
            await self.transfers.put(replace(new, state="failed", reason=answer.reason))
            self._answer(session, answer)
            self._fileEvent(new, "rejected", reason=answer.reason)
            return
        writer = await self._thread(files.open_partial, partial, offset)
        await self.transfers.put(new, durable=False)
        if receiver.get(offer.id) is not incoming or session.ended or self.stopping:
            await self._thread(writer.close)  # gone or offered again meanwhile
            return
        self._writing[(key, offer.id)] = _Writing(new, writer, session, hasher, handed_on=handed_on)
        self._answer(session, answer)
        self._fileEvent(new, "receiving", received=offset, resumed_from=offset)

    def _decisionFailed(
        self, failure: Failure, session: Session, receiver: FileReceiver, incoming: IncomingFile
    ) -> None:
        offer = incoming.offer
        mine = receiver.get(offer.id) is incoming  # not an offer of the same file since
        if self.stopping or failure.check(StoreClosedError):
            # Not the file's fault: no answer (a reject would be final, §11.9); the sender
            # offers it again on its next session, which is this one's end.
            log.info("file {id} from {peer} not taken: stopping", id=offer.id, peer=session.peer)
            if mine:
                receiver.decline(offer.id, "io_error")
            return
        log.failure("could not take file {id} from {peer}", failure, id=offer.id, peer=session.peer)
        if mine:
            self._answer(session, receiver.decline(offer.id, "io_error"))

    def chunk(self, session: Session, chunk: Chunk) -> None:
        if self.stopping:
            return  # the agent is going; the sender resumes on its next session
        key, receiver = self._receiver(session, chunk.id)
        try:
            _, keep = receiver.chunk(chunk, session)
        except StanzaError as e:
            self._answer(session, ErrorStanza(e.reason, e.ref, e.text))
            self._stop((key, chunk.id), session)
            return
        writing = self._writing.get((key, chunk.id))
        if writing is None:  # accepted, but the writer is gone (cannot happen: defensive)
            self._answer(session, receiver.decline(chunk.id, "io_error"))
            return
        size = len(chunk.data)
        session.holdInput(size)
        writing.pending_held += size
        if keep:
            writing.pending.append(keep)
            writing.pending_bytes += len(keep)
        writing.unsynced += len(keep)
        sync = writing.unsynced >= SYNC_EVERY
        if sync:
            writing.unsynced = 0
        if sync or writing.pending_bytes >= WRITE_BATCH:
            self._flush(writing, sync)

    def _flush(self, writing: _Writing, sync: bool = False) -> None:
        """Hand the pending chunks to the disk thread (after the writes before them)."""
        data = writing.pending  # written with writev: 512 KiB not joined in the reactor
        held = writing.pending_held
        writing.pending, writing.pending_bytes, writing.pending_held = [], 0, 0
        if data or sync:
            writing.chain.addCallback(self._write, writing, data, sync)
        writing.chain.addBoth(self._released, writing, held)

    def _write(
        self, _: object, writing: _Writing, data: list[bytes], sync: bool
    ) -> defer.Deferred[None] | None:
        # Plain callbacks, not a coroutine: this runs for every write batch received.
        if writing.failed:
            return None
        d = self._thread(writing.writer.write_hashed, data, writing.hasher, sync)
        return d.addCallback(self._synced, writing) if sync else d.addCallback(_nothing)

    def _synced(self, synced: int, writing: _Writing) -> defer.Deferred[None]:
        """A sync made C{synced} bytes durable: record that prefix (what a resume takes)."""
        writing.record = replace(writing.record, received=synced, updated=self.now())
        d = self.transfers.put(writing.record, durable=False)
        return d.addCallback(
            lambda _: self._fileEvent(writing.record, "receiving", received=synced)
        )

    def _released(self, result: Any, writing: _Writing, held: int) -> Any:
        if held:
            writing.session.releaseInput(held)
        if isinstance(result, Failure):
            writing.failed = True
            log.failure("writing a file failed", result)
            return None  # the chain goes on; _finish rejects the file (io_error)
        return result

    def done(self, session: Session, done: Done) -> None:
        if self.stopping:
            return
        key, receiver = self._receiver(session, done.id)
        try:
            outcome = receiver.done(done, session)
        except StanzaError as e:
            self._answer(session, ErrorStanza(e.reason, e.ref, e.text))
            self._stop((key, done.id), session)
            return
        self._origins.pop((session, done.id), None)  # nothing more comes for it
        writing = self._writing.pop((key, done.id), None)
        if writing is None:
            return
        self._flush(writing)
        writing.chain.addCallback(lambda _: defer.ensureDeferred(self._finish(writing, outcome)))
        writing.chain.addErrback(self._finishFailed, writing, receiver)
        finished: defer.Deferred[None] = defer.Deferred()
        self._finishing[(key, done.id)] = finished

        def settled(result: object) -> object:
            if self._finishing.get((key, done.id)) is finished:
                del self._finishing[(key, done.id)]
            finished.callback(None)
            return result

        writing.chain.addBoth(settled)

    async def _finish(self, writing: _Writing, outcome: Reject | Verified | Check) -> None:
        record, session = writing.record, writing.session
        key = receiver_key(record.direction, record.peer)
        if writing.failed and not isinstance(outcome, Reject):
            receiver = self._receivers.get(key)
            outcome = (
                receiver.decline(record.id, "io_error")
                if receiver is not None
                else Reject(record.id, "io_error")
            )
        elif isinstance(outcome, Check):
            # Every batch is written and hashed (this runs after them): the verdict. (A
            # receiver gone with its session meanwhile gives the same verdict.)
            receiver = self._receivers.get(key)
            if receiver is None:
                receiver = FileReceiver(self.limits)
            outcome = receiver.verify(outcome.file, writing.hasher.digest())
        if isinstance(outcome, Reject):
            await self._thread(writing.writer.close)
            await self._thread(self.files.discard, writing.writer.path)
            await self.transfers.put(replace(record, state="failed", reason=outcome.reason))
            self._answer(session, outcome)
            self._fileEvent(record, "failed", reason=outcome.reason)
            return
        if record.direction == "out":
            await self._spooled(writing, outcome)
            return
        path = await self._thread(self.files.finish, writing.writer, record.name)
        now = self.now()
        stored = replace(
            record, state="received", path=path, partial=None, received=record.size, updated=now
        )
        await self.transfers.put(stored)
        message = Message(record.id, format_timestamp(now), file_body(record.name, record.size))
        await self.store.store_incoming(record.peer_display, message, now)
        self._receipt(session, key, record.id, outcome.file)
        log.info(
            "received file {id} from {peer}: {path}",
            id=record.id,
            peer=record.peer_display,
            path=path,
        )
        self.emit(events.file_event(stored, "received", received=record.size, path=path))
        if writing.handed_on:
            self.on_handed_on(session, "in", record.peer_display, record.id)
        self.on_stored(stored)

    async def _spooled(self, writing: _Writing, outcome: Verified) -> None:
        """
        A copy of our outgoing file, checked: kept in the spool under its sanitised name, its
        transfer row (direction C{out}, state C{spooled}) recorded, and only then the receipt;
        this node may now deliver the file (C{on_spooled}).
        """
        record, session = writing.record, writing.session
        assert self.spool is not None
        path = await self._thread(self.spool.finish, writing.writer, record.name)
        stored = replace(
            record, state="spooled", path=path, partial=None, received=record.size,
            updated=self.now(),
        )  # fmt: skip
        await self.transfers.put(stored)
        self._receipt(session, receiver_key("out", record.peer), record.id, outcome.file)
        log.info(
            "holding a copy of our file {id} to {peer} from our other node: {path}",
            id=record.id, peer=record.peer_display, path=path,
        )  # fmt: skip
        self.on_handed_on(session, "out", record.peer_display, record.id)
        self.on_spooled(stored)

    def _finishFailed(self, failure: Failure, writing: _Writing, receiver: FileReceiver) -> None:
        if self.stopping or failure.check(StoreClosedError):
            receiver.decline(writing.record.id, "io_error")  # no answer: offered again later
            return
        log.failure("could not store file {id}", failure, id=writing.record.id)
        self._answer(writing.session, receiver.decline(writing.record.id, "io_error"))

    # the end of a transfer or a session ------------------------------------------------------

    def _stop(self, key: tuple[str, str], session: Session | None = None) -> None:
        """
        Close a transfer's writer after its pending writes, keeping the durable prefix;
        with C{session}, only if the transfer runs on that session (a stale session's bad
        chunk ends nothing of the transfer that replaced it on another session).
        """
        writing = self._writing.get(key)
        if writing is not None and (session is None or writing.session is session):
            del self._writing[key]
            self._flush(writing)
            writing.chain.addCallback(lambda _: defer.ensureDeferred(self._keep(writing)))
            writing.chain.addErrback(lambda f: log.failure("closing a partial file failed", f))
            # A re-offer of the same file waits for this (it reads the prefix we keep).
            closed: defer.Deferred[None] = defer.Deferred()
            self._closing[key] = closed

            def finished(_: object) -> None:
                if self._closing.get(key) is closed:
                    del self._closing[key]
                closed.callback(None)

            writing.chain.addBoth(finished)

    async def _keep(self, writing: _Writing) -> None:
        synced = await self._thread(writing.writer.sync)
        await self._thread(writing.writer.close)
        writing.record = replace(writing.record, received=synced, updated=self.now())
        await self.transfers.put(writing.record, durable=False)

    def stop(self) -> defer.Deferred[Any]:
        """The agent stops: close every partial file, keeping its durable prefix."""
        self.stopping = True
        for key in list(self._writing):
            self._stop(key)
        waits = [*self._deciding.values(), *self._closing.values(), *self._finishing.values()]
        return defer.DeferredList(waits, consumeErrors=True)

    def sessionEnded(self, session: Session) -> None:
        keys = {normalize_identity(session.peer)}
        for mapped in [m for m in self._origins if m[0] is session]:
            keys.add(receiver_key(*self._origins[mapped]))
        for key in keys:
            receiver = self._receivers.get(key)
            if receiver is None:
                continue
            for incoming in receiver.detach(session):
                self._stop((key, incoming.id))
                if not key.startswith(OUT_KEY):
                    event = self._event(
                        session, incoming.offer, "interrupted", received=incoming.held
                    )
                    self.emit(event)
            if not len(receiver):
                del self._receivers[key]
        for mapped in [m for m in self._origins if m[0] is session]:
            del self._origins[mapped]

    # helpers -----------------------------------------------------------------------------------

    def _receipt(self, session: Session, key: str, file_id: str, file: IncomingFile) -> None:
        """
        The receipt of a file now stored: through its receiver while that still holds this
        very transfer; else (the session ended, or the file was offered again meanwhile)
        on this session if it is still open, and a re-offer gets one too (§11.9).
        """
        receiver = self._receivers.get(key)
        if receiver is not None and receiver.get(file_id) is file:
            self._answer(session, receiver.stored(file_id))
        else:
            self._answer(session, Receipt(file_id))

    def _answer(self, session: Session, stanza: Any) -> None:
        if not session.ended and session.connection.state in ("open", "closing"):
            try:
                session.sendAnswer(stanza)
            except Exception as e:  # the session is closing: the sender re-offers later
                log.debug("could not answer {peer}: {e}", peer=session.peer, e=e)

    def _event(
        self, session: Session, offer: FileOffer, state: str, **extra: Any
    ) -> dict[str, Any]:
        now = self.now()
        peer = self._peer(session, offer.id)
        record = TransferRecord(
            "in", normalize_identity(peer), peer, offer.id, offer.name,
            offer.size, offer.sha256, offer.mime, None, None, 0, 0, state, None, now, now,
        )  # fmt: skip
        return events.file_event(record, state, **extra)
