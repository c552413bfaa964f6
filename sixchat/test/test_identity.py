"""
Tests for L{sixchat.identity}: identity comparison (spec §3), password sources, and loading
our own identity from PKCS#12 and PEM files.
"""

from __future__ import annotations

import hashlib
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from sixchat import pki, sigalgs
from sixchat.errors import SixchatError
from sixchat.identity import (
    PASSWORD_ENV,
    Identity,
    IdentityLoadError,
    is_valid_identity,
    load_identity,
    normalize_identity,
    read_password,
    same_identity,
)
from sixchat.test import certs

VECTORS = os.path.join(os.path.dirname(__file__), "vectors")
HINT = "(use --password-file or SIXCHAT_P12_PASSWORD)"


def pem(*items) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    return out


class ComparisonTests(SynchronousTestCase):
    def test_normalize(self):
        self.assertEqual(normalize_identity("Alice@EXAMPLE.Com"), "Alice@example.com")
        self.assertEqual(normalize_identity("alice@xn--BCHER-KVA.example"),
                         "alice@xn--bcher-kva.example")

    def test_normalize_folds_ascii_only(self):
        """Only A-Z fold: a non-ASCII domain never collides with an ASCII one."""
        self.assertEqual(normalize_identity("a@\u0130X.example"), "a@\u0130x.example")
        self.assertEqual(normalize_identity("a@K.example"), "a@k.example")
        self.assertEqual(normalize_identity("a@\u212a.example"), "a@\u212a.example")  # Kelvin

    def test_normalize_without_at(self):
        self.assertRaises(ValueError, normalize_identity, "alice.example.com")

    def test_same(self):
        self.assertTrue(same_identity("alice@example.com", "alice@EXAMPLE.COM"))
        self.assertTrue(same_identity("Alice@example.com", "Alice@Example.com"))
        self.assertFalse(same_identity("Alice@example.com", "alice@example.com"))
        self.assertFalse(same_identity("alice@example.com", "alice@example.org"))
        self.assertFalse(same_identity("alice", "alice"))
        self.assertFalse(same_identity("alice@example.com", "alice@example.com."))

    def test_valid(self):
        for good in [
            "alice@example.com",
            "Alice.B+tag@Example.COM",
            "bob@localhost",
            "x@xn--bcher-kva.example",
            "o'brien@a-b.example",
            "a" * 64 + "@example.com",
            "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61,
        ]:
            self.assertTrue(is_valid_identity(good), good)

    def test_invalid(self):
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@@example.com",
            "a@b@example.com",
            "alice @example.com",
            "alice@example .com",
            "alice@example.com ",
            "ali\tce@example.com",
            "alice\x00@example.com",
            "alice@exa\x7fmple.com",
            "alice@b\u00fccher.example",
            "j\u00f6rg@example.com",
            "alice@-example.com",
            "alice@example-.com",
            "alice@example..com",
            "alice@example.com.",
            "alice@.example.com",
            "alice@[127.0.0.1]",
            "alice@exa_mple.com",
            "a" * 65 + "@example.com",
            "a@" + "b" * 64 + ".com",
            "a@" + ".".join(["b" * 63] * 4),
            None,
            b"alice@example.com",
        ]:
            self.assertFalse(is_valid_identity(bad), repr(bad))


class PasswordTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def file(self, data: bytes) -> str:
        path = os.path.join(self.dir, "pw")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_file_first_line(self):
        self.assertEqual(read_password(self.file(b"s3cret\nsecond line\n"), {}), b"s3cret")
        self.assertEqual(read_password(self.file(b"s3cret\r\n"), {}), b"s3cret")
        self.assertEqual(read_password(self.file(b"no newline"), {}), b"no newline")
        self.assertEqual(read_password(self.file(b" spaces kept \n"), {}), b" spaces kept ")
        self.assertEqual(read_password(self.file(b"\n"), {}), b"")
        self.assertEqual(read_password(self.file("p\u00e4ss\n".encode()), {}),
                         "p\u00e4ss".encode())

    def test_file_wins(self):
        path = self.file(b"from-file\n")
        self.assertEqual(read_password(path, {PASSWORD_ENV: "from-env"}), b"from-file")

    def test_environment(self):
        self.assertEqual(read_password(None, {PASSWORD_ENV: "from-env"}), b"from-env")
        self.assertEqual(read_password(None, {PASSWORD_ENV: "p\u00e4ss"}), "p\u00e4ss".encode())

    def test_default_environment(self):
        old = os.environ.pop(PASSWORD_ENV, None)
        self.addCleanup(
            lambda: os.environ.__setitem__(PASSWORD_ENV, old) if old is not None
            else os.environ.pop(PASSWORD_ENV, None)
        )
        self.assertIsNone(read_password(None))
        os.environ[PASSWORD_ENV] = "live"
        self.assertEqual(read_password(None), b"live")

    def test_neither(self):
        self.assertIsNone(read_password(None, {}))
        self.assertIsNone(read_password(None, {PASSWORD_ENV: ""}))
        self.assertIsNone(read_password(None, {"OTHER": "x"}))

    def test_missing_file(self):
        error = self.assertRaises(
            IdentityLoadError, read_password, os.path.join(self.dir, "nope"), {}
        )
        self.assertEqual(error.code, "missing")
        self.assertIn("password file", str(error))
        self.assertIn("does not exist", str(error))

    def test_unreadable_file(self):
        error = self.assertRaises(IdentityLoadError, read_password, self.dir, {})
        self.assertEqual(error.code, "unreadable")
        self.assertTrue(str(error).startswith(f"cannot read password file {self.dir}"))


class LoadTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.ca = certs.make_ca()
        self.inter = certs.make_intermediate(self.ca)
        self.alice = certs.make_identity("alice@example.com", self.inter)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def failure(self, code, *args, **kwargs) -> str:
        error = self.assertRaises(IdentityLoadError, load_identity, *args, **kwargs)
        self.assertIsInstance(error, SixchatError)
        self.assertEqual(error.code, code)
        message = str(error)
        self.assertNotIn("\n", message)
        return message

    def assertAlice(self, ident: Identity):
        self.assertEqual(ident.names, ("alice@example.com",))
        self.assertEqual(ident.default_name, "alice@example.com")
        self.assertEqual(ident.leaf, self.alice.leaf)
        self.assertEqual(ident.leaf_der, self.alice.leaf_der)
        self.assertEqual(ident.chain_der, [self.alice.leaf_der, self.inter.cert_der])
        self.assertEqual(ident.alg, "ed25519")
        spki = self.alice.leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(ident.spki_sha256, hashlib.sha256(spki).digest())
        self.assertEqual(ident.fingerprint(), hashlib.sha256(spki).hexdigest())
        self.assertEqual(ident.leaf_sha256, hashlib.sha256(self.alice.leaf_der).digest())
        signature = ident.sign(b"to be signed")
        sigalgs.verify(ident.leaf.public_key(), ident.alg, b"to be signed", signature)

    # -- PKCS#12

    def test_p12_without_password(self):
        path = certs.write_identity_p12(self.dir, self.alice)
        self.assertAlice(load_identity(path))

    def test_p12_spare_password(self):
        """A password for an unprotected file is harmless."""
        path = certs.write_identity_p12(self.dir, self.alice)
        self.assertAlice(load_identity(path, b"not needed"))

    def test_p12_with_password(self):
        path = certs.write_identity_p12(self.dir, self.alice, b"s3cret")
        self.assertAlice(load_identity(path, b"s3cret"))

    def test_p12_root_included_is_dropped(self):
        path = os.path.join(self.dir, "full.p12")
        pki.write_p12(path, self.alice.private_key, self.alice.leaf,
                      [self.inter.cert, self.ca.cert], None)
        self.assertAlice(load_identity(path))

    def test_p12_wrong_password(self):
        path = certs.write_identity_p12(self.dir, self.alice, b"s3cret", "alice.p12")
        message = self.failure("password", path, b"wrong")
        self.assertEqual(message, f"wrong password for {path} {HINT}")

    def test_p12_missing_password(self):
        path = certs.write_identity_p12(self.dir, self.alice, b"s3cret", "alice.p12")
        message = self.failure("password", path)
        self.assertEqual(message, f"{path} is password-protected {HINT}")

    def test_p12_by_content_not_name(self):
        path = certs.write_identity_p12(self.dir, self.alice, None, "alice.pem")
        self.assertAlice(load_identity(path))

    def test_p12_key_in_other_order(self):
        """The leaf is whichever certificate matches the key, not the first."""
        from cryptography.hazmat.primitives.serialization import pkcs12

        data = pkcs12.serialize_key_and_certificates(
            None, self.alice.private_key, None, [self.inter.cert, self.alice.leaf],
            serialization.NoEncryption(),
        )
        self.assertAlice(load_identity(self.write("odd.p12", data)))

    def test_p12_without_certificate(self):
        from cryptography.hazmat.primitives.serialization import pkcs12

        data = pkcs12.serialize_key_and_certificates(
            None, self.alice.private_key, None, None, serialization.NoEncryption()
        )
        message = self.failure("format", self.write("keyonly.p12", data))
        self.assertIn("holds no certificate", message)

    def test_p12_without_key(self):
        from cryptography.hazmat.primitives.serialization import pkcs12

        data = pkcs12.serialize_key_and_certificates(
            None, None, self.alice.leaf, None, serialization.NoEncryption()
        )
        message = self.failure("no_key", self.write("certonly.p12", data))
        self.assertIn("has no private key", message)

    def test_damaged_p12(self):
        """A damaged file fails its MAC just like a protected one opened without password."""
        data = bytearray(open(certs.write_identity_p12(self.dir, self.alice), "rb").read())
        data[len(data) // 2] ^= 0xFF
        message = self.failure("password", self.write("damaged.p12", bytes(data)))
        self.assertIn("password-protected", message)

    # -- PEM

    def test_pem_one_file(self):
        path = self.write(
            "alice.pem", pem(self.alice.leaf, self.alice.private_key, self.inter.cert)
        )
        self.assertAlice(load_identity(path))

    def test_pem_key_first_and_chain_first(self):
        path = self.write(
            "alice.pem",
            pem(self.alice.private_key, self.ca.cert, self.inter.cert, self.alice.leaf),
        )
        self.assertAlice(load_identity(path))

    def test_pem_separate_key(self):
        cert_path = self.write("alice.crt", pem(self.alice.leaf, self.inter.cert))
        key_path = self.write("alice.key", pem(self.alice.private_key))
        self.assertAlice(load_identity(cert_path, key_path=key_path))

    def test_der_key_file(self):
        cert_path = self.write("alice.crt", pem(self.alice.leaf, self.inter.cert))
        key_path = self.write("alice.der", self.alice.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        self.assertAlice(load_identity(cert_path, key_path=key_path))

    def test_pem_traditional_keys(self):
        for key_type in ("p256", "rsa2048"):
            ident = certs.make_identity(f"{key_type}@example.com", self.ca, key_type)
            key_pem = ident.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            path = self.write(f"{key_type}.pem", pem(ident.leaf) + key_pem)
            loaded = load_identity(path)
            self.assertEqual(loaded.spki_sha256, ident.spki_sha256)
            self.assertEqual(loaded.alg, ident.alg)
            self.assertEqual(loaded.chain_der, [ident.leaf_der])

    def test_pem_encrypted_key(self):
        encrypted = self.alice.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
        path = self.write("alice.pem", pem(self.alice.leaf, self.inter.cert) + encrypted)
        self.assertAlice(load_identity(path, b"s3cret"))
        message = self.failure("password", path)
        self.assertEqual(message, f"the private key in {path} is encrypted {HINT}")
        message = self.failure("password", path, b"wrong")
        self.assertEqual(message, f"wrong password for {path} {HINT}")

    def test_pem_traditional_encrypted_key(self):
        ident = certs.make_identity("rsa@example.com", self.ca, "rsa2048")
        encrypted = ident.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
        self.assertIn(b"Proc-Type: 4,ENCRYPTED", encrypted)
        path = self.write("rsa.pem", pem(ident.leaf) + encrypted)
        self.assertEqual(load_identity(path, b"s3cret").spki_sha256, ident.spki_sha256)
        self.assertEqual(self.failure("password", path, b"wrong"),
                         f"wrong password for {path} {HINT}")
        self.assertEqual(self.failure("password", path),
                         f"the private key in {path} is encrypted {HINT}")

    def test_pem_named_p12(self):
        path = self.write(
            "alice.p12", pem(self.alice.leaf, self.alice.private_key, self.inter.cert)
        )
        self.assertAlice(load_identity(path))

    def test_pem_without_key(self):
        path = self.write("alice.pem", pem(self.alice.leaf))
        message = self.failure("no_key", path)
        self.assertIn(f"{path} has no private key", message)

    def test_pem_without_certificate(self):
        path = self.write("key.pem", pem(self.alice.private_key))
        message = self.failure("format", path)
        self.assertEqual(message, f"{path} holds no certificate")

    def test_pem_damaged_certificate(self):
        path = self.write(
            "bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        self.assertIn("damaged", self.failure("format", path))

    def test_pem_damaged_key(self):
        path = self.write(
            "bad.pem", pem(self.alice.leaf)
            + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        self.assertIn("damaged", self.failure("format", path))

    def test_key_file_without_key(self):
        cert_path = self.write("alice.crt", pem(self.alice.leaf))
        key_path = self.write("alice.key", pem(self.alice.leaf))
        self.assertIn("holds no private key", self.failure("no_key", cert_path, key_path=key_path))
        junk = self.write("junk.key", b"\x01\x02")
        self.assertIn("is not a private key", self.failure("format", cert_path, key_path=junk))

    # -- files and formats

    def test_missing_file(self):
        path = os.path.join(self.dir, "alice.p12")
        self.assertEqual(self.failure("missing", path), f"{path} does not exist")

    def test_missing_key_file(self):
        cert_path = self.write("alice.crt", pem(self.alice.leaf))
        missing = os.path.join(self.dir, "nope.key")
        self.assertEqual(self.failure("missing", cert_path, key_path=missing),
                         f"{missing} does not exist")

    def test_directory(self):
        self.assertIn("is a directory", self.failure("unreadable", self.dir))

    def test_unreadable(self):
        if os.geteuid() == 0:
            raise self.skipTest("root reads files whatever their mode")
        path = certs.write_identity_p12(self.dir, self.alice)
        os.chmod(path, 0)
        self.assertIn("cannot read", self.failure("unreadable", path))

    def test_neither_format(self):
        for data in (b"", b"hello world\n", b"\x30\x03\x02\x01\x02", b"\x30\x03\x02\x01",
                     b"\x30\x85\x00", b"\x01" + os.urandom(63)):
            path = self.write("junk.p12", data)
            message = self.failure("format", path)
            self.assertEqual(message, f"{path} is neither a PKCS#12 (.p12/.pfx) nor a PEM file")

    # -- checks

    def test_key_mismatch(self):
        other = certs.key_for("ed25519", "someone else")
        path = self.write("mixed.pem", pem(self.alice.leaf, other))
        self.assertEqual(self.failure("key_mismatch", path),
                         f"the private key in {path} does not match its certificate")

    def test_key_mismatch_direct(self):
        other = certs.key_for("ed25519", "someone else")
        error = self.assertRaises(IdentityLoadError, Identity, other, self.alice.leaf)
        self.assertEqual(error.code, "key_mismatch")

    def test_no_rfc822_name(self):
        ident = certs.make_identity("alice@example.com", self.ca, no_san=True, check=False)
        path = self.write("anon.pem", pem(ident.leaf, ident.private_key))
        message = self.failure("no_identity", path)
        self.assertIn("no rfc822Name", message)

    def test_forbidden_key_types(self):
        for key_type, text in [("p521", "secp521r1"), ("rsa1024", "1024 bits"),
                               ("ed448", "Ed448")]:
            ident = certs.make_identity(
                "alice@example.com", self.ca, key=certs.key_for(key_type), check=False
            )
            self.assertEqual(ident.alg, "")
            path = self.write(f"{key_type}.pem", pem(ident.leaf, ident.private_key))
            message = self.failure("key_type", path)
            self.assertIn(text, message)
            self.assertIn("use an Ed25519, ECDSA P-256/P-384 or RSA", message)

    def test_chain_too_long(self):
        ca = certs.make_ca(name="long chain root")
        for i in range(8):
            ca = certs.make_intermediate(ca, f"long level {i}", path_length=None)
        ident = certs.make_identity("alice@example.com", ca, check=False)
        path = self.write("long.pem", pem(ident.leaf, ident.private_key, *ca.chain))
        self.assertIn("at most 8", self.failure("chain", path))


class IdentityTests(SynchronousTestCase):
    def setUp(self):
        self.ca = certs.make_ca()

    def test_several_names(self):
        ident = certs.make_identity(
            ["bob@example.com", "Robert@Example.ORG", "example.net"], self.ca
        )
        self.assertEqual(ident.names, ("bob@example.com", "Robert@Example.ORG"))
        self.assertEqual(ident.default_name, "bob@example.com")
        self.assertTrue(ident.serves("bob@EXAMPLE.com"))
        self.assertTrue(ident.serves("Robert@example.org"))
        self.assertFalse(ident.serves("robert@example.org"))
        self.assertFalse(ident.serves("example.net"))
        self.assertFalse(ident.serves("carol@example.com"))
        self.assertIn("bob@example.com", repr(ident))

    def test_key_types(self):
        for key_type, alg in [
            ("ed25519", sigalgs.ED25519),
            ("p256", sigalgs.ECDSA_P256),
            ("p384", sigalgs.ECDSA_P384),
            ("rsa2048", sigalgs.RSA_PSS),
            ("rsa3072", sigalgs.RSA_PSS),
        ]:
            ident = certs.make_identity("alice@example.com", self.ca, key_type)
            self.assertEqual(ident.alg, alg)
            self.assertEqual(ident.alg, sigalgs.alg_for_private_key(ident.private_key))
            sigalgs.verify(ident.leaf.public_key(), alg, b"m", ident.sign(b"m"))

    def test_self_signed_leaf_kept(self):
        key = certs.key_for("ed25519", "self")
        _, issuer = pki.create_ca("carol@example.com", key=key)
        leaf = pki.issue_leaf(key, issuer, ["carol@example.com"], key.public_key())
        ident = Identity(key, leaf, [issuer])
        self.assertEqual(ident.chain_der, [ident.leaf_der])

    def test_duplicates_dropped(self):
        inter = certs.make_intermediate(self.ca)
        ident = certs.make_identity("alice@example.com", inter)
        again = Identity(ident.private_key, ident.leaf, [inter.cert, ident.leaf, inter.cert])
        self.assertEqual(again.chain_der, ident.chain_der)

    def test_vector_identities(self):
        with open(os.path.join(VECTORS, "handshake-ed25519-x25519.json")) as f:
            vector = json.load(f)
        for role in ("initiator", "responder"):
            side = vector[role]
            directory = self.mktemp()
            os.makedirs(directory)
            path = os.path.join(directory, "id.pem")
            with open(path, "w") as f:
                f.write(side["cert_pem"] + side["key_pem"])
            ident = load_identity(path)
            self.assertEqual(ident.names, (side["identity"],))
            self.assertEqual(ident.alg, "ed25519")
            # Ed25519 is deterministic: signing twice gives the same bytes.
            self.assertEqual(ident.sign(b"x"), ident.sign(b"x"))
