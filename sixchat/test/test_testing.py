"""
L{sixchat.testing} used the way an embedder's tests would: only its public names, a fake
clock, no sockets.
"""

from __future__ import annotations

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from sixchat.session import HandshakeFailed, ISessionObserver, Session, SessionLost
from sixchat.stanzas import Receipt
from sixchat.testing import PeerPair, RecordingObserver, ThrowawayCA


class ThrowawayCATests(unittest.SynchronousTestCase):
    def test_identities_are_trusted_by_its_trust_store(self) -> None:
        ca = ThrowawayCA()
        identity = ca.identity("carol@example.com", "carol@example.org")
        self.assertEqual(list(identity.names), ["carol@example.com", "carol@example.org"])
        peer = ca.trust.validate(identity.chain_der, ca.cert.not_valid_before_utc)
        self.assertEqual(peer.spki_sha256, identity.spki_sha256)

    def test_another_ca_is_not_trusted(self) -> None:
        ours, theirs = ThrowawayCA(), ThrowawayCA()
        pair = PeerPair(ours.config("a@example.com"), theirs.config("b@example.com"))
        failure = self.failureResultOf(pair.initiator.handshakeDone, HandshakeFailed)
        self.assertEqual(failure.value.reason, "unknown_ca")

    def test_config_options(self) -> None:
        config = ThrowawayCA().config("dave@example.com", padding=64)
        self.assertEqual(config.padding, 64)
        self.assertEqual(list(config.identities[0].names), ["dave@example.com"])

    def test_an_identity_needs_a_name(self) -> None:
        self.assertRaises(TypeError, ThrowawayCA().identity)


class PeerPairTests(unittest.SynchronousTestCase):
    def test_message_and_receipt(self) -> None:
        pair = PeerPair.throwaway()
        alice, bob = pair.sessions
        self.assertIsInstance(alice, Session)
        self.assertEqual((alice.peer, bob.peer), ("bob@example.com", "alice@example.com"))
        self.assertEqual(pair.responder_observer.started, [bob])
        d = alice.sendMessage("Hello, Bob")
        self.assertNoResult(d)  # nothing moves until the test pumps
        pair.flush()
        [message] = pair.responder_observer.messages
        self.assertEqual(message.body, "Hello, Bob")
        receipt = self.successResultOf(d)
        self.assertIsInstance(receipt, Receipt)
        self.assertEqual(receipt.id, message.id)

    def test_pump_moves_one_step(self) -> None:
        pair = PeerPair.throwaway()
        d = pair.initiator_session.sendMessage("one step")
        self.assertTrue(pair.pump())  # the message reaches bob, whose receipt is written
        self.assertEqual([m.body for m in pair.responder_observer.messages], ["one step"])
        self.assertNoResult(d)
        self.assertTrue(pair.pump())  # the receipt reaches alice
        self.successResultOf(d)
        self.assertFalse(pair.pump())

    def test_held_messages_are_receipted_once_stored(self) -> None:
        pair = PeerPair.throwaway(responder_observer=RecordingObserver(hold=True))
        d = pair.initiator_session.sendMessage("store me first")
        pair.flush()
        self.assertNoResult(d)
        pair.responder_observer.held[0].callback(None)
        pair.flush()
        self.successResultOf(d)

    def test_time_passes_only_when_advanced(self) -> None:
        pair = PeerPair.throwaway()
        ping = pair.initiator_session.ping()
        pair.advance(1.5)
        self.assertEqual(self.successResultOf(ping), 1.5)
        session = pair.responder_session
        pair.advance(301)  # §11.13: idle sessions are closed
        self.assertTrue(session.ended)
        self.assertIsNone(session.end_reason)  # both closes: a clean end
        self.assertEqual(len(pair.initiator_observer.ended), 1)

    def test_close_and_sessions_after_the_end(self) -> None:
        pair = PeerPair.throwaway()
        ended = pair.initiator_session.close()
        pair.flush()
        self.successResultOf(ended)
        for session in pair.sessions:  # still there, to look at how they ended
            self.assertTrue(session.ended)
            self.assertIsNone(session.end_reason)
            self.failureResultOf(session.whenWritable(), SessionLost)
        self.assertIsNone(pair.initiator.session)  # the protocol has let go of it

    def test_failed_handshake(self) -> None:
        pair = PeerPair.throwaway(to="carol@example.com")
        failure = self.failureResultOf(pair.initiator.handshakeDone, HandshakeFailed)
        self.assertEqual(failure.value.reason, "identity_mismatch")
        with self.assertRaises(RuntimeError) as caught:
            pair.initiator_session  # noqa: B018
        self.assertIn("identity_mismatch", str(caught.exception))

    def test_to_none_asks_for_no_name(self) -> None:
        ca = ThrowawayCA()
        pair = PeerPair(ca.config("a@example.com"), ca.config("b@example.com"), to=None)
        self.assertEqual(pair.initiator_session.peer, "b@example.com")

    def test_initiator_options(self) -> None:
        pair = PeerPair.throwaway(groups=["x25519"], suites=["chacha20-poly1305"])
        result = pair.initiator_session.result
        self.assertEqual((result.group, result.suite), ("x25519", "chacha20-poly1305"))


class RecordingObserverTests(unittest.SynchronousTestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISessionObserver, RecordingObserver()))
