"""
Tests for L{sixchat.trust.crl}: the one definition of each CRL rule (number, authority key
identifier, signature, spec §11.8 revocation), used by the trust store and by the agent,
and the trust store's revocation step with the CRLs it holds.

The C{*_weaker_copy_*} tests pin the cases where the two former copies (the trust store's and
the agent's) disagreed: each fails on the copy whose behaviour was dropped.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from sixchat import pki
from sixchat.agent import crls as agent_crls
from sixchat.errors import CertificateRevoked
from sixchat.test import certs
from sixchat.trust import TrustLoadError, TrustStore
from sixchat.trust import crl as trust_crl
from sixchat.trust.crl import (
    authority_key_id,
    crl_age_key,
    crl_is_newer,
    crl_number,
    crl_signature_valid,
    crl_signed_by,
    revoked_on_path,
    revoking_crl,
)

DAY = datetime.timedelta(days=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def bare_crl(ca, issuer_name, serials, *, last_update, number=None):
    """A CRL signed by C{ca}'s key under C{issuer_name}, without authorityKeyIdentifier."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name)
        .last_update(last_update)
        .next_update(last_update + 7 * DAY)
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last_update)
            .build()
        )
    return builder.sign(ca.key, None)


def unloadable_key(cert: x509.Certificate) -> x509.Certificate:
    """C{cert} (Ed25519) with its key's algorithm identifier changed to an unknown one."""
    data = der(cert)
    oid = bytes.fromhex("06032b6570")  # id-Ed25519: signature, then the key, then signature
    at = data.index(oid, data.index(oid) + 1)
    return x509.load_der_x509_certificate(data[:at] + bytes.fromhex("06032b6572") + data[at + 5 :])


class CRLFieldTests(SynchronousTestCase):
    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()

    def test_crl_number(self):
        self.assertEqual(crl_number(pki.issue_crl(self.ca.key, self.ca.cert, [], crl_number=7)), 7)
        bare = bare_crl(self.ca, self.ca.cert.subject, [], last_update=self.now)
        self.assertIsNone(crl_number(bare))
        self.assertEqual(crl_age_key(bare), (-1, bare.last_update_utc))

    def test_newer_by_number_then_by_this_update(self):
        old = pki.issue_crl(self.ca.key, self.ca.cert, [], crl_number=1, last_update=self.now)
        new = pki.issue_crl(
            self.ca.key, self.ca.cert, [], crl_number=2, last_update=self.now - DAY
        )
        self.assertTrue(crl_is_newer(new, old))
        self.assertFalse(crl_is_newer(old, new))
        # Without a number on one side, thisUpdate decides.
        bare = bare_crl(self.ca, self.ca.cert.subject, [], last_update=self.now - 2 * DAY)
        self.assertFalse(crl_is_newer(bare, old))
        self.assertTrue(crl_is_newer(old, bare))

    def test_authority_key_id(self):
        crl = pki.issue_crl(self.ca.key, self.ca.cert, [])
        ski = self.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(authority_key_id(crl), ski.value.digest)
        self.assertIsNone(
            authority_key_id(bare_crl(self.ca, self.ca.cert.subject, [], last_update=self.now))
        )

    def test_signature(self):
        crl = pki.issue_crl(self.ca.key, self.ca.cert, [])
        other = certs.make_ca(name="Some Other CA")
        self.assertTrue(crl_signature_valid(crl, self.ca.cert))
        self.assertFalse(crl_signature_valid(crl, other.cert))
        self.assertTrue(crl_signed_by(crl, self.ca.cert))
        # Signed with the key, but naming someone else: not issued by this CA.
        renamed = bare_crl(self.ca, other.cert.subject, [], last_update=self.now)
        self.assertTrue(crl_signature_valid(renamed, self.ca.cert))
        self.assertFalse(crl_signed_by(renamed, self.ca.cert))

    def test_unloadable_key_verifies_nothing(self):
        crl = pki.issue_crl(self.ca.key, self.ca.cert, [])
        self.assertFalse(crl_signature_valid(crl, unloadable_key(self.ca.cert)))
        self.assertFalse(crl_signed_by(crl, unloadable_key(self.ca.cert)))

    def test_agent_uses_the_same_rules(self):
        self.assertIs(agent_crls.crl_number, trust_crl.crl_number)
        self.assertIs(agent_crls.revoked_on_path, trust_crl.revoked_on_path)


class RevocationRuleTests(SynchronousTestCase):
    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.inter = certs.make_intermediate(self.ca)
        self.alice = certs.make_identity("alice@example.com", self.inter)
        self.root_crl = pki.issue_crl(self.ca.key, self.ca.cert, [])

    def path(self):
        return TrustStore([self.ca.anchor]).validate(self.alice.chain_der, self.now).chain

    def test_revoked_on_path(self):
        serial = self.alice.leaf.serial_number
        crl = pki.issue_crl(self.inter.key, self.inter.cert, [serial])
        self.assertEqual(revoked_on_path(self.path(), [self.root_crl, crl]), (0, crl))
        self.assertIsNone(revoked_on_path(self.path(), [self.root_crl]))
        revoking_root = pki.issue_crl(self.ca.key, self.ca.cert, [self.inter.cert.serial_number])
        self.assertEqual(revoked_on_path(self.path(), [revoking_root]), (1, revoking_root))

    def test_a_crl_must_verify_with_the_issuer_key(self):
        forged = pki.issue_crl(
            certs.key_for("ed25519", "forger"), self.inter.cert, [self.alice.leaf.serial_number]
        )
        self.assertIsNone(revoked_on_path(self.path(), [forged]))
        self.assertIsNone(revoking_crl(self.path()[0], self.inter.cert, [forged]))

    def test_a_crl_of_another_issuer_does_not_count(self):
        # Signed by the right key, but naming another issuer than the certificate's.
        other = bare_crl(
            self.inter,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")]),
            [self.alice.leaf.serial_number],
            last_update=self.now,
        )
        self.assertIsNone(revoked_on_path(self.path(), [other]))

    def test_weaker_copy_any_counting_crl_revokes(self):
        """
        Two genuine CRLs of the intermediate that count (one without a key identifier, so
        held apart): the older lists alice, the newer does not. The trust store's former
        copy looked only at the newest and accepted her; every counting CRL decides now.
        """
        older = bare_crl(
            self.inter,
            self.inter.cert.subject,
            [self.alice.leaf.serial_number],
            last_update=self.now - 2 * DAY,
            number=1,
        )
        newer = pki.issue_crl(self.inter.key, self.inter.cert, [], crl_number=2)
        trust = TrustStore([self.ca.anchor], [self.root_crl, older, newer])
        self.assertEqual(len(trust.crls), 3)
        error = self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der,
                                  self.now)  # fmt: skip
        self.assertIn("depth 0", error.text)
        self.assertEqual(revoked_on_path(self.path(), [newer, older]), (0, older))

    def test_weaker_copy_issuer_name_spelled_differently(self):
        """
        OpenSSL links a certificate to its issuer by names compared case-insensitively. A
        genuine CRL naming the certificate's issuer as the certificate spells it counts
        (§11.8), even though the issuer certificate spells its subject otherwise; the agent's
        former copy also required that subject and kept the revoked peer's session.
        """
        shouted = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "SIXCHAT TEST INTERMEDIATE")]
        )
        key = certs.key_for("ed25519", "leaf:shouted")
        template = pki.issue_leaf(
            self.inter.key, self.inter.cert, ["carol@example.com"], key.public_key()
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(template.subject)
            .issuer_name(shouted)
            .public_key(key.public_key())
            .serial_number(template.serial_number)
            .not_valid_before(template.not_valid_before_utc)
            .not_valid_after(template.not_valid_after_utc)
        )
        for ext in template.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        leaf = builder.sign(self.inter.key, None)
        self.assertNotEqual(leaf.issuer, self.inter.cert.subject)
        chain = [der(leaf), der(self.inter.cert)]
        path = TrustStore([self.ca.anchor]).validate(chain, self.now).chain
        crl = bare_crl(self.inter, shouted, [leaf.serial_number], last_update=self.now)

        self.assertEqual(agent_crls.revoked_on_path(path, [crl]), (0, crl))
        trust = TrustStore([self.ca.anchor], [self.root_crl, crl])
        self.assertRaises(CertificateRevoked, trust.validate, chain, self.now)

    def test_weaker_copy_anchor_with_an_unloadable_key(self):
        """
        A CRL naming an anchor whose key cannot be loaded is refused like any CRL the anchor
        did not sign; the trust store's former copy raised UnsupportedAlgorithm instead.
        """
        anchor = unloadable_key(self.ca.cert)
        crl = pki.issue_crl(self.ca.key, anchor, [])
        error = self.assertRaises(TrustLoadError, TrustStore, [anchor], [crl])
        self.assertIn("not signed by that anchor's key", str(error))
        warnings: list[str] = []
        trust = TrustStore([anchor], warn=warnings.append)
        self.assertFalse(trust.add_crl(crl))
        self.assertEqual(trust.crls, [])
        self.assertEqual(len(warnings), 1)


class RevocationTests(SynchronousTestCase):
    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.inter = certs.make_intermediate(self.ca)
        self.alice = certs.make_identity("alice@example.com", self.inter)
        self.bob = certs.make_identity("bob@example.com", self.inter)
        self.warnings: list[str] = []

    def crl(self, ca, serials, **kwargs):
        return pki.issue_crl(ca.key, ca.cert, serials, **kwargs)

    def trust(self, *crls):
        return certs.trust_for(self.ca, crls, warn=self.warnings.append)

    def test_revoked_leaf(self):
        trust = self.trust(
            self.crl(self.inter, [self.alice.leaf.serial_number]), self.crl(self.ca, [])
        )
        error = self.assertRaises(
            CertificateRevoked, trust.validate, self.alice.chain_der, self.now
        )
        self.assertIn("depth 0", error.text)
        self.assertEqual(error.reason, "certificate_revoked")
        trust.validate(self.bob.chain_der, self.now)
        self.assertEqual(self.warnings, [])

    def test_revoked_intermediate(self):
        trust = self.trust(
            self.crl(self.inter, []), self.crl(self.ca, [self.inter.cert.serial_number])
        )
        error = self.assertRaises(
            CertificateRevoked, trust.validate, self.bob.chain_der, self.now
        )
        self.assertIn("depth 1", error.text)

    def test_no_crl_warns_once_per_issuer(self):
        trust = self.trust()
        trust.validate(self.alice.chain_der, self.now)
        trust.validate(self.bob.chain_der, self.now)
        self.assertEqual(len(self.warnings), 2)
        self.assertIn("no CRL for issuer CN=sixchat test intermediate", self.warnings[0])
        self.assertIn("not checked", self.warnings[0])
        self.assertIn("no CRL for issuer CN=sixchat test CA (ed25519)", self.warnings[1])

    def test_no_crl_for_one_issuer_only(self):
        trust = self.trust(self.crl(self.inter, [self.alice.leaf.serial_number]))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        trust.validate(self.bob.chain_der, self.now)
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("CN=sixchat test CA", self.warnings[0])

    def test_stale_crl_still_used(self):
        stale = self.crl(
            self.inter, [self.alice.leaf.serial_number],
            last_update=self.now - 10 * DAY, next_update=self.now - DAY,
        )
        trust = self.trust(stale, self.crl(self.ca, []))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("stale", self.warnings[0])
        self.assertIn("CN=sixchat test intermediate", self.warnings[0])
        trust.validate(self.bob.chain_der, self.now)
        self.assertEqual(len(self.warnings), 1)  # once per CRL

    def test_crl_signed_by_wrong_key_ignored(self):
        """A CRL naming the issuer but not signed by its key does not count (§11.8)."""
        forged = pki.issue_crl(
            certs.key_for("ed25519", "forger"), self.inter.cert, [self.bob.leaf.serial_number]
        )
        trust = self.trust(forged, self.crl(self.ca, []))
        peer = trust.validate(self.bob.chain_der, self.now)
        self.assertEqual(peer.names, ("bob@example.com",))
        self.assertEqual(len(self.warnings), 2)
        self.assertIn("not signed by that issuer's key", self.warnings[0])
        self.assertIn("no CRL for issuer CN=sixchat test intermediate", self.warnings[1])

    def test_crl_naming_anchor_with_wrong_key_refused(self):
        forged = pki.issue_crl(certs.key_for("ed25519", "forger"), self.ca.cert, [1])
        error = self.assertRaises(TrustLoadError, certs.trust_for, self.ca, [forged])
        self.assertIn("not signed by that anchor's key", str(error))
        trust = self.trust()
        self.assertFalse(trust.add_crl(forged))
        self.assertEqual(trust.crls, [])
        self.assertIn("not signed", self.warnings[-1])

    def test_crl_of_other_issuer_does_not_count(self):
        other = certs.make_ca(name="Some Other CA")
        trust = self.trust(self.crl(other, [self.alice.leaf.serial_number]))
        trust.validate(self.alice.chain_der, self.now)

    def test_newer_crl_replaces_older(self):
        trust = self.trust(self.crl(self.ca, []))
        first = self.crl(self.inter, [self.alice.leaf.serial_number], crl_number=1)
        second = self.crl(self.inter, [], crl_number=2)
        self.assertTrue(trust.add_crl(first))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        self.assertTrue(trust.add_crl(second))
        self.assertEqual(len(trust.crls), 2)
        trust.validate(self.alice.chain_der, self.now)
        self.assertFalse(trust.add_crl(first))
        self.assertIn("older", self.warnings[-1])
        trust.validate(self.alice.chain_der, self.now)

    def forged(self, ca, serials, number):
        """A CRL naming C{ca} (name and key id) but signed by another key."""
        return pki.issue_crl(
            certs.key_for("ed25519", "forger"), ca.cert, serials, crl_number=number
        )

    def test_forged_newer_intermediate_crl_does_not_displace_the_genuine_one(self):
        """
        An intermediate's CRL cannot be checked when added (only the path has its key): a
        forged one with a higher number must not replace the genuine one, or revocation
        of what the intermediate issued would silently soft-fail.
        """
        genuine = self.crl(self.inter, [self.alice.leaf.serial_number], crl_number=2)
        trust = self.trust(self.crl(self.ca, []), genuine)
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        self.assertTrue(trust.add_crl(self.forged(self.inter, [], 1000)))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        # Validation proved it forged (it names the intermediate's very key): dropped.
        held = [c for c in trust.crls if c.issuer == self.inter.cert.subject]
        self.assertEqual(held, [genuine])
        self.assertEqual(len(trust._crls.held[(genuine.issuer, authority_key_id(genuine))]), 1)
        self.assertTrue(any("not signed by that issuer's key" in w for w in self.warnings))

    def test_forged_crl_first_then_the_genuine_one(self):
        trust = self.trust(self.crl(self.ca, []))
        self.assertTrue(trust.add_crl(self.forged(self.inter, [], 1000)))
        # A genuine CRL with a lower number is still taken: the forged one was never
        # proven genuine, so it does not count as "newer".
        genuine = self.crl(self.inter, [self.alice.leaf.serial_number], crl_number=3)
        self.assertTrue(trust.add_crl(genuine))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        trust.validate(self.bob.chain_der, self.now)

    def test_a_flood_of_forged_crls_keeps_the_genuine_one(self):
        genuine = self.crl(self.inter, [self.alice.leaf.serial_number], crl_number=2)
        trust = self.trust(self.crl(self.ca, []), genuine)
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        for number in range(100, 120):
            trust.add_crl(self.forged(self.inter, [], number))
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        # Older than the genuine one, now known good: refused.
        self.assertFalse(trust.add_crl(self.crl(self.inter, [], crl_number=1)))

    def test_newer_by_date_without_numbers(self):
        trust = self.trust(self.crl(self.ca, []))
        old = self.crl(self.inter, [self.alice.leaf.serial_number],
                       last_update=self.now - 2 * DAY, crl_number=5)
        new = self.crl(self.inter, [], last_update=self.now - DAY, crl_number=5)
        self.assertTrue(trust.add_crl(old))
        self.assertTrue(trust.add_crl(new))
        trust.validate(self.alice.chain_der, self.now)
