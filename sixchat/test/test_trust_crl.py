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
from sixchat.errors import BadCertificate, CertificateRevoked
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
    crl_unusable,
    name_key,
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
        crl = bare_crl(
            self.inter, shouted, [leaf.serial_number], last_update=self.now, number=1
        )

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


def custom_crl(ca, serials, *, extensions=(), now=None, entry_extensions=(), days=7):
    """A CRL of C{ca} with the given (extension, critical) pairs and nothing else added."""
    now = now or certs.utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - DAY)
        .next_update(now + days * DAY)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - DAY)
        for ext, critical in entry_extensions:
            entry = entry.add_extension(ext, critical=critical)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, None)


def without_crl_sign(parent, name="sixchat no-crlsign intermediate"):
    """An intermediate under C{parent} whose keyUsage allows keyCertSign but not cRLSign."""
    key = certs.key_for("ed25519", "int:" + name)
    _, template = pki.create_intermediate(parent.key, parent.cert, name, key=key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(key.public_key())
        .serial_number(template.serial_number)
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
    )
    for ext in template.extensions:
        if isinstance(ext.value, x509.KeyUsage):
            continue
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        x509.KeyUsage(False, False, False, False, False, True, False, False, False), True
    )
    cert = builder.sign(parent.key, None)
    return certs.TestCA(key=key, cert=cert, anchor=parent.anchor, chain=(cert, *parent.chain))


class UsableCRLTests(SynchronousTestCase):
    """RFC 5280 §5.2, §6.3.3: which CRLs are used at all (L{crl_unusable}), warned once."""

    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.inter = certs.make_intermediate(self.ca)
        self.alice = certs.make_identity("alice@example.com", self.inter)
        self.warnings: list[str] = []
        self.root_crl = pki.issue_crl(self.ca.key, self.ca.cert, [])

    def check_refused(self, crl, text):
        self.assertIn(text, crl_unusable(crl) or "")
        for mode in ("soft", "hard"):
            self.warnings.clear()
            trust = TrustStore([self.ca.anchor], [self.root_crl, crl],
                               warn=self.warnings.append, revocation=mode)  # fmt: skip
            self.assertFalse(trust.add_crl(crl))
            self.assertEqual(len([w for w in self.warnings if text in w]), 1, self.warnings)
            if mode == "soft":
                trust.validate(self.alice.chain_der, self.now)  # soft fail, not revoked
                self.assertTrue(any("no CRL for issuer" in w for w in self.warnings))
            else:
                error = self.assertRaises(BadCertificate, trust.validate,
                                          self.alice.chain_der, self.now)  # fmt: skip
                self.assertIn("no usable CRL", error.text)
            # the revoking serial on a refused CRL is never read
            self.assertIsNone(revoked_on_path(
                trust.validate(self.alice.chain_der, self.now).chain, [crl]
            ) if mode == "soft" else None)  # fmt: skip

    def test_a_usable_crl(self):
        self.assertIsNone(crl_unusable(pki.issue_crl(self.inter.key, self.inter.cert, [])))

    def test_no_crl_number(self):
        crl = custom_crl(self.inter, [self.alice.leaf.serial_number])
        self.check_refused(crl, "has no CRL number")

    def test_critical_crl_number(self):
        crl = custom_crl(self.inter, [self.alice.leaf.serial_number],
                         extensions=[(x509.CRLNumber(3), True)])  # fmt: skip
        self.check_refused(crl, "marks its CRL number critical")

    def test_delta_crl(self):
        delta = custom_crl(self.inter, [], extensions=[
            (x509.CRLNumber(4), False), (x509.DeltaCRLIndicator(3), True)])  # fmt: skip
        self.check_refused(delta, "is a delta CRL (not supported)")

    def test_delta_never_replaces_the_base(self):
        """PKITS 4.15.3: a newer delta without the serial does not undo the base CRL."""
        base = pki.issue_crl(self.inter.key, self.inter.cert, [self.alice.leaf.serial_number],
                             crl_number=3)  # fmt: skip
        delta = custom_crl(self.inter, [], extensions=[
            (x509.CRLNumber(9), False), (x509.DeltaCRLIndicator(3), True)])  # fmt: skip
        trust = TrustStore([self.ca.anchor], [self.root_crl, base, delta],
                           warn=self.warnings.append)  # fmt: skip
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)
        self.assertEqual(trust.crls.count(base), 1)
        self.assertNotIn(delta, trust.crls)

    def test_unrecognised_critical_extension(self):
        crl = custom_crl(self.inter, [self.alice.leaf.serial_number], extensions=[
            (x509.CRLNumber(3), False),
            (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                        b"\x05\x00"), True),
        ])  # fmt: skip
        self.check_refused(crl, "unrecognised critical extension (1.3.6.1.4.1.99999.1)")

    def test_unrecognised_critical_entry_extension(self):
        crl = custom_crl(
            self.inter, [self.alice.leaf.serial_number],
            extensions=[(x509.CRLNumber(3), False)],
            entry_extensions=[(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x05\x00"), True)],
        )  # fmt: skip
        self.check_refused(crl, "unrecognised critical entry extension")

    def test_known_entry_extensions_are_fine(self):
        crl = custom_crl(
            self.inter, [self.alice.leaf.serial_number],
            extensions=[(x509.CRLNumber(3), False)],
            entry_extensions=[(x509.CRLReason(x509.ReasonFlags.key_compromise), False)],
        )  # fmt: skip
        self.assertIsNone(crl_unusable(crl))
        trust = TrustStore([self.ca.anchor], [self.root_crl, crl], revocation="hard")
        self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der, self.now)

    def test_narrowing_distribution_points(self):
        def idp(**kw):
            base = dict(full_name=None, relative_name=None, only_contains_user_certs=False,
                        only_contains_ca_certs=False, only_some_reasons=None,
                        indirect_crl=False, only_contains_attribute_certs=False)  # fmt: skip
            base.update(kw)
            return custom_crl(self.inter, [self.alice.leaf.serial_number], extensions=[
                (x509.CRLNumber(3), False),
                (x509.IssuingDistributionPoint(**base), True)])  # fmt: skip

        self.check_refused(idp(indirect_crl=True), "is an indirect CRL")
        self.check_refused(
            idp(only_some_reasons=frozenset([x509.ReasonFlags.key_compromise])),
            "covers only some revocation reasons",
        )
        self.check_refused(idp(only_contains_attribute_certs=True), "attribute certificates")
        self.check_refused(
            idp(relative_name=x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, "dp")])),
            "relative to its issuer",
        )  # fmt: skip

    def test_scope_user_or_ca_certificates(self):
        def idp(users, cas, serials):
            return custom_crl(self.inter, serials, extensions=[
                (x509.CRLNumber(3), False),
                (x509.IssuingDistributionPoint(None, None, users, cas, None, False, False),
                 True)])  # fmt: skip

        serial = [self.alice.leaf.serial_number]
        users = TrustStore([self.ca.anchor], [self.root_crl, idp(True, False, serial)],
                           revocation="hard")  # fmt: skip
        self.assertRaises(CertificateRevoked, users.validate, self.alice.chain_der, self.now)
        cas = TrustStore([self.ca.anchor], [self.root_crl, idp(False, True, serial)],
                         warn=self.warnings.append, revocation="hard")  # fmt: skip
        error = self.assertRaises(BadCertificate, cas.validate, self.alice.chain_der, self.now)
        self.assertIn("no usable CRL", error.text)
        # and a root CRL only for CA certificates covers the intermediate
        root_cas = custom_crl(self.ca, [self.inter.cert.serial_number], extensions=[
            (x509.CRLNumber(3), False),
            (x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
             True)])  # fmt: skip
        trust = TrustStore([self.ca.anchor],
                           [root_cas, pki.issue_crl(self.inter.key, self.inter.cert, [])],
                           revocation="hard")  # fmt: skip
        error = self.assertRaises(CertificateRevoked, trust.validate,
                                  self.alice.chain_der, self.now)  # fmt: skip
        self.assertIn("depth 1", error.text)

    def test_signer_without_crl_sign(self):
        """PKITS 4.7.4/4.7.5: a CRL signed by a CA whose keyUsage lacks cRLSign is not used."""
        inter = without_crl_sign(self.ca)
        bob = certs.make_identity("bob@example.com", inter)
        crl = pki.issue_crl(inter.key, inter.cert, [bob.leaf.serial_number])
        trust = TrustStore([self.ca.anchor], [self.root_crl, crl], warn=self.warnings.append)
        trust.validate(bob.chain_der, self.now)
        self.assertTrue(any("may not sign CRLs" in w for w in self.warnings), self.warnings)
        self.assertIsNone(revoked_on_path(trust.validate(bob.chain_der, self.now).chain, [crl]))
        hard = TrustStore([self.ca.anchor], [self.root_crl, crl], revocation="hard")
        self.assertRaises(BadCertificate, hard.validate, bob.chain_der, self.now)

    def test_name_comparison_rfc5280(self):
        """§7.1: case and white space do not make two names differ."""
        a = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Good  CA ")])
        b = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "good ca")])
        c = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "good cb")])
        self.assertEqual(name_key(a), name_key(b))
        self.assertNotEqual(name_key(a), name_key(c))


class RevocationModeTests(SynchronousTestCase):
    """C{TrustStore(revocation="hard")}: no usable, current CRL in scope -> bad_certificate."""

    def setUp(self):
        self.now = certs.utcnow()
        self.ca = certs.make_ca()
        self.inter = certs.make_intermediate(self.ca)
        self.alice = certs.make_identity("alice@example.com", self.inter)
        self.warnings: list[str] = []

    def store(self, *crls, mode="hard"):
        return TrustStore([self.ca.anchor], crls, warn=self.warnings.append, revocation=mode)

    def test_unknown_mode(self):
        error = self.assertRaises(ValueError, TrustStore, [self.ca.anchor], revocation="medium")
        self.assertIn("soft or hard", str(error))

    def test_default_is_soft(self):
        self.assertEqual(TrustStore([self.ca.anchor]).revocation, "soft")
        TrustStore([self.ca.anchor]).validate(self.alice.chain_der, self.now)

    def test_hard_accepts_with_every_crl(self):
        trust = self.store(pki.issue_crl(self.ca.key, self.ca.cert, []),
                           pki.issue_crl(self.inter.key, self.inter.cert, []))  # fmt: skip
        trust.validate(self.alice.chain_der, self.now)
        trust.validate(self.alice.chain_der, self.now)  # the cached path too
        self.assertEqual(self.warnings, [])

    def test_hard_refuses_a_missing_crl_at_any_depth(self):
        only_inter = self.store(pki.issue_crl(self.inter.key, self.inter.cert, []))
        error = self.assertRaises(BadCertificate, only_inter.validate,
                                  self.alice.chain_der, self.now)  # fmt: skip
        self.assertIn("depth 1", error.text)
        self.assertIn("revocation=hard", error.text)
        self.assertEqual(error.reason, "bad_certificate")
        only_root = self.store(pki.issue_crl(self.ca.key, self.ca.cert, []))
        error = self.assertRaises(BadCertificate, only_root.validate,
                                  self.alice.chain_der, self.now)  # fmt: skip
        self.assertIn("depth 0", error.text)

    def test_hard_refuses_a_stale_crl_soft_uses_it(self):
        stale = pki.issue_crl(self.inter.key, self.inter.cert, [],
                              last_update=self.now - 10 * DAY, next_update=self.now - DAY)
        root = pki.issue_crl(self.ca.key, self.ca.cert, [])
        error = self.assertRaises(BadCertificate, self.store(root, stale).validate,
                                  self.alice.chain_der, self.now)  # fmt: skip
        self.assertIn("stale", error.text)
        self.store(root, stale, mode="soft").validate(self.alice.chain_der, self.now)
        self.assertTrue(any("stale" in w for w in self.warnings))

    def test_hard_refuses_on_the_cached_path_once_stale(self):
        """The validated-chain cache checks revocation again at every use, in the same mode."""
        crl = pki.issue_crl(self.inter.key, self.inter.cert, [],
                            last_update=self.now - DAY, next_update=self.now + DAY)
        root = pki.issue_crl(self.ca.key, self.ca.cert, [], next_update_days=30)
        trust = self.store(root, crl)
        trust.validate(self.alice.chain_der, self.now)
        later = self.now + 2 * DAY
        self.assertRaises(BadCertificate, trust.validate, self.alice.chain_der, later)

    def test_revoked_is_revoked_in_both_modes(self):
        for mode in ("soft", "hard"):
            trust = self.store(
                pki.issue_crl(self.ca.key, self.ca.cert, []),
                pki.issue_crl(self.inter.key, self.inter.cert, [self.alice.leaf.serial_number]),
                mode=mode,
            )
            self.assertRaises(CertificateRevoked, trust.validate, self.alice.chain_der,
                              self.now)  # fmt: skip
