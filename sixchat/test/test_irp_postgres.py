"""
L{sixchat.irp.store.postgres.PostgresStore} against a real PostgreSQL (see L{sixchat.test.pg}):
the interface's semantics, then what only a shared database has: two stores (standing in for
two registry processes) on one database see each other's writes at once, hear of each other's
changes through LISTEN/NOTIFY, and race safely on tokens, the node limit and migrations.

These tests use the real reactor and real threads (the store's pool and listener); every wait
is bounded by a Deferred timeout.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from sixchat import pki
from sixchat.irp.messages import Contact
from sixchat.irp.store.interfaces import ConflictError
from sixchat.test import certs, pg

if pg.psycopg_missing() is None:
    import psycopg

    from sixchat.irp.store.postgres import (
        MIGRATIONS,
        PostgresStore,
        PostgresStoreError,
        issuer_key,
        mask_dsn,
    )
from sixchat.test.test_irp_store import StoreTestsMixin

NOW = datetime(2026, 11, 26, 0, 25, 21, 123456, tzinfo=UTC)
LATER = NOW + timedelta(seconds=300)
CERT_END = NOW + timedelta(days=365)
C1 = [Contact("2001:db8::5", 4605), Contact("192.0.2.7", 4605)]
C2 = [Contact("2001:db8::6", 4606)]


def fake_cert(label: str) -> bytes:
    """Bytes standing for a certificate the store need not parse."""
    return b"not a certificate: " + label.encode()


def admin(dsn: str, query: Any, params: Any = None) -> defer.Deferred[list[Any]]:
    """Run one statement on a connection of its own, off the reactor thread."""

    def run() -> list[Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    return threads.deferToThread(run)


class PostgresTestCase(unittest.TestCase):
    """A fresh database per test, and stores on it that are closed at cleanup."""

    skip = pg.skip_reason()
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dsn = yield pg.database_for(self)

    @defer.inlineCallbacks
    def openStore(self, **kwargs: Any) -> Any:
        store = PostgresStore(self.dsn, reactor, **kwargs)
        self.addCleanup(store.close)
        yield store.open()
        return store

    def register(self, store: PostgresStore, identity: str = "alice@example.com",
                 node: str = "laptop", contacts: list[Contact] = C1, cert: bytes | None = None,
                 serial: int = 1, cert_not_after: datetime = CERT_END, now: datetime = NOW,
                 until: datetime = LATER, max_nodes: int = 16) -> defer.Deferred[None]:  # fmt: skip
        return store.register(
            identity, node, list(contacts), cert if cert is not None else fake_cert(node),
            serial, cert_not_after, now, until, max_nodes,
        )  # fmt: skip

    def collect(self, store: PostgresStore) -> list[str]:
        """Subscribe a recorder to C{store}."""
        seen: list[str] = []
        store.subscribe(seen.append)
        return seen

    def waitUntil(self, predicate: Any, timeout: float = 1.0) -> defer.Deferred[None]:
        """Fires once C{predicate()} holds; fails with a timeout after C{timeout} seconds."""
        d: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            if d.called:
                return
            if predicate():
                d.callback(None)
            else:
                call[0] = reactor.callLater(0.01, check)

        call = [reactor.callLater(0, check)]

        def cancel(result: Any) -> Any:
            if call[0].active():
                call[0].cancel()
            return result

        d.addTimeout(timeout, reactor)
        return d.addBoth(cancel)


class PostgresStoreTests(StoreTestsMixin, PostgresTestCase):
    """The interface's semantics, as for every store (L{StoreTestsMixin})."""

    def setUp(self) -> Any:
        StoreTestsMixin.setUp(self)
        return PostgresTestCase.setUp(self)

    def makeStore(self) -> defer.Deferred[Any]:
        store = PostgresStore(self.dsn, reactor)
        return store.open().addCallback(lambda _: store)


class SingleStoreTests(PostgresTestCase):
    """What the mixin leaves out or what is specific to PostgreSQL, on one store."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.store = yield self.openStore()

    @defer.inlineCallbacks
    def test_register_round_trip(self) -> Any:
        serial = (1 << 158) + 12345  # a 20-octet serial does not fit bigint
        yield self.register(self.store, "alice@Example.COM", serial=serial)
        state = yield self.store.state("alice@example.com", NOW + timedelta(seconds=1))
        self.assertEqual(state.identity, "alice@Example.COM")
        self.assertEqual(len(state.bindings), 1)
        b = state.bindings[0]
        self.assertEqual((b.node, b.contacts, b.cert, b.serial), ("laptop", tuple(C1),
                         fake_cert("laptop"), serial))  # fmt: skip
        self.assertEqual((b.until, b.updated), (LATER, NOW))
        self.assertIs(b.until.tzinfo, UTC)
        self.assertEqual(state.cert, fake_cert("laptop"))
        self.assertTrue(state.known)

    @defer.inlineCallbacks
    def test_expire(self) -> Any:
        yield self.register(self.store, "alice@Example.com", until=NOW + timedelta(seconds=60))
        yield self.register(self.store, "bob@example.com", until=NOW + timedelta(seconds=90))
        yield self.register(self.store, "carol@example.com", node="phone",
                            cert_not_after=NOW + timedelta(seconds=45))  # fmt: skip
        first = yield self.store.next_expiry()
        self.assertEqual(first, NOW + timedelta(seconds=45))
        touched = yield self.store.expire(NOW + timedelta(seconds=60))
        self.assertEqual(touched, {"alice@Example.com", "carol@example.com"})
        self.assertEqual((yield self.store.next_expiry()), NOW + timedelta(seconds=90))
        self.assertEqual((yield self.store.expire(NOW + timedelta(seconds=60))), set())
        yield self.store.expire(NOW + timedelta(seconds=90))
        self.assertIsNone((yield self.store.next_expiry()))

    @defer.inlineCallbacks
    def test_identity_cert_most_recent_unexpired(self) -> Any:
        yield self.register(self.store, node="a", cert=b"A", cert_not_after=NOW + timedelta(1))
        yield self.register(self.store, node="b", cert=b"B",
                            cert_not_after=NOW + timedelta(seconds=10))  # fmt: skip
        state = yield self.store.state("alice@example.com", NOW)
        self.assertEqual(state.cert, b"B")
        yield self.store.unregister("alice@example.com", "b")
        # B expires: the earlier, still valid A is the most recent unexpired one (§7.4).
        state = yield self.store.state("alice@example.com", NOW + timedelta(seconds=10))
        self.assertEqual(state.cert, b"A")
        # Presenting A again makes it the most recent, even with an older clock.
        yield self.register(self.store, node="b", cert=b"B", cert_not_after=CERT_END)
        yield self.register(self.store, node="a", cert=b"A", cert_not_after=CERT_END)
        state = yield self.store.state("alice@example.com", NOW)
        self.assertEqual(state.cert, b"A")

    @defer.inlineCallbacks
    def test_revoke_real_certificates(self) -> Any:
        """Revocation matches serial and issuer name: another CA's same serial survives."""
        ca1, ca2 = certs.make_ca(name="pg test CA 1"), certs.make_ca(name="pg test CA 2")
        key = certs.key_for("ed25519", "leaf:pg")

        def leaf(ca: certs.TestCA, who: str) -> bytes:
            cert = pki.issue_leaf(ca.key, ca.cert, [who], key.public_key(), serial=4242)
            return cert.public_bytes(pki.serialization.Encoding.DER)

        a1, b2 = leaf(ca1, "alice@example.com"), leaf(ca2, "bob@example.com")
        yield self.register(self.store, "alice@example.com", cert=a1, serial=4242)
        yield self.register(self.store, "bob@example.com", cert=b2, serial=4242)
        touched = yield self.store.revoke(4242, ca1.cert_der, NOW)
        self.assertEqual(touched, {"alice@example.com"})
        alice = yield self.store.state("alice@example.com", NOW)
        bob = yield self.store.state("bob@example.com", NOW)
        self.assertEqual((alice.bindings, alice.cert), ((), None))
        self.assertFalse(alice.known)
        self.assertEqual(len(bob.bindings), 1)
        self.assertEqual(bob.cert, b2)
        self.assertTrue((yield self.store.is_revoked(4242, ca1.cert_der)))
        self.assertFalse((yield self.store.is_revoked(4242, ca2.cert_der)))
        self.assertFalse((yield self.store.is_revoked(4243, ca1.cert_der)))

    @defer.inlineCallbacks
    def test_revoke_idempotent_and_crl(self) -> Any:
        issuer = b"issuer DER"
        yield self.register(self.store, serial=7)
        self.assertEqual((yield self.store.revoke(7, issuer, NOW)), {"alice@example.com"})
        self.assertEqual((yield self.store.revoke(7, issuer, LATER)), set())
        big = 1 << 150
        yield self.store.revoke(big, issuer, LATER)
        listed = yield self.store.revoked(issuer)
        self.assertEqual(listed, [(7, NOW), (big, LATER)])
        self.assertEqual((yield self.store.revoked(b"other issuer")), [])
        # A register that raced the revocation is never answered.
        yield self.register(self.store, node="late", serial=7)
        state = yield self.store.state("alice@example.com", NOW)
        self.assertEqual((state.bindings, state.cert), ((), None))

    @defer.inlineCallbacks
    def test_record_issued(self) -> Any:
        yield self.store.record_issued("alice@example.com", 9, b"issuer", b"cert")
        yield self.store.record_issued("alice@example.com", 9, b"issuer", b"cert")
        rows = yield admin(self.dsn, "SELECT identity, spelling, cert FROM issued")
        self.assertEqual(rows, [("alice@example.com", "alice@example.com", b"cert")])

    @defer.inlineCallbacks
    def test_subscribers_hear_own_changes(self) -> Any:
        seen = self.collect(self.store)
        yield self.register(self.store, "alice@Example.COM")
        yield self.waitUntil(lambda: "alice@example.com" in seen)
        yield self.store.unregister("alice@example.com", "laptop")
        yield self.store.notify("bob@EXAMPLE.com")
        yield self.waitUntil(lambda: seen.count("alice@example.com") == 2
                             and "bob@example.com" in seen)  # fmt: skip

    @defer.inlineCallbacks
    def test_failing_subscriber_does_not_starve_others(self) -> Any:
        def boom(identity: str) -> None:
            raise RuntimeError("subscriber bug")

        self.store.subscribe(boom)
        seen = self.collect(self.store)
        yield self.store.notify("alice@example.com")
        yield self.waitUntil(lambda: seen == ["alice@example.com"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_rolled_back_change_is_not_announced(self) -> Any:
        seen = self.collect(self.store)
        yield self.register(self.store, node="n0", max_nodes=1)
        yield self.assertFailure(self.register(self.store, node="n1", max_nodes=1), ConflictError)
        yield self.store.notify("marker@example.com")
        yield self.waitUntil(lambda: "marker@example.com" in seen)
        self.assertEqual(seen, ["alice@example.com", "marker@example.com"])

    @defer.inlineCallbacks
    def test_broken_connections_are_replaced(self) -> Any:
        """A database restart (here: every backend killed) costs no failed request."""
        self.store.idle_check = 0
        seen = self.collect(self.store)
        yield self.register(self.store)
        killed = yield admin(
            self.dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        self.assertTrue(killed)
        state = yield self.store.state("alice@example.com", NOW)
        self.assertEqual(len(state.bindings), 1)
        # The listener came back too.
        yield self.waitUntil(lambda: self.store._listener is not None
                             and self.store._listener.connection is not None, 5)  # fmt: skip
        yield self.store.notify("bob@example.com")
        yield self.waitUntil(lambda: "bob@example.com" in seen, 5)

    @defer.inlineCallbacks
    def test_work_runs_off_the_reactor_thread(self) -> Any:
        """Each query runs in the pool, on that thread's own connection."""
        seen = yield defer.gatherResults(
            [self.store._run(lambda conn: (threading.get_ident(), id(conn))) for _ in range(8)]
        )
        self.assertNotIn(threading.get_ident(), {t for t, _ in seen})
        by_thread: dict[int, set[int]] = {}
        for thread, conn in seen:
            by_thread.setdefault(thread, set()).add(conn)
        self.assertTrue(all(len(conns) == 1 for conns in by_thread.values()))

    @defer.inlineCallbacks
    def test_close_twice_and_use_after_close(self) -> Any:
        yield defer.gatherResults([self.store.close(), self.store.close()])
        yield self.store.close()
        yield self.assertFailure(self.store.state("alice@example.com", NOW), RuntimeError)


class MigrationTests(PostgresTestCase):
    @defer.inlineCallbacks
    def test_sequential_opens(self) -> Any:
        a = yield self.openStore()
        yield a.close()
        yield self.openStore()
        rows = yield admin(self.dsn, "SELECT version FROM schema_version ORDER BY version")
        self.assertEqual([r[0] for r in rows], list(range(1, len(MIGRATIONS) + 1)))

    @defer.inlineCallbacks
    def test_concurrent_opens(self) -> Any:
        """Two processes starting together: the advisory lock lets one migrate."""
        stores = [PostgresStore(self.dsn, reactor) for _ in range(3)]
        for s in stores:
            self.addCleanup(s.close)
        yield defer.gatherResults([s.open() for s in stores], consumeErrors=True)
        rows = yield admin(self.dsn, "SELECT version FROM schema_version ORDER BY version")
        self.assertEqual([r[0] for r in rows], list(range(1, len(MIGRATIONS) + 1)))

    @defer.inlineCallbacks
    def test_close_while_opening(self) -> Any:
        store = PostgresStore(self.dsn, reactor)
        opening = store.open()
        closing = store.close()
        yield self.assertFailure(opening, PostgresStoreError)
        yield closing
        self.assertIsNone(store._listener)

    @defer.inlineCallbacks
    def test_newer_schema_refused(self) -> Any:
        yield self.openStore()
        yield admin(self.dsn, "INSERT INTO schema_version (version) VALUES (%s)", (999,))
        store = PostgresStore(self.dsn, reactor)
        failure = yield self.assertFailure(store.open(), PostgresStoreError)
        self.assertIn("999", str(failure))
        yield store.close()


class SharedDatabaseTests(PostgresTestCase):
    """Two stores on one database: two registry processes behind one name."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.a = yield self.openStore()
        self.b = yield self.openStore()

    @defer.inlineCallbacks
    def test_register_visible_at_once(self) -> Any:
        yield self.register(self.a)
        state = yield self.b.state("alice@example.com", NOW)
        self.assertEqual([b.node for b in state.bindings], ["laptop"])
        yield self.b.unregister("alice@example.com", "laptop")
        state = yield self.a.state("alice@example.com", NOW)
        self.assertEqual(state.bindings, ())

    @defer.inlineCallbacks
    def test_subscriber_on_other_instance(self) -> Any:
        seen = self.collect(self.b)
        yield self.register(self.a, "alice@Example.com")
        yield self.waitUntil(lambda: "alice@example.com" in seen, timeout=1.0)
        yield self.a.expire(LATER)
        yield self.waitUntil(lambda: seen.count("alice@example.com") == 2, timeout=1.0)

    @defer.inlineCallbacks
    def test_revocation_reaches_other_instance(self) -> Any:
        seen = self.collect(self.b)
        yield self.a.record_issued("carol@example.com", 5, b"issuer", b"cert")
        yield self.a.revoke(5, b"issuer", NOW)
        # No binding, but connections authenticated by the certificate must hear of it.
        yield self.waitUntil(lambda: "carol@example.com" in seen, timeout=1.0)
        self.assertTrue((yield self.b.is_revoked(5, b"issuer")))

    @defer.inlineCallbacks
    def test_token_race(self) -> Any:
        yield self.a.add_token(b"hash", "alice@example.com", LATER)
        results = yield defer.gatherResults(
            [(self.a if i % 2 else self.b).consume_token(b"hash", NOW) for i in range(16)]
        )
        self.assertEqual([r for r in results if r is not None], ["alice@example.com"])

    @defer.inlineCallbacks
    def test_node_limit_race(self) -> Any:
        attempts = [
            self.register(self.a if i % 2 else self.b, node=f"n{i}").addCallbacks(
                lambda _: "ok", lambda f: f.trap(ConflictError) and "conflict"
            )
            for i in range(24)
        ]
        results = yield defer.gatherResults(attempts)
        self.assertEqual((results.count("ok"), results.count("conflict")), (16, 8))
        state = yield self.b.state("alice@example.com", NOW)
        self.assertEqual(len(state.bindings), 16)

    @defer.inlineCallbacks
    def test_missed_notifications_replayed(self) -> Any:
        """Changes committed while B's listener is disconnected reach B after it reconnects."""
        seen = self.collect(self.b)
        self.b.backoff_initial = 0.5
        listener = self.b._listener
        assert listener is not None and listener.connection is not None
        pid = listener.connection.info.backend_pid
        yield admin(self.dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        yield self.register(self.a)
        yield self.waitUntil(lambda: "alice@example.com" in seen, timeout=5.0)
        assert listener.connection is not None
        self.assertNotEqual(listener.connection.info.backend_pid, pid)


class DSNTests(unittest.TestCase):
    """Passwords never reach logs or errors. No server needed."""

    skip = pg.psycopg_missing()

    def test_mask_url(self) -> None:
        masked = mask_dsn("postgresql://irp:s3cret@db.example.com/sixchat")
        self.assertNotIn("s3cret", masked)
        self.assertIn("***", masked)
        self.assertIn("db.example.com", masked)

    def test_mask_keywords(self) -> None:
        masked = mask_dsn("host=/var/run/postgresql dbname=sixchat password='s3cret'")
        self.assertNotIn("s3cret", masked)
        self.assertIn("/var/run/postgresql", masked)

    def test_no_password(self) -> None:
        self.assertNotIn("***", mask_dsn("postgresql:///sixchat?host=/var/run/postgresql"))

    def test_unparsable(self) -> None:
        self.assertNotIn("s3cret", mask_dsn("host=x password s3cret"))
        e = self.assertRaises(ValueError, PostgresStore, "host=x password s3cret", reactor)
        self.assertNotIn("s3cret", str(e))

    def test_repr(self) -> None:
        store = PostgresStore("postgresql://irp:s3cret@db.example.com/sixchat", reactor)
        self.assertNotIn("s3cret", repr(store))

    @defer.inlineCallbacks
    def test_connection_error_masked(self) -> Any:
        store = PostgresStore(
            "postgresql://irp:s3cret@127.0.0.1:1/sixchat?connect_timeout=5", reactor
        )
        failure = yield self.assertFailure(store.open(), PostgresStoreError)
        self.assertNotIn("s3cret", str(failure))
        self.assertIn("***", str(failure))
        yield store.close()

    def test_issuer_key(self) -> None:
        ca = certs.make_ca(name="pg test CA 1")
        key, name = issuer_key(ca.cert_der)
        self.assertEqual(name, ca.cert.subject.public_bytes())
        self.assertEqual(len(key), 32)
        self.assertEqual(issuer_key(b"junk")[1], None)


class TestSupportTests(unittest.TestCase):
    """L{sixchat.test.pg} says why it cannot provide a database."""

    def test_skip_without_binaries_or_dsn(self) -> None:
        environ = {k: v for k, v in pg.os.environ.items() if k != pg.ENV}
        self.patch(pg.os, "environ", environ)
        self.patch(pg, "find_bindir", lambda: None)
        self.patch(pg, "psycopg_missing", lambda: None)
        self.assertEqual(pg.skip_reason(), pg.SKIP_REASON)
        self.assertIn("install Debian's postgresql package", pg.SKIP_REASON)
        self.assertIn("SIXCHAT_TEST_POSTGRES_DSN", pg.SKIP_REASON)

    def test_dsn_from_environment_needs_no_binaries(self) -> None:
        self.patch(pg.os, "environ", {pg.ENV: "postgresql:///x"})
        self.patch(pg, "find_bindir", lambda: None)
        self.patch(pg, "psycopg_missing", lambda: None)
        self.assertIsNone(pg.skip_reason())
