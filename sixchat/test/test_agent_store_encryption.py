"""
Tests for L{sixchat.agent.store.encryption} and L{sixchat.agent.store.cipher}: which key opens
a data directory's store, the encrypted store itself (no plaintext on disk), and the
crash-safe migrations (C{encrypt}, C{decrypt}, C{rekey}) with a failure injected at every
step, in this process and by killing a real one.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sixchat.agent.store import MessageDatabase, MessageStore, StoreError, cipher, encryption
from sixchat.agent.store.keyfile import KEY_FILENAME, KeyFileError, WrongPassword
from sixchat.test.processes import child_env
from sixchat.test.test_agent_store import T0, msg
from sixchat.test.test_agent_store_keyfile import FAST

BODY = "the-plaintext-body-Zq7"
#: Without SQLCipher (no wheel for this platform) there is nothing to test here.
SKIP = None if cipher.available() else "SQLCipher (sqlcipher3) is not installed"
STEPS = ("marker", "key written", "exported", "verified", "renamed", "done")


class Crash(BaseException):
    """A failure that skips every C{except Exception}: files are left as a kill leaves them."""


def fill(path: str, key: bytes | None = None, n: int = 40) -> list[tuple[str, str]]:
    """Store C{n} messages both ways (and a pin); returns the history as (id, body)."""
    db = MessageDatabase(path, key)
    try:
        for i in range(n):
            db.store_incoming("bob@example.com", msg(f"in{i}", f"{BODY} {i}"), T0)
            out = db.queue_outgoing("carol@example.com", f"{BODY} out {i}", T0 + timedelta(i))
            db.add_targets(out.id, ["n1"])
        db.add_pins("bob@example.com", [b"\x01" * 32])
        return [(e.id, e.body) for e in db.history()]
    finally:
        db.close()


def history(path: str, key: bytes | None) -> list[tuple[str, str]]:
    db = MessageDatabase(path, key)
    try:
        return [(e.id, e.body) for e in db.history()]
    finally:
        db.close()


def on_disk(data_dir: str) -> bytes:
    """Every byte of the store's files (the database, its WAL and its index)."""
    data = b""
    for name in os.listdir(data_dir):
        if name.startswith("messages.sqlite"):
            with open(os.path.join(data_dir, name), "rb") as f:
                data += f.read()
    return data


class DataDirCase(SynchronousTestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "messages.sqlite")
        self.key = os.path.join(self.dir, KEY_FILENAME)

    def unlock(self, password: bytes | None, mode: str = "auto") -> bytes | None:
        return encryption.unlock(self.dir, password, mode, FAST)


class UnlockTests(DataDirCase):
    def test_new_store_auto_with_password_is_encrypted(self) -> None:
        key = self.unlock(b"pw")
        assert key is not None
        self.assertEqual(len(key), 32)
        self.assertTrue(os.path.exists(self.key))
        self.assertEqual(fill(self.db, key)[0][1], f"{BODY} 0")
        self.assertEqual(encryption.describe(self.dir), "encrypted")
        self.assertNotIn(BODY.encode(), on_disk(self.dir))
        self.assertEqual(self.unlock(b"pw"), key)  # the same key next time

    def test_new_store_auto_without_password_is_plain(self) -> None:
        self.assertIsNone(self.unlock(None))
        self.assertFalse(os.path.exists(self.key))
        fill(self.db)
        self.assertEqual(encryption.describe(self.dir), "plain")
        self.assertIn(BODY.encode(), on_disk(self.dir))

    def test_off_keeps_new_store_plain(self) -> None:
        self.assertIsNone(self.unlock(b"pw", "off"))
        self.assertFalse(os.path.exists(self.key))

    def test_on_without_password(self) -> None:
        e = self.assertRaises(encryption.StoreLocked, self.unlock, None, "on")
        self.assertIn("password", str(e))
        self.assertFalse(os.path.exists(self.key))

    def test_on_with_a_plain_store(self) -> None:
        fill(self.db)
        e = self.assertRaises(encryption.StoreLocked, self.unlock, b"pw", "on")
        self.assertIn("sixchat store encrypt", str(e))

    def test_existing_stores_open_as_they_are(self) -> None:
        fill(self.db)
        self.assertIsNone(self.unlock(b"pw", "auto"))  # plain stays plain
        os.unlink(self.db)
        key = self.unlock(b"pw", "on")
        fill(self.db, key)
        self.assertEqual(self.unlock(b"pw", "off"), key)  # encrypted stays encrypted

    def test_encrypted_store_needs_the_password(self) -> None:
        fill(self.db, self.unlock(b"pw"))
        e = self.assertRaises(encryption.StoreLocked, self.unlock, None)
        self.assertIn("SIXCHAT_P12_PASSWORD", str(e))
        self.assertRaises(WrongPassword, self.unlock, b"other")

    def test_encrypted_store_without_key_file(self) -> None:
        fill(self.db, self.unlock(b"pw"))
        os.unlink(self.key)
        e = self.assertRaises(KeyFileError, self.unlock, b"pw")
        self.assertIn("missing", str(e))

    def test_bad_mode(self) -> None:
        self.assertRaises(ValueError, self.unlock, b"pw", "yes")

    def test_wrong_key_for_the_file(self) -> None:
        fill(self.db, self.unlock(b"pw"))
        self.assertRaises(cipher.WrongStoreKey, MessageDatabase, self.db, b"\x00" * 32)

    def test_unlock_tells_what_recovery_did(self) -> None:
        fill(self.db, n=1)
        open(self.db + ".new", "wb").close()
        notes: list[str] = []
        self.assertIsNone(encryption.unlock(self.dir, None, "auto", FAST, notes.append))
        self.assertEqual(len(notes), 1)
        self.assertIn("interrupted store migration was undone", notes[0])
        encryption.unlock(self.dir, None, "auto", FAST, notes.append)
        self.assertEqual(len(notes), 1)  # nothing left to do

    def test_content_digest_sees_every_row(self) -> None:
        import sqlite3

        fill(self.db, n=3)
        before = cipher.content_digest(self.db, None)
        conn = sqlite3.connect(self.db, isolation_level=None)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = [conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables]
        self.assertEqual(before[1], sum(counts))
        self.assertGreaterEqual(before[1], 3 * 2 + 3)  # messages both ways, deliveries
        conn.execute("UPDATE messages SET body = body || '!' WHERE seq = 2")
        changed = cipher.content_digest(self.db, None)
        self.assertNotEqual(changed[0], before[0])
        conn.execute("UPDATE messages SET body = substr(body, 1, length(body) - 1) WHERE seq = 2")
        self.assertEqual(cipher.content_digest(self.db, None), before)
        conn.execute("DELETE FROM key_changes")  # empty already: nothing changes
        self.assertEqual(cipher.content_digest(self.db, None), before)
        conn.close()

    def test_file_state(self) -> None:
        self.assertEqual(cipher.file_state(self.db), "absent")
        open(self.db, "wb").close()
        self.assertEqual(cipher.file_state(self.db), "absent")
        os.unlink(self.db)
        fill(self.db)
        self.assertEqual(cipher.file_state(self.db), "plain")


    def test_stopped_agent_inbox_refuses_an_encrypted_store_in_one_line(self) -> None:
        """C{sixchat inbox} with the agent stopped reads plain stores only (no password)."""
        from sixchat.agent.store import ReadOnlyDatabase, StoreError

        key = self.unlock(b"pw")
        fill(self.db, key)
        error = self.assertRaises(StoreError, ReadOnlyDatabase, self.db)
        self.assertIn("is encrypted; start the agent", str(error))
        self.assertNotIn("\n", str(error))


class EncryptedStoreTests(TestCase):
    """The Deferred face over an encrypted file."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_open_encrypted_and_reopen(self) -> Any:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "messages.sqlite")

        def unlock() -> bytes | None:
            return encryption.unlock(data_dir, b"pw", "on", FAST)

        store = MessageStore(path, reactor, unlock)
        yield store.open()
        self.assertTrue(store.encrypted)
        stored = yield store.store_incoming("bob@example.com", msg("m1", BODY), T0)
        self.assertTrue(stored)
        yield store.close()
        self.assertNotIn(BODY.encode(), on_disk(data_dir))
        again = MessageStore(path, reactor, unlock)
        yield again.open()
        entries = yield again.history()
        self.assertEqual([e.body for e in entries], [BODY])
        yield again.close()
        wrong = MessageStore(path, reactor, lambda: encryption.unlock(data_dir, b"no", "on", FAST))
        yield self.assertFailure(wrong.open(), WrongPassword)
        self.assertFalse(wrong.is_open)

    @defer.inlineCallbacks
    def test_plain_without_unlock(self) -> Any:
        path = self.mktemp()
        store = MessageStore(path, reactor)
        yield store.open()
        self.assertFalse(store.encrypted)
        yield store.close()


class MigrationTests(DataDirCase):
    def test_encrypt_decrypt_rekey_keep_every_message(self) -> None:
        expected = fill(self.db)
        self.assertEqual(len(expected), 80)
        encryption.encrypt(self.dir, b"pw", FAST)
        self.assertEqual(encryption.describe(self.dir), "encrypted")
        self.assertNotIn(BODY.encode(), on_disk(self.dir))
        key = self.unlock(b"pw")
        self.assertEqual(history(self.db, key), expected)
        db = MessageDatabase(self.db, key)
        self.assertEqual(db.load_pins()[0], {"bob@example.com": {b"\x01" * 32}})
        self.assertEqual(db.pragma("journal_mode"), "wal")
        db.close()

        encryption.rekey(self.dir, b"pw", b"new", FAST)
        self.assertRaises(WrongPassword, self.unlock, b"pw")
        new_key = self.unlock(b"new")
        self.assertNotEqual(new_key, key)
        self.assertRaises(cipher.WrongStoreKey, MessageDatabase, self.db, key)
        self.assertEqual(history(self.db, new_key), expected)

        encryption.rekey(self.dir, b"new", params=FAST)  # same password, new key
        third = self.unlock(b"new")
        self.assertNotEqual(third, new_key)
        self.assertEqual(history(self.db, third), expected)

        encryption.decrypt(self.dir, b"new")
        self.assertEqual(encryption.describe(self.dir), "plain")
        self.assertFalse(os.path.exists(self.key))
        self.assertEqual(history(self.db, None), expected)
        self.assertEqual(sorted(os.listdir(self.dir)), ["messages.sqlite"])

    def test_refusals(self) -> None:
        e = self.assertRaises(StoreError, encryption.encrypt, self.dir, b"pw", FAST)
        self.assertIn("no message store", str(e))
        fill(self.db)
        e = self.assertRaises(StoreError, encryption.decrypt, self.dir, b"pw")
        self.assertIn("already plain", str(e))
        self.assertRaises(StoreError, encryption.rekey, self.dir, b"pw")
        encryption.encrypt(self.dir, b"pw", FAST)
        e = self.assertRaises(StoreError, encryption.encrypt, self.dir, b"pw", FAST)
        self.assertIn("already encrypted", str(e))
        self.assertRaises(WrongPassword, encryption.decrypt, self.dir, b"bad")
        self.assertRaises(WrongPassword, encryption.rekey, self.dir, b"bad")
        self.assertEqual(encryption.describe(self.dir), "encrypted")

    def test_unfinished_wal_is_migrated(self) -> None:
        """Rows only in the WAL a killed agent left behind reach the copy."""
        import shutil

        source = self.mktemp()
        os.makedirs(source)
        path = os.path.join(source, "messages.sqlite")
        fill(path, n=3)
        live = MessageDatabase(path)
        live.store_incoming("bob@example.com", msg("late", "late body"), T0)
        expected = [(e.id, e.body) for e in live.history()]
        for suffix in ("", "-wal"):  # as a kill leaves them: no checkpoint
            shutil.copyfile(path + suffix, self.db + suffix)
        live.close()
        self.assertGreater(os.path.getsize(self.db + "-wal"), 0)
        encryption.encrypt(self.dir, b"pw", FAST)
        self.assertFalse(os.path.exists(self.db + "-wal.new"))
        self.assertEqual(history(self.db, self.unlock(b"pw")), expected)
        self.assertIn(("late", "late body"), expected)

    def crash_at(self, step: str, run: Any) -> None:
        def hook(reached: str) -> None:
            if reached == step:
                raise Crash(step)

        self.assertRaises(Crash, run, hook)

    def check_after_crash(
        self, step: str, before: bytes | None, after_password: bytes, expected: Any
    ) -> None:
        """After recovery the store opens under the old or the new key, with every row."""
        committed = STEPS.index(step) >= STEPS.index("renamed")
        encryption.recover(self.dir)
        leftovers = [n for n in os.listdir(self.dir) if n.endswith((".new", ".tmp"))]
        self.assertEqual(leftovers, [], step)
        state = encryption.describe(self.dir)
        if committed:
            key = self.unlock(after_password)
            self.assertEqual(history(self.db, key), expected, step)
        else:
            self.assertEqual(history(self.db, before), expected, step)
        return state  # type: ignore[return-value]

    def test_crash_at_every_step_of_encrypt(self) -> None:
        for step in STEPS:
            if os.path.exists(self.db):
                os.unlink(self.db)
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            expected = fill(self.db, n=5)
            self.crash_at(step, lambda hook: encryption.encrypt(self.dir, b"pw", FAST, hook))
            state = self.check_after_crash(step, None, b"pw", expected)
            self.assertEqual(
                state,
                "encrypted" if STEPS.index(step) >= 4 else "plain",
                step,  # type: ignore
            )
            if state == "plain":
                self.assertFalse(os.path.exists(self.key), step)
                encryption.encrypt(self.dir, b"pw", FAST)  # and it can be done again
                self.assertEqual(history(self.db, self.unlock(b"pw")), expected, step)

    def test_crash_at_every_step_of_decrypt(self) -> None:
        for step in STEPS:
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            key = self.unlock(b"pw")
            expected = fill(self.db, key, n=5)
            self.crash_at(step, lambda hook: encryption.decrypt(self.dir, b"pw", hook))
            encryption.recover(self.dir)
            self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".new")], [])
            if STEPS.index(step) >= 4:
                self.assertEqual(encryption.describe(self.dir), "plain", step)
                self.assertFalse(os.path.exists(self.key), step)
                self.assertEqual(history(self.db, None), expected, step)
            else:
                self.assertEqual(encryption.describe(self.dir), "encrypted", step)
                self.assertEqual(history(self.db, self.unlock(b"pw")), expected, step)

    def test_crash_at_every_step_of_rekey(self) -> None:
        for step in STEPS:
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            old = self.unlock(b"pw")
            expected = fill(self.db, old, n=5)
            self.crash_at(step, lambda hook: encryption.rekey(self.dir, b"pw", b"new", FAST, hook))
            encryption.recover(self.dir)
            if STEPS.index(step) >= 4:
                self.assertRaises(WrongPassword, self.unlock, b"pw")
                self.assertEqual(history(self.db, self.unlock(b"new")), expected, step)
            else:
                self.assertEqual(self.unlock(b"pw"), old, step)
                self.assertEqual(history(self.db, old), expected, step)

    def test_failure_inside_the_copy_changes_nothing(self) -> None:
        expected = fill(self.db, n=5)
        real = cipher.export

        def broken(*args: Any) -> None:
            real(*args)
            with open(args[2], "r+b") as f:  # the copy is damaged on its way to disk
                f.seek(5000)
                f.write(b"\xff" * 64)

        self.patch(cipher, "export", broken)
        e = self.assertRaises(StoreError, encryption.encrypt, self.dir, b"pw", FAST)
        self.assertIn("messages.sqlite.new", str(e))
        self.assertEqual(sorted(os.listdir(self.dir)), ["messages.sqlite"])  # cleaned up
        self.assertIsNone(encryption.recover(self.dir))
        self.assertEqual(encryption.describe(self.dir), "plain")
        self.assertEqual(history(self.db, None), expected)
        self.assertFalse(os.path.exists(self.key))

    def test_recovery_interrupted_itself(self) -> None:
        """A crash while undoing a rekey (at the marker's removal) still leaves the old key."""
        old = self.unlock(b"pw")
        expected = fill(self.db, old, n=3)
        self.assertRaises(
            Crash,
            encryption.rekey,
            self.dir,
            b"pw",
            b"new",
            FAST,
            lambda step: self._crash_if(step == "exported"),
        )
        real = os.unlink

        def unlink(path: str) -> None:
            if path.endswith("messages.sqlite.new"):
                raise Crash(path)
            real(path)

        self.patch(os, "unlink", unlink)
        self.assertRaises(Crash, encryption.recover, self.dir)
        self.assertFalse(os.path.exists(self.key + ".new"))
        self.patch(os, "unlink", real)
        encryption.recover(self.dir)
        self.assertEqual(self.unlock(b"pw"), old)
        self.assertEqual(history(self.db, old), expected)

    def _crash_if(self, condition: bool) -> None:
        if condition:
            raise Crash()

    def test_half_written_key_file_is_removed(self) -> None:
        fill(self.db, n=2)
        with open(self.key + ".new.tmp", "wb") as f:
            f.write(b'{"sixchat-st')
        with open(self.db + ".new", "wb"):
            pass
        self.assertIsNotNone(encryption.recover(self.dir))
        self.assertEqual(sorted(os.listdir(self.dir)), ["messages.sqlite"])
        self.assertIsNone(encryption.recover(self.dir))


_KILLER = """
import os, sys
from sixchat.agent.store import encryption
from sixchat.agent.store.keyfile import KdfParams
step = sys.argv[2]
def hook(reached):
    if reached == step:
        os._exit(9)
encryption.encrypt(sys.argv[1], b"pw", KdfParams("argon2id", 64, 1, 1), hook)
"""


class KilledMigrationTests(TestCase):
    """A real process killed (C{os._exit}, nothing cleaned up) in the middle of C{encrypt}."""

    skip = SKIP

    timeout = 120

    @defer.inlineCallbacks
    def test_killed_mid_way(self) -> Any:
        from twisted.internet.utils import getProcessValue

        for step in ("exported", "verified", "renamed"):
            data_dir = self.mktemp()
            os.makedirs(data_dir)
            db = os.path.join(data_dir, "messages.sqlite")
            expected = fill(db, n=20)
            code = yield getProcessValue(
                sys.executable, ["-c", _KILLER, data_dir, step], env=child_env()
            )
            self.assertEqual(code, 9)
            self.assertIsNotNone(encryption.recover(data_dir))
            key = encryption.unlock(data_dir, b"pw", "auto", FAST)
            self.assertEqual(key is not None, step == "renamed", step)
            self.assertEqual(history(db, key), expected, step)
