"""
Tests of L{IRegistryStore} implementations.

L{StoreTestsMixin} states what every store must do, against the interface only; a test case
for an implementation mixes it into a trial C{TestCase} and defines C{makeStore()}, which
returns a Deferred firing with a new, I{opened}, empty store (the mixin closes it on
cleanup). L{SQLiteStoreTests} runs it for L{SQLiteStore} and adds what is specific to SQLite
(schema versions, WAL, persistence, notifications between processes).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sixchat._sqlite import to_us
from sixchat.identity import Identity
from sixchat.irp.messages import Contact
from sixchat.irp.store import sqlite as sqlite_store
from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.interfaces import ConflictError, IdentityState, IRegistryStore
from sixchat.irp.store.sqlite import SQLiteStore, StoreError
from sixchat.test import certs

C1 = [Contact("2001:db8::5", 4605), Contact("192.0.2.7", 4605)]
C2 = [Contact("198.51.100.9", 4700)]


def der(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Let the real reactor run until C{predicate()} holds (threads, other stores)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class StoreTestsMixin:
    """
    The behaviour of L{IRegistryStore} (irp-1 §3, §4, §7.4) that the server relies on.

    Needs C{makeStore() -> Deferred[store]} (opened, empty) from the test case.
    """

    ca: certs.TestCA
    other_ca: certs.TestCA

    def makeStore(self) -> defer.Deferred[Any]:
        raise NotImplementedError

    # helpers -----------------------------------------------------------------------------

    async def open_store(self) -> Any:
        store = await self.makeStore()
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        return store

    def setUp(self) -> None:
        self.ca = certs.make_ca()
        self.other_ca = certs.make_ca(name="sixchat test CA (other)")
        self.now = datetime.now(UTC).replace(microsecond=123000)

    def leaf(
        self, name: str = "alice@example.com", ca: certs.TestCA | None = None, **kwargs: Any
    ) -> Identity:
        return certs.make_identity(name, ca or self.ca, **kwargs)

    async def register(
        self,
        store: Any,
        identity: Identity,
        node: str = "laptop",
        contacts: list[Contact] | None = None,
        now: datetime | None = None,
        expires: float = 300,
        max_nodes: int = 16,
        spelling: str | None = None,
        not_after: datetime | None = None,
    ) -> None:
        now = now or self.now
        await store.register(
            spelling or identity.names[0],
            node,
            contacts or C1,
            identity.leaf_der,
            identity.leaf.serial_number,
            not_after or identity.leaf.not_valid_after_utc,
            now,
            now + timedelta(seconds=expires),
            max_nodes,
        )

    # interface -----------------------------------------------------------------------------

    async def test_provides_interface(self) -> None:
        store = await self.open_store()
        self.assertTrue(verifyObject(IRegistryStore, store))

    # bindings ----------------------------------------------------------------------------

    async def test_unknown_identity(self) -> None:
        store = await self.open_store()
        state = await store.state("nobody@example.com", self.now)
        self.assertIsInstance(state, IdentityState)
        self.assertFalse(state.known)
        self.assertEqual(state.bindings, ())
        self.assertIsNone(state.cert)

    async def test_register_and_state(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice)
        state = await store.state("alice@example.com", self.now + timedelta(seconds=1))
        self.assertTrue(state.known)
        self.assertEqual(state.identity, "alice@example.com")
        self.assertEqual(state.cert, alice.leaf_der)
        (binding,) = state.bindings
        self.assertEqual(binding.node, "laptop")
        self.assertEqual(binding.contacts, tuple(C1))
        self.assertEqual(binding.cert, alice.leaf_der)
        self.assertEqual(binding.serial, alice.leaf.serial_number)
        self.assertEqual(binding.until, self.now + timedelta(seconds=300))
        self.assertEqual(binding.updated, self.now)

    async def test_identity_comparison(self) -> None:
        """Domains compare case-insensitively, local parts exactly; answers keep the spelling."""
        store = await self.open_store()
        alice = self.leaf("alice@Example.COM")
        await self.register(store, alice)
        state = await store.state("alice@example.com", self.now)
        self.assertEqual(state.identity, "alice@Example.COM")
        self.assertEqual(len(state.bindings), 1)
        other = await store.state("Alice@example.com", self.now)
        self.assertFalse(other.known)

    async def test_register_replaces_node(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice)
        later = self.now + timedelta(seconds=10)
        await self.register(store, alice, contacts=C2, now=later)
        (binding,) = (await store.state("alice@example.com", later)).bindings
        self.assertEqual(binding.contacts, tuple(C2))
        self.assertEqual(binding.updated, later)
        self.assertEqual(binding.until, later + timedelta(seconds=300))

    async def test_several_nodes(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice, "laptop")
        await self.register(store, alice, "phone", contacts=C2)
        state = await store.state("alice@example.com", self.now)
        self.assertEqual(sorted(b.node for b in state.bindings), ["laptop", "phone"])

    async def test_node_limit(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice, "a", max_nodes=2)
        await self.register(store, alice, "b", max_nodes=2)
        with self.assertRaises(ConflictError):  # type: ignore[attr-defined]
            await self.register(store, alice, "c", max_nodes=2)
        await self.register(store, alice, "b", contacts=C2, max_nodes=2)  # refresh: fine
        await store.unregister("alice@example.com", "a")
        await self.register(store, alice, "c", max_nodes=2)
        state = await store.state("alice@example.com", self.now)
        self.assertEqual(sorted(b.node for b in state.bindings), ["b", "c"])

    async def test_expired_bindings_do_not_count_toward_limit(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice, "a", expires=30, max_nodes=1)
        later = self.now + timedelta(seconds=31)
        await self.register(store, alice, "b", now=later, max_nodes=1)
        state = await store.state("alice@example.com", later)
        self.assertEqual([b.node for b in state.bindings], ["b"])

    async def test_unregister(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice)
        self.assertTrue(await store.unregister("alice@EXAMPLE.com", "laptop"))
        self.assertFalse(await store.unregister("alice@example.com", "laptop"))
        self.assertFalse(await store.unregister("nobody@example.com", "laptop"))
        state = await store.state("alice@example.com", self.now)
        # No live node, but a known, unrevoked certificate: a record without node (§3.3).
        self.assertEqual(state.bindings, ())
        self.assertEqual(state.cert, alice.leaf_der)
        self.assertTrue(state.known)

    async def test_expiry(self) -> None:
        store = await self.open_store()
        alice, bob = self.leaf(), self.leaf("bob@example.com")
        self.assertIsNone(await store.next_expiry())
        await self.register(store, alice, expires=30)
        await self.register(store, bob, expires=60)
        self.assertEqual(await store.next_expiry(), self.now + timedelta(seconds=30))
        t30 = self.now + timedelta(seconds=30)
        # state() already hides the expired binding before expire() runs.
        self.assertEqual((await store.state("alice@example.com", t30)).bindings, ())
        self.assertEqual(len((await store.state("bob@example.com", t30)).bindings), 1)
        self.assertEqual(await store.expire(t30), {"alice@example.com"})
        self.assertEqual(await store.expire(t30), set())
        self.assertEqual(await store.next_expiry(), self.now + timedelta(seconds=60))
        self.assertEqual(await store.expire(self.now + timedelta(hours=1)), {"bob@example.com"})
        self.assertIsNone(await store.next_expiry())

    async def test_identity_cert_is_most_recent_unrevoked_unexpired(self) -> None:
        """irp-1 §7.4."""
        store = await self.open_store()
        first = self.leaf()
        second = self.leaf(key=certs.new_key("ed25519"))
        await self.register(store, first, "laptop")
        later = self.now + timedelta(seconds=5)
        await self.register(store, second, "phone", now=later)
        self.assertEqual((await store.state("alice@example.com", later)).cert, second.leaf_der)
        # Presenting the first again makes it the most recent.
        later2 = later + timedelta(seconds=5)
        await self.register(store, first, "laptop", now=later2)
        self.assertEqual((await store.state("alice@example.com", later2)).cert, first.leaf_der)
        # Revoked: the next most recent takes its place, and its binding is gone.
        await store.revoke(first.leaf.serial_number, self.ca.cert_der, later2)
        state = await store.state("alice@example.com", later2)
        self.assertEqual(state.cert, second.leaf_der)
        self.assertEqual([b.node for b in state.bindings], ["phone"])

    async def test_identity_cert_expired(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        cert_end = self.now + timedelta(seconds=100)
        await self.register(store, alice, expires=3600, not_after=cert_end)
        self.assertTrue((await store.state("alice@example.com", self.now)).known)
        state = await store.state("alice@example.com", cert_end)
        self.assertIsNone(state.cert)
        self.assertEqual(state.bindings, ())
        self.assertFalse(state.known)

    # revocation ----------------------------------------------------------------------------

    async def test_revoke(self) -> None:
        store = await self.open_store()
        alice, bob = self.leaf(), self.leaf("bob@example.com")
        await self.register(store, alice, "laptop")
        await self.register(store, alice, "phone")
        await self.register(store, bob)
        serial = alice.leaf.serial_number
        self.assertFalse(await store.is_revoked(serial, self.ca.cert_der))
        touched = await store.revoke(serial, self.ca.cert_der, self.now)
        self.assertEqual(touched, {"alice@example.com"})
        self.assertTrue(await store.is_revoked(serial, self.ca.cert_der))
        self.assertEqual(await store.revoke(serial, self.ca.cert_der, self.now), set())
        alice_state = await store.state("alice@example.com", self.now)
        self.assertEqual(alice_state.bindings, ())
        self.assertIsNone(alice_state.cert)  # revoked certificates are never returned
        self.assertFalse(alice_state.known)
        self.assertEqual(len((await store.state("bob@example.com", self.now)).bindings), 1)
        self.assertEqual(await store.revoked(self.ca.cert_der), [(serial, self.now)])
        self.assertEqual(await store.revoked(self.other_ca.cert_der), [])

    async def test_revocation_is_per_issuer(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice)
        serial = alice.leaf.serial_number
        await store.revoke(serial, self.other_ca.cert_der, self.now)
        self.assertTrue(await store.is_revoked(serial, self.other_ca.cert_der))
        self.assertFalse(await store.is_revoked(serial, self.ca.cert_der))
        state = await store.state("alice@example.com", self.now)
        self.assertEqual(len(state.bindings), 1)
        self.assertEqual(state.cert, alice.leaf_der)

    async def test_revoked_certificate_binding_hidden(self) -> None:
        """A binding made with an already revoked certificate is never published."""
        store = await self.open_store()
        alice = self.leaf()
        await store.revoke(alice.leaf.serial_number, self.ca.cert_der, self.now)
        await self.register(store, alice)
        state = await store.state("alice@example.com", self.now)
        self.assertEqual(state.bindings, ())
        self.assertIsNone(state.cert)

    async def test_large_serials(self) -> None:
        """RFC 5280 allows 20-octet serials (159 bits); they do not fit a 64-bit integer."""
        store = await self.open_store()
        serial = 2**158 + 12345
        alice = self.leaf(serial=serial)
        await self.register(store, alice)
        (binding,) = (await store.state("alice@example.com", self.now)).bindings
        self.assertEqual(binding.serial, serial)
        await store.record_issued("alice@example.com", serial, self.ca.cert_der, alice.leaf_der)
        await store.revoke(serial, self.ca.cert_der, self.now)
        self.assertEqual(await store.revoked(self.ca.cert_der), [(serial, self.now)])
        self.assertTrue(await store.is_revoked(serial, self.ca.cert_der))

    async def test_record_issued(self) -> None:
        store = await self.open_store()
        alice = self.leaf()
        await store.record_issued(
            "alice@example.com", alice.leaf.serial_number, self.ca.cert_der, alice.leaf_der
        )
        # Issued but never registered: not known to lookups (§7.4).
        self.assertFalse((await store.state("alice@example.com", self.now)).known)

    # tokens --------------------------------------------------------------------------------

    async def test_token_single_use(self) -> None:
        store = await self.open_store()
        h = os.urandom(32)
        await store.add_token(h, "alice@example.com", self.now + timedelta(days=7))
        self.assertIsNone(await store.consume_token(os.urandom(32), self.now))
        self.assertIsNone(await store.token_identity(os.urandom(32), self.now))
        # Peeking neither uses the token nor needs to be repeated.
        self.assertEqual(await store.token_identity(h, self.now), "alice@example.com")
        self.assertEqual(await store.token_identity(h, self.now), "alice@example.com")
        self.assertEqual(await store.consume_token(h, self.now), "alice@example.com")
        self.assertIsNone(await store.consume_token(h, self.now))
        self.assertIsNone(await store.token_identity(h, self.now))

    async def test_token_expires(self) -> None:
        store = await self.open_store()
        late, early = os.urandom(32), os.urandom(32)
        expires = self.now + timedelta(days=7)
        await store.add_token(late, "alice@example.com", expires)
        await store.add_token(early, "bob@example.com", expires)
        self.assertIsNone(await store.token_identity(late, expires))
        self.assertIsNone(await store.consume_token(late, expires))
        just_before = expires - timedelta(milliseconds=1)
        self.assertEqual(await store.consume_token(early, just_before), "bob@example.com")

    async def test_token_concurrent_consumers(self) -> None:
        store = await self.open_store()
        h = os.urandom(32)
        await store.add_token(h, "alice@example.com", self.now + timedelta(days=1))
        results = await defer.gatherResults([store.consume_token(h, self.now) for _ in range(8)])
        winners = [r for r in results if r is not None]
        self.assertEqual(winners, ["alice@example.com"])

    # notifications ---------------------------------------------------------------------------

    async def test_notifications(self) -> None:
        store = await self.open_store()
        seen: list[str] = []
        store.subscribe(seen.append)
        alice = self.leaf()
        await self.register(store, alice)
        await wait_for(lambda: seen.count("alice@example.com") >= 1)
        await store.unregister("alice@example.com", "laptop")
        await wait_for(lambda: seen.count("alice@example.com") >= 2)
        await self.register(store, alice, expires=30)
        await wait_for(lambda: seen.count("alice@example.com") >= 3)
        await store.expire(self.now + timedelta(seconds=31))
        await wait_for(lambda: seen.count("alice@example.com") >= 4)
        await self.register(store, alice, now=self.now + timedelta(seconds=40))
        await wait_for(lambda: seen.count("alice@example.com") >= 5)
        await store.revoke(alice.leaf.serial_number, self.ca.cert_der, self.now)
        await wait_for(lambda: seen.count("alice@example.com") >= 6)
        await store.notify("bob@example.com")
        await wait_for(lambda: "bob@example.com" in seen)
        self.assertTrue(all(threading.current_thread() is threading.main_thread() for _ in seen))


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    """The mixin for L{SQLiteStore}, plus what only SQLite has."""

    def path(self) -> str:
        return os.path.abspath(self.mktemp()) + ".sqlite"

    def makeStore(self, path: str | None = None, **kwargs: Any) -> defer.Deferred[Any]:
        store = SQLiteStore(path or self.path(), reactor, **kwargs)
        return store.open().addCallback(lambda _: store)

    async def test_schema_and_wal(self) -> None:
        path = self.path()
        store = await self.makeStore(path)
        await store.close()
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT version FROM schema_version").fetchall(),
            [(sqlite_store.SCHEMA_VERSION,)],
        )
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    async def test_persistence(self) -> None:
        path = self.path()
        store = await self.makeStore(path)
        alice = self.leaf()
        await self.register(store, alice)
        h = os.urandom(32)
        await store.add_token(h, "bob@example.com", self.now + timedelta(days=1))
        await store.add_token(b"used" * 8, "carol@example.com", self.now + timedelta(days=1))
        await store.consume_token(b"used" * 8, self.now)
        bob = self.leaf("bob@example.com")
        await store.revoke(bob.leaf.serial_number, self.ca.cert_der, self.now)
        await store.close()

        again = await self.makeStore(path)
        self.addCleanup(again.close)
        state = await again.state("alice@example.com", self.now)
        self.assertEqual([b.node for b in state.bindings], ["laptop"])
        self.assertEqual(state.cert, alice.leaf_der)
        self.assertTrue(await again.is_revoked(bob.leaf.serial_number, self.ca.cert_der))
        self.assertIsNone(await again.consume_token(b"used" * 8, self.now))
        self.assertEqual(await again.consume_token(h, self.now), "bob@example.com")

    async def test_newer_schema_refused(self) -> None:
        path = self.path()
        store = await self.makeStore(path)
        await store.close()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE schema_version SET version = 99")
        conn.commit()
        conn.close()
        with self.assertRaises(StoreError) as caught:
            await self.makeStore(path)
        self.assertIn("schema version 99", str(caught.exception))

    async def test_migrations_apply_in_order(self) -> None:
        """An old database gets exactly the missing steps, each once."""
        path = self.path()
        store = await self.makeStore(path)
        await store.close()
        extra = ("CREATE TABLE later_step (x INTEGER)", "INSERT INTO later_step VALUES (1)")
        self.patch(sqlite_store, "MIGRATIONS", [*sqlite_store.MIGRATIONS, extra])
        self.patch(sqlite_store, "SCHEMA_VERSION", len(sqlite_store.MIGRATIONS))
        for _ in range(2):
            store = await self.makeStore(path)
            await store.close()
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT version FROM schema_version").fetchone()[0],
            len(sqlite_store.MIGRATIONS),
        )
        self.assertEqual(conn.execute("SELECT count(*) FROM later_step").fetchone()[0], 1)

    async def test_cannot_open(self) -> None:
        with self.assertRaises(StoreError) as caught:
            await self.makeStore(os.path.join(self.mktemp(), "missing", "x.sqlite"))
        self.assertIn("cannot open registry database", str(caught.exception))

    async def test_not_a_database(self) -> None:
        path = self.path()
        with open(path, "wb") as f:
            f.write(b"this is not a database, " * 100)
        with self.assertRaises(StoreError):
            await self.makeStore(path)

    async def test_work_runs_off_the_reactor_thread(self) -> None:
        store = await self.open_store()
        ident = await store._run(threading.get_ident)
        self.assertNotEqual(ident, threading.get_ident())

    async def test_changes_from_other_processes(self) -> None:
        """A second store on the same file stands in for another process (the admin CLI)."""
        path = self.path()
        watching = await self.makeStore(path, poll_interval=0.05)
        self.addCleanup(watching.close)
        seen: list[str] = []
        watching.subscribe(seen.append)
        other = await self.makeStore(path)
        self.addCleanup(other.close)
        await self.register(other, self.leaf())
        await wait_for(lambda: "alice@example.com" in seen)
        self.assertEqual(seen, ["alice@example.com"])
        # Its own changes reach it once, not once more through the poll.
        await self.register(watching, self.leaf("bob@example.com"))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(seen.count("bob@example.com"), 1)

    async def test_revoking_unbound_certificate_announces_its_identity(self) -> None:
        """Connections authenticated by a revoked certificate must hear of it (§7.7)."""
        store = await self.open_store()
        alice = self.leaf()
        await store.record_issued(
            "alice@example.com", alice.leaf.serial_number, self.ca.cert_der, alice.leaf_der
        )
        seen: list[str] = []
        store.subscribe(seen.append)
        touched = await store.revoke(alice.leaf.serial_number, self.ca.cert_der, self.now)
        self.assertEqual(touched, set())
        self.assertEqual(seen, ["alice@example.com"])

    async def test_bad_certificate_bytes(self) -> None:
        """Bytes that are no certificate are stored and revoked by serial alone."""
        store = await self.open_store()
        await store.register(
            "alice@example.com",
            "n",
            C1,
            b"not a certificate",
            7,
            self.now + timedelta(days=1),
            self.now,
            self.now + timedelta(seconds=60),
            16,
        )
        self.assertEqual(len((await store.state("alice@example.com", self.now)).bindings), 1)
        await store.revoke(7, self.ca.cert_der, self.now)
        self.assertEqual((await store.state("alice@example.com", self.now)).bindings, ())

    async def test_states_memoised_by_their_rows(self) -> None:
        """
        Unchanged rows give the very same (immutable) state, which the server's answer
        cache relies on; any change to the rows gives the new state at once.
        """
        store = await self.open_store()
        alice = self.leaf()
        await self.register(store, alice)
        first = await store.state("alice@example.com", self.now)
        self.assertIs(await store.state("alice@example.com", self.now), first)
        # Another spelling of the same identity: same rows, same state (spelled as stored).
        self.assertIs(await store.state("alice@EXAMPLE.com", self.now), first)
        later = self.now + timedelta(seconds=5)
        await self.register(store, alice, contacts=C2, now=later)
        changed = await store.state("alice@example.com", later)
        self.assertIsNot(changed, first)
        self.assertEqual(changed.bindings[0].contacts, tuple(C2))
        # Time alone changes what is live: past its end the binding is gone.
        gone = await store.state("alice@example.com", later + timedelta(seconds=301))
        self.assertEqual(gone.bindings, ())
        self.assertEqual(gone.cert, alice.leaf_der)
        # Unknown identities keep the spelling they were asked with.
        self.assertEqual((await store.state("Nobody@example.com", self.now)).identity,
                         "Nobody@example.com")  # fmt: skip

    async def test_close_twice(self) -> None:
        store = await self.makeStore()
        await defer.gatherResults([store.close(), store.close()])
        await store.close()
        with self.assertRaises(StoreError):
            await store.state("alice@example.com", self.now)


class IssuerKeyMigrationTests(TestCase):
    """
    Schema version 2 of the SQLite store: issuer keys change from version 1's hex text to the
    32 bytes of L{issuer_key} (the form the PostgreSQL store always had); a version 1
    database keeps its revocations and issued certificates.
    """

    def setUp(self) -> None:
        self.ca = certs.make_ca()
        self.now = datetime.now(UTC).replace(microsecond=123000)
        self.path = os.path.abspath(self.mktemp()) + ".sqlite"

    async def make_version_1(self) -> None:
        """A database as the code of schema version 1 left it."""
        patches = [
            self.patch(sqlite_store, "MIGRATIONS", sqlite_store.MIGRATIONS[:1]),
            self.patch(sqlite_store, "SCHEMA_VERSION", 1),
        ]
        store = SQLiteStore(self.path, reactor)
        await store.open()
        await store.close()
        for p in patches:
            p.restore()

    async def test_version_1_database_is_migrated(self) -> None:
        await self.make_version_1()
        alice = certs.make_identity("alice@example.com", self.ca)
        bob = certs.make_identity("bob@example.com", self.ca)
        name = self.ca.cert.subject.public_bytes()
        old_key = hashlib.sha256(name).hexdigest()  # what version 1 wrote
        old_raw = "raw:" + hashlib.sha256(b"junk").hexdigest()
        conn = sqlite3.connect(self.path)
        with conn:
            self.assertEqual(conn.execute("SELECT version FROM schema_version").fetchone(), (1,))
            conn.execute(
                "INSERT INTO revocations (issuer, serial, issuer_name, revoked_at) "
                "VALUES (?, ?, ?, ?)",
                (old_key, format(bob.leaf.serial_number, "x"), name, to_us(self.now)),
            )
            conn.execute(
                "INSERT INTO revocations (issuer, serial, issuer_name, revoked_at) "
                "VALUES (?, '7', NULL, ?)",
                (old_raw, to_us(self.now)),
            )
            conn.execute(
                "INSERT INTO issued (issuer, serial, identity, spelling, cert) "
                "VALUES (?, ?, ?, ?, ?)",
                (old_key, format(alice.leaf.serial_number, "x"), "alice@example.com",
                 "alice@example.com", alice.leaf_der),
            )  # fmt: skip
        conn.close()

        store = SQLiteStore(self.path, reactor)
        await store.open()
        self.addCleanup(store.close)
        # The revocation is found under today's key: in the CRL and by is_revoked.
        self.assertTrue(await store.is_revoked(bob.leaf.serial_number, self.ca.cert_der))
        self.assertEqual(
            await store.revoked(self.ca.cert_der), [(bob.leaf.serial_number, self.now)]
        )
        # The issued certificate too: revoking it announces its holder (irp-1 §7.7).
        heard: list[str] = []
        store.subscribe(heard.append)
        await store.revoke(alice.leaf.serial_number, self.ca.cert_der, self.now)
        self.assertEqual(heard, ["alice@example.com"])
        # Re-recording it replaces the migrated row instead of adding a second one.
        await store.record_issued(
            "alice@example.com", alice.leaf.serial_number, self.ca.cert_der, alice.leaf_der
        )
        await store.close()

        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT version FROM schema_version").fetchone(),
            (sqlite_store.SCHEMA_VERSION,),
        )
        key = issuer_key(self.ca.cert_der)[0]
        self.assertEqual(
            conn.execute("SELECT issuer, count(*) FROM issued GROUP BY issuer").fetchall(),
            [(key, 1)],
        )
        self.assertEqual(
            sorted(conn.execute("SELECT issuer, serial FROM revocations").fetchall()),
            sorted([
                (key, format(bob.leaf.serial_number, "x")),
                (key, format(alice.leaf.serial_number, "x")),
                # A key of bytes that were no certificate cannot be recomputed; it is kept
                # apart from every key of today.
                (b"raw:" + hashlib.sha256(b"junk").digest(), "7"),
            ]),
        )  # fmt: skip
        self.assertEqual(
            conn.execute("SELECT DISTINCT typeof(issuer) FROM revocations").fetchall(),
            [("blob",)],
        )
