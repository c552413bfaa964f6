"""
Tests for L{sixchat.trust.chain} and L{sixchat.trust.profile}: peer chain validation (spec
§4, §11.7). Revocation (§11.8) is in test_trust_crl, loading files in test_trust_files, pins
(§9.3, §11.15) in test_trust_pins.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat import pki
from sixchat.errors import BadCertificate, CertificateExpired, UnknownCA
from sixchat.identity import Identity
from sixchat.test import certs
from sixchat.trust import PeerCertificate, TrustStore
from sixchat.trust.profile import check_constrained_mailboxes

VECTORS = os.path.join(os.path.dirname(__file__), "vectors")
DAY = datetime.timedelta(days=1)

_RSA_SIG_OIDS = {
    "sha256": bytes.fromhex("06092a864886f70d01010b"),
    "sha1": bytes.fromhex("06092a864886f70d010105"),
    "md5": bytes.fromhex("06092a864886f70d010104"),
}


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def resign_rsa(cert: x509.Certificate, issuer_key, digest: str) -> x509.Certificate:
    """
    C{cert} (signed with sha256WithRSAEncryption) re-signed with a weak hash.
    C{cryptography} refuses to sign with SHA-1 or MD5, so the signature algorithm identifier
    is swapped in the DER by hand and the TBS signed with the raw primitive.
    """
    tbs = cert.tbs_certificate_bytes
    old, new = _RSA_SIG_OIDS["sha256"], _RSA_SIG_OIDS[digest]
    assert tbs.count(old) == 1
    tbs = tbs.replace(old, new)
    algorithm = {"sha1": hashes.SHA1(), "md5": hashes.MD5()}[digest]
    signature = issuer_key.sign(tbs, padding.PKCS1v15(), algorithm)
    alg_id = b"\x30" + _der_len(len(new) + 2) + new + b"\x05\x00"
    bits = b"\x03" + _der_len(len(signature) + 1) + b"\x00" + signature
    body = tbs + alg_id + bits
    return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class ValidChainTests(SynchronousTestCase):
    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.warnings: list[str] = []
        self.trust = certs.trust_for(self.ca, warn=self.warnings.append)

    def test_direct_leaf(self):
        alice = certs.make_identity("alice@example.com", self.ca)
        peer = self.trust.validate(alice.chain_der, self.now)
        self.assertIsInstance(peer, PeerCertificate)
        self.assertEqual(peer.names, ("alice@example.com",))
        self.assertEqual(peer.alg, "ed25519")
        self.assertEqual(peer.leaf_der, alice.leaf_der)
        self.assertEqual(peer.leaf, alice.leaf)
        self.assertEqual(peer.spki_sha256, alice.spki_sha256)
        self.assertEqual(peer.fingerprint(), alice.spki_sha256.hex())
        self.assertRegex(peer.fingerprint(), r"\A[0-9a-f]{64}\Z")
        self.assertEqual(peer.leaf_sha256, hashlib.sha256(alice.leaf_der).digest())
        self.assertEqual(peer.chain, (alice.leaf, self.ca.cert))
        self.assertEqual(
            peer.public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            alice.private_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
        )
        self.assertTrue(peer.proves("alice@EXAMPLE.com"))
        self.assertFalse(peer.proves("Alice@example.com"))

    def test_every_leaf_key_type(self):
        expected = {
            "ed25519": "ed25519",
            "p256": "ecdsa-secp256r1-sha256",
            "p384": "ecdsa-secp384r1-sha384",
            "rsa2048": "rsa-pss-sha256",
        }
        for key_type, alg in expected.items():
            ident = certs.make_identity(f"{key_type}@example.com", self.ca, key_type)
            self.assertEqual(self.trust.validate(ident.chain_der, self.now).alg, alg)

    def test_every_ca_key_type(self):
        for key_type in ("p256", "p384", "rsa2048", "p521", "ed448"):
            ca = certs.make_ca(key_type)
            ident = certs.make_identity("alice@example.com", ca)
            peer = certs.trust_for(ca).validate(ident.chain_der, self.now)
            self.assertEqual(peer.chain[-1], ca.cert)

    def test_several_names(self):
        ident = certs.make_identity(["bob@example.com", "robert@example.org"], self.ca)
        peer = self.trust.validate(ident.chain_der, self.now)
        self.assertEqual(peer.names, ("bob@example.com", "robert@example.org"))
        self.assertTrue(peer.proves("robert@EXAMPLE.org"))

    def test_intermediate(self):
        inter = certs.make_intermediate(self.ca)
        ident = certs.make_identity("alice@example.com", inter, "p256")
        peer = self.trust.validate(ident.chain_der, self.now)
        self.assertEqual(peer.chain, (ident.leaf, inter.cert, self.ca.cert))

    def test_anchor_sent_anyway(self):
        """§7.4: an anchor may be sent; it counts toward eight but does not hurt."""
        ident = certs.make_identity("alice@example.com", self.ca)
        peer = self.trust.validate([*ident.chain_der, self.ca.cert_der], self.now)
        self.assertEqual(len(peer.chain), 2)

    def test_intermediates_in_any_order(self):
        mid = certs.make_intermediate(self.ca, "mid", path_length=1)
        low = certs.make_intermediate(mid, "low")
        ident = certs.make_identity("alice@example.com", low)
        leaf, *intermediates = ident.chain_der
        peer = self.trust.validate([leaf, *reversed(intermediates)], self.now)
        self.assertEqual(len(peer.chain), 4)

    def test_eight_certificates(self):
        """Exactly eight certificates is still fine."""
        ca = certs.make_ca(name="deep root")
        for i in range(7):
            ca = certs.make_intermediate(ca, f"level {i}", path_length=None)
        ident = certs.make_identity("alice@example.com", ca)
        self.assertEqual(len(ident.chain_der), 8)
        peer = certs.trust_for(ca).validate(ident.chain_der, self.now)
        self.assertEqual(len(peer.chain), 9)

    def test_intermediate_as_anchor(self):
        """Any configured certificate is an anchor, self-signed or not (RFC 5280 §6.1)."""
        inter = certs.make_intermediate(self.ca)
        ident = certs.make_identity("alice@example.com", inter)
        peer = TrustStore([inter.cert]).validate(ident.chain_der[:1], self.now)
        self.assertEqual(peer.chain, (ident.leaf, inter.cert))

    def test_self_signed_leaf_that_is_an_anchor(self):
        ident = _self_signed("carol@example.com")
        peer = TrustStore([ident.leaf]).validate(ident.chain_der, self.now)
        self.assertEqual(peer.chain, (ident.leaf,))

    def test_extended_key_usages_accepted(self):
        for eku in (("clientAuth",), ("emailProtection",), None, ("serverAuth", "clientAuth")):
            ident = certs.make_identity("alice@example.com", self.ca, eku=eku)
            self.trust.validate(ident.chain_der, self.now)

    def test_no_key_usage(self):
        ident = certs.make_identity("alice@example.com", self.ca, key_usage=[])
        self.trust.validate(ident.chain_der, self.now)

    def test_key_encipherment(self):
        ident = certs.make_identity("rsa@example.com", self.ca, "rsa2048")
        self.trust.validate(ident.chain_der, self.now, require_key_encipherment=True)

    def test_naive_time_is_utc(self):
        ident = certs.make_identity(
            "alice@example.com", self.ca,
            not_before=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
            not_after=datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC),
        )
        self.trust.validate(ident.chain_der, datetime.datetime(2030, 1, 1, 12))
        self.assertRaises(
            CertificateExpired,
            self.trust.validate, ident.chain_der, datetime.datetime(2030, 1, 2, 0, 1),
        )

    def test_aware_time_in_another_zone(self):
        ident = certs.make_identity(
            "alice@example.com", self.ca,
            not_before=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
            not_after=datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC),
        )
        plus5 = datetime.timezone(datetime.timedelta(hours=5))
        # 03:00+05:00 is 22:00Z the day before: not yet valid.
        self.assertRaises(
            CertificateExpired,
            self.trust.validate, ident.chain_der, datetime.datetime(2030, 1, 1, 3, tzinfo=plus5),
        )


def _self_signed(name: str, key_type: str = "ed25519") -> Identity:
    key = certs.key_for(key_type, "self:" + name)
    _, issuer = pki.create_ca(name, key=key)
    leaf = pki.issue_leaf(key, issuer, [name], key.public_key())
    assert leaf.issuer == leaf.subject
    return Identity(key, leaf)


class RefusedChainTests(SynchronousTestCase):
    """Every way §4 and §11.7 make a chain fail, and the alert each gets."""

    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.trust = certs.trust_for(self.ca)

    def refused(self, alert, chain_der, *, trust=None, contains="", **kwargs):
        error = self.assertRaises(
            alert, (trust or self.trust).validate, chain_der, self.now, **kwargs
        )
        self.assertIs(type(error), alert)
        self.assertIn(contains, error.text)
        return error

    def identity(self, **kwargs):
        return certs.make_identity("alice@example.com", self.ca, **kwargs)

    # -- structure

    def test_no_certificate(self):
        self.refused(BadCertificate, [], contains="no certificate")

    def test_unparsable(self):
        self.refused(BadCertificate, [b"\x30\x03\x02\x01\x01"], contains="cannot be parsed")

    def test_unparsable_intermediate(self):
        ident = self.identity()
        self.refused(BadCertificate, [ident.leaf_der, b"garbage"], contains="certificate 2")

    def test_more_than_eight(self):
        ident = self.identity()
        self.refused(BadCertificate, [ident.leaf_der] * 9, contains="9 certificates")

    def test_chain_deeper_than_eight(self):
        """A genuine path with eight intermediates needs nine certificates: refused."""
        ca = certs.make_ca(name="very deep root")
        for i in range(8):
            ca = certs.make_intermediate(ca, f"deep level {i}", path_length=None)
        ident = certs.make_identity("alice@example.com", ca, check=False)
        self.assertEqual(len(ident.chain_der), 9)
        self.refused(BadCertificate, ident.chain_der, trust=certs.trust_for(ca))

    # -- trust

    def test_unknown_root(self):
        other = certs.make_ca(name="Some Other CA")
        ident = certs.make_identity("alice@example.com", other)
        self.refused(UnknownCA, ident.chain_der, contains="depth 0")

    def test_unknown_root_sent_along(self):
        other = certs.make_ca(name="Some Other CA")
        ident = certs.make_identity("alice@example.com", other)
        self.refused(UnknownCA, [*ident.chain_der, other.cert_der], contains="self-signed")

    def test_same_name_other_key(self):
        """A root with our anchor's name but another key is still unknown."""
        impostor = certs.make_ca(name=self.ca.cert.subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME)[0].value, key_type="p256")
        ident = certs.make_identity("alice@example.com", impostor)
        self.refused(UnknownCA, ident.chain_der)

    def test_missing_intermediate(self):
        inter = certs.make_intermediate(self.ca)
        ident = certs.make_identity("alice@example.com", inter)
        self.refused(UnknownCA, ident.chain_der[:1], contains="local issuer")

    def test_self_signed_leaf(self):
        ident = _self_signed("mallory@example.com")
        self.refused(UnknownCA, ident.chain_der, contains="self-signed")

    def test_bad_signature(self):
        ident = self.identity()
        tampered = bytearray(ident.leaf_der)
        tampered[-1] ^= 0x01
        self.refused(BadCertificate, [bytes(tampered)], contains="signature")

    def test_ca_without_ca_flag(self):
        not_ca = certs.make_intermediate(self.ca, "not a CA", ca=False)
        ident = certs.make_identity("alice@example.com", not_ca)
        self.refused(BadCertificate, ident.chain_der, contains="depth 1")

    def test_path_length_exceeded(self):
        limited = certs.make_intermediate(self.ca, "pathlen 0")  # path_length=0
        below = certs.make_intermediate(limited, "below pathlen 0")
        ident = certs.make_identity("alice@example.com", below)
        self.refused(BadCertificate, ident.chain_der, contains="path length")

    def test_unknown_critical_extension(self):
        unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
        ident = self.identity(extra_extensions=[(unknown, True)])
        self.refused(BadCertificate, ident.chain_der, contains="critical extension")

    def test_unknown_noncritical_extension(self):
        unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
        ident = self.identity(extra_extensions=[(unknown, False)])
        self.trust.validate(ident.chain_der, self.now)

    # -- time

    def test_expired_leaf(self):
        ident = self.identity(not_before=self.now - 10 * DAY, not_after=self.now - DAY)
        self.refused(CertificateExpired, ident.chain_der, contains="expired")

    def test_leaf_not_yet_valid(self):
        ident = self.identity(not_before=self.now + DAY, not_after=self.now + 10 * DAY)
        self.refused(CertificateExpired, ident.chain_der, contains="not yet valid")

    def test_expired_intermediate(self):
        inter = certs.make_intermediate(
            self.ca, "expired intermediate",
            not_before=self.now - 10 * DAY, not_after=self.now - DAY,
        )
        ident = certs.make_identity("alice@example.com", inter)
        self.refused(CertificateExpired, ident.chain_der, contains="depth 1")

    def test_expired_anchor(self):
        ident = self.identity()
        later = self.ca.cert.not_valid_after_utc + DAY
        self.assertRaises(CertificateExpired, self.trust.validate, ident.chain_der, later)

    # -- chain strength (§11.7)

    def test_rsa_1024_leaf(self):
        ident = self.identity(key=certs.key_for("rsa1024"), check=False)
        self.refused(BadCertificate, ident.chain_der, contains="1024-bit RSA")

    def test_rsa_1024_intermediate(self):
        inter = certs.make_intermediate(self.ca, "weak intermediate", key_type="rsa1024")
        ident = certs.make_identity("alice@example.com", inter)
        self.refused(BadCertificate, ident.chain_der, contains="depth 1 has a 1024-bit")

    def test_rsa_1024_anchor(self):
        weak = certs.make_ca("rsa1024")
        ident = certs.make_identity("alice@example.com", weak)
        self.refused(BadCertificate, ident.chain_der, trust=certs.trust_for(weak),
                     contains="depth 1 has a 1024-bit")

    def test_sha1_intermediate(self):
        """OpenSSL 4 accepts this on its own; §11.7 does not."""
        root = certs.make_ca("rsa2048")
        inter = certs.make_intermediate(root, "sha1 intermediate")
        weak = resign_rsa(inter.cert, root.key, "sha1")
        self.assertEqual(weak.signature_hash_algorithm.name, "sha1")
        ident = certs.make_identity("alice@example.com", inter)
        error = self.refused(
            BadCertificate, [ident.leaf_der, der(weak)], trust=certs.trust_for(root),
            contains="depth 1 is signed with SHA1",
        )
        self.assertNotIn("OpenSSL", error.text)

    def test_md5_intermediate(self):
        root = certs.make_ca("rsa2048")
        inter = certs.make_intermediate(root, "md5 intermediate")
        weak = resign_rsa(inter.cert, root.key, "md5")
        ident = certs.make_identity("alice@example.com", inter)
        self.refused(BadCertificate, [ident.leaf_der, der(weak)], trust=certs.trust_for(root),
                     contains="MD5")

    def test_sha1_leaf(self):
        root = certs.make_ca("rsa2048")
        ident = certs.make_identity("alice@example.com", root)
        weak = resign_rsa(ident.leaf, root.key, "sha1")
        self.refused(BadCertificate, [der(weak)], trust=certs.trust_for(root),
                     contains="depth 0 is signed with SHA1")

    def test_sha1_self_signed_anchor(self):
        """An anchor's signature on itself is exempt (§11.7)."""
        root = certs.make_ca("rsa2048", name="sha1 root")
        weak_root = resign_rsa(root.cert, root.key, "sha1")
        ident = certs.make_identity("alice@example.com", root)
        peer = TrustStore([weak_root]).validate(ident.chain_der, self.now)
        self.assertEqual(peer.chain[-1].signature_hash_algorithm.name, "sha1")

    # -- leaf profile (§4)

    def test_p521_leaf(self):
        ident = self.identity(key=certs.key_for("p521"), check=False)
        self.refused(BadCertificate, ident.chain_der, contains="secp521r1")

    def test_ed448_leaf(self):
        ident = self.identity(key=certs.key_for("ed448"), check=False)
        self.refused(BadCertificate, ident.chain_der, contains="Ed448")

    def test_no_rfc822_name(self):
        ident = self.identity(no_san=True, check=False)
        self.refused(BadCertificate, ident.chain_der, contains="rfc822Name")

    def test_only_unusable_rfc822_name(self):
        ident = certs.make_identity(["example.com"], self.ca, check=False)
        self.refused(BadCertificate, ident.chain_der, contains="rfc822Name")

    def test_other_san_types_only(self):
        leaf = pki.issue_leaf(
            self.ca.key, self.ca.cert, [], certs.key_for("ed25519").public_key(), no_san=True,
            subject=x509.Name([]),
            extra_extensions=[(x509.SubjectAlternativeName([x509.DNSName("example.com")]), True)],
        )
        self.refused(BadCertificate, [der(leaf)], contains="rfc822Name")

    def test_wrong_eku(self):
        ident = self.identity(eku=("serverAuth", "codeSigning"))
        self.refused(BadCertificate, ident.chain_der, contains="extendedKeyUsage")

    def test_any_eku_only(self):
        ident = self.identity(eku=("anyExtendedKeyUsage",))
        self.refused(BadCertificate, ident.chain_der, contains="extendedKeyUsage")

    def test_key_usage_without_digital_signature(self):
        ident = self.identity(key_usage=["key_encipherment", "key_agreement"])
        self.refused(BadCertificate, ident.chain_der, contains="digitalSignature")

    def test_key_usage_without_key_encipherment(self):
        ident = certs.make_identity(
            "rsa@example.com", self.ca, "rsa2048", key_encipherment=False
        )
        self.trust.validate(ident.chain_der, self.now)
        self.refused(BadCertificate, ident.chain_der, require_key_encipherment=True,
                     contains="keyEncipherment")

    def test_leaf_is_ca(self):
        ident = self.identity(ca=True)
        self.refused(BadCertificate, ident.chain_der, contains="cA=TRUE")

    def test_trust_checked_before_profile(self):
        """An untrusted chain is unknown_ca even if the leaf is also malformed."""
        other = certs.make_ca(name="Some Other CA")
        ident = certs.make_identity("alice@example.com", other, no_san=True, check=False)
        self.refused(UnknownCA, ident.chain_der)


class VectorTests(SynchronousTestCase):
    """The certificates of the handshake vector validate under its anchor."""

    def setUp(self):
        with open(os.path.join(VECTORS, "handshake-ed25519-x25519.json")) as f:
            self.vector = json.load(f)
        anchor = x509.load_pem_x509_certificate(self.vector["trust_anchor_pem"].encode())
        self.trust = TrustStore([anchor])
        self.when = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)

    def identity(self, role):
        side = self.vector[role]
        chain = x509.load_pem_x509_certificates(side["cert_pem"].encode())
        key = serialization.load_pem_private_key(side["key_pem"].encode(), None)
        return Identity(key, chain[0], chain[1:])

    def test_alice(self):
        alice = self.identity("initiator")
        self.assertEqual(self.vector["validation_time"], "2026-11-26T00:00:00Z")
        peer = self.trust.validate(alice.chain_der, self.when)
        self.assertEqual(peer.names, (self.vector["initiator"]["identity"],))
        self.assertEqual(peer.alg, "ed25519")
        self.assertEqual(peer.spki_sha256, alice.spki_sha256)

    def test_bob(self):
        bob = self.identity("responder")
        peer = self.trust.validate(bob.chain_der, self.when)
        self.assertEqual(peer.names, ("bob@example.com",))

    def test_before_the_root(self):
        alice = self.identity("initiator")
        self.assertRaises(
            CertificateExpired, self.trust.validate, alice.chain_der,
            datetime.datetime(2025, 12, 31, tzinfo=datetime.UTC),
        )


def _with_extra(template: x509.Certificate, issuer_key, extra) -> x509.Certificate:
    """C{template} re-signed by C{issuer_key} with C{extra} (extension, critical) added."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(template.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
    )
    for ext in template.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    for value, critical in extra:
        builder = builder.add_extension(value, critical)
    return builder.sign(issuer_key, None)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class PathBuildingTests(SynchronousTestCase):
    """
    Alternative issuers (two certificates of one CA: same subject and key): the result does
    not depend on the order the intermediates come in (OpenSSL alone takes the first that
    fits and never tries the other).
    """

    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        key = certs.key_for("ed25519", "int:alternatives")
        _, self.plain = pki.create_intermediate(self.ca.key, self.ca.cert, "alt CA", key=key)
        constraint = x509.NameConstraints(
            permitted_subtrees=[x509.RFC822Name("other.org")], excluded_subtrees=None
        )
        self.constrained = _with_extra(self.plain, self.ca.key, [(constraint, True)])
        self.leaf = pki.issue_leaf(key, self.plain, ["alice@example.com"],
                                   certs.key_for("ed25519", "leaf:alt").public_key())  # fmt: skip
        self.trust = TrustStore([self.ca.anchor], chain_cache=0)

    def test_either_order(self):
        for order in ([self.constrained, self.plain], [self.plain, self.constrained]):
            chain = [_der(self.leaf), *(_der(c) for c in order)]
            peer = self.trust.validate(chain, self.now)
            self.assertEqual(peer.names, ("alice@example.com",))
            self.assertEqual(_der(peer.chain[1]), _der(self.plain))

    def test_only_the_bad_alternative(self):
        chain = [_der(self.leaf), _der(self.constrained)]
        error = self.assertRaises(BadCertificate, self.trust.validate, chain, self.now)
        self.assertIn("depth 0", error.text)

    def test_the_first_error_is_reported(self):
        """Both alternatives fail: the alert is the first attempt's, whatever the order."""
        expired = pki.create_intermediate(
            self.ca.key, self.ca.cert, "alt CA", key=certs.key_for("ed25519", "int:alternatives"),
            not_before=self.now - 30 * DAY, not_after=self.now - DAY,
        )[1]  # fmt: skip
        chain = [_der(self.leaf), _der(self.constrained), _der(expired)]
        self.assertRaises(BadCertificate, self.trust.validate, chain, self.now)

    def test_bounded(self):
        """Seven alternatives that all fail: at most 1 + MAX_PATH_ATTEMPTS verifications."""
        from sixchat.trust import chain as chain_module
        from sixchat.trust.paths import MAX_PATH_ATTEMPTS

        def constrained(template, i):
            return _with_extra(template, self.ca.key, [(x509.NameConstraints(
                permitted_subtrees=[x509.RFC822Name(f"other{i}.org")], excluded_subtrees=None),
                True)])  # fmt: skip

        _, other = pki.create_intermediate(self.ca.key, self.ca.cert, "other CA",
                                           key=certs.key_for("ed25519", "int:other"))
        # 4 x 3 orderings of two groups of alternatives, all failing
        bad = [constrained(self.plain, i) for i in range(4)] + [
            constrained(other, i) for i in range(3)]  # fmt: skip
        chain = [_der(self.leaf), *(_der(c) for c in bad)]
        calls = []
        real = chain_module.TrustStore._openssl_path

        def counting(store, *args):
            calls.append(1)
            return real(store, *args)

        self.patch(chain_module.TrustStore, "_openssl_path", counting)
        self.assertRaises(BadCertificate, self.trust.validate, chain, self.now)
        self.assertEqual(len(calls), 1 + MAX_PATH_ATTEMPTS)


class ConstrainedMailboxTests(SynchronousTestCase):
    """A name like a@b@x.example.com never satisfies a name constraint."""

    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        key = certs.key_for("ed25519", "int:constrained")
        _, plain = pki.create_intermediate(self.ca.key, self.ca.cert, "constrained CA", key=key)
        constraint = x509.NameConstraints(
            permitted_subtrees=[x509.RFC822Name(".example.com")], excluded_subtrees=None
        )
        self.inter = _with_extra(plain, self.ca.key, [(constraint, True)])
        self.key = key
        self.trust = TrustStore([self.ca.anchor])

    def leaf(self, *names):
        template = pki.issue_leaf(self.key, self.inter, [names[0]],
                                  certs.key_for("ed25519", "leaf:" + names[0]).public_key())
        # cryptography refuses to build an rfc822Name with two "@": bypass its check
        san = x509.SubjectAlternativeName(
            [x509.RFC822Name._init_without_validation(n) for n in names]  # type: ignore[attr-defined]
        )
        builder = (
            x509.CertificateBuilder().subject_name(template.subject)
            .issuer_name(template.issuer).public_key(template.public_key())
            .serial_number(template.serial_number)
            .not_valid_before(template.not_valid_before_utc)
            .not_valid_after(template.not_valid_after_utc)
        )
        for ext in template.extensions:
            builder = builder.add_extension(
                san if isinstance(ext.value, x509.SubjectAlternativeName) else ext.value,
                ext.critical,
            )
        leaf = builder.sign(self.key, None)
        return [_der(leaf), _der(self.inter)]  # fmt: skip

    def test_a_mailbox_inside_the_constraint(self):
        peer = self.trust.validate(self.leaf("alice@x.example.com"), self.now)
        self.assertEqual(peer.names, ("alice@x.example.com",))

    def test_double_at_is_refused(self):
        error = self.assertRaises(
            BadCertificate, self.trust.validate,
            self.leaf("alice@x.example.com", "a@b@x.example.com"), self.now,
        )  # fmt: skip
        self.assertIn("'a@b@x.example.com', which is not a mailbox", error.text)

    def test_outside_the_constraint(self):
        self.assertRaises(BadCertificate, self.trust.validate,
                          self.leaf("alice@example.org"), self.now)  # fmt: skip

    def test_scan_agrees_with_lookup(self):
        """
        check_constrained_mailboxes finds name constraints by scanning the parsed extensions
        (a shortcut for speed); on any path of these certificates (constrained CA or not,
        at any depth, leaves with and without a bad mailbox) it decides exactly as the
        get_extension_for_oid lookup it replaced.
        """
        pool = [
            self.ca.anchor,
            self.inter,
            x509.load_der_x509_certificate(self.leaf("alice@x.example.com")[0]),
            x509.load_der_x509_certificate(self.leaf("bob@x.example.com", "a@b@x.example.com")[0]),
            x509.load_der_x509_certificate(
                certs.make_identity("carol@example.com", self.ca).chain_der[0]
            ),
        ]

        def outcome(check, path):
            try:
                check(path)
            except BadCertificate as e:
                return e.text
            return None

        @settings(max_examples=200, deadline=None)
        @given(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=5))
        def agree(indices):
            path = tuple(pool[i] for i in indices)
            self.assertEqual(outcome(check_constrained_mailboxes, path),
                             outcome(_constrained_mailboxes_by_lookup, path))  # fmt: skip

        agree()
        # The property is not vacuous: both outcomes occur.
        self.assertIsNone(outcome(check_constrained_mailboxes, (pool[2], self.inter)))
        self.assertIn("not a mailbox", outcome(check_constrained_mailboxes, (pool[3], self.inter)))


def _constrained_mailboxes_by_lookup(path):
    """check_constrained_mailboxes as it was written before the scan (the reference)."""
    for depth in range(1, len(path)):
        try:
            path[depth].extensions.get_extension_for_oid(ExtensionOID.NAME_CONSTRAINTS)
        except x509.ExtensionNotFound:
            continue
        for below in range(depth):
            try:
                san = path[below].extensions.get_extension_for_oid(
                    ExtensionOID.SUBJECT_ALTERNATIVE_NAME
                ).value
            except x509.ExtensionNotFound:
                continue
            for name in san.get_values_for_type(x509.RFC822Name):
                local, at, domain = name.partition("@")
                if not (at and local and domain) or "@" in domain:
                    raise BadCertificate(
                        f"certificate at depth {below} has rfc822Name {name!r}, which is not a "
                        "mailbox, under name constraints"
                    )
        return
