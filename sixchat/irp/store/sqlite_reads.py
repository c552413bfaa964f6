"""
The reads of the SQLite registry store's lookups (L{sixchat.irp.store.sqlite}): an
identity's state with the expiry of every certificate in it (what the lookup cache needs,
L{sixchat.irp.store.lookup_cache.valid_until}), and whether a certificate is revoked. Plain
functions of a connection, run in the store's thread; the queries are constants, no value
is ever formatted into SQL.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import datetime
from typing import Any

from sixchat._sqlite import from_us
from sixchat.irp.messages import Contact
from sixchat.irp.store.common import REVOKED_SQL, contacts_of, identity_state
from sixchat.irp.store.interfaces import Binding, IdentityState

__all__ = ["is_revoked", "read_state", "state_only"]


def _contacts(text: str) -> tuple[Contact, ...]:
    return contacts_of(json.loads(text))


@functools.lru_cache(maxsize=1024)
def _identity_state(
    rows: tuple[tuple[Any, ...], ...], latest: tuple[Any, ...] | None
) -> IdentityState:
    """
    The L{IdentityState} of a known identity from its rows: C{rows} of L{_LIVE_BINDINGS}
    and C{latest} of L{_LATEST_PRESENTED}, not both empty. A pure function of the rows, so
    it is memoised by them: a lookup of an identity whose rows did not change gets the
    same (immutable) objects instead of parsing the contacts and building the times anew,
    and the registry's answer cache (L{sixchat.irp.server.record_bytes}) finds them at once.
    """
    bindings = tuple(
        Binding(node, _contacts(contacts), bytes(cert), int(serial, 16), from_us(until),
                from_us(updated))
        for node, contacts, cert, serial, until, updated, _spelling, _not_after in rows
    )  # fmt: skip
    # Not both empty, so the spelling asked with (not part of the memo key) is never used.
    return identity_state("", bindings, latest, rows[0][6] if rows else None)


def read_state(
    conn: sqlite3.Connection, identity: str, key: str, t: int
) -> tuple[IdentityState, list[datetime]]:
    """
    L{SQLiteStore.state} in the store's thread: the state, and the expiry of every
    certificate in it (for the lookup cache, L{valid_until}).
    """
    rows = conn.execute(_LIVE_BINDINGS, (key, t, t)).fetchall()
    latest = conn.execute(_LATEST_PRESENTED, (key, t)).fetchone()
    if not rows and latest is None:
        return IdentityState(identity), []
    not_afters = [from_us(row[7]) for row in rows]
    if latest is not None:
        not_afters.append(from_us(latest[2]))
    return _identity_state(tuple(rows), latest), not_afters


def state_only(conn: sqlite3.Connection, identity: str, key: str, t: int) -> IdentityState:
    return read_state(conn, identity, key, t)[0]


def is_revoked(conn: sqlite3.Connection, key: bytes, serial: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM revocations WHERE issuer = ? AND serial = ?", (key, serial)
    ).fetchone()
    return row is not None


# Live: not expired, certificate neither expired nor revoked (L{REVOKED_SQL}). The queries
# are constants: no value is ever formatted into SQL.
_LIVE_BINDINGS = (
    "SELECT node, contacts, cert, serial, until, updated, spelling, cert_not_after"  # noqa: S608
    " FROM bindings x"
    " WHERE identity = ? AND until > ? AND cert_not_after > ? AND NOT " + REVOKED_SQL +
    " ORDER BY node"
)  # fmt: skip
_LATEST_PRESENTED = (
    "SELECT cert, spelling, not_after FROM presented x"  # noqa: S608
    " WHERE identity = ? AND not_after > ?"
    " AND NOT " + REVOKED_SQL + " ORDER BY seq DESC LIMIT 1"
)  # fmt: skip
