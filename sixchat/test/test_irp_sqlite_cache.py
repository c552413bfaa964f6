"""
The SQLite store's lookup cache (L{sixchat.irp.store.lookup_cache} fed by
L{sixchat.irp.store.sqlite_changes}): this process's writes are read at once, another
process's (a second store on the same file: an administrator's C{sixchat pki revoke}, a
second registry) no later than the poll that follows them and never more than
C{cache_fresh} seconds after they committed, expiry is exact, a stalled or failing poll
turns the cache off, and the size is bounded.

The store's database thread is real; its clock is a L{task.Clock} (L{ClockReactor}), so
polls run when a test says (L{poll}) and no test waits for real time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from sixchat.identity import Identity
from sixchat.irp.messages import Contact
from sixchat.irp.store import sqlite_reads
from sixchat.irp.store.cached import cached_state
from sixchat.irp.store.interfaces import Binding, IdentityState
from sixchat.irp.store.lookup_cache import LookupCache
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.test import certs
from sixchat.test.test_irp_store import wait_for

A = "alice@example.com"
C1 = [Contact("2001:db8::5", 4605)]

#: Never reached by a test's clock: the poller's own calls never run; L{poll} runs one.
NEVER = 10_000.0


class ClockReactor:
    """The real reactor for the database thread's results, a L{task.Clock} for time."""

    def __init__(self) -> None:
        self.clock = task.Clock()

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:  # noqa: N802
        return self.clock.callLater(delay, f, *args, **kw)

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:  # noqa: N802
        reactor.callFromThread(f, *args, **kw)


class SQLiteCacheTests(TestCase):
    def setUp(self) -> None:
        self.ca = certs.make_ca()
        self.alice = certs.make_identity(A, self.ca)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.path = os.path.abspath(self.mktemp()) + ".sqlite"
        self.clocked = ClockReactor()

    async def store(self, **kwargs: Any) -> SQLiteStore:
        """The registry under test: a cache, a clock the test moves, polls run by hand."""
        kwargs.setdefault("poll_interval", NEVER)
        store = SQLiteStore(self.path, self.clocked, **kwargs)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def other(self) -> SQLiteStore:
        """Another process on the same file (its own cache off: it only writes)."""
        store = SQLiteStore(self.path, reactor, cache_size=0)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def poll(self, store: SQLiteStore) -> None:
        await store._changes._poll()

    def advance(self, seconds: float) -> None:
        self.clocked.clock.advance(seconds)

    async def register(
        self, store: SQLiteStore, who: Identity | None = None, node: str = "n",
        expires: float = 300, not_after: datetime | None = None,
    ) -> None:  # fmt: skip
        who = who or self.alice
        await store.register(
            who.names[0], node, C1, who.leaf_der, who.leaf.serial_number,
            not_after or who.leaf.not_valid_after_utc, self.now,
            self.now + timedelta(seconds=expires), 16,
        )  # fmt: skip

    async def nodes(self, store: SQLiteStore, at: datetime | None = None) -> list[str]:
        state = await store.state(A, at or self.now)
        return [b.node for b in state.bindings]

    async def cached_then_removed_elsewhere(self) -> SQLiteStore:
        """A store with alice's node C{n} cached, which another process then unregistered."""
        store = await self.store()
        await self.register(store)
        await self.cached(store)
        other = await self.other()
        await other.unregister(A, "n")
        return store

    async def cached(self, store: SQLiteStore) -> SQLiteStore:
        """C{store} with alice's state in its cache (a poll made it fresh)."""
        await self.poll(store)
        await store.state(A, self.now)
        cache = store.cache
        assert cache is not None
        hits = cache.hits
        await store.state(A, self.now)
        self.assertEqual(cache.hits, hits + 1, "the second lookup was not a cache hit")
        return store

    # --- this process's writes -------------------------------------------------------------

    async def test_own_writes_are_read_at_once(self) -> None:
        store = await self.store()
        await self.register(store)
        await self.cached(store)
        await self.register(store, node="m")
        self.assertEqual(await self.nodes(store), ["m", "n"])
        await store.unregister(A, "n")
        self.assertEqual(await self.nodes(store), ["m"])
        await store.notify(A)  # a notify invalidates too (nothing changed: same answer)
        self.assertEqual(await self.nodes(store), ["m"])

    async def test_a_read_in_flight_during_an_own_write_is_not_kept(self) -> None:
        """A lookup that read before an unregister must not refill the cache after it."""
        store = await self.store()
        await self.register(store)
        await self.poll(store)
        await task.deferLater(reactor, 0, lambda: None)  # the poll's read batch is over
        reading = store.state(A, self.now)  # read before the write, answered after it began
        writing = store.unregister(A, "n")
        self.assertEqual([b.node for b in (await reading).bindings], ["n"])
        await writing
        self.assertEqual(await self.nodes(store), [])

    def test_a_read_overtaken_by_an_invalidation_is_not_kept(self) -> None:
        """
        The rule both stores share (L{cached_state}): an answer read before an
        invalidation of its identity is returned but not cached, even if it arrives after.
        """
        cache = LookupCache()
        cache.sync(1)
        reads: list[defer.Deferred[Any]] = []

        def read(*_key: str) -> defer.Deferred[Any]:
            reads.append(defer.Deferred())
            return reads[-1]

        old = IdentityState(A, (Binding("n", (), b"c", 1, self.now + timedelta(days=1),
                                        self.now),), None)  # fmt: skip
        answer = cached_state(lambda: cache, A, self.now, read, read)
        cache.invalidate(A)  # the change feed heard of a change while the read was out
        reads[0].callback((old, []))
        self.assertIs(self.successResultOf(answer), old)
        self.assertIsNone(cache.get(A, self.now))

    # --- other processes ---------------------------------------------------------------------

    async def test_other_process_write_seen_with_the_next_poll(self) -> None:
        store = await self.store()
        await self.register(store, node="n")
        await self.register(store, node="x")
        await self.cached(store)
        other = await self.other()
        await other.unregister(A, "x")
        # Until the poll, the cache may still answer the removed binding (within the bound)…
        self.assertEqual(await self.nodes(store), ["n", "x"])
        await self.poll(store)
        # …never after it.
        self.assertEqual(await self.nodes(store), ["n"])

    async def test_other_process_write_never_served_past_the_bound(self) -> None:
        """Polls stalled: past C{cache_fresh} seconds after the last good poll, no cache."""
        store = await self.cached_then_removed_elsewhere()
        self.advance(store.cache_fresh)
        self.assertEqual(await self.nodes(store), ["n"])  # still within the bound
        self.advance(0.001)
        cache = store.cache
        assert cache is not None
        hits = cache.hits
        self.assertEqual(await self.nodes(store), [])
        self.assertEqual(await self.nodes(store), [])
        self.assertEqual(cache.hits, hits, "a stale cache answered")

    async def test_a_clock_gone_back_stops_the_cache(self) -> None:
        """The reactor's clock is the wall clock: set back, it must not stretch the bound."""
        store = await self.cached_then_removed_elsewhere()
        self.clocked.clock.rightNow -= 3600
        self.assertEqual(await self.nodes(store), [])
        self.assertIsNone(store._live_cache())
        await self.poll(store)  # a poll at the new time makes it fresh again
        self.assertIsNotNone(store._live_cache())

    async def test_a_failing_poll_does_not_keep_the_cache_fresh(self) -> None:
        store = await self.cached_then_removed_elsewhere()
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        conn.execute("ALTER TABLE changes RENAME TO changes_away")
        conn.commit()
        self.advance(store.cache_fresh)
        await self.poll(store)  # fails (logged): the change is not seen, nor freshness
        self.flushLoggedErrors(sqlite3.OperationalError)
        self.advance(0.001)
        self.assertEqual(await self.nodes(store), [])
        conn.execute("ALTER TABLE changes_away RENAME TO changes")
        conn.commit()

    async def test_polls_resuming_after_a_stall_start_empty(self) -> None:
        """Rows may have been trimmed meanwhile: a new epoch drops everything."""
        store = await self.store()
        await self.register(store)
        await self.cached(store)
        self.advance(store.cache_fresh + 1)
        # a change the poll will not report (as if trimmed from the table)
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        conn.execute("DELETE FROM bindings")
        conn.commit()
        await self.poll(store)
        self.assertEqual(await self.nodes(store), [])

    async def test_the_poll_runs_without_subscribers(self) -> None:
        store = await self.store(poll_interval=1.0)
        self.assertEqual(store._changes.subscribers, [])
        self.assertIsNone(store._changes.fresh_at)
        self.advance(1.0)
        await wait_for(lambda: store._changes.fresh_at is not None, 10.0)
        self.assertEqual(store._changes.fresh_at, 1.0)  # when the poll started

    async def test_other_process_revocation(self) -> None:
        """A revocation by another process drops every cached "not revoked" with the poll."""
        store = await self.store()
        await self.poll(store)
        bob = certs.make_identity("bob@example.com", self.ca)
        serial, issuer = bob.leaf.serial_number, self.ca.cert_der
        self.assertFalse(await store.is_revoked(serial, issuer))
        other = await self.other()
        await other.revoke(serial, issuer, self.now)
        self.assertFalse(await store.is_revoked(serial, issuer))  # cached, within the bound
        await self.poll(store)
        self.assertTrue(await store.is_revoked(serial, issuer))

    async def test_other_process_revocation_removes_the_binding(self) -> None:
        store = await self.store()
        await self.register(store)
        await self.cached(store)
        other = await self.other()
        seen: list[str] = []
        store.subscribe(seen.append)
        await other.revoke(self.alice.leaf.serial_number, self.ca.cert_der, self.now)
        await self.poll(store)
        self.assertEqual(await self.nodes(store), [])
        self.assertEqual(seen, [A])  # the marker row is no identity for subscribers

    # --- own revocations, time, size -------------------------------------------------------

    async def test_own_revocation(self) -> None:
        store = await self.store()
        await self.register(store)
        await self.cached(store)
        serial, issuer = self.alice.leaf.serial_number, self.ca.cert_der
        self.assertFalse(await store.is_revoked(serial, issuer))
        await store.revoke(serial, issuer, self.now)
        self.assertTrue(await store.is_revoked(serial, issuer))
        self.assertEqual(await self.nodes(store), [])

    async def test_expired_binding_never_answered(self) -> None:
        store = await self.store()
        await self.register(store, expires=60)
        await self.cached(store)
        end = self.now + timedelta(seconds=60)
        self.assertEqual(await self.nodes(store, end - timedelta(microseconds=1)), ["n"])
        self.assertEqual(await self.nodes(store, end), [])

    async def test_expired_certificate_never_answered(self) -> None:
        """The binding outlives its certificate: the certificate's end is the bound."""
        store = await self.store()
        cert_end = self.now + timedelta(seconds=30)
        await self.register(store, expires=3600, not_after=cert_end)
        await self.cached(store)
        self.assertEqual(await self.nodes(store, cert_end - timedelta(microseconds=1)), ["n"])
        state = await store.state(A, cert_end)
        self.assertEqual((state.bindings, state.cert), ((), None))

    async def test_expired_certificate_of_one_node_never_answered(self) -> None:
        """Another node's newer certificate (the identity's latest) lives on."""
        store = await self.store()
        cert_end = self.now + timedelta(seconds=30)
        await self.register(store, expires=3600, not_after=cert_end)
        await self.register(store, certs.make_identity(A, self.ca), node="m", expires=3600)
        await self.cached(store)
        self.assertEqual(await self.nodes(store, cert_end - timedelta(microseconds=1)),
                         ["m", "n"])  # fmt: skip
        self.assertEqual(await self.nodes(store, cert_end), ["m"])

    async def test_size_bound(self) -> None:
        store = await self.store(cache_size=2)
        await self.poll(store)
        for name in ("a@example.com", "b@example.com", "c@example.com"):
            await self.register(store, certs.make_identity(name, self.ca))
            await store.state(name, self.now)
        assert store.cache is not None
        self.assertEqual(store.cache.size, 2)

    async def test_without_cache(self) -> None:
        store = await self.store(cache_size=0, poll_interval=1.0)
        self.assertIsNone(store.cache)
        await self.register(store)
        await self.nodes(store)
        self.advance(1.0)
        self.assertIsNone(store._changes._poller)  # nobody subscribed, nothing to keep fresh
        other = await self.other()
        await other.unregister(A, "n")
        self.assertEqual(await self.nodes(store), [])

    async def test_state_read_off_the_reactor_thread(self) -> None:
        """A miss still reads in the store's thread (the cache never blocks the reactor)."""
        store = await self.store()
        threads: list[threading.Thread] = []
        real = sqlite_reads.read_state

        def spy(*args: Any) -> Any:
            threads.append(threading.current_thread())
            return real(*args)

        self.patch(sqlite_reads, "read_state", spy)
        await self.poll(store)
        await store.state(A, self.now)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())
