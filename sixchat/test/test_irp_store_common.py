"""
Tests for L{sixchat.irp.store.common}: the rules both registry stores share, above all the
one way a CA is named in revocations (L{issuer_key}), whichever backend stores it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from datetime import UTC, datetime

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sixchat.irp.messages import Contact
from sixchat.irp.store.common import (
    cert_issuer_name,
    contact_pairs,
    contacts_of,
    identity_state,
    issuer_key,
)
from sixchat.irp.store.interfaces import Binding, IdentityState
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.test import certs


class IssuerKeyTests(SynchronousTestCase):
    def test_certificate(self) -> None:
        """A CA is named by the SHA-256 of its subject name: 32 bytes, and the name."""
        ca = certs.make_ca(name="common test CA")
        name = ca.cert.subject.public_bytes()
        self.assertEqual(issuer_key(ca.cert_der), (hashlib.sha256(name).digest(), name))

    def test_reissued_ca_keeps_its_key(self) -> None:
        """Two certificates of one name (a re-issued CA) share the key: the CRL stays."""
        one = certs.make_ca(name="same name CA")
        two = certs.make_ca("p521", name="same name CA")  # another key, same name
        self.assertNotEqual(one.cert_der, two.cert_der)
        self.assertEqual(issuer_key(one.cert_der), issuer_key(two.cert_der))

    def test_not_a_certificate(self) -> None:
        """Other bytes: their own (domain-separated) hash, no name."""
        self.assertEqual(issuer_key(b"junk"), (hashlib.sha256(b"raw:junk").digest(), None))

    def test_cert_issuer_name(self) -> None:
        ca = certs.make_ca()
        alice = certs.make_identity("alice@example.com", ca)
        self.assertEqual(cert_issuer_name(alice.leaf_der), ca.cert.subject.public_bytes())
        self.assertIsNone(cert_issuer_name(b"junk"))

    def test_contacts_round_trip(self) -> None:
        contacts = [Contact("2001:db8::5", 4605), Contact("192.0.2.7", 4606)]
        self.assertEqual(contact_pairs(contacts), [["2001:db8::5", 4605], ["192.0.2.7", 4606]])
        self.assertEqual(contacts_of(contact_pairs(contacts)), tuple(contacts))


class IdentityStateTests(SynchronousTestCase):
    """How both stores spell an identity in answers (irp-1 §3.3)."""

    binding = Binding("laptop", (), b"leaf", 1, datetime(2026, 1, 1, tzinfo=UTC),
                      datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip

    def test_latest_certificate_spells_it(self) -> None:
        state = identity_state("alice@EXAMPLE.com", (self.binding,), (b"cert", "Alice@example.com"),
                               "alice@example.COM")  # fmt: skip
        self.assertEqual(state, IdentityState("Alice@example.com", (self.binding,), b"cert"))

    def test_else_a_binding(self) -> None:
        state = identity_state("alice@EXAMPLE.com", (self.binding,), None, "alice@example.COM")
        self.assertEqual(state, IdentityState("alice@example.COM", (self.binding,), None))

    def test_else_as_asked(self) -> None:
        state = identity_state("alice@EXAMPLE.com", (), None, None)
        self.assertEqual(state, IdentityState("alice@EXAMPLE.com"))
        self.assertFalse(state.known)


class SQLiteStoresIssuerKeyTests(TestCase):
    """The SQLite store keeps the very key the PostgreSQL store keeps (its C{bytea})."""

    async def test_stored_form(self) -> None:
        ca = certs.make_ca()
        path = os.path.abspath(self.mktemp()) + ".sqlite"
        store = SQLiteStore(path, reactor)
        await store.open()
        await store.revoke(5, ca.cert_der, datetime.now(UTC))
        await store.close()
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(
            conn.execute("SELECT issuer FROM revocations").fetchall(),
            [(issuer_key(ca.cert_der)[0],)],
        )
