"""
Tests for L{sixchat.trust.files}: anchors and CRLs from the user's files (C{--trust},
C{--crl}), through L{TrustStore.from_paths}.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from sixchat import pki
from sixchat.errors import CertificateRevoked
from sixchat.test import certs
from sixchat.trust import TrustLoadError, TrustStore


class LoadTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.ca = certs.make_ca()
        self.other = certs.make_ca("p256")

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_bundle(self):
        path = self.write("bundle.pem", self.ca.anchor_pem + b"\n" + self.other.anchor_pem)
        trust = TrustStore.from_paths(path)
        self.assertEqual(trust.anchors, [self.ca.cert, self.other.cert])
        ident = certs.make_identity("alice@example.com", self.other)
        trust.validate(ident.chain_der, certs.utcnow())

    def test_der_anchor(self):
        path = self.write("anchor.der", self.ca.cert_der)
        self.assertEqual(TrustStore.from_paths(path).anchors, [self.ca.cert])

    def test_directory(self):
        sub = os.path.join(self.dir, "anchors")
        os.makedirs(sub)
        for name, data in [
            ("a.pem", self.ca.anchor_pem),
            ("b.crt", self.other.anchor_pem),
            ("dup.pem", self.ca.anchor_pem),
            ("README", b"these are my anchors\n"),
            (".hidden.pem", b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"),
        ]:
            with open(os.path.join(sub, name), "wb") as f:
                f.write(data)
        os.makedirs(os.path.join(sub, "nested"))
        self.assertEqual(TrustStore.from_paths(sub).anchors, [self.ca.cert, self.other.cert])

    def test_missing(self):
        error = self.assertRaises(
            TrustLoadError, TrustStore.from_paths, os.path.join(self.dir, "nope.pem")
        )
        self.assertIn("does not exist", str(error))

    def test_empty_directory(self):
        sub = os.path.join(self.dir, "empty")
        os.makedirs(sub)
        error = self.assertRaises(TrustLoadError, TrustStore.from_paths, sub)
        self.assertIn("no PEM certificate found", str(error))

    def test_no_certificate(self):
        path = self.write("junk.pem", b"not a certificate")
        error = self.assertRaises(TrustLoadError, TrustStore.from_paths, path)
        self.assertIn("no certificate found", str(error))

    def test_damaged_certificate(self):
        path = self.write(
            "bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        error = self.assertRaises(TrustLoadError, TrustStore.from_paths, path)
        self.assertIn("damaged", str(error))

    def test_no_anchor(self):
        self.assertRaises(TrustLoadError, TrustStore, [])

    def test_crls(self):
        inter = certs.make_intermediate(self.ca)
        alice = certs.make_identity("alice@example.com", inter)
        root_crl = pki.issue_crl(self.ca.key, self.ca.cert, [])
        inter_crl = pki.issue_crl(inter.key, inter.cert, [alice.leaf.serial_number])
        anchors = self.write("ca.pem", self.ca.anchor_pem)
        pem = self.write("root.crl.pem", root_crl.public_bytes(serialization.Encoding.PEM))
        der_path = self.write("inter.crl", inter_crl.public_bytes(serialization.Encoding.DER))
        warnings = []
        trust = TrustStore.from_paths(anchors, [pem, der_path], warn=warnings.append)
        self.assertEqual(len(trust.crls), 2)
        self.assertRaises(CertificateRevoked, trust.validate, alice.chain_der, certs.utcnow())
        self.assertEqual(warnings, [])

    def test_bad_crl_files(self):
        anchors = self.write("ca.pem", self.ca.anchor_pem)
        for name, data, message in [
            ("missing.crl", None, "does not exist"),
            ("junk.crl", b"\x30\x00", "not a readable CRL"),
            ("cert.pem", self.ca.anchor_pem, "holds no X509 CRL"),
        ]:
            path = os.path.join(self.dir, name) if data is None else self.write(name, data)
            error = self.assertRaises(TrustLoadError, TrustStore.from_paths, anchors, [path])
            self.assertIn(message, str(error))
