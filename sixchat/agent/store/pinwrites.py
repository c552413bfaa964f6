"""
The pin and key-history writes of L{sixchat.agent.store.database.MessageDatabase}: pins added
and forgotten, pending key changes, and the contact's key history (§9.3, §11.15). Blocking,
like the rest of the synchronous core; the Deferred face is
L{sixchat.agent.store.pins.SQLitePinStore}.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sixchat._sqlite import to_us
from sixchat.agent.store.records import KEY_EVENTS, check_spki
from sixchat.identity import normalize_identity

__all__ = ["PinWrites"]


class PinWrites:
    """Mixed into L{MessageDatabase}, whose write transaction and peer rows it uses."""

    def _write(self, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _see_peer(self, peer: str, display: str, at_us: int, *, seen: bool) -> None:
        raise NotImplementedError


    def add_pins(self, identity: str, spkis: Sequence[bytes]) -> None:
        """Pin keys, and drop any pending key change they settle."""
        peer = normalize_identity(identity)
        with self._write() as conn:
            for spki in spkis:
                conn.execute(
                    "INSERT OR IGNORE INTO pins (peer, spki) VALUES (?, ?)",
                    (peer, check_spki(spki)),
                )
                conn.execute(
                    "DELETE FROM key_changes WHERE peer = ? AND spki = ?", (peer, bytes(spki))
                )

    def note_key_change(self, identity: str, spki: bytes, now: datetime) -> bool:
        peer = normalize_identity(identity)
        spki = check_spki(spki)
        now_us = to_us(now)
        with self._write(durable=False) as conn:
            if conn.execute(
                "SELECT 1 FROM pins WHERE peer = ? AND spki = ?", (peer, spki)
            ).fetchone():
                return False
            self._see_peer(peer, identity, now_us, seen=True)
            conn.execute(
                """
                INSERT INTO key_changes (peer, spki, first_noted_us, last_noted_us, times)
                VALUES (?, ?, ?, ?, 1)
                ON CONFLICT (peer, spki) DO UPDATE SET
                    last_noted_us = max(key_changes.last_noted_us, excluded.last_noted_us),
                    times = key_changes.times + 1
                """,
                (peer, spki, now_us, now_us),
            )
            return True

    def note_key_event(self, identity: str, spki: bytes, what: str, now: datetime) -> None:
        """Add a line to the contact's key history (L{KeyEvent})."""
        if what not in KEY_EVENTS:
            raise ValueError(f"key event must be one of {', '.join(KEY_EVENTS)}")
        peer = normalize_identity(identity)
        with self._write(durable=False) as conn:
            conn.execute(
                "INSERT INTO key_events (peer, spki, what, at_us) VALUES (?, ?, ?, ?)",
                (peer, check_spki(spki), what, to_us(now)),
            )

    def forget_pins(self, identity: str, spkis: Sequence[bytes], now: datetime) -> None:
        """Unpin keys (C{sixchat trust --forget-old}), each noted as C{forgotten}."""
        peer = normalize_identity(identity)
        now_us = to_us(now)
        with self._write() as conn:
            for spki in spkis:
                conn.execute(
                    "DELETE FROM pins WHERE peer = ? AND spki = ?", (peer, check_spki(spki))
                )
                conn.execute(
                    "INSERT INTO key_events (peer, spki, what, at_us) "
                    "VALUES (?, ?, 'forgotten', ?)",
                    (peer, bytes(spki), now_us),
                )
