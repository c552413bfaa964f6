"""
Shared test harness of the registry tests: L{Harness} (a registry factory over a SQLite
file, a test CA and a L{task.Clock}) with string-transport L{Client}s, and L{tls_connect} /
L{RawClient} for the registry over real TLS.

The store is always the real L{SQLiteStore}: its work runs in its thread and comes back
through the real reactor, so the tests wait for answers with L{wait_for} while every timer
of the registry runs on the L{task.Clock}.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sixchat import pki
from sixchat.identity import Identity
from sixchat.irp.messages import (
    Contact,
)
from sixchat.irp.server import IRPServerFactory, IRPServerService, RegistryConfig
from sixchat.irp.server.authority import Authority
from sixchat.irp.server.gcpolicy import CollectorPolicy
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.irp.tls import client_options
from sixchat.record import RecordReader, plain_record
from sixchat.test import certs
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


class RequestTestCase(TestCase):
    """Tests of a registry over a string transport (L{Harness})."""

    async def harness(self, **config: Any) -> Harness:
        config.setdefault("allow_private_addresses", True)
        return await Harness(self, RegistryConfig(**config)).start()


class RegistryServiceTestCase(TestCase):
    """Tests of the registry service over real TLS on 127.0.0.1."""

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
