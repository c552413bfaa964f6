"""
The IRP client: request ids, pipelining and out-of-order answers, pushes, fatal errors,
timeouts and keepalive on a task.Clock (over a StringTransport), and the real thing over TLS
on 127.0.0.1 against a small fake registry (alerts for refused client certificates, server
certificate checks).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from sixchat import pki
from sixchat.identity import Identity
from sixchat.irp import messages as m
from sixchat.irp.client import (
    IRPClientProtocol,
    IRPConnectionLost,
    IRPProtocolError,
    IRPTimeout,
    RegistryCertificateError,
    TLSAlertError,
    connectRegistry,
    describe_tls_failure,
    load_certificates,
)
from sixchat.irp.server.tls import ServerTLS
from sixchat.record import RecordReader, plain_record
from sixchat.test import certs
from sixchat.xmlcodec import Element, parse, serialize

NOW = "2026-11-26T00:25:21.000Z"
LATER = "2026-11-26T00:30:21.000Z"


def decode_requests(data: bytes) -> list[m.Request]:
    reader = RecordReader()
    reader.feed(data)
    out = []
    while (record := reader.next_record(False)) is not None:
        out.append(m.parse_request(parse(record[2]), allow_private=True))
    return out


def wire(element: Element) -> bytes:
    return plain_record(serialize(element))


class Harness:
    """A client protocol on a StringTransport with a task.Clock; we play the server."""

    def __init__(self, **kw: Any) -> None:
        self.clock = task.Clock()
        self.proto = IRPClientProtocol(self.clock, **kw)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.lost: list[Any] = []
        self.proto.whenLost().addCallback(self.lost.append)

    def requests(self) -> list[m.Request]:
        data = self.transport.value()
        self.transport.clear()
        return decode_requests(data)

    def answer(self, *elements: Element) -> None:
        self.proto.dataReceived(b"".join(wire(e) for e in elements))

    def drop(self, reason: Exception | None = None) -> None:
        self.proto.connectionLost(Failure(reason or error.ConnectionDone()))


def node(name: str = "laptop", host: str = "2001:db8::5") -> m.NodeBinding:
    return m.NodeBinding(name, (m.Contact(host, 4605),), b"\x30\x03\x02\x01\x01", LATER, NOW)


class RequestTests(unittest.TestCase):
    def test_ids_unique_and_pipelined(self) -> None:
        h = Harness()
        d1 = h.proto.lookup("bob@example.com")
        d2 = h.proto.ping()
        d3 = h.proto.register("laptop", [m.Contact("2001:db8::5", 4605)], 120)
        reqs = h.requests()
        self.assertEqual([type(r) for r in reqs], [m.Lookup, m.Ping, m.Register])
        self.assertEqual(len({r.id for r in reqs}), 3)
        lookup, ping, register = reqs
        assert isinstance(register, m.Register)
        self.assertEqual((register.node, register.expires), ("laptop", 120))
        # answered out of order
        h.clock.advance(0.25)
        h.answer(m.Registered(register.id, 120).to_element(), m.Ack("pong", ping.id).to_element())
        self.assertEqual(self.successResultOf(d3), 120)
        self.assertEqual(self.successResultOf(d2), 0.25)
        self.assertNoResult(d1)
        record = m.Record("bob@example.com", [node()], b"\x30\x00", lookup.id)
        h.answer(record.to_element())
        got = self.successResultOf(d1)
        self.assertEqual(got.nodes[0].contacts, (m.Contact("2001:db8::5", 4605),))
        self.assertEqual(got.cert, b"\x30\x00")

    def test_error_with_id_fails_only_that_request(self) -> None:
        h = Harness()
        d1 = h.proto.lookup("nobody@example.com")
        d2 = h.proto.ping()
        r1, r2 = h.requests()
        h.answer(m.IRPError("not_found", "no such identity", r1.id).to_element())
        failure = self.failureResultOf(d1, m.IRPError)
        self.assertEqual(failure.value.reason, "not_found")
        self.assertNoResult(d2)
        h.answer(m.Ack("pong", r2.id).to_element())
        self.successResultOf(d2)
        self.assertTrue(h.proto.connected)

    def test_error_without_id_is_fatal(self) -> None:
        h = Harness()
        d1 = h.proto.lookup("bob@example.com")
        d2 = h.proto.ca()
        h.requests()
        h.answer(m.IRPError("bad_request", "malformed").to_element())
        for d in (d1, d2):
            f = self.failureResultOf(d, m.IRPError)
            self.assertIsNone(f.value.id)
            self.assertEqual(f.value.reason, "bad_request")
        self.assertTrue(h.transport.disconnecting)
        # later requests fail at once, and whenLost reports why once the transport is gone
        self.failureResultOf(h.proto.ping(), IRPConnectionLost)
        h.drop()
        self.assertIn("fatal error", str(h.lost[0]))

    def test_watch_callbacks_get_initial_presence_and_pushes(self) -> None:
        h = Harness()
        seen: list[m.Record] = []
        d = h.proto.watch("bob@Example.COM", seen.append)
        (req,) = h.requests()
        h.answer(
            m.Ack("watching", req.id).to_element(),
            m.Record("bob@example.com", []).to_element(),  # initial presence: offline
        )
        self.successResultOf(d)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].nodes, [])
        self.assertIsNone(seen[0].id)
        h.answer(m.Record("bob@example.com", [node()]).to_element())
        self.assertEqual(seen[1].nodes[0].name, "laptop")
        # a presence for someone else is not ours
        h.answer(m.Record("carol@example.com", [node()]).to_element())
        self.assertEqual(len(seen), 2)
        d = h.proto.unwatch("bob@example.com")
        (req,) = h.requests()
        h.answer(m.Ack("unwatched", req.id).to_element())
        self.successResultOf(d)
        h.answer(m.Record("bob@example.com", []).to_element())
        self.assertEqual(len(seen), 2)

    def test_failing_watch_callback_is_contained(self) -> None:
        h = Harness()

        def boom(record: m.Record) -> None:
            raise RuntimeError("bug in the application")

        d = h.proto.watch("bob@example.com", boom)
        (req,) = h.requests()
        h.answer(m.Ack("watching", req.id).to_element(), m.Record("bob@example.com").to_element())
        self.successResultOf(d)
        self.assertTrue(h.proto.connected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refused_watch_removes_callback(self) -> None:
        h = Harness()
        seen: list[m.Record] = []
        d = h.proto.watch("bob@example.com", seen.append)
        (req,) = h.requests()
        h.answer(m.IRPError("rate_limited", "", req.id).to_element())
        self.failureResultOf(d, m.IRPError)
        h.answer(m.Record("bob@example.com").to_element())
        self.assertEqual(seen, [])

    def test_pki_requests(self) -> None:
        ca = certs.make_ca()
        alice = certs.make_identity("alice@example.com", ca)
        crl = pki.issue_crl(ca.key, ca.cert, [])
        h = Harness()
        d_ca = h.proto.ca()
        d_enroll = h.proto.enroll("tok-123", b"csr-der")
        d_renew = h.proto.renew(b"csr2")
        d_crl = h.proto.crl()
        d_revoke = h.proto.revoke()
        r_ca, r_enroll, r_renew, r_crl, r_revoke = h.requests()
        assert isinstance(r_enroll, m.Enroll)
        self.assertEqual((r_enroll.token, r_enroll.csr), ("tok-123", b"csr-der"))
        h.answer(
            m.Ack("revoked", r_revoke.id).to_element(),
            m.CRLData(r_crl.id, [crl.public_bytes(serialization.Encoding.DER)]).to_element(),
            m.Certs(r_renew.id, [alice.leaf_der], "issued").to_element(),
            m.Certs(r_enroll.id, [alice.leaf_der, ca.cert_der], "issued").to_element(),
            m.Certs(r_ca.id, [ca.cert_der], "ca-certs").to_element(),
        )
        self.assertEqual(self.successResultOf(d_ca), [ca.cert])
        self.assertEqual(self.successResultOf(d_enroll), [alice.leaf, ca.cert])
        self.assertEqual(self.successResultOf(d_renew), [alice.leaf])
        self.assertIsInstance(self.successResultOf(d_crl)[0], x509.CertificateRevocationList)
        self.assertIsNone(self.successResultOf(d_revoke))

    def test_unreadable_certificate_fails_the_request(self) -> None:
        h = Harness()
        d = h.proto.ca()
        (req,) = h.requests()
        h.answer(m.Certs(req.id, [b"not DER"], "ca-certs").to_element())
        self.failureResultOf(d, IRPProtocolError)

    def test_bad_arguments_fail_without_sending(self) -> None:
        h = Harness()
        self.failureResultOf(h.proto.register("bad node!", [m.Contact("192.0.2.1", 1)]), ValueError)
        self.failureResultOf(h.proto.register("n", []), ValueError)
        self.failureResultOf(h.proto.lookup("not an identity"), ValueError)
        self.failureResultOf(h.proto.watch("x", lambda r: None), ValueError)
        self.failureResultOf(h.proto.enroll("", b"csr"), ValueError)
        self.assertEqual(h.transport.value(), b"")

    def test_lookup_answer_for_another_identity_is_refused(self) -> None:
        h = Harness()
        d = h.proto.lookup("bob@example.com")
        (req,) = h.requests()
        h.answer(m.Record("mallory@example.com", [node()], None, req.id).to_element())
        self.failureResultOf(d, IRPProtocolError)

    def test_lookup_matches_identity_case_insensitively_in_domain(self) -> None:
        h = Harness()
        d = h.proto.lookup("bob@EXAMPLE.com")
        (req,) = h.requests()
        h.answer(m.Record("bob@example.com", [], b"\x30\x00", req.id).to_element())
        self.assertEqual(self.successResultOf(d).identity, "bob@example.com")

    def test_cancelled_request_answer_is_dropped(self) -> None:
        h = Harness()
        d = h.proto.unregister("laptop")
        (req,) = h.requests()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        h.answer(m.Ack("unregistered", req.id).to_element())
        self.assertTrue(h.proto.connected)
        self.assertFalse(h.transport.disconnecting)


class BrokenServerTests(unittest.TestCase):
    def assertFatal(self, h: Harness, d: defer.Deferred[Any], data: bytes) -> None:
        h.proto.dataReceived(data)
        self.failureResultOf(d, IRPProtocolError)
        self.assertTrue(h.transport.disconnecting)

    def test_wrong_kind_of_answer(self) -> None:
        h = Harness()
        d = h.proto.lookup("bob@example.com")
        (req,) = h.requests()
        self.assertFatal(h, d, wire(m.Ack("pong", req.id).to_element()))

    def test_answer_to_unknown_id(self) -> None:
        h = Harness()
        d = h.proto.ping()
        h.requests()
        self.assertFatal(h, d, wire(m.Ack("pong", "999").to_element()))

    def test_malformed_xml(self) -> None:
        h = Harness()
        d = h.proto.ping()
        self.assertFatal(h, d, plain_record(b"<pong id='1'"))

    def test_unknown_response(self) -> None:
        h = Harness()
        d = h.proto.ping()
        self.assertFatal(h, d, wire(Element("surprise", {"id": "1"})))

    def test_sealed_record(self) -> None:
        h = Harness()
        d = h.proto.ping()
        self.assertFatal(h, d, b"\x02\x00\x00\x20" + b"\x00" * 32)

    def test_oversized_record(self) -> None:
        h = Harness()
        d = h.proto.ping()
        self.assertFatal(h, d, b"\x01\x01\x00\x01")

    def test_bytes_after_fatal_are_ignored(self) -> None:
        h = Harness()
        d = h.proto.ping()
        self.assertFatal(h, d, plain_record(b"<x"))
        h.proto.dataReceived(wire(m.Ack("pong", "1").to_element()))


class TimingTests(unittest.TestCase):
    def test_request_timeout_drops_connection(self) -> None:
        h = Harness(timeout=10)
        d1 = h.proto.lookup("bob@example.com")
        h.clock.advance(5)
        d2 = h.proto.ping()
        h.clock.advance(4.9)
        self.assertNoResult(d1)
        h.clock.advance(0.1)
        self.failureResultOf(d1, IRPTimeout)
        # the connection is presumed dead: the other request fails too, the link is aborted
        self.failureResultOf(d2, IRPTimeout)
        self.assertTrue(h.transport.disconnecting)
        h.drop()
        self.assertIsInstance(h.lost[0], IRPTimeout)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_answer_cancels_timeout(self) -> None:
        h = Harness(timeout=10, keepalive=None)
        d = h.proto.ping()
        (req,) = h.requests()
        h.answer(m.Ack("pong", req.id).to_element())
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_keepalive_ping_when_idle(self) -> None:
        h = Harness(keepalive=240, timeout=30)
        h.clock.advance(239)
        self.assertEqual(h.requests(), [])
        h.clock.advance(1)
        (ping,) = h.requests()
        self.assertIsInstance(ping, m.Ping)
        h.answer(m.Ack("pong", ping.id).to_element())
        # every request pushes the next keepalive back
        h.clock.advance(200)
        d = h.proto.lookup("bob@example.com")
        (lookup,) = h.requests()
        h.answer(m.Record("bob@example.com", [], b"\x30\x00", lookup.id).to_element())
        self.successResultOf(d)
        h.clock.advance(239)
        self.assertEqual(h.requests(), [])
        h.clock.advance(1)
        self.assertIsInstance(h.requests()[0], m.Ping)
        self.assertFalse(h.transport.disconnecting)

    def test_unanswered_keepalive_drops_connection(self) -> None:
        h = Harness(keepalive=240, timeout=30)
        h.clock.advance(240)
        self.assertIsInstance(h.requests()[0], m.Ping)
        h.clock.advance(30)
        self.assertTrue(h.transport.disconnecting)

    def test_keepalive_well_inside_server_idle_limit(self) -> None:
        from sixchat.irp.client import DEFAULT_KEEPALIVE, DEFAULT_TIMEOUT

        self.assertLess(DEFAULT_KEEPALIVE + DEFAULT_TIMEOUT, 600 / 2)

    def test_close_fails_pending_and_stops_timers(self) -> None:
        h = Harness()
        d = h.proto.lookup("bob@example.com")
        closed = h.proto.close()
        self.failureResultOf(d, IRPConnectionLost)
        self.assertTrue(h.transport.disconnecting)
        self.assertNoResult(closed)
        h.drop()
        self.assertIsInstance(self.successResultOf(closed), IRPConnectionLost)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class DescribeFailureTests(unittest.SynchronousTestCase):
    def alert(self, text: str) -> TLSAlertError:
        e = describe_tls_failure(SSL.Error([("SSL routines", "", text)]))
        assert isinstance(e, TLSAlertError), e
        return e

    def test_openssl_alert_spellings(self) -> None:
        cases = {
            "tlsv1 alert unknown ca": ("unknown_ca", 48),
            "sslv3 alert bad certificate": ("bad_certificate", 42),
            "tls alert bad certificate": ("bad_certificate", 42),
            "tls alert unsupported certificate": ("unsupported_certificate", 43),
            "sslv3 alert certificate revoked": ("certificate_revoked", 44),
            "tls alert certificate expired": ("certificate_expired", 45),
            "tlsv13 alert certificate required": ("certificate_required", 116),
            "sslv3 alert handshake failure": ("handshake_failure", 40),
        }
        for text, (name, number) in cases.items():
            e = self.alert(text)
            self.assertEqual((e.alert, e.number), (name, number), text)
            self.assertIn(f"{name} ({number})", str(e))
        self.assertIn("refused our client certificate", str(self.alert("tlsv1 alert unknown ca")))

    def test_other_failures(self) -> None:
        e = describe_tls_failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        self.assertIsInstance(e, RegistryCertificateError)
        self.assertIn("--registry-ca", str(e))
        e = describe_tls_failure(Failure(error.ConnectionDone()))
        self.assertIsInstance(e, IRPConnectionLost)
        e = describe_tls_failure(error.ConnectionRefusedError())
        self.assertIsInstance(e, IRPConnectionLost)


# ---------------------------------------------------------------------------------------------
# Over real TLS on 127.0.0.1


class FakeRegistry(protocol.Protocol):
    """
    Speaks PLAIN records; answers with C{factory.handler(request, self)} (an Element or a
    list of them, or None for silence). The default answers ping, ca, lookup, register.
    """

    def connectionMade(self) -> None:
        self.reader = RecordReader()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        while (record := self.reader.next_record(False)) is not None:
            request = m.parse_request(parse(record[2]), allow_private=True)
            self.factory.requests.append(request)
            answers = self.factory.handler(request, self)
            if answers is None:
                continue
            if isinstance(answers, Element):
                answers = [answers]
            self.transport.write(b"".join(wire(a) for a in answers))

    def peer_names(self) -> tuple[str, ...]:
        tls: ServerTLS = self.factory.tls
        peer = tls.peer(self.transport.getHandle())
        return peer.names if peer else ()


def default_handler(request: m.Request, conn: FakeRegistry) -> Any:
    ca = certs.make_ca()
    if isinstance(request, m.Ping):
        return m.Ack("pong", request.id).to_element()
    if isinstance(request, m.CA):
        return m.Certs(request.id, [ca.cert_der], "ca-certs").to_element()
    if isinstance(request, m.Register):
        if not conn.peer_names():
            return m.IRPError("unauthenticated", "", request.id).to_element()
        return m.Registered(request.id, request.expires).to_element()
    if isinstance(request, m.Lookup):
        return m.Record(request.identity, [node()], None, request.id).to_element()
    return m.IRPError("unsupported", "", request.id).to_element()


def server_identity(ca: certs.TestCA, names: list[str]) -> Identity:
    key = certs.key_for("p256", "registry-server")
    cert = pki.issue_server(ca.key, ca.cert, names, key.public_key())
    return Identity(key, cert, list(ca.chain), server=True)


class TLSRegistryTests(unittest.TestCase):
    def startRegistry(
        self,
        handler: Callable[[m.Request, FakeRegistry], Any] = default_handler,
        names: tuple[str, ...] = ("127.0.0.1",),
    ) -> int:
        self.ca = certs.make_ca()
        factory = protocol.Factory.forProtocol(FakeRegistry)
        factory.handler = handler  # type: ignore[attr-defined]
        factory.requests = []  # type: ignore[attr-defined]
        factory.connections = []  # type: ignore[attr-defined]
        trust = certs.trust_for(self.ca, getattr(self, "crls", ()))
        tls = ServerTLS(server_identity(self.ca, list(names)), trust)
        factory.tls = tls  # type: ignore[attr-defined]
        self.factory = factory
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(tls, False, factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def cleanupClient(self, proto: IRPClientProtocol) -> None:
        self.addCleanup(lambda: proto.close() if proto.connected else None)

    @defer.inlineCallbacks
    def test_authenticated_connection(self) -> Any:
        port = self.startRegistry()
        alice = certs.make_identity("alice@example.com", self.ca)
        proto = yield connectRegistry(
            reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor], client_identity=alice
        )
        self.cleanupClient(proto)
        self.assertEqual(self.factory.connections[0].peer_names(), ("alice@example.com",))
        granted, record, anchors = yield defer.gatherResults(
            [
                proto.register("laptop", [m.Contact("127.0.0.1", 4605)], 90),
                proto.lookup("bob@example.com"),
                proto.ca(),
            ]
        )
        self.assertEqual(granted, 90)
        self.assertEqual(record.nodes[0].name, "laptop")
        self.assertEqual(anchors, [self.ca.cert])
        rtt = yield proto.ping()
        self.assertGreaterEqual(rtt, 0)
        why = yield proto.close()
        self.assertIsInstance(why, IRPConnectionLost)

    @defer.inlineCallbacks
    def test_anonymous_connection(self) -> Any:
        port = self.startRegistry()
        proto = yield connectRegistry(reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor])
        self.cleanupClient(proto)
        self.assertEqual(self.factory.connections[0].peer_names(), ())
        e = yield self.assertFailure(
            proto.register("laptop", [m.Contact("127.0.0.1", 4605)]), m.IRPError
        )
        self.assertEqual(e.reason, "unauthenticated")
        yield proto.close()

    @defer.inlineCallbacks
    def assertAlert(self, identity: Identity, alert: str, number: int) -> Any:
        port = self.startRegistry()
        e = yield self.assertFailure(
            connectRegistry(
                reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor], client_identity=identity
            ),
            TLSAlertError,
        )
        self.assertEqual((e.alert, e.number), (alert, number))
        self.assertIn(f"TLS alert {alert} ({number})", str(e))
        # the refusal happened in TLS: no request reached the registry, no anonymous retry
        self.assertEqual(self.factory.requests, [])

    def test_alert_unknown_ca(self) -> Any:
        stranger = certs.make_identity("alice@example.com", certs.make_ca(name="another CA"))
        return self.assertAlert(stranger, "unknown_ca", 48)

    def test_alert_certificate_expired(self) -> Any:
        now = certs.utcnow()
        expired = certs.make_identity(
            "alice@example.com",
            certs.make_ca(),
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        return self.assertAlert(expired, "certificate_expired", 45)

    def test_alert_unsupported_certificate(self) -> Any:
        server_only = certs.make_identity("alice@example.com", certs.make_ca(), eku=["serverAuth"])
        return self.assertAlert(server_only, "unsupported_certificate", 43)

    def test_alert_certificate_revoked(self) -> Any:
        ca = certs.make_ca()
        revoked = certs.make_identity("alice@example.com", ca)
        self.crls = [pki.issue_crl(ca.key, ca.cert, [revoked.leaf.serial_number])]
        return self.assertAlert(revoked, "certificate_revoked", 44)

    def test_alert_bad_certificate_for_two_names(self) -> Any:
        two = certs.make_identity(["alice@example.com", "al@example.com"], certs.make_ca())
        return self.assertAlert(two, "bad_certificate", 42)

    @defer.inlineCallbacks
    def test_untrusted_registry_certificate(self) -> Any:
        port = self.startRegistry()
        other = certs.make_ca(name="not the registry's CA")
        e = yield self.assertFailure(
            connectRegistry(reactor, f"127.0.0.1:{port}", anchors=[other.anchor]),
            RegistryCertificateError,
        )
        self.assertIn("--registry-ca", str(e))

    @defer.inlineCallbacks
    def test_registry_certificate_for_another_name(self) -> Any:
        port = self.startRegistry(names=("registry.example.com",))
        e = yield self.assertFailure(
            connectRegistry(reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor]),
            RegistryCertificateError,
        )
        self.assertIn("not valid for the name", str(e))

    @defer.inlineCallbacks
    def test_fatal_error_over_tls(self) -> Any:
        def handler(request: m.Request, conn: FakeRegistry) -> Any:
            if isinstance(request, m.Lookup):
                conn.transport.write(wire(m.IRPError("bad_request", "no").to_element()))
                conn.transport.loseConnection()
                return None
            return default_handler(request, conn)

        port = self.startRegistry(handler)
        proto = yield connectRegistry(reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor])
        self.cleanupClient(proto)
        e = yield self.assertFailure(proto.lookup("bob@example.com"), m.IRPError)
        self.assertIsNone(e.id)
        why = yield proto.whenLost()
        self.assertIsInstance(why, IRPConnectionLost)

    @defer.inlineCallbacks
    def test_out_of_order_over_tls(self) -> Any:
        held: list[m.Request] = []

        def handler(request: m.Request, conn: FakeRegistry) -> Any:
            if isinstance(request, m.Lookup) and not held:
                held.append(request)
                return None
            if isinstance(request, m.CA):
                first = held.pop()
                return [
                    default_handler(request, conn),
                    m.Record(first.identity, [], b"\x30\x00", first.id).to_element(),  # type: ignore[union-attr]
                ]
            return default_handler(request, conn)

        port = self.startRegistry(handler)
        proto = yield connectRegistry(reactor, f"127.0.0.1:{port}", anchors=[self.ca.anchor])
        self.cleanupClient(proto)
        d_lookup = proto.lookup("bob@example.com")
        anchors = yield proto.ca()
        record = yield d_lookup
        self.assertEqual(anchors, [self.ca.cert])
        self.assertEqual(record.nodes, [])
        yield proto.close()

    @defer.inlineCallbacks
    def test_nothing_listening(self) -> Any:
        port = self.startRegistry()
        # a free port: bind and release
        p = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        free = p.getHost().port
        yield p.stopListening()
        self.assertNotEqual(free, port)
        e = yield self.assertFailure(
            connectRegistry(reactor, f"127.0.0.1:{free}", anchors=[self.ca.anchor], timeout=5),
            IRPConnectionLost,
        )
        self.assertIn("127.0.0.1", str(e))


class LoadCertificatesTests(unittest.TestCase):
    def test_pem_der_missing_garbage(self) -> None:
        from sixchat.errors import SixchatError

        ca = certs.make_ca()
        tmp = self.mktemp()
        import os

        os.makedirs(tmp)
        pem = os.path.join(tmp, "ca.pem")
        der = os.path.join(tmp, "ca.der")
        junk = os.path.join(tmp, "junk")
        with open(pem, "wb") as f:
            f.write(ca.anchor_pem * 2)
        with open(der, "wb") as f:
            f.write(ca.cert_der)
        with open(junk, "wb") as f:
            f.write(b"hello")
        self.assertEqual(load_certificates(pem), [ca.cert, ca.cert])
        self.assertEqual(load_certificates(der), [ca.cert])
        self.assertIn("junk", str(self.assertRaises(SixchatError, load_certificates, junk)))
        missing = os.path.join(tmp, "nope")
        self.assertIn("nope", str(self.assertRaises(SixchatError, load_certificates, missing)))
