"""
Tests for L{sixchat.agent.store.checkpoint}: the store's WAL checkpoints run on a thread and
connection of their own, off the commits that carry messages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sixchat.agent.store import DEFAULT_FILENAME, MessageDatabase, MessageStore, StoreError
from sixchat.agent.store.checkpoint import BACKSTOP_PAGES, Checkpointer, checkpoint
from sixchat.stanzas import Message

Gen = Generator[Any, Any, None]
T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
TS = "2026-12-07T12:00:00.000Z"
PAGE = 4096


class FakePool:
    """A thread stand-in: jobs run when the test says (L{finish}), in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def finish(self) -> None:
        """Run every job queued so far."""
        while self.jobs:
            f, args, d = self.jobs.pop(0)
            try:
                result = f(*args)
            except Exception:
                d.errback()
            else:
                d.callback(result)


class FakeConnection:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.executed: list[str] = []
        self.closed = False

    def execute(self, sql: str) -> Any:
        self.executed.append(sql)
        if self.fail:
            raise OSError("disk I/O error")
        return self

    def fetchall(self) -> list[tuple[int, int, int]]:
        return [(0, 10, 10)]

    def close(self) -> None:
        self.closed = True


class CheckpointerTests(SynchronousTestCase):
    def make(self, every: int = 3, fail: bool = False) -> tuple[Checkpointer, FakePool, Any]:
        pool, conn = FakePool(), FakeConnection(fail)
        checkpointer = Checkpointer(pool, lambda: conn, every=every)
        checkpointer.start()
        pool.finish()  # the connection opens on the thread
        return checkpointer, pool, conn

    def test_a_checkpoint_every_n_commits(self) -> None:
        checkpointer, pool, conn = self.make(every=3)
        self.assertTrue(pool.started)
        checkpointer.committed()
        checkpointer.committed()
        self.assertEqual(pool.jobs, [])
        checkpointer.committed()
        self.assertEqual(len(pool.jobs), 1)
        pool.finish()
        self.assertEqual(conn.executed, ["PRAGMA wal_checkpoint(PASSIVE)"])
        self.assertEqual(checkpointer.checkpoints, 1)
        for _ in range(3):
            checkpointer.committed()
        pool.finish()
        self.assertEqual(checkpointer.checkpoints, 2)

    def test_one_checkpoint_at_a_time(self) -> None:
        checkpointer, pool, conn = self.make(every=1)
        checkpointer.committed()
        for _ in range(5):
            checkpointer.committed()  # the first is still under way
        self.assertEqual(len(pool.jobs), 1)
        pool.finish()
        checkpointer.committed()
        self.assertEqual(len(pool.jobs), 1)
        pool.finish()
        self.assertEqual(checkpointer.checkpoints, 2)

    def test_nothing_before_the_connection_is_open(self) -> None:
        pool = FakePool()
        checkpointer = Checkpointer(pool, FakeConnection, every=1)
        checkpointer.start()
        checkpointer.committed()
        self.assertEqual(len(pool.jobs), 1)  # only the connect
        pool.finish()
        checkpointer.committed()
        pool.finish()
        self.assertEqual(checkpointer.checkpoints, 1)

    def test_a_failed_checkpoint_is_logged_and_the_next_one_still_runs(self) -> None:
        checkpointer, pool, conn = self.make(every=2, fail=True)
        checkpointer.committed()
        checkpointer.committed()
        pool.finish()
        self.assertEqual(checkpointer.failures, 1)
        self.assertEqual(checkpointer.checkpoints, 0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        conn.fail = False
        checkpointer.committed()
        checkpointer.committed()
        pool.finish()
        self.assertEqual(checkpointer.checkpoints, 1)

    def test_a_connection_that_cannot_open_is_logged(self) -> None:
        pool = FakePool()

        def refuse() -> Any:
            raise OSError("cannot open")

        checkpointer = Checkpointer(pool, refuse, every=1)
        checkpointer.start()
        pool.finish()
        self.assertEqual(checkpointer.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        checkpointer.committed()
        self.assertEqual(pool.jobs, [])  # no connection: no checkpoint
        self.successResultOf(checkpointer.stop())
        self.assertTrue(pool.stopped)

    def test_stop_closes_after_the_checkpoint_under_way(self) -> None:
        checkpointer, pool, conn = self.make(every=1)
        checkpointer.committed()
        stopped = checkpointer.stop()
        self.assertNoResult(stopped)
        self.assertFalse(conn.closed)
        pool.finish()
        self.successResultOf(stopped)
        self.assertEqual(conn.executed, ["PRAGMA wal_checkpoint(PASSIVE)"])
        self.assertTrue(conn.closed)
        self.assertTrue(pool.stopped)
        checkpointer.committed()
        self.assertEqual(pool.jobs, [])  # stopped: nothing more
        self.successResultOf(checkpointer.stop())  # twice: harmless

    def test_stop_before_start(self) -> None:
        pool = FakePool()
        self.successResultOf(Checkpointer(pool, FakeConnection).stop())
        self.assertFalse(pool.stopped)

    def test_not_while_the_store_is_busy(self) -> None:
        checkpointer, pool, conn = self.make(every=2)
        checkpointer.committed(idle=False)
        checkpointer.committed(idle=False)
        checkpointer.committed(idle=False)
        self.assertEqual(pool.jobs, [])
        checkpointer.committed(idle=True)
        self.assertEqual(len(pool.jobs), 1)
        pool.finish()
        self.assertEqual(checkpointer.checkpoints, 1)

    def test_an_incomplete_checkpoint_runs_again_when_next_idle(self) -> None:
        checkpointer, pool, conn = self.make(every=5)
        conn.fetchall = lambda: [(0, 40, 30)]  # the writer committed while it copied
        for _ in range(5):
            checkpointer.committed()
        pool.finish()
        self.assertEqual((checkpointer.checkpoints, checkpointer.incomplete), (1, 1))
        idle = checkpointer.whenIdle()
        self.successResultOf(idle)
        checkpointer.committed(idle=False)
        self.assertEqual(pool.jobs, [])
        conn.fetchall = lambda: [(0, 40, 40)]
        checkpointer.committed(idle=True)  # at once, not 5 commits later
        busy = checkpointer.whenIdle()
        self.assertNoResult(busy)
        pool.finish()
        self.successResultOf(busy)
        self.assertEqual((checkpointer.checkpoints, checkpointer.incomplete), (2, 1))
        checkpointer.committed()
        self.assertEqual(pool.jobs, [])  # complete: the count starts again

    def test_every_must_be_positive(self) -> None:
        self.assertRaises(ValueError, Checkpointer, FakePool(), FakeConnection, every=0)


class DatabaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, DEFAULT_FILENAME)
        self.db = MessageDatabase(self.path)
        self.addCleanup(self.db.close)

    def test_a_second_connection_copies_the_log(self) -> None:
        for i in range(5):
            self.db.store_incoming("bob@example.com", Message(f"m{i}", TS, "hi"), T0)
        conn = self.db.checkpoint_connection()
        try:
            busy, pages, copied = checkpoint(conn)
            self.assertEqual(busy, 0)
            self.assertGreater(pages, 0)
            self.assertEqual(copied, pages)
            self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        finally:
            conn.close()

    def test_backstop(self) -> None:
        self.assertEqual(self.db.pragma("wal_autocheckpoint"), 1000)  # SQLite's default
        self.db.defer_checkpoints(BACKSTOP_PAGES)
        self.assertEqual(self.db.pragma("wal_autocheckpoint"), BACKSTOP_PAGES)
        self.assertRaises(ValueError, self.db.defer_checkpoints, 0)

    def test_no_log_in_memory(self) -> None:
        memory = MessageDatabase(":memory:")
        self.addCleanup(memory.close)
        self.assertFalse(memory.has_log)
        self.assertRaises(StoreError, memory.checkpoint_connection)


class StoreTests(TestCase):
    """The store's checkpoints, on a real file and real threads."""

    def open_store(self, **kw: Any) -> defer.Deferred[None]:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, DEFAULT_FILENAME)
        self.store = MessageStore(self.path, reactor, **kw)
        self.addCleanup(self.store.close)
        return self.store.open()

    def wal_pages(self) -> float:
        return os.path.getsize(self.path + "-wal") / PAGE

    @defer.inlineCallbacks
    def one_at_a_time(self, count: int) -> Gen:
        """Store C{count} messages, each once the last and any checkpoint are done."""
        for i in range(count):
            new = yield self.store.store_incoming("bob@example.com", Message(f"m{i}", TS, "x"), T0)
            self.assertTrue(new)
            if self.store.checkpointer is not None:
                yield self.store.checkpointer.whenIdle()

    @defer.inlineCallbacks
    def test_checkpoints_off_the_commits_keep_the_log_small(self) -> Gen:
        yield self.open_store()
        checkpointer = self.store.checkpointer
        assert checkpointer is not None
        checkpointer.every = 4
        backstop = yield self.store._call(self.store._database().pragma, "wal_autocheckpoint")
        self.assertEqual(backstop, BACKSTOP_PAGES)
        # 300 transactions of several pages each: SQLite's own checkpoints would let the
        # log grow to 1,000 pages before the commit that crosses it copies it back.
        yield self.one_at_a_time(300)
        self.assertGreaterEqual(checkpointer.checkpoints, 70)
        self.assertEqual(checkpointer.incomplete, 0)
        self.assertEqual(checkpointer.failures, 0)
        self.assertLess(self.wal_pages(), 100)
        history = yield self.store.history(limit=1000)
        self.assertEqual(len(history), 300)

    @defer.inlineCallbacks
    def test_close_stops_the_thread_and_keeps_everything(self) -> Gen:
        yield self.open_store()
        yield self.one_at_a_time(40)
        self.assertTrue(_checkpoint_threads())
        yield self.store.close()
        self.assertIsNone(self.store.checkpointer)
        self.assertFalse(_checkpoint_threads())
        self.assertFalse(os.path.exists(self.path + "-wal"))  # the last close copied it all
        db = MessageDatabase(self.path)
        try:
            self.assertEqual(len(db.history(limit=100)), 40)
            self.assertEqual(db.pragma("integrity_check"), "ok")
        finally:
            db.close()

    @defer.inlineCallbacks
    def test_encrypted_store(self) -> Gen:
        from sixchat.agent.store import cipher

        try:
            cipher.require()
        except Exception as e:  # pragma: no cover - SQLCipher is in the CI venv
            self.skipTest(str(e))
        key = bytes(range(32))
        yield self.open_store(unlock=lambda: key)
        self.assertTrue(self.store.encrypted)
        checkpointer = self.store.checkpointer
        assert checkpointer is not None
        checkpointer.every = 2
        yield self.one_at_a_time(20)
        self.assertGreaterEqual(checkpointer.checkpoints, 1)
        self.assertEqual(checkpointer.failures, 0)
        yield self.store.close()
        db = MessageDatabase(self.path, key)
        try:
            self.assertEqual(len(db.history(limit=100)), 20)
        finally:
            db.close()


def _checkpoint_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "sixchat-store-checkpoint" in t.name]
