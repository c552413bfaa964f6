"""
The agent store's Deferred face: L{MessageStore} runs every L{MessageDatabase} call on one
private thread (L{sixchat._sqlite.DatabaseThread}), so the reactor never blocks, and gathers
the frequent writes made while the thread is busy into one transaction (group commit; see
the package docstring for the durability rules).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat._sqlite import DatabaseThread
from sixchat.agent.store.database import MessageDatabase, _open_database
from sixchat.agent.store.pins import SQLitePinStore
from sixchat.agent.store.records import (
    Contact,
    ConversationSummary,
    HistoryEntry,
    MessageStatus,
    OutgoingMessage,
    PinMaps,
    StoreClosedError,
    StoreError,
)
from sixchat.identity import normalize_identity
from sixchat.stanzas import Message

__all__ = ["MessageStore"]


_P = ParamSpec("_P")
_R = TypeVar("_R")


#: Told, in the reactor thread, what is owed to a recipient once a queued message is
#: committed and before it is durable (C{None}: not available; read it after the batch).
_Early = Callable[[list[OutgoingMessage] | None], object]

#: Batched calls that commit with C{synchronous=NORMAL} (the package docstring says why).
_NOT_DURABLE = (MessageDatabase.mark_attempt, MessageDatabase.add_targets)


class _Batch:
    """
    Calls for one group commit. The reactor thread adds calls until the store's thread
    starts the batch; the lock makes "not started yet" and "joined" one step.
    """

    #: A bound on one transaction, so that a burst does not hold the write lock for long.
    MAX_CALLS = 512

    def __init__(
        self,
        call: tuple[Any, ...],
        early: _Early | None = None,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        self.calls = [call]
        self.reactor = reactor
        #: (index of the call, recipient, callback) for L{MessageStore.queue_outgoing}'s
        #: C{on_written}.
        self.early: list[tuple[int, str, _Early]] = []
        if early is not None:
            self.early.append((0, call[1][0], early))
        self._lock = threading.Lock()
        self._started = False

    def join(self, call: tuple[Any, ...], early: _Early | None = None) -> bool:
        with self._lock:
            if self._started or len(self.calls) >= self.MAX_CALLS:
                return False
            if early is not None:
                self.early.append((len(self.calls), call[1][0], early))
            self.calls.append(call)
            return True

    def run(self, db: MessageDatabase) -> list[tuple[bool, Any]]:
        with self._lock:
            self._started = True
        calls = [(method, args, kwargs) for method, args, kwargs, _ in self.calls]
        durable = any(method not in _NOT_DURABLE for method, _, _ in calls)
        reactor = self.reactor
        if not self.early or reactor is None:
            return db.batch(calls, durable)

        def written(results: list[tuple[bool, Any]]) -> None:
            owed: dict[str, list[OutgoingMessage] | None] = {}  # one read per recipient
            for index, to, callback in self.early:
                if not results[index][0]:
                    continue  # not queued: the call's Deferred fails
                key = normalize_identity(to)
                if key not in owed:
                    try:
                        owed[key] = db.pending(None, to=to)
                    except Exception:  # the caller reads for itself
                        owed[key] = None
                reactor.callFromThread(callback, owed[key])

        return db.batch(calls, durable, written)


class MessageStore:
    """
    The agent's durable state, with a Deferred API that never blocks the reactor.

    Use: C{store = MessageStore(os.path.join(data_dir, DEFAULT_FILENAME), reactor)}, then
    C{yield store.open()} before anything else (it creates or migrates the file and loads
    the pins), and C{yield store.close()} at shutdown (it waits for every call made before).
    Calls made while the store is not open fail with L{StoreClosedError}. Argument errors
    (an identity without C{@}, an invalid id, …) arrive as failed Deferreds (C{ValueError}).

    Calls run one at a time, in the order made, and their Deferreds fire in that order.

    @ivar pins: the persistent L{IPinStore} (L{SQLitePinStore}) for L{sixchat.trust.PinPolicy}.

    @param unlock: called on the store's thread when it opens, returns the key of an
        encrypted store or C{None} for a plain one (L{sixchat.agent.store.encryption.unlock});
        without it the store is plain.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        unlock: Callable[[], bytes | None] | None = None,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._unlock = unlock
        #: Whether the open store is encrypted at rest (C{None} until it is open).
        self.encrypted: bool | None = None
        self._pool: DatabaseThread | None = None
        self._db: MessageDatabase | None = None
        self._trigger: Any = None
        self.pins = SQLitePinStore(self)
        #: The batch later group-committable calls may still join (see L{_batched}).
        self._open_batch: _Batch | None = None
        #: Calls and transactions so far (tests and the benchmark read them).
        self.batched_calls = 0
        self.batches = 0

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def open(self) -> Deferred[None]:
        """
        Create or open the file (WAL, migrations to L{SCHEMA_VERSION}) and load the pins.
        Also registers a reactor shutdown trigger that closes the store, so a forgotten
        L{close} cannot leave the store's (non-daemon) thread keeping the process alive.

        @raise SchemaTooNewError: (as a failure) the file belongs to a newer sixchat.
        """
        if self._pool is not None:
            return fail(StoreError("the message store is already open"))
        pool = DatabaseThread(self._reactor, "sixchat-store")
        pool.start()
        self._pool = pool

        def opened(result: tuple[MessageDatabase, PinMaps, PinMaps]) -> None:
            db, pins, changes = result
            self._db = db
            self.encrypted = db.encrypted
            self.pins._loaded(pins, changes)
            if IReactorCore.providedBy(self._reactor):
                self._trigger = self._reactor.addSystemEventTrigger(
                    "before", "shutdown", self.close
                )

        def failed(failure: Failure) -> Failure:
            self._pool = None
            pool.stop()  # the worker is idle again: this join is immediate
            return failure

        d = pool.run(_open_database, self.path, self._unlock)
        return d.addCallbacks(opened, failed)

    def close(self) -> Deferred[None]:
        """
        Stop accepting calls, let every earlier call (pin writes included) finish, close the
        file and stop the thread. Closing a store that is not open does nothing.
        """
        db, pool = self._db, self._pool
        if db is None or pool is None:
            return succeed(None)
        self._db = None
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            self._reactor.removeSystemEventTrigger(trigger)  # type: ignore[attr-defined]

        def stop(result: object) -> object:
            self._pool = None
            pool.stop()  # the close ran last: the worker is idle, this join is immediate
            return result

        d = pool.run(db.close)
        d.addBoth(stop)
        return d

    def flush(self) -> Deferred[None]:
        """Fires once every earlier call, including write-behind pin writes, has finished."""
        return self._call(lambda: None)

    def _call(self, f: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_R]:
        """Run C{f} on the store's thread, after every call made before."""
        if self._db is None or self._pool is None:
            return fail(StoreClosedError("the message store is not open"))
        self._open_batch = None  # a later batched call must not overtake this one
        return self._pool.run(f, *args, **kwargs)

    def _batched(
        self,
        method: Callable[Concatenate[MessageDatabase, _P], _R],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_R]:
        """
        Like L{_run}, but join the batch queued last if it has not started yet and nothing
        else was called since (so the order of calls is kept); else queue a new batch.
        """
        db = self._db
        if db is None or self._pool is None:
            return fail(StoreClosedError("the message store is not open"))
        return self._enqueue(db, method, args, kwargs, None)

    def _enqueue(
        self,
        db: MessageDatabase,
        method: Callable[..., _R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        early: _Early | None,
    ) -> Deferred[_R]:
        assert self._pool is not None
        d: Deferred[_R] = Deferred()
        call = (method, args, kwargs, d)
        batch = self._open_batch
        if batch is not None and batch.join(call, early):
            return d
        batch = _Batch(call, early, self._reactor)
        self._pool.run(batch.run, db).addCallbacks(
            self._batchDone, self._batchFailed, callbackArgs=(batch,), errbackArgs=(batch,)
        )
        self._open_batch = batch
        return d

    def _batchDone(self, results: list[tuple[bool, Any]], batch: _Batch) -> None:
        if self._open_batch is batch:
            self._open_batch = None
        self.batches += 1
        self.batched_calls += len(results)
        for (ok, value), (_, _, _, d) in zip(results, batch.calls, strict=True):
            if ok:
                d.callback(value)
            else:
                d.errback(Failure(value))

    def _batchFailed(self, failure: Failure, batch: _Batch) -> None:
        if self._open_batch is batch:
            self._open_batch = None
        for _, _, _, d in batch.calls:
            d.errback(failure)

    def _run(
        self,
        method: Callable[Concatenate[MessageDatabase, _P], _R],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_R]:
        """Run a L{MessageDatabase} method on the store's thread."""
        db = self._db
        if db is None:
            return fail(StoreClosedError("the message store is not open"))
        return self._call(method, db, *args, **kwargs)

    def _database(self) -> MessageDatabase:
        if self._db is None:
            raise StoreClosedError("the message store is not open")
        return self._db

    # -- incoming

    def store_incoming(
        self, sender: str, message: Message, received_at: datetime
    ) -> Deferred[bool]:
        """
        Store a received message (§8.1) from the authenticated C{sender} identity.

        Fires with C{True} if it was new, C{False} if (normalized sender, id) was already
        stored (the earlier copy is kept unchanged). Either way the message is committed and
        fsynced when this fires, so the caller sends the receipt (§8.2) then — again for a
        duplicate. Marks the sender as seen (L{Contact.last_seen}).
        """
        return self._batched(MessageDatabase.store_incoming, sender, message, received_at)

    # -- outgoing

    def queue_outgoing(
        self,
        to: str,
        body: str,
        now: datetime,
        *,
        id: str | None = None,  # noqa: A002 - the stanza attribute's name
        thread: str | None = None,
        reply_to: str | None = None,
        on_written: _Early | None = None,
    ) -> Deferred[OutgoingMessage]:
        """
        Put a message in the outbox; it is durable when this fires and stays in L{pending}
        until delivered to every target node, expired or failed.

        @param id: default: 128 random bits as 32 lowercase hex characters (unique across
            our devices, §8.1). Queueing again with the same id and the same recipient,
            body, thread and reply_to returns the stored message (idempotent); with other
            content it fails with L{MessageIdConflict}.
        @param now: our clock: C{ts} is C{format_timestamp(now)}, C{created_at} is C{now}
            (history order and L{expire} use it).
        @param on_written: called in the reactor thread with everything owed to C{to}
            (L{pending_for}, this message included) as soon as the message is committed,
            while the fsync that makes it durable is still running, or with C{None} if that
            read failed; not called if queueing failed. The outbox starts sending then: a
            message may reach the peer a moment before it is durable here (never before it
            would survive a crash of this process), and this Deferred still fires only once
            it is durable.
        @raise ValueError: (as a failure) body over 32,768 characters (split it first),
            invalid id or reply_to.
        """
        db = self._db
        if db is None or self._pool is None:
            return fail(StoreClosedError("the message store is not open"))
        kwargs = {"id": id, "thread": thread, "reply_to": reply_to}
        return self._enqueue(
            db, MessageDatabase.queue_outgoing, (to, body, now), kwargs, on_written
        )

    def outgoing(self, message_id: str) -> Deferred[OutgoingMessage | None]:
        """The outgoing message C{message_id} with its status, or C{None} if unknown."""
        return self._run(MessageDatabase.outgoing, message_id)

    def add_targets(self, message_id: str, nodes: Iterable[str]) -> Deferred[list[str]]:
        """
        Record the peer's nodes the message must reach (§11.16), e.g. after a registry
        lookup or when the peer registers another device. Idempotent: fires with the nodes
        that were new (in the order given). A message that is expired or failed, or unknown,
        gets no new targets (fires with C{[]}); a delivered one does (another device of the
        person still gets it). Committed with C{synchronous=NORMAL}: after a power cut the
        targets may be missing (the message is looked up and targeted again), never a
        receipt recorded after them.
        """
        return self._batched(MessageDatabase.add_targets, message_id, list(nodes))

    def mark_attempt(
        self,
        message_id: str,
        node: str,
        now: datetime,
        next_attempt: datetime | None,
        *,
        sent: bool = True,
    ) -> Deferred[MessageStatus | None]:
        """
        Record an attempt to deliver to C{node} and when to retry if no receipt comes.

        @param sent: C{True} when the stanza was written to a session with the node (the
            entry becomes C{sent}); C{False} for an attempt that did not reach it (dial or
            handshake failed; the entry stays C{queued}).
        @return: the status, or C{None} for an unknown id. An entry the message did not
            have is added (the node is a target from now on); a final entry or message is
            left alone. Committed with C{synchronous=NORMAL}: after a power cut the retry
            time may be older, never the delivery state.
        """
        return self._batched(
            MessageDatabase.mark_attempt, message_id, node, now, next_attempt, sent=sent
        )

    def mark_delivered(
        self, message_id: str, node: str, now: datetime
    ) -> Deferred[MessageStatus | None]:
        """
        Record C{node}'s receipt (§8.2); durable before this fires. Idempotent (the first
        receipt time is kept). A receipt for a message that already expired or failed still
        counts: the message becomes C{delivered}. Fires with C{None} for an unknown id
        (§8.2: a receipt for an unknown id is ignored).
        """
        return self._batched(MessageDatabase.mark_delivered, message_id, node, now)

    def mark_failed(
        self, message_id: str, node: str | None, reason: str, now: datetime
    ) -> Deferred[MessageStatus | None]:
        """
        Record the peer's final refusal (C{error} §8.6, C{reject} §11.9) with its reason
        token. With C{node}, only that node's entry fails; the message fails once no node
        is owed and none delivered. With C{node=None}, every owed entry fails and the
        message fails unless some node already has it. Delivered entries never change.
        Fires with C{None} for an unknown id.
        """
        return self._run(MessageDatabase.mark_failed, message_id, node, reason, now)

    def cancel(self, message_id: str) -> Deferred[MessageStatus | None]:
        """
        Take outgoing message C{message_id} out of the outbox: if no node has received it
        (C{queued} or C{sent}), delete it with its node entries, and the recipient's contact
        too when that message was all there was of it (never seen, no pins, no pending key
        change, no other message). Fires with its status as it was (check C{state}: anything
        but C{queued}/C{sent}, or any delivered node, means nothing was changed), or
        C{None} for an unknown id.
        """
        return self._run(MessageDatabase.cancel, message_id)

    def expire(self, now: datetime, ttl: timedelta) -> Deferred[list[MessageStatus]]:
        """
        Give up on messages queued more than C{ttl} before C{now} (C{created_at < now -
        ttl}) that are still owed to someone: their owed node entries become C{expired},
        and those no node received become C{expired}. A C{delivered} message keeps its
        state; only its leftover nodes are given up. Fires with the status of every message
        this changed (check C{state} to tell the two kinds apart), oldest first.
        """
        return self._run(MessageDatabase.expire, now, ttl)

    def pending(self, now: datetime | None = None) -> Deferred[list[OutgoingMessage]]:
        """
        What the outbox must still (re)send, oldest first: messages with an owed node entry,
        or with no target yet and not final. With C{now}, only those with work due then
        (L{OutgoingMessage.is_due}); without, all of them (e.g. at start-up, to schedule).
        A C{delivered} message appears while another node of the peer is still owed.
        """
        return self._run(MessageDatabase.pending, now)

    def pending_for(self, to: str, now: datetime | None = None) -> Deferred[list[OutgoingMessage]]:
        """L{pending} for one recipient identity (e.g. when a session with it opens)."""
        return self._run(MessageDatabase.pending, now, to=to)

    def status(self, message_id: str) -> Deferred[MessageStatus | None]:
        """The status of outgoing message C{message_id}, or C{None} if unknown."""
        return self._run(MessageDatabase.status, message_id)

    def outbox_counts(self) -> Deferred[dict[str, int]]:
        """How many pending messages are C{queued}, C{sent} and C{delivered} (partly)."""
        return self._run(MessageDatabase.outbox_counts)

    # -- the UI

    def history(
        self, peer: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> Deferred[list[HistoryEntry]]:
        """
        Messages of both directions, oldest first: the most recent C{limit} of those with
        C{peer} (any peer if C{None}) at or after C{since}. Ordered by our clock (receipt
        time for incoming, queueing time for outgoing), ties by arrival in the store.
        """
        return self._run(MessageDatabase.history, peer, since, limit)

    def conversations(self) -> Deferred[list[ConversationSummary]]:
        """One summary per peer with messages, most recently active first."""
        return self._run(MessageDatabase.conversations)

    def mark_read(self, peer: str) -> Deferred[int]:
        """Mark the peer's incoming messages read; fires with how many were unread."""
        return self._run(MessageDatabase.mark_read, peer)

    def contacts(self) -> Deferred[list[Contact]]:
        """Every peer identity we have dealt with, by identity."""
        return self._run(MessageDatabase.contacts)

    def touch_contact(self, identity: str, now: datetime) -> Deferred[None]:
        """
        Record that the peer showed up (an accepted handshake): creates the contact if new,
        moves C{last_seen}, and takes the spelling given (the peer's own) for display.
        """
        return self._run(MessageDatabase.touch_contact, identity, now)
