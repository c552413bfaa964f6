"""
Tests of L{sixchat.irp.server.protocol}: L{IRPServerProtocol} driven over a string transport
with a chosen client certificate and a L{task.Clock} (framing, every request and error,
authentication, the per-connection limits). The harness is L{sixchat.test.irp_harness}.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from sixchat.irp.messages import (
    CA,
    CRL,
    Contact,
    Lookup,
    Ping,
    Register,
    Renew,
    Revoke,
    Unregister,
    Unwatch,
    Watch,
)
from sixchat.irp.server.backlog import BUSY_TEXT, Backlog
from sixchat.irp.server.requests import _joined
from sixchat.irp.store.interfaces import IdentityState
from sixchat.irp.store.sqlite import issuer_key
from sixchat.record import header, plain_record
from sixchat.test import certs
from sixchat.test.irp_harness import (
    CONTACT,
    RequestTestCase,
    assertFatal,
    el,
    make_csr,
)
from sixchat.test.test_irp_store import wait_for
from sixchat.xmlcodec import Element, serialize


class RequestTests(RequestTestCase):
    """Requests and errors of irp-1 without TLS."""

    # framing and fatal errors (§2, §7.2) -----------------------------------------------------

    async def test_fatal_input(self) -> None:
        h = await self.harness()
        cases = {
            "malformed XML": plain_record(b"<ping id='1'"),
            "two roots": plain_record(b"<ping id='1'/><ping id='2'/>"),
            "DOCTYPE": plain_record(b"<!DOCTYPE x [<!ENTITY a 'b'>]><ping id='1'/>"),
            "XML declaration": plain_record(b"<?xml version='1.0'?><ping id='1'/>"),
            "namespace": plain_record(b"<ping xmlns='urn:x' id='1'/>"),
            "no id": plain_record(b"<ping/>"),
            "bad id": plain_record(b"<ping id='a b'/>"),
            "long id": plain_record(b"<ping id='" + b"a" * 65 + b"'/>"),
            "unknown element without id": plain_record(b"<frob/>"),
            "SEALED record": header(0x02, 32) + b"\0" * 32,
            "unknown record type": header(0x07, 3) + b"abc",
            "zero-length record": header(0x01, 0),
            "record overflow": header(0x01, 65_537),
        }
        for name, data in cases.items():
            client = h.connect()
            client.send_bytes(data)
            with self.subTest(name):
                assertFatal(self, client)
            client.send(Ping("late"))  # nothing more is read after the fatal error
            self.assertEqual(client.take(), [])

    async def test_duplicate_inflight_id(self) -> None:
        h = await self.harness()
        client = h.connect(h.identity("alice@example.com"))
        # The lookup waits for the store; the second request with its id is fatal (§7.2).
        client.send(Lookup("dup", "bob@example.com"), Ping("dup"))
        assertFatal(self, client)
        await h.settle()
        self.assertEqual(client.take(), [])  # the first answer is not sent after closing

    async def test_id_reusable_after_answer(self) -> None:
        h = await self.harness()
        client = h.connect()
        for _ in range(3):
            self.assertEqual((await client.request(Ping("same"))).tag, "pong")

    async def test_unknown_element_is_unsupported(self) -> None:
        h = await self.harness()
        client = h.connect()
        answer = await client.request(el("frobnicate", id="f1"))
        self.assertEqual(
            (answer.tag, answer.get("reason"), answer.get("id")), ("error", "unsupported", "f1")
        )
        self.assertFalse(client.closed)
        self.assertEqual((await client.request(Ping("p"))).tag, "pong")

    async def test_unknown_attributes_and_children_ignored(self) -> None:
        h = await self.harness()
        client = h.connect()
        answer = await client.request(el("ping", [el("future")], id="p", extra="1"))
        self.assertEqual(answer.tag, "pong")

    async def test_pipelined_answers_out_of_order(self) -> None:
        h = await self.harness()
        client = h.connect()
        client.send(CRL("slow"), Ping("fast"))
        first = client.read()[0]
        self.assertEqual((first.tag, first.get("id")), ("pong", "fast"))
        self.assertEqual((await client.request(CRL("again"))).tag, "crl-data")

    # anonymous requests and authentication --------------------------------------------------

    async def test_anonymous_requests(self) -> None:
        h = await self.harness()
        client = h.connect()
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        ca = await client.request(CA("2"))
        self.assertEqual(ca.tag, "ca-certs")
        self.assertEqual([base64.b64decode(c.text) for c in ca.findall("cert")], [h.ca.cert_der])
        crl = await client.request(CRL("3"))
        self.assertEqual(crl.tag, "crl-data")
        self.assertEqual(len(crl.findall("crl")), 1)

    async def test_unauthenticated(self) -> None:
        h = await self.harness()
        client = h.connect()
        csr = make_csr(ed25519.Ed25519PrivateKey.generate())
        requests = [
            Register("r", "laptop", CONTACT),
            Unregister("u", "laptop"),
            Lookup("l", "bob@example.com"),
            Watch("w", "bob@example.com"),
            Unwatch("uw", "bob@example.com"),
            Renew("rn", csr),
            Revoke("rv"),
        ]
        for request in requests:
            answer = await client.request(request)
            with self.subTest(request.tag):
                self.assertEqual(answer.get("reason"), "unauthenticated")
                self.assertEqual(answer.get("id"), request.id)
        self.assertFalse(client.closed)

    async def test_expired_client_certificate(self) -> None:
        h = await self.harness()
        now = h.now()
        short = h.identity("alice@example.com", not_after=now + timedelta(seconds=10))
        client = h.connect(short)
        self.assertEqual((await client.request(Register("1", "n", CONTACT))).tag, "registered")
        h.clock.advance(11)
        answer = await client.request(Register("2", "n", CONTACT))
        self.assertEqual(answer.get("reason"), "unauthenticated")

    # register / unregister (§3.1, §3.2, §7.3) ----------------------------------------------

    async def test_register_and_lookup(self) -> None:
        h = await self.harness()
        alice = h.identity("alice@example.com")
        a = h.connect(alice)
        registered = await a.request(
            Register("1", "laptop", [Contact("2001:db8::5", 4605), Contact("192.0.2.7", 4605)])
        )
        self.assertEqual(serialize(registered), b'<registered id="1" expires="300"/>')
        bob = h.connect(h.identity("bob@example.com"))
        record = await bob.request(Lookup("2", "alice@EXAMPLE.com"))
        self.assertEqual(record.tag, "record")
        self.assertEqual(record.get("identity"), "alice@example.com")
        (node,) = record.findall("node")
        self.assertEqual(node.get("name"), "laptop")
        now = h.now()
        self.assertEqual(
            node.get("updated"),
            now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        )
        until = datetime.strptime(node.get("until") or "", "%Y-%m-%dT%H:%M:%S.%fZ")
        self.assertLess(abs(until.replace(tzinfo=UTC).timestamp() - now.timestamp() - 300), 0.002)
        self.assertEqual(
            [(c.get("host"), c.get("port")) for c in node.findall("contact")],
            [("2001:db8::5", "4605"), ("192.0.2.7", "4605")],
        )
        self.assertEqual(base64.b64decode(node.find("cert").text), alice.leaf_der)  # type: ignore[union-attr]
        self.assertEqual(record.children[-1].tag, "cert")
        self.assertEqual(base64.b64decode(record.children[-1].text), alice.leaf_der)

    async def test_register_only_own_identity(self) -> None:
        """The binding is the certificate's identity; nothing in the request changes that."""
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        forged = Register("1", "laptop", CONTACT).to_element()
        forged.attrs["identity"] = "bob@example.com"
        self.assertEqual((await a.request(forged)).tag, "registered")
        b = h.connect(h.identity("bob@example.com"))
        self.assertEqual(
            (await b.request(Lookup("2", "bob@example.com"))).get("reason"), "not_found"
        )
        self.assertEqual((await b.request(Lookup("3", "alice@example.com"))).tag, "record")

    async def test_register_bad_requests(self) -> None:
        h = await self.harness(allow_private_addresses=False)
        a = h.connect(h.identity("alice@example.com"))

        def reg(*contacts: tuple[str, str], **attrs: str) -> Element:
            attrs.setdefault("node", "laptop")
            return el(
                "register", [el("contact", host=c[0], port=c[1]) for c in contacts], id="r", **attrs
            )

        good = ("192.0.2.7", "4605")
        cases = {
            "no contact": reg(),
            "nine contacts": reg(*[(f"192.0.2.{i}", "4605") for i in range(1, 10)]),
            "host name": reg(("example.com", "4605")),
            "zone id": reg(("fe80::1%eth0", "4605")),
            "loopback": reg(("127.0.0.1", "4605")),
            "IPv6 loopback": reg(("::1", "4605")),
            "mapped loopback": reg(("::ffff:127.0.0.1", "4605")),
            "link-local": reg(("169.254.1.1", "4605")),
            "unspecified": reg(("0.0.0.0", "4605")),
            "multicast": reg(("ff02::1", "4605")),
            "broadcast": reg(("255.255.255.255", "4605")),
            "port 0": reg(("192.0.2.7", "0")),
            "port 65536": reg(("192.0.2.7", "65536")),
            "port not a number": reg(("192.0.2.7", "http")),
            "no port": el("register", [el("contact", host="192.0.2.7")], id="r", node="n"),
            "expires not integer": reg(good, expires="1.5"),
            "expires words": reg(good, expires="soon"),
            "expires too long": reg(good, expires="12345678901"),
            "no node": el("register", [el("contact", host="192.0.2.7", port="1")], id="r"),
            "bad node": reg(good, node="my laptop"),
        }
        for name, request in cases.items():
            answer = await a.request(request)
            with self.subTest(name):
                self.assertEqual(
                    (answer.tag, answer.get("reason"), answer.get("id")),
                    ("error", "bad_request", "r"),
                )
        self.assertFalse(a.closed)

    async def test_expires_clamped(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        for i, (asked, granted) in enumerate(
            [
                ("5", "30"),
                ("-7", "-7"),
                ("30", "30"),
                ("3600", "3600"),
                ("99999", "3600"),
                (None, "300"),
                ("0300", "300"),
            ]
        ):
            attrs = {"node": "n", "id": f"r{i}"}
            if asked is not None:
                attrs["expires"] = asked
            answer = await a.request(
                el("register", [el("contact", host="192.0.2.7", port="1")], **attrs)
            )
            expected = "30" if granted == "-7" else granted
            self.assertEqual(answer.get("expires"), expected, asked)

    async def test_hosts_stored_canonically(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        contacts = [
            el("contact", host="::FFFF:192.0.2.7", port="4605"),
            el("contact", host="2001:DB8:0:0::5", port="4605"),
        ]
        await a.request(el("register", contacts, id="1", node="n"))
        record = await a.request(Lookup("2", "alice@example.com"))
        hosts = [c.get("host") for c in record.findall("node")[0].findall("contact")]
        self.assertEqual(hosts, ["192.0.2.7", "2001:db8::5"])

    async def test_private_addresses_allowed_when_configured(self) -> None:
        h = await self.harness(allow_private_addresses=True)
        a = h.connect(h.identity("alice@example.com"))
        answer = await a.request(Register("1", "n", [Contact("::1", 4605)]))
        self.assertEqual(answer.tag, "registered")

    async def test_node_limit(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        for i in range(16):
            self.assertEqual(
                (await a.request(Register(f"r{i}", f"n{i}", CONTACT))).tag, "registered"
            )
        answer = await a.request(Register("r16", "n16", CONTACT))
        self.assertEqual(answer.get("reason"), "conflict")
        self.assertEqual((await a.request(Register("again", "n3", CONTACT))).tag, "registered")

    async def test_unregister(self) -> None:
        h = await self.harness()
        alice = h.identity("alice@example.com")
        a = h.connect(alice)
        await a.request(Register("1", "laptop", CONTACT))
        self.assertEqual(
            serialize(await a.request(Unregister("2", "laptop"))), b'<unregistered id="2"/>'
        )
        self.assertEqual((await a.request(Unregister("3", "laptop"))).tag, "unregistered")
        self.assertEqual((await a.request(Unregister("4", "never"))).tag, "unregistered")
        record = await a.request(Lookup("5", "alice@example.com"))
        self.assertEqual(record.findall("node"), [])  # known certificate, no live node
        self.assertEqual(base64.b64decode(record.find("cert").text), alice.leaf_der)  # type: ignore[union-attr]

    # lookup (§3.3, §7.4) ---------------------------------------------------------------------

    async def test_lookup_errors(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        for name, request in {
            "missing identity": el("lookup", id="x"),
            "invalid identity": el("lookup", id="x", identity="not an identity"),
            "two at signs": el("lookup", id="x", identity="a@b@example.com"),
        }.items():
            with self.subTest(name):
                self.assertEqual((await b.request(request)).get("reason"), "bad_request")
        self.assertEqual(
            (await b.request(Lookup("y", "nobody@example.com"))).get("reason"), "not_found"
        )

    async def test_served_domains(self) -> None:
        h = await self.harness(domains=frozenset({"Example.COM"}))
        a = h.connect(h.identity("alice@example.com"))
        self.assertEqual((await a.request(Register("1", "n", CONTACT))).tag, "registered")
        o = h.connect(h.identity("olga@other.example"))
        self.assertEqual((await o.request(Register("2", "n", CONTACT))).get("reason"), "forbidden")
        self.assertEqual(
            (await a.request(Lookup("3", "olga@other.example"))).get("reason"), "not_found"
        )
        self.assertEqual(
            (await a.request(Watch("4", "olga@other.example"))).get("reason"), "not_found"
        )
        self.assertEqual((await o.request(Lookup("5", "alice@example.com"))).tag, "record")

    async def test_public_lookup_policy(self) -> None:
        h = await self.harness(lookup_policy="public")
        a = h.connect(h.identity("alice@example.com"))
        await a.request(Register("1", "n", CONTACT))
        anonymous = h.connect()
        self.assertEqual((await anonymous.request(Lookup("2", "alice@example.com"))).tag, "record")
        self.assertEqual((await anonymous.request(Watch("3", "alice@example.com"))).tag, "watching")
        self.assertEqual(len(anonymous.pushes()), 1)
        self.assertEqual(
            (await anonymous.request(Register("4", "n", CONTACT))).get("reason"), "unauthenticated"
        )

    # limits (§5, §6) -----------------------------------------------------------------------

    async def test_rate_limit(self) -> None:
        h = await self.harness()
        client = h.connect()
        client.send(*[Ping(f"p{i}") for i in range(60)])
        answers = client.take()
        self.assertEqual([a.tag for a in answers].count("pong"), 50)
        limited = [a for a in answers if a.tag == "error"]
        self.assertEqual({a.get("reason") for a in limited}, {"rate_limited"})
        self.assertEqual([a.get("id") for a in limited], [f"p{i}" for i in range(50, 60)])
        self.assertFalse(client.closed)
        h.clock.advance(0.101)  # five requests' worth of refill
        client.send(*[Ping(f"q{i}") for i in range(6)])
        self.assertEqual([a.tag for a in client.take()], ["pong"] * 5 + ["error"])
        h.clock.advance(1)
        self.assertEqual((await client.request(Ping("later"))).tag, "pong")

    async def test_overload_sheds_with_rate_limited_and_recovers(self) -> None:
        """
        Past C{max_queued_requests} waiting for the store (all connections together), a
        request that needs the store gets C{rate_limited} at once; C{ping} still passes;
        the connections are kept, and once the store catches up requests pass again.
        """
        h = await self.harness(max_queued_requests=3)
        alice, bob = h.identity("alice@example.com"), h.identity("bob@example.com")
        a, b = h.connect(alice), h.connect(bob)
        self.assertEqual((await a.request(Register("r", "n", CONTACT))).tag, "registered")
        gate = threading.Event()
        self.addCleanup(gate.set)
        blocked = h.store._run(gate.wait)  # the store's thread is busy: reads queue
        a.send(Lookup("l1", "alice@example.com"), Lookup("l2", "alice@example.com"))
        b.send(Lookup("l3", "alice@example.com"))
        self.assertEqual(h.factory.backlog.queued, 3)
        a.send(Lookup("l4", "alice@example.com"), Watch("w", "bob@example.com"), Ping("p"))
        b.send(el("lookup", id="l5", identity="alice@example.com"))  # the generic parse path
        shed = a.take() + b.take()
        self.assertEqual(
            sorted((e.tag, e.get("id"), e.get("reason"), e.text) for e in shed),
            [("error", "l4", "rate_limited", BUSY_TEXT),
             ("error", "l5", "rate_limited", BUSY_TEXT),
             ("error", "w", "rate_limited", BUSY_TEXT),
             ("pong", "p", None, "")],
        )  # fmt: skip
        self.assertEqual(h.factory.backlog.refused, 3)
        self.assertFalse(a.closed or b.closed)
        gate.set()
        await blocked
        await wait_for(lambda: len(a.read()) == 2 and len(b.read()) == 1)
        self.assertEqual([e.tag for e in a.take() + b.take()], ["record"] * 3)
        self.assertEqual(h.factory.backlog.queued, 0)
        self.assertEqual(h.factory.backlog.peak, 3)
        # Recovered: the same requests pass again, on both connections.
        self.assertEqual((await a.request(Lookup("l6", "alice@example.com"))).tag, "record")
        self.assertEqual((await b.request(Watch("w2", "alice@example.com"))).tag, "watching")
        self.assertEqual(h.factory.backlog.refused, 3)

    async def test_waited_lookup_failure_answers_internal_and_leaves_backlog(self) -> None:
        """A lookup whose store read fails after waiting (with and without the revocation
        recheck) is answered C{internal} with its id and leaves the backlog."""
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        self.assertEqual((await a.request(Register("r", "n", CONTACT))).tag, "registered")
        self.assertEqual((await a.request(Lookup("first", "alice@example.com"))).tag, "record")
        reads: list[defer.Deferred[IdentityState]] = []
        rechecks: list[defer.Deferred[bool]] = []

        def state(identity: str, now: datetime) -> defer.Deferred[IdentityState]:
            reads.append(defer.Deferred())
            return reads[-1]

        def is_revoked(serial: int, issuer: bytes) -> defer.Deferred[bool]:
            rechecks.append(defer.Deferred())
            return rechecks[-1]

        self.patch(h.store, "state", state)
        self.patch(h.store, "is_revoked", is_revoked)
        a.send(Lookup("l1", "alice@example.com"))  # checked recently: no recheck
        self.assertEqual((len(reads), len(rechecks), h.factory.backlog.queued), (1, 0, 1))
        reads[0].errback(RuntimeError("disk I/O error"))
        error = a.answer("l1")
        assert error is not None
        self.assertEqual((error.tag, error.get("reason")), ("error", "internal"))
        self.assertEqual(h.factory.backlog.queued, 0)
        h.clock.advance(2)  # past revocation_recheck: the recheck goes with the lookup
        a.send(Lookup("l2", "alice@example.com"))
        self.assertEqual((len(reads), len(rechecks), h.factory.backlog.queued), (2, 1, 1))
        rechecks[0].errback(RuntimeError("disk I/O error"))
        reads[1].callback(IdentityState("alice@example.com"))
        error = a.answer("l2")
        assert error is not None
        self.assertEqual((error.tag, error.get("reason")), ("error", "internal"))
        self.assertEqual(h.factory.backlog.queued, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_backlog_is_released_after_the_connection_closed(self) -> None:
        """A request whose connection closed still counts until its store work is over,
        then leaves the backlog (the count never leaks; failures: L{BacklogTests})."""
        h = await self.harness(max_queued_requests=2)
        a = h.connect(h.identity("alice@example.com"))
        self.assertEqual((await a.request(Register("r", "n", CONTACT))).tag, "registered")
        gate = threading.Event()
        self.addCleanup(gate.set)
        blocked = h.store._run(gate.wait)
        a.send(Lookup("l1", "alice@example.com"), Unregister("u", "n"))
        self.assertEqual(h.factory.backlog.queued, 2)
        a.protocol.connectionLost()
        c = h.connect(h.identity("carol@example.com"))
        c.send(Lookup("l2", "alice@example.com"))
        self.assertEqual(c.answer("l2").get("reason"), "rate_limited")  # type: ignore[union-attr]
        gate.set()
        await blocked
        await wait_for(lambda: h.factory.backlog.queued == 0)
        record = await c.request(Lookup("l3", "alice@example.com"))
        self.assertEqual([e.tag for e in record.children], ["cert"])  # unregistered: no node

    async def test_idle_timeout(self) -> None:
        h = await self.harness()
        client = h.connect()
        h.clock.advance(599)
        self.assertFalse(client.closed)
        self.assertEqual((await client.request(Ping("p"))).tag, "pong")
        h.clock.advance(599)
        self.assertFalse(client.closed)
        h.clock.advance(1.5)
        self.assertTrue(client.closed)
        self.assertEqual(client.take(), [])  # closed without an error

    async def test_revocation_cache_expires(self) -> None:
        """Without any notification, a revocation is still seen within a second."""
        h = await self.harness()
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        self.assertEqual((await b.request(Lookup("1", "x@example.com"))).get("reason"), "not_found")
        # Write the revocation behind the store's back: no notification at all.
        await h.store._write(
            lambda conn: conn.execute(
                "INSERT INTO revocations (issuer, serial, issuer_name, revoked_at) "
                "VALUES (?, ?, NULL, 0)",
                (issuer_key(h.ca.cert_der)[0], format(bob.leaf.serial_number, "x")),
            )
        )
        answer = await b.request(Lookup("2", "x@example.com"))
        self.assertEqual(answer.get("reason"), "not_found")  # the cached answer
        h.clock.advance(1)
        self.assertEqual(
            (await b.request(Lookup("3", "x@example.com"))).get("reason"), "unauthenticated"
        )


class JoinedTests(SynchronousTestCase):
    """L{_joined}: the revocation recheck and the lookup's state, as one result."""

    def test_both(self) -> None:
        state = IdentityState("alice@example.com")
        d = _joined(defer.succeed(False), defer.succeed(state))
        self.assertEqual(self.successResultOf(d), (False, state))

    def test_later(self) -> None:
        first: defer.Deferred[bool] = defer.Deferred()
        second: defer.Deferred[IdentityState] = defer.Deferred()
        d = _joined(first, second)
        second.callback(IdentityState("bob@example.com"))
        self.assertNoResult(d)
        first.callback(True)
        self.assertEqual(self.successResultOf(d), (True, IdentityState("bob@example.com")))

    def test_first_fails_second_consumed(self) -> None:
        second: defer.Deferred[IdentityState] = defer.Deferred()
        d = _joined(defer.fail(RuntimeError("revocation read")), second)
        self.failureResultOf(d, RuntimeError)
        second.errback(ValueError("state read"))  # consumed: no unhandled error
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_second_fails(self) -> None:
        d = _joined(defer.succeed(False), defer.fail(ValueError("state read")))
        self.failureResultOf(d, ValueError)


class BacklogTests(SynchronousTestCase):
    """L{Backlog}: the bound on requests waiting for the store."""

    def test_counts_until_fired(self) -> None:
        backlog = Backlog(2)
        first: defer.Deferred[int] = defer.Deferred()
        second: defer.Deferred[int] = defer.Deferred()
        self.assertTrue(backlog.admit())
        self.assertIs(backlog.track(first), first)
        self.assertTrue(backlog.admit())
        backlog.track(second)
        self.assertEqual((backlog.queued, backlog.peak), (2, 2))
        self.assertFalse(backlog.admit())
        self.assertFalse(backlog.admit())
        self.assertEqual(backlog.refused, 2)
        first.callback(7)
        self.assertEqual(self.successResultOf(first), 7)  # the result passes through
        self.assertEqual(backlog.queued, 1)
        self.assertTrue(backlog.admit())
        second.errback(RuntimeError("store closed"))
        self.failureResultOf(second, RuntimeError)  # so do failures
        self.assertEqual((backlog.queued, backlog.peak, backlog.refused), (0, 2, 2))

    def test_answered_at_once_is_not_counted(self) -> None:
        backlog = Backlog(1)
        backlog.track(defer.succeed(1))
        self.assertEqual(backlog.queued, 0)
        self.assertTrue(backlog.admit())

    def test_limit_must_be_positive(self) -> None:
        self.assertRaises(ValueError, Backlog, 0)
