"""
Tests of the IRP registry: L{IRPServerProtocol} and L{IRPServerFactory} driven over a string
transport with a chosen client certificate and a L{task.Clock} (every request, error, limit
and push), the registry over real TLS on loopback (authentication, enrolment, revocation
refused in the handshake), persistence of a SQLite registry, the C{sixchat pki} commands,
and a real C{twistd -n sixchat-irp}.

The store is always the real L{SQLiteStore}: its work runs in its thread and comes back
through the real reactor, so the tests wait for answers with L{wait_for} while every timer
of the registry runs on the L{task.Clock}.
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.application.service import IServiceMaker
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sixchat import pki
from sixchat.identity import Identity, load_identity, rfc822_names
from sixchat.irp import tap as irp_tap
from sixchat.irp.messages import (
    CA,
    CRL,
    Contact,
    Enroll,
    IRPError,
    Lookup,
    Ping,
    Register,
    Renew,
    Revoke,
    Unregister,
    Unwatch,
    Watch,
)
from sixchat.irp.server import IRPServerFactory, IRPServerService, RegistryConfig
from sixchat.irp.server.authority import Authority, check_csr, token_hash
from sixchat.irp.server.gcpolicy import CollectorPolicy
from sixchat.irp.sqlite_store import SQLiteStore, issuer_key
from sixchat.irp.tls import client_options
from sixchat.record import RecordReader, header, plain_record
from sixchat.test import certs
from sixchat.test.processes import Registry, run_cli, run_twistd
from sixchat.test.test_irp_gcpolicy import FakeGC
from sixchat.test.test_irp_store import wait_for
from sixchat.xmlcodec import Element, parse, serialize

CONTACT = [Contact("192.0.2.7", 4605)]


def el(tag: str, children: list[Element] | None = None, text: str = "", **attrs: str) -> Element:
    return Element(tag, dict(attrs), children or [], text)


def make_csr(key: Any, names: tuple[str, ...] = ("mallory@evil.example",)) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(n) for n in names]), critical=False
        )
    digest = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else (hashes.SHA256())
    )
    return builder.sign(key, digest).public_bytes(serialization.Encoding.DER)


def server_identity(ca: certs.TestCA) -> Identity:
    key = certs.key_for("p256", "irp-server")
    cert = pki.issue_server(ca.key, ca.cert, ["127.0.0.1", "::1"], key.public_key())
    return Identity(key, cert, [], server=True)


class Client:
    """One connection to the factory over a string transport, with a chosen certificate."""

    def __init__(self, harness: Harness, identity: Identity | None) -> None:
        self.transport = StringTransport()
        self.protocol = harness.factory.buildProtocol(None)
        if identity is not None:
            harness.peers[self.transport] = harness.peer(identity)
        self.protocol.makeConnection(self.transport)
        self._reader = RecordReader()
        self.elements: list[Element] = []

    def send_bytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, *items: Any) -> None:
        data = b"".join(
            plain_record(serialize(i if isinstance(i, Element) else i.to_element())) for i in items
        )
        self.send_bytes(data)

    def read(self) -> list[Element]:
        self._reader.feed(self.transport.value())
        self.transport.clear()
        while (record := self._reader.next_record(False)) is not None:
            self.elements.append(parse(record[2]))
        return self.elements

    def take(self) -> list[Element]:
        self.read()
        out, self.elements = self.elements, []
        return out

    def answer(self, rid: str) -> Element | None:
        for e in self.read():
            if e.get("id") == rid or (e.tag == "error" and e.get("id") is None):
                self.elements.remove(e)
                return e
        return None

    async def request(self, item: Any) -> Element:
        rid = item.get("id") if isinstance(item, Element) else item.id
        self.send(item)
        found: list[Element] = []

        def ready() -> bool:
            e = self.answer(rid)
            if e is not None:
                found.append(e)
            return bool(found)

        await wait_for(ready)
        return found[0]

    def pushes(self) -> list[Element]:
        pushed = [e for e in self.read() if e.tag == "presence"]
        for e in pushed:
            self.elements.remove(e)
        return pushed

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class Harness:
    """A registry factory over a SQLite file, a test CA and a clock set to now."""

    def __init__(
        self, testcase: TestCase, config: RegistryConfig | None = None, path: str | None = None
    ) -> None:
        self.ca = certs.make_ca()
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.path = path or os.path.abspath(testcase.mktemp()) + ".sqlite"
        self.store = SQLiteStore(self.path, reactor)
        self.authority = Authority(self.ca.key, self.ca.cert, self.store, now=self.now)
        self.peers: dict[Any, Any] = {}
        self.factory = IRPServerFactory(
            self.store,
            self.authority,
            self.clock,
            config or RegistryConfig(allow_private_addresses=True),
            peer_for=lambda transport: self.peers.get(transport),
        )
        self.testcase = testcase

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def peer(self, identity: Identity) -> Any:
        return certs.trust_for(self.ca).validate(identity.chain_der, self.now())

    async def start(self) -> Harness:
        await self.store.open()
        await self.factory.start()
        self.testcase.addCleanup(self.stop)
        return self

    async def stop(self) -> None:
        await self.factory.stop()
        await self.store.close()

    def connect(self, identity: Identity | None = None) -> Client:
        return Client(self, identity)

    def identity(self, name: str, **kwargs: Any) -> Identity:
        return certs.make_identity(name, self.ca, **kwargs)

    async def settle(self) -> None:
        """Let the store thread and the real reactor finish what is under way."""
        await self.store._run(lambda: None)
        await task.deferLater(reactor, 0.02, lambda: None)


def assertFatal(testcase: TestCase, client: Client) -> None:
    (error,) = client.take()
    testcase.assertEqual(error.tag, "error")
    testcase.assertEqual(error.get("reason"), "bad_request")
    testcase.assertIsNone(error.get("id"))
    testcase.assertTrue(client.closed)


class RequestTests(TestCase):
    """Requests and errors of irp-1 without TLS."""

    async def harness(self, **config: Any) -> Harness:
        config.setdefault("allow_private_addresses", True)
        return await Harness(self, RegistryConfig(**config)).start()

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

    # watches (§3.4, §7.5) ------------------------------------------------------------------

    async def test_watch_pushes(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        b = h.connect(h.identity("bob@example.com"))
        b.send(Watch("w", "alice@example.com"))
        await wait_for(lambda: len(b.read()) >= 2)
        watching, presence = b.take()
        self.assertEqual(serialize(watching), b'<watching id="w"/>')
        self.assertEqual(serialize(presence), b'<presence identity="alice@example.com"/>')

        await a.request(Register("1", "laptop", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual([n.get("name") for n in pushed.children], ["laptop"])
        self.assertEqual([c.tag for c in pushed.children[0].children], ["contact", "cert"])

        await a.request(Register("2", "phone", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual(sorted(n.get("name") or "" for n in pushed.children), ["laptop", "phone"])

        await a.request(Unregister("3", "laptop"))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual([n.get("name") for n in pushed.children], ["phone"])

        self.assertEqual(
            serialize(await b.request(Unwatch("u", "alice@example.com"))), b'<unwatched id="u"/>'
        )
        await a.request(Unregister("4", "phone"))
        await h.settle()
        self.assertEqual(b.take(), [])

    async def test_watch_expiry_on_the_clock(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        b = h.connect(h.identity("bob@example.com"))
        await a.request(Register("1", "laptop", CONTACT, expires=30))
        await b.request(Watch("w", "alice@example.com"))
        await wait_for(lambda: len(b.pushes()) == 1)
        h.clock.advance(29)
        await h.settle()
        self.assertEqual(b.pushes(), [])
        for _ in range(3):  # the timer runs at least every second
            h.clock.advance(1)
            await h.settle()
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual(pushed.children, [])
        self.assertEqual((await b.request(Lookup("l", "alice@example.com"))).findall("node"), [])

    async def test_watch_unknown_identity_then_registration(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("w", "carol@example.com"))
        self.assertEqual(b.pushes()[0].children, [])
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("1", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        self.assertEqual(len(b.pushes()[0].children), 1)

    async def test_second_watch_adds_nothing(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        for rid in ("w1", "w2"):
            self.assertEqual((await b.request(Watch(rid, "alice@example.com"))).tag, "watching")
            self.assertEqual(len(b.pushes()), 1)
        self.assertEqual(len(b.protocol.watches), 1)
        a = h.connect(h.identity("alice@example.com"))
        await a.request(Register("1", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        await h.settle()
        self.assertEqual(len(b.pushes()), 1)
        self.assertEqual((await b.request(Unwatch("u", "nobody@example.com"))).tag, "unwatched")

    async def test_watch_limit(self) -> None:
        h = await self.harness(max_watches=2)
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("1", "a@example.com"))
        await b.request(Watch("2", "c@example.com"))
        answer = await b.request(Watch("3", "d@example.com"))
        self.assertEqual(answer.get("reason"), "rate_limited")
        self.assertEqual((await b.request(Watch("4", "a@example.com"))).tag, "watching")
        await b.request(Unwatch("5", "a@example.com"))
        self.assertEqual((await b.request(Watch("6", "d@example.com"))).tag, "watching")

    async def test_watches_end_with_connection(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("1", "alice@example.com"))
        b.protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(h.factory.hub._watchers, {})

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

    # PKI over the protocol (§4) ----------------------------------------------------------------

    async def test_enroll(self) -> None:
        h = await self.harness()
        token = await h.authority.invite("alice@Example.com")
        self.assertGreaterEqual(len(token), 43)
        key = ec.generate_private_key(ec.SECP256R1())
        client = h.connect()
        issued = await client.request(Enroll("e", token, make_csr(key)))
        self.assertEqual(issued.tag, "issued")
        (leaf_der,) = [base64.b64decode(c.text) for c in issued.findall("cert")]
        leaf = x509.load_der_x509_certificate(leaf_der)
        self.assertEqual(rfc822_names(leaf), ("alice@Example.com",))
        self.assertEqual(leaf.issuer, h.ca.cert.subject)
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(ku.digital_signature)
        self.assertFalse(ku.key_encipherment)
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(eku), {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION}
        )
        self.assertFalse(leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        days = (leaf.not_valid_after_utc - h.now()).total_seconds() / 86400
        self.assertLess(abs(days - 365), 0.01)
        # Single use.
        again = await client.request(Enroll("e2", token, make_csr(key)))
        self.assertEqual(again.get("reason"), "invalid_token")
        # The new certificate works.
        identity = Identity(key, leaf, [h.ca.cert])
        self.assertEqual(
            (await h.connect(identity).request(Register("r", "n", CONTACT))).tag, "registered"
        )

    async def test_enroll_rsa_gets_key_encipherment(self) -> None:
        h = await self.harness()
        token = await h.authority.invite("alice@example.com")
        key = certs.key_for("rsa2048", "enroll")
        issued = await h.connect().request(Enroll("e", token, make_csr(key, ())))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        self.assertTrue(
            leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
        )

    async def test_enroll_errors(self) -> None:
        h = await self.harness()
        good = make_csr(ed25519.Ed25519PrivateKey.generate())
        client = h.connect()
        self.assertEqual(
            (await client.request(Enroll("1", "wrong", good))).get("reason"), "invalid_token"
        )
        expired = "expired-token-value"
        await h.store.add_token(token_hash(expired), "alice@example.com", h.now())
        self.assertEqual(
            (await client.request(Enroll("2", expired, good))).get("reason"), "invalid_token"
        )
        h.clock.advance(0)
        token = await h.authority.invite("alice@example.com", valid_days=1)
        h.clock.advance(86401)
        client = h.connect()  # the first one went idle meanwhile
        self.assertEqual(
            (await client.request(Enroll("3", token, good))).get("reason"), "invalid_token"
        )
        token = await h.authority.invite("alice@example.com")
        tampered = bytearray(good)
        tampered[-1] ^= 1
        bad_csrs = {
            "garbage": b"\x30\x03\x02\x01\x00",
            "bad signature": bytes(tampered),
            "P-521 key": make_csr(ec.generate_private_key(ec.SECP521R1())),
            "Ed448 key": make_csr(ed448.Ed448PrivateKey.generate()),
            "RSA-1024 key": make_csr(certs.key_for("rsa1024", "enroll")),
        }
        for i, (name, csr) in enumerate(bad_csrs.items()):
            answer = await client.request(Enroll(f"c{i}", token, csr))
            with self.subTest(name):
                self.assertEqual(answer.get("reason"), "bad_csr")
        # The refusals did not spend the token.
        self.assertEqual((await client.request(Enroll("ok", token, good))).tag, "issued")
        bad_b64 = el("enroll", [el("csr", text="not base64!")], id="b", token=token)
        self.assertEqual((await client.request(bad_b64)).get("reason"), "bad_request")
        no_token = el("enroll", [el("csr", text="AAAA")], id="t")
        self.assertEqual((await client.request(no_token)).get("reason"), "bad_request")

    async def test_renew(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        key = ed25519.Ed25519PrivateKey.generate()
        issued = await a.request(Renew("1", make_csr(key, ("bob@example.com",))))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        self.assertEqual(rfc822_names(leaf), ("alice@example.com",))
        self.assertEqual(
            leaf.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        )
        answer = await a.request(el("renew", id="2"))
        self.assertEqual(answer.get("reason"), "bad_request")

    async def test_self_revoke(self) -> None:
        h = await self.harness()
        alice = h.identity("alice@example.com", key=certs.new_key("ed25519"))
        a = h.connect(alice)
        await a.request(Register("1", "laptop", CONTACT))
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("w", "alice@example.com"))
        self.assertEqual(len(b.pushes()), 1)
        self.assertEqual(serialize(await a.request(Revoke("2"))), b'<revoked id="2"/>')
        self.assertEqual(
            (await a.request(Register("3", "laptop", CONTACT))).get("reason"), "unauthenticated"
        )
        self.assertEqual((await a.request(Ping("4"))).tag, "pong")  # anonymous still works
        await wait_for(lambda: len(b.read()) >= 1)
        self.assertEqual(b.pushes()[0].children, [])
        self.assertEqual(
            (await b.request(Lookup("l", "alice@example.com"))).get("reason"), "not_found"
        )
        crl = x509.load_der_x509_crl(
            base64.b64decode((await b.request(CRL("c"))).find("crl").text)  # type: ignore[union-attr]
        )
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(alice.leaf.serial_number))
        # A new connection with the same certificate is refused in the TLS handshake.
        from sixchat.errors import CertificateRevoked

        self.assertRaises(CertificateRevoked, h.authority.trust.validate, alice.chain_der, h.now())

    async def test_revocation_elsewhere_reaches_connections(self) -> None:
        """An administrator's revocation: identity and watches go at once (§7.7)."""
        h = await self.harness()
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        b2 = h.connect(bob)  # a second connection with the same certificate
        await b2.request(Ping("hello"))
        await b.request(Register("1", "laptop", CONTACT))
        await b.request(Watch("w", "carol@example.com"))
        b.pushes()
        await h.authority.revoke(bob.leaf.serial_number)
        await wait_for(lambda: b.protocol.peer is None and b2.protocol.peer is None)
        self.assertEqual(b.protocol.watches, {})
        self.assertEqual(
            (await b2.request(Lookup("l", "carol@example.com"))).get("reason"), "unauthenticated"
        )
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("2", "n", CONTACT))
        await h.settle()
        self.assertEqual(b.pushes(), [])

    async def test_revocation_keeps_watches_under_public_policy(self) -> None:
        h = await self.harness(lookup_policy="public")
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        await b.request(Watch("w", "carol@example.com"))
        b.pushes()
        await b.request(Revoke("r"))
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("2", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        self.assertEqual(len(b.pushes()), 1)

    async def test_revocation_from_another_process(self) -> None:
        """A second store on the same file stands in for C{sixchat pki revoke}."""
        h = await self.harness()
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        await b.request(Register("1", "laptop", CONTACT))
        admin = SQLiteStore(h.path, reactor)
        await admin.open()
        self.addCleanup(admin.close)
        await admin.revoke(bob.leaf.serial_number, h.ca.cert_der, h.now())
        # The change poll is on the real reactor (1 s); the connection then rechecks.
        await wait_for(lambda: b.protocol.peer is None, timeout=5)
        h.clock.advance(0)  # the registry then reissues its CRL
        await wait_for(
            lambda: (
                h.authority.crl is not None
                and h.authority.crl.get_revoked_certificate_by_serial_number(bob.leaf.serial_number)
                is not None
            )
        )

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

    async def test_crl(self) -> None:
        h = await self.harness()
        answer = await h.connect().request(CRL("c"))
        (crl_el,) = answer.findall("crl")
        crl = x509.load_der_x509_crl(base64.b64decode(crl_el.text))
        self.assertEqual(crl.issuer, h.ca.cert.subject)
        self.assertTrue(crl.is_signature_valid(h.ca.cert.public_key()))  # type: ignore[arg-type]
        assert crl.next_update_utc is not None
        self.assertLessEqual(crl.next_update_utc - crl.last_update_utc, timedelta(days=7))
        self.assertEqual(len(crl), 0)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        # Older than a day: reissued even without a revocation.
        h.clock.advance(86401)
        newer = x509.load_der_x509_crl(
            base64.b64decode((await h.connect().request(CRL("d"))).findall("crl")[0].text)
        )
        self.assertGreater(
            newer.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, number
        )


class AuthorityTests(TestCase):
    def test_check_csr(self) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        self.assertEqual(
            check_csr(make_csr(key)).public_numbers(), key.public_key().public_numbers()
        )
        self.assertEqual(self.assertRaises(IRPError, check_csr, b"").reason, "bad_csr")

    def test_tokens_stored_as_hashes(self) -> None:
        async def run() -> None:
            h = await Harness(self).start()
            token = await h.authority.invite("alice@example.com")
            self.assertRegex(token, r"\A[A-Za-z0-9_-]{43}\Z")  # 256 bits, URL-safe
            await h.store.close()
            with open(h.path, "rb") as f:
                data = f.read()
            for suffix in ("-wal",):
                if os.path.exists(h.path + suffix):
                    with open(h.path + suffix, "rb") as f:
                        data += f.read()
            self.assertNotIn(token.encode(), data)
            self.assertIn(token_hash(token), data)

        return defer.ensureDeferred(run())  # type: ignore[return-value]

    def test_intermediate_ca(self) -> None:
        """An intermediate CA: issued chains carry it; the anchor is the root."""
        root = certs.make_ca()
        inter = certs.make_intermediate(root)
        store = SQLiteStore(":memory:", reactor)
        authority = Authority(inter.key, inter.cert, store, chain=[root.cert])
        self.assertEqual(authority.anchors_der, [root.cert_der])
        self.assertEqual(authority.intermediates, [inter.cert_der])


# ---------------------------------------------------------------------------------------------
# Real TLS on loopback


class RawClient(protocol.Protocol):
    """A minimal IRP client over TLS: send elements, collect answers."""

    def __init__(self) -> None:
        self.reader = RecordReader()
        self.elements: list[Element] = []
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.reader.feed(data)
        while (record := self.reader.next_record(False)) is not None:
            self.elements.append(parse(record[2]))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)

    def send(self, item: Any) -> None:
        element = item if isinstance(item, Element) else item.to_element()
        self.transport.write(plain_record(serialize(element)))  # type: ignore[union-attr]

    async def request(self, item: Any, timeout: float = 10) -> Element:
        rid = item.get("id") if isinstance(item, Element) else item.id
        self.send(item)
        found: list[Element] = []

        def ready() -> bool:
            for e in self.elements:
                if e.get("id") == rid or (e.tag == "error" and e.get("id") is None):
                    self.elements.remove(e)
                    found.append(e)
                    return True
            if self.reason is not None:
                raise ConnectionError(self.reason.getErrorMessage())
            return False

        await wait_for(ready, timeout)
        return found[0]

    def close(self) -> defer.Deferred[Any]:
        if self.reason is None and self.transport is not None:
            self.transport.loseConnection()
        return self.lost


async def tls_connect(
    testcase: TestCase,
    port: int,
    anchor: Any,
    identity: Identity | None = None,
    host: str = "127.0.0.1",
) -> RawClient:
    options = client_options(host, [anchor], identity)
    tcp = endpoints.clientFromString(reactor, f"tcp:host={host}:port={port}")
    client = RawClient()
    await endpoints.connectProtocol(endpoints.wrapClientTLS(options, tcp), client)
    testcase.addCleanup(client.close)
    return client


class TLSRegistryTests(TestCase):
    """The registry over real TLS 1.3 on 127.0.0.1."""

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.ca = certs.make_ca()
        self.path = os.path.abspath(self.mktemp()) + ".sqlite"
        self.service = await self.start_service()

    async def start_service(
        self, config: RegistryConfig | None = None, collector: CollectorPolicy | None = None
    ) -> IRPServerService:
        store = SQLiteStore(self.path, reactor)
        authority = Authority(
            self.ca.key,
            self.ca.cert,
            store,
            now=lambda: datetime.fromtimestamp(reactor.seconds(), UTC),
        )
        service = IRPServerService(
            reactor,
            store,
            authority,
            server_identity(self.ca),
            "tcp:0:interface=127.0.0.1",
            config or RegistryConfig(allow_private_addresses=True),
            collector,
        )
        service.startService()
        self.addCleanup(service.stopService)
        await service._opened
        assert service.port is not None
        self.port = service.port.getHost().port
        return service

    async def connect(self, identity: Identity | None = None) -> RawClient:
        return await tls_connect(self, self.port, self.ca.anchor, identity)

    async def test_anonymous_ping_and_ca(self) -> None:
        client = await self.connect()
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        answer = await client.request(CA("2"))
        self.assertEqual(
            [base64.b64decode(c.text) for c in answer.findall("cert")], [self.ca.cert_der]
        )
        self.assertEqual(
            (await client.request(Lookup("3", "a@example.com"))).get("reason"), "unauthenticated"
        )

    async def test_client_certificate_identity(self) -> None:
        alice = certs.make_identity("alice@example.com", self.ca)
        a = await self.connect(alice)
        forged = Register("1", "laptop", CONTACT).to_element()
        forged.attrs["identity"] = "bob@example.com"
        self.assertEqual((await a.request(forged)).tag, "registered")
        b = await self.connect(certs.make_identity("bob@example.com", self.ca))
        record = await b.request(Lookup("2", "alice@example.com"))
        self.assertEqual(record.get("identity"), "alice@example.com")
        self.assertEqual(
            base64.b64decode(record.findall("node")[0].find("cert").text),  # type: ignore[union-attr]
            alice.leaf_der,
        )
        self.assertEqual(
            (await b.request(Lookup("3", "bob@example.com"))).get("reason"), "not_found"
        )

    async def test_enrol_then_register(self) -> None:
        token = await self.service.authority.invite("carol@example.com")
        key = ed25519.Ed25519PrivateKey.generate()
        anonymous = await self.connect()
        issued = await anonymous.request(Enroll("e", token, make_csr(key)))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        carol = Identity(key, leaf, [self.ca.cert])
        c = await self.connect(carol)
        self.assertEqual((await c.request(Register("r", "n", CONTACT))).tag, "registered")

    async def test_revoked_certificate_refused_in_handshake(self) -> None:
        alice = certs.make_identity("alice@example.com", self.ca, key=certs.new_key("ed25519"))
        a = await self.connect(alice)
        await a.request(Register("1", "laptop", CONTACT))
        self.assertEqual((await a.request(Revoke("2"))).tag, "revoked")
        self.assertEqual(
            (await a.request(Register("3", "laptop", CONTACT))).get("reason"), "unauthenticated"
        )
        again = await self.connect(alice)
        with self.assertRaises(ConnectionError) as caught:
            await again.request(Ping("p"))
        self.assertIn("certificate revoked", str(caught.exception))
        other = await self.connect(certs.make_identity("bob@example.com", self.ca))
        self.assertEqual(
            (await other.request(Lookup("4", "alice@example.com"))).get("reason"), "not_found"
        )

    async def test_unknown_ca_refused_in_handshake(self) -> None:
        stranger = certs.make_identity("eve@example.com", certs.make_ca(name="stranger CA"))
        client = await self.connect(stranger)
        with self.assertRaises(ConnectionError) as caught:
            await client.request(Ping("p"))
        self.assertIn("unknown ca", str(caught.exception))

    async def test_malformed_input_over_tls(self) -> None:
        client = await self.connect()
        client.transport.write(plain_record(b"<ping id='1'"))  # type: ignore[union-attr]
        await wait_for(lambda: bool(client.elements))
        (error,) = client.elements
        self.assertEqual(
            (error.tag, error.get("reason"), error.get("id")), ("error", "bad_request", None)
        )
        await client.lost

    async def test_closed_connection_needs_no_collector(self) -> None:
        """
        A closed connection is freed by reference counting alone, TLS wrapper included: the
        garbage-collection policy (sixchat.irp.server.gcpolicy) relies on it to run full
        collections rarely.
        """
        client = await self.connect(certs.make_identity("alice@example.com", self.ca))
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        (server,) = self.service.factory.connections
        freed = [weakref.ref(server), weakref.ref(server.transport)]  # type: ignore[arg-type]
        del server
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        await client.close()
        await wait_for(lambda: not self.service.factory.connections)
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual([ref() for ref in freed], [None, None])

    async def test_collector_policy_follows_the_service(self) -> None:
        fake = FakeGC((700, 10, 10))
        collector = CollectorPolicy(reactor, 3600, gc_module=fake)
        await self.service.stopService()
        service = await self.start_service(collector=collector)
        self.assertTrue(collector.running)
        # Thresholds at start; start-up state frozen once the registry is ready.
        self.assertEqual(fake.calls, ["set_threshold", "collect 2", "freeze"])
        client = await self.connect()
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        await client.close()
        await service.stopService()
        self.assertFalse(collector.running)
        self.assertEqual(fake.threshold, (700, 10, 10))
        self.assertEqual(fake.calls[-1], "unfreeze")

    async def test_persistence_across_restart(self) -> None:
        alice = certs.make_identity("alice@example.com", self.ca)
        bob = certs.make_identity("bob@example.com", self.ca, key=certs.new_key("ed25519"))
        a = await self.connect(alice)
        await a.request(Register("1", "laptop", CONTACT, expires=3600))
        b = await self.connect(bob)
        await b.request(Revoke("2"))
        token = await self.service.authority.invite("dave@example.com")
        await a.close()
        await b.close()
        await self.service.stopService()

        self.service = await self.start_service()
        a = await self.connect(alice)
        record = await a.request(Lookup("3", "alice@example.com"))
        self.assertEqual([n.get("name") for n in record.findall("node")], ["laptop"])
        crl = x509.load_der_x509_crl(
            base64.b64decode((await a.request(CRL("4"))).findall("crl")[0].text)
        )
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(bob.leaf.serial_number))
        again = await self.connect(bob)
        with self.assertRaises(ConnectionError):
            await again.request(Ping("p"))
        csr = make_csr(ed25519.Ed25519PrivateKey.generate())
        self.assertEqual((await a.request(Enroll("5", token, csr))).tag, "issued")


# ---------------------------------------------------------------------------------------------
# The edges: plugin, CLI, real twistd


class PluginTests(TestCase):
    def test_plugin_is_discovered(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("sixchat-irp", makers)
        self.assertIs(makers["sixchat-irp"].options, irp_tap.Options)

    def write_files(self) -> dict[str, str]:
        tmp = os.path.abspath(self.mktemp())
        ca_dir = os.path.join(tmp, "ca")
        pki.init_ca(ca_dir, "plugin test CA")
        key, cert = pki.load_ca(ca_dir)
        skey = certs.key_for("p256", "irp-server")
        server = pki.issue_server(key, cert, ["127.0.0.1"], skey.public_key())
        p12 = os.path.join(tmp, "irp.p12")
        pki.write_p12(p12, skey, server, [cert], b"secret")
        with open(os.path.join(tmp, "pw"), "w") as f:
            f.write("secret\n")
        return {"tmp": tmp, "ca": ca_dir, "p12": p12, "pw": os.path.join(tmp, "pw")}

    def assertUsage(self, args: list[str], *fragments: str) -> None:
        options = irp_tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, args)
        self.assertNotIn("\n", str(error))
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_one_line_errors(self) -> None:
        f = self.write_files()
        base = ["--ca-dir", f["ca"], "--password-file", f["pw"]]
        self.assertUsage(["--ca-dir", f["ca"]], "--cert is required")
        self.assertUsage(["--cert", f["p12"]], "--ca-dir is required")
        self.assertUsage(["--cert", "missing.p12", *base], "missing.p12 does not exist")
        self.assertUsage(["--cert", f["p12"], "--ca-dir", f["ca"]], "password")
        wrong = os.path.join(f["tmp"], "wrong")
        with open(wrong, "w") as fh:
            fh.write("nope\n")
        self.assertUsage(
            ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", wrong], "wrong password"
        )
        self.assertUsage(
            ["--cert", f["p12"], "--ca-dir", "nowhere", "--password-file", f["pw"]],
            "CA directory nowhere does not exist",
        )
        self.assertUsage(["--cert", f["p12"], *base, "--lookup-policy", "open"], "lookup-policy")
        self.assertUsage(
            ["--cert", f["p12"], *base, "--db", "/nonexistent/dir/x.sqlite"], "does not exist"
        )
        self.assertUsage(["--cert", f["p12"], *base, "--max-requests", "0"], "positive")

    def test_options_build_service(self) -> None:
        f = self.write_files()
        options = irp_tap.Options()
        db = os.path.join(f["tmp"], "r.sqlite")
        options.parseOptions(
            [
                "--cert",
                f["p12"],
                "--ca-dir",
                f["ca"],
                "--password-file",
                f["pw"],
                "--db",
                db,
                "--lookup-policy",
                "public",
                "--domain",
                "Example.com",
                "--allow-private-addresses",
                "--max-watches",
                "7",
            ]
        )
        service = irp_tap.makeService(options)
        assert isinstance(service, IRPServerService)
        assert isinstance(service.collector, CollectorPolicy)  # the default policy
        self.assertEqual(service.collector.interval, 10.0)
        self.assertFalse(service.collector.running)  # nothing changes before twistd starts it
        config = service.factory.config
        self.assertEqual(config.lookup_policy, "public")
        self.assertEqual(config.domains, frozenset({"example.com"}))
        self.assertTrue(config.allow_private_addresses)
        self.assertEqual(config.max_watches, 7)
        self.assertEqual(service.store.path, db)  # type: ignore[attr-defined]


    def test_gc_interval_option(self) -> None:
        f = self.write_files()
        base = ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", f["pw"]]
        base += ["--db", os.path.join(f["tmp"], "r.sqlite")]
        for value, expected in (("2.5", 2.5), ("0", None)):
            options = irp_tap.Options()
            options.parseOptions([*base, "--gc-interval", value])
            service = irp_tap.makeService(options)
            assert isinstance(service, IRPServerService)
            interval = service.collector.interval if service.collector is not None else None
            self.assertEqual(interval, expected)
        for value in ("-1", "soon", "nan", "inf"):
            self.assertUsage([*base, "--gc-interval", value], "--gc-interval")


class RealProcessTests(TestCase):
    """C{sixchat pki} and C{twistd -n sixchat-irp} as an administrator runs them."""

    timeout = 120

    async def cli(self, *args: str, ok: bool = True) -> tuple[str, str, int]:
        out, err, code = await run_cli(list(args), cwd=self.tmp)
        if ok:
            self.assertEqual(code, 0, err)
        return out, err, code

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)

    async def test_registry_process(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        out, _err, _code = await self.cli(
            "pki", "issue-server", "127.0.0.1", "::1", "localhost", "--ca", "ca", "--out", "irp.p12"
        )
        self.assertIn("127.0.0.1, ::1, localhost", out)
        server = load_identity(os.path.join(self.tmp, "irp.p12"), server=True)
        eku = server.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        san = server.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"]
        )

        registry = Registry(
            self.tmp,
            [
                "--cert",
                "irp.p12",
                "--ca-dir",
                "ca",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--db",
                "irp.sqlite",
            ],
        )
        self.addCleanup(registry.stop)
        port = await registry.start()
        with open(os.path.join(self.tmp, "ca", "ca.pem"), "rb") as f:
            anchor = x509.load_pem_x509_certificate(f.read())
        client = await tls_connect(self, port, anchor)
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        answer = await client.request(CA("2"))
        self.assertEqual(
            [base64.b64decode(c.text) for c in answer.findall("cert")],
            [anchor.public_bytes(serialization.Encoding.DER)],
        )

        # An invitation made by the CLI while the registry runs, used over the network.
        out, err, _code = await self.cli("pki", "invite", "alice@example.com", "--db", "irp.sqlite")
        token = out.strip()
        self.assertRegex(out, r"\A[A-Za-z0-9_-]{43}\n\Z")
        self.assertEqual(err, "")
        key = ed25519.Ed25519PrivateKey.generate()
        issued = await client.request(Enroll("3", token, make_csr(key)))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        alice = Identity(key, leaf, [anchor])
        a = await tls_connect(self, port, anchor, alice)
        self.assertEqual((await a.request(Register("4", "n", CONTACT))).tag, "registered")
        loopback = await a.request(Register("5", "n", [Contact("127.0.0.1", 4605)]))
        self.assertEqual(loopback.get("reason"), "bad_request")  # not allowed by default
        pem = os.path.join(self.tmp, "alice.pem")
        with open(pem, "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))

        # An administrator's revocation from another process reaches the connection.
        out, _err, _code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--cert", pem
        )
        self.assertIn(f"revoked certificate serial {leaf.serial_number:x} (alice@example.com)", out)
        for _ in range(100):
            answer = await a.request(Unregister(f"u{_}", "n"))
            if answer.get("reason") == "unauthenticated":
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("revocation did not reach the connection:\n" + registry.log)
        # and the CRL the registry then publishes lists it
        for _ in range(50):
            crl = x509.load_der_x509_crl(
                base64.b64decode((await client.request(CRL(f"c{_}"))).findall("crl")[0].text)
            )
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("CRL does not list the revoked certificate")
        self.assertIn("registered alice@example.com node n", registry.log)
        self.assertIn("revoked", registry.log)
        self.assertNotIn(token, registry.log)
        await registry.stop()

    async def test_startup_errors_are_one_line(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        await self.cli("pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12")
        _out, err, code = await run_twistd(
            ["sixchat-irp", "--cert", "missing.p12", "--ca-dir", "ca"], self.tmp
        )
        self.assertNotEqual(code, 0)
        self.assertIn("missing.p12 does not exist", _out + err)
        self.assertNotIn("Traceback", _out + err)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        self.addCleanup(sock.close)
        busy = sock.getsockname()[1]
        out, err, code = await run_twistd(
            [
                "sixchat-irp",
                "--cert",
                "irp.p12",
                "--ca-dir",
                "ca",
                "--listen",
                f"tcp:{busy}:interface=127.0.0.1",
                "--db",
                "irp.sqlite",
            ],
            self.tmp,
        )
        self.assertNotEqual(code, 0)
        self.assertIn("cannot listen on", out + err)
        self.assertNotIn("Traceback", out + err)

    async def test_cli_errors(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        _out, err, code = await self.cli(
            "pki", "invite", "alice@example.com", "--db", "missing.sqlite", ok=False
        )
        self.assertEqual(code, 1)
        self.assertIn("no registry database at missing.sqlite", err)
        _out, err, code = await self.cli("pki", "invite", "not-an-identity", "--db", "x", ok=False)
        self.assertEqual(code, 2)
        _out, err, code = await self.cli("pki", "revoke", "--db", "x", "--ca", "ca", ok=False)
        self.assertEqual(code, 2)
        _out, err, code = await self.cli(
            "pki", "issue-server", "not a name!", "--ca", "ca", "--out", "s.p12", ok=False
        )
        self.assertEqual(code, 2)
        # a certificate from another CA
        other = certs.make_identity("eve@example.com", certs.make_ca(name="other"))
        path = os.path.join(self.tmp, "eve.pem")
        with open(path, "wb") as f:
            f.write(other.leaf.public_bytes(serialization.Encoding.PEM))
        store = SQLiteStore(os.path.join(self.tmp, "irp.sqlite"), reactor)
        await store.open()
        await store.close()
        _out, err, code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--cert", path, ok=False
        )
        self.assertEqual(code, 1)
        self.assertIn("was not issued by the CA", err)
        out, err, _code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--serial", "0A:1b"
        )
        self.assertIn("revoked certificate serial a1b", out)
        store = SQLiteStore(os.path.join(self.tmp, "irp.sqlite"), reactor)
        await store.open()
        self.addCleanup(store.close)
        ca_cert = pki.load_ca_cert(os.path.join(self.tmp, "ca"))
        self.assertTrue(
            await store.is_revoked(0xA1B, ca_cert.public_bytes(serialization.Encoding.DER))
        )
