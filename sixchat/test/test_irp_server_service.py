"""
Tests of L{sixchat.irp.server.service}: the registry service over real TLS 1.3 on
127.0.0.1 (anonymous requests, enrolment, connections freed, the collector policy,
persistence across a restart).
"""

from __future__ import annotations

import base64
import gc
import weakref

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import reactor, task

from sixchat.identity import Identity
from sixchat.irp.messages import (
    CA,
    CRL,
    Enroll,
    Lookup,
    Ping,
    Register,
    Revoke,
)
from sixchat.irp.server.gcpolicy import CollectorPolicy
from sixchat.record import plain_record
from sixchat.test import certs
from sixchat.test.irp_harness import (
    CONTACT,
    RegistryServiceTestCase,
    make_csr,
)
from sixchat.test.test_irp_gcpolicy import FakeGC
from sixchat.test.test_irp_store import wait_for


class TLSRegistryTests(RegistryServiceTestCase):
    """The registry over real TLS 1.3 on 127.0.0.1."""

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

    async def test_enrol_then_register(self) -> None:
        token = await self.service.authority.invite("carol@example.com")
        key = ed25519.Ed25519PrivateKey.generate()
        anonymous = await self.connect()
        issued = await anonymous.request(Enroll("e", token, make_csr(key)))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        carol = Identity(key, leaf, [self.ca.cert])
        c = await self.connect(carol)
        self.assertEqual((await c.request(Register("r", "n", CONTACT))).tag, "registered")

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
