"""
The store encrypted at rest from the command line, with real processes: C{twistd sixchat
--store-encryption on} keeps a received message across a restart with no plaintext body in
its files, and C{sixchat store status|encrypt|decrypt|rekey} migrate a stopped agent's data
directory (and refuse while it runs, or with a wrong or missing password).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from sixchat.agent.store import cipher
from sixchat.test.processes import run_cli, run_twistd
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, E2ECase

SECRET = "meet-at-the-old-mill-Qx81"


def store_bytes(data_dir: str) -> bytes:
    """The store's files as C{strings} would scan them: the database, WAL and index."""
    data = b""
    for name in sorted(os.listdir(data_dir)):
        if name.startswith("messages.sqlite"):
            with open(os.path.join(data_dir, name), "rb") as f:
                data += f.read()
    return data


class StoreCommandCase(E2ECase):
    skip = None if cipher.available() else "SQLCipher (sqlcipher3) is not installed"

    def setUp(self) -> None:
        super().setUp()
        self.password_file = os.path.join(self.base, "bob.pw")
        with open(self.password_file, "w") as f:
            f.write("bob's p12 password\n")
        self.wrong_file = os.path.join(self.base, "wrong.pw")
        with open(self.wrong_file, "w") as f:
            f.write("not it\n")

    def issue_with_password(
        self, identity: str, filename: str, password: bytes = b"bob's p12 password"
    ) -> str:
        from sixchat import pki

        path = os.path.join(self.base, filename)
        key = pki.generate_key("ed25519")
        cert = pki.issue_leaf(self.ca_key, self.ca_cert, [identity], key.public_key())
        pki.write_p12(path, key, cert, [], password, overwrite=True)
        return path

    @defer.inlineCallbacks
    def store(self, data_dir: str, *args: str) -> Any:
        out, err, code = yield run_cli(["store", *args, "--data-dir", data_dir], cwd=self.base)
        self.assertNotIn("Traceback", err)
        return out, err, code


class EncryptedAgentTests(StoreCommandCase):
    @defer.inlineCallbacks
    def test_message_survives_restart_encrypted_and_migrations(self) -> Any:
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        cert = self.issue_with_password(BOB, "bob.p12")
        bob = self.agent(
            "bob", BOB, "--password-file", self.password_file, "--store-encryption", "on",
            cert=cert,
        )  # fmt: skip
        yield bob.start()
        self.assertIn("store encrypted", bob.proc.log if bob.proc else "")
        out, err, code = yield alice.cli("send", BOB, SECRET, "--wait", str(DELIVERY_TIMEOUT))
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        inbox = yield bob.inbox()
        self.assertEqual([m["body"] for m in inbox], [SECRET])

        # the agent running: the store commands refuse (the data-directory lock)
        out, err, code = yield self.store(bob.data_dir, "decrypt", "--password-file",
                                          self.password_file)  # fmt: skip
        self.assertEqual(code, 1, out + err)
        self.assertIn("already running", err)
        self.assertIn("stop it first", err)

        yield bob.stop()
        self.assertTrue(os.path.exists(os.path.join(bob.data_dir, "store.key")))
        on_disk = store_bytes(bob.data_dir)
        self.assertGreater(len(on_disk), 4096)
        self.assertNotIn(SECRET.encode(), on_disk)
        self.assertNotIn(b"SQLite format 3", on_disk)
        out, err, code = yield self.store(bob.data_dir, "status")
        self.assertEqual((code, out.strip()), (0, f"{bob.data_dir}: message store encrypted"))

        yield bob.start()  # restart: the message is still there
        inbox = yield bob.inbox()
        self.assertEqual([m["body"] for m in inbox], [SECRET])
        yield bob.stop()

        # wrong and missing passwords: one line, nothing changed
        out, err, code = yield self.store(bob.data_dir, "decrypt", "--password-file",
                                          self.wrong_file)  # fmt: skip
        self.assertEqual(code, 1, out + err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("wrong password", err)
        out, err, code = yield self.store(bob.data_dir, "rekey")
        self.assertEqual(code, 2, out + err)
        self.assertIn("PKCS#12 password", err)
        out, err, code = yield self.store(bob.data_dir, "decrypt", "--password-file",
                                          self.wrong_file, "--cert", cert)  # fmt: skip
        self.assertEqual(code, 1, out + err)
        self.assertNotIn(SECRET.encode(), store_bytes(bob.data_dir))

        # decrypt: plain again, the body readable on disk; then encrypt and rekey
        out, err, code = yield self.store(bob.data_dir, "decrypt", "--password-file",
                                          self.password_file, "--cert", cert)  # fmt: skip
        self.assertEqual(code, 0, out + err)
        self.assertIn("message store plain (decrypt done)", out)
        self.assertFalse(os.path.exists(os.path.join(bob.data_dir, "store.key")))
        self.assertIn(SECRET.encode(), store_bytes(bob.data_dir))
        for action in ("encrypt", "rekey"):
            out, err, code = yield self.store(bob.data_dir, action, "--password-file",
                                              self.password_file)  # fmt: skip
            self.assertEqual(code, 0, out + err)
            self.assertIn(f"message store encrypted ({action} done)", out)
            self.assertNotIn(SECRET.encode(), store_bytes(bob.data_dir))

        yield bob.start()
        inbox = yield bob.inbox()
        self.assertEqual([m["body"] for m in inbox], [SECRET])


class StartUpTests(StoreCommandCase):
    """What C{twistd sixchat} says when the store's at-rest mode cannot be met."""

    def twistd(self, cert: str, data_dir: str, *extra: str) -> Any:
        return run_twistd(
            ["sixchat", "--cert", cert, "--trust", self.ca, "--data-dir", data_dir,
             "--listen", "tcp:0:interface=127.0.0.1", *extra],
            cwd=self.base,
        )  # fmt: skip

    @defer.inlineCallbacks
    def test_refusals_name_the_problem(self) -> Any:
        plain_cert = self.issue(BOB, "plain.p12")
        data_dir = os.path.join(self.base, "bob-data")

        out, err, code = yield self.twistd(plain_cert, data_dir, "--store-encryption", "on")
        self.assertNotEqual(code, 0)
        self.assertIn("--store-encryption on needs a password-protected identity", out + err)
        self.assertNotIn("Traceback", out + err)

        out, err, code = yield self.twistd(plain_cert, data_dir, "--store-encryption", "maybe")
        self.assertNotEqual(code, 0)
        self.assertIn("--store-encryption must be on, auto or off", out + err)

        # an encrypted store, then the wrong password and no password
        from sixchat.agent.store import encryption
        from sixchat.test.test_agent_store_keyfile import FAST

        os.makedirs(data_dir)
        key = encryption.unlock(data_dir, b"bob's p12 password", "on", FAST)
        from sixchat.agent.store import MessageDatabase

        MessageDatabase(os.path.join(data_dir, "messages.sqlite"), key).close()
        # the .p12's password was changed ("not it") but the store was not rekeyed
        changed = self.issue_with_password(BOB, "changed.p12", b"not it")
        out, err, code = yield self.twistd(changed, data_dir, "--password-file", self.wrong_file)
        self.assertNotEqual(code, 0)
        self.assertIn("wrong password for the encrypted message store", out + err)
        self.assertNotIn("Traceback", out + err)
        out, err, code = yield self.twistd(plain_cert, data_dir)
        self.assertNotEqual(code, 0)
        self.assertIn("is encrypted: give the identity's PKCS#12 password", out + err)

    @defer.inlineCallbacks
    def test_store_command_usage(self) -> Any:
        data_dir = os.path.join(self.base, "nothing-here")
        os.makedirs(data_dir)
        out, err, code = yield self.store(data_dir, "status")
        self.assertEqual((code, out.strip()), (0, f"{data_dir}: message store absent"))
        out, err, code = yield self.store(data_dir, "encrypt", "--password-file",
                                          self.password_file)  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("no message store", err)
        out, err, code = yield run_cli(["store", "status"], cwd=self.base)
        self.assertEqual(code, 2)
        self.assertIn("--data-dir DIR or --as IDENTITY", err)
        out, err, code = yield self.store(os.path.join(self.base, "missing"), "status")
        self.assertEqual(code, 1)
        self.assertIn("is not a directory", err)

    @defer.inlineCallbacks
    def test_default_encrypts_new_stores_of_password_identities(self) -> Any:
        """C{--store-encryption auto}, the default: a new data directory is encrypted when
        the identity has a password, plain when it has none."""
        from sixchat.agent.store import encryption

        cert = self.issue_with_password(BOB, "bob.p12")
        bob = self.agent("bob", BOB, "--password-file", self.password_file, cert=cert)
        yield bob.start()
        self.assertIn("store encrypted", bob.proc.log if bob.proc else "")
        yield bob.stop()
        self.assertEqual(encryption.describe(bob.data_dir), "encrypted")
        carol = self.agent("carol", "carol@example.com")
        yield carol.start()
        self.assertIn("store NOT encrypted", carol.proc.log if carol.proc else "")
        yield carol.stop()
        self.assertEqual(encryption.describe(carol.data_dir), "plain")
        self.assertFalse(os.path.exists(os.path.join(carol.data_dir, "store.key")))
