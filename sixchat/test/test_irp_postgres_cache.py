"""
The PostgreSQL store's lookup cache (L{sixchat.irp.store.lookup_cache}; the cache alone is
tested in C{test_irp_store_lookup_cache}): two
stores on one real database (two registry instances): a change made through A is never
answered by B's cache once B heard of it, and never later than C{cache_fresh} seconds even
when B's notifications are lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from twisted.internet import defer

from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.lookup_cache import REVOCATION
from sixchat.test.test_irp_postgres import (
    NOW,
    PostgresTestCase,
    admin,
)

A = "alice@example.com"


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
