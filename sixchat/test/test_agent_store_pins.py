"""
Tests for L{sixchat.agent.store.pins}: persistent pins and pending key changes (spec §9.3,
§11.15) through the agent store.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface.verify import verifyObject

from sixchat.agent.store import SQLitePinStore
from sixchat.test.test_agent_store import KEY1, KEY2, SEC, T0, Gen, StoreTestCase
from sixchat.trust import IPinStore, PinPolicy

# -- pins ------------------------------------------------------------------------------------


class PinTests(StoreTestCase):
    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IPinStore, self.store.pins))
        self.assertIsInstance(self.store.pins, SQLitePinStore)

    @defer.inlineCallbacks
    def test_cache_is_synchronous_and_persists(self) -> Gen:
        pins = self.store.pins
        self.assertEqual(pins.known("bob@example.com"), frozenset())
        pins.add("bob@example.com", KEY1)
        # At once, before the write-behind reaches the file.
        self.assertEqual(pins.known("bob@EXAMPLE.com"), {KEY1})
        pins.add("bob@example.com", KEY2)
        pins.add("bob@example.com", KEY1)
        self.assertEqual(pins.known("bob@example.com"), {KEY1, KEY2})
        self.assertEqual(pins.known("Bob@example.com"), frozenset())
        self.assertRaises(ValueError, pins.add, "bob@example.com", b"short")
        for i in range(100):
            pins.add(f"p{i}@example.com", bytes([i]) * 32)
        yield self.reopen()
        pins = self.store.pins
        self.assertEqual(pins.known("bob@example.com"), {KEY1, KEY2})
        for i in range(100):
            self.assertEqual(pins.known(f"p{i}@example.com"), {bytes([i]) * 32})

    @defer.inlineCallbacks
    def test_pin_policy_on_store(self) -> Gen:
        policy = PinPolicy(self.store.pins, "refuse")
        self.assertEqual(policy.check("bob@example.com", KEY1), "new")
        policy.add("bob@example.com", KEY1)
        self.assertEqual(policy.check("bob@example.com", KEY1), "known")
        self.assertEqual(policy.check("bob@example.com", KEY2), "changed")
        yield self.reopen()
        policy = PinPolicy(self.store.pins, "refuse")
        self.assertEqual(policy.check("bob@example.com", KEY1), "known")

    @defer.inlineCallbacks
    def test_key_events_and_forget(self) -> Gen:
        """The key history (schema v2) survives a restart, oldest first, per identity;
        forget() unpins all but the keys kept and notes each as forgotten."""
        pins = self.store.pins
        pins.add("bob@example.com", KEY1)
        yield pins.note_key_event("bob@example.com", KEY2, "refused", T0)
        yield pins.note_key_event("carol@example.com", KEY1, "warned", T0 + SEC)
        yield pins.note_key_event("bob@EXAMPLE.com", KEY2, "trusted", T0 + 2 * SEC)
        with self.assertRaises(ValueError):
            yield pins.note_key_event("bob@example.com", KEY2, "liked", T0)
        pins.add("bob@example.com", KEY2)
        yield self.reopen()
        pins = self.store.pins
        events = yield pins.key_events("bob@example.com")
        self.assertEqual(
            [(e.identity, e.what, e.spki_sha256, e.at) for e in events],
            [("bob@example.com", "refused", KEY2, T0), ("bob@example.com", "trusted", KEY2,
                                                         T0 + 2 * SEC)],
        )  # fmt: skip
        self.assertEqual(len((yield pins.key_events())), 3)
        self.assertEqual([e.what for e in (yield pins.key_events(limit=1))], ["trusted"])
        forgotten = yield pins.forget("bob@example.com", frozenset([KEY2]), T0 + 3 * SEC)
        self.assertEqual(forgotten, [KEY1])
        self.assertEqual(pins.known("bob@example.com"), {KEY2})
        self.assertEqual((yield pins.forget("bob@example.com", frozenset([KEY2]), T0)), [])
        yield self.reopen()
        pins = self.store.pins
        self.assertEqual(pins.known("bob@example.com"), {KEY2})
        self.assertEqual(PinPolicy(pins, "warn").check("bob@example.com", KEY1), "changed")
        events = yield pins.key_events("bob@example.com")
        self.assertEqual((events[-1].what, events[-1].spki_sha256), ("forgotten", KEY1))

    @defer.inlineCallbacks
    def test_key_change_and_accept(self) -> Gen:
        pins = self.store.pins
        pins.add("bob@example.com", KEY1)
        noted = yield pins.note_key_change("bob@example.com", KEY2, T0)
        self.assertTrue(noted)
        yield pins.note_key_change("bob@example.com", KEY2, T0 + SEC)
        self.assertFalse((yield pins.note_key_change("bob@example.com", KEY1, T0)))
        [change] = yield pins.key_changes("bob@EXAMPLE.com")
        self.assertEqual(
            (change.identity, change.spki_sha256, change.first_noted, change.last_noted),
            ("bob@example.com", KEY2, T0, T0 + SEC),
        )
        self.assertEqual((change.times, change.fingerprint), (2, KEY2.hex()))
        self.assertEqual(pins.pending_changes("bob@example.com"), {KEY2})
        self.assertEqual(len((yield pins.key_changes())), 1)
        [contact] = yield self.store.contacts()
        self.assertTrue(contact.key_change_pending)
        # Still pending after a restart, until the user decides.
        yield self.reopen()
        pins = self.store.pins
        self.assertEqual(pins.pending_changes("bob@example.com"), {KEY2})
        self.assertEqual(pins.known("bob@example.com"), {KEY1})
        accepted = yield pins.accept_key("bob@example.com")
        self.assertEqual(accepted, [KEY2])
        self.assertEqual(pins.known("bob@example.com"), {KEY1, KEY2})
        self.assertEqual((yield pins.key_changes()), [])
        [contact] = yield self.store.contacts()
        self.assertEqual((contact.key_change_pending, contact.pinned_keys), (False, 2))
        self.assertEqual((yield pins.accept_key("bob@example.com")), [])
        yield self.reopen()
        self.assertEqual(self.store.pins.known("bob@example.com"), {KEY1, KEY2})

    @defer.inlineCallbacks
    def test_accept_named_key_and_pin_settles_change(self) -> Gen:
        pins = self.store.pins
        yield pins.note_key_change("bob@example.com", KEY1, T0)
        yield pins.note_key_change("bob@example.com", KEY2, T0)
        self.assertEqual((yield pins.accept_key("bob@example.com", KEY1)), [KEY1])
        self.assertEqual(pins.pending_changes("bob@example.com"), {KEY2})
        pins.add("bob@example.com", KEY2)  # e.g. IRP returned that key: no longer a change
        self.assertEqual(pins.pending_changes("bob@example.com"), frozenset())
        yield self.store.flush()
        self.assertEqual((yield pins.key_changes()), [])
        yield self.assertFailure(pins.accept_key("bob@example.com", b"x"), ValueError)
