"""
The SQLite registry store's schema, one entry per version, run by the shared migration
runner (L{sixchat._sqlite.migrate}).
"""

from __future__ import annotations

import sqlite3

from sixchat._sqlite import Migrations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]


def _old_issuer_key(key: str) -> bytes:
    """
    An issuer key as schema version 1 stored it, in today's form: version 1 kept the
    SHA-256 of the CA's name as hex text, which L{issuer_key} now gives as its 32 bytes. A
    version 1 key for bytes that were no certificate (C{"raw:"} and the hex SHA-256 of those
    bytes, written only by tests: a registry's CA is a certificate) cannot become today's
    key, a hash of the bytes themselves, which were not kept; it stays apart as C{b"raw:"}
    and the 32 bytes, which no key of today equals. (Such a revocation names no issuer, so
    the serial alone still removes the bindings it revoked.)
    """
    if key.startswith("raw:"):
        return b"raw:" + bytes.fromhex(key[4:])
    return bytes.fromhex(key)


def _rekey_issuers(conn: sqlite3.Connection) -> None:
    """Schema version 2: copy C{issued} and C{revocations} with their issuer keys as bytes."""
    issued = conn.execute("SELECT issuer, serial, identity, spelling, cert FROM issued")
    conn.executemany(
        "INSERT INTO issued_v2 (issuer, serial, identity, spelling, cert) VALUES (?, ?, ?, ?, ?)",
        [(_old_issuer_key(issuer), *rest) for issuer, *rest in issued.fetchall()],
    )
    revocations = conn.execute("SELECT issuer, serial, issuer_name, revoked_at FROM revocations")
    conn.executemany(
        "INSERT INTO revocations_v2 (issuer, serial, issuer_name, revoked_at) VALUES (?, ?, ?, ?)",
        [(_old_issuer_key(issuer), *rest) for issuer, *rest in revocations.fetchall()],
    )


#: Ordered schema steps; step i (0-based) brings the schema from version i to i + 1. Append
#: new steps for later versions; never change a released one.
MIGRATIONS: Migrations = [
    (
        # One row per live node binding (irp-1 §3.1).
        """CREATE TABLE bindings (
            identity TEXT NOT NULL,
            node TEXT NOT NULL,
            spelling TEXT NOT NULL,
            contacts TEXT NOT NULL,
            cert BLOB NOT NULL,
            serial TEXT NOT NULL,
            issuer_name BLOB,
            cert_not_after INTEGER NOT NULL,
            until INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            PRIMARY KEY (identity, node)
        )""",
        "CREATE INDEX bindings_until ON bindings (until)",
        "CREATE INDEX bindings_serial ON bindings (serial)",
        # Every leaf presented in a register, for the identity-level cert (irp-1 §7.4).
        """CREATE TABLE presented (
            identity TEXT NOT NULL,
            cert_sha256 BLOB NOT NULL,
            spelling TEXT NOT NULL,
            cert BLOB NOT NULL,
            serial TEXT NOT NULL,
            issuer_name BLOB,
            not_after INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (identity, cert_sha256)
        )""",
        "CREATE INDEX presented_serial ON presented (serial)",
        # Certificates this registry issued (enrol, renew).
        """CREATE TABLE issued (
            issuer TEXT NOT NULL,
            serial TEXT NOT NULL,
            identity TEXT NOT NULL,
            spelling TEXT NOT NULL,
            cert BLOB NOT NULL,
            PRIMARY KEY (issuer, serial)
        )""",
        """CREATE TABLE revocations (
            issuer TEXT NOT NULL,
            serial TEXT NOT NULL,
            issuer_name BLOB,
            revoked_at INTEGER NOT NULL,
            PRIMARY KEY (issuer, serial)
        )""",
        "CREATE INDEX revocations_serial ON revocations (serial)",
        # Enrolment tokens, by hash only (irp-1 §4.2).
        """CREATE TABLE tokens (
            hash BLOB PRIMARY KEY,
            identity TEXT NOT NULL,
            expires INTEGER NOT NULL,
            used INTEGER
        )""",
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            identity TEXT NOT NULL,
            origin TEXT NOT NULL
        )""",
    ),
    # Version 2: issuer keys in the form the PostgreSQL store uses (L{issuer_key}: 32 bytes).
    (
        """CREATE TABLE issued_v2 (
            issuer BLOB NOT NULL,
            serial TEXT NOT NULL,
            identity TEXT NOT NULL,
            spelling TEXT NOT NULL,
            cert BLOB NOT NULL,
            PRIMARY KEY (issuer, serial)
        )""",
        """CREATE TABLE revocations_v2 (
            issuer BLOB NOT NULL,
            serial TEXT NOT NULL,
            issuer_name BLOB,
            revoked_at INTEGER NOT NULL,
            PRIMARY KEY (issuer, serial)
        )""",
        _rekey_issuers,
        "DROP TABLE issued",
        "DROP TABLE revocations",
        "ALTER TABLE issued_v2 RENAME TO issued",
        "ALTER TABLE revocations_v2 RENAME TO revocations",
        "CREATE INDEX revocations_serial ON revocations (serial)",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
