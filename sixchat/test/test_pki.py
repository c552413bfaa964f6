"""
Tests for L{sixchat.pki} and the C{sixchat pki} command line (in-process and as a real
subprocess), including a CA made by the real C{openssl} tool.
"""

from __future__ import annotations

import datetime
import io
import os
import shutil
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

import sixchat
from sixchat import pki
from sixchat.cli import main
from sixchat.identity import PASSWORD_ENV, load_identity
from sixchat.test import certs
from sixchat.trust import TrustStore

DAY = datetime.timedelta(days=1)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sixchat.__file__)))
OPENSSL = shutil.which("openssl") or ("/usr/bin/openssl" if os.path.exists("/usr/bin/openssl")
                                      else None)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


class KeyTests(SynchronousTestCase):
    def test_key_types(self):
        expected = {
            "ed25519": (ed25519.Ed25519PrivateKey, None),
            "p256": (ec.EllipticCurvePrivateKey, "secp256r1"),
            "p384": (ec.EllipticCurvePrivateKey, "secp384r1"),
            "rsa2048": (rsa.RSAPrivateKey, 2048),
            "rsa3072": (rsa.RSAPrivateKey, 3072),
        }
        self.assertEqual(tuple(expected), pki.KEY_TYPES)
        for key_type in pki.KEY_TYPES:
            cls, detail = expected[key_type]
            key = certs.key_for(key_type, "generate") if key_type.startswith("rsa") \
                else pki.generate_key(key_type)
            self.assertIsInstance(key, cls)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                self.assertEqual(key.curve.name, detail)
            if isinstance(key, rsa.RSAPrivateKey):
                self.assertEqual(key.key_size, detail)
                self.assertEqual(key.public_key().public_numbers().e, 65537)

    def test_unknown_key_type(self):
        error = self.assertRaises(ValueError, pki.generate_key, "dsa")
        self.assertIn("ed25519, p256", str(error))

    def test_describe(self):
        self.assertEqual(pki.describe_key(pki.generate_key("ed25519")), "Ed25519")
        self.assertEqual(pki.describe_key(pki.generate_key("p384").public_key()), "ECDSA P-384")
        self.assertEqual(pki.describe_key(certs.key_for("rsa2048")), "RSA 2048")

    def test_serial(self):
        serials = {pki.random_serial() for _ in range(200)}
        self.assertEqual(len(serials), 200)
        self.assertTrue(all(0 < s < 2**128 for s in serials))


class CertificateTests(SynchronousTestCase):
    def test_create_ca(self):
        for key_type, digest in [("ed25519", None), ("p256", "sha256"), ("p384", "sha384"),
                                 ("rsa2048", "sha256")]:
            key = certs.key_for(key_type, "create_ca")
            _, cert = pki.create_ca("Example CA", key=key, days=10)
            self.assertEqual(cert.subject, cert.issuer)
            self.assertEqual(cert.subject.rfc4514_string(), "CN=Example CA")
            cert.verify_directly_issued_by(cert)
            if digest is None:
                self.assertIsNone(cert.signature_hash_algorithm)
            else:
                self.assertEqual(cert.signature_hash_algorithm.name, digest)
            bc = ext(cert, x509.BasicConstraints)
            self.assertTrue(bc.critical)
            self.assertTrue(bc.value.ca)
            self.assertIsNone(bc.value.path_length)
            ku = ext(cert, x509.KeyUsage)
            self.assertTrue(ku.critical)
            self.assertTrue(ku.value.key_cert_sign and ku.value.crl_sign)
            self.assertFalse(ku.value.digital_signature)
            self.assertEqual(
                ext(cert, x509.SubjectKeyIdentifier).value,
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            )
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            self.assertEqual(lifetime, 10 * DAY + pki.CLOCK_SKEW)
            self.assertLessEqual(cert.not_valid_before_utc, certs.utcnow())

    def test_create_ca_generates_key(self):
        key, cert = pki.create_ca("Fresh", "p256", path_length=1)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(ext(cert, x509.BasicConstraints).value.path_length, 1)

    def test_intermediate(self):
        root = certs.make_ca()
        key, cert = pki.create_intermediate(root.key, root.cert, "Issuing CA", "p256")
        cert.verify_directly_issued_by(root.cert)
        self.assertEqual(ext(cert, x509.BasicConstraints).value.path_length, 0)
        self.assertEqual(
            ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
            ext(root.cert, x509.SubjectKeyIdentifier).value.digest,
        )
        _, not_ca = pki.create_intermediate(root.key, root.cert, "x", ca=False)
        self.assertFalse(ext(not_ca, x509.BasicConstraints).value.ca)

    def test_leaf_defaults(self):
        ca = certs.make_ca("p256")
        key = certs.key_for("ed25519", "leaf defaults")
        before = certs.utcnow().replace(microsecond=0)
        leaf = pki.issue_leaf(ca.key, ca.cert, ["alice@example.com", "a@example.org"],
                              key.public_key(), days=30)
        leaf.verify_directly_issued_by(ca.cert)
        self.assertEqual(leaf.signature_hash_algorithm.name, "sha256")
        self.assertEqual(leaf.issuer, ca.cert.subject)
        self.assertEqual(leaf.subject.rfc4514_string(), "CN=alice@example.com")
        san = ext(leaf, x509.SubjectAlternativeName)
        self.assertFalse(san.critical)
        self.assertEqual(san.value.get_values_for_type(x509.RFC822Name),
                         ["alice@example.com", "a@example.org"])
        ku = ext(leaf, x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.digital_signature)
        self.assertFalse(ku.value.key_encipherment)
        self.assertFalse(ku.value.key_cert_sign)
        self.assertEqual(list(ext(leaf, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION])
        bc = ext(leaf, x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertFalse(bc.value.ca)
        self.assertEqual(ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier,
                         ext(ca.cert, x509.SubjectKeyIdentifier).value.digest)
        self.assertEqual(ext(leaf, x509.SubjectKeyIdentifier).value,
                         x509.SubjectKeyIdentifier.from_public_key(key.public_key()))
        self.assertTrue(0 < leaf.serial_number < 2**128)
        self.assertGreaterEqual(leaf.not_valid_before_utc, before - pki.CLOCK_SKEW)
        self.assertEqual(leaf.not_valid_after_utc - leaf.not_valid_before_utc,
                         30 * DAY + pki.CLOCK_SKEW)

    def test_leaf_rsa_key_encipherment(self):
        ca = certs.make_ca()
        key = certs.key_for("rsa2048")
        leaf = pki.issue_leaf(ca.key, ca.cert, ["r@example.com"], key.public_key())
        self.assertTrue(ext(leaf, x509.KeyUsage).value.key_encipherment)
        leaf = pki.issue_leaf(ca.key, ca.cert, ["r@example.com"], key.public_key(),
                              key_encipherment=False)
        self.assertFalse(ext(leaf, x509.KeyUsage).value.key_encipherment)

    def test_leaf_knobs(self):
        ca = certs.make_ca()
        public = certs.key_for("ed25519", "knobs").public_key()
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        leaf = pki.issue_leaf(
            ca.key, ca.cert, ["a@example.com"], public, not_before=start,
            not_after=start + DAY, eku=None, key_usage=[], ca=True, serial=42,
        )
        self.assertEqual(leaf.not_valid_before_utc, start)
        self.assertEqual(leaf.not_valid_after_utc, start + DAY)
        self.assertEqual(leaf.serial_number, 42)
        self.assertTrue(ext(leaf, x509.BasicConstraints).value.ca)
        for cls in (x509.ExtendedKeyUsage, x509.KeyUsage):
            self.assertRaises(x509.ExtensionNotFound, ext, leaf, cls)
        leaf = pki.issue_leaf(ca.key, ca.cert, ["a@example.com"], public, no_san=True)
        self.assertRaises(x509.ExtensionNotFound, ext, leaf, x509.SubjectAlternativeName)
        leaf = pki.issue_leaf(ca.key, ca.cert, ["a@example.com"], public,
                              key_usage=["key_agreement"], eku=["anyExtendedKeyUsage"])
        self.assertFalse(ext(leaf, x509.KeyUsage).value.digital_signature)
        self.assertEqual(list(ext(leaf, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])

    def test_leaf_errors(self):
        ca = certs.make_ca()
        public = certs.key_for("ed25519", "errors").public_key()
        self.assertRaises(ValueError, pki.issue_leaf, ca.key, ca.cert, [], public)
        now = certs.utcnow()
        self.assertRaises(ValueError, pki.issue_leaf, ca.key, ca.cert, ["a@example.com"],
                          public, not_before=now, not_after=now)
        self.assertRaises(ValueError, pki.issue_leaf, ca.key, ca.cert, ["a@example.com"],
                          public, key_usage=["sign_everything"])

    def test_empty_subject_makes_san_critical(self):
        ca = certs.make_ca()
        public = certs.key_for("ed25519", "empty subject").public_key()
        leaf = pki.issue_leaf(ca.key, ca.cert, ["a@example.com"], public, subject=x509.Name([]))
        self.assertTrue(ext(leaf, x509.SubjectAlternativeName).critical)
        certs.trust_for(ca).validate(
            [leaf.public_bytes(serialization.Encoding.DER)], certs.utcnow()
        )

    def test_crl(self):
        ca = certs.make_ca("p256")
        now = datetime.datetime(2030, 5, 1, tzinfo=datetime.UTC)
        crl = pki.issue_crl(ca.key, ca.cert, [5, 7], 3, last_update=now)
        self.assertEqual(crl.issuer, ca.cert.subject)
        self.assertTrue(crl.is_signature_valid(ca.cert.public_key()))
        self.assertEqual(crl.last_update_utc, now)
        self.assertEqual(crl.next_update_utc, now + 3 * DAY)
        self.assertEqual(sorted(r.serial_number for r in crl), [5, 7])
        self.assertIsNone(crl.get_revoked_certificate_by_serial_number(6))
        self.assertEqual(
            crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
            int(now.timestamp()),
        )
        self.assertEqual(
            crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            .value.key_identifier,
            ext(ca.cert, x509.SubjectKeyIdentifier).value.digest,
        )
        crl = pki.issue_crl(ca.key, ca.cert, [], crl_number=9)
        self.assertEqual(
            crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 9
        )


class FileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.ca = certs.make_ca()
        self.alice = certs.make_identity("alice@example.com", self.ca)

    def test_write_p12(self):
        path = os.path.join(self.dir, "alice.p12")
        pki.write_p12(path, self.alice.private_key, self.alice.leaf, [self.ca.cert], b"pw",
                      friendly_name=b"alice@example.com")
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(os.listdir(self.dir), ["alice.p12"])
        with open(path, "rb") as f:
            data = f.read()
        self.assertRaises(ValueError, pkcs12.load_pkcs12, data, None)
        p12 = pkcs12.load_pkcs12(data, b"pw")
        self.assertEqual(p12.cert.certificate, self.alice.leaf)
        self.assertEqual(p12.cert.friendly_name, b"alice@example.com")
        self.assertEqual([c.certificate for c in p12.additional_certs], [self.ca.cert])
        # PBES2 with AES-256-CBC: its OIDs appear in the file.
        self.assertIn(bytes.fromhex("06092a864886f70d01050d"), data)  # id-PBES2
        self.assertIn(bytes.fromhex("060960864801650304012a"), data)  # aes256-CBC

    def test_write_p12_without_password(self):
        path = os.path.join(self.dir, "alice.p12")
        pki.write_p12(path, self.alice.private_key, self.alice.leaf, [], None)
        self.assertEqual(mode(path), 0o600)
        with open(path, "rb") as f:
            self.assertEqual(pkcs12.load_pkcs12(f.read(), None).additional_certs, [])

    def test_refuse_overwrite(self):
        path = os.path.join(self.dir, "alice.p12")
        with open(path, "wb") as f:
            f.write(b"precious")
        error = self.assertRaises(PKIErrorType, pki.write_p12, path, self.alice.private_key,
                                  self.alice.leaf, [], None)
        self.assertIn("already exists", str(error))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        self.assertEqual(os.listdir(self.dir), ["alice.p12"])
        pki.write_p12(path, self.alice.private_key, self.alice.leaf, [], None, overwrite=True)
        self.assertEqual(load_identity(path).leaf, self.alice.leaf)
        self.assertEqual(mode(path), 0o600)

    def test_refuse_symlink(self):
        target = os.path.join(self.dir, "elsewhere")
        link = os.path.join(self.dir, "alice.p12")
        os.symlink(target, link)
        self.assertRaises(PKIErrorType, pki.write_private_file, link, b"secret")
        self.assertFalse(os.path.exists(target))

    def test_overwrite_keeps_mode_tight(self):
        path = os.path.join(self.dir, "alice.p12")
        with open(path, "wb") as f:
            f.write(b"old")
        os.chmod(path, 0o644)
        pki.write_private_file(path, b"new", overwrite=True)
        self.assertEqual(mode(path), 0o600)

    def test_init_and_load_ca(self):
        directory = os.path.join(self.dir, "ca")
        key, cert = pki.init_ca(directory, "Example CA", "p256", 100)
        self.assertEqual(mode(directory), 0o700)
        self.assertEqual(mode(os.path.join(directory, "ca.key")), 0o600)
        self.assertEqual(sorted(os.listdir(directory)), ["ca.key", "ca.pem"])
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN PRIVATE KEY-----"))
        loaded_key, loaded_cert = pki.load_ca(directory)
        self.assertEqual(loaded_cert, cert)
        self.assertEqual(loaded_key.private_numbers(), key.private_numbers())
        self.assertEqual(pki.load_ca_chain(directory), [])

    def test_init_ca_in_empty_existing_directory(self):
        directory = os.path.join(self.dir, "ca")
        os.makedirs(directory, mode=0o755)
        pki.init_ca(directory)
        self.assertEqual(mode(directory), 0o700)

    def test_init_ca_refuses_non_empty(self):
        directory = os.path.join(self.dir, "ca")
        pki.init_ca(directory)
        error = self.assertRaises(PKIErrorType, pki.init_ca, directory)
        self.assertIn("not empty", str(error))
        error = self.assertRaises(
            PKIErrorType, pki.write_ca, directory, self.ca.key, self.ca.cert
        )
        self.assertIn("not empty", str(error))
        file_path = os.path.join(self.dir, "file")
        open(file_path, "w").close()
        self.assertIn("not a directory", str(self.assertRaises(
            PKIErrorType, pki.write_ca, file_path, self.ca.key, self.ca.cert)))

    def test_encrypted_ca_key(self):
        directory = os.path.join(self.dir, "ca")
        pki.init_ca(directory, password=b"capw")
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        pki.load_ca(directory, b"capw")
        self.assertIn("is encrypted", str(self.assertRaises(PKIErrorType, pki.load_ca, directory)))
        self.assertIn("wrong password",
                      str(self.assertRaises(PKIErrorType, pki.load_ca, directory, b"nope")))

    def write_ca_files(self, name, files):
        directory = os.path.join(self.dir, name)
        os.makedirs(directory)
        for filename, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(directory, filename)), exist_ok=True)
            with open(os.path.join(directory, filename), "wb") as f:
                f.write(data)
        return directory

    def key_pem(self, key, fmt=serialization.PrivateFormat.PKCS8):
        return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())

    def test_load_ca_alternative_names(self):
        cert_pem = self.ca.anchor_pem
        key_pem = self.key_pem(self.ca.key)
        for name, files in [
            ("crt", {"ca.crt": cert_pem, "ca-key.pem": key_pem}),
            ("openssl-ca", {"cacert.pem": cert_pem, "private/cakey.pem": key_pem}),
            ("combined", {"ca.pem": cert_pem + key_pem}),
        ]:
            directory = self.write_ca_files(name, files)
            self.assertEqual(pki.load_ca(directory)[1], self.ca.cert)

    def test_load_ca_traditional_key(self):
        ca = certs.make_ca("p256")
        directory = self.write_ca_files("trad", {
            "ca.pem": ca.anchor_pem,
            "ca.key": self.key_pem(ca.key, serialization.PrivateFormat.TraditionalOpenSSL),
        })
        self.assertEqual(pki.load_ca(directory)[1], ca.cert)

    def test_load_ca_chain(self):
        inter = certs.make_intermediate(self.ca)
        directory = self.write_ca_files("inter", {
            "ca.pem": inter.cert.public_bytes(serialization.Encoding.PEM) + self.ca.anchor_pem,
            "ca.key": self.key_pem(inter.key),
        })
        self.assertEqual(pki.load_ca(directory)[1], inter.cert)
        self.assertEqual(pki.load_ca_chain(directory), [self.ca.cert])

    def test_load_ca_errors(self):
        other = certs.key_for("ed25519", "not the CA key")
        cases = [
            ("nothing", None, "does not exist"),
            ("empty", {}, "no CA certificate"),
            ("nokey", {"ca.pem": self.ca.anchor_pem}, "no CA key"),
            ("badcert", {"ca.pem": b"junk", "ca.key": self.key_pem(self.ca.key)},
             "no readable certificate"),
            ("badkey", {"ca.pem": self.ca.anchor_pem, "ca.key": b"junk"},
             "does not hold a readable private key"),
            ("mismatch", {"ca.pem": self.ca.anchor_pem, "ca.key": self.key_pem(other)},
             "is not the key of"),
            ("leaf", {"ca.pem": self.alice.leaf.public_bytes(serialization.Encoding.PEM),
                      "ca.key": self.key_pem(self.alice.private_key)},
             "is not a CA certificate"),
        ]
        for name, files, message in cases:
            directory = (os.path.join(self.dir, name) if files is None
                         else self.write_ca_files(name, files))
            error = self.assertRaises(PKIErrorType, pki.load_ca, directory)
            self.assertIn(message, str(error), name)

    def test_load_ca_without_key_cert_sign(self):
        key = certs.key_for("ed25519", "no keyCertSign")
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "odd CA")])
        now = certs.utcnow()
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - DAY).not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                         False, False), critical=True)
            .sign(key, None)
        )
        directory = self.write_ca_files("nosign", {
            "ca.pem": cert.public_bytes(serialization.Encoding.PEM), "ca.key": self.key_pem(key)
        })
        self.assertIn("keyCertSign", str(self.assertRaises(PKIErrorType, pki.load_ca, directory)))


PKIErrorType = pki.PKIError


class CLITestsMixin:
    def run_cli(self, *argv, env=None):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            code = main(list(argv))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return code, out.getvalue(), err.getvalue()

    def setUpDirs(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        # No password from the developer's environment may leak into these tests.
        old = os.environ.pop(PASSWORD_ENV, None)
        if old is not None:
            self.addCleanup(os.environ.__setitem__, PASSWORD_ENV, old)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)


class CLITests(CLITestsMixin, SynchronousTestCase):
    def setUp(self):
        self.setUpDirs()

    def init_ca(self, *extra):
        code, out, err = self.run_cli("pki", "init-ca", self.path("ca"), *extra)
        self.assertEqual((code, err), (0, ""))
        return out

    def test_version(self):
        code, out, err = self.run_cli("--version")
        self.assertEqual((code, out, err), (0, f"sixchat {sixchat.__version__}\n", ""))

    def test_help(self):
        code, out, _ = self.run_cli("--help")
        self.assertEqual(code, 0)
        self.assertIn("pki", out)
        code, out, _ = self.run_cli("pki", "issue", "--help")
        self.assertEqual(code, 0)
        self.assertIn("--password-file", out)

    def test_no_command(self):
        code, out, err = self.run_cli()
        self.assertEqual(code, 2)
        self.assertIn("COMMAND", err)

    def test_usage_errors_are_one_line(self):
        for argv, text in [
            (["frobnicate"], "invalid choice: 'frobnicate'"),
            (["pki"], "the following arguments are required: COMMAND"),
            (["pki", "issue", "alice@example.com"], "required: --ca"),
            (["pki", "issue", "alice@example.com", "--ca", "x", "--days", "0"],
             "must be at least 1"),
            (["pki", "issue", "alice@example.com", "--ca", "x", "--key-type", "dsa"],
             "invalid choice: 'dsa'"),
            (["pki", "init-ca", "x", "--days", "soon"], "not a whole number"),
        ]:
            code, out, err = self.run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(out, "")
            self.assertTrue(err.startswith("sixchat: error: "), err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(text, err)

    def test_usage_errors_suggest_the_closest_command_choice_or_option(self):
        for argv, text in [
            (["sned", "bob@example.com", "hi"],
             "invalid choice: 'sned' (choose from 'pki', 'probe', "),
            (["pki", "isue", "alice@example.com"],
             "; did you mean 'issue'? (see 'sixchat pki --help')"),
            (["pki", "issue", "alice@example.com", "--ca", "x", "--key-type", "ed2551"],
             "; did you mean 'ed25519'? (see 'sixchat pki issue --help')"),
            # A subcommand reports its own unknown options, matched against its own options.
            (["send", "--wiat", "5", "bob@example.com", "hi"],
             "unrecognized arguments: --wiat hi; did you mean --wait? (see 'sixchat send --help')"),
            (["send", "--thred=t", "bob@example.com", "hi"], "; did you mean --thread?"),
        ]:
            code, out, err = self.run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(out, "")
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(text, err)
        _, _, err = self.run_cli("sned", "bob@example.com", "hi")
        self.assertIn("; did you mean 'send'? (see 'sixchat --help')", err)
        # An option of the agent given to a command that talks to it says so.
        _, _, err = self.run_cli("send", "--cert", "me.p12", "bob@example.com", "hi")
        self.assertIn(
            "unrecognized arguments: --cert hi: --cert is an option of the agent (twistd -n "
            "sixchat --cert …); this command talks to the running agent, chosen with --as "
            "IDENTITY or --data-dir DIR (see 'sixchat send --help')",
            err,
        )
        # Nothing close: no guess (and the dashes alone do not make "--cret" look like
        # "--since").
        for argv in (["frobnicate"], ["inbox", "--cret", "x"]):
            _, _, err = self.run_cli(*argv)
            self.assertNotIn("did you mean", err)
            self.assertTrue(err.startswith("sixchat: error: "), err)

    def test_choice_suggestions_read_both_argparse_wordings(self):
        # Python 3.12 lists the choices without quotes.
        from sixchat.cli import build_parser

        parser = build_parser()
        for message in ("argument COMMAND: invalid choice: 'sned' (choose from 'pki', 'send')",
                        "argument COMMAND: invalid choice: 'sned' (choose from pki, send)"):
            self.assertEqual(parser._suggestion(message), "; did you mean 'send'?")

    def test_init_ca(self):
        out = self.init_ca("--name", "Example CA", "--key-type", "p384", "--days", "30")
        self.assertIn("created CA 'Example CA'", out)
        self.assertIn(self.path("ca", "ca.pem"), out)
        self.assertIn("NOT encrypted", out)
        key, cert = pki.load_ca(self.path("ca"))
        self.assertEqual(cert.subject.rfc4514_string(), "CN=Example CA")
        self.assertEqual(key.curve.name, "secp384r1")
        self.assertEqual(mode(self.path("ca")), 0o700)
        self.assertEqual(mode(self.path("ca", "ca.key")), 0o600)

    def test_init_ca_refuses_existing(self):
        self.init_ca()
        code, out, err = self.run_cli("pki", "init-ca", self.path("ca"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: {self.path('ca')} is not empty; "
                              "refusing to create a CA there\n")

    def test_init_ca_encrypted(self):
        with open(self.path("capw"), "w") as f:
            f.write("ca secret\n")
        out = self.init_ca("--password-file", self.path("capw"))
        self.assertIn("encrypted", out)
        self.assertNotIn("NOT encrypted", out)
        pki.load_ca(self.path("ca"), b"ca secret")
        code, _, err = self.run_cli("pki", "issue", "a@example.com", "--ca", self.path("ca"),
                                    "--out", self.path("a.p12"))
        self.assertEqual(code, 1)
        self.assertIn("--ca-password-file", err)
        code, _, err = self.run_cli("pki", "issue", "a@example.com", "--ca", self.path("ca"),
                                    "--out", self.path("a.p12"),
                                    "--ca-password-file", self.path("capw"))
        self.assertEqual(code, 0, err)

    def test_issue(self):
        self.init_ca()
        code, out, err = self.run_cli(
            "pki", "issue", "alice@Example.COM", "--ca", self.path("ca"),
            "--out", self.path("alice.p12"), "--key-type", "p256", "--days", "30",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(err, f"sixchat: warning: {self.path('alice.p12')} is not "
                              f"password-protected (use --password-file or {PASSWORD_ENV})\n")
        self.assertEqual(mode(self.path("alice.p12")), 0o600)
        ident = load_identity(self.path("alice.p12"))
        self.assertEqual(ident.names, ("alice@example.com",))
        self.assertEqual(ident.alg, "ecdsa-secp256r1-sha256")
        self.assertIn(f"wrote {self.path('alice.p12')} (PKCS#12, mode 0600, NOT "
                      "password-protected)", out)
        self.assertIn(f"SPKI SHA-256: {ident.fingerprint()}", out)
        self.assertIn("ECDSA P-256 (alg ecdsa-secp256r1-sha256)", out)
        lifetime = ident.leaf.not_valid_after_utc - ident.leaf.not_valid_before_utc
        self.assertEqual(lifetime, 30 * DAY + pki.CLOCK_SKEW)
        # The CA certificate travels in the file but is not sent to peers.
        with open(self.path("alice.p12"), "rb") as f:
            p12 = pkcs12.load_pkcs12(f.read(), None)
        ca_cert = pki.load_ca(self.path("ca"))[1]
        self.assertEqual([c.certificate for c in p12.additional_certs], [ca_cert])
        self.assertEqual(ident.chain_der, [ident.leaf_der])
        TrustStore.from_paths(self.path("ca", "ca.pem")).validate(ident.chain_der,
                                                                  certs.utcnow())

    def test_issue_several_identities_and_default_out(self):
        self.init_ca()
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        code, out, err = self.run_cli("pki", "issue", "bob@example.com", "Bob@EXAMPLE.com",
                                      "bob@example.COM", "--ca", "ca")
        self.assertEqual(code, 0, err)
        ident = load_identity("bob@example.com.p12")
        self.assertEqual(ident.names, ("bob@example.com", "Bob@example.com"))

    def test_issue_with_password_file(self):
        self.init_ca()
        with open(self.path("pw"), "wb") as f:
            f.write(b"s3cret\n")
        code, out, err = self.run_cli(
            "pki", "issue", "alice@example.com", "--ca", self.path("ca"),
            "--out", self.path("alice.p12"), "--password-file", self.path("pw"),
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("(PKCS#12, mode 0600, password-protected)", out)
        self.assertEqual(load_identity(self.path("alice.p12"), b"s3cret").names,
                         ("alice@example.com",))
        code, out, err = self.run_cli("pki", "show", self.path("alice.p12"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: {self.path('alice.p12')} is password-protected "
                              f"(use --password-file or {PASSWORD_ENV})\n")
        code, out, err = self.run_cli("pki", "show", self.path("alice.p12"),
                                      env={PASSWORD_ENV: "wrong"})
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: wrong password for {self.path('alice.p12')} "
                              f"(use --password-file or {PASSWORD_ENV})\n")
        code, out, err = self.run_cli("pki", "show", self.path("alice.p12"),
                                      "--password-file", self.path("pw"))
        self.assertEqual((code, err), (0, ""))

    def test_issue_with_environment_password(self):
        self.init_ca()
        code, out, err = self.run_cli(
            "pki", "issue", "alice@example.com", "--ca", self.path("ca"),
            "--out", self.path("alice.p12"), "--key-type", "rsa2048",
            env={PASSWORD_ENV: "from env"},
        )
        self.assertEqual((code, err), (0, ""))
        ident = load_identity(self.path("alice.p12"), b"from env")
        self.assertEqual(ident.alg, "rsa-pss-sha256")
        self.assertTrue(ext(ident.leaf, x509.KeyUsage).value.key_encipherment)

    def test_issue_also_pem(self):
        self.init_ca()
        with open(self.path("pw"), "wb") as f:
            f.write(b"pempw\n")
        code, out, err = self.run_cli(
            "pki", "issue", "alice@example.com", "--ca", self.path("ca"),
            "--out", self.path("alice.p12"), "--also-pem", "--password-file", self.path("pw"),
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(mode(self.path("alice.key")), 0o600)
        self.assertEqual(mode(self.path("alice.pem")), 0o644)
        with open(self.path("alice.key"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        from_pem = load_identity(self.path("alice.pem"), b"pempw", self.path("alice.key"))
        from_p12 = load_identity(self.path("alice.p12"), b"pempw")
        self.assertEqual(from_pem.leaf_der, from_p12.leaf_der)
        self.assertEqual(from_pem.spki_sha256, from_p12.spki_sha256)
        self.assertIn(f"wrote {self.path('alice.key')} (private key, mode 0600)", out)

    def test_issue_refuses_to_overwrite(self):
        self.init_ca()
        with open(self.path("alice.p12"), "wb") as f:
            f.write(b"precious")
        argv = ["pki", "issue", "alice@example.com", "--ca", self.path("ca"),
                "--out", self.path("alice.p12")]
        code, out, err = self.run_cli(*argv)
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: {self.path('alice.p12')} already exists "
                              "(remove it or use --force)\n")
        with open(self.path("alice.p12"), "rb") as f:
            self.assertEqual(f.read(), b"precious")
        code, out, err = self.run_cli(*argv, "--force")
        self.assertEqual(code, 0, err)
        self.assertEqual(load_identity(self.path("alice.p12")).names, ("alice@example.com",))

    def test_issue_invalid_identity(self):
        self.init_ca()
        for bad in ["alice", "alice@b\u00fccher.example", "a b@example.com", "a@@example.com"]:
            code, out, err = self.run_cli("pki", "issue", bad, "--ca", self.path("ca"),
                                          "--out", self.path("x.p12"))
            self.assertEqual(code, 2, bad)
            self.assertIn("is not a valid identity", err)
            self.assertEqual(err.count("\n"), 1)
        self.assertFalse(os.path.exists(self.path("x.p12")))

    def test_issue_missing_ca(self):
        code, out, err = self.run_cli("pki", "issue", "a@example.com", "--ca", self.path("no"),
                                      "--out", self.path("a.p12"))
        self.assertEqual(code, 1)
        self.assertIn("does not exist (create one with 'sixchat pki init-ca')", err)

    def test_issue_missing_password_file(self):
        self.init_ca()
        code, out, err = self.run_cli("pki", "issue", "a@example.com", "--ca", self.path("ca"),
                                      "--out", self.path("a.p12"),
                                      "--password-file", self.path("nope"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: password file {self.path('nope')} does not "
                              "exist\n")

    def test_issue_expired_ca(self):
        now = certs.utcnow()
        key, cert = pki.create_ca("Old CA", not_before=now - 10 * DAY, not_after=now - DAY)
        pki.write_ca(self.path("old"), key, cert)
        code, out, err = self.run_cli("pki", "issue", "a@example.com", "--ca", self.path("old"),
                                      "--out", self.path("a.p12"))
        self.assertEqual(code, 1)
        self.assertIn("expired on", err)

    def test_issue_clamped_to_ca(self):
        now = certs.utcnow()
        key, cert = pki.create_ca("Short CA", not_after=now + 10 * DAY)
        pki.write_ca(self.path("short"), key, cert)
        code, out, err = self.run_cli("pki", "issue", "a@example.com", "--ca",
                                      self.path("short"), "--out", self.path("a.p12"))
        self.assertEqual(code, 0, err)
        self.assertIn("(limited by the CA's validity)", out)
        leaf = load_identity(self.path("a.p12")).leaf
        self.assertEqual(leaf.not_valid_after_utc, cert.not_valid_after_utc)

    def test_issue_under_intermediate(self):
        root = certs.make_ca()
        inter = certs.make_intermediate(root, "CLI intermediate")
        directory = self.path("inter")
        pki.write_ca(directory, inter.key, inter.cert)
        with open(os.path.join(directory, "ca.pem"), "ab") as f:
            f.write(root.anchor_pem)
        code, out, err = self.run_cli("pki", "issue", "a@example.com", "--ca", directory,
                                      "--out", self.path("a.p12"))
        self.assertEqual(code, 0, err)
        ident = load_identity(self.path("a.p12"))
        self.assertEqual(ident.chain_der, [ident.leaf_der, inter.cert_der])
        certs.trust_for(root).validate(ident.chain_der, certs.utcnow())

    def test_show(self):
        self.init_ca("--name", "Show CA")
        self.run_cli("pki", "issue", "alice@example.com", "--ca", self.path("ca"),
                     "--out", self.path("alice.p12"))
        ident = load_identity(self.path("alice.p12"))
        code, out, err = self.run_cli("pki", "show", self.path("alice.p12"))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("identity with private key", out)
        self.assertIn("identities:   alice@example.com\n", out)
        self.assertIn("key:          Ed25519 (alg ed25519)", out)
        self.assertIn("(valid now)", out)
        self.assertIn("issuer:       CN=Show CA", out)
        self.assertIn(f"serial:       {ident.leaf.serial_number:x}", out)
        self.assertIn(f"SPKI SHA-256: {ident.fingerprint()}", out)
        self.assertIn("chain:        1 certificate(s) sent to peers", out)

    def test_show_certificate_only(self):
        self.init_ca("--name", "Show CA")
        code, out, err = self.run_cli("pki", "show", self.path("ca", "ca.pem"))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("1 certificate(s), no private key", out)
        self.assertIn("[CA certificate]", out)
        self.assertIn("subject:      CN=Show CA", out)

    def test_show_errors(self):
        code, out, err = self.run_cli("pki", "show", self.path("missing.p12"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"sixchat: error: {self.path('missing.p12')} does not exist\n")
        with open(self.path("junk"), "wb") as f:
            f.write(b"junk")
        code, out, err = self.run_cli("pki", "show", self.path("junk"))
        self.assertEqual(code, 1)
        self.assertIn("is neither a PKCS#12", err)


class OpenSSLCATests(CLITestsMixin, SynchronousTestCase):
    """A CA made with the real C{openssl} tool, then used by C{sixchat pki issue}."""

    CONFIG = (
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
        "[dn]\nCN = OpenSSL Made CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )

    def setUp(self):
        if OPENSSL is None:
            raise self.skipTest("the openssl command is not installed")
        self.setUpDirs()
        with open(self.path("openssl.cnf"), "w") as f:
            f.write(self.CONFIG)

    def openssl(self, *args):
        result = subprocess.run([OPENSSL, *args], capture_output=True, cwd=self.dir, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))

    def req(self, directory, *key_args, cert_name="ca.pem", key_name="ca.key"):
        os.makedirs(self.path(directory))
        self.openssl("req", "-x509", "-config", "openssl.cnf", *key_args, "-nodes",
                     "-keyout", os.path.join(directory, key_name),
                     "-out", os.path.join(directory, cert_name), "-days", "30")

    def issue_and_validate(self, directory, key_type="ed25519"):
        out = self.path(f"{directory}.p12")
        code, stdout, err = self.run_cli("pki", "issue", "carol@example.com", "--ca",
                                         self.path(directory), "--out", out,
                                         "--key-type", key_type)
        self.assertEqual(code, 0, err)
        ident = load_identity(out)
        self.assertEqual(ident.names, ("carol@example.com",))
        anchors = [n for n in os.listdir(self.path(directory)) if n.startswith(("ca.", "cacert"))
                   and not n.endswith(".key")]
        trust = TrustStore.from_paths(self.path(directory, anchors[0]))
        peer = trust.validate(ident.chain_der, certs.utcnow())
        self.assertEqual(peer.chain[-1].subject.rfc4514_string(), "CN=OpenSSL Made CA")
        return ident

    def test_ed25519(self):
        self.req("ed", "-newkey", "ed25519")
        with open(self.path("ed", "ca.key"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN PRIVATE KEY-----"))
        self.issue_and_validate("ed")

    def test_ec_pkcs8(self):
        self.req("ec", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
        ident = self.issue_and_validate("ec", "p384")
        self.assertEqual(ident.leaf.signature_hash_algorithm.name, "sha256")

    def test_rsa(self):
        self.req("rsa", "-newkey", "rsa:2048")
        self.issue_and_validate("rsa", "rsa2048")

    def test_traditional_ec_key_and_other_names(self):
        os.makedirs(self.path("trad"))
        self.openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout",
                     "-out", "trad/ca-key.pem")
        with open(self.path("trad", "ca-key.pem"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN EC PRIVATE KEY-----"))
        self.openssl("req", "-x509", "-config", "openssl.cnf", "-key", "trad/ca-key.pem",
                     "-out", "trad/ca.crt", "-days", "30")
        self.issue_and_validate("trad")

    def test_traditional_rsa_key(self):
        os.makedirs(self.path("trsa"))
        self.openssl("genrsa", "-traditional", "-out", "trsa/ca.key", "2048")
        with open(self.path("trsa", "ca.key"), "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN RSA PRIVATE KEY-----"))
        self.openssl("req", "-x509", "-config", "openssl.cnf", "-key", "trsa/ca.key",
                     "-out", "trsa/ca.pem", "-days", "30")
        self.issue_and_validate("trsa")

    def test_openssl_reads_our_p12(self):
        """Interoperability the other way: openssl opens what we write."""
        key, cert = pki.init_ca(self.path("ours"))
        ident = certs.make_identity("dave@example.com", certs.TestCA(key, cert, cert))
        path = certs.write_identity_p12(self.dir, ident, b"s3cret", "dave.p12")
        self.openssl("pkcs12", "-in", "dave.p12", "-passin", "pass:s3cret", "-nokeys",
                     "-out", "dave-certs.pem")
        with open(self.path("dave-certs.pem"), "rb") as f:
            self.assertIn(ident.leaf, x509.load_pem_x509_certificates(f.read()))
        self.assertTrue(os.path.exists(path))


class SubprocessTests(SynchronousTestCase):
    """The real entry point, as a user runs it."""

    def run_module(self, *args, cwd):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop(PASSWORD_ENV, None)
        return subprocess.run([sys.executable, "-m", "sixchat.cli", *args], capture_output=True,
                              text=True, cwd=cwd, env=env, timeout=120)

    def test_issue(self):
        directory = self.mktemp()
        os.makedirs(directory)
        result = self.run_module("pki", "init-ca", "ca", "--name", "Subprocess CA",
                                 cwd=directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.run_module("pki", "issue", "erin@example.com", "--ca", "ca",
                                 "--out", "erin.p12", cwd=directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("wrote erin.p12", result.stdout)
        self.assertIn("not password-protected", result.stderr)
        path = os.path.join(directory, "erin.p12")
        self.assertEqual(mode(path), 0o600)
        ident = load_identity(path)
        self.assertIn(ident.fingerprint(), result.stdout)

    def test_failure_has_no_traceback(self):
        directory = self.mktemp()
        os.makedirs(directory)
        result = self.run_module("pki", "show", "nope.p12", cwd=directory)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "sixchat: error: nope.p12 does not exist\n")
        result = self.run_module("--version", cwd=directory)
        self.assertEqual((result.returncode, result.stdout.strip()),
                         (0, f"sixchat {sixchat.__version__}"))

