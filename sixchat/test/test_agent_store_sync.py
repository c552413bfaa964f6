"""
The store's side of own-device sync (L{sixchat.agent.store.sync}): the schema version 4
migration, the feed, the merge rules one by one, and a hypothesis state machine in which
three nodes of one identity deliver, receipt, read, cancel, pin and sync in arbitrary
interleavings and always converge to one state.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial import unittest

from sixchat._sqlite import migrate
from sixchat.agent.store import cipher, encryption, files, schema
from sixchat.agent.store import sync as ssync
from sixchat.agent.store.database import MessageDatabase
from sixchat.stanzas import Message
from sixchat.sync.stanzas import (
    CancelledItem,
    ContactItem,
    FileMeta,
    InItem,
    NodeEntry,
    OutItem,
    PinItem,
    SyncBatch,
)
from sixchat.test.test_agent_store_keyfile import FAST
from sixchat.xmlcodec import parse, serialize

BOB = "bob@example.com"
CAROL = "carol@Example.com"
T0 = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
SPKI = [bytes([i]) * 32 for i in range(3)]


def pull(src: MessageDatabase, src_node: str, dst: MessageDatabase, dst_node: str) -> int:
    """dst pulls src's whole feed after its cursor, in small batches; returns batches."""
    store, top = ssync.feed_state(src)
    after = ssync.node_seen(dst, src_node, store, top, T0)
    batches = 0
    while True:
        page = ssync.read_feed(src, after, 3, node=src_node, requester=dst_node, budget=2000)
        # through the wire format, as between agents
        batch = SyncBatch("p1", page.store, page.next, page.more, page.items)
        received = SyncBatch.from_element(parse(serialize(batch.to_element())))
        ssync.apply_items(
            dst, received.items, node=dst_node, source=src_node, store=received.store,
            next_cursor=received.next, now=T0,
        )  # fmt: skip
        batches += 1
        after = page.next
        if not page.more:
            return batches


def dump(db: MessageDatabase) -> dict[str, Any]:
    """Everything sync promises to make equal on every node."""
    conn = db._conn
    messages = set()
    for seq, direction, peer, mid, body, is_read, at_us, outcome in conn.execute(
        "SELECT seq, direction, peer, id, body, is_read, at_us, outcome FROM messages"
    ):
        # attempts (queued -> sent) stay local: only final states travel
        nodes = frozenset(
            (node, "queued" if state == "sent" else state)
            for node, state in conn.execute(
                "SELECT node, state FROM deliveries WHERE msg = ?", (seq,)
            )
        )
        if direction == "in":
            messages.add((direction, peer, mid, body, is_read, at_us, None, nodes))
        else:
            messages.add((direction, peer, mid, body, 1, at_us, outcome, nodes))
    # The first dealing with a contact one only wrote to is the one exception: a cancel that
    # takes the contact away with its last message (MessageDatabase.cancel) is not news, so
    # a contact queued to again later may keep an earlier first dealing on another node.
    peers = {
        (peer, display, first if last is not None else None, last)
        for peer, display, first, last in conn.execute(
            "SELECT peer, display, first_seen_us, last_seen_us FROM peers"
        )
    }
    pins = set(conn.execute("SELECT peer, spki FROM pins"))
    # Outgoing files: what their offer carries (the bytes and where they are stay local).
    out_files = set(
        conn.execute(
            "SELECT peer, id, name, size, sha256, mime FROM transfers WHERE direction = 'out' "
            "AND id IN (SELECT id FROM messages WHERE direction = 'out')"
        )
    )
    return {"messages": messages, "peers": peers, "pins": pins, "files": out_files}


class MigrationTests(unittest.TestCase):
    def test_version_3_store_is_migrated_and_its_history_is_in_the_feed(self) -> None:
        path = os.path.join(self.mktemp() + ".sqlite")
        conn = sqlite3.connect(path, isolation_level=None)
        migrate(conn, schema.MIGRATIONS[:3], lambda v, k: RuntimeError())
        conn.execute(
            "INSERT INTO peers (peer, display, first_seen_us, last_seen_us) "
            "VALUES ('bob@example.com', 'bob@example.com', 1, 2)"
        )
        conn.execute(
            "INSERT INTO messages (direction, peer, peer_display, id, ts, body, at_us, is_read) "
            "VALUES ('in', 'bob@example.com', 'bob@example.com', 'm1', "
            "'2026-12-07T05:00:00.000Z', 'hi', 5, 0)"
        )
        conn.execute("INSERT INTO pins (peer, spki) VALUES ('bob@example.com', ?)", (SPKI[0],))
        conn.close()
        db = MessageDatabase(path)
        self.addCleanup(db.close)
        self.assertEqual(db.schema_version, 6)  # v4 (sync), v5 (sync_files), v6 (out files)
        page = ssync.read_feed(db, 0, 100, node="laptop")
        self.assertEqual(
            page.items,
            (
                ContactItem(BOB, 1, 2),
                InItem(BOB, "m1", "2026-12-07T05:00:00.000Z", 5, "hi"),
                PinItem(BOB, SPKI[0], True, 1),
            ),
        )
        self.assertEqual(len(ssync.store_id(db)), 32)

    def test_each_store_has_its_own_id(self) -> None:
        a, b = MessageDatabase(":memory:"), MessageDatabase(":memory:")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertNotEqual(ssync.store_id(a), ssync.store_id(b))


class EncryptedMigrationTests(unittest.TestCase):
    """The store may be SQLCipher-encrypted: version 4 comes to such a store too, and the
    feed's triggers survive encrypting a plain store (sqlcipher_export copies the schema)."""

    skip = None if cipher.available() else "SQLCipher (sqlcipher3) is not installed"

    def test_encrypted_version_3_store_is_migrated(self) -> None:
        path = self.mktemp() + ".sqlite"
        key = os.urandom(cipher.KEY_BYTES)
        conn = cipher.connect(path, key)
        migrate(conn, schema.MIGRATIONS[:3], lambda v, k: RuntimeError())
        conn.close()
        db = MessageDatabase(path, key)
        self.addCleanup(db.close)
        self.assertEqual(db.schema_version, 6)  # v4 (sync), v5 (sync_files), v6 (out files)
        queued = db.queue_outgoing(BOB, "secret", T0)
        page = ssync.read_feed(db, 0, 100, node="laptop")
        self.assertEqual([i.id for i in page.items if isinstance(i, OutItem)], [queued.id])

    def test_encrypting_a_version_4_store_keeps_the_feed_and_its_triggers(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "messages.sqlite")
        db = MessageDatabase(path)
        first = db.queue_outgoing(BOB, "one", T0)
        store = ssync.store_id(db)
        db.close()
        encryption.encrypt(data_dir, b"pw", FAST)
        key = encryption.unlock(data_dir, b"pw", "on")
        db = MessageDatabase(path, key)
        self.addCleanup(db.close)
        self.assertTrue(db.encrypted)
        self.assertEqual(ssync.store_id(db), store)
        second = db.queue_outgoing(BOB, "two", T0)
        page = ssync.read_feed(db, 0, 100, node="laptop")
        out = [i.id for i in page.items if isinstance(i, OutItem)]
        self.assertEqual(out, [first.id, second.id])


class FeedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.laptop = MessageDatabase(":memory:")
        self.home = MessageDatabase(":memory:")
        self.addCleanup(self.laptop.close)
        self.addCleanup(self.home.close)

    def test_nothing_changed_is_an_empty_page(self) -> None:
        store, top = ssync.feed_state(self.laptop)
        page = ssync.read_feed(self.laptop, top, 64, node="laptop")
        self.assertEqual((page.items, page.next, page.more), ((), top, False))

    def test_outgoing_message_joins_the_other_outbox_with_its_origin(self) -> None:
        queued = self.laptop.queue_outgoing(BOB, "hello", T0)
        self.laptop.add_targets(queued.id, ["phone"])
        pull(self.laptop, "laptop", self.home, "home")
        (pending,) = self.home.pending()
        self.assertEqual((pending.id, pending.body, pending.origin), (queued.id, "hello", "laptop"))
        self.assertEqual([n.node for n in pending.nodes], ["phone"])
        # Back on the laptop, the origin is itself again (NULL), not "laptop".
        pull(self.home, "home", self.laptop, "laptop")
        self.assertIsNone(self.laptop.outgoing(queued.id).origin)

    def test_a_receipt_anywhere_marks_it_delivered_everywhere(self) -> None:
        queued = self.laptop.queue_outgoing(BOB, "hello", T0)
        self.laptop.add_targets(queued.id, ["phone"])
        pull(self.laptop, "laptop", self.home, "home")
        self.home.mark_delivered(queued.id, "phone", T0 + timedelta(seconds=5))
        pull(self.home, "home", self.laptop, "laptop")
        status = self.laptop.status(queued.id)
        self.assertEqual((status.state, status.owed_nodes), ("delivered", ()))
        self.assertEqual(self.laptop.pending(), [])

    def test_changes_from_a_node_are_not_served_back_to_it(self) -> None:
        self.laptop.queue_outgoing(BOB, "hello", T0)
        pull(self.laptop, "laptop", self.home, "home")
        store, top = ssync.feed_state(self.home)
        self.assertGreater(top, 0)
        page = ssync.read_feed(self.home, 0, 64, node="home", requester="laptop")
        # the message is not; the contact (which home may have merged with its own) is
        self.assertEqual(
            (page.items, page.next, page.more), ((ContactItem(BOB, T0_US),), top, False)
        )
        # ... but to a third node, they are.
        page = ssync.read_feed(self.home, 0, 64, node="home", requester="phone")
        self.assertEqual({type(i) for i in page.items}, {OutItem, ContactItem})

    def test_cursor_moves_with_the_batch_and_a_new_store_resets_it(self) -> None:
        self.laptop.queue_outgoing(BOB, "one", T0)
        pull(self.laptop, "laptop", self.home, "home")
        store, top = ssync.feed_state(self.laptop)
        self.assertEqual(ssync.node_seen(self.home, "laptop", store, top, T0), top)
        self.assertEqual(ssync.node_seen(self.home, "laptop", "f" * 32, top, T0), 0)
        (node,) = ssync.own_nodes(self.home)
        self.assertEqual((node.node, node.store, node.after), ("laptop", "f" * 32, 0))

    def test_batches_are_bounded(self) -> None:
        for i in range(10):
            self.laptop.queue_outgoing(BOB, "x" * 500 + str(i), T0)
        store, _ = ssync.feed_state(self.laptop)
        page = ssync.read_feed(self.laptop, 0, 256, node="laptop", budget=2000)
        self.assertTrue(page.more)
        self.assertLessEqual(len(page.items), 4)
        self.assertEqual(pull(self.laptop, "laptop", self.home, "home") > 1, True)
        self.assertEqual(len(self.home.pending()), 10)

    def test_applying_a_batch_twice_changes_nothing(self) -> None:
        queued = self.laptop.queue_outgoing(BOB, "hello", T0)
        self.laptop.store_incoming(BOB, Message("m1", "2026-12-07T05:00:00.000Z", "hi"), T0)
        page = ssync.read_feed(self.laptop, 0, 64, node="laptop")
        for _ in range(2):
            applied = ssync.apply_items(
                self.home, page.items, node="home", source="laptop", store=page.store,
                next_cursor=page.next, now=T0,
            )  # fmt: skip
        self.assertEqual(applied.changed, 0)
        self.assertEqual(applied.received, [])
        self.assertEqual(dump(self.home)["messages"], dump(self.laptop)["messages"])
        self.assertEqual(self.home.outgoing(queued.id).origin, "laptop")

    def test_received_message_is_stored_once_and_read_state_travels(self) -> None:
        message = Message("m1", "2026-12-07T05:00:00.000Z", "hi")
        self.laptop.store_incoming(BOB, message, T0 + timedelta(seconds=3))
        self.home.store_incoming(BOB, message, T0 + timedelta(seconds=1))
        pull(self.laptop, "laptop", self.home, "home")
        self.laptop.mark_read(BOB)
        pull(self.home, "home", self.laptop, "laptop")
        pull(self.laptop, "laptop", self.home, "home")
        for db in (self.laptop, self.home):
            (entry,) = db.history(BOB)
            self.assertEqual((entry.read, entry.at), (True, T0 + timedelta(seconds=1)))

    def test_cancel_travels_but_a_receipt_wins(self) -> None:
        one = self.laptop.queue_outgoing(BOB, "one", T0)
        two = self.laptop.queue_outgoing(BOB, "two", T0)
        pull(self.laptop, "laptop", self.home, "home")
        self.home.mark_delivered(two.id, "phone", T0)
        self.laptop.cancel(one.id)
        self.laptop.cancel(two.id)
        pull(self.laptop, "laptop", self.home, "home")
        pull(self.home, "home", self.laptop, "laptop")
        for db in (self.laptop, self.home):
            self.assertIsNone(db.outgoing(one.id))
            self.assertEqual(db.status(two.id).state, "delivered")
        # The cancelled one never comes back from a third node that still had it.
        phone = MessageDatabase(":memory:")
        self.addCleanup(phone.close)
        ssync.apply_items(
            phone, [OutItem(one.id, BOB, one.ts, 1, "one", origin="laptop")], node="phone",
            source="laptop", store="0" * 32, next_cursor=1, now=T0,
        )  # fmt: skip
        pull(phone, "phone", self.home, "home")
        self.assertIsNone(self.home.outgoing(one.id))

    def test_outcome_given_up_elsewhere_is_given_up_here(self) -> None:
        queued = self.laptop.queue_outgoing(BOB, "one", T0)
        self.laptop.add_targets(queued.id, ["phone", "laptop"])
        pull(self.laptop, "laptop", self.home, "home")
        self.laptop.mark_failed(queued.id, None, "declined", T0)
        pull(self.laptop, "laptop", self.home, "home")
        status = self.home.status(queued.id)
        self.assertEqual((status.state, status.owed_nodes), ("failed", ()))
        self.assertEqual(self.home.pending(), [])

    def test_another_message_under_a_known_id_is_ignored(self) -> None:
        queued = self.home.queue_outgoing(BOB, "real", T0)
        forged = OutItem(
            queued.id, BOB, queued.ts, 1, "forged", nodes=(NodeEntry("x", "delivered", 1),)
        )
        ssync.apply_items(
            self.home, [forged], node="home", source="laptop", store="0" * 32,
            next_cursor=1, now=T0,
        )  # fmt: skip
        self.assertEqual(self.home.outgoing(queued.id).body, "real")
        self.assertEqual(self.home.status(queued.id).state, "queued")

    def test_pin_decisions_newer_version_wins_and_forgetting_wins_ties(self) -> None:
        self.laptop.add_pins(BOB, [SPKI[0]])
        pull(self.laptop, "laptop", self.home, "home")
        self.assertEqual(self.home.load_pins()[0], {BOB: {SPKI[0]}})
        self.home.forget_pins(BOB, [SPKI[0]], T0)
        self.laptop.forget_pins(BOB, [SPKI[0]], T0)
        self.laptop.add_pins(BOB, [SPKI[0]])  # trusted again: version 3 beats home's 2
        pull(self.home, "home", self.laptop, "laptop")
        pull(self.laptop, "laptop", self.home, "home")
        self.assertEqual(self.home.load_pins()[0], {BOB: {SPKI[0]}})
        self.assertEqual(self.laptop.load_pins()[0], {BOB: {SPKI[0]}})

    def file(self, db: MessageDatabase, file_id: str = "f1", name: str = "a.txt") -> Any:
        record = files.TransferRecord(
            "out", BOB, BOB, file_id, name, 3, b"\x01" * 32, "text/plain", "/tmp/a.txt", None,
            0, 0, "offered", None, T0, T0,
        )  # fmt: skip
        files.queue_file(db, record, T0)
        return record

    def test_an_outgoing_file_travels_as_a_file_without_its_bytes(self) -> None:
        self.file(self.laptop)
        text = self.laptop.queue_outgoing(BOB, "text", T0)
        page = ssync.read_feed(self.laptop, 0, 64, node="laptop")
        [item] = [i for i in page.items if isinstance(i, OutItem) and i.id == "f1"]
        self.assertEqual(item.file, FileMeta("a.txt", 3, b"\x01" * 32, "text/plain"))
        self.assertEqual(item.body, "[file] a.txt (3 bytes)")
        pull(self.laptop, "laptop", self.home, "home")
        # the history line and the outbox entry are on home too, and the id is a file there
        self.assertEqual(sorted(m.id for m in self.home.pending()), sorted(["f1", text.id]))
        self.assertEqual(self.home.outgoing("f1").origin, "laptop")
        got = files.get(self.home, "out", BOB, "f1")
        assert got is not None
        self.assertEqual(
            (got.name, got.size, got.sha256, got.mime, got.path, got.state),
            ("a.txt", 3, b"\x01" * 32, "text/plain", None, "synced"),
        )
        known = files.outgoing_files(self.home)
        self.assertEqual((known.ids, known.held), ({"f1"}, set()))  # no bytes: not held
        self.assertEqual(files.outgoing_files(self.laptop).held, {"f1"})
        # and back on the laptop nothing changes: its own row keeps its path
        pull(self.home, "home", self.laptop, "laptop")
        mine = files.get(self.laptop, "out", BOB, "f1")
        assert mine is not None
        self.assertEqual((mine.path, mine.state), ("/tmp/a.txt", "offered"))

    def test_a_node_that_does_not_take_outgoing_files_never_gets_them(self) -> None:
        """
        A node whose hello did not say C{out-files="1"} (an earlier version) would take a
        file's C{out} item for a text message: the feed leaves it out, and its cursor passes.
        """
        self.file(self.laptop)
        text = self.laptop.queue_outgoing(BOB, "text", T0)
        page = ssync.read_feed(self.laptop, 0, 64, node="laptop", out_files=False)
        outs = [i.id for i in page.items if isinstance(i, OutItem)]
        self.assertEqual(outs, [text.id])
        self.assertEqual(page.next, ssync.feed_state(self.laptop)[1])
        self.assertFalse(page.more)
        with_files = ssync.read_feed(self.laptop, 0, 64, node="laptop")
        self.assertEqual(
            sorted(i.id for i in with_files.items if isinstance(i, OutItem)),
            sorted(["f1", text.id]),
        )

    def test_merge_tells_which_new_outgoing_messages_are_files(self) -> None:
        self.file(self.laptop)
        page = ssync.read_feed(self.laptop, 0, 64, node="laptop")
        applied = ssync.apply_items(
            self.home, page.items, node="home", source="laptop", store=page.store,
            next_cursor=page.next, now=T0,
        )  # fmt: skip
        self.assertEqual(applied.files, [(BOB, "f1")])
        again = ssync.apply_items(
            self.home, page.items, node="home", source="laptop", store=page.store,
            next_cursor=page.next, now=T0,
        )  # fmt: skip
        self.assertEqual(again.files, [])

    def merge(self, db: MessageDatabase, item: OutItem) -> ssync.Applied:
        return ssync.apply_items(
            db, [item], node="home", source="laptop", store="0" * 32, next_cursor=1, now=T0,
        )  # fmt: skip

    def test_a_file_whose_body_is_not_its_history_line_is_ignored(self) -> None:
        meta = FileMeta("a.txt", 3, b"\x01" * 32)
        item = OutItem("f9", BOB, "2026-12-07T05:00:00.000Z", T0_US, "send me as text", file=meta)
        self.merge(self.home, item)
        self.assertIsNone(self.home.outgoing("f9"))
        self.assertIsNone(files.get(self.home, "out", BOB, "f9"))

    def test_a_message_here_is_never_made_a_file_nor_a_file_a_message(self) -> None:
        text = self.home.queue_outgoing(BOB, "[file] a.txt (3 bytes)", T0)
        meta = FileMeta("a.txt", 3, b"\x01" * 32)
        item = OutItem(text.id, BOB, text.ts, T0_US, text.body, file=meta)
        applied = self.merge(self.home, item)
        self.assertEqual((applied.files, applied.outgoing), ([], []))
        self.assertIsNone(files.get(self.home, "out", BOB, text.id))
        # the other way round: a file here, an item saying it is a text message
        self.file(self.home, "f2")
        self.merge(self.home, OutItem("f2", BOB, text.ts, T0_US, "[file] a.txt (3 bytes)"))
        self.assertEqual(files.outgoing_files(self.home).ids, {"f2"})
        # and a spooled copy (bytes first) with no message yet: a text item does not take it
        spooled = files.TransferRecord(
            "out", BOB, BOB, "f3", "a.txt", 3, b"\x01" * 32, None, "/spool/a.txt", None, 3, 0,
            "spooled", None, T0, T0,
        )  # fmt: skip
        files.put(self.home, spooled)
        self.merge(self.home, OutItem("f3", BOB, text.ts, T0_US, "[file] a.txt (3 bytes)"))
        self.assertIsNone(self.home.outgoing("f3"))
        # its file item does, and the copy keeps its path (held here)
        applied = self.merge(
            self.home, OutItem("f3", BOB, text.ts, T0_US, "[file] a.txt (3 bytes)", file=meta)
        )
        self.assertEqual(applied.files, [(BOB, "f3")])
        self.assertIsNotNone(self.home.outgoing("f3"))
        got = files.get(self.home, "out", BOB, "f3")
        assert got is not None
        self.assertEqual((got.path, got.state), ("/spool/a.txt", "spooled"))
        self.assertIn("f3", files.outgoing_files(self.home).held)

    def test_a_text_no_xml_can_carry_is_skipped_not_a_stuck_feed(self) -> None:
        self.laptop.queue_outgoing(BOB, "bad \x01 text", T0)
        good = self.laptop.queue_outgoing(BOB, "good", T0)
        page = ssync.read_feed(self.laptop, 0, 64, node="laptop")
        self.assertEqual(page.skipped, 1)
        self.assertEqual([i.id for i in page.items if isinstance(i, OutItem)], [good.id])
        self.assertFalse(page.more)

    def test_cancelled_id_without_the_message_is_relayed(self) -> None:
        ssync.apply_items(
            self.home, [CancelledItem("gone")], node="home", source="laptop", store="0" * 32,
            next_cursor=1, now=T0,
        )  # fmt: skip
        page = ssync.read_feed(self.home, 0, 64, node="home", requester="phone")
        self.assertEqual(page.items, (CancelledItem("gone"),))


NODES = ("laptop", "home", "phone")
RECIPIENTS = ("bphone", "blaptop")
SENDERS = (BOB, CAROL)


class ConvergenceMachine(RuleBasedStateMachine):
    """
    Three nodes of one identity; any interleaving of queueing, delivering, receipts,
    failures, expiry, cancels, receiving, reading, pin decisions and pairwise syncs. After
    every pair has synced both ways (twice), all three hold the same state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dbs = {n: MessageDatabase(":memory:") for n in NODES}
        self.ids: list[str] = []
        #: (message id, recipient node) receipted on some node: the model of what must last.
        self.receipts: set[tuple[str, str]] = set()
        self.clock = T0
        self.count = 0
        #: Ids queued as files: a file on every node that has it, never a text message.
        self.file_ids: set[str] = set()

    def now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def teardown(self) -> None:
        for db in self.dbs.values():
            db.close()

    nodes = st.sampled_from(NODES)

    @rule(node=nodes, recipients=st.lists(st.sampled_from(RECIPIENTS), max_size=2))
    def queue(self, node: str, recipients: list[str]) -> None:
        self.count += 1
        queued = self.dbs[node].queue_outgoing(BOB, f"m{self.count}", self.now())
        self.dbs[node].add_targets(queued.id, recipients)
        self.ids.append(queued.id)

    @rule(node=nodes, recipients=st.lists(st.sampled_from(RECIPIENTS), max_size=2))
    def queue_file(self, node: str, recipients: list[str]) -> None:
        self.count += 1
        fid = f"file{self.count}"
        now = self.now()
        record = files.TransferRecord(
            "out", BOB, BOB, fid, f"f{self.count}.bin", self.count, bytes([self.count % 256]) * 32,
            None, f"/src/{fid}", None, 0, 0, "offered", None, now, now,
        )  # fmt: skip
        files.queue_file(self.dbs[node], record, now)
        self.dbs[node].add_targets(fid, recipients)
        self.ids.append(fid)
        self.file_ids.add(fid)

    @precondition(lambda self: self.ids)
    @rule(node=nodes, index=st.integers(0, 100), recipient=st.sampled_from(RECIPIENTS),
          what=st.sampled_from(["delivered", "failed", "target", "attempt"]))  # fmt: skip
    def deliver(self, node: str, index: int, recipient: str, what: str) -> None:
        mid = self.ids[index % len(self.ids)]
        db = self.dbs[node]
        if what == "delivered":
            if db.mark_delivered(mid, recipient, self.now()) is not None:
                self.receipts.add((mid, recipient))
        elif what == "failed":
            db.mark_failed(mid, recipient, "declined", self.now())
        elif what == "target":
            db.add_targets(mid, [recipient])
        else:
            db.mark_attempt(mid, recipient, self.now(), None)

    @precondition(lambda self: self.ids)
    @rule(node=nodes, index=st.integers(0, 100))
    def cancel(self, node: str, index: int) -> None:
        self.dbs[node].cancel(self.ids[index % len(self.ids)])

    @rule(node=nodes)
    def expire(self, node: str) -> None:
        self.dbs[node].expire(self.now(), timedelta(seconds=5))

    @rule(node=nodes, sender=st.sampled_from(SENDERS), n=st.integers(0, 3))
    def receive(self, node: str, sender: str, n: int) -> None:
        message = Message(f"r{n}", "2026-12-07T05:00:00.000Z", f"text {n}")
        self.dbs[node].store_incoming(sender, message, self.now())

    @rule(node=nodes, sender=st.sampled_from(SENDERS))
    def read(self, node: str, sender: str) -> None:
        self.dbs[node].mark_read(sender)

    @rule(node=nodes, sender=st.sampled_from(SENDERS))
    def touch(self, node: str, sender: str) -> None:
        self.dbs[node].touch_contact(sender, self.now())

    @rule(node=nodes, spki=st.sampled_from(SPKI), pin=st.booleans())
    def decide(self, node: str, spki: bytes, pin: bool) -> None:
        if pin:
            self.dbs[node].add_pins(BOB, [spki])
        else:
            self.dbs[node].forget_pins(BOB, [spki], self.now())

    @rule(src=nodes, dst=nodes)
    def sync(self, src: str, dst: str) -> None:
        if src != dst:
            pull(self.dbs[src], src, self.dbs[dst], dst)

    @invariant()
    def local_rules_hold(self) -> None:
        for db in self.dbs.values():
            for message in db.pending():
                # a message given up owes nobody
                self.assertIn(message.state, ("queued", "sent", "delivered"))
            known = files.outgoing_files(db).ids
            for fid in self.file_ids:
                if db.outgoing(fid) is not None:
                    self.assertIn(fid, known)  # a file's id is never a text message's
            for mid in set(self.ids) - self.file_ids:
                assert mid not in known, mid

    def assertIn(self, a: Any, b: Any) -> None:  # noqa: N802 - the unittest spelling
        assert a in b, (a, b)

    def converge(self) -> None:
        for _ in range(2):
            for src in NODES:
                for dst in NODES:
                    if src != dst:
                        pull(self.dbs[src], src, self.dbs[dst], dst)
        states = [dump(self.dbs[n]) for n in NODES]
        for state in states[1:]:
            assert state == states[0], (states[0], state)
        # and a receipt, wherever it came, is never lost nor cancelled away
        for mid, recipient in self.receipts:
            for db in self.dbs.values():
                status = db.status(mid)
                assert status is not None, (mid, "gone")
                states_of = {n.node: n.state for n in status.nodes}
                assert states_of.get(recipient) == "delivered", (mid, recipient, states_of)
                assert status.state == "delivered", status

    @rule()
    def converged(self) -> None:
        self.converge()


class ConvergenceTests(unittest.SynchronousTestCase):
    def test_any_interleaving_converges(self) -> None:
        run_state_machine_as_test(
            ConvergenceMachine,
            settings=settings(
                max_examples=int(os.environ.get("SIXCHAT_FUZZ_EXAMPLES", "40")),
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
