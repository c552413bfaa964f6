"""
The PostgreSQL registry store's schema: versioned (C{schema_version}), each version a list of
DDL statements, applied by L{migrate}; a database newer than this code is refused rather
than misread.
"""

from __future__ import annotations

from typing import Any

import psycopg

from sixchat.irp.store.postgres_dsn import PostgresStoreError

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "migrate"]

#: Key of the transaction-level advisory lock taken while migrating ("Sixchat" in ASCII).
MIGRATION_LOCK = 0x53697863686174

#: Each step is a tuple of DDL statements run in order; step I{n} brings the schema to
#: version I{n}. Append new steps, never edit applied ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per identity ever registered (key: normalized): the row whose lock
        # serialises the registers of one identity, in every process.
        """CREATE TABLE identities (
            key text PRIMARY KEY
        )""",
        # Serials are numeric: X.509 allows up to 20 octets, more than bigint holds.
        # issuer_name is the DER issuer Name of the binding's certificate (NULL if it could
        # not be parsed), so a revocation removes exactly the bindings of that certificate.
        # spelling is the identity as the certificate spells it (irp-1 §3.3). A binding
        # lives until the earlier of its until and its certificate's notAfter.
        """CREATE TABLE bindings (
            identity text NOT NULL REFERENCES identities (key),
            node text NOT NULL,
            spelling text NOT NULL,
            contacts jsonb NOT NULL,
            cert bytea NOT NULL,
            serial numeric NOT NULL,
            issuer_name bytea,
            cert_not_after timestamptz NOT NULL,
            until timestamptz NOT NULL,
            updated timestamptz NOT NULL,
            PRIMARY KEY (identity, node)
        )""",
        "CREATE INDEX bindings_until ON bindings (until)",
        "CREATE INDEX bindings_cert_not_after ON bindings (cert_not_after)",
        "CREATE INDEX bindings_serial ON bindings (serial)",
        # Every leaf presented in a register, for the identity-level cert of irp-1 §7.4 (the
        # most recent one that is still unrevoked and unexpired); seq orders presentations
        # across processes, independently of their clocks.
        """CREATE TABLE presented (
            identity text NOT NULL REFERENCES identities (key),
            cert_sha256 bytea NOT NULL,
            spelling text NOT NULL,
            cert bytea NOT NULL,
            serial numeric NOT NULL,
            issuer_name bytea,
            not_after timestamptz NOT NULL,
            presented_at timestamptz NOT NULL,
            seq bigserial NOT NULL,
            PRIMARY KEY (identity, cert_sha256)
        )""",
        "CREATE INDEX presented_serial ON presented (serial)",
        # Issuers are keyed by L{issuer_key} (a hash of the CA's subject name: a CA is its
        # name, and a certificate can exceed the size of a btree entry); issuer_name, the
        # name itself, matches bindings and presentations.
        """CREATE TABLE issued (
            serial numeric NOT NULL,
            issuer bytea NOT NULL,
            identity text NOT NULL,
            spelling text NOT NULL,
            cert bytea NOT NULL,
            PRIMARY KEY (serial, issuer)
        )""",
        """CREATE TABLE revocations (
            serial numeric NOT NULL,
            issuer bytea NOT NULL,
            issuer_name bytea,
            revoked_at timestamptz NOT NULL,
            PRIMARY KEY (serial, issuer)
        )""",
        # Only the token's hash is stored (irp-1 §4.2).
        """CREATE TABLE tokens (
            hash bytea PRIMARY KEY,
            identity text NOT NULL,
            expires timestamptz NOT NULL,
            used_at timestamptz
        )""",
        # A short journal of changed identities, replayed by listeners after a reconnect.
        """CREATE TABLE changes (
            seq bigserial PRIMARY KEY,
            identity text NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX changes_at ON changes (at)",
    ),
)


def migrate(conn: psycopg.Connection[Any]) -> None:
    """
    Apply the pending L{MIGRATIONS} in one transaction, under an advisory lock, so that
    processes starting together neither race nor apply a step twice.
    """
    with conn.transaction():
        # Taken before anything else, so a second process waits here, then finds the
        # schema current and does nothing (CREATE TABLE IF NOT EXISTS alone races).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise PostgresStoreError(
                f"the database's schema is version {current}, newer than this sixchat "
                f"understands ({len(MIGRATIONS)}); upgrade sixchat"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)  # constant DDL, no values
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
