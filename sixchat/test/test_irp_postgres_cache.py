"""
The PostgreSQL store's lookup cache (L{sixchat.irp.store.lookup_cache}): first the cache
alone (tickets, time bounds, sizes; a property test against a model database), then two
stores on one real database (two registry instances): a change made through A is never
answered by B's cache once B heard of it, and never later than C{cache_fresh} seconds even
when B's notifications are lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.interfaces import Binding, IdentityState
from sixchat.irp.store.lookup_cache import FOREVER, REVOCATION, LookupCache, valid_until
from sixchat.test.test_irp_postgres import (
    CERT_END,
    LATER,
    NOW,
    PostgresTestCase,
    admin,
)

A = "alice@example.com"


def state(version: int, until: Any = LATER) -> IdentityState:
    """A state whose only binding's node names C{version}."""
    binding = Binding(f"v{version}", (), b"cert", 1, until, NOW)
    return IdentityState(A, (binding,), None)


class LookupCacheTests(unittest.TestCase):
    """The cache alone: no database, no threads."""

    def setUp(self) -> None:
        self.cache = LookupCache(max_states=3)
        self.cache.sync(1)

    def test_hit_after_put(self) -> None:
        ticket = self.cache.ticket()
        self.assertTrue(self.cache.put(A, ticket, NOW, state(1), LATER))
        self.assertEqual(self.cache.get(A, NOW), state(1))
        self.assertEqual(self.cache.get(A, LATER - timedelta(microseconds=1)), state(1))
        self.assertEqual((self.cache.hits, self.cache.misses), (2, 0))

    def test_not_before_the_read_nor_from_its_expiry(self) -> None:
        self.cache.put(A, self.cache.ticket(), NOW, state(1), LATER)
        self.assertIsNone(self.cache.get(A, NOW - timedelta(microseconds=1)))
        self.assertIsNone(self.cache.get(A, LATER))
        self.assertEqual(self.cache.misses, 2)

    def test_a_read_overtaken_by_an_invalidation_is_not_kept(self) -> None:
        ticket = self.cache.ticket()
        self.cache.invalidate(A)  # the change's notification came while the read ran
        self.assertFalse(self.cache.put(A, ticket, NOW, state(1), LATER))
        self.assertIsNone(self.cache.get(A, NOW))
        # A read started after it is kept.
        self.assertTrue(self.cache.put(A, self.cache.ticket(), NOW, state(2), LATER))
        self.assertEqual(self.cache.get(A, NOW), state(2))

    def test_other_identities_do_not_spoil_a_read(self) -> None:
        ticket = self.cache.ticket()
        self.cache.invalidate("bob@example.com")
        self.assertTrue(self.cache.put(A, ticket, NOW, state(1), LATER))

    def test_invalidate_drops(self) -> None:
        self.cache.put(A, self.cache.ticket(), NOW, state(1), LATER)
        self.cache.invalidate(A)
        self.assertIsNone(self.cache.get(A, NOW))

    def test_a_new_listener_connection_drops_everything(self) -> None:
        ticket = self.cache.ticket()
        self.cache.put(A, ticket, NOW, state(1), LATER)
        self.cache.put_revoked(5, b"ca", ticket, False, 0.0)
        self.cache.sync(1)  # the same connection: nothing happens
        self.assertEqual(self.cache.get(A, NOW), state(1))
        self.cache.sync(2)
        self.assertIsNone(self.cache.get(A, NOW))
        self.assertIsNone(self.cache.revoked(5, b"ca", 0.0))
        self.assertFalse(self.cache.put(A, ticket, NOW, state(1), LATER))

    def test_nothing_already_expired(self) -> None:
        self.assertFalse(self.cache.put(A, self.cache.ticket(), NOW, state(1), NOW))

    def test_size_bound_drops_the_oldest(self) -> None:
        for i in range(4):
            self.cache.put(f"u{i}@example.com", self.cache.ticket(), NOW, state(i), LATER)
        self.assertEqual(self.cache.size, 3)
        self.assertIsNone(self.cache.get("u0@example.com", NOW))
        self.assertEqual(self.cache.get("u3@example.com", NOW), state(3))

    def test_invalidation_marks_stay_bounded(self) -> None:
        ticket = self.cache.ticket()
        for i in range(100):
            self.cache.invalidate(f"u{i}@example.com")
        self.assertLessEqual(len(self.cache._invalidated), 4 * self.cache.max_states)
        # Forgetting the marks refuses every older read instead.
        self.assertFalse(self.cache.put("u1@example.com", ticket, NOW, state(1), LATER))

    def test_revocation_answers(self) -> None:
        ticket = self.cache.ticket()
        self.assertTrue(self.cache.put_revoked(5, b"ca", ticket, False, 0.0))
        self.assertTrue(self.cache.put_revoked(6, b"ca", ticket, True, 0.0))
        self.assertIs(self.cache.revoked(5, b"ca", 1.0), False)
        self.cache.revocations_changed()
        self.assertIsNone(self.cache.revoked(5, b"ca", 1.0))
        self.assertIs(self.cache.revoked(6, b"ca", 1.0), True)  # never undone
        # A "not revoked" read in flight across a revocation is not kept; "revoked" is.
        self.assertFalse(self.cache.put_revoked(5, b"ca", ticket, False, 0.0))
        self.assertTrue(self.cache.put_revoked(7, b"ca", ticket, True, 0.0))

    def test_not_revoked_is_kept_a_minute_at_most(self) -> None:
        """Without a notification (a revocation by an older sixchat), a minute at most."""
        ttl = self.cache.not_revoked_ttl
        self.cache.put_revoked(5, b"ca", self.cache.ticket(), False, 100.0)
        self.cache.put_revoked(6, b"ca", self.cache.ticket(), True, 100.0)
        self.assertIs(self.cache.revoked(5, b"ca", 100.0 + ttl - 0.001), False)
        self.assertIsNone(self.cache.revoked(5, b"ca", 100.0 + ttl))
        self.assertIs(self.cache.revoked(6, b"ca", 100.0 + 10 * ttl), True)

    def test_valid_until(self) -> None:
        early = NOW + timedelta(seconds=5)
        self.assertEqual(valid_until(state(1), []), LATER)
        self.assertEqual(valid_until(state(1), [CERT_END, early]), early)
        self.assertEqual(valid_until(IdentityState(A, (), b"c"), [CERT_END]), CERT_END)
        self.assertEqual(valid_until(IdentityState(A), []), FOREVER)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from("rwfg"), st.integers(0, 2), st.integers(0, 7)),
                    max_size=60))  # fmt: skip
    def test_never_older_than_the_last_notification(self, ops: list[Any]) -> None:
        """
        Against a model database whose changes are notified at once: reads start (taking
        a snapshot and a ticket) and finish (put) in any order, interleaved with writes;
        whatever the cache answers is the latest version.
        """
        cache = LookupCache(max_states=2)
        cache.sync(0)
        versions = [0, 0, 0]
        reads: list[tuple[str, int, int]] = []
        for op, k, pick in ops:
            key = f"u{k}@example.com"
            if op == "w":
                versions[k] += 1
                cache.invalidate(key)
            elif op == "r":
                reads.append((key, cache.ticket(), versions[k]))
            elif op == "f" and reads:
                rkey, ticket, version = reads.pop(pick % len(reads))
                cache.put(rkey, ticket, NOW, state(version), LATER)
            got = cache.get(key, NOW)
            if got is not None:
                self.assertEqual(got, state(versions[k]))


class SharedCacheTests(PostgresTestCase):
    """Two stores (two registry instances) on one database, each with its cache."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.a = yield self.openStore()
        self.b = yield self.openStore()
        self.heard_keys = self.collect(self.b)

    def nodes(self, store: Any, now: Any = NOW) -> defer.Deferred[list[str]]:
        d = store.state(A, now)
        return d.addCallback(lambda s: [b.node for b in s.bindings])

    def heard(self, count: int) -> defer.Deferred[None]:
        """B heard of C{count} changes of alice's (so no read of B is spoilt by them)."""
        return self.waitUntil(lambda: self.heard_keys.count(A) >= count, timeout=self.b.cache_fresh)

    @defer.inlineCallbacks
    def cached_in_b(self, expected: list[str], changes: int = 1) -> Any:
        """
        Once B heard of alice's C{changes}, read her state through B twice; the second
        answer comes from B's cache.
        """
        yield self.heard(changes)
        self.assertEqual((yield self.nodes(self.b)), expected)
        hits = self.b.cache.hits
        self.assertEqual((yield self.nodes(self.b)), expected)
        self.assertEqual(self.b.cache.hits, hits + 1)

    @defer.inlineCallbacks
    def test_removed_through_a_gone_through_b(self) -> Any:
        """The test of the issue: register and remove through A, look up through B."""
        yield self.register(self.a)
        yield self.cached_in_b(["laptop"])
        yield self.a.unregister(A, "laptop")
        # Once B heard of the change its lookups never answer the removed binding ...
        yield self.heard(2)
        self.assertEqual((yield self.nodes(self.b)), [])
        # ... and a new registration through A is seen as soon as B hears of it.
        yield self.register(self.a, node="phone")
        yield self.heard(3)
        self.assertEqual((yield self.nodes(self.b)), ["phone"])

    @defer.inlineCallbacks
    def test_removed_through_a_polled_through_b_within_the_bound(self) -> Any:
        """Polling B from the moment A's unregister is answered: gone within the bound."""
        yield self.register(self.a)
        yield self.cached_in_b(["laptop"])
        yield self.a.unregister(A, "laptop")
        answers: list[list[str]] = []

        def poll() -> None:
            self.nodes(self.b).addCallback(answers.append)

        def gone() -> bool:
            poll()
            return bool(answers) and answers[-1] == []

        yield self.waitUntil(gone, timeout=self.b.cache_fresh)
        self.assertEqual((yield self.nodes(self.b)), [])

    @defer.inlineCallbacks
    def test_own_writes_are_read_at_once(self) -> Any:
        """Through one instance: a lookup after the write's answer sees it, not the cache."""
        yield self.register(self.b)
        yield self.cached_in_b(["laptop"])
        yield self.register(self.b, node="phone")  # B reads it before hearing of it
        self.assertEqual((yield self.nodes(self.b)), ["laptop", "phone"])
        yield self.b.unregister(A, "laptop")
        self.assertEqual((yield self.nodes(self.b)), ["phone"])

    @defer.inlineCallbacks
    def test_expired_bindings_are_never_answered(self) -> Any:
        """No expiry pass runs: the cached state ends where its first binding does."""
        soon = NOW + timedelta(seconds=10)
        yield self.register(self.a, until=soon)
        yield self.register(self.a, node="phone")
        yield self.cached_in_b(["laptop", "phone"], changes=2)
        self.assertEqual((yield self.nodes(self.b, soon - timedelta(microseconds=1))),
                         ["laptop", "phone"])  # fmt: skip
        self.assertEqual((yield self.nodes(self.b, soon)), ["phone"])
        # Nor a certificate past its notAfter.
        yield self.register(self.a, node="tablet", cert_not_after=NOW + timedelta(seconds=20))
        yield self.heard(3)
        self.assertEqual((yield self.nodes(self.b, NOW + timedelta(seconds=15))),
                         ["phone", "tablet"])  # fmt: skip
        self.assertEqual((yield self.nodes(self.b, NOW + timedelta(seconds=20))), ["phone"])

    @defer.inlineCallbacks
    def test_an_earlier_time_is_read_from_the_database(self) -> Any:
        yield self.register(self.a, until=NOW + timedelta(seconds=10))
        self.assertEqual((yield self.nodes(self.b, NOW + timedelta(seconds=11))), [])
        yield self.register(self.a, node="phone")
        yield self.heard(2)
        self.assertEqual((yield self.nodes(self.b, NOW + timedelta(seconds=11))), ["phone"])
        self.assertEqual((yield self.nodes(self.b, NOW)), ["laptop", "phone"])

    @defer.inlineCallbacks
    def test_lost_notifications_cost_at_most_the_bound(self) -> Any:
        """
        A change B never hears of (written behind every store's back, as a listener whose
        connection died without a sign would miss it) stops being hidden by B's cache once
        B's listener has not proved itself alive for C{cache_fresh} seconds.
        """
        yield self.register(self.a)
        yield self.cached_in_b(["laptop"])
        yield admin(self.dsn, "DELETE FROM bindings")  # no NOTIFY
        self.assertEqual((yield self.nodes(self.b)), ["laptop"])  # the cache, as designed
        listener = self.b._listener
        assert listener is not None
        real = self.b._monotonic
        self.b._monotonic = lambda: listener.alive_at + self.b.cache_fresh + 0.001
        try:
            self.assertEqual((yield self.nodes(self.b)), [])
        finally:
            self.b._monotonic = real

    @defer.inlineCallbacks
    def test_the_listener_stalled_in_real_time(self) -> Any:
        """The same with a listener that really stops: no heartbeat, no cache."""
        yield self.register(self.a)
        yield self.cached_in_b(["laptop"])
        self.b.heartbeat = 3600.0  # its last round trip is the one before this
        listener = self.b._listener
        assert listener is not None
        yield admin(self.dsn, "DELETE FROM bindings")
        yield self.waitUntil(
            lambda: self.b._monotonic() - listener.alive_at > self.b.cache_fresh,
            timeout=self.b.cache_fresh + 2,
        )
        self.assertEqual((yield self.nodes(self.b)), [])

    @defer.inlineCallbacks
    def test_a_reconnected_listener_starts_empty(self) -> Any:
        yield self.register(self.a)
        yield self.cached_in_b(["laptop"])
        listener = self.b._listener
        assert listener is not None and listener.connection is not None
        epoch = listener.epoch
        self.b.backoff_initial = 0.5
        yield admin(self.dsn, "SELECT pg_terminate_backend(%s)",
                    (listener.connection.info.backend_pid,))  # fmt: skip
        yield admin(self.dsn, "DELETE FROM bindings")  # while B is not listening: no NOTIFY
        yield self.waitUntil(lambda: listener.epoch > epoch and listener.live, timeout=5)
        self.assertEqual((yield self.nodes(self.b)), [])

    @defer.inlineCallbacks
    def test_revocation_through_a_reaches_b_cache(self) -> Any:
        yield self.a.record_issued("carol@example.com", 5, b"issuer", b"cert")
        self.assertFalse((yield self.b.is_revoked(5, b"issuer")))
        hits = self.b.cache.hits
        self.assertFalse((yield self.b.is_revoked(5, b"issuer")))
        self.assertEqual(self.b.cache.hits, hits)  # revocation answers have their own count
        self.assertIs(self.b.cache.revoked(5, issuer_key(b"issuer")[0], self.b._monotonic()), False)
        yield self.a.revoke(5, b"issuer", NOW)
        yield self.waitUntil(lambda: "carol@example.com" in self.heard_keys,
                             timeout=self.b.cache_fresh)  # fmt: skip
        # The revocation marker follows the identities in the same transaction.
        key = issuer_key(b"issuer")[0]
        yield self.waitUntil(
            lambda: self.b.cache.revoked(5, key, self.b._monotonic()) is None, timeout=1
        )
        self.assertTrue((yield self.b.is_revoked(5, b"issuer")))
        self.assertNotIn(REVOCATION, self.heard_keys)  # not an identity: subscribers never see it

    @defer.inlineCallbacks
    def test_a_recheck_on_the_identity_notification_sees_the_revocation(self) -> Any:
        """
        What a registry connection does when it hears of its identity (irp-1 §7.7): ask
        at once whether its certificate is revoked. B's cached "not revoked" must be gone
        by then.
        """
        yield self.a.record_issued(A, 7, b"issuer", b"cert")
        self.assertFalse((yield self.b.is_revoked(7, b"issuer")))  # cached in B
        answers: list[bool] = []

        def recheck(identity: str) -> None:
            if identity == A:
                self.b.is_revoked(7, b"issuer").addCallback(answers.append)

        self.b.subscribe(recheck)
        yield self.a.revoke(7, b"issuer", NOW)
        yield self.waitUntil(lambda: bool(answers), timeout=self.b.cache_fresh)
        self.assertEqual(answers, [True])

    @defer.inlineCallbacks
    def test_revoked_binding_leaves_b_cache(self) -> Any:
        yield self.register(self.a, serial=9)
        yield self.cached_in_b(["laptop"])
        yield self.a.revoke(9, b"issuer", NOW)
        yield self.heard(2)
        self.assertEqual((yield self.nodes(self.b)), [])

    @defer.inlineCallbacks
    def test_without_cache(self) -> Any:
        store = yield self.openStore(cache_size=0)
        yield self.register(self.a)
        self.assertIsNone(store.cache)
        self.assertEqual((yield self.nodes(store)), ["laptop"])
        yield admin(self.dsn, "DELETE FROM bindings")
        self.assertEqual((yield self.nodes(store)), [])
