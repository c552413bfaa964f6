"""
The store's file-transfer rows (schema version 2, table C{transfers}): what is particular to
a file, both directions. An outgoing file is also an outgoing message (its body names the
file) so that the outbox treats it like one (fan-out, retries, TTL, states); an incoming
file becomes an incoming message once it is stored, so history shows it and a second offer
of the same id is receipted, not stored twice (§8.2, §11.9).

The functions take a L{MessageDatabase} and run on the store's thread (L{TransferStore}
runs them there, through the same ordered queue as every other store call).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred

from sixchat._sqlite import from_us, to_us
from sixchat.agent.store.database import MessageDatabase
from sixchat.agent.store.store import MessageStore
from sixchat.identity import normalize_identity

__all__ = [
    "FILE_BODY_PREFIX",
    "TRANSFER_COLUMNS",
    "OutgoingFiles",
    "TransferRecord",
    "TransferStore",
    "file_body",
]

_COLUMNS = (
    "direction, peer, peer_display, id, name, size, sha256, mime, path, partial, received, "
    "resumed_from, state, reason, at_us, updated_us"
)
TRANSFER_COLUMNS = _COLUMNS
#: The body of the message row that stands for a file in history.
FILE_BODY_PREFIX = "[file] "


def file_body(name: str, size: int) -> str:
    """The history text of a file: C{[file] report.pdf (123456 bytes)}."""
    return f"{FILE_BODY_PREFIX}{name} ({size} bytes)"


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """
    One file transfer. C{received}: incoming, the bytes durably held (fsynced); outgoing,
    unused (0). C{state}: incoming C{receiving}, C{received} or C{failed}; outgoing C{offered}
    (the message row's state is the delivery state).
    """

    direction: str
    peer: str
    peer_display: str
    id: str
    name: str
    size: int
    sha256: bytes
    mime: str | None
    path: str | None
    partial: str | None
    received: int
    resumed_from: int
    state: str
    reason: str | None
    at: datetime
    updated: datetime


def _record(row: tuple[Any, ...]) -> TransferRecord:
    values = list(row)
    values[6] = bytes(values[6])
    values[14] = from_us(values[14])
    values[15] = from_us(values[15])
    return TransferRecord(*values)


def get(db: MessageDatabase, direction: str, peer: str, file_id: str) -> TransferRecord | None:
    row = db._conn.execute(
        f"SELECT {_COLUMNS} FROM transfers WHERE direction = ? AND peer = ? AND id = ?",  # noqa: S608
        (direction, normalize_identity(peer), file_id),
    ).fetchone()
    return None if row is None else _record(row)


def all_transfers(db: MessageDatabase) -> list[TransferRecord]:
    query = f"SELECT {_COLUMNS} FROM transfers ORDER BY at_us, id"  # noqa: S608 - constants
    rows = db._conn.execute(query).fetchall()
    return [_record(r) for r in rows]


def put(db: MessageDatabase, record: TransferRecord, durable: bool = True) -> None:
    """Insert or replace one transfer row (one transaction)."""
    with db._write(durable=durable) as conn:
        conn.execute(
            f"INSERT OR REPLACE INTO transfers ({_COLUMNS}) "  # noqa: S608 - constants
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.direction,
                normalize_identity(record.peer),
                record.peer_display,
                record.id,
                record.name,
                record.size,
                record.sha256,
                record.mime,
                record.path,
                record.partial,
                record.received,
                record.resumed_from,
                record.state,
                record.reason,
                to_us(record.at),
                to_us(record.updated),
            ),
        )


def queue_file(db: MessageDatabase, record: TransferRecord, now: datetime) -> None:
    """An outgoing file: its message row (the outbox entry) and its transfer row, together."""
    with db._write():
        db._in_batch = True  # the two writes below become savepoints of this transaction
        try:
            body = file_body(record.name, record.size)
            db.queue_outgoing(record.peer_display, body, now, id=record.id)
            put(db, record)
        finally:
            db._in_batch = False


def files_for_node(db: MessageDatabase, node: str) -> list[TransferRecord]:
    """Received files (stored, checked) that own node C{node} is not known to hold, oldest first."""
    query = (
        f"SELECT {_COLUMNS} FROM transfers t WHERE direction = 'in' AND state = 'received' "  # noqa: S608
        "AND path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM sync_files s "
        "WHERE s.node = ? AND s.peer = t.peer AND s.id = t.id) ORDER BY at_us, id"
    )
    return [_record(r) for r in db._conn.execute(query, (node,)).fetchall()]


def node_holds(db: MessageDatabase, node: str, peer: str, file_id: str) -> None:
    """Own node C{node} holds the received file (C{peer}, C{file_id}): never offered to it."""
    with db._write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO sync_files (node, peer, id) VALUES (?, ?, ?)",
            (node, normalize_identity(peer), file_id),
        )


@dataclass(frozen=True)
class OutgoingFiles:
    """
    Our outgoing files as the delivery rule needs them: every id; those whose bytes this
    node holds (queued here, or a spooled copy); and which other own nodes are known to
    hold each (C{sync_out_files}).
    """

    ids: set[str]
    held: set[str]
    holders: dict[str, set[str]]


def outgoing_files(db: MessageDatabase) -> OutgoingFiles:
    conn = db._conn
    ids, held = set(), set()
    for file_id, path in conn.execute("SELECT id, path FROM transfers WHERE direction = 'out'"):
        ids.add(file_id)
        if path is not None:
            held.add(file_id)
    holders: dict[str, set[str]] = {}
    for node, file_id in conn.execute("SELECT node, id FROM sync_out_files"):
        holders.setdefault(file_id, set()).add(node)
    return OutgoingFiles(ids, held, holders)


def out_files_for_node(db: MessageDatabase, node: str) -> list[TransferRecord]:
    """
    Outgoing files whose bytes we hold, still owed to some recipient node, that own node
    C{node} is not known to hold, oldest first (what we hand on to it).
    """
    query = (
        f"SELECT {_COLUMNS} FROM transfers t WHERE direction = 'out' "  # noqa: S608
        "AND state IN ('offered', 'spooled') AND path IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM messages m WHERE m.direction = 'out' AND m.id = t.id "
        "AND m.peer = t.peer AND m.owed = 1) "
        "AND NOT EXISTS (SELECT 1 FROM sync_out_files s "
        "WHERE s.node = ? AND s.peer = t.peer AND s.id = t.id) ORDER BY at_us, id"
    )
    return [_record(r) for r in db._conn.execute(query, (node,)).fetchall()]


def out_node_holds(db: MessageDatabase, node: str, peer: str, file_id: str) -> None:
    """Own node C{node} holds the bytes of our outgoing file (C{peer}, C{file_id})."""
    with db._write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO sync_out_files (node, peer, id) VALUES (?, ?, ?)",
            (node, normalize_identity(peer), file_id),
        )


def spool_final(db: MessageDatabase) -> list[TransferRecord]:
    """
    Spooled copies (and partial ones) no longer needed: their message is final (owed to no
    recipient node: delivered to every one owed, failed or expired) or was cancelled.
    """
    query = (
        f"SELECT {_COLUMNS} FROM transfers t WHERE direction = 'out' AND ("  # noqa: S608
        "(state = 'spooled' AND path IS NOT NULL) "
        "OR (state IN ('receiving', 'failed') AND partial IS NOT NULL)) AND ("
        "EXISTS (SELECT 1 FROM messages m WHERE m.direction = 'out' AND m.id = t.id "
        "AND m.owed = 0) OR EXISTS (SELECT 1 FROM sync_cancelled c WHERE c.id = t.id))"
    )
    return [_record(r) for r in db._conn.execute(query).fetchall()]


def spool_removed(db: MessageDatabase, peer: str, file_id: str) -> None:
    """The spooled copy of (C{peer}, C{file_id}) is gone: the row stays, without a path."""
    with db._write() as conn:
        conn.execute(
            "UPDATE transfers SET path = NULL, partial = NULL WHERE direction = 'out' "
            "AND peer = ? AND id = ? AND state != 'offered'",
            (normalize_identity(peer), file_id),
        )


class TransferStore:
    """The Deferred face of the functions above, on the message store's thread and queue."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    def get(self, direction: str, peer: str, file_id: str) -> Deferred[TransferRecord | None]:
        return self.store._run(get, direction, peer, file_id)

    def all(self) -> Deferred[list[TransferRecord]]:
        return self.store._run(all_transfers)

    def put(self, record: TransferRecord, durable: bool = True) -> Deferred[None]:
        return self.store._run(put, record, durable)

    def queue_file(self, record: TransferRecord, now: datetime) -> Deferred[None]:
        return self.store._run(queue_file, record, now)

    def files_for_node(self, node: str) -> Deferred[list[TransferRecord]]:
        return self.store._run(files_for_node, node)

    def node_holds(self, node: str, peer: str, file_id: str) -> Deferred[None]:
        return self.store._run(node_holds, node, peer, file_id)

    def outgoing_files(self) -> Deferred[OutgoingFiles]:
        return self.store._run(outgoing_files)

    def out_files_for_node(self, node: str) -> Deferred[list[TransferRecord]]:
        return self.store._run(out_files_for_node, node)

    def out_node_holds(self, node: str, peer: str, file_id: str) -> Deferred[None]:
        return self.store._run(out_node_holds, node, peer, file_id)

    def spool_final(self) -> Deferred[list[TransferRecord]]:
        return self.store._run(spool_final)

    def spool_removed(self, peer: str, file_id: str) -> Deferred[None]:
        return self.store._run(spool_removed, peer, file_id)
