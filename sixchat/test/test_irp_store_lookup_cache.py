"""
The lookup cache alone (L{sixchat.irp.store.lookup_cache}): tickets, time bounds, sizes,
revocation answers, and a property test against a model database. The stores using it are
tested in C{test_irp_postgres_cache} (two stores on one PostgreSQL database) and
C{test_irp_sqlite_cache} (two stores on one SQLite file).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from sixchat.irp.store.interfaces import Binding, IdentityState
from sixchat.irp.store.lookup_cache import FOREVER, LookupCache, valid_until

A = "alice@example.com"
NOW = datetime(2026, 11, 26, 0, 25, 21, 123456, tzinfo=UTC)
LATER = NOW + timedelta(seconds=300)
CERT_END = NOW + timedelta(days=365)


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
        # A clock that went back (the SQLite store's is the reactor's, the wall clock)
        # does not stretch the minute.
        self.assertIsNone(self.cache.revoked(5, b"ca", 99.0))

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
