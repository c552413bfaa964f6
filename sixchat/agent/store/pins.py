"""
Persistent pins for the handshake (L{SQLitePinStore}): synchronous answers from a cache, with
the writes going behind through the agent store's thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent.store.database import MessageDatabase
from sixchat.agent.store.records import KeyChange, KeyEvent, PinMaps, StoreError, check_spki
from sixchat.identity import normalize_identity
from sixchat.trust import IPinStore

if TYPE_CHECKING:
    from sixchat.agent.store.store import MessageStore

__all__ = ["SQLitePinStore"]


@implementer(IPinStore)
class SQLitePinStore:
    """
    Persistent pins (§9.3, §11.15) and pending key changes, for L{sixchat.trust.PinPolicy}.

    The handshake consults pins inline, so L{known} and L{add} are synchronous: they work
    on a cache loaded by L{MessageStore.open}. L{add} updates the cache at once and writes
    behind through the store's thread, in call order; a write that fails is logged (the
    cache keeps the pin for this run). A SIGKILL right after L{add} may lose that pin (the
    next handshake then reports a first contact or a key change again, never accepts a key
    silently); L{accept_key} is durable when it fires, and L{MessageStore.flush} waits for
    earlier writes.
    """

    log = Logger()

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._pins: dict[str, set[bytes]] = {}
        self._changes: dict[str, set[bytes]] = {}

    def _loaded(self, pins: PinMaps, changes: PinMaps) -> None:
        self._pins, self._changes = pins, changes

    def known(self, identity: str) -> frozenset[bytes]:
        """The SPKI hashes accepted for C{identity} (from the cache; never blocks)."""
        return frozenset(self._pins.get(normalize_identity(identity), ()))

    def add(self, identity: str, spki_sha256: bytes) -> None:
        """
        Accept a key for C{identity}: in the cache now, in the file shortly (write-behind).
        Also settles a pending key change for that key.

        @raise StoreClosedError: the store is not open (the pin could not be kept).
        """
        written = self._add(normalize_identity(identity), [check_spki(spki_sha256)])
        if written is not None:
            written.addErrback(self._write_failed, identity)

    def _add(self, peer: str, spkis: list[bytes]) -> Deferred[None] | None:
        """Update the caches now; the write to the file, or C{None} if nothing changed."""
        db = self._store._database()
        new = [s for s in spkis if s not in self._pins.get(peer, ())]
        pending = self._changes.get(peer, set())
        if not new and not pending.intersection(spkis):
            return None
        self._pins.setdefault(peer, set()).update(spkis)
        pending.difference_update(spkis)
        if not pending:
            self._changes.pop(peer, None)
        return self._store._call(db.add_pins, peer, spkis)

    def _write_failed(self, failure: Failure, identity: str) -> None:
        self.log.failure("could not save a pin for {identity}", failure, identity=identity)

    def pending_changes(self, identity: str) -> frozenset[bytes]:
        """The keys of C{identity} awaiting a decision (from the cache)."""
        return frozenset(self._changes.get(normalize_identity(identity), ()))

    def note_key_change(self, identity: str, spki_sha256: bytes, now: datetime) -> Deferred[bool]:
        """
        Record that C{identity} presented a key not among its pins (§9.3), for the user to
        decide (L{accept_key}). Fires with C{False} if the key is pinned after all.
        """
        try:
            peer = normalize_identity(identity)
            spki = check_spki(spki_sha256)
            db = self._store._database()
        except (ValueError, StoreError) as e:
            return fail(e)
        if spki in self._pins.get(peer, ()):
            return succeed(False)
        self._changes.setdefault(peer, set()).add(spki)
        return self._store._call(db.note_key_change, identity, spki, now)

    def key_changes(self, identity: str | None = None) -> Deferred[list[KeyChange]]:
        """Pending key changes (of one identity, or all), oldest first per identity."""
        return self._store._run(MessageDatabase.key_changes, identity)

    def accept_key(self, identity: str, spki_sha256: bytes | None = None) -> Deferred[list[bytes]]:
        """
        The user accepts a key (C{sixchat trust <identity> --accept-new-key}): pin it and
        clear its pending change. Without C{spki_sha256}, every pending key of the identity
        is accepted. Durable when it fires; fires with the keys accepted.
        """
        try:
            peer = normalize_identity(identity)
            if spki_sha256 is None:
                spkis = sorted(self._changes.get(peer, ()))
            else:
                spkis = [check_spki(spki_sha256)]
            written = self._add(peer, spkis) if spkis else None
        except (ValueError, StoreError) as e:
            return fail(e)
        # Nothing new to write: an earlier add() of the key may still be on its way.
        d = written if written is not None else self._store.flush()
        return d.addCallback(lambda _: spkis)

    def note_key_event(
        self, identity: str, spki_sha256: bytes, what: str, now: datetime
    ) -> Deferred[None]:
        """A line of the contact's key history (L{KeyEvent}), for the conversation view."""
        return self._store._run(MessageDatabase.note_key_event, identity, spki_sha256, what, now)

    def key_events(
        self, identity: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> Deferred[list[KeyEvent]]:
        """The most recent key events (of one identity, or all), oldest first."""
        return self._store._run(MessageDatabase.key_events, identity, since, limit)

    def forget(self, identity: str, keep: frozenset[bytes], now: datetime) -> Deferred[list[bytes]]:
        """
        Unpin every key of C{identity} but those in C{keep} (C{sixchat trust --forget-old}):
        the peer presenting one of them again is a key change. Durable when it fires; fires
        with the keys forgotten.
        """
        try:
            peer = normalize_identity(identity)
            db = self._store._database()
        except (ValueError, StoreError) as e:
            return fail(e)
        pinned = self._pins.get(peer, set())
        gone = sorted(pinned - keep)
        if not gone:
            return succeed([])
        pinned.difference_update(gone)
        return self._store._call(db.forget_pins, peer, gone, now).addCallback(lambda _: gone)
