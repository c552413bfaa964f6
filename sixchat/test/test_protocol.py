"""
The Twisted adapters: sessions over iosim with a fake clock, timeouts, limits, back-pressure,
and real TCP on 127.0.0.1 and ::1 for every suite x group x key type.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from sixchat.connection import INITIATOR
from sixchat.errors import StanzaError
from sixchat.handshake import AccessPolicy, PeerConfig
from sixchat.peers import PeerFactory, connectPeer, source_key
from sixchat.protocol import PeerProtocol
from sixchat.record import SUITES
from sixchat.session import (
    HandshakeFailed,
    ISessionObserver,
    SessionLost,
    SessionObserver,
    StanzaRefused,
    split_text,
)
from sixchat.stanzas import ErrorStanza, Message, Typing
from sixchat.test import certs
from sixchat.testing import PeerPair, RecordingObserver

KEY_TYPES = ("ed25519", "p256", "p384", "rsa2048")


def pair_config(key_type: str = "ed25519", **kw: Any) -> tuple[PeerConfig, PeerConfig]:
    ca = certs.make_ca()
    alice = certs.make_identity("alice@example.com", ca, key_type=key_type)
    bob = certs.make_identity("bob@example.com", ca, key_type=key_type)
    trust = certs.trust_for(ca)
    return PeerConfig([alice], trust, **kw), PeerConfig([bob], trust, **kw)


#: The observer test_adversarial records with (now L{sixchat.testing.RecordingObserver}).
Recorder = RecordingObserver


class SessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.alice, self.bob = pair_config()

    def established(self, **kw: Any) -> PeerPair:
        pair = PeerPair(self.alice, self.bob, **kw)
        self.assertIsNotNone(pair.initiator.session, "client handshake did not complete")
        self.assertIsNotNone(pair.responder.session, "server handshake did not complete")
        return pair

    def test_handshake_and_receipt(self) -> None:
        pair = self.established()
        client_session = self.successResultOf(pair.initiator.handshakeDone)
        self.assertEqual(client_session.peer, "bob@example.com")
        self.assertEqual(pair.responder.session.peer, "alice@example.com")
        self.assertEqual(client_session.result.group, "x25519-mlkem768")
        self.assertEqual(client_session.result.suite, "aes-256-gcm")
        self.assertEqual(
            client_session.result.exporter_secret, pair.responder.session.result.exporter_secret
        )
        d = client_session.sendMessage("Hello, Bob")
        self.assertNoResult(d)
        pair.flush()
        receipt = self.successResultOf(d)
        self.assertEqual([m.body for m in pair.responder_observer.messages], ["Hello, Bob"])
        self.assertEqual(receipt.id, pair.responder_observer.messages[0].id)

    def test_receipt_waits_for_storage(self) -> None:
        pair = self.established(responder_observer=RecordingObserver(hold=True))
        d = pair.initiator.session.sendMessage("stored?")
        pair.flush()
        self.assertNoResult(d)
        pair.responder_observer.held[0].callback(None)
        pair.flush()
        self.assertEqual(self.successResultOf(d).id, pair.responder_observer.messages[0].id)

    def test_storage_failure_sends_no_receipt(self) -> None:
        pair = self.established(responder_observer=RecordingObserver(hold=True))
        d = pair.initiator.session.sendMessage("lost")
        pair.flush()
        pair.responder_observer.held[0].errback(RuntimeError("disk full"))
        pair.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_long_text_is_split(self) -> None:
        pair = self.established()
        text = "x" * 70_000
        d = pair.initiator.session.sendText(text)
        pair.flush()
        receipts = self.successResultOf(d)
        self.assertEqual(len(receipts), 3)
        self.assertEqual("".join(m.body for m in pair.responder_observer.messages), text)
        self.assertRaises(ValueError, pair.initiator.session.sendMessage, text)

    def test_split_text(self) -> None:
        self.assertEqual(split_text("abcde", 2), ["ab", "cd", "e"])
        self.assertEqual(split_text(""), [""])

    def test_ping_round_trip(self) -> None:
        pair = self.established()
        d = pair.initiator.session.ping()
        pair.clock.advance(0.25)
        pair.flush()
        self.assertEqual(self.successResultOf(d), 0.25)

    def test_error_refuses_send(self) -> None:
        pair = self.established()
        message = Message("m1", "2026-11-26T00:00:00.000Z", "hi")
        d = pair.initiator.session.send(message)
        # The server answers this id with an error instead of a receipt.
        pair.responder.connection._send_element(ErrorStanza("too_large", "m1").to_element())
        pair.responder.flush()
        pair.flush()
        failure = self.failureResultOf(d, StanzaRefused)
        self.assertEqual(failure.value.reason, "too_large")

    def test_invalid_message_gets_error(self) -> None:
        pair = self.established()
        bad = Message("ok-id", "2026-13-01T00:00:00Z", "bad ts")
        pair.initiator.connection._send_element(bad.to_element())
        pair.initiator.flush()
        pair.flush()
        self.assertEqual(pair.responder_observer.messages, [])
        errors = [s for s in pair.initiator_observer.stanzas if isinstance(s, ErrorStanza)]
        self.assertEqual([(e.reason, e.ref) for e in errors], [("bad_request", "ok-id")])

    def test_unknown_stanza_gets_unsupported_with_ref(self) -> None:
        """No file transfer here: an offer is answered error unsupported, naming its id."""
        from sixchat.xmlcodec import Element

        pair = self.established()
        offer = Element("file", {"id": "f1", "name": "a.txt", "size": "1", "sha256": "AA=="})
        pair.initiator.connection._send_element(offer)
        pair.initiator.connection._send_element(Element("frobnicate"))
        pair.initiator.flush()
        pair.flush()
        errors = [s for s in pair.initiator_observer.stanzas if isinstance(s, ErrorStanza)]
        self.assertEqual(
            [(e.reason, e.ref) for e in errors], [("unsupported", "f1"), ("unsupported", None)]
        )
        self.assertEqual(pair.initiator.connection.state, "open")

    def test_no_rekey_after_close(self) -> None:
        from sixchat.connection import ConnectionClosedError

        pair = self.established()
        pair.initiator.connection.close()
        self.assertRaises(ConnectionClosedError, pair.initiator.connection.rekey)

    def test_typing_reaches_observer(self) -> None:
        pair = self.established()
        pair.initiator.session.sendTyping("composing")
        pair.flush()
        self.assertEqual(pair.responder_observer.stanzas, [Typing("composing")])

    def test_graceful_close(self) -> None:
        pair = self.established()
        ended = pair.initiator.session.close()
        pair.flush()
        self.successResultOf(ended)
        self.assertTrue(pair.initiator.connection.state == "closed")
        self.assertEqual(len(pair.responder_observer.ended), 1)
        self.assertEqual(len(pair.initiator_observer.ended), 1)

    def test_truncation_fails_pending_sends(self) -> None:
        pair = self.established(responder_observer=RecordingObserver(hold=True))
        d = pair.initiator.session.sendMessage("never receipted")
        pair.flush()
        pair.responder.transport.loseConnection()  # ends without <close/>: a truncation
        pair.flush()
        self.failureResultOf(d, SessionLost)
        self.assertEqual(len(pair.responder_observer.messages), 1)

    def test_abort_sends_the_alert_and_ends_both_sides(self) -> None:
        from sixchat.errors import CertificateRevoked

        pair = self.established()
        alice, bob = pair.initiator.session, pair.responder.session
        assert alice is not None and bob is not None
        pending = alice.sendMessage("never answered")
        bob.abort(CertificateRevoked("peer certificate revoked"))
        pair.flush()
        self.assertTrue(alice.ended and bob.ended)
        self.assertEqual(bob.end_reason.reason, "certificate_revoked")  # type: ignore[union-attr]
        self.assertFalse(bob.end_reason.sent_by_peer)  # type: ignore[union-attr]
        self.assertEqual(alice.end_reason.reason, "certificate_revoked")  # type: ignore[union-attr]
        self.assertTrue(alice.end_reason.sent_by_peer)  # type: ignore[union-attr]
        self.failureResultOf(pending, SessionLost)
        self.assertEqual(pair.responder_observer.messages, [])

    def test_rekey_on_demand_keeps_session(self) -> None:
        pair = self.established()
        pair.initiator.session.rekey()
        pair.responder.session.rekey()
        d = pair.initiator.session.sendMessage("after rekey")
        pair.flush()
        self.successResultOf(d)
        self.assertEqual(pair.responder.connection._read.seq, 1)

    def test_access_denied(self) -> None:
        alice, bob = pair_config()
        bob.access = AccessPolicy(["carol@example.com", "@other.example"])
        pair = PeerPair(alice, bob)
        # The initiator is complete once it sent M8 (§11.4); the refusal ends its session.
        session = self.successResultOf(pair.initiator.handshakeDone)
        self.assertTrue(session.ended)
        self.assertIsInstance(session.end_reason, HandshakeFailed)
        self.assertEqual(session.end_reason.reason, "access_denied")
        self.assertTrue(session.end_reason.sent_by_peer)
        self.assertIsNone(pair.responder.session)
        self.assertEqual(pair.responder_observer.started, [])

    def test_access_allowed_by_domain(self) -> None:
        alice, bob = pair_config()
        bob.access = AccessPolicy(["@EXAMPLE.com"])
        pair = PeerPair(alice, bob)
        self.assertEqual(self.successResultOf(pair.initiator.handshakeDone).peer, "bob@example.com")

    def test_identity_mismatch(self) -> None:
        pair = PeerPair(self.alice, self.bob, to="carol@example.com")
        failure = self.failureResultOf(pair.initiator.handshakeDone, HandshakeFailed)
        self.assertEqual(failure.value.reason, "identity_mismatch")

    def test_no_common_group_lists_acceptable(self) -> None:
        alice, bob = pair_config()
        bob.groups = ("x25519",)
        pair = PeerPair(alice, bob, groups=["secp256r1"])
        failure = self.failureResultOf(pair.initiator.handshakeDone, HandshakeFailed)
        self.assertEqual(failure.value.reason, "no_common_group")


class TimeoutTests(unittest.TestCase):
    def test_handshake_timeout_responder(self) -> None:
        _, bob = pair_config()
        clock = task.Clock()
        factory = PeerFactory(bob, clock)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = iosim.FakeTransport(proto, isServer=True)
        proto.makeConnection(transport)
        clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        written = b"".join(transport.stream)
        self.assertEqual(written[:1], b"\x01")  # PLAIN: the responder has no keys yet
        self.assertIn(b'reason="handshake_timeout"', written)
        self.assertEqual(factory.handshaking, 1)
        proto.connectionLost(iosim.Failure(Exception("closed")))
        self.assertEqual(factory.handshaking, 0)

    def test_connection_lost_without_a_reason(self) -> None:
        """
        Twisted's own default applies when C{connectionLost} is called with no reason (as
        C{Protocol.connectionLost} allows): the handshake fails with a message, not a crash.
        """
        alice, _ = pair_config()
        clock = task.Clock()
        factory = PeerFactory(alice, clock, role=INITIATOR, to="bob@example.com")
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(iosim.FakeTransport(proto, isServer=False))
        proto.connectionLost()
        failure = self.failureResultOf(proto.handshakeDone, SessionLost)
        self.assertIn("connection lost during the handshake", str(failure.value))
        self.assertIn("Connection was closed cleanly", str(failure.value))

    def test_cancelling_handshake_aborts(self) -> None:
        alice, _ = pair_config()
        clock = task.Clock()
        factory = PeerFactory(alice, clock, role=INITIATOR, to="bob@example.com")
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = iosim.FakeTransport(proto, isServer=False)
        proto.makeConnection(transport)
        proto.handshakeDone.cancel()
        self.failureResultOf(proto.handshakeDone, defer.CancelledError)
        self.assertTrue(transport.disconnecting)

    def test_handshake_timeout_initiator(self) -> None:
        alice, _ = pair_config()
        clock = task.Clock()
        factory = PeerFactory(alice, clock, role=INITIATOR, to="bob@example.com")
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = iosim.FakeTransport(proto, isServer=False)
        proto.makeConnection(transport)
        self.assertEqual(b"".join(transport.stream)[:1], b"\x01")  # M1 went out
        clock.advance(15)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b'reason="handshake_timeout"', b"".join(transport.stream))

    def test_idle_close(self) -> None:
        alice, bob = pair_config()
        pair = PeerPair(alice, bob)
        session = pair.initiator.session
        pair.clock.advance(299)
        pair.flush()
        self.assertEqual(pair.initiator.connection.state, "open")
        pair.initiator.session.ping()
        pair.flush()  # the pong is a record received: it resets the client's idle timer
        pair.clock.advance(299)
        pair.flush()
        self.assertEqual(pair.initiator.connection.state, "open")
        pair.clock.advance(301)
        pair.flush()
        self.assertTrue(session.ended)

    def test_close_wait_is_bounded(self) -> None:
        alice, bob = pair_config()
        pair = PeerPair(alice, bob)
        pair.initiator.session.close()
        # the peer never answers: nothing is pumped
        pair.clock.advance(5.1)
        transport = pair.initiator.transport
        self.assertTrue(transport.disconnecting or transport.disconnected)  # type: ignore[union-attr]


class LimitTests(unittest.TestCase):
    def test_per_source_limit(self) -> None:
        _, bob = pair_config()
        factory = PeerFactory(bob, task.Clock(), max_per_source=16)
        protos = [factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", p)) for p in range(16)]
        self.assertTrue(all(isinstance(p, PeerProtocol) for p in protos))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 99)))
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)), PeerProtocol
        )
        # the same /64 counts as one source
        v6 = [factory.buildProtocol(IPv6Address("TCP", f"2001:db8::{i:x}", 1)) for i in range(16)]
        self.assertTrue(all(v6))
        self.assertIsNone(factory.buildProtocol(IPv6Address("TCP", "2001:db8::ffff:1", 1)))
        self.assertIsInstance(
            factory.buildProtocol(IPv6Address("TCP", "2001:db8:0:1::1", 1)), PeerProtocol
        )
        self.assertEqual(factory.refused, 2)

    def test_total_limit(self) -> None:
        _, bob = pair_config()
        factory = PeerFactory(bob, task.Clock(), max_handshakes=3)
        for i in range(3):
            self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", f"192.0.2.{i}", 1)))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)))

    def test_source_key(self) -> None:
        self.assertEqual(source_key(IPv4Address("TCP", "192.0.2.1", 5)), "192.0.2.1")
        self.assertEqual(
            source_key(IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 5)), "2001:db8:1:2::/64"
        )
        self.assertEqual(source_key(IPv6Address("TCP", "::ffff:192.0.2.1", 5)), "192.0.2.1")

    def test_flood_from_one_address_spares_others(self) -> None:
        """A handshake flood from one address is cut at 16; a legitimate peer still gets in."""
        alice, bob = pair_config()
        clock = task.Clock()
        server_factory = PeerFactory(bob, clock)
        for port in range(100):
            server_factory.buildProtocol(IPv4Address("TCP", "198.51.100.66", port))
        self.assertEqual(server_factory.refused, 84)
        client_factory = PeerFactory(alice, clock, role=INITIATOR, to="bob@example.com")
        addr = IPv4Address("TCP", "127.0.0.1", 1)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(addr),
            lambda: client_factory.buildProtocol(addr),
            clock=clock,
            greet=False,
        )
        pump.flush()
        self.assertEqual(self.successResultOf(client.handshakeDone).peer, "bob@example.com")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()


class RealTCPTests(unittest.TestCase):
    """Every suite x group x key type over real sockets on 127.0.0.1 and ::1."""

    timeout = 120

    @defer.inlineCallbacks
    def _session(self, key_type: str, suite: str, group: str, host: str) -> Any:
        if host == "::1" and not HAS_IPV6:
            raise unittest.SkipTest("no IPv6 loopback on this machine")
        alice, bob = pair_config(key_type, key_transport=(group == "rsa-oaep"))
        received: list[str] = []

        @implementer(ISessionObserver)
        class Store(SessionObserver):
            def messageReceived(self, session: Any, message: Message) -> None:
                received.append(message.body)

        server = PeerFactory(bob, reactor, Store())
        listen = "tcp6:0:interface=\\:\\:1" if ":" in host else "tcp:0:interface=127.0.0.1"
        port = yield endpoints.serverFromString(reactor, listen).listen(server)
        self.addCleanup(port.stopListening)
        endpoint_cls = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        endpoint = endpoint_cls(reactor, host, port.getHost().port)
        session = yield connectPeer(
            reactor,
            endpoint,
            alice.identities[0],
            alice.trust,
            to="bob@example.com",
            config=alice,
            suites=[suite],
            groups=[group],
            responder_cert=bob.identities[0].leaf_der,
        )
        self.assertEqual((session.result.suite, session.result.group), (suite, group))
        self.assertEqual(session.result.peer.alg, bob.identities[0].alg)
        receipt = yield session.sendMessage(f"{key_type} {suite} {group}")
        self.assertTrue(receipt.id)
        self.assertEqual(received, [f"{key_type} {suite} {group}"])
        yield session.close()


def _add_real_tcp_tests() -> None:
    for key_type in KEY_TYPES:
        groups = ["x25519-mlkem768", "x25519", "secp256r1"]
        if key_type.startswith("rsa"):
            groups.append("rsa-oaep")
        for suite in SUITES:
            for group in groups:
                for label, host in (("v4", "127.0.0.1"), ("v6", "::1")):
                    name = f"test_{key_type}_{suite}_{group}_{label}".replace("-", "_")

                    def test(self: RealTCPTests, k=key_type, s=suite, g=group, h=host) -> Any:
                        return self._session(k, s, g, h)

                    setattr(RealTCPTests, name, test)


_add_real_tcp_tests()


class StanzaIdTests(unittest.SynchronousTestCase):
    def test_ids_are_128_random_bits_never_repeated_across_refills(self) -> None:
        import re

        from sixchat.session import new_stanza_id

        ids = [new_stanza_id() for _ in range(1_000)]  # about four refills of the pool
        self.assertEqual(len(set(ids)), 1_000)
        self.assertTrue(all(re.fullmatch("[0-9a-f]{32}", i) for i in ids))

    def test_a_forked_child_draws_its_own(self) -> None:
        import os

        from sixchat.session import _id_pool, new_stanza_id

        new_stanza_id()
        self.assertTrue(_id_pool)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its inherited pool must be empty
            os.write(write, b"empty" if not _id_pool else b"inherited")
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        self.assertEqual(os.read(read, 16), b"empty")
        os.close(read)


class TimestampTests(unittest.SynchronousTestCase):
    """C{ts} of the messages we send: formatted once a second, milliseconds appended."""

    @staticmethod
    def reference(ms: int) -> str:
        from datetime import UTC, datetime

        from sixchat.stanzas import format_timestamp

        whole, milli = divmod(ms, 1000)
        when = datetime.fromtimestamp(whole, UTC).replace(microsecond=milli * 1000)
        return format_timestamp(when)

    def test_clock_readings_across_milliseconds_and_seconds(self) -> None:
        from sixchat.stanzas import is_valid_timestamp

        clock = task.Clock()
        proto = PeerProtocol(pair_config()[0], INITIATOR, clock)
        clock.advance(1_765_000_000.9985)
        steps = [0, 0.0001, 0.0005, 0.0004, 0.001, 0.999, 1.0, 59.0, 3600.0, 86_400 * 366]
        seen = []
        for step in steps:
            clock.advance(step)
            ts = proto.timestamp()
            self.assertEqual(ts, self.reference(int(clock.seconds() * 1000)))
            self.assertTrue(is_valid_timestamp(ts), ts)
            seen.append(ts)
        self.assertEqual(seen[0], "2025-12-06T05:46:40.998Z")
        self.assertEqual(seen[3], "2025-12-06T05:46:40.999Z")  # 40.9995 + 0.0004
        self.assertEqual(seen[4], "2025-12-06T05:46:41.000Z")  # into the next second
        self.assertEqual(seen[6], "2025-12-06T05:46:42.999Z")
        self.assertEqual(seen[7], "2025-12-06T05:47:41.999Z")

    def test_same_millisecond_in_another_second_is_not_reused(self) -> None:
        from sixchat.protocol import _format_ms

        self.assertEqual(_format_ms(5_123), "1970-01-01T00:00:05.123Z")
        self.assertEqual(_format_ms(6_123), "1970-01-01T00:00:06.123Z")
        self.assertEqual(_format_ms(6_124), "1970-01-01T00:00:06.124Z")
        self.assertEqual(_format_ms(5_124), "1970-01-01T00:00:05.124Z")

    def test_property_matches_format_timestamp(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from sixchat.protocol import _format_ms

        # From 1970 to the year 9999, in any order (so the cache is hit and missed).
        @settings(max_examples=400, deadline=None)
        @given(st.lists(st.integers(0, 253_402_300_799_999), min_size=1, max_size=8))
        def check(readings: list[int]) -> None:
            for ms in readings:
                self.assertEqual(_format_ms(ms), self.reference(ms))
                self.assertEqual(_format_ms(ms), self.reference(ms))  # cached

        check()


class ErrorsTests(unittest.SynchronousTestCase):
    def test_stanza_error_reason_normalised(self) -> None:
        self.assertEqual(StanzaError("weird").reason, "bad_request")


class CompatibilityTests(unittest.SynchronousTestCase):
    """Names moved out of sixchat.protocol stay importable from it (docs/api.md uses them)."""

    def test_old_import_path(self) -> None:
        import sixchat.connection
        import sixchat.flow
        import sixchat.peers
        import sixchat.protocol
        import sixchat.session

        for name in sixchat.protocol.__all__:
            value = getattr(sixchat.protocol, name)
            homes = [
                getattr(m, name)
                for m in (sixchat.session, sixchat.flow, sixchat.peers, sixchat.connection)
                if hasattr(m, name)
            ]
            for home in homes:
                self.assertIs(value, home, name)
        from sixchat.protocol import PeerFactory as Old
        from sixchat.protocol import connectPeer as old_connect

        self.assertIs(Old, PeerFactory)
        self.assertIs(old_connect, connectPeer)
        with self.assertRaises(AttributeError):
            sixchat.protocol.nonexistent  # noqa: B018
