"""
Tests of L{sixchat.irp.server.tls}: client certificates over real TLS 1.3 on 127.0.0.1
(the identity they carry, refusals in the handshake with the alert irp-1 §7.1 names).
"""

from __future__ import annotations

import base64

from sixchat.irp.messages import (
    Lookup,
    Ping,
    Register,
    Revoke,
)
from sixchat.test import certs
from sixchat.test.irp_harness import (
    CONTACT,
    RegistryServiceTestCase,
)


class ServerTLSTests(RegistryServiceTestCase):
    """Client certificates over real TLS 1.3 on 127.0.0.1."""

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
