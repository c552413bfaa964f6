"""
Tests for L{sixchat.trust.pins}: the keys seen per identity and the pin policies (spec §9.3,
§11.15).
"""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sixchat.errors import BadCertificate
from sixchat.test import certs
from sixchat.trust import InMemoryPinStore, IPinStore, PinPolicy


class PinTests(SynchronousTestCase):
    A = hashlib.sha256(b"key A").digest()
    B = hashlib.sha256(b"key B").digest()

    def test_interface(self):
        self.assertTrue(verifyObject(IPinStore, InMemoryPinStore()))

    def test_store_is_a_set(self):
        store = InMemoryPinStore()
        self.assertEqual(store.known("alice@example.com"), frozenset())
        store.add("alice@example.com", self.A)
        store.add("alice@EXAMPLE.com", self.B)
        store.add("alice@example.com", self.A)
        self.assertEqual(store.known("alice@Example.Com"), frozenset({self.A, self.B}))
        self.assertEqual(store.known("Alice@example.com"), frozenset())

    def test_new_known_changed_under_each_policy(self):
        for policy in ("accept", "warn", "refuse"):
            pins = PinPolicy(InMemoryPinStore(), policy)
            self.assertEqual(pins.policy, policy)
            self.assertEqual(pins.check("alice@example.com", self.A), "new")
            self.assertEqual(pins.enforce("alice@example.com", self.A), "new")
            pins.add("alice@example.com", self.A)
            self.assertEqual(pins.check("alice@EXAMPLE.COM", self.A), "known")
            self.assertEqual(pins.enforce("alice@example.com", self.A), "known")
            self.assertEqual(pins.check("alice@example.com", self.B), "changed")
            if policy == "refuse":
                error = self.assertRaises(
                    BadCertificate, pins.enforce, "alice@example.com", self.B
                )
                self.assertIn("changed", error.text)
            else:
                self.assertEqual(pins.enforce("alice@example.com", self.B), "changed")
                pins.add("alice@example.com", self.B)
                self.assertEqual(pins.check("alice@example.com", self.A), "known")
                self.assertEqual(pins.check("alice@example.com", self.B), "known")

    def test_local_part_is_exact(self):
        pins = PinPolicy()
        pins.add("alice@example.com", self.A)
        self.assertEqual(pins.check("Alice@example.com", self.B), "new")

    def test_default_policy(self):
        pins = PinPolicy()
        self.assertEqual(pins.policy, "warn")
        self.assertTrue(IPinStore.providedBy(pins.store))

    def test_bad_arguments(self):
        self.assertRaises(ValueError, PinPolicy, None, "ignore")
        pins = PinPolicy()
        self.assertRaises(ValueError, pins.check, "alice@example.com", b"short")
        self.assertRaises(ValueError, pins.add, "alice@example.com", b"short")
        self.assertRaises(ValueError, pins.check, "no-at-sign", self.A)

    def test_with_validated_peer(self):
        ca = certs.make_ca()
        alice = certs.make_identity("alice@example.com", ca)
        renewed = certs.make_identity("alice@example.com", ca, days=30)
        rekeyed = certs.make_identity(
            "alice@example.com", ca, key=certs.key_for("ed25519", "alice new key")
        )
        trust, pins, now = certs.trust_for(ca), PinPolicy(policy="refuse"), certs.utcnow()
        first = trust.validate(alice.chain_der, now)
        self.assertEqual(pins.enforce(first.names[0], first.spki_sha256), "new")
        pins.add(first.names[0], first.spki_sha256)
        again = trust.validate(renewed.chain_der, now)
        self.assertNotEqual(again.leaf_der, first.leaf_der)
        self.assertEqual(pins.enforce(again.names[0], again.spki_sha256), "known")
        changed = trust.validate(rekeyed.chain_der, now)
        self.assertRaises(BadCertificate, pins.enforce, changed.names[0], changed.spki_sha256)


class OwnIdentityTests(SynchronousTestCase):
    """Our own identity's nodes are trusted through the CA and CRL alone (own-device sync)."""

    def test_own_identity_is_never_pinned_nor_a_key_change(self) -> None:
        store = InMemoryPinStore()
        policy = PinPolicy(store, "refuse", own="alice@Example.COM")
        one, two = b"\x01" * 32, b"\x02" * 32
        self.assertEqual(policy.enforce("alice@example.com", one), "known")
        policy.add("alice@example.com", one)
        self.assertEqual(store.known("alice@example.com"), frozenset())
        self.assertEqual(policy.enforce("alice@example.com", two), "known")
        # anyone else is pinned as before
        policy.add("bob@example.com", one)
        self.assertEqual(policy.check("bob@example.com", two), "changed")
        with self.assertRaises(BadCertificate):
            policy.enforce("bob@example.com", two)
