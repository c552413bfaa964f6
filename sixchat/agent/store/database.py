"""
The user agent's durable state: messages both ways, the outbox with its per-node delivery
entries (spec §11.16), contacts, and pins (§9.3, §11.15) — one SQLite file in the data
directory (conventionally C{<data-dir>/messages.sqlite}, L{DEFAULT_FILENAME}).

Two layers:

  - L{MessageDatabase}: the synchronous core, one C{sqlite3} connection, every rule of the
    data model. It blocks, so the reactor thread never calls it; tests and offline tools may.
  - L{MessageStore}: the Twisted face. Every call runs the matching L{MessageDatabase}
    method on a private thread pool with exactly one thread, so database calls never block
    the reactor, the one connection is never shared between threads, and calls run (and
    their Deferreds fire) in the order they were made. Its L{MessageStore.pins}
    (L{SQLitePinStore}) provides L{sixchat.trust.IPinStore} synchronously from a cache.

Durability ("chat that loses nothing"). The file is in WAL mode. A transaction that a
receipt or the outbox depends on (L{MessageStore.store_incoming},
L{MessageStore.queue_outgoing}, L{MessageStore.add_targets}, L{MessageStore.mark_delivered},
L{MessageStore.mark_failed}, L{MessageStore.expire}, pins and key acceptance) commits with
C{synchronous=FULL}: SQLite fsyncs the WAL before C{COMMIT} returns, and the Deferred fires
only after that, so a caller may send the receipt (§8.2) as soon as it fires. Bookkeeping
whose loss costs nothing but a retry or a repeated "unread" (L{MessageStore.mark_attempt},
L{MessageStore.mark_read}, L{MessageStore.touch_contact},
L{SQLitePinStore.note_key_change}) commits with C{synchronous=NORMAL}, which survives a
process crash (SIGKILL) but not necessarily a power cut. Each call is applied wholly or not
at all: a crash never leaves half of one.

Group commit. The frequent writes of a busy conversation (L{MessageStore.store_incoming},
L{MessageStore.queue_outgoing}, L{MessageStore.add_targets}, L{MessageStore.mark_attempt},
L{MessageStore.mark_delivered}) made while an earlier one is still on the store's thread are
gathered and committed together: one transaction (one fsync) for the batch, one savepoint
per call, so a call that fails is rolled back alone and the others still commit. No Deferred
fires before the batch's COMMIT has returned, so "durable when it fires" holds for each call,
and calls still run and fire in the order they were made.

Outgoing message states (L{MessageStatus.state}), derived from the per-node entries:

  - C{queued}: not yet written to any node's session (no targets known yet, or none tried);
  - C{sent}: written to at least one node's session, no receipt yet;
  - C{delivered}: at least one node sent a receipt — the person has it. Other nodes may
    still be owed the message (L{MessageStatus.delivered_nodes} / C{total_nodes} say how
    many), and it stays in L{MessageStore.pending} until they are served or given up;
  - C{expired}: no node receipted it within the TTL (L{MessageStore.expire}); final;
  - C{failed}: no node receipted it and the peer answered C{error}/C{reject} (§8.6, §11.9)
    for every node it was sent to, or for the whole message; final, with a C{reason}.

C{delivered} wins over the final states: a receipt that arrives after the message expired
or failed is still proof of delivery and is recorded; the outbox still gives no new node
and no new attempt to a message it gave up on. A node entry (L{NodeDelivery.state})
is C{queued}, C{sent}, C{delivered}, C{failed} or C{expired}; C{queued} and C{sent} are
"owed" (the outbox still has to deliver to that node).

Incoming messages are keyed by (normalized sender identity, id): a duplicate is stored once
and L{MessageStore.store_incoming} says C{False}, so the caller sends the receipt again
(§8.2). Identities are compared in their normalized form
(L{sixchat.identity.normalize_identity}); the spelling given is kept for display.

All times are timezone-aware C{datetime}s in UTC when returned; naive ones given are read as
UTC. They are stored as integer microseconds since the epoch so that ordering and range
queries are exact and cheap.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sixchat.errors import SixchatError
from sixchat.identity import normalize_identity
from sixchat.stanzas import MAX_BODY_CHARS, Message, format_timestamp, is_valid_id
from sixchat.trust import IPinStore

__all__ = [
    "DEFAULT_FILENAME",
    "DELIVERED",
    "EXPIRED",
    "FAILED",
    "INCOMING",
    "MESSAGE_STATES",
    "NODE_STATES",
    "OUTGOING",
    "QUEUED",
    "RECEIVED",
    "SCHEMA_VERSION",
    "SENT",
    "Contact",
    "ConversationSummary",
    "HistoryEntry",
    "KeyChange",
    "MessageDatabase",
    "MessageIdConflict",
    "MessageStatus",
    "MessageStore",
    "NodeDelivery",
    "OutgoingMessage",
    "SQLitePinStore",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreError",
]

#: The file name of the store inside the agent's data directory.
DEFAULT_FILENAME = "messages.sqlite"

# -- states ---------------------------------------------------------------------------------

QUEUED = "queued"
SENT = "sent"
DELIVERED = "delivered"
EXPIRED = "expired"
FAILED = "failed"
#: The state of every incoming message in L{HistoryEntry.state}.
RECEIVED = "received"

#: States of an outgoing message (L{MessageStatus.state}).
MESSAGE_STATES = (QUEUED, SENT, DELIVERED, EXPIRED, FAILED)
#: States of one node's delivery entry (L{NodeDelivery.state}).
NODE_STATES = (QUEUED, SENT, DELIVERED, FAILED, EXPIRED)
#: Node states in which the outbox still owes that node the message.
OWED_STATES = frozenset({QUEUED, SENT})

#: L{HistoryEntry.direction} values.
INCOMING = "in"
OUTGOING = "out"

#: How much of the last body L{ConversationSummary.last_body} keeps.
SNIPPET_CHARS = 80


# -- errors ---------------------------------------------------------------------------------


class StoreError(SixchatError):
    """The message store cannot do what was asked (beyond a plain argument error)."""


class StoreClosedError(StoreError):
    """The store is not open (never opened, still opening, or closed)."""


class SchemaTooNewError(StoreError):
    """
    The file was written by a newer sixchat (a higher schema version than this code knows).
    Refused rather than risk a downgrade corrupting data a newer version relies on.
    """


class MessageIdConflict(StoreError, ValueError):
    """
    L{MessageStore.queue_outgoing} was given an id already used for a different outgoing
    message. (Queueing the same message again with its id is idempotent, not a conflict.)
    """


# -- values returned ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeDelivery:
    """
    One node's delivery entry for an outgoing message (§11.16).

    @ivar state: one of L{NODE_STATES}.
    @ivar attempts: how many times the outbox recorded an attempt (L{MessageStore.mark_attempt}).
    @ivar next_attempt: when the outbox planned to try again; C{None} means at once (never
        tried, or no plan recorded). Always C{None} once the entry is no longer owed.
    @ivar done_at: when the entry left the owed states (receipt, failure, expiry).
    @ivar reason: the peer's reason for C{failed}.
    """

    node: str
    state: str
    attempts: int
    last_attempt: datetime | None
    next_attempt: datetime | None
    done_at: datetime | None
    reason: str | None

    @property
    def owed(self) -> bool:
        """Whether the outbox still has to deliver to this node."""
        return self.state in OWED_STATES

    def due(self, now: datetime) -> bool:
        """Whether the outbox should (re)send to this node at C{now}."""
        return self.owed and (self.next_attempt is None or self.next_attempt <= _aware(now))


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """
    Where an outgoing message stands. C{delivered_nodes}/C{total_nodes} let a UI say
    "delivered (1/2 devices)" (L{describe}).

    @ivar to: the recipient identity, normalized.
    @ivar state: one of L{MESSAGE_STATES} (see the module docstring).
    @ivar nodes: every node entry, ordered by node name.
    @ivar total_nodes: C{len(nodes)}, including failed and expired entries.
    @ivar reason: why the message C{failed} (the peer's reason token), else C{None}.
    @ivar closed_at: when it became C{expired} or C{failed}, else C{None}.
    """

    id: str
    to: str
    state: str
    created_at: datetime
    nodes: tuple[NodeDelivery, ...]
    delivered_nodes: int
    total_nodes: int
    reason: str | None = None
    closed_at: datetime | None = None

    @property
    def owed_nodes(self) -> tuple[str, ...]:
        """The nodes the outbox still has to deliver to."""
        return tuple(n.node for n in self.nodes if n.owed)

    @property
    def delivered_at(self) -> datetime | None:
        """When the first receipt arrived, if any."""
        times = [n.done_at for n in self.nodes if n.state == DELIVERED and n.done_at]
        return min(times) if times else None

    def describe(self) -> str:
        """A short human text: C{"delivered (1/2 devices)"}, C{"failed: too_large"}, …"""
        if self.state == DELIVERED and self.total_nodes > 1:
            return f"{DELIVERED} ({self.delivered_nodes}/{self.total_nodes} devices)"
        if self.state == FAILED and self.reason:
            return f"{FAILED}: {self.reason}"
        return self.state


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """
    A message we queued, with its delivery status: what the outbox (re)sends.

    @ivar to: the recipient identity, normalized; C{to_display} is the spelling given.
    @ivar ts: the C{ts} attribute as sent (§8.1), fixed at queueing time.
    """

    id: str
    to: str
    to_display: str
    ts: str
    body: str
    thread: str | None
    reply_to: str | None
    created_at: datetime
    status: MessageStatus

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def nodes(self) -> tuple[NodeDelivery, ...]:
        return self.status.nodes

    @property
    def stanza(self) -> Message:
        """The C{message} stanza to send, identical on every (re)transmission."""
        return Message(self.id, self.ts, self.body, self.thread, self.reply_to)

    def due_nodes(self, now: datetime) -> tuple[str, ...]:
        """The owed nodes whose next attempt is due at C{now}."""
        return tuple(n.node for n in self.status.nodes if n.due(now))

    def is_due(self, now: datetime) -> bool:
        """
        Whether the outbox has work for this message at C{now}: a due node, or no target
        yet (the peer's nodes still have to be looked up) while the message is not final.
        """
        if not self.status.nodes:
            return self.status.state in (QUEUED, SENT)
        return bool(self.due_nodes(now))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """
    One message of either direction, for C{sixchat inbox}/C{chat}.

    @ivar seq: the store's insertion number: unique, increasing, a stable tie-breaker.
    @ivar direction: L{INCOMING} or L{OUTGOING}.
    @ivar peer: the other party, normalized; C{peer_display} as spelled on this message.
    @ivar at: when we received it (incoming) or queued it (outgoing), by our clock; history
        is ordered by it. C{ts} is the sender's informational timestamp, as sent.
    @ivar read: incoming messages the user has seen (L{MessageStore.mark_read}); always
        C{True} for outgoing ones.
    @ivar state: L{RECEIVED} for incoming, one of L{MESSAGE_STATES} for outgoing.
    @ivar delivered_nodes: outgoing only (0 for incoming), as in L{MessageStatus}.
    """

    seq: int
    direction: str
    peer: str
    peer_display: str
    id: str
    ts: str
    body: str
    thread: str | None
    reply_to: str | None
    at: datetime
    read: bool
    state: str
    delivered_nodes: int = 0
    total_nodes: int = 0


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """
    One conversation (one peer identity) for the conversation list.

    @ivar last_body: the start of the last message's body (L{SNIPPET_CHARS} characters).
    @ivar unread: incoming messages not yet marked read.
    @ivar messages: how many messages, both directions.
    """

    peer: str
    display: str
    last_at: datetime
    last_direction: str
    last_body: str
    unread: int
    messages: int


@dataclass(frozen=True, slots=True)
class Contact:
    """
    A peer identity we have dealt with.

    @ivar first_seen: our first dealing with it: a message either way, a handshake or a key
        change noted.
    @ivar last_seen: the last time the peer itself showed up (a message received, a
        handshake, a key change noted); C{None} if we only ever wrote to it.
    @ivar pinned_keys: how many SPKI pins we hold for it (§11.15).
    @ivar key_change_pending: a key change awaits the user's decision (L{KeyChange}).
    """

    identity: str
    display: str
    first_seen: datetime
    last_seen: datetime | None
    pinned_keys: int
    key_change_pending: bool


@dataclass(frozen=True, slots=True)
class KeyChange:
    """
    A key that a peer presented which is not among its pins, awaiting the user (§9.3):
    C{sixchat trust <identity> --accept-new-key} turns it into a pin.

    @ivar times: how many handshakes presented it.
    """

    identity: str
    spki_sha256: bytes
    first_noted: datetime
    last_noted: datetime
    times: int

    @property
    def fingerprint(self) -> str:
        """The SPKI SHA-256 as lowercase hex (the form users compare)."""
        return self.spki_sha256.hex()


# -- time -----------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _aware(when: datetime) -> datetime:
    if not isinstance(when, datetime):
        raise TypeError(f"expected a datetime, got {type(when).__name__}")
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _to_us(when: datetime) -> int:
    return (_aware(when) - _EPOCH) // _MICROSECOND


def _opt_us(when: datetime | None) -> int | None:
    return None if when is None else _to_us(when)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _opt_dt(us: int | None) -> datetime | None:
    return None if us is None else _from_us(us)


def _check_spki(spki: bytes) -> bytes:
    if not isinstance(spki, bytes | bytearray | memoryview) or len(spki) != 32:
        raise ValueError("a pin is a 32-byte SHA-256")
    return bytes(spki)


def _check_node(node: str) -> str:
    if not isinstance(node, str) or not node:
        raise ValueError("a node is a non-empty string")
    return node


def derive_state(outcome: str | None, delivered: int, sent: int) -> str:
    """
    An outgoing message's state from its stored outcome (C{None}, C{expired}, C{failed})
    and how many of its nodes are C{delivered} and C{sent}. A receipt wins over everything.
    """
    if delivered:
        return DELIVERED
    if outcome is not None:
        return outcome
    return SENT if sent else QUEUED


# -- schema ---------------------------------------------------------------------------------

# Each entry is one schema version, applied in order to reach it; a step is an SQL statement
# or a callable taking the connection (for data migrations). Never edit a released entry:
# append a new one. All pending steps run in one transaction, so an interrupted migration
# leaves the file at its old version.
_Step = str | Callable[[sqlite3.Connection], None]

#: identity → set of SPKI hashes (pins, or pending key changes).
_PinMaps = dict[str, set[bytes]]

_MIGRATIONS: tuple[tuple[_Step, ...], ...] = (
    # version 1
    (
        # One row per peer identity we have dealt with: contacts and conversations.
        """
        CREATE TABLE peers (
            peer TEXT PRIMARY KEY,                -- normalize_identity()
            display TEXT NOT NULL,                -- spelling for display
            first_seen_us INTEGER NOT NULL,
            last_seen_us INTEGER                  -- NULL: the peer never showed up itself
        ) WITHOUT ROWID
        """,
        # Both directions in one table so history has one order (seq breaks ties of at_us).
        # owed = 1 while the outbox has work for an outgoing message; kept in step with the
        # deliveries rows by MessageDatabase._settle in the same transaction.
        """
        CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            peer TEXT NOT NULL REFERENCES peers (peer),
            peer_display TEXT NOT NULL,
            id TEXT NOT NULL,
            ts TEXT NOT NULL,
            body TEXT NOT NULL,
            thread TEXT,
            reply_to TEXT,
            at_us INTEGER NOT NULL,               -- received (in) / queued (out), our clock
            is_read INTEGER NOT NULL CHECK (is_read IN (0, 1)),
            owed INTEGER NOT NULL DEFAULT 0 CHECK (owed IN (0, 1)),
            outcome TEXT CHECK (outcome IN ('expired', 'failed')),
            outcome_reason TEXT,
            outcome_at_us INTEGER,
            CHECK (direction = 'out' OR (owed = 0 AND outcome IS NULL))
        )
        """,
        # §8.2: exactly once per (sender, id); our own ids are unique across our messages.
        "CREATE UNIQUE INDEX messages_in_id ON messages (peer, id) WHERE direction = 'in'",
        "CREATE UNIQUE INDEX messages_out_id ON messages (id) WHERE direction = 'out'",
        "CREATE INDEX messages_by_peer ON messages (peer, at_us, seq)",
        "CREATE INDEX messages_by_time ON messages (at_us, seq)",
        "CREATE INDEX messages_unread ON messages (peer) WHERE direction = 'in' AND is_read = 0",
        "CREATE INDEX messages_owed ON messages (at_us, seq) WHERE owed = 1",
        # §11.16: one outbox entry per (message, node).
        """
        CREATE TABLE deliveries (
            msg INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
            node TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'sent', 'delivered', 'failed', 'expired')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_us INTEGER,
            next_attempt_us INTEGER,
            done_at_us INTEGER,
            reason TEXT,
            PRIMARY KEY (msg, node)
        ) WITHOUT ROWID
        """,
        # §11.15: pins are a set per identity. No foreign key to peers: keys learnt from the
        # registry may precede any dealing with the identity.
        """
        CREATE TABLE pins (
            peer TEXT NOT NULL,
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            PRIMARY KEY (peer, spki)
        ) WITHOUT ROWID
        """,
        # §9.3: key changes reported to the user and not yet decided.
        """
        CREATE TABLE key_changes (
            peer TEXT NOT NULL REFERENCES peers (peer),
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            first_noted_us INTEGER NOT NULL,
            last_noted_us INTEGER NOT NULL,
            times INTEGER NOT NULL,
            PRIMARY KEY (peer, spki)
        ) WITHOUT ROWID
        """,
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)

_OUT_COLUMNS = (
    "seq, peer, peer_display, id, ts, body, thread, reply_to, at_us, "
    "outcome, outcome_reason, outcome_at_us"
)
_DELIVERY_COLUMNS = (
    "msg, node, state, attempts, last_attempt_us, next_attempt_us, done_at_us, reason"
)


# -- the synchronous core -------------------------------------------------------------------


class MessageDatabase:
    """
    The store's data model over one C{sqlite3} connection. Blocking: the reactor thread
    must not call it (L{MessageStore} runs it on its own thread). Not thread-safe: one
    thread at a time. Methods mirror L{MessageStore}'s and are documented there.

    @param path: the database file (created mode 0600, since it holds private messages), or
        C{":memory:"} for a throwaway database (tests; no durability).
    @raise SchemaTooNewError: if a newer sixchat wrote the file.
    @raise StoreError: if the file cannot be put in WAL mode.
    """

    def __init__(self, path: str) -> None:
        memory = path == ":memory:"
        if not memory:
            # SQLite creates files with the umask's mode and gives -wal/-shm the main
            # file's permissions; create it private first.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each public method is
        # exactly one transaction. check_same_thread=False: the single-thread pool already
        # serializes every use, and a pool may replace its worker thread.
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != ("memory" if memory else "wal"):
                raise StoreError(f"cannot use WAL mode for {path} (got {mode})")
            self._conn.execute("PRAGMA foreign_keys = ON")
            # macOS: make fsync reach the disk, not only the drive's cache (no-op elsewhere).
            self._conn.execute("PRAGMA fullfsync = ON")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._full = True
            self._in_batch = False
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Close the connection (a WAL checkpoint happens here when possible)."""
        self._conn.close()

    # -- plumbing

    def pragma(self, name: str) -> Any:
        """The value of a read-only C{PRAGMA} (tests check the durability settings)."""
        if name not in ("journal_mode", "synchronous", "foreign_keys", "integrity_check"):
            raise ValueError(f"unsupported pragma {name!r}")
        return self._conn.execute("PRAGMA " + name).fetchone()[0]

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """
        One write transaction. C{durable}: commit with C{synchronous=FULL} (WAL fsynced
        before COMMIT returns); otherwise C{NORMAL} (survives a crash of the process).
        BEGIN IMMEDIATE takes the write lock up front, so read-then-write decisions (is this
        id stored already?) cannot race with another writer.
        """
        conn = self._conn
        if self._in_batch:
            # Inside batch(): a savepoint of the batch's one transaction, so that a call
            # that fails is undone alone. Durability is the batch's.
            conn.execute("SAVEPOINT call")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
                raise
            conn.execute("RELEASE call")
            return
        if durable != self._full:
            conn.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
            self._full = durable
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def batch(
        self,
        calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        durable: bool = True,
    ) -> list[tuple[bool, Any]]:
        """
        Run C{calls} (each C{(MessageDatabase method, args, kwargs)}) in one transaction:
        one fsync for all of them (group commit); C{durable} as for L{_write}, so it must be
        true if any call needs it. Each call gets a savepoint; one that raises is rolled back
        alone. Returns C{(True, result)} or C{(False, exception)} per call, in order, once
        the COMMIT has returned. If the COMMIT itself fails, this raises and nothing of the
        batch is applied.
        """
        results: list[tuple[bool, Any]] = []
        with self._write(durable=durable):
            self._in_batch = True
            try:
                for method, args, kwargs in calls:
                    try:
                        results.append((True, method(self, *args, **kwargs)))
                    except Exception as e:
                        results.append((False, e))
            finally:
                self._in_batch = False
        return results

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"the message store has schema version {version}; this sixchat knows "
                    f"{SCHEMA_VERSION} (upgrade sixchat)"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for step in _MIGRATIONS[number - 1]:
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
                conn.execute("UPDATE schema_version SET version = ?", (number,))

    def _see_peer(self, peer: str, display: str, at_us: int, *, seen: bool) -> None:
        """
        Create or update the peer's row. C{seen}: the peer itself showed up (its own
        spelling, from its certificate, becomes the display form, and C{last_seen} moves).
        """
        self._conn.execute(
            """
            INSERT INTO peers (peer, display, first_seen_us, last_seen_us)
            VALUES (?, ?, ?, ?)
            ON CONFLICT (peer) DO UPDATE SET
                display = CASE WHEN excluded.last_seen_us IS NULL
                               THEN peers.display ELSE excluded.display END,
                first_seen_us = min(peers.first_seen_us, excluded.first_seen_us),
                last_seen_us = CASE
                    WHEN excluded.last_seen_us IS NULL THEN peers.last_seen_us
                    WHEN peers.last_seen_us IS NULL THEN excluded.last_seen_us
                    ELSE max(peers.last_seen_us, excluded.last_seen_us) END
            """,
            (peer, display, at_us, at_us if seen else None),
        )

    # -- incoming

    def store_incoming(self, sender: str, message: Message, received_at: datetime) -> bool:
        peer = normalize_identity(sender)
        at_us = _to_us(received_at)
        with self._write() as conn:
            self._see_peer(peer, sender, at_us, seen=True)
            row = conn.execute(
                "SELECT 1 FROM messages WHERE direction = 'in' AND peer = ? AND id = ?",
                (peer, message.id),
            ).fetchone()
            if row is not None:
                return False
            conn.execute(
                """
                INSERT INTO messages
                    (direction, peer, peer_display, id, ts, body, thread, reply_to, at_us,
                     is_read)
                VALUES ('in', ?, ?, ?, ?, ?, ?, ?, ?, 0)
                """,
                (
                    peer,
                    sender,
                    message.id,
                    message.ts,
                    message.body,
                    message.thread,
                    message.reply_to,
                    at_us,
                ),
            )
            return True

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
    ) -> OutgoingMessage:
        peer = normalize_identity(to)
        if not isinstance(body, str):
            raise TypeError("body must be a str")
        if len(body) > MAX_BODY_CHARS:
            raise ValueError(f"body over {MAX_BODY_CHARS} characters; split it (§8.1)")
        if id is None:
            id = secrets.token_hex(16)  # noqa: A001 - 128 random bits, 32 lowercase hex
        if not is_valid_id(id):
            raise ValueError(f"invalid message id {id!r} (1-64 of [A-Za-z0-9_-])")
        if reply_to is not None and not is_valid_id(reply_to):
            raise ValueError(f"invalid reply_to id {reply_to!r}")
        if thread is not None and not isinstance(thread, str):
            raise TypeError("thread must be a str")
        at_us = _to_us(now)
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq, peer, body, thread, reply_to FROM messages "
                "WHERE direction = 'out' AND id = ?",
                (id,),
            ).fetchone()
            if row is not None:
                if tuple(row[1:]) != (peer, body, thread, reply_to):
                    raise MessageIdConflict(f"message id {id} is already used")
                seq = int(row[0])
            else:
                self._see_peer(peer, to, at_us, seen=False)
                cursor = conn.execute(
                    """
                    INSERT INTO messages
                        (direction, peer, peer_display, id, ts, body, thread, reply_to,
                         at_us, is_read, owed)
                    VALUES ('out', ?, ?, ?, ?, ?, ?, ?, ?, 1, 1)
                    """,
                    (peer, to, id, format_timestamp(now), body, thread, reply_to, at_us),
                )
                seq = int(cursor.lastrowid or 0)
        found = self._outgoing_where("seq = ?", (seq,))
        return found[0]

    def _lookup(self, message_id: str) -> tuple[int, str | None] | None:
        row = self._conn.execute(
            "SELECT seq, outcome FROM messages WHERE direction = 'out' AND id = ?",
            (message_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def _settle(self, seq: int, now_us: int | None = None, reason: str | None = None) -> None:
        """
        Bring the message-level columns in line with its node entries: C{owed} while a node
        is owed (or no node is known yet and the message is not final), and the final
        outcome once no node is owed, none delivered and none remains to try.
        """
        conn = self._conn
        total, delivered, owed, failed = conn.execute(
            """
            SELECT count(*),
                   coalesce(sum(state = 'delivered'), 0),
                   coalesce(sum(state IN ('queued', 'sent')), 0),
                   coalesce(sum(state = 'failed'), 0)
            FROM deliveries WHERE msg = ?
            """,
            (seq,),
        ).fetchone()
        (outcome,) = conn.execute("SELECT outcome FROM messages WHERE seq = ?", (seq,)).fetchone()
        if owed:
            is_owed = 1
        elif total == 0:
            is_owed = 1 if outcome is None else 0
        else:
            is_owed = 0
            if not delivered and outcome is None and now_us is not None:
                final = FAILED if failed else EXPIRED
                conn.execute(
                    "UPDATE messages SET outcome = ?, outcome_reason = ?, outcome_at_us = ? "
                    "WHERE seq = ?",
                    (final, reason if final == FAILED else None, now_us, seq),
                )
        conn.execute("UPDATE messages SET owed = ? WHERE seq = ?", (is_owed, seq))

    def add_targets(self, message_id: str, nodes: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(_check_node(n) for n in nodes))
        with self._write() as conn:
            found = self._lookup(message_id)
            if found is None or found[1] is not None:
                return []
            seq = found[0]
            added = []
            for node in wanted:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO deliveries (msg, node, state) VALUES (?, ?, 'queued')",
                    (seq, node),
                )
                if cursor.rowcount == 1:
                    added.append(node)
            self._settle(seq)
            return added

    def mark_attempt(
        self,
        message_id: str,
        node: str,
        now: datetime,
        next_attempt: datetime | None,
        *,
        sent: bool = True,
    ) -> MessageStatus | None:
        _check_node(node)
        now_us, next_us = _to_us(now), _opt_us(next_attempt)
        with self._write(durable=False) as conn:
            found = self._lookup(message_id)
            if found is None:
                return None
            seq, outcome = found
            if outcome is None:
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (msg, node, state) VALUES (?, ?, 'queued')",
                    (seq, node),
                )
                conn.execute(
                    """
                    UPDATE deliveries SET
                        attempts = attempts + 1,
                        last_attempt_us = ?,
                        next_attempt_us = ?,
                        state = CASE WHEN ? THEN 'sent' ELSE state END
                    WHERE msg = ? AND node = ? AND state IN ('queued', 'sent')
                    """,
                    (now_us, next_us, 1 if sent else 0, seq, node),
                )
                self._settle(seq)
        return self.status(message_id)

    def mark_delivered(self, message_id: str, node: str, now: datetime) -> MessageStatus | None:
        _check_node(node)
        now_us = _to_us(now)
        with self._write() as conn:
            found = self._lookup(message_id)
            if found is None:
                return None
            seq = found[0]
            conn.execute(
                """
                INSERT INTO deliveries (msg, node, state, done_at_us) VALUES (?, ?, 'delivered', ?)
                ON CONFLICT (msg, node) DO UPDATE SET
                    state = 'delivered', done_at_us = excluded.done_at_us,
                    next_attempt_us = NULL, reason = NULL
                WHERE deliveries.state != 'delivered'
                """,
                (seq, node, now_us),
            )
            self._settle(seq, now_us)
        return self.status(message_id)

    def mark_failed(
        self, message_id: str, node: str | None, reason: str, now: datetime
    ) -> MessageStatus | None:
        if node is not None:
            _check_node(node)
        reason = str(reason)
        now_us = _to_us(now)
        with self._write() as conn:
            found = self._lookup(message_id)
            if found is None:
                return None
            seq, outcome = found
            if node is None:
                conn.execute(
                    "UPDATE deliveries SET state = 'failed', reason = ?, done_at_us = ?, "
                    "next_attempt_us = NULL WHERE msg = ? AND state IN ('queued', 'sent')",
                    (reason, now_us, seq),
                )
                delivered = conn.execute(
                    "SELECT count(*) FROM deliveries WHERE msg = ? AND state = 'delivered'",
                    (seq,),
                ).fetchone()[0]
                if not delivered and outcome is None:
                    conn.execute(
                        "UPDATE messages SET outcome = 'failed', outcome_reason = ?, "
                        "outcome_at_us = ? WHERE seq = ?",
                        (reason, now_us, seq),
                    )
            elif outcome is None:
                conn.execute(
                    """
                    INSERT INTO deliveries (msg, node, state, done_at_us, reason)
                    VALUES (?, ?, 'failed', ?, ?)
                    ON CONFLICT (msg, node) DO UPDATE SET
                        state = 'failed', done_at_us = excluded.done_at_us,
                        reason = excluded.reason, next_attempt_us = NULL
                    WHERE deliveries.state IN ('queued', 'sent')
                    """,
                    (seq, node, now_us, reason),
                )
            else:
                conn.execute(
                    "UPDATE deliveries SET state = 'failed', reason = ?, done_at_us = ?, "
                    "next_attempt_us = NULL "
                    "WHERE msg = ? AND node = ? AND state IN ('queued', 'sent')",
                    (reason, now_us, seq, node),
                )
            self._settle(seq, now_us, reason)
        return self.status(message_id)

    def expire(self, now: datetime, ttl: timedelta) -> list[MessageStatus]:
        if ttl < timedelta(0):
            raise ValueError("ttl must not be negative")
        now_us = _to_us(now)
        cutoff = now_us - ttl // _MICROSECOND
        with self._write() as conn:
            rows = conn.execute(
                "SELECT seq, id FROM messages WHERE owed = 1 AND at_us < ? ORDER BY at_us, seq",
                (cutoff,),
            ).fetchall()
            for seq, _id in rows:
                conn.execute(
                    "UPDATE deliveries SET state = 'expired', done_at_us = ?, "
                    "next_attempt_us = NULL WHERE msg = ? AND state IN ('queued', 'sent')",
                    (now_us, seq),
                )
                conn.execute(
                    """
                    UPDATE messages SET outcome = 'expired', outcome_reason = NULL,
                        outcome_at_us = ?
                    WHERE seq = ? AND outcome IS NULL AND NOT EXISTS (
                        SELECT 1 FROM deliveries WHERE msg = ? AND state = 'delivered')
                    """,
                    (now_us, seq, seq),
                )
                self._settle(seq, now_us)
        statuses = self._statuses_where(
            "seq IN (SELECT value FROM json_each(?))", (_json_ints(r[0] for r in rows),)
        )
        return statuses

    def pending(
        self, now: datetime | None = None, *, to: str | None = None
    ) -> list[OutgoingMessage]:
        if to is None:
            found = self._outgoing_where("owed = 1", ())
        else:
            found = self._outgoing_where("owed = 1 AND peer = ?", (normalize_identity(to),))
        if now is None:
            return found
        return [m for m in found if m.is_due(now)]

    def outgoing(self, message_id: str) -> OutgoingMessage | None:
        found = self._outgoing_where("id = ?", (message_id,))
        return found[0] if found else None

    def status(self, message_id: str) -> MessageStatus | None:
        found = self._statuses_where("id = ?", (message_id,))
        return found[0] if found else None

    def outbox_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((QUEUED, SENT, DELIVERED), 0)
        for message in self.pending():
            counts[message.state] += 1
        return counts

    # Readers of outgoing messages. `where` is always one of the constant fragments above
    # (never built from values), so the concatenation below carries no data.

    def _deliveries(self, where: str, params: Sequence[Any]) -> dict[int, list[NodeDelivery]]:
        result: dict[int, list[NodeDelivery]] = {}
        sql = (
            "SELECT " + _DELIVERY_COLUMNS + " FROM deliveries WHERE msg IN "  # noqa: S608
            "(SELECT seq FROM messages WHERE direction = 'out' AND " + where + ") "
            "ORDER BY msg, node"
        )
        for msg, node, state, attempts, last_us, next_us, done_us, reason in self._conn.execute(
            sql, params
        ):
            result.setdefault(int(msg), []).append(
                NodeDelivery(
                    node=node,
                    state=state,
                    attempts=int(attempts),
                    last_attempt=_opt_dt(last_us),
                    next_attempt=_opt_dt(next_us),
                    done_at=_opt_dt(done_us),
                    reason=reason,
                )
            )
        return result

    def _out_rows(self, where: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        sql = (
            "SELECT " + _OUT_COLUMNS + " FROM messages "  # noqa: S608
            "WHERE direction = 'out' AND " + where + " ORDER BY at_us, seq"
        )
        return list(self._conn.execute(sql, params))

    @staticmethod
    def _make_status(row: tuple[Any, ...], nodes: list[NodeDelivery]) -> MessageStatus:
        delivered = sum(1 for n in nodes if n.state == DELIVERED)
        sent = sum(1 for n in nodes if n.state == SENT)
        outcome, outcome_reason, outcome_at_us = row[9], row[10], row[11]
        return MessageStatus(
            id=row[3],
            to=row[1],
            state=derive_state(outcome, delivered, sent),
            created_at=_from_us(row[8]),
            nodes=tuple(nodes),
            delivered_nodes=delivered,
            total_nodes=len(nodes),
            reason=outcome_reason,
            closed_at=_opt_dt(outcome_at_us),
        )

    def _statuses_where(self, where: str, params: Sequence[Any]) -> list[MessageStatus]:
        # One read transaction so the message rows and their entries are consistent.
        with self._read():
            rows = self._out_rows(where, params)
            nodes = self._deliveries(where, params)
        return [self._make_status(row, nodes.get(int(row[0]), [])) for row in rows]

    def _outgoing_where(self, where: str, params: Sequence[Any]) -> list[OutgoingMessage]:
        with self._read():
            rows = self._out_rows(where, params)
            nodes = self._deliveries(where, params)
        result = []
        for row in rows:
            status = self._make_status(row, nodes.get(int(row[0]), []))
            result.append(
                OutgoingMessage(
                    id=row[3],
                    to=row[1],
                    to_display=row[2],
                    ts=row[4],
                    body=row[5],
                    thread=row[6],
                    reply_to=row[7],
                    created_at=_from_us(row[8]),
                    status=status,
                )
            )
        return result

    @contextmanager
    def _read(self) -> Iterator[None]:
        """A read transaction (one snapshot), unless a write transaction is already open."""
        conn = self._conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    # -- the UI

    def history(
        self, peer: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[HistoryEntry]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        clauses = ["1"]
        params: list[Any] = []
        if peer is not None:
            clauses.append("m.peer = ?")
            params.append(normalize_identity(peer))
        if since is not None:
            clauses.append("m.at_us >= ?")
            params.append(_to_us(since))
        params.append(limit)
        # Only constant fragments are joined; every value is a parameter.
        sql = (
            """
            SELECT m.seq, m.direction, m.peer, m.peer_display, m.id, m.ts, m.body, m.thread,
                   m.reply_to, m.at_us, m.is_read, m.outcome,
                   (SELECT count(*) FROM deliveries d WHERE d.msg = m.seq),
                   (SELECT count(*) FROM deliveries d
                    WHERE d.msg = m.seq AND d.state = 'delivered'),
                   (SELECT count(*) FROM deliveries d WHERE d.msg = m.seq AND d.state = 'sent')
            FROM messages m WHERE """  # noqa: S608
            + " AND ".join(clauses)
            + " ORDER BY m.at_us DESC, m.seq DESC LIMIT ?"
        )
        entries = []
        for row in self._conn.execute(sql, params):
            (seq, direction, p, display, mid, ts, body, thread, reply_to, at_us, is_read,
             outcome, total, delivered, sent) = row  # fmt: skip
            incoming = direction == INCOMING
            entries.append(
                HistoryEntry(
                    seq=int(seq),
                    direction=direction,
                    peer=p,
                    peer_display=display,
                    id=mid,
                    ts=ts,
                    body=body,
                    thread=thread,
                    reply_to=reply_to,
                    at=_from_us(at_us),
                    read=bool(is_read),
                    state=RECEIVED if incoming else derive_state(outcome, delivered, sent),
                    delivered_nodes=0 if incoming else int(delivered),
                    total_nodes=0 if incoming else int(total),
                )
            )
        entries.reverse()
        return entries

    def conversations(self) -> list[ConversationSummary]:
        rows = self._conn.execute(
            """
            SELECT p.peer, p.display, m.at_us, m.direction, substr(m.body, 1, ?),
                   (SELECT count(*) FROM messages u
                    WHERE u.peer = p.peer AND u.direction = 'in' AND u.is_read = 0),
                   (SELECT count(*) FROM messages c WHERE c.peer = p.peer)
            FROM peers p
            JOIN messages m ON m.seq = (
                SELECT l.seq FROM messages l WHERE l.peer = p.peer
                ORDER BY l.at_us DESC, l.seq DESC LIMIT 1)
            ORDER BY m.at_us DESC, m.seq DESC
            """,
            (SNIPPET_CHARS,),
        )
        return [
            ConversationSummary(
                peer=peer,
                display=display,
                last_at=_from_us(at_us),
                last_direction=direction,
                last_body=body,
                unread=int(unread),
                messages=int(count),
            )
            for peer, display, at_us, direction, body, unread, count in rows
        ]

    def mark_read(self, peer: str) -> int:
        with self._write(durable=False) as conn:
            cursor = conn.execute(
                "UPDATE messages SET is_read = 1 "
                "WHERE peer = ? AND direction = 'in' AND is_read = 0",
                (normalize_identity(peer),),
            )
            return int(cursor.rowcount)

    def contacts(self) -> list[Contact]:
        rows = self._conn.execute(
            """
            SELECT p.peer, p.display, p.first_seen_us, p.last_seen_us,
                   (SELECT count(*) FROM pins WHERE pins.peer = p.peer),
                   EXISTS (SELECT 1 FROM key_changes k WHERE k.peer = p.peer)
            FROM peers p ORDER BY p.peer
            """
        )
        return [
            Contact(
                identity=peer,
                display=display,
                first_seen=_from_us(first_us),
                last_seen=_opt_dt(last_us),
                pinned_keys=int(pins),
                key_change_pending=bool(pending),
            )
            for peer, display, first_us, last_us, pins, pending in rows
        ]

    def touch_contact(self, identity: str, now: datetime) -> None:
        peer = normalize_identity(identity)
        with self._write(durable=False):
            self._see_peer(peer, identity, _to_us(now), seen=True)

    # -- pins

    def load_pins(self) -> tuple[_PinMaps, _PinMaps]:
        """(pins, pending key changes), each identity → set of SPKI hashes."""
        pins: dict[str, set[bytes]] = {}
        changes: dict[str, set[bytes]] = {}
        with self._read():
            for peer, spki in self._conn.execute("SELECT peer, spki FROM pins"):
                pins.setdefault(peer, set()).add(bytes(spki))
            for peer, spki in self._conn.execute("SELECT peer, spki FROM key_changes"):
                changes.setdefault(peer, set()).add(bytes(spki))
        return pins, changes

    def add_pins(self, identity: str, spkis: Sequence[bytes]) -> None:
        """Pin keys, and drop any pending key change they settle."""
        peer = normalize_identity(identity)
        with self._write() as conn:
            for spki in spkis:
                conn.execute(
                    "INSERT OR IGNORE INTO pins (peer, spki) VALUES (?, ?)",
                    (peer, _check_spki(spki)),
                )
                conn.execute(
                    "DELETE FROM key_changes WHERE peer = ? AND spki = ?", (peer, bytes(spki))
                )

    def note_key_change(self, identity: str, spki: bytes, now: datetime) -> bool:
        peer = normalize_identity(identity)
        spki = _check_spki(spki)
        now_us = _to_us(now)
        with self._write(durable=False) as conn:
            if conn.execute(
                "SELECT 1 FROM pins WHERE peer = ? AND spki = ?", (peer, spki)
            ).fetchone():
                return False
            self._see_peer(peer, identity, now_us, seen=True)
            conn.execute(
                """
                INSERT INTO key_changes (peer, spki, first_noted_us, last_noted_us, times)
                VALUES (?, ?, ?, ?, 1)
                ON CONFLICT (peer, spki) DO UPDATE SET
                    last_noted_us = max(key_changes.last_noted_us, excluded.last_noted_us),
                    times = key_changes.times + 1
                """,
                (peer, spki, now_us, now_us),
            )
            return True

    def key_changes(self, identity: str | None = None) -> list[KeyChange]:
        if identity is None:
            rows = self._conn.execute(
                "SELECT peer, spki, first_noted_us, last_noted_us, times FROM key_changes "
                "ORDER BY peer, first_noted_us, spki"
            )
        else:
            rows = self._conn.execute(
                "SELECT peer, spki, first_noted_us, last_noted_us, times FROM key_changes "
                "WHERE peer = ? ORDER BY first_noted_us, spki",
                (normalize_identity(identity),),
            )
        return [
            KeyChange(peer, bytes(spki), _from_us(first), _from_us(last), int(times))
            for peer, spki, first, last, times in rows
        ]


def _open_database(path: str) -> tuple[MessageDatabase, _PinMaps, _PinMaps]:
    """Open (and migrate) the file and read the pins: the store's first job on its thread."""
    db = MessageDatabase(path)
    try:
        pins, changes = db.load_pins()
    except BaseException:
        db.close()
        raise
    return db, pins, changes


def _json_ints(values: Iterable[int]) -> str:
    """A JSON array of integers: one parameter carrying a list for C{json_each}."""
    return "[" + ",".join(str(int(v)) for v in values) + "]"


# -- the Twisted face -----------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Batch:
    """
    Calls for one group commit. The reactor thread adds calls until the store's thread
    starts the batch; the lock makes "not started yet" and "joined" one step.
    """

    #: A bound on one transaction, so that a burst does not hold the write lock for long.
    MAX_CALLS = 512

    def __init__(self, call: tuple[Any, ...]) -> None:
        self.calls = [call]
        self._lock = threading.Lock()
        self._started = False

    def join(self, call: tuple[Any, ...]) -> bool:
        with self._lock:
            if self._started or len(self.calls) >= self.MAX_CALLS:
                return False
            self.calls.append(call)
            return True

    def run(self, db: MessageDatabase) -> list[tuple[bool, Any]]:
        with self._lock:
            self._started = True
        calls = [(method, args, kwargs) for method, args, kwargs, _ in self.calls]
        durable = any(method is not MessageDatabase.mark_attempt for method, _, _ in calls)
        return db.batch(calls, durable)


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
    """

    log = Logger()

    def __init__(self, path: str, reactor: IReactorFromThreads) -> None:
        self.path = path
        self._reactor = reactor
        self._pool: ThreadPool | None = None
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
        pool = ThreadPool(minthreads=1, maxthreads=1, name="sixchat-store")
        pool.start()
        self._pool = pool

        def opened(result: tuple[MessageDatabase, _PinMaps, _PinMaps]) -> None:
            db, pins, changes = result
            self._db = db
            self.pins._loaded(pins, changes)
            if IReactorCore.providedBy(self._reactor):
                self._trigger = self._reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
                    "before", "shutdown", self.close
                )

        def failed(failure: Failure) -> Failure:
            self._pool = None
            pool.stop()  # the worker is idle again: this join is immediate
            return failure

        d = deferToThreadPool(self._reactor, pool, _open_database, self.path)
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

        d = deferToThreadPool(self._reactor, pool, db.close)
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
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

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
        d: Deferred[_R] = Deferred()
        call = (method, args, kwargs, d)
        batch = self._open_batch
        if batch is not None and batch.join(call):
            return d
        batch = _Batch(call)
        deferToThreadPool(self._reactor, self._pool, batch.run, db).addCallbacks(
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
        @raise ValueError: (as a failure) body over 32,768 characters (split it first),
            invalid id or reply_to.
        """
        return self._batched(
            MessageDatabase.queue_outgoing, to, body, now, id=id, thread=thread, reply_to=reply_to
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
        person still gets it).
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


@implementer(IPinStore)
class SQLitePinStore:
    """
    Persistent pins (§9.3, §11.15) and pending key changes, for L{sixchat.trust.PinPolicy}.

    The handshake consults pins inline, so L{known} and L{add} are synchronous: they work
    on a cache loaded by L{MessageStore.open}. L{add} updates the cache at once and writes
    behind through the store's thread, in call order; a write that fails is logged (the
    cache keeps the pin for this run). A SIGKILL right after L{add} may lose that pin (the
    next handshake then reports a first contact or a key change again, never accepts a key
    silently); L{accept_key} is durable when it fires, and L{MessageStore.flush} waits for
    earlier writes.
    """

    log = Logger()

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._pins: dict[str, set[bytes]] = {}
        self._changes: dict[str, set[bytes]] = {}

    def _loaded(self, pins: _PinMaps, changes: _PinMaps) -> None:
        self._pins, self._changes = pins, changes

    def known(self, identity: str) -> frozenset[bytes]:
        """The SPKI hashes accepted for C{identity} (from the cache; never blocks)."""
        return frozenset(self._pins.get(normalize_identity(identity), ()))

    def add(self, identity: str, spki_sha256: bytes) -> None:
        """
        Accept a key for C{identity}: in the cache now, in the file shortly (write-behind).
        Also settles a pending key change for that key.

        @raise StoreClosedError: the store is not open (the pin could not be kept).
        """
        written = self._add(normalize_identity(identity), [_check_spki(spki_sha256)])
        if written is not None:
            written.addErrback(self._write_failed, identity)

    def _add(self, peer: str, spkis: list[bytes]) -> Deferred[None] | None:
        """Update the caches now; the write to the file, or C{None} if nothing changed."""
        db = self._store._database()
        new = [s for s in spkis if s not in self._pins.get(peer, ())]
        pending = self._changes.get(peer, set())
        if not new and not pending.intersection(spkis):
            return None
        self._pins.setdefault(peer, set()).update(spkis)
        pending.difference_update(spkis)
        if not pending:
            self._changes.pop(peer, None)
        return self._store._call(db.add_pins, peer, spkis)

    def _write_failed(self, failure: Failure, identity: str) -> None:
        self.log.failure("could not save a pin for {identity}", failure, identity=identity)

    def pending_changes(self, identity: str) -> frozenset[bytes]:
        """The keys of C{identity} awaiting a decision (from the cache)."""
        return frozenset(self._changes.get(normalize_identity(identity), ()))

    def note_key_change(self, identity: str, spki_sha256: bytes, now: datetime) -> Deferred[bool]:
        """
        Record that C{identity} presented a key not among its pins (§9.3), for the user to
        decide (L{accept_key}). Fires with C{False} if the key is pinned after all.
        """
        try:
            peer = normalize_identity(identity)
            spki = _check_spki(spki_sha256)
            db = self._store._database()
        except (ValueError, StoreError) as e:
            return fail(e)
        if spki in self._pins.get(peer, ()):
            return succeed(False)
        self._changes.setdefault(peer, set()).add(spki)
        return self._store._call(db.note_key_change, identity, spki, now)

    def key_changes(self, identity: str | None = None) -> Deferred[list[KeyChange]]:
        """Pending key changes (of one identity, or all), oldest first per identity."""
        return self._store._run(MessageDatabase.key_changes, identity)

    def accept_key(self, identity: str, spki_sha256: bytes | None = None) -> Deferred[list[bytes]]:
        """
        The user accepts a key (C{sixchat trust <identity> --accept-new-key}): pin it and
        clear its pending change. Without C{spki_sha256}, every pending key of the identity
        is accepted. Durable when it fires; fires with the keys accepted.
        """
        try:
            peer = normalize_identity(identity)
            if spki_sha256 is None:
                spkis = sorted(self._changes.get(peer, ()))
            else:
                spkis = [_check_spki(spki_sha256)]
            written = self._add(peer, spkis) if spkis else None
        except (ValueError, StoreError) as e:
            return fail(e)
        # Nothing new to write: an earlier add() of the key may still be on its way.
        d = written if written is not None else self._store.flush()
        return d.addCallback(lambda _: spkis)
