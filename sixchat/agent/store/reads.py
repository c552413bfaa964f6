"""
The agent store's reads: the outbox's view of outgoing messages (what is pending, the status
of one), the UI's history, conversations and contacts, and the pins loaded at start. A base
of L{sixchat.agent.store.database.MessageDatabase}, which adds the writes; kept apart because
reads are one snapshot each and change nothing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sixchat._sqlite import from_us, opt_dt, to_us
from sixchat.agent.store.cipher import file_state
from sixchat.agent.store.records import (
    DELIVERED,
    INCOMING,
    QUEUED,
    RECEIVED,
    SENT,
    SNIPPET_CHARS,
    Contact,
    ConversationSummary,
    HistoryEntry,
    KeyChange,
    KeyEvent,
    MessageStatus,
    NodeDelivery,
    OutgoingMessage,
    PinMaps,
    SchemaTooNewError,
    StoreError,
    derive_state,
)
from sixchat.agent.store.schema import DELIVERY_COLUMNS, OUT_COLUMNS, SCHEMA_VERSION
from sixchat.identity import normalize_identity

__all__ = ["DatabaseReads", "ReadOnlyDatabase"]


class DatabaseReads:
    """
    The read methods of L{MessageDatabase} (documented on L{MessageStore}), over its one
    connection. Not used alone.
    """

    _conn: sqlite3.Connection
    #: The outgoing columns read (a read-only store older than version 4 has no origin).
    _out_columns = OUT_COLUMNS

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
            "SELECT " + DELIVERY_COLUMNS + " FROM deliveries WHERE msg IN "  # noqa: S608
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
                    last_attempt=opt_dt(last_us),
                    next_attempt=opt_dt(next_us),
                    done_at=opt_dt(done_us),
                    reason=reason,
                )
            )
        return result

    def _out_rows(self, where: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        sql = (
            "SELECT " + self._out_columns + " FROM messages "  # noqa: S608
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
            created_at=from_us(row[8]),
            nodes=tuple(nodes),
            delivered_nodes=delivered,
            total_nodes=len(nodes),
            reason=outcome_reason,
            closed_at=opt_dt(outcome_at_us),
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
                    created_at=from_us(row[8]),
                    status=status,
                    origin=row[12],
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
            params.append(to_us(since))
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
                    at=from_us(at_us),
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
                last_at=from_us(at_us),
                last_direction=direction,
                last_body=body,
                unread=int(unread),
                messages=int(count),
            )
            for peer, display, at_us, direction, body, unread, count in rows
        ]

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
                first_seen=from_us(first_us),
                last_seen=opt_dt(last_us),
                pinned_keys=int(pins),
                key_change_pending=bool(pending),
            )
            for peer, display, first_us, last_us, pins, pending in rows
        ]

    def load_pins(self) -> tuple[PinMaps, PinMaps]:
        """(pins, pending key changes), each identity → set of SPKI hashes."""
        pins: dict[str, set[bytes]] = {}
        changes: dict[str, set[bytes]] = {}
        with self._read():
            for peer, spki in self._conn.execute("SELECT peer, spki FROM pins"):
                pins.setdefault(peer, set()).add(bytes(spki))
            for peer, spki in self._conn.execute("SELECT peer, spki FROM key_changes"):
                changes.setdefault(peer, set()).add(bytes(spki))
        return pins, changes

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
            KeyChange(peer, bytes(spki), from_us(first), from_us(last), int(times))
            for peer, spki, first, last, times in rows
        ]

    def key_events(
        self, identity: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[KeyEvent]:
        """The most recent C{limit} key events (of one identity, or all), oldest first."""
        clauses = ["1"]
        params: list[Any] = []
        if identity is not None:
            clauses.append("peer = ?")
            params.append(normalize_identity(identity))
        if since is not None:
            clauses.append("at_us >= ?")
            params.append(to_us(since))
        params.append(limit)
        sql = (
            "SELECT peer, spki, what, at_us FROM key_events WHERE "  # noqa: S608
            + " AND ".join(clauses)
            + " ORDER BY at_us DESC, seq DESC LIMIT ?"
        )
        rows = list(self._conn.execute(sql, params))
        return [
            KeyEvent(peer, bytes(spki), what, from_us(at_us))
            for peer, spki, what, at_us in reversed(rows)
        ]


class ReadOnlyDatabase(DatabaseReads):
    """
    The agent's store opened read-only, for C{sixchat inbox} while the agent is stopped.

    SQLite's read-only mode (C{mode=ro}) never writes the file, never migrates it and never
    takes the write lock, so it is safe next to an agent that starts meanwhile (WAL: readers
    and the one writer do not block each other). Blocking: for a short-lived command, not
    the reactor thread.

    @raise StoreError: the file does not exist or is not a sixchat store.
    @raise SchemaTooNewError: a newer sixchat wrote it.
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise StoreError(f"no message store at {path}")
        if file_state(path) == "encrypted":
            raise StoreError(
                f"{path} is encrypted; start the agent (it unlocks the store with the "
                "identity's password) to read it"
            )
        uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
        try:
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"{path} is not a sixchat message store ({e})") from None
        self.schema_version = int(row[0]) if row else 0
        if self.schema_version < 4:  # written before own-device sync
            self._out_columns = OUT_COLUMNS.replace("origin", "NULL AS origin")
        if self.schema_version > SCHEMA_VERSION:
            self._conn.close()
            raise SchemaTooNewError(
                f"the message store has schema version {self.schema_version}; this sixchat "
                f"knows {SCHEMA_VERSION} (upgrade sixchat)"
            )

    def key_events(
        self, identity: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[KeyEvent]:
        if self.schema_version < 2:  # written before the key history existed
            return []
        return super().key_events(identity, since, limit)

    def close(self) -> None:
        self._conn.close()
