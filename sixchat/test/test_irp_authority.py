"""
Tests of L{sixchat.irp.server.authority}: enrolment, renewal, revocation and CRLs through
the registry's requests, and the authority's own rules.
"""

from __future__ import annotations

import base64
import os
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from sixchat.identity import Identity, rfc822_names
from sixchat.irp.messages import (
    CRL,
    Enroll,
    IRPError,
    Lookup,
    Ping,
    Register,
    Renew,
    Revoke,
    Watch,
)
from sixchat.irp.server.authority import Authority, check_csr, token_hash
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.test import certs
from sixchat.test.irp_harness import (
    CONTACT,
    Harness,
    RequestTestCase,
    el,
    make_csr,
)
from sixchat.test.test_irp_store import wait_for
from sixchat.xmlcodec import serialize


class AuthorityRequestTests(RequestTestCase):
    """The CA requests of irp-1 without TLS."""

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

    async def test_enroll_checks_the_expected_identity_before_spending_the_token(self) -> None:
        """
        An C{enroll} naming another identity than the invitation's is refused (forbidden,
        naming both) and leaves the token usable; the right name then enrols with it.
        """
        h = await self.harness()
        token = await h.authority.invite("gina@example.com")
        key = ed25519.Ed25519PrivateKey.generate()
        client = h.connect()
        typo = await client.request(Enroll("1", token, make_csr(key), "gina@exmaple.com"))
        self.assertEqual((typo.tag, typo.get("reason")), ("error", "forbidden"))
        self.assertIn("gina@example.com", typo.text)
        self.assertIn("not gina@exmaple.com", typo.text)
        # A wrong token with a name says nothing about any invitation.
        wrong = await client.request(Enroll("2", "no-such-token", make_csr(key), "gina@x.org"))
        self.assertEqual(wrong.get("reason"), "invalid_token")
        self.assertNotIn("gina@example.com", wrong.text or "")
        # Identities compare as identities (domain case-insensitive), and the token still works.
        issued = await client.request(Enroll("3", token, make_csr(key), "gina@EXAMPLE.com"))
        self.assertEqual(issued.tag, "issued")
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        self.assertEqual(rfc822_names(leaf), ("gina@example.com",))
        # Now spent: the expected name does not revive it.
        again = await client.request(Enroll("4", token, make_csr(key), "gina@example.com"))
        self.assertEqual(again.get("reason"), "invalid_token")
        # A malformed expected identity is a bad request.
        token = await h.authority.invite("hal@example.com")
        bad = el("enroll", [el("csr", text="AAAA")], id="5", token=token, identity="not-one")
        self.assertEqual((await client.request(bad)).get("reason"), "bad_request")
        self.assertEqual((await client.request(Enroll("6", token, make_csr(key)))).tag, "issued")

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


class NewTokenTests(TestCase):
    def test_a_token_never_begins_with_a_dash(self) -> None:
        # `sixchat enroll … --token -x…` reads the token as an option; one draw in 64 began
        # with a dash.
        import secrets

        from sixchat.irp.server import authority

        draws = iter(["-" + "a" * 42, "-" + "b" * 42, "c" * 43])
        self.patch(secrets, "token_urlsafe", lambda n: next(draws))
        self.assertEqual(authority.new_token(), "c" * 43)

    def test_tokens_are_url_safe_and_carry_256_bits(self) -> None:
        from sixchat.irp.server import authority

        tokens = {authority.new_token() for _ in range(2000)}
        self.assertEqual(len(tokens), 2000)
        for token in tokens:
            self.assertEqual(len(token), 43)
            self.assertFalse(token.startswith("-"))
            self.assertRegex(token, r"^[A-Za-z0-9_-]+$")
