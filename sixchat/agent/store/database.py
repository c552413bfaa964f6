"""
The agent store's synchronous core: one C{sqlite3} connection and every rule of the data
model (L{MessageDatabase}). It blocks, so the reactor thread never calls it: the Deferred
face (L{sixchat.agent.store.store.MessageStore}) runs it on its own thread; tests and
offline tools may call it directly.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sixchat._sqlite import MICROSECOND, immediate, migrate, opt_us, to_us
from sixchat.agent.store import cipher
from sixchat.agent.store.pinwrites import PinWrites
from sixchat.agent.store.reads import DatabaseReads
from sixchat.agent.store.records import (
    EXPIRED,
    FAILED,
    QUEUED,
    SENT,
    MessageIdConflict,
    MessageStatus,
    OutgoingMessage,
    PinMaps,
    SchemaTooNewError,
    StoreError,
    check_node,
)
from sixchat.agent.store.schema import MIGRATIONS
from sixchat.identity import normalize_identity
from sixchat.stanzas import MAX_BODY_CHARS, Message, format_timestamp, is_valid_id

__all__ = ["MessageDatabase"]


class MessageDatabase(PinWrites, DatabaseReads):
    """
    The store's data model over one C{sqlite3} connection. Blocking: the reactor thread
    must not call it (L{MessageStore} runs it on its own thread). Not thread-safe: one
    thread at a time. Methods mirror L{MessageStore}'s and are documented there.

    @param path: the database file (created mode 0600, since it holds private messages), or
        C{":memory:"} for a throwaway database (tests; no durability).
    @param key: the 32-byte key of an encrypted (SQLCipher) file, or C{None} for a plain one
        (L{sixchat.agent.store.encryption} decides which).
    @raise WrongStoreKey: the key does not open the file.
    @raise SchemaTooNewError: if a newer sixchat wrote the file.
    @raise StoreError: if the file cannot be put in WAL mode.
    """

    def __init__(self, path: str, key: bytes | None = None) -> None:
        memory = path == ":memory:"
        #: The write-ahead log, for L{sync} (C{None}: an in-memory database).
        self._wal = None if memory else path + "-wal"
        self._wal_fd: int | None = None
        if not memory:
            # SQLite creates files with the umask's mode and gives -wal/-shm the main
            # file's permissions; create it private first.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each public method is
        # exactly one transaction. check_same_thread=False: the single-thread pool already
        # serializes every use, and a pool may replace its worker thread.
        # A key: SQLCipher (sixchat.agent.store.cipher, the one place that knows it).
        self._conn = cipher.connect(path, key, timeout=10.0)
        self.encrypted = key is not None
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
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._conn.close()

    def sync(self) -> None:
        """
        Make every commit so far durable: the fsync of the write-ahead log that a
        C{synchronous=FULL} commit makes, for commits made with C{NORMAL} (the log is one
        file written in order, and fsync flushes the file whichever descriptor asks).
        """
        if self._wal is None:
            return
        if self._wal_fd is None:
            self._wal_fd = os.open(self._wal, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if hasattr(fcntl, "F_FULLFSYNC"):  # macOS: through the drive's cache, as fullfsync
            fcntl.fcntl(self._wal_fd, fcntl.F_FULLFSYNC)
        else:
            os.fdatasync(self._wal_fd)

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
        with immediate(conn):
            yield conn

    def batch(
        self,
        calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        durable: bool = True,
        written: Callable[[list[tuple[bool, Any]]], None] | None = None,
    ) -> list[tuple[bool, Any]]:
        """
        Run C{calls} (each C{(MessageDatabase method, args, kwargs)}) in one transaction:
        one fsync for all of them (group commit); C{durable} as for L{_write}, so it must be
        true if any call needs it. Each call gets a savepoint; one that raises is rolled back
        alone. Returns C{(True, result)} or C{(False, exception)} per call, in order, once
        the COMMIT has returned. If the COMMIT itself fails, this raises and nothing of the
        batch is applied.

        @param written: called with the results between the COMMIT (made with C{NORMAL})
            and the fsync that makes a durable batch durable (L{sync}), so that work which
            needs the rows committed but not yet durable starts while the disk syncs.
        """
        results: list[tuple[bool, Any]] = []
        if written is not None:
            durable, sync = False, durable
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
        if written is not None:
            written(results)  # committed, survives a crash of the process; not yet fsynced
            if sync:
                self.sync()
        return results

    def _migrate(self) -> None:
        migrate(self._conn, MIGRATIONS, _too_new)

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
        at_us = to_us(received_at)
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
        at_us = to_us(now)
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
        wanted = list(dict.fromkeys(check_node(n) for n in nodes))
        with self._write(durable=False) as conn:
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
        check_node(node)
        now_us, next_us = to_us(now), opt_us(next_attempt)
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
        check_node(node)
        now_us = to_us(now)
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
            check_node(node)
        reason = str(reason)
        now_us = to_us(now)
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

    def cancel(self, message_id: str) -> MessageStatus | None:
        with self._write() as conn:
            status = self.status(message_id)
            if status is None or status.state not in (QUEUED, SENT) or status.delivered_nodes:
                return status
            peer = status.to
            conn.execute("DELETE FROM messages WHERE direction = 'out' AND id = ?", (message_id,))
            self._drop_unused_peer(peer)
        return status

    def _drop_unused_peer(self, peer: str) -> None:
        """
        A contact made only by queueing to it goes with its last message: nothing ever came
        from it (a key change noted makes it seen, so none is pending). Keys pinned for it
        (from the registry) stay pinned, as for any identity looked up. The rule depends on
        nothing but the messages, so every node of ours that merges the cancel (own-device
        sync) takes the contact away too.
        """
        self._conn.execute(
            """
            DELETE FROM peers WHERE peer = ? AND last_seen_us IS NULL
                AND NOT EXISTS (SELECT 1 FROM messages WHERE peer = ?)
                AND NOT EXISTS (SELECT 1 FROM key_changes WHERE peer = ?)
            """,
            (peer, peer, peer),
        )

    def expire(self, now: datetime, ttl: timedelta) -> list[MessageStatus]:
        if ttl < timedelta(0):
            raise ValueError("ttl must not be negative")
        now_us = to_us(now)
        cutoff = now_us - ttl // MICROSECOND
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

    # -- the UI

    def mark_read(self, peer: str) -> int:
        with self._write(durable=False) as conn:
            cursor = conn.execute(
                "UPDATE messages SET is_read = 1 "
                "WHERE peer = ? AND direction = 'in' AND is_read = 0",
                (normalize_identity(peer),),
            )
            return int(cursor.rowcount)

    def touch_contact(self, identity: str, now: datetime) -> None:
        peer = normalize_identity(identity)
        with self._write(durable=False):
            self._see_peer(peer, identity, to_us(now), seen=True)


def _too_new(version: int, known: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"the message store has schema version {version}; this sixchat knows "
        f"{known} (upgrade sixchat)"
    )


def _open_database(
    path: str, unlock: Callable[[], bytes | None] | None = None
) -> tuple[MessageDatabase, PinMaps, PinMaps]:
    """
    Find the key (C{unlock}: the KDF takes a moment), open (and migrate) the file and read
    the pins: the store's first job on its thread.
    """
    db = MessageDatabase(path, None if unlock is None else unlock())
    try:
        pins, changes = db.load_pins()
    except BaseException:
        db.close()
        raise
    return db, pins, changes


def _json_ints(values: Iterable[int]) -> str:
    """A JSON array of integers: one parameter carrying a list for C{json_each}."""
    return "[" + ",".join(str(int(v)) for v in values) + "]"
