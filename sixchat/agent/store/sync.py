"""
The store's side of own-device sync (schema version 4; docs/protocol.md, "Extension:
own-device sync"): reading this store's change feed as sync items, and merging another
node's items in, exactly once, with the cursor into that node's feed moved in the same
transaction.

The merge rules make every kind of thing a join of its versions, so that any order of
deliveries, receipts and syncs ends in one state on every node:

  - a message is keyed as on the wire: incoming by (sender, id), outgoing by id; its text
    never changes; an incoming one's receive time is the earliest any node saw, its read
    flag the OR of all;
  - a recipient node's delivery entry takes the highest state in the order queued < sent <
    expired < failed < delivered (only the final ones travel); a message's outcome the
    highest of none < expired < failed;
  - a cancelled outgoing message stays cancelled (a tombstone), unless some node has its
    receipt: then it was delivered, and that wins;
  - a contact's first dealing is the earliest, its last sight the latest (its display
    spelling the one of the latest sight);
  - a pin decision with a higher version wins; at equal versions "not pinned" does.

The functions take a L{MessageDatabase} and run on the store's thread (L{SyncStore} runs them
there, through the same ordered queue as every other store call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred

from sixchat._sqlite import to_us
from sixchat.agent.store.database import MessageDatabase
from sixchat.agent.store.files import TRANSFER_COLUMNS, file_body
from sixchat.agent.store.store import MessageStore
from sixchat.identity import normalize_identity
from sixchat.stanzas import Message
from sixchat.sync.stanzas import (
    CancelledItem,
    ContactItem,
    FileMeta,
    InItem,
    NodeEntry,
    OutItem,
    PinItem,
    SyncItem,
)
from sixchat.xmlcodec import serialize

__all__ = [
    "BATCH_BYTES",
    "Applied",
    "FeedPage",
    "NodeSync",
    "SyncStore",
    "apply_items",
    "read_feed",
]

#: A batch's items stop growing past this many bytes (one record holds 65,536).
BATCH_BYTES = 48_000
#: An item larger than this cannot travel in a record with its batch around it: skipped.
MAX_ITEM_BYTES = 64_000
_RANK = {"queued": 0, "sent": 1, "expired": 2, "failed": 3, "delivered": 4}
_OUTCOME_RANK = {None: 0, "expired": 1, "failed": 2}


@dataclass(frozen=True)
class FeedPage:
    """Items of this store's feed after a cursor: C{next} is where they end."""

    store: str
    items: tuple[SyncItem, ...]
    next: int
    more: bool
    skipped: int = 0


@dataclass
class Applied:
    """What merging a batch changed here (for events and the pin cache)."""

    received: list[tuple[str, Message, int]] = field(default_factory=list)
    outgoing: list[str] = field(default_factory=list)
    #: Outgoing messages that are files (C{out} with C{file}), new here: (recipient, id).
    files: list[tuple[str, str]] = field(default_factory=list)
    pins_changed: bool = False
    changed: int = 0


@dataclass(frozen=True)
class NodeSync:
    """One own node as this store knows it (C{sixchat devices})."""

    node: str
    store: str | None
    after: int
    top: int
    seen_us: int | None
    synced_us: int | None
    items: int


# -- the feed -------------------------------------------------------------------------------


def store_id(db: MessageDatabase) -> str:
    row = db._conn.execute("SELECT value FROM sync_meta WHERE key = 'store'").fetchone()
    return str(row[0])


def feed_top(db: MessageDatabase) -> int:
    row = db._conn.execute("SELECT max(seq) FROM sync_feed").fetchone()
    return int(row[0] or 0)


def read_feed(
    db: MessageDatabase,
    after: int,
    limit: int,
    *,
    node: str,
    requester: str | None = None,
    budget: int = BATCH_BYTES,
    out_files: bool = True,
) -> FeedPage:
    """
    The feed after seq C{after}: at most C{limit} items and about C{budget} bytes, leaving
    out changes that C{requester}'s own batches made, and our outgoing files unless the
    requester takes them (C{out_files}: its hello said so). C{node} is this node's name (the
    origin of what was queued here).
    """
    conn = db._conn
    items: list[SyncItem] = []
    size = 0
    last = after
    skipped = 0
    with db._read():
        sid = store_id(db)
        rows = conn.execute(
            "SELECT seq, kind, ref, source FROM sync_feed WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        for seq, kind, ref, source in rows:
            item = (
                None if source is not None and source == requester else _item(db, kind, ref, node)
            )
            if item is not None and not out_files and getattr(item, "file", None) is not None:
                item = None  # a node that does not know files would take it for a message
            if item is not None:
                try:
                    length = len(serialize(item.to_element()))
                except ValueError:  # a text no XML can carry (queued through the API)
                    length = MAX_ITEM_BYTES + 1
                if length > MAX_ITEM_BYTES:
                    skipped += 1
                    last = seq
                    continue
                if items and size + length > budget:
                    break
                items.append(item)
                size += length
            last = seq
        more = (
            conn.execute("SELECT 1 FROM sync_feed WHERE seq > ? LIMIT 1", (last,)).fetchone()
            is not None
        )
    return FeedPage(sid, tuple(items), last, more, skipped)


def _item(db: MessageDatabase, kind: str, ref: str, node: str) -> SyncItem | None:
    conn = db._conn
    if kind == "x":
        return CancelledItem(ref)
    if kind == "c":
        row = conn.execute(
            "SELECT display, first_seen_us, last_seen_us FROM peers WHERE peer = ?", (ref,)
        ).fetchone()
        return None if row is None else ContactItem(row[0], row[1], row[2])
    if kind == "p":
        row = conn.execute(
            "SELECT peer, spki, pinned, version FROM pin_decisions WHERE rowid = ?", (int(ref),)
        ).fetchone()
        return None if row is None else PinItem(row[0], bytes(row[1]), bool(row[2]), row[3])
    row = conn.execute(
        "SELECT direction, peer_display, id, ts, body, thread, reply_to, at_us, is_read, "
        "outcome, outcome_reason, outcome_at_us, origin FROM messages WHERE seq = ?",
        (int(ref),),
    ).fetchone()
    if row is None:
        return None
    direction, display, mid, ts, body, thread, reply_to, at_us, is_read = row[:9]
    if direction == "in":
        return InItem(display, mid, ts, at_us, body, thread, reply_to, bool(is_read))
    transfer = conn.execute(
        "SELECT name, size, sha256, mime FROM transfers WHERE direction = 'out' AND id = ?",
        (mid,),
    ).fetchone()
    # A file travels with what its offer carries, so that no node ever takes it for a text
    # message (its body is only the history line); its bytes go by hand-on (handon.py).
    meta = None
    if transfer is not None:
        meta = FileMeta(transfer[0], transfer[1], bytes(transfer[2]), transfer[3])
    nodes = tuple(
        NodeEntry(n, s, done, reason)
        for n, s, done, reason in conn.execute(
            "SELECT node, state, done_at_us, reason FROM deliveries WHERE msg = ? ORDER BY node",
            (int(ref),),
        )
    )
    outcome, reason, outcome_at, origin = row[9:]
    return OutItem(
        mid, display, ts, at_us, body, thread, reply_to, origin or node,
        outcome, reason, outcome_at, nodes, meta,
    )  # fmt: skip


# -- merging --------------------------------------------------------------------------------


def apply_items(
    db: MessageDatabase,
    items: tuple[SyncItem, ...] | list[SyncItem],
    *,
    node: str,
    source: str,
    store: str,
    next_cursor: int,
    now: datetime,
) -> Applied:
    """
    Merge C{items} from own node C{source} (reading its store C{store}) into this store, and
    move the cursor into that store to C{next_cursor}: one transaction, so a crash leaves
    both as they were and the batch is pulled again. C{node}: this node's name.
    """
    applied = Applied()
    now_us = to_us(now)
    with db._write() as conn:
        for item in items:
            before = feed_top(db)  # a change that counts renews a feed row (the triggers)
            adopted: tuple[str, str] | None
            if isinstance(item, InItem):
                adopted = _merge_in(db, item, applied)
            elif isinstance(item, OutItem):
                adopted = _merge_out(db, item, node, now_us, applied)
            elif isinstance(item, CancelledItem):
                adopted = _merge_cancelled(db, item)
            elif isinstance(item, ContactItem):
                adopted = _merge_contact(db, item)
            else:
                adopted = _merge_pin(db, item)
                applied.pins_changed |= adopted is not None
            if feed_top(db) != before:
                applied.changed += 1
            if adopted is not None:
                # Taken whole from source: not news to source (a merge of ours with it is).
                conn.execute(
                    "UPDATE sync_feed SET source = ? WHERE kind = ? AND ref = ? AND seq > ?",
                    (source, *adopted, before),
                )
        conn.execute(
            """
            INSERT INTO sync_nodes (node, store, after, seen_us, synced_us, items)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (node) DO UPDATE SET
                store = excluded.store, after = excluded.after, seen_us = excluded.seen_us,
                synced_us = excluded.synced_us, items = sync_nodes.items + excluded.items
            """,
            (source, store, next_cursor, now_us, now_us, applied.changed),
        )
    return applied


def _merge_in(db: MessageDatabase, item: InItem, applied: Applied) -> tuple[str, str] | None:
    conn = db._conn
    peer = normalize_identity(item.sender)
    db._see_peer(peer, item.sender, item.at, seen=False)
    row = conn.execute(
        "SELECT seq, at_us, is_read FROM messages WHERE direction = 'in' AND peer = ? AND id = ?",
        (peer, item.id),
    ).fetchone()
    if row is None:
        cursor = conn.execute(
            """
            INSERT INTO messages
                (direction, peer, peer_display, id, ts, body, thread, reply_to, at_us, is_read)
            VALUES ('in', ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                peer, item.sender, item.id, item.ts, item.body, item.thread, item.reply_to,
                item.at, 1 if item.read else 0,
            ),
        )  # fmt: skip
        message = Message(item.id, item.ts, item.body, item.thread, item.reply_to)
        applied.received.append((item.sender, message, item.at))
        return "m", str(cursor.lastrowid)
    seq, at_us, is_read = row
    if item.at < at_us or (item.read and not is_read):
        conn.execute(
            "UPDATE messages SET at_us = min(at_us, ?), is_read = max(is_read, ?) WHERE seq = ?",
            (item.at, 1 if item.read else 0, seq),
        )
    return None


def _merge_out(
    db: MessageDatabase, item: OutItem, node: str, now_us: int, applied: Applied
) -> tuple[str, str] | None:
    conn = db._conn
    delivered = any(n.state == "delivered" for n in item.nodes)
    if conn.execute("SELECT 1 FROM sync_cancelled WHERE id = ?", (item.id,)).fetchone():
        if not delivered:
            return None  # cancelled here or elsewhere: stays cancelled
        conn.execute("DELETE FROM sync_cancelled WHERE id = ?", (item.id,))  # a receipt wins
    peer = normalize_identity(item.to)
    if item.file is not None and item.body != file_body(item.file.name, item.file.size):
        return None  # a file's history line names it: anything else is not one of ours
    row = conn.execute(
        "SELECT seq, peer, body, outcome FROM messages WHERE direction = 'out' AND id = ?",
        (item.id,),
    ).fetchone()
    is_file = (
        conn.execute(
            "SELECT 1 FROM transfers WHERE direction = 'out' AND peer = ? AND id = ?",
            (peer, item.id),
        ).fetchone()
        is not None
    )
    if is_file != (item.file is not None) and (row is not None or is_file):
        return None  # a message here and a file there (or the other way round): not the same
    if row is None:
        db._see_peer(peer, item.to, item.at, seen=False)
        cursor = conn.execute(
            """
            INSERT INTO messages
                (direction, peer, peer_display, id, ts, body, thread, reply_to, at_us,
                 is_read, owed, origin)
            VALUES ('out', ?, ?, ?, ?, ?, ?, ?, ?, 1, 1, ?)
            """,
            (
                peer, item.to, item.id, item.ts, item.body, item.thread, item.reply_to,
                item.at, None if item.origin in (None, node) else item.origin,
            ),
        )  # fmt: skip
        seq, outcome, new = int(cursor.lastrowid or 0), None, True
        if item.file is not None:
            _file_known(db, item, peer, now_us, applied)
    elif row[1] != peer or row[2] != item.body:
        return None  # another message under this id: ids are 128 random bits, so a forgery
    else:
        seq, outcome, new = int(row[0]), row[3], False
    local = {
        n: (s, done)
        for n, s, done in conn.execute(
            "SELECT node, state, done_at_us FROM deliveries WHERE msg = ?", (seq,)
        )
    }
    for entry in item.nodes:
        state = "queued" if entry.state == "sent" else entry.state  # attempts stay local
        mine = local.get(entry.node)
        if mine is None:
            conn.execute(
                "INSERT INTO deliveries (msg, node, state, done_at_us, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (seq, entry.node, state, entry.at if state != "queued" else None, entry.reason),
            )
        elif _RANK[state] > _RANK[mine[0]]:
            conn.execute(
                "UPDATE deliveries SET state = ?, done_at_us = ?, reason = ?, "
                "next_attempt_us = NULL WHERE msg = ? AND node = ?",
                (state, entry.at, entry.reason, seq, entry.node),
            )
    if _OUTCOME_RANK[item.outcome] > _OUTCOME_RANK[outcome]:
        # Given up elsewhere (expired, or refused by the recipient): here too.
        outcome = item.outcome
        conn.execute(
            "UPDATE messages SET outcome = ?, outcome_reason = ?, outcome_at_us = ? WHERE seq = ?",
            (outcome, item.reason, item.outcome_at or now_us, seq),
        )
    if outcome is not None:
        # A message given up owes no node (as after expire or mark_failed here).
        conn.execute(
            "UPDATE deliveries SET state = ?, done_at_us = ?, next_attempt_us = NULL "
            "WHERE msg = ? AND state IN ('queued', 'sent')",
            (outcome, item.outcome_at or now_us, seq),
        )
    db._settle(seq, now_us, item.reason)
    applied.outgoing.append(item.id)
    return ("m", str(seq)) if new else None


def _file_known(
    db: MessageDatabase, item: OutItem, peer: str, now_us: int, applied: Applied
) -> None:
    """
    An outgoing file learnt from the feed: its transfer row, with no bytes (state C{synced},
    no path) unless a hand-on brought them first (that row stays as it is).
    """
    assert item.file is not None
    meta = item.file
    db._conn.execute(
        f"INSERT OR IGNORE INTO transfers ({TRANSFER_COLUMNS}) "  # noqa: S608 - constants
        "VALUES ('out', ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, 0, 'synced', NULL, ?, ?)",
        (peer, item.to, item.id, meta.name, meta.size, meta.sha256, meta.mime, item.at, now_us),
    )
    applied.files.append((item.to, item.id))


def _merge_cancelled(db: MessageDatabase, item: CancelledItem) -> tuple[str, str] | None:
    conn = db._conn
    row = conn.execute(
        "SELECT seq, peer FROM messages WHERE direction = 'out' AND id = ?", (item.id,)
    ).fetchone()
    if row is None:
        if conn.execute(
            "INSERT OR IGNORE INTO sync_cancelled (id) VALUES (?)", (item.id,)
        ).rowcount:
            conn.execute("INSERT OR REPLACE INTO sync_feed (kind, ref) VALUES ('x', ?)", (item.id,))
        return "x", item.id
    if conn.execute(
        "SELECT 1 FROM deliveries WHERE msg = ? AND state = 'delivered'", (row[0],)
    ).fetchone():
        return None  # a node received it: delivered wins over cancelled
    conn.execute("DELETE FROM messages WHERE seq = ?", (row[0],))  # the trigger keeps a tombstone
    db._drop_unused_peer(row[1])  # as the cancel did where it was made
    return "x", item.id


def _merge_contact(db: MessageDatabase, item: ContactItem) -> tuple[str, str] | None:
    conn = db._conn
    peer = normalize_identity(item.identity)
    row = conn.execute(
        "SELECT display, first_seen_us, last_seen_us FROM peers WHERE peer = ?", (peer,)
    ).fetchone()
    if row is None:
        # (Even one known only from messages to it that a cancel took away here: contacts
        # are only ever added, so that every node ends with the same ones.)
        conn.execute(
            "INSERT INTO peers (peer, display, first_seen_us, last_seen_us) VALUES (?, ?, ?, ?)",
            (peer, item.identity, item.first, item.last),
        )
        return None  # served back: the row may have been merged with one of ours before
    display, first, last = row
    if item.last is not None and (last is None or item.last > last):
        display, last = item.identity, item.last
    elif item.last == last and item.identity < display:
        display = item.identity
    first = min(first, item.first)
    if (display, first, last) != tuple(row):
        conn.execute(
            "UPDATE peers SET display = ?, first_seen_us = ?, last_seen_us = ? WHERE peer = ?",
            (display, first, last, peer),
        )
    return None


def _merge_pin(db: MessageDatabase, item: PinItem) -> tuple[str, str] | None:
    conn = db._conn
    peer = normalize_identity(item.identity)
    row = conn.execute(
        "SELECT pinned, version FROM pin_decisions WHERE peer = ? AND spki = ?", (peer, item.spki)
    ).fetchone()
    if row is not None:
        pinned, version = bool(row[0]), row[1]
        if item.version < version or (item.version == version and (item.pinned or not pinned)):
            return None  # ours is newer, or the same decision
    # The decision first: the pins triggers then see nothing new to record.
    conn.execute(
        "INSERT INTO pin_decisions (peer, spki, pinned, version) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (peer, spki) DO UPDATE SET pinned = excluded.pinned, "
        "version = excluded.version",
        (peer, item.spki, 1 if item.pinned else 0, item.version),
    )
    if item.pinned:
        conn.execute("INSERT OR IGNORE INTO pins (peer, spki) VALUES (?, ?)", (peer, item.spki))
        conn.execute("DELETE FROM key_changes WHERE peer = ? AND spki = ?", (peer, item.spki))
    else:
        conn.execute("DELETE FROM pins WHERE peer = ? AND spki = ?", (peer, item.spki))
    (rowid,) = conn.execute(
        "SELECT rowid FROM pin_decisions WHERE peer = ? AND spki = ?", (peer, item.spki)
    ).fetchone()
    return "p", str(rowid)


# -- own nodes ------------------------------------------------------------------------------


def node_seen(db: MessageDatabase, node: str, store: str, top: int, now: datetime) -> int:
    """
    Note own node C{node}'s hello (its store and feed top); returns the cursor to pull
    after: 0 when its store is not the one we read before (a new feed).
    """
    now_us = to_us(now)
    with db._write(durable=False) as conn:
        row = conn.execute("SELECT store, after FROM sync_nodes WHERE node = ?", (node,)).fetchone()
        after = int(row[1]) if row is not None and row[0] == store else 0
        conn.execute(
            """
            INSERT INTO sync_nodes (node, store, after, top, seen_us) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (node) DO UPDATE SET
                store = excluded.store, after = excluded.after, top = excluded.top,
                seen_us = excluded.seen_us
            """,
            (node, store, after, top, now_us),
        )
    return after


def own_nodes(db: MessageDatabase) -> list[NodeSync]:
    with db._read():
        rows = db._conn.execute(
            "SELECT node, store, after, top, seen_us, synced_us, items FROM sync_nodes "
            "ORDER BY node"
        ).fetchall()
    return [NodeSync(*row) for row in rows]


def feed_state(db: MessageDatabase) -> tuple[str, int]:
    with db._read():
        return store_id(db), feed_top(db)


class SyncStore:
    """The Deferred face of the functions above, on the message store's thread and queue."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    def feed_state(self) -> Deferred[tuple[str, int]]:
        return self.store._run(feed_state)

    def read_feed(
        self, after: int, limit: int, *, node: str, requester: str | None, out_files: bool = True
    ) -> Deferred[FeedPage]:
        return self.store._run(
            read_feed, after, limit, node=node, requester=requester, out_files=out_files
        )

    def apply(
        self,
        items: tuple[SyncItem, ...],
        *,
        node: str,
        source: str,
        store: str,
        next_cursor: int,
        now: datetime,
    ) -> Deferred[Applied]:
        return self.store._run(
            apply_items, items, node=node, source=source, store=store,
            next_cursor=next_cursor, now=now,
        )  # fmt: skip

    def node_seen(self, node: str, store: str, top: int, now: datetime) -> Deferred[int]:
        return self.store._run(node_seen, node, store, top, now)

    def own_nodes(self) -> Deferred[list[NodeSync]]:
        return self.store._run(own_nodes)

    def reload_pins(self) -> Deferred[None]:
        """After a batch changed pins: the pin cache takes the stored set again."""
        store = self.store

        def load(db: MessageDatabase) -> Any:
            return db.load_pins()

        return store._run(load).addCallback(lambda maps: store.pins._loaded(*maps))
