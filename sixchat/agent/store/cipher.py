"""
The one place that knows about SQLCipher (the C{sqlcipher3} module, a C{sqlite3} look-alike
linked against SQLCipher): how a connection to an encrypted file is opened with a raw 256-bit
key, how a file is told apart as plain or encrypted, and how a whole database is copied into
a differently keyed file (C{sqlcipher_export}). Everything else in the store talks to a
C{sqlite3.Connection}-shaped object and never imports C{sqlcipher3}.

API differences kept here: C{sqlcipher3}'s exceptions are its own classes, not
C{sqlite3}'s, so every SQLCipher error that can mean "wrong key" is turned into
L{WrongStoreKey} here; C{sqlcipher3} is optional (a wheel exists for Linux x86-64 only), so
L{available} says whether it can be imported and L{connect} raises a one-line L{StoreError}
when it cannot.

Plain databases are opened with the standard C{sqlite3} module, exactly as before.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from types import ModuleType
from typing import Any, cast

from sixchat.agent.store.records import StoreError

__all__ = [
    "KEY_BYTES",
    "WrongStoreKey",
    "available",
    "connect",
    "content_digest",
    "database_errors",
    "export",
    "file_state",
    "fsync_path",
    "require",
]

#: The database key: 32 random bytes, given to SQLCipher as a raw key (no PBKDF2 of its own).
KEY_BYTES = 32

#: The first 16 bytes of every plain SQLite 3 file.
_PLAIN_HEADER = b"SQLite format 3\x00"


class WrongStoreKey(StoreError):
    """The key does not open this file (or the file is not a database at all)."""


def _module() -> ModuleType | None:
    try:
        import sqlcipher3
    except ImportError:
        return None
    return cast(ModuleType, sqlcipher3)


def available() -> bool:
    """Whether SQLCipher can be used on this machine (the C{sqlcipher3} module imports)."""
    return _module() is not None


def require() -> ModuleType:
    """The C{sqlcipher3} module.

    @raise StoreError: (one line) it is not installed.
    """
    module = _module()
    if module is None:
        raise StoreError(
            "an encrypted message store needs SQLCipher: install sqlcipher3-binary "
            "(Linux x86-64) or sqlcipher3 (builds against libsqlcipher)"
        )
    return module


def file_state(path: str) -> str:
    """
    C{"absent"} (no file, or an empty one: nothing stored yet), C{"plain"} (a plain SQLite
    file) or C{"encrypted"} (anything else: SQLCipher leaves no plain header).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_PLAIN_HEADER))
    except FileNotFoundError:
        return "absent"
    if not head:
        return "absent"
    return "plain" if head == _PLAIN_HEADER else "encrypted"


def _key_pragma(key: bytes) -> str:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a store key is {KEY_BYTES} bytes")
    return f"\"x'{key.hex()}'\""


def _quiet(conn: Any) -> None:
    """No SQLCipher log lines on standard error (a wrong key is reported as L{WrongStoreKey})."""
    conn.execute("PRAGMA cipher_log_level = NONE").fetchall()


def connect(path: str, key: bytes | None, timeout: float = 10.0) -> sqlite3.Connection:
    """
    A connection in autocommit mode (C{isolation_level=None}), usable from any one thread at
    a time (C{check_same_thread=False}): with C{key=None} a plain C{sqlite3} one, else a
    SQLCipher one keyed with C{key} and checked to open the file.

    @raise WrongStoreKey: C{key} does not open the file.
    @raise StoreError: SQLCipher is not installed.
    """
    if key is None:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    module = require()
    pragma = _key_pragma(key)
    conn: Any = module.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    try:
        _quiet(conn)
        conn.execute("PRAGMA key = " + pragma)
        # Temporary tables and sort spills stay in memory, never in a plain temp file.
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except module.DatabaseError:
        conn.close()
        raise WrongStoreKey(f"the store key does not open {path}") from None
    except BaseException:
        conn.close()
        raise
    # Same calls, same semantics; only the exception classes differ (see the docstring).
    return cast(sqlite3.Connection, conn)


def export(source: str, source_key: bytes | None, dest: str, dest_key: bytes | None) -> None:
    """
    Copy every table, index, trigger and row of C{source} into the empty file C{dest}, keyed
    with C{dest_key} (C{None}: plain), through SQLCipher's C{sqlcipher_export}. The copy is in
    rollback-journal mode and closed when this returns (no C{-wal} beside it).

    @raise WrongStoreKey: C{source_key} does not open C{source}.
    """
    module = require()
    conn: Any = module.connect(source, isolation_level=None)
    try:
        _quiet(conn)
        if source_key is not None:
            conn.execute("PRAGMA key = " + _key_pragma(source_key))
        conn.execute("PRAGMA temp_store = MEMORY")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except module.DatabaseError:
            raise WrongStoreKey(f"the store key does not open {source}") from None
        target = "''" if dest_key is None else _key_pragma(dest_key)
        conn.execute(f"ATTACH DATABASE ? AS migrated KEY {target}", (dest,))
        conn.execute("SELECT sqlcipher_export('migrated')").fetchone()
        conn.execute("DETACH DATABASE migrated")
    finally:
        conn.close()


def content_digest(path: str, key: bytes | None) -> tuple[str, int]:
    """
    A SHA-256 over the schema and, per table, the sum of its rows' SHA-256 hashes, and the
    number of rows: a migration compares the source's with the copy's before it replaces anything.
    Also runs C{PRAGMA integrity_check}.

    @raise StoreError: the file fails its integrity check.
    """
    try:
        return _digest(path, key)
    except database_errors() as e:
        raise StoreError(f"{path} cannot be read whole: {e}") from None


def database_errors() -> tuple[type[Exception], ...]:
    """The C{DatabaseError} classes of C{sqlite3} and (if installed) C{sqlcipher3}."""
    module = _module()
    return (sqlite3.DatabaseError,) + (() if module is None else (module.DatabaseError,))


def _digest(path: str, key: bytes | None) -> tuple[str, int]:
    conn = connect(path, key) if key is not None else sqlite3.connect(path)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"{path} fails its integrity check: {check}")
        digest = hashlib.sha256()
        rows = 0
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
        for name, sql in tables:
            digest.update(f"{name}\x00{sql}\x00".encode())
            quoted = '"' + name.replace('"', '""') + '"'
            # Order-free and in constant memory (some tables are WITHOUT ROWID, and a copy
            # may store rows in another order): the sum of the rows' hashes, per table. It
            # detects a copy that lost, added or changed a row, not a forger.
            # The name is the file's own table name, quoted as an identifier.
            select = f"SELECT * FROM {quoted}"  # noqa: S608
            total = 0
            for row in conn.execute(select):
                total += int.from_bytes(hashlib.sha256(repr(row).encode()).digest(), "big")
                rows += 1
            digest.update((total % (1 << 256)).to_bytes(32, "big"))
        return digest.hexdigest(), rows
    finally:
        conn.close()


def fsync_path(path: str) -> None:
    """C{fsync} a file or a directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
