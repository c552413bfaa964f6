"""
What each registry operation does in PostgreSQL: one function of a connection per method of
L{sixchat.irp.store.postgres.PostgresStore}, which runs it on a worker thread. Every write is
one transaction that journals and announces the identities it changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from sixchat.identity import normalize_identity
from sixchat.irp.store.common import (
    REVOKED_SQL,
    cert_issuer_name,
    contacts_of,
    identity_state,
    issuer_key,
    sha256,
)
from sixchat.irp.store.interfaces import Binding, ConflictError, IdentityState
from sixchat.irp.store.lookup_cache import REVOCATION
from sixchat.irp.store.postgres_notify import CHANGES_RETENTION, announce


def _utc(value: datetime) -> datetime:
    """psycopg answers in the session's time zone; the interface speaks UTC."""
    return value.astimezone(UTC)


def _int(value: Decimal | int) -> int:
    return int(value)


_REVOKED = sql.SQL(REVOKED_SQL)

#: An identity's state at a time in one statement (so in one snapshot, and one round trip
#: where a transaction took five): its live bindings (not expired, certificate neither expired
#: nor revoked: irp-1 §3.3) with C{kind} 0, in node order, then the identity-level
#: certificate (irp-1 §7.4: the unrevoked, unexpired leaf most recently presented in a
#: register) with C{kind} 1. C{not_after} is each row's certificate's, which the lookup
#: cache needs (L{sixchat.irp.store.lookup_cache.valid_until}).
_STATE = sql.SQL(
    "SELECT u.kind, u.node, u.contacts, u.cert, u.serial, u.until, u.updated, u.spelling,"
    " u.not_after FROM ("
    " SELECT 0 AS kind, x.node, x.contacts, x.cert, x.serial, x.until, x.updated, x.spelling,"
    " x.cert_not_after AS not_after"
    " FROM bindings x WHERE x.identity = %(key)s AND x.until > %(now)s"
    " AND x.cert_not_after > %(now)s AND NOT {revoked}"
    " UNION ALL (SELECT 1, NULL, NULL, x.cert, NULL, NULL, NULL, x.spelling, x.not_after"
    " FROM presented x WHERE x.identity = %(key)s AND x.not_after > %(now)s"
    " AND NOT {revoked} ORDER BY x.seq DESC LIMIT 1)"
    ") u ORDER BY u.kind, u.node"
).format(revoked=_REVOKED)


def register(
    conn: psycopg.Connection[Any],
    identity: str,
    node: str,
    contacts: list[list[Any]],
    cert: bytes,
    serial: int,
    cert_not_after: datetime,
    now: datetime,
    until: datetime,
    max_nodes: int,
) -> None:
    key = normalize_identity(identity)
    issuer_name = cert_issuer_name(cert)
    with conn.transaction():
        # The upsert locks the identity's row until commit: concurrent registers of this
        # identity, from any process, count the nodes one after the other.
        # (DO UPDATE rather than DO NOTHING: only an update locks an existing row.)
        conn.execute(
            "INSERT INTO identities (key) VALUES (%s)"
            " ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key",
            (key,),
        )
        row = conn.execute(
            "SELECT count(*), coalesce(bool_or(node = %s), false) FROM bindings"
            " WHERE identity = %s AND until > %s AND cert_not_after > %s",
            (node, key, now, now),
        ).fetchone()
        assert row is not None
        live, has_node = int(row[0]), bool(row[1])
        if not has_node and live >= max_nodes:
            raise ConflictError(f"{identity} already has {live} nodes (limit {max_nodes})")
        conn.execute(
            "INSERT INTO bindings (identity, node, spelling, contacts, cert, serial,"
            " issuer_name, cert_not_after, until, updated)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (identity, node) DO UPDATE SET"
            " spelling = EXCLUDED.spelling, contacts = EXCLUDED.contacts,"
            " cert = EXCLUDED.cert, serial = EXCLUDED.serial,"
            " issuer_name = EXCLUDED.issuer_name, cert_not_after = EXCLUDED.cert_not_after,"
            " until = EXCLUDED.until, updated = EXCLUDED.updated",
            (key, node, identity, Jsonb(contacts), cert, serial, issuer_name,
             cert_not_after, until, now),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO presented (identity, cert_sha256, spelling, cert, serial,"
            " issuer_name, not_after, presented_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (identity, cert_sha256) DO UPDATE SET"
            " spelling = EXCLUDED.spelling, not_after = EXCLUDED.not_after,"
            " presented_at = EXCLUDED.presented_at, seq = EXCLUDED.seq",
            (key, sha256(cert), identity, cert, serial, issuer_name, cert_not_after, now),
        )
        announce(conn, key)


def unregister(conn: psycopg.Connection[Any], identity: str, node: str) -> bool:
    key = normalize_identity(identity)
    with conn.transaction():
        removed = conn.execute(
            "DELETE FROM bindings WHERE identity = %s AND node = %s RETURNING node",
            (key, node),
        ).fetchone()
        if removed is not None:
            announce(conn, key)
    return removed is not None


def state_of(conn: psycopg.Connection[Any], identity: str, now: datetime) -> IdentityState:
    return state_and_expiry(conn, identity, now)[0]


def state_and_expiry(
    conn: psycopg.Connection[Any], identity: str, now: datetime
) -> tuple[IdentityState, list[datetime]]:
    """The identity's state at C{now}, and the expiry of every certificate in it."""
    key = normalize_identity(identity)
    rows = conn.execute(_STATE, {"key": key, "now": now}).fetchall()
    bindings = tuple(
        Binding(
            node=node,
            contacts=contacts_of(contacts),
            cert=bytes(cert),
            serial=_int(serial),
            until=_utc(until_),
            updated=_utc(updated),
        )
        for kind, node, contacts, cert, serial, until_, updated, _spelling, _na in rows
        if kind == 0
    )
    cert_row = next(((r[3], r[7]) for r in rows if r[0] == 1), None)
    spelling = rows[0][7] if rows and rows[0][0] == 0 else None
    state = identity_state(identity, bindings, cert_row, spelling)
    return state, [_utc(r[8]) for r in rows]


def expire(conn: psycopg.Connection[Any], now: datetime) -> set[str]:
    with conn.transaction():
        rows = conn.execute(
            "DELETE FROM bindings WHERE until <= %s OR cert_not_after <= %s"
            " RETURNING identity, spelling",
            (now, now),
        ).fetchall()
        for key in sorted({key for key, _ in rows}):
            announce(conn, key)
        conn.execute("DELETE FROM presented WHERE not_after <= %s", (now,))
        conn.execute("DELETE FROM tokens WHERE expires <= %s", (now,))
        # The journal is pruned by the database's clock: its rows are stamped by it.
        conn.execute("DELETE FROM changes WHERE at < now() - %s", (CHANGES_RETENTION,))
    return {spelling for _, spelling in rows}


def next_expiry(conn: psycopg.Connection[Any]) -> datetime | None:
    row = conn.execute("SELECT min(least(until, cert_not_after)) FROM bindings").fetchone()
    return _utc(row[0]) if row is not None and row[0] is not None else None


def record_issued(
    conn: psycopg.Connection[Any], identity: str, serial: int, issuer: bytes, cert: bytes
) -> None:
    key, _name = issuer_key(issuer)
    conn.execute(
        "INSERT INTO issued (serial, issuer, identity, spelling, cert)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (serial, issuer) DO UPDATE SET"
        " identity = EXCLUDED.identity, spelling = EXCLUDED.spelling, cert = EXCLUDED.cert",
        (serial, key, normalize_identity(identity), identity, cert),
    )


def revoke(conn: psycopg.Connection[Any], serial: int, issuer: bytes, now: datetime) -> set[str]:
    key, name = issuer_key(issuer)
    with conn.transaction():
        conn.execute(
            "INSERT INTO revocations (serial, issuer, issuer_name, revoked_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (serial, issuer) DO NOTHING",
            (serial, key, name, now),
        )
        rows = conn.execute(
            "DELETE FROM bindings WHERE serial = %s"
            " AND (%s::bytea IS NULL OR issuer_name IS NULL OR issuer_name = %s)"
            " RETURNING identity, spelling",
            (serial, name, name),
        ).fetchall()
        holders = conn.execute(
            "SELECT identity FROM presented WHERE serial = %s"
            " AND (%s::bytea IS NULL OR issuer_name IS NULL OR issuer_name = %s)"
            " UNION SELECT identity FROM issued WHERE serial = %s AND issuer = %s",
            (serial, name, name, serial, key),
        ).fetchall()
        # First every instance's cache of "not revoked" answers (L{lookup_cache}), so
        # that a listener rechecking on the identities' notifications (which PostgreSQL
        # delivers in this order) reads the revocation, not its cache.
        announce(conn, REVOCATION)
        for identity in sorted({k for k, _ in rows} | {k for (k,) in holders}):
            announce(conn, identity)
    return {spelling for _, spelling in rows}


def revoked(conn: psycopg.Connection[Any], issuer: bytes) -> list[tuple[int, datetime]]:
    key, _name = issuer_key(issuer)
    rows = conn.execute(
        "SELECT serial, revoked_at FROM revocations WHERE issuer = %s ORDER BY revoked_at, serial",
        (key,),
    ).fetchall()
    return [(_int(s), _utc(at)) for s, at in rows]


def is_revoked(conn: psycopg.Connection[Any], serial: int, issuer: bytes) -> bool:
    key, _name = issuer_key(issuer)
    row = conn.execute(
        "SELECT 1 FROM revocations WHERE serial = %s AND issuer = %s", (serial, key)
    ).fetchone()
    return row is not None


def add_token(
    conn: psycopg.Connection[Any], token_hash: bytes, identity: str, expires: datetime
) -> None:
    conn.execute(
        "INSERT INTO tokens (hash, identity, expires) VALUES (%s, %s, %s)",
        (token_hash, identity, expires),
    )


def token_identity(conn: psycopg.Connection[Any], token_hash: bytes, now: datetime) -> str | None:
    row = conn.execute(
        "SELECT identity FROM tokens WHERE hash = %s AND used_at IS NULL AND expires > %s",
        (token_hash, now),
    ).fetchone()
    return row[0] if row is not None else None


def consume_token(conn: psycopg.Connection[Any], token_hash: bytes, now: datetime) -> str | None:
    row = conn.execute(
        "UPDATE tokens SET used_at = %s"
        " WHERE hash = %s AND used_at IS NULL AND expires > %s RETURNING identity",
        (now, token_hash, now),
    ).fetchone()
    return row[0] if row is not None else None


def notify(conn: psycopg.Connection[Any], identity: str) -> None:
    key = normalize_identity(identity)
    with conn.transaction():
        announce(conn, key)
