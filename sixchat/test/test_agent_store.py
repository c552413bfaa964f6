"""
Tests for L{sixchat.agent.store.store}, the Deferred face of the agent store: the user
agent's durable messages, outbox and contacts (spec §8.1, §8.2, §11.16), group commit, and
crash safety.

These drive the Deferred API (L{MessageStore}) on a real file and its real thread; the crash
test SIGKILLs a child process that writes through the Deferred API and checks what the file
holds afterwards. The synchronous core's own tests (batches, the property test of the
outbox rules) are in L{sixchat.test.test_agent_store_database}, the pins' in
L{sixchat.test.test_agent_store_pins}.
"""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sixchat.agent.store import (
    DEFAULT_FILENAME,
    DELIVERED,
    EXPIRED,
    FAILED,
    INCOMING,
    OUTGOING,
    QUEUED,
    RECEIVED,
    SCHEMA_VERSION,
    SENT,
    SNIPPET_CHARS,
    MessageDatabase,
    MessageIdConflict,
    MessageStore,
    SchemaTooNewError,
    StoreClosedError,
)
from sixchat.stanzas import Message, format_timestamp, is_valid_id
from sixchat.test.processes import child_env

T0 = datetime(2026, 11, 26, 0, 25, 21, 123456, tzinfo=UTC)
SEC = timedelta(seconds=1)
TS = "2026-11-26T00:25:21.123Z"
KEY1 = bytes(range(32))
KEY2 = bytes(range(1, 33))
KEY3 = bytes(range(2, 34))

Gen = Generator[defer.Deferred[Any], Any, None]


def msg(mid: str, body: str = "hello", **kw: Any) -> Message:
    return Message(mid, TS, body, **kw)


class StoreTestCase(TestCase):
    """A fresh store in a temporary data directory, closed after each test."""

    def setUp(self) -> defer.Deferred[None]:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, DEFAULT_FILENAME)
        self.store = self.make_store()
        return self.store.open()

    def make_store(self) -> MessageStore:
        store = MessageStore(self.path, reactor)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def reopen(self) -> Gen:
        """Close the store and open the same file again, as after a restart."""
        yield self.store.close()
        self.store = self.make_store()
        yield self.store.open()


# -- lifecycle -------------------------------------------------------------------------------


class LifecycleTests(StoreTestCase):
    def test_file_is_private_wal_and_versioned(self) -> None:
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        self.assertEqual(mode, 0o600)
        db = MessageDatabase(self.path)
        try:
            self.assertEqual(db.pragma("journal_mode"), "wal")
            self.assertEqual(db.schema_version, SCHEMA_VERSION)
            self.assertEqual(db.pragma("foreign_keys"), 1)
            self.assertEqual(db.pragma("synchronous"), 2)  # FULL
        finally:
            db.close()

    @defer.inlineCallbacks
    def test_calls_need_an_open_store(self) -> Gen:
        closed = MessageStore(os.path.join(self.dir, "other.sqlite"), reactor)
        yield self.assertFailure(closed.pending(), StoreClosedError)
        self.assertRaises(StoreClosedError, closed.pins.add, "bob@example.com", KEY1)
        yield self.store.close()
        yield self.assertFailure(
            self.store.store_incoming("bob@example.com", msg("a"), T0), StoreClosedError
        )
        yield self.store.close()  # closing twice is harmless

    @defer.inlineCallbacks
    def test_open_twice_fails(self) -> Gen:
        yield self.assertFailure(self.store.open(), Exception)

    @defer.inlineCallbacks
    def test_newer_schema_refused(self) -> Gen:
        yield self.store.close()
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        conn.commit()
        conn.close()
        store = MessageStore(self.path, reactor)
        failure = yield self.assertFailure(store.open(), SchemaTooNewError)
        self.assertIn("upgrade sixchat", str(failure))
        self.assertFalse(store.is_open)
        self.assertIsNone(store._pool)  # the thread was stopped

    def test_reopening_keeps_the_schema(self) -> defer.Deferred[None]:
        d = self.reopen()

        def check(_: object) -> None:
            db = MessageDatabase(self.path)
            self.assertEqual(db.schema_version, SCHEMA_VERSION)
            db.close()

        return d.addCallback(check)

    @defer.inlineCallbacks
    def test_close_waits_for_earlier_calls(self) -> Gen:
        calls = [self.store.store_incoming("bob@example.com", msg(f"m{i}"), T0) for i in range(50)]
        self.store.pins.add("bob@example.com", KEY1)
        closed = self.store.close()
        results = yield defer.gatherResults(calls)
        yield closed
        self.assertEqual(results, [True] * 50)
        self.store = self.make_store()
        yield self.store.open()
        history = yield self.store.history(limit=1000)
        self.assertEqual([e.id for e in history], [f"m{i}" for i in range(50)])
        self.assertEqual(self.store.pins.known("bob@example.com"), {KEY1})

    @defer.inlineCallbacks
    def test_shutdown_trigger(self) -> Gen:
        """A store that is never closed still lets the reactor shut down (trigger set)."""
        self.assertIsNotNone(self.store._trigger)
        yield self.store.close()
        self.assertIsNone(self.store._trigger)


# -- incoming --------------------------------------------------------------------------------


class IncomingTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_new_message_stored_with_every_field(self) -> Gen:
        message = msg("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", "Hello, Bob", thread="t-1", reply_to="x9")
        new = yield self.store.store_incoming("alice@Example.COM", message, T0)
        self.assertIs(new, True)
        [entry] = yield self.store.history()
        self.assertEqual(entry.direction, INCOMING)
        self.assertEqual(entry.peer, "alice@example.com")
        self.assertEqual(entry.peer_display, "alice@Example.COM")
        self.assertEqual(
            (entry.id, entry.ts, entry.body, entry.thread, entry.reply_to),
            ("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", TS, "Hello, Bob", "t-1", "x9"),
        )
        self.assertEqual(entry.at, T0)
        self.assertEqual(entry.at.tzinfo, UTC)
        self.assertFalse(entry.read)
        self.assertEqual(entry.state, RECEIVED)
        self.assertEqual((entry.delivered_nodes, entry.total_nodes), (0, 0))

    @defer.inlineCallbacks
    def test_duplicate_stored_once(self) -> Gen:
        first = yield self.store.store_incoming("alice@example.com", msg("a1", "one"), T0)
        # Same sender (domain case differs: same identity, §3), same id, other content.
        again = yield self.store.store_incoming("alice@EXAMPLE.com", msg("a1", "changed"), T0 + SEC)
        self.assertEqual((first, again), (True, False))
        history = yield self.store.history()
        self.assertEqual([(e.id, e.body, e.at) for e in history], [("a1", "one", T0)])

    @defer.inlineCallbacks
    def test_same_id_other_sender_stored(self) -> Gen:
        a = yield self.store.store_incoming("alice@example.com", msg("same"), T0)
        b = yield self.store.store_incoming("carol@example.com", msg("same"), T0)
        # Local parts compare byte for byte (§3): another identity.
        c = yield self.store.store_incoming("Alice@example.com", msg("same"), T0)
        self.assertEqual((a, b, c), (True, True, True))
        history = yield self.store.history()
        self.assertEqual(
            [e.peer for e in history],
            ["alice@example.com", "carol@example.com", "Alice@example.com"],
        )

    @defer.inlineCallbacks
    def test_our_outgoing_id_does_not_collide(self) -> Gen:
        """Incoming ids are per sender; our own ids are another namespace."""
        yield self.store.queue_outgoing("alice@example.com", "hi", T0, id="x1")
        new = yield self.store.store_incoming("alice@example.com", msg("x1"), T0)
        self.assertTrue(new)

    @defer.inlineCallbacks
    def test_bad_sender(self) -> Gen:
        yield self.assertFailure(self.store.store_incoming("nobody", msg("a"), T0), ValueError)

    @defer.inlineCallbacks
    def test_naive_time_is_utc(self) -> Gen:
        yield self.store.store_incoming("a@example.com", msg("a"), T0.replace(tzinfo=None))
        [entry] = yield self.store.history()
        self.assertEqual(entry.at, T0)

    @defer.inlineCallbacks
    def test_many_in_flight_all_committed_in_order(self) -> Gen:
        fired: list[int] = []
        calls = []
        for i in range(300):
            sender = f"peer{i % 3}@example.com"
            d = self.store.store_incoming(sender, msg(f"c{i}", f"body {i}"), T0)
            d.addCallback(lambda new, i=i: fired.append(i) or new)
            calls.append(d)
        # A duplicate in flight alongside the first copy.
        dup = self.store.store_incoming("peer0@example.com", msg("c0", "again"), T0)
        results = yield defer.gatherResults(calls)
        self.assertEqual(results, [True] * 300)
        self.assertIs((yield dup), False)
        self.assertEqual(fired, list(range(300)))
        history = yield self.store.history(limit=1000)
        self.assertEqual([e.id for e in history], [f"c{i}" for i in range(300)])
        self.assertEqual([e.body for e in history], [f"body {i}" for i in range(300)])
        seqs = [e.seq for e in history]
        self.assertEqual(seqs, sorted(seqs))
        # Committed: another connection sees every row.
        conn = sqlite3.connect(self.path)
        try:
            (count,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        finally:
            conn.close()
        self.assertEqual(count, 300)


class GroupCommitTests(StoreTestCase):
    """Frequent writes made while the store's thread is busy share one transaction."""

    @defer.inlineCallbacks
    def test_calls_made_together_share_transactions(self) -> Gen:
        calls = [self.store.store_incoming("bob@example.com", msg(f"g{i}"), T0) for i in range(200)]
        calls += [
            self.store.queue_outgoing("bob@example.com", f"reply {i}", T0) for i in range(100)
        ]
        results = yield defer.gatherResults(calls)
        self.assertEqual(results[:200], [True] * 200)
        self.assertEqual([m.body for m in results[200:]], [f"reply {i}" for i in range(100)])
        self.assertEqual(self.store.batched_calls, 300)
        self.assertLess(self.store.batches, 20)  # one per thread hand-over, not one per call

    @defer.inlineCallbacks
    def test_a_failing_call_is_rolled_back_alone(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "first", T0, id="x" * 32)
        before = self.store.store_incoming("bob@example.com", msg("a1"), T0)
        conflict = self.store.queue_outgoing("bob@example.com", "other", T0, id="x" * 32)
        bad = self.store.store_incoming("no-at-sign", msg("a2"), T0)
        after = self.store.store_incoming("bob@example.com", msg("a3"), T0)
        self.assertIs((yield before), True)
        yield self.assertFailure(conflict, MessageIdConflict)
        yield self.assertFailure(bad, ValueError)
        self.assertIs((yield after), True)
        history = yield self.store.history(limit=10)
        self.assertEqual(sorted(e.id for e in history if e.direction == INCOMING), ["a1", "a3"])
        outgoing = yield self.store.outgoing("x" * 32)
        self.assertEqual(outgoing.body, "first")

    @defer.inlineCallbacks
    def test_other_calls_keep_their_place(self) -> Gen:
        queued = yield self.store.queue_outgoing("bob@example.com", "hi", T0)
        fired: list[str] = []
        one = self.store.mark_attempt(queued.id, "n1", T0, T0 + SEC)
        two = self.store.add_targets(queued.id, ["n2"])  # not batched: a barrier
        three = self.store.mark_delivered(queued.id, "n1", T0 + SEC)
        for name, d in (("one", one), ("two", two), ("three", three)):
            d.addCallback(lambda result, name=name: fired.append(name) or result)
        yield defer.gatherResults([one, two, three])
        self.assertEqual(fired, ["one", "two", "three"])
        status = yield self.store.status(queued.id)
        self.assertEqual(status.state, DELIVERED)
        self.assertEqual(status.total_nodes, 2)

    @defer.inlineCallbacks
    def test_on_written_comes_between_the_commit_and_the_fsync(self) -> Gen:
        # The outbox may start sending once the row is committed (crash-safe); the caller
        # learns "queued" only once the write-ahead log is fsynced.
        import threading

        order: list[str] = []
        told = threading.Event()
        real_sync = MessageDatabase.sync

        def sync(db: MessageDatabase) -> None:
            # The fsync waits for the reactor to have been told: on_written does not wait
            # for the disk.
            order.append("sync after written" if told.wait(10) else "sync first")
            real_sync(db)

        self.patch(MessageDatabase, "sync", sync)
        owed: list[Any] = []

        def written(pending: Any) -> None:
            order.append("written")
            owed.append(pending)
            told.set()

        older = yield self.store.queue_outgoing("bob@example.com", "first", T0)
        d = self.store.queue_outgoing("bob@example.com", "second", T0 + SEC, on_written=written)
        d.addCallback(lambda queued: order.append("fired") or queued)
        queued = yield d
        self.assertEqual(order, ["written", "sync after written", "fired"])
        [pending] = owed
        self.assertEqual([m.id for m in pending], [older.id, queued.id])
        db = MessageDatabase(self.path)  # another connection sees it committed
        try:
            self.assertIsNotNone(db.outgoing(queued.id))
        finally:
            db.close()

    @defer.inlineCallbacks
    def test_on_written_reads_once_per_recipient_and_batch(self) -> Gen:
        # A burst of sends must not read the (growing) outbox once per message.
        reads: list[str] = []
        real = MessageDatabase.pending

        def pending(db: MessageDatabase, now: Any = None, to: Any = None) -> Any:
            reads.append(to)
            return real(db, now, to=to)

        self.patch(MessageDatabase, "pending", pending)
        told: list[Any] = []
        batches = self.store.batches
        calls = [
            self.store.queue_outgoing(to, f"m{i}", T0, on_written=told.append)
            for i in range(100)
            for to in ("bob@example.com", "Carol@example.com")
        ]
        yield defer.gatherResults(calls)
        self.assertEqual(len(told), 200)  # every caller told
        used = self.store.batches - batches
        self.assertLessEqual(len(reads), 2 * used)
        self.assertLess(used, 20)
        self.assertEqual(set(reads), {"bob@example.com", "Carol@example.com"})
        last = told[-1]
        self.assertEqual(len([m for m in last if m.to_display == "Carol@example.com"]), 100)

    @defer.inlineCallbacks
    def test_on_written_is_not_called_for_a_refused_message(self) -> Gen:
        told: list[Any] = []
        d = self.store.queue_outgoing("nobody", "hi", T0, on_written=told.append)
        yield self.assertFailure(d, ValueError)
        self.assertEqual(told, [])

    @defer.inlineCallbacks
    def test_on_written_without_a_list_when_the_read_fails(self) -> Gen:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        told: list[Any] = []
        self.patch(MessageDatabase, "pending", broken)
        queued = yield self.store.queue_outgoing(
            "bob@example.com", "hi", T0, on_written=told.append
        )
        self.assertEqual(told, [None])
        self.assertEqual(queued.state, "queued")

    @defer.inlineCallbacks
    def test_a_failed_commit_fails_every_call_of_the_batch(self) -> Gen:
        from sixchat.agent.store import store as store_module

        def broken(batch: Any, db: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        restore = self.patch(store_module._Batch, "run", broken)
        calls = [self.store.store_incoming("bob@example.com", msg(f"f{i}"), T0) for i in range(5)]
        for d in calls:
            yield self.assertFailure(d, sqlite3.OperationalError)
        restore.restore()
        self.assertIs((yield self.store.store_incoming("bob@example.com", msg("f0"), T0)), True)


# -- outgoing --------------------------------------------------------------------------------


class OutgoingTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_queue_defaults(self) -> Gen:
        out = yield self.store.queue_outgoing("Bob@Example.com", "hi Bob", T0)
        self.assertEqual(len(out.id), 32)
        self.assertEqual(out.id, out.id.lower())
        int(out.id, 16)
        self.assertTrue(is_valid_id(out.id))
        self.assertEqual(out.ts, format_timestamp(T0))
        self.assertEqual((out.to, out.to_display), ("Bob@example.com", "Bob@Example.com"))
        self.assertEqual((out.body, out.thread, out.reply_to), ("hi Bob", None, None))
        self.assertEqual(out.created_at, T0)
        self.assertEqual(out.state, QUEUED)
        self.assertEqual(out.nodes, ())
        self.assertEqual(out.stanza, Message(out.id, out.ts, "hi Bob"))
        other = yield self.store.queue_outgoing("Bob@example.com", "again", T0)
        self.assertNotEqual(other.id, out.id)
        pending = yield self.store.pending()
        self.assertEqual([m.id for m in pending], [out.id, other.id])
        self.assertEqual(pending[0], out)

    @defer.inlineCallbacks
    def test_cancel(self) -> Gen:
        """Queued and sent messages go, with a contact made only by them; others stay."""
        first = yield self.store.queue_outgoing("carol@Example.com", "typo", T0)
        second = yield self.store.queue_outgoing("carol@example.com", "typo 2", T0)
        yield self.store.mark_attempt(second.id, "n1", T0, T0 + SEC)  # sent, no receipt
        status = yield self.store.cancel(first.id)
        self.assertEqual((status.id, status.state), (first.id, QUEUED))
        contacts = yield self.store.contacts()
        self.assertEqual([c.identity for c in contacts], ["carol@example.com"])  # second's
        status = yield self.store.cancel(second.id)
        self.assertEqual(status.state, "sent")
        contacts = yield self.store.contacts()
        history = yield self.store.history()
        pending = yield self.store.pending()
        self.assertEqual((contacts, history, pending), ([], [], []))
        gone = yield self.store.cancel(second.id)
        self.assertIsNone(gone)
        # Delivered (to any node), expired or failed: nothing changes.
        done = yield self.store.queue_outgoing("bob@example.com", "got it", T0)
        yield self.store.mark_delivered(done.id, "n1", T0)
        status = yield self.store.cancel(done.id)
        self.assertEqual(status.state, "delivered")
        history = yield self.store.history()
        self.assertEqual([h.id for h in history], [done.id])
        # A contact that showed up itself stays when its queued message is cancelled.
        yield self.store.touch_contact("dave@example.com", T0)
        queued = yield self.store.queue_outgoing("dave@example.com", "hi", T0)
        yield self.store.cancel(queued.id)
        contacts = yield self.store.contacts()
        self.assertEqual(
            sorted(c.identity for c in contacts), ["bob@example.com", "dave@example.com"]
        )

    @defer.inlineCallbacks
    def test_queue_explicit_fields_idempotent(self) -> Gen:
        out = yield self.store.queue_outgoing(
            "bob@example.com", "re", T0, id="m-1", thread="th", reply_to="q_2"
        )
        self.assertEqual(out.stanza, Message("m-1", format_timestamp(T0), "re", "th", "q_2"))
        again = yield self.store.queue_outgoing(
            "bob@EXAMPLE.com", "re", T0 + SEC, id="m-1", thread="th", reply_to="q_2"
        )
        self.assertEqual(again, out)
        yield self.assertFailure(
            self.store.queue_outgoing("bob@example.com", "other", T0, id="m-1"),
            MessageIdConflict,
        )
        yield self.assertFailure(
            self.store.queue_outgoing("carol@example.com", "re", T0, id="m-1"),
            MessageIdConflict,
        )
        history = yield self.store.history()
        self.assertEqual(len(history), 1)

    @defer.inlineCallbacks
    def test_queue_refuses_bad_input(self) -> Gen:
        q = self.store.queue_outgoing
        yield self.assertFailure(q("bob@example.com", "x" * 32_769, T0), ValueError)
        yield self.assertFailure(q("bob@example.com", "x", T0, id="bad id"), ValueError)
        yield self.assertFailure(q("bob@example.com", "x", T0, id="x" * 65), ValueError)
        yield self.assertFailure(q("bob@example.com", "x", T0, reply_to=""), ValueError)
        yield self.assertFailure(q("bob", "x", T0), ValueError)
        ok = yield q("bob@example.com", "x" * 32_768, T0)
        self.assertEqual(len(ok.body), 32_768)
        contacts = yield self.store.contacts()
        self.assertEqual([c.identity for c in contacts], ["bob@example.com"])

    @defer.inlineCallbacks
    def test_add_targets(self) -> Gen:
        out = yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        added = yield self.store.add_targets("m1", ["n2", "n1", "n2"])
        self.assertEqual(added, ["n2", "n1"])
        added = yield self.store.add_targets("m1", ["n1", "n3"])
        self.assertEqual(added, ["n3"])
        added = yield self.store.add_targets("m1", [])
        self.assertEqual(added, [])
        status = yield self.store.status("m1")
        self.assertEqual([n.node for n in status.nodes], ["n1", "n2", "n3"])
        self.assertEqual({n.state for n in status.nodes}, {QUEUED})
        self.assertEqual((status.state, status.delivered_nodes, status.total_nodes), (QUEUED, 0, 3))
        self.assertEqual(status.owed_nodes, ("n1", "n2", "n3"))
        self.assertEqual(status.created_at, out.created_at)
        self.assertEqual((yield self.store.add_targets("unknown", ["n1"])), [])
        yield self.assertFailure(self.store.add_targets("m1", [""]), ValueError)

    @defer.inlineCallbacks
    def test_attempts_and_due(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1", "n2"])
        [p] = yield self.store.pending(T0)
        self.assertEqual(p.due_nodes(T0), ("n1", "n2"))
        status = yield self.store.mark_attempt("m1", "n1", T0, T0 + 30 * SEC)
        n1 = status.nodes[0]
        self.assertEqual((n1.state, n1.attempts, n1.last_attempt), (SENT, 1, T0))
        self.assertEqual(n1.next_attempt, T0 + 30 * SEC)
        self.assertEqual(status.state, SENT)
        # An attempt that did not reach n2 (dial failed): still queued, retried later.
        status = yield self.store.mark_attempt("m1", "n2", T0, T0 + 60 * SEC, sent=False)
        n2 = status.nodes[1]
        self.assertEqual((n2.state, n2.attempts, n2.next_attempt), (QUEUED, 1, T0 + 60 * SEC))
        self.assertEqual((yield self.store.pending(T0 + 10 * SEC)), [])
        [p] = yield self.store.pending(T0 + 30 * SEC)
        self.assertEqual(p.due_nodes(T0 + 30 * SEC), ("n1",))
        [p] = yield self.store.pending(T0 + 90 * SEC)
        self.assertEqual(p.due_nodes(T0 + 90 * SEC), ("n1", "n2"))
        [p] = yield self.store.pending()
        self.assertEqual(p.id, "m1")
        # An attempt to a node that was not a target makes it one.
        status = yield self.store.mark_attempt("m1", "n3", T0, None)
        self.assertEqual([n.node for n in status.nodes], ["n1", "n2", "n3"])
        self.assertIsNone((yield self.store.mark_attempt("nope", "n1", T0, None)))

    @defer.inlineCallbacks
    def test_delivery_per_node(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["phone", "laptop"])
        yield self.store.mark_attempt("m1", "phone", T0, T0 + SEC)
        status = yield self.store.mark_delivered("m1", "phone", T0 + 2 * SEC)
        self.assertEqual(status.state, DELIVERED)
        self.assertEqual((status.delivered_nodes, status.total_nodes), (1, 2))
        self.assertEqual(status.describe(), "delivered (1/2 devices)")
        self.assertEqual(status.delivered_at, T0 + 2 * SEC)
        phone = [n for n in status.nodes if n.node == "phone"][0]
        self.assertEqual(
            (phone.state, phone.next_attempt, phone.done_at), (DELIVERED, None, T0 + 2 * SEC)
        )
        # §11.16: the laptop is still owed the message.
        [p] = yield self.store.pending()
        self.assertEqual((p.id, p.state, p.status.owed_nodes), ("m1", DELIVERED, ("laptop",)))
        # A repeated receipt changes nothing (the first time is kept).
        again = yield self.store.mark_delivered("m1", "phone", T0 + 9 * SEC)
        self.assertEqual(again, status)
        status = yield self.store.mark_delivered("m1", "laptop", T0 + 3 * SEC)
        self.assertEqual((status.delivered_nodes, status.total_nodes), (2, 2))
        self.assertEqual(status.describe(), "delivered (2/2 devices)")
        self.assertEqual((yield self.store.pending()), [])
        # A receipt from a node we did not know of (a device registered meanwhile) counts.
        status = yield self.store.mark_delivered("m1", "tablet", T0 + 4 * SEC)
        self.assertEqual((status.delivered_nodes, status.total_nodes), (3, 3))
        # §8.2: a receipt for an unknown id is ignored.
        self.assertIsNone((yield self.store.mark_delivered("unknown", "phone", T0)))
        [entry] = yield self.store.history()
        self.assertEqual((entry.direction, entry.state, entry.read), (OUTGOING, DELIVERED, True))
        self.assertEqual((entry.delivered_nodes, entry.total_nodes), (3, 3))

    @defer.inlineCallbacks
    def test_single_node_describe(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1"])
        status = yield self.store.mark_delivered("m1", "n1", T0)
        self.assertEqual(status.describe(), "delivered")

    @defer.inlineCallbacks
    def test_node_learned_later(self) -> Gen:
        """The peer registers a second device after the first got the message."""
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1"])
        yield self.store.mark_delivered("m1", "n1", T0)
        self.assertEqual((yield self.store.pending()), [])
        added = yield self.store.add_targets("m1", ["n1", "n2"])
        self.assertEqual(added, ["n2"])
        [p] = yield self.store.pending_for("bob@example.com", T0)
        self.assertEqual((p.state, p.due_nodes(T0)), (DELIVERED, ("n2",)))

    @defer.inlineCallbacks
    def test_failed_per_node_and_whole(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1", "n2"])
        yield self.store.mark_attempt("m1", "n1", T0, T0 + SEC)
        status = yield self.store.mark_failed("m1", "n1", "too_large", T0 + SEC)
        self.assertEqual(status.state, QUEUED)  # n2 is still owed
        self.assertEqual(status.nodes[0].reason, "too_large")
        self.assertEqual(status.owed_nodes, ("n2",))
        status = yield self.store.mark_failed("m1", "n2", "bad_request", T0 + 2 * SEC)
        self.assertEqual((status.state, status.reason), (FAILED, "bad_request"))
        self.assertEqual(status.closed_at, T0 + 2 * SEC)
        self.assertEqual(status.describe(), "failed: bad_request")
        self.assertEqual((yield self.store.pending()), [])
        self.assertEqual((yield self.store.add_targets("m1", ["n3"])), [])
        # Whole-message failure, also without any target yet.
        yield self.store.queue_outgoing("bob@example.com", "x", T0, id="m2")
        status = yield self.store.mark_failed("m2", None, "unsupported", T0)
        self.assertEqual((status.state, status.reason, status.nodes), (FAILED, "unsupported", ()))
        yield self.store.queue_outgoing("bob@example.com", "y", T0, id="m3")
        yield self.store.add_targets("m3", ["n1", "n2"])
        status = yield self.store.mark_failed("m3", None, "too_large", T0)
        self.assertEqual(status.state, FAILED)
        self.assertEqual({n.state for n in status.nodes}, {FAILED})
        self.assertEqual((yield self.store.pending()), [])
        self.assertIsNone((yield self.store.mark_failed("unknown", None, "x", T0)))

    @defer.inlineCallbacks
    def test_failure_never_undoes_delivery(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1", "n2"])
        yield self.store.mark_delivered("m1", "n1", T0)
        status = yield self.store.mark_failed("m1", None, "too_large", T0)
        self.assertEqual((status.state, status.reason), (DELIVERED, None))
        self.assertEqual([n.state for n in status.nodes], [DELIVERED, FAILED])
        status = yield self.store.mark_failed("m1", "n1", "too_large", T0)
        self.assertEqual([n.state for n in status.nodes], [DELIVERED, FAILED])

    @defer.inlineCallbacks
    def test_late_receipt_wins(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "hi", T0, id="m1")
        yield self.store.add_targets("m1", ["n1"])
        yield self.store.mark_attempt("m1", "n1", T0, T0 + SEC)
        [expired] = yield self.store.expire(T0 + timedelta(days=8), timedelta(days=7))
        self.assertEqual(expired.state, EXPIRED)
        status = yield self.store.mark_delivered("m1", "n1", T0 + timedelta(days=8, seconds=1))
        self.assertEqual((status.state, status.delivered_nodes), (DELIVERED, 1))
        self.assertEqual((yield self.store.pending()), [])

    @defer.inlineCallbacks
    def test_expire(self) -> Gen:
        ttl = timedelta(days=7)
        yield self.store.queue_outgoing("bob@example.com", "old", T0, id="old")
        yield self.store.queue_outgoing("bob@example.com", "untargeted", T0, id="bare")
        yield self.store.queue_outgoing("bob@example.com", "partly", T0, id="part")
        yield self.store.queue_outgoing("bob@example.com", "new", T0 + timedelta(days=1), id="new")
        yield self.store.queue_outgoing("bob@example.com", "done", T0, id="done")
        yield self.store.add_targets("old", ["n1", "n2"])
        yield self.store.mark_attempt("old", "n1", T0, T0 + SEC)
        yield self.store.add_targets("part", ["n1", "n2"])
        yield self.store.mark_delivered("part", "n1", T0)
        yield self.store.add_targets("done", ["n1"])
        yield self.store.mark_delivered("done", "n1", T0)

        # Exactly ttl old is not "older than ttl".
        self.assertEqual((yield self.store.expire(T0 + ttl, ttl)), [])
        now = T0 + ttl + timedelta(microseconds=1)
        changed = yield self.store.expire(now, ttl)
        self.assertEqual(
            [(s.id, s.state) for s in changed],
            [("old", EXPIRED), ("bare", EXPIRED), ("part", DELIVERED)],
        )
        old = changed[0]
        self.assertEqual([n.state for n in old.nodes], [EXPIRED, EXPIRED])
        self.assertEqual([n.next_attempt for n in old.nodes], [None, None])
        self.assertEqual(old.closed_at, now)
        self.assertEqual(old.describe(), EXPIRED)
        self.assertEqual([n.state for n in changed[2].nodes], [DELIVERED, EXPIRED])
        self.assertEqual([m.id for m in (yield self.store.pending())], ["new"])
        self.assertEqual((yield self.store.expire(now, ttl)), [])  # nothing left to expire
        self.assertEqual((yield self.store.add_targets("old", ["n3"])), [])
        status = yield self.store.mark_attempt("old", "n1", now, now + SEC)
        self.assertEqual(status.state, EXPIRED)
        self.assertEqual((yield self.store.status("done")).state, DELIVERED)
        later = yield self.store.expire(T0 + timedelta(days=9), ttl)
        self.assertEqual([(s.id, s.state) for s in later], [("new", EXPIRED)])
        yield self.assertFailure(self.store.expire(now, -SEC), ValueError)

    @defer.inlineCallbacks
    def test_pending_for_and_counts(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "1", T0, id="b1")
        yield self.store.queue_outgoing("carol@example.com", "2", T0 + SEC, id="c1")
        yield self.store.queue_outgoing("bob@example.com", "3", T0 + 2 * SEC, id="b2")
        yield self.store.add_targets("b2", ["n1", "n2"])
        yield self.store.mark_attempt("b2", "n1", T0, T0 + SEC)
        yield self.store.queue_outgoing("bob@example.com", "4", T0 + 3 * SEC, id="b3")
        yield self.store.add_targets("b3", ["n1", "n2"])
        yield self.store.mark_delivered("b3", "n1", T0)
        bob = yield self.store.pending_for("BOB@example.com")
        self.assertEqual([m.id for m in bob], [])  # the local part is case-sensitive
        bob = yield self.store.pending_for("bob@EXAMPLE.com")
        self.assertEqual([m.id for m in bob], ["b1", "b2", "b3"])
        carol = yield self.store.pending_for("carol@example.com")
        self.assertEqual([m.id for m in carol], ["c1"])
        counts = yield self.store.outbox_counts()
        self.assertEqual(counts, {QUEUED: 2, SENT: 1, DELIVERED: 1})
        self.assertIsNone((yield self.store.status("unknown")))
        self.assertIsNone((yield self.store.outgoing("unknown")))
        out = yield self.store.outgoing("b1")
        self.assertEqual((out.body, out.to), ("1", "bob@example.com"))

    @defer.inlineCallbacks
    def test_outbox_survives_restart(self) -> Gen:
        yield self.store.queue_outgoing("bob@example.com", "one", T0, id="m1", thread="t")
        yield self.store.queue_outgoing("bob@example.com", "two", T0 + SEC, id="m2")
        yield self.store.queue_outgoing("carol@example.com", "three", T0 + 2 * SEC, id="m3")
        yield self.store.add_targets("m1", ["n1", "n2"])
        yield self.store.mark_attempt("m1", "n1", T0, T0 + 5 * SEC)
        yield self.store.mark_delivered("m1", "n2", T0 + SEC)
        yield self.store.add_targets("m2", ["n1"])
        yield self.store.mark_delivered("m2", "n1", T0 + SEC)
        before = yield self.store.pending()
        yield self.reopen()
        after = yield self.store.pending()
        self.assertEqual(after, before)
        self.assertEqual([m.id for m in after], ["m1", "m3"])
        m1 = after[0]
        self.assertEqual((m1.thread, m1.state, m1.status.owed_nodes), ("t", DELIVERED, ("n1",)))
        self.assertEqual(m1.nodes[0].next_attempt, T0 + 5 * SEC)
        self.assertEqual((yield self.store.status("m2")).state, DELIVERED)


# -- the UI ----------------------------------------------------------------------------------


class UITests(StoreTestCase):
    @defer.inlineCallbacks
    def fill(self) -> Gen:
        s = self.store
        yield s.store_incoming("alice@example.com", msg("a1", "hi bob"), T0)
        yield s.queue_outgoing("alice@example.com", "hi alice", T0 + 2 * SEC, id="o1")
        yield s.store_incoming("carol@example.com", msg("c1", "x" * 200), T0 + 1 * SEC)
        yield s.store_incoming("alice@example.com", msg("a2", "how are you?"), T0 + 3 * SEC)
        yield s.queue_outgoing("dave@example.com", "anyone?", T0 + 4 * SEC, id="o2")

    @defer.inlineCallbacks
    def test_history_order_and_filters(self) -> Gen:
        yield self.fill()
        everything = yield self.store.history()
        self.assertEqual([e.id for e in everything], ["a1", "c1", "o1", "a2", "o2"])
        self.assertEqual(
            [e.direction for e in everything], [INCOMING, INCOMING, OUTGOING, INCOMING, OUTGOING]
        )
        self.assertEqual([e.state for e in everything][2], QUEUED)
        alice = yield self.store.history("alice@EXAMPLE.com")
        self.assertEqual([e.id for e in alice], ["a1", "o1", "a2"])
        since = yield self.store.history(None, T0 + 2 * SEC)
        self.assertEqual([e.id for e in since], ["o1", "a2", "o2"])
        last2 = yield self.store.history(limit=2)
        self.assertEqual([e.id for e in last2], ["a2", "o2"])
        both = yield self.store.history("alice@example.com", T0 + SEC, 1)
        self.assertEqual([e.id for e in both], ["a2"])
        self.assertEqual((yield self.store.history("nobody@example.com")), [])
        yield self.assertFailure(self.store.history(limit=0), ValueError)

    @defer.inlineCallbacks
    def test_equal_times_keep_arrival_order(self) -> Gen:
        for i in range(5):
            yield self.store.store_incoming("a@example.com", msg(f"i{i}"), T0)
            yield self.store.queue_outgoing("a@example.com", "r", T0, id=f"o{i}")
        history = yield self.store.history()
        self.assertEqual([e.id for e in history], [x for i in range(5) for x in (f"i{i}", f"o{i}")])

    @defer.inlineCallbacks
    def test_conversations_and_mark_read(self) -> Gen:
        yield self.fill()
        convs = yield self.store.conversations()
        self.assertEqual(
            [(c.peer, c.unread, c.messages, c.last_direction) for c in convs],
            [
                ("dave@example.com", 0, 1, OUTGOING),
                ("alice@example.com", 2, 3, INCOMING),
                ("carol@example.com", 1, 1, INCOMING),
            ],
        )
        self.assertEqual(convs[1].last_body, "how are you?")
        self.assertEqual(convs[1].last_at, T0 + 3 * SEC)
        self.assertEqual(convs[2].last_body, "x" * SNIPPET_CHARS)
        marked = yield self.store.mark_read("alice@example.com")
        self.assertEqual(marked, 2)
        self.assertEqual((yield self.store.mark_read("alice@example.com")), 0)
        convs = yield self.store.conversations()
        self.assertEqual([c.unread for c in convs], [0, 0, 1])
        alice = yield self.store.history("alice@example.com")
        self.assertEqual([e.read for e in alice], [True, True, True])
        carol = yield self.store.history("carol@example.com")
        self.assertEqual([e.read for e in carol], [False])

    @defer.inlineCallbacks
    def test_contacts(self) -> Gen:
        yield self.fill()
        yield self.store.touch_contact("Carol@Example.com", T0 + 10 * SEC)
        yield self.store.touch_contact("erin@example.com", T0 + 11 * SEC)
        self.store.pins.add("alice@example.com", KEY1)
        self.store.pins.add("alice@example.com", KEY2)
        yield self.store.pins.note_key_change("carol@example.com", KEY3, T0 + 12 * SEC)
        contacts = {c.identity: c for c in (yield self.store.contacts())}
        self.assertEqual(
            sorted(contacts),
            [
                "Carol@example.com",
                "alice@example.com",
                "carol@example.com",
                "dave@example.com",
                "erin@example.com",
            ],
        )
        alice = contacts["alice@example.com"]
        self.assertEqual((alice.first_seen, alice.last_seen), (T0, T0 + 3 * SEC))
        self.assertEqual((alice.pinned_keys, alice.key_change_pending), (2, False))
        dave = contacts["dave@example.com"]  # only written to: never seen
        self.assertEqual((dave.first_seen, dave.last_seen), (T0 + 4 * SEC, None))
        carol = contacts["carol@example.com"]
        self.assertEqual((carol.last_seen, carol.key_change_pending), (T0 + 12 * SEC, True))
        erin = contacts["erin@example.com"]
        self.assertEqual((erin.first_seen, erin.last_seen), (T0 + 11 * SEC, T0 + 11 * SEC))

    @defer.inlineCallbacks
    def test_display_spelling(self) -> Gen:
        """We keep our spelling until the peer shows up; then its own spelling wins."""
        yield self.store.queue_outgoing("bob@EXAMPLE.com", "hi", T0, id="o1")
        [c] = yield self.store.contacts()
        self.assertEqual((c.identity, c.display), ("bob@example.com", "bob@EXAMPLE.com"))
        yield self.store.queue_outgoing("bob@Example.Com", "hi", T0, id="o2")
        [c] = yield self.store.contacts()
        self.assertEqual(c.display, "bob@EXAMPLE.com")
        yield self.store.store_incoming("bob@example.com", msg("b1"), T0 + SEC)
        [c] = yield self.store.contacts()
        self.assertEqual(c.display, "bob@example.com")
        [conv] = yield self.store.conversations()
        self.assertEqual(conv.display, "bob@example.com")


# -- crash safety ----------------------------------------------------------------------------

_CHILD = r"""
import sys
from datetime import UTC, datetime
from twisted.internet import defer, task
from sixchat.agent.store import MessageStore
from sixchat.stanzas import Message

def body(i):
    return ("body %06d " % i) * (1 + i % 40)

@defer.inlineCallbacks
def main(reactor, path, start):
    store = MessageStore(path, reactor)
    yield store.open()
    print("open", flush=True)
    i = 0
    while True:
        mid = "m%06d" % i
        new = yield store.store_incoming(
            "alice@example.com", Message(mid, "2026-11-26T00:00:00.000Z", body(i)),
            datetime.now(UTC))
        print("in", mid, int(new), flush=True)
        if i >= int(start):
            out = yield store.queue_outgoing(
                "alice@example.com", body(i), datetime.now(UTC), id="o%06d" % i)
            print("out", out.id, flush=True)
        i += 1

task.react(main, sys.argv[1:])
"""


def _body(i: int) -> str:
    return f"body {i:06d} " * (1 + i % 40)


def run_writer(path: str, start: int, lines_wanted: int) -> list[list[str]]:
    """
    Run the writer child on C{path} until it reported C{lines_wanted} lines, then SIGKILL
    it (it is then normally inside its next transaction). Blocking, bounded by timeouts.
    """
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, path, str(start)],
        stdout=subprocess.PIPE,
        stderr=errors,
        env=child_env(),
    )
    assert proc.stdout is not None
    lines: list[list[str]] = []
    deadline = time.monotonic() + 60
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    try:
        while len(lines) < lines_wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                errors.seek(0)
                raise AssertionError(
                    f"writer stalled or died: {errors.read().decode(errors='replace')[-2000:]}"
                )
            if selector.select(min(remaining, 1.0)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += [line.decode().split() for line in complete]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        selector.close()
        proc.stdout.close()
        errors.close()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    # Every complete line is a report: the child printed it after the Deferred fired.
    return lines


class CrashTests(SynchronousTestCase):
    """
    A writer SIGKILLed at an arbitrary point loses nothing it reported as stored, stores
    nothing twice and leaves no partial row. Runs real child processes synchronously
    (bounded by timeouts); the reactor is not involved.
    """

    def check_file(self, path: str) -> tuple[list[str], list[str]]:
        conn = sqlite3.connect(path)
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            self.assertEqual(conn.execute("PRAGMA foreign_key_check").fetchall(), [])
            incoming = conn.execute(
                "SELECT id, body, count(*) OVER (PARTITION BY peer, id) FROM messages "
                "WHERE direction = 'in' ORDER BY seq"
            ).fetchall()
            outgoing = conn.execute(
                "SELECT id, body FROM messages WHERE direction = 'out' ORDER BY seq"
            ).fetchall()
        finally:
            conn.close()
        for mid, body, copies in incoming:
            self.assertEqual(copies, 1, mid)
            self.assertEqual(body, _body(int(mid[1:])), mid)  # no partial row
        for oid, body in outgoing:
            self.assertEqual(body, _body(int(oid[1:])), oid)
        in_ids = [row[0] for row in incoming]
        out_ids = [row[0] for row in outgoing]
        # The writer is sequential, so what was committed is a prefix, without holes.
        self.assertEqual(in_ids, [f"m{i:06d}" for i in range(len(in_ids))])
        return in_ids, out_ids

    def test_sigkill_loses_nothing_reported(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, DEFAULT_FILENAME)
        reported_in: set[str] = set()
        reported_out: list[str] = []
        stored = 0
        for round_number in range(3):
            # Each round restarts at m000000, so it first re-stores what is there (all
            # duplicates), then goes on with new messages and queues their replies.
            lines = run_writer(path, stored, 1 + stored + 60)
            self.assertEqual(lines[0], ["open"])
            fresh = {line[1] for line in lines if line[0] == "in" and line[2] == "1"}
            again = {line[1] for line in lines if line[0] == "in" and line[2] == "0"}
            self.assertFalse(fresh & reported_in, round_number)
            self.assertTrue(reported_in <= again, round_number)
            self.assertEqual(len(again), stored, round_number)
            reported_in |= fresh
            reported_out += [line[1] for line in lines if line[0] == "out"]
            in_ids, out_ids = self.check_file(path)
            self.assertTrue(reported_in <= set(in_ids))
            self.assertTrue(set(reported_out) <= set(out_ids))
            stored = len(in_ids)
            # §8.2 after restart: every queued message is still owed, in order.
            db = MessageDatabase(path)
            try:
                pending = [m.id for m in db.pending()]
            finally:
                db.close()
            self.assertEqual(pending, out_ids)
            # In order; a message committed but killed before its line was read is owed too
            # (it sits among them: not reported, not lost).
            reported = set(reported_out)
            self.assertEqual([m for m in pending if m in reported], reported_out)
        self.assertGreater(len(reported_out), 50)
