"""
The §8.7 transfer state machines, sans-IO: L{FileSender} and L{OutgoingFile} for the sending
role, L{FileReceiver} and L{IncomingFile} for the receiving one.

They decide what to send and check what arrives; the caller owns the disk, the hash of a
resumed prefix, the store and the network. Every stanza that breaks a rule raises
L{StanzaError} (answered with C{<error/>}, §8.6): an unknown or invalid id, a chunk at the
wrong offset, a chunk or C{done} before C{accept} or after C{done}, an C{accept} twice or
past the end (§11.9).

Receiving one file::

    offer ──reserve──▶ deciding ──accept(offset, hasher)──▶ receiving ──done──▶ verifying
               │            │                                    │                │
               ▼            ▼                                    ▼                ▼
            Reject      Reject / Receipt (already stored)    Reject (size or   Receipt once
                                                              sha256 mismatch)  stored (stored())

The hash may be the caller's instead (C{accept} with C{hasher=None}: it hashes, in order,
what L{FileReceiver.chunk} returns — the agent does it in its disk thread, with the writes):
then C{done} with the right size gives L{Check} (state C{checking}), and the caller settles
it with L{FileReceiver.verify} and the digest of what it wrote, which gives the same
L{Reject} C{sha256_mismatch} or L{Verified} as C{done} would have.

Sending one file::

    offer() ──accept──▶ sending ──finish()──▶ sent ──receipt──▶ delivered
       │                   │                    │
       └── receipt ──▶ delivered (§11.9: already stored)
       any state ── reject / error ──▶ failed
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Protocol

from sixchat.errors import StanzaError
from sixchat.filetransfer.stanzas import MAX_CHUNK, Accept, Chunk, Done, FileOffer, Reject
from sixchat.stanzas import Receipt

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MAX_FILE_SIZE",
    "FileLimits",
    "FileReceiver",
    "FileSender",
    "Check",
    "Hasher",
    "IncomingFile",
    "OutgoingFile",
    "Verified",
]

#: Default largest file we accept (--max-file-size).
DEFAULT_MAX_FILE_SIZE = 4 * 2**30
#: Default number of transfers one peer identity may have in progress with us at once.
DEFAULT_MAX_CONCURRENT = 4


class Hasher(Protocol):
    """What C{hashlib.sha256()} offers and the machines use."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class FileLimits:
    """What a receiver accepts (configurable; §9.2 in spirit)."""

    max_size: int = DEFAULT_MAX_FILE_SIZE
    max_concurrent: int = DEFAULT_MAX_CONCURRENT


@dataclass(frozen=True)
class Verified:
    """C{done} arrived and the file matches its offer: store it durably, then call C{stored}."""

    file: IncomingFile


@dataclass(frozen=True)
class Check:
    """
    C{done} arrived with the offered size and the caller does the hashing: once what it
    wrote is hashed, it calls L{FileReceiver.verify} with the digest.
    """

    file: IncomingFile


def _bad(text: str, ref: str) -> StanzaError:
    return StanzaError("bad_request", text, ref)


# ---------------------------------------------------------------------------------------------
# Receiving


class IncomingFile:
    """
    One offer being received.

    @ivar received: bytes received so far (including bytes past C{size}, which are dropped):
        the offset the next chunk must carry (§8.7).
    @ivar held: bytes of the file held, at most C{size}: the durable prefix once the caller
        has synced what L{chunk} returned.
    @ivar resumed_from: the offset of the accept.
    @ivar state: C{deciding}, C{receiving}, C{checking} (caller's hash, see L{Check}),
        C{verifying}, C{finished}.
    """

    def __init__(self, offer: FileOffer, owner: Hashable) -> None:
        self.offer = offer
        self.owner = owner
        self.state = "deciding"
        self.received = 0
        self.held = 0
        self.resumed_from = 0
        self.overflow = False
        self._hasher: Hasher | None = None

    @property
    def id(self) -> str:
        return self.offer.id

    def __repr__(self) -> str:
        return f"<IncomingFile {self.id} {self.state} {self.held}/{self.offer.size}>"

    def _start(self, offset: int, hasher: Hasher | None) -> Accept:
        if not 0 <= offset <= self.offer.size:
            raise ValueError("the accepted offset must be within the file")
        self.state = "receiving"
        self.received = self.held = self.resumed_from = offset
        self._hasher = hasher
        return Accept(self.id, offset)

    def chunk(self, chunk: Chunk) -> bytes:
        """
        Check one chunk; return the bytes to write at offset C{held} (before this call), which
        may be fewer than the chunk carried: bytes past C{size} are dropped (§11.9).
        """
        if self.state != "receiving":
            raise _bad(f"<chunk> while the transfer is {self.state}", chunk.id)
        if chunk.offset != self.received:
            raise _bad(f"chunk at offset {chunk.offset}, expected {self.received}", chunk.id)
        if len(chunk.data) > MAX_CHUNK:  # the codec refuses these already
            raise StanzaError("too_large", f"chunk over {MAX_CHUNK} bytes", chunk.id)
        self.received += len(chunk.data)
        room = self.offer.size - self.held
        keep = chunk.data if len(chunk.data) <= room else chunk.data[:room]
        if len(keep) < len(chunk.data):
            self.overflow = True
        if keep:
            if self._hasher is not None:
                self._hasher.update(keep)
            self.held += len(keep)
        return keep

    def done(self) -> Reject | Verified | Check:
        """
        C{done}: a size lie or a SHA-256 mismatch is a L{Reject}, else L{Verified}; L{Check}
        when the hash is the caller's (see L{verify}).
        """
        if self.state != "receiving":
            raise _bad(f"<done> while the transfer is {self.state}", self.id)
        if self.overflow or self.received != self.offer.size:
            self.state = "finished"
            return Reject(self.id, "size_mismatch")
        if self._hasher is None:
            self.state = "checking"
            return Check(self)
        return self.verify(self._hasher.digest())

    def verify(self, digest: bytes) -> Reject | Verified:
        """The SHA-256 of the bytes held, after C{done}: L{Verified} if it is the offer's."""
        if self.state not in ("receiving", "checking"):
            raise ValueError(f"file {self.id!r} is {self.state}, not being checked")
        if digest != self.offer.sha256:
            self.state = "finished"
            return Reject(self.id, "sha256_mismatch")
        self.state = "verifying"
        return Verified(self)


class FileReceiver:
    """
    Every incoming transfer from one peer identity (file ids are unique per sender, §8.2),
    across its sessions; C{owner} says which session a transfer runs on. Enforces the
    limits: the size, and L{FileLimits.max_concurrent} transfers in progress at once.
    """

    def __init__(self, limits: FileLimits | None = None) -> None:
        self.limits = limits or FileLimits()
        self._files: dict[str, IncomingFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[IncomingFile]:
        return iter(list(self._files.values()))

    def get(self, file_id: str) -> IncomingFile | None:
        return self._files.get(file_id)

    def reserve(self, offer: FileOffer, owner: Hashable) -> IncomingFile | Reject:
        """
        An offer arrived: a L{Reject} if it is over a limit, else a transfer in state
        C{deciding} that the caller settles with L{accept}, L{decline} or L{already_stored}
        (it looks at its store and disk first). A re-offer of an id in progress replaces the
        old transfer (§11.9: the caller resumes or restarts it); call L{get} first to clean up.
        """
        previous = self._files.pop(offer.id, None)
        if offer.size > self.limits.max_size:
            return Reject(offer.id, "too_large")
        if len(self._files) >= self.limits.max_concurrent:
            if previous is not None:
                self._files[offer.id] = previous
            return Reject(offer.id, "busy")
        incoming = self._files[offer.id] = IncomingFile(offer, owner)
        return incoming

    def _deciding(self, file_id: str) -> IncomingFile:
        incoming = self._files.get(file_id)
        if incoming is None or incoming.state != "deciding":
            raise ValueError(f"no offer {file_id!r} awaits a decision")
        return incoming

    def accept(
        self, file_id: str, offset: int, hasher: Hasher | None, free: int | None = None
    ) -> Accept | Reject:
        """
        Take the file from C{offset}, the durable prefix the caller holds (0 for none), with
        C{hasher} already fed that prefix — or None: the caller hashes the prefix and what
        L{chunk} returns, and settles C{done} with L{verify} (see L{Check}). C{free}: bytes
        the disk can still take; a L{Reject} C{no_space} if the rest would not fit.
        """
        incoming = self._deciding(file_id)
        if free is not None and incoming.offer.size - offset > free:
            del self._files[file_id]
            return Reject(file_id, "no_space")
        return incoming._start(offset, hasher)

    def decline(self, file_id: str, reason: str) -> Reject:
        """Refuse an offer awaiting a decision (or end one in progress) with C{reason}."""
        incoming = self._files.pop(file_id, None)
        if incoming is not None:
            incoming.state = "finished"
        return Reject(file_id, reason)

    def already_stored(self, file_id: str) -> Receipt:
        """§11.9: the file is already stored; answer the offer with its receipt."""
        self._deciding(file_id)
        del self._files[file_id]
        return Receipt(file_id)

    def _active(self, file_id: str, owner: Hashable, what: str) -> IncomingFile:
        incoming = self._files.get(file_id)
        if incoming is None or incoming.owner != owner:
            raise _bad(f"<{what}> for an unknown file", file_id)
        return incoming

    def chunk(self, chunk: Chunk, owner: Hashable) -> tuple[IncomingFile, bytes]:
        """
        A chunk on session C{owner}: the transfer and the bytes to write (see
        L{IncomingFile.chunk}). A chunk that breaks a rule ends the transfer here too: the
        sender takes our C{error} as final (§8.6), and a re-offer resumes from what we hold.
        """
        incoming = self._active(chunk.id, owner, "chunk")
        try:
            return incoming, incoming.chunk(chunk)
        except StanzaError:
            self._end(incoming)
            raise

    def done(self, done: Done, owner: Hashable) -> Reject | Verified | Check:
        """
        C{done}: a L{Reject} (the transfer is over), L{Verified} (store, then L{stored}), or
        L{Check} when the hash is the caller's (then L{verify}).
        """
        incoming = self._active(done.id, owner, "done")
        try:
            outcome = incoming.done()
        except StanzaError:
            self._end(incoming)
            raise
        if isinstance(outcome, Reject):
            del self._files[done.id]
        return outcome

    def verify(self, incoming: IncomingFile, digest: bytes) -> Reject | Verified:
        """
        Settle a L{Check}: C{digest} is the SHA-256 of every byte held (prefix included). A
        mismatch is a L{Reject} C{sha256_mismatch} and ends the transfer; L{Verified}: store
        the file, then L{stored}. The transfer may have been detached from its session
        meanwhile (the verdict is the same; the caller answers a later offer).
        """
        if incoming.state != "checking":
            raise ValueError(f"file {incoming.id!r} is {incoming.state}, not being checked")
        outcome = incoming.verify(digest)
        if isinstance(outcome, Reject) and self._files.get(incoming.id) is incoming:
            del self._files[incoming.id]
        return outcome

    def _end(self, incoming: IncomingFile) -> None:
        incoming.state = "finished"
        self._files.pop(incoming.id, None)

    def stored(self, file_id: str) -> Receipt:
        """The verified file is durably stored: the receipt to send (§8.2)."""
        incoming = self._files.get(file_id)
        if incoming is None or incoming.state != "verifying":
            raise ValueError(f"file {file_id!r} is not verified")
        del self._files[file_id]
        incoming.state = "finished"
        return Receipt(file_id)

    def detach(self, owner: Hashable) -> list[IncomingFile]:
        """The session C{owner} ended: forget its transfers (a re-offer resumes them)."""
        gone = [f for f in self._files.values() if f.owner == owner]
        for incoming in gone:
            del self._files[incoming.id]
        return gone


# ---------------------------------------------------------------------------------------------
# Sending


class OutgoingFile:
    """
    One file we offer on one session.

    @ivar state: C{offered}, C{sending}, C{sent} (done sent), C{delivered}, C{failed}.
    @ivar sent: the offset of the next chunk.
    @ivar resumed_from: the offset the receiver accepted from.
    @ivar reason: why it failed (a reject reason or an error reason).
    """

    def __init__(self, offer: FileOffer) -> None:
        self.offer = offer
        self.state = "offered"
        self.sent = 0
        self.resumed_from = 0
        self.reason: str | None = None

    @property
    def id(self) -> str:
        return self.offer.id

    def __repr__(self) -> str:
        return f"<OutgoingFile {self.id} {self.state} {self.sent}/{self.offer.size}>"

    @property
    def finished(self) -> bool:
        return self.state in ("delivered", "failed")

    def accepted(self, accept: Accept) -> None:
        if self.state != "offered":
            raise _bad(f"<accept> while the transfer is {self.state}", accept.id)
        if accept.offset > self.offer.size:
            raise _bad("accept offset past the end of the file", accept.id)
        self.state = "sending"
        self.sent = self.resumed_from = accept.offset

    def want(self) -> int:
        """How many bytes the next chunk should carry, read from the file at C{sent}."""
        if self.state != "sending":
            return 0
        return min(MAX_CHUNK, self.offer.size - self.sent)

    def next_chunk(self, data: bytes) -> Chunk:
        """The chunk carrying C{data}, the file's bytes at C{sent} (at most L{want})."""
        if self.state != "sending":
            raise ValueError(f"cannot send a chunk while {self.state}")
        if not data or len(data) > self.want():
            raise ValueError("a chunk carries 1 to want() bytes")
        chunk = Chunk(self.id, self.sent, data)
        self.sent += len(data)
        return chunk

    def finish(self) -> Done:
        """C{done}, once every byte is sent."""
        if self.state != "sending" or self.sent != self.offer.size:
            raise ValueError("done before every byte was sent")
        self.state = "sent"
        return Done(self.id)

    def cut_short(self) -> Done:
        """
        C{done} before the end: the source cannot give the rest (it changed or cannot be
        read). The receiver answers C{reject size_mismatch}, which ends the transfer.
        """
        if self.state != "sending":
            raise ValueError(f"cannot end a transfer that is {self.state}")
        self.state = "sent"
        return Done(self.id)

    def delivered(self) -> None:
        self.state = "delivered"

    def failed(self, reason: str) -> None:
        self.state = "failed"
        self.reason = reason


class FileSender:
    """Every file we offer on one session, by id: routes C{accept}, C{reject} and receipts."""

    def __init__(self) -> None:
        self._files: dict[str, OutgoingFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[OutgoingFile]:
        return iter(list(self._files.values()))

    def get(self, file_id: str) -> OutgoingFile | None:
        return self._files.get(file_id)

    def offer(self, offer: FileOffer) -> OutgoingFile:
        if offer.id in self._files:
            raise ValueError(f"file {offer.id!r} is already offered on this session")
        outgoing = self._files[offer.id] = OutgoingFile(offer)
        return outgoing

    def accept(self, accept: Accept) -> OutgoingFile:
        outgoing = self._files.get(accept.id)
        if outgoing is None:
            raise _bad("<accept> for an unknown file", accept.id)
        outgoing.accepted(accept)
        return outgoing

    def reject(self, reject: Reject) -> OutgoingFile:
        """§11.9: final, like an error."""
        outgoing = self._files.pop(reject.id, None)
        if outgoing is None:
            raise _bad("<reject> for an unknown file", reject.id)
        outgoing.failed(reject.reason)
        return outgoing

    def receipt(self, receipt: Receipt) -> OutgoingFile | None:
        """A receipt: the file if it is one of ours (delivered), None otherwise (§8.2)."""
        outgoing = self._files.pop(receipt.id, None)
        if outgoing is not None:
            outgoing.delivered()
        return outgoing

    def error(self, ref: str | None, reason: str) -> OutgoingFile | None:
        """An C{<error ref>}: final for the file it names (§8.6), if it is one of ours."""
        outgoing = self._files.pop(ref, None) if ref is not None else None
        if outgoing is not None:
            outgoing.failed(reason)
        return outgoing

    def abandon(self) -> list[OutgoingFile]:
        """The session ended: every unfinished file (resumed on a new session)."""
        files, self._files = list(self._files.values()), {}
        return files
