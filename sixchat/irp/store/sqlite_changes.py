"""
Change notification of the SQLite registry store (L{ChangeFeed}): several registry
processes may share one database file, and each must tell its watchers about changes the
others made. The identities a mutation touched go to the C{changes} table in its own
transaction, tagged with the process's random origin, and to the local subscribers once it
committed; a poll delivers the rows of other processes.

The poll also keeps the store's lookup cache (L{sixchat.irp.store.lookup_cache}) exact
against those other processes: the identities it reads are dropped from the cache before
anyone hears of them, a L{REVOCATION} row drops every cached "not revoked", and the cache
answers only while a poll that started at most C{cache_fresh} seconds ago succeeded
(L{ChangeFeed.fresh_at}). So with a cache the poll runs even when nobody subscribed.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger

from sixchat.identity import normalize_identity
from sixchat.irp.store.lookup_cache import REVOCATION

if TYPE_CHECKING:
    from sixchat.irp.store.sqlite import SQLiteStore

__all__ = ["CHANGES_KEPT", "ChangeFeed"]

log = Logger(namespace="sixchat.irp.store.sqlite")

#: Rows kept in C{changes}; a process polling once a second never falls that far behind.
CHANGES_KEPT = 10_000


class ChangeFeed:
    """
    Change notification of one L{SQLiteStore}: the identities a mutation touched go to the
    C{changes} table in its transaction, tagged with this store's random origin, and to
    the local subscribers once it committed; a poll delivers the rows of other processes.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.subscribers: list[Callable[[str], None]] = []
        self.origin = secrets.token_hex(8)
        #: The newest row seen (rows up to it were delivered or are ours).
        self.last_change = 0
        self._poller: task.LoopingCall | None = None
        self._polls = 0
        #: When (the reactor's clock) the last poll that succeeded started, None before
        #: the first: every change committed by another process before that moment has
        #: reached the cache.
        self.fresh_at: float | None = None
        #: Changes when the polls resume after a stall longer than the store's
        #: C{cache_fresh}: the cache then drops everything (L{LookupCache.sync}).
        self.epoch = 0

    def log(self, conn: sqlite3.Connection, identities: Iterable[str]) -> None:
        conn.executemany(
            "INSERT INTO changes (identity, origin) VALUES (?, ?)",
            [(identity, self.origin) for identity in sorted(set(identities))],
        )

    def announce(self, identities: Iterable[str]) -> None:
        for identity in sorted(set(identities) - {REVOCATION}):
            for callback in list(self.subscribers):
                try:
                    callback(identity)
                except Exception:
                    log.failure("registry change subscriber failed")

    def announce_and_return(self, identities: set[str]) -> set[str]:
        self.announce(identities)
        return identities

    def start_polling(self) -> None:
        """Poll while the store is open and someone listens (idempotent)."""
        store = self._store
        listening = bool(self.subscribers) or store.cache is not None
        if self._poller is not None or store._pool is None or not listening:
            return
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = store._reactor
        self._poller.start(store.poll_interval, now=False).addErrback(
            lambda f: log.failure("registry change poll stopped", f)
        )

    def stop_polling(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None

    def _poll(self) -> defer.Deferred[None] | None:
        store = self._store
        if store._pool is None:
            return None
        self._polls += 1
        last, trim = self.last_change, self._polls % 100 == 0
        started = store._reactor.seconds()

        def run(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            rows = conn.execute(
                "SELECT seq, identity, origin FROM changes WHERE seq > ? ORDER BY seq", (last,)
            ).fetchall()
            newest = rows[-1][0] if rows else last
            if trim:
                conn.execute("DELETE FROM changes WHERE seq <= ?", (newest - CHANGES_KEPT,))
            return newest, [identity for _seq, identity, origin in rows if origin != self.origin]

        def got(result: tuple[int, list[str]]) -> None:
            newest, identities = result
            self.last_change = max(self.last_change, newest)
            self._invalidate(identities, started)
            self.announce(identities)

        def failed(failure: Any) -> None:
            if store._pool is not None:
                log.failure("polling the registry database for changes failed", failure)

        return store._read(run).addCallbacks(got, failed)

    def _invalidate(self, identities: list[str], started: float) -> None:
        """The cache forgets what other processes changed, then counts as fresh."""
        cache = self._store.cache
        if cache is None:
            return
        for identity in identities:
            if identity == REVOCATION:
                cache.revocations_changed()
                continue
            try:
                cache.invalidate(normalize_identity(identity))
            except ValueError:  # pragma: no cover - only valid identities are logged
                pass
        if self.fresh_at is None or not 0 <= started - self.fresh_at <= self._store.cache_fresh:
            self.epoch += 1
        self.fresh_at = started
