"""
The message store at rest: which key opens a data directory's C{messages.sqlite}, and the
crash-safe migrations between a plain and an encrypted store (C{sixchat store
encrypt|decrypt|rekey}). Synchronous file work: the agent runs L{unlock} on its store
thread, the command line calls the migrations directly (with the agent stopped).

Files in the data directory:

  - C{messages.sqlite} (+ C{-wal}, C{-shm}): the store. Whether it is encrypted is read from
    the file itself (a plain SQLite file starts with C{"SQLite format 3"}; SQLCipher leaves
    no plain byte), never from the presence of a key file.
  - C{store.key}: the wrapped database key (L{sixchat.agent.store.keyfile}), only beside an
    encrypted store.
  - C{messages.sqlite.new}, C{store.key.new}: a migration in progress.

A migration (the agent stopped, the data-directory lock held):

  1. create C{messages.sqlite.new} empty and fsync the directory: "a migration is under way";
  2. write C{store.key.new} (encrypt, rekey), fsynced;
  3. copy the store into C{messages.sqlite.new} under the new key (C{sqlcipher_export}),
     compare the copy's rows and schema with the original's (L{cipher.content_digest}),
     fsync it; checkpoint the original so no C{-wal} of it is left;
  4. rename C{messages.sqlite.new} over C{messages.sqlite} and fsync the directory: the
     commit point;
  5. rename C{store.key.new} over C{store.key} (encrypt, rekey) or delete C{store.key}
     (decrypt), and fsync the directory.

L{recover} finishes or undoes an interrupted one, and runs before every open and migration:
while C{messages.sqlite.new} exists the migration had not committed, so it and
C{store.key.new} are deleted and the old store (with the old key file) is used as it was;
once it is gone (step 4 done) C{store.key.new} is renamed into place; and a plain store with
a leftover C{store.key} (step 5 of a decrypt not done) loses the key file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sixchat.agent.store import cipher
from sixchat.agent.store.keyfile import KEY_FILENAME, KdfParams, read_key_file, write_key_file
from sixchat.agent.store.records import DEFAULT_FILENAME, StoreError

__all__ = [
    "MODES",
    "StoreLocked",
    "check",
    "decrypt",
    "describe",
    "encrypt",
    "recover",
    "rekey",
    "unlock",
]

#: C{--store-encryption}: C{auto} (new stores encrypted when the identity has a password),
#: C{on} (the store must be encrypted), C{off} (new stores plain).
MODES = ("auto", "on", "off")

#: Called with each step's name as a migration reaches it (tests inject failures here).
Hook = Callable[[str], None]


class StoreLocked(StoreError):
    """The store cannot be opened as asked: no password, not encrypted, or no SQLCipher."""


def _paths(data_dir: str) -> tuple[str, str, str, str]:
    db = os.path.join(data_dir, DEFAULT_FILENAME)
    key = os.path.join(data_dir, KEY_FILENAME)
    return db, db + ".new", key, key + ".new"


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def recover(data_dir: str) -> str | None:
    """
    Finish or undo a migration that was interrupted; returns what was done (for a log
    line), or C{None} if there was nothing to do. Call with the data-directory lock held.
    """
    db, new, key, new_key = _paths(data_dir)
    done = None
    if os.path.exists(new):
        # The new key file goes first, and for good, before the marker: a crash in between
        # must never leave "no marker, a new key file", which reads as a committed migration.
        for path in (new_key + ".tmp", new_key, new + "-journal", new + "-wal", new + "-shm"):
            _remove(path)
        cipher.fsync_path(data_dir)
        _remove(new)
        done = "an interrupted store migration was undone; the store is as it was before"
    elif os.path.exists(new_key):
        os.replace(new_key, key)
        done = "an interrupted store migration was completed (key file put in place)"
    if _remove(key + ".tmp"):
        done = done or "a partly written store key file was removed"
    if cipher.file_state(db) == "plain" and _remove(key):
        done = "an interrupted store decryption was completed (old key file removed)"
    if done is not None:
        cipher.fsync_path(data_dir)
    return done


def describe(data_dir: str) -> str:
    """C{absent}, C{plain} or C{encrypted}: the state of the data directory's store."""
    return cipher.file_state(_paths(data_dir)[0])


def unlock(
    data_dir: str,
    password: bytes | None,
    mode: str = "auto",
    params: KdfParams | None = None,
    note: Callable[[str], None] | None = None,
) -> bytes | None:
    """
    The key for the agent's store (C{None}: a plain store), after L{recover}. An existing
    store is opened as it is; a new one (no file yet) is encrypted if C{mode} is C{on}, or
    C{auto} with a password and SQLCipher installed: a random key is made and its key file
    written before the database exists.

    @raise StoreLocked: C{mode} is C{on} and the store is plain or cannot be encrypted, or
        the store is encrypted and there is no password.
    @raise KeyFileError: the key file is missing, damaged, or the password is wrong.
    @param note: told what L{recover} did, if anything (the agent logs it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    done = recover(data_dir)
    if done is not None and note is not None:
        note(done)
    db, _, key_path, _ = _paths(data_dir)
    state = cipher.file_state(db)
    if state == "encrypted":
        if password is None:
            raise _no_password(data_dir)
        return read_key_file(key_path, password)
    if state == "plain":
        if mode == "on":
            raise _not_encrypted(data_dir)
        return None
    if mode == "off" or (mode == "auto" and (password is None or not cipher.available())):
        return None
    if password is None:
        raise _needs_password()
    cipher.require()
    key = os.urandom(cipher.KEY_BYTES)
    write_key_file(key_path, key, password, params)
    return key


def check(data_dir: str, password: bytes | None, mode: str = "auto") -> None:
    """
    What L{unlock} would refuse, found without changing anything (no recovery, no key made):
    the twistd plugin calls it while parsing options, so a wrong password or a plain store
    under C{--store-encryption on} is one line before the agent starts.

    @raise StoreLocked: as L{unlock}.
    @raise KeyFileError: as L{unlock}.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    db, new, key_path, _ = _paths(data_dir)
    if os.path.exists(new):
        return  # an interrupted migration: unlock() recovers it under the lock first
    state = cipher.file_state(db)
    if state == "encrypted":
        if not os.path.exists(key_path):
            raise _unreadable(data_dir)
        if password is None:
            raise _no_password(data_dir)
        read_key_file(key_path, password)
    elif state == "plain" and mode == "on":
        raise _not_encrypted(data_dir)
    elif state == "absent" and mode == "on":
        if password is None:
            raise _needs_password()
        cipher.require()


def _no_password(data_dir: str) -> StoreLocked:
    return StoreLocked(
        f"the message store in {data_dir} is encrypted: give the identity's "
        "PKCS#12 password (--password-file or SIXCHAT_P12_PASSWORD)"
    )


def _unreadable(data_dir: str) -> StoreLocked:
    """Not a plain SQLite file, and no key file: damaged, or its key file was lost."""
    return StoreLocked(
        f"the message store in {data_dir} is not a plain SQLite database and there is no "
        f"{KEY_FILENAME} beside it: it is damaged, or encrypted and its key file is lost "
        "(restore both from a backup, or move the store away to start afresh)"
    )


def _not_encrypted(data_dir: str) -> StoreLocked:
    return StoreLocked(
        f"the message store in {data_dir} is not encrypted: stop the agent and run "
        f"'sixchat store encrypt --data-dir {data_dir}' (or drop --store-encryption on)"
    )


def _needs_password() -> StoreLocked:
    return StoreLocked(
        "--store-encryption on needs a password-protected identity (the key is wrapped "
        "with the PKCS#12 password: --password-file or SIXCHAT_P12_PASSWORD)"
    )


# -- migrations -------------------------------------------------------------------------------


def _never(step: str) -> None:
    pass


def _migrate(*args: Any) -> None:
    """L{_steps}; an error (not a crash) is cleaned up at once by L{recover}."""
    try:
        _steps(*args)
    except Exception:
        recover(args[0])
        raise


def _steps(
    data_dir: str,
    old_key: bytes | None,
    new_key: bytes | None,
    new_password: bytes | None,
    params: KdfParams | None,
    hook: Hook,
) -> None:
    db, new, key_path, new_key_path = _paths(data_dir)
    # 1. the marker: while this file exists, recover() undoes the migration
    os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cipher.fsync_path(data_dir)
    hook("marker")
    # 2. the new key file, beside the old one
    if new_key is not None:
        assert new_password is not None
        write_key_file(new_key_path, new_key, new_password, params)
    hook("key written")
    # 3. the copy, checked against the original, on disk
    before = cipher.content_digest(db, old_key)
    try:
        cipher.export(db, old_key, new, new_key)
    except cipher.database_errors() as e:
        raise StoreError(f"copying {db} failed: {e}; nothing was changed") from None
    hook("exported")
    after = cipher.content_digest(new, new_key)
    if after != before:
        raise StoreError(
            f"the migrated copy of {db} differs from the original "
            f"({after[1]} rows, {before[1]} expected); nothing was changed"
        )
    cipher.fsync_path(new)
    _checkpoint(db, old_key)
    hook("verified")
    # 4. the commit point
    os.replace(new, db)
    cipher.fsync_path(data_dir)
    hook("renamed")
    # 5. the key file
    if new_key is not None:
        os.replace(new_key_path, key_path)
    else:
        _remove(key_path)
    cipher.fsync_path(data_dir)
    hook("done")


def _checkpoint(db: str, key: bytes | None) -> None:
    """Fold the original's WAL into it and leave no C{-wal}/C{-shm} that could meet the copy."""
    conn = cipher.connect(db, key)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        conn.execute("PRAGMA journal_mode = DELETE").fetchone()
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        path = db + suffix
        if os.path.exists(path) and os.path.getsize(path) and suffix == "-wal":
            raise StoreError(f"{path} could not be checkpointed; nothing was changed")
        _remove(path)


def _start(data_dir: str, expect: str) -> None:
    recover(data_dir)
    state = describe(data_dir)
    if state == "absent":
        raise StoreError(f"there is no message store in {data_dir}")
    if state != expect:
        raise StoreError(f"the message store in {data_dir} is already {state}")


def encrypt(
    data_dir: str, password: bytes, params: KdfParams | None = None, hook: Hook = _never
) -> None:
    """Encrypt a plain store under a new random key wrapped with C{password}."""
    _start(data_dir, "plain")
    cipher.require()
    _migrate(data_dir, None, os.urandom(cipher.KEY_BYTES), password, params, hook)


def decrypt(data_dir: str, password: bytes, hook: Hook = _never) -> None:
    """Turn an encrypted store back into a plain one (and delete its key file)."""
    _start(data_dir, "encrypted")
    old = read_key_file(_paths(data_dir)[2], password)
    _migrate(data_dir, old, None, None, None, hook)


def rekey(
    data_dir: str,
    password: bytes,
    new_password: bytes | None = None,
    params: KdfParams | None = None,
    hook: Hook = _never,
) -> None:
    """
    Re-encrypt an encrypted store under a new random key, wrapped with C{new_password}
    (default: the same password; give the new one after changing the PKCS#12 password).
    """
    _start(data_dir, "encrypted")
    old = read_key_file(_paths(data_dir)[2], password)
    target = password if new_password is None else new_password
    _migrate(data_dir, old, os.urandom(cipher.KEY_BYTES), target, params, hook)
