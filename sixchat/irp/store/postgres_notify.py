"""
Change notification across registry processes on one PostgreSQL database: each change is
journaled and NOTIFYed in its own transaction (L{announce}); a L{Listener} thread per store
relays the notifications to the reactor and, after a reconnection, replays the journal.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from twisted.internet import defer
from twisted.python.failure import Failure

from sixchat.irp.store.postgres_dsn import PostgresStoreError, scrub

if TYPE_CHECKING:
    from sixchat.irp.store.postgres import PostgresStore

__all__ = ["CHANGES_RETENTION", "CHANNEL", "REPLAY_MARGIN", "Listener", "announce"]

#: The LISTEN/NOTIFY channel; payloads are normalized identities.
CHANNEL = "sixchat_irp"

#: How long the C{changes} table keeps rows for replay after a listener reconnects.
CHANGES_RETENTION = timedelta(hours=1)

#: How far before the listener's last sign of life a replay starts: a change's C{at} is its
#: transaction's start, which precedes its commit (and its NOTIFY) by the transaction's
#: duration; ours last milliseconds, so a minute is ample.
REPLAY_MARGIN = timedelta(minutes=1)


def announce(conn: psycopg.Connection[Any], key: str) -> None:
    """
    Journal and NOTIFY a change inside the caller's transaction: PostgreSQL sends the
    notification only when (and if) that transaction commits, so listeners never see a change
    that was rolled back, nor one before it is visible to their queries.
    """
    conn.execute("INSERT INTO changes (identity) VALUES (%s)", (key,))
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))


class Listener:
    """
    The LISTEN connection and its thread. The thread blocks in psycopg's C{notifies()} for at
    most L{PostgresStore.listen_poll} seconds at a time, so C{stop} takes effect promptly;
    a heartbeat query notes when the connection was last known alive (the start of a replay
    after a reconnection, and the way a dead TCP connection is noticed at all).
    """

    def __init__(self, store: PostgresStore, ready: defer.Deferred[None]) -> None:
        self._store = store
        self._ready: defer.Deferred[None] | None = ready
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name="sixchat-irp-postgres-listen", daemon=True
        )
        self.connection: psycopg.Connection[Any] | None = None
        #: The database's clock when the connection was last known alive; a replay after a
        #: reconnection starts there (minus L{REPLAY_MARGIN}). Only the thread touches it.
        self.last_alive: datetime | None = None
        self._listening = False
        #: For the lookup cache (L{sixchat.irp.store.lookup_cache}), read from the reactor
        #: thread: whether the connection is LISTENing, which connection it is (a new
        #: number after every reconnection), and when (C{time.monotonic}) a round trip on
        #: it last completed: every notification committed before that round trip started
        #: has been handed to the reactor by then.
        self.live = False
        self.epoch = 0
        self.alive_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._thread.join()

    def _deliver(self, key: str) -> None:
        self._store._reactor.callFromThread(self._store._deliver, key)

    def _signal_ready(self, failure: Failure | None) -> None:
        ready, self._ready = self._ready, None
        if ready is None:
            return
        if failure is None:
            self._store._reactor.callFromThread(ready.callback, None)
        else:
            self._store._reactor.callFromThread(ready.errback, failure)

    def _main(self) -> None:
        store = self._store
        backoff = store.backoff_initial
        while not self._stop.is_set():
            try:
                # Keepalives make a silently dead TCP peer show up within about a minute.
                conn = store._connect(
                    keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3
                )
            except PostgresStoreError as e:
                if self._ready is not None:
                    self._signal_ready(Failure(e))
                    return
                store.log.warn(
                    "registry change listener cannot connect ({error}); retrying in {delay}s",
                    error=str(e),
                    delay=backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, store.backoff_max)
                continue
            self.connection = conn
            self._listening = False
            try:
                self._serve(conn)
            except Exception as e:
                if self._stop.is_set():
                    break
                if self._ready is not None:
                    self._signal_ready(Failure(PostgresStoreError(
                        f"cannot LISTEN on {store._masked}: {scrub(str(e), store._password)}"
                    )))  # fmt: skip
                    return
                store.log.warn(
                    "registry change listener lost its connection ({error}); reconnecting",
                    error=scrub(str(e), store._password)
                    if isinstance(e, psycopg.Error)
                    else repr(e),
                )
                if self._listening:
                    # It had been working: a new outage starts with a short wait.
                    backoff = store.backoff_initial
                self._stop.wait(backoff)
                backoff = min(backoff * 2, store.backoff_max)
            finally:
                self.live = False
                self.connection = None
                try:
                    conn.close()
                except psycopg.Error:
                    pass

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        """LISTEN, replay what was missed while disconnected, then relay until stopped."""
        store = self._store
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        connected_at: datetime = row[0]
        # From here on every change is heard: a cache may fill again (after dropping all).
        self.epoch += 1
        self.alive_at = time.monotonic()
        self.live = True
        if self.last_alive is not None:
            self._replay(conn, self.last_alive)
        else:
            self._signal_ready(None)
        self.last_alive = connected_at
        self._listening = True
        beat = time.monotonic()
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=store.listen_poll):
                if notify.channel == CHANNEL:
                    self._deliver(notify.payload)
                if self._stop.is_set():
                    break
            if time.monotonic() - beat >= store.heartbeat:
                started = time.monotonic()
                row = conn.execute("SELECT now()").fetchone()
                assert row is not None
                self.last_alive = row[0]
                self.alive_at = beat = started

    def _replay(self, conn: psycopg.Connection[Any], last_alive: datetime) -> None:
        """
        Deliver every identity changed since shortly before the connection was last known
        alive. If that is beyond the journal's retention, every known identity is delivered:
        more pushes than needed, but none missed.
        """
        store = self._store
        row = conn.execute("SELECT now() - %s > %s", (last_alive, CHANGES_RETENTION)).fetchone()
        if row is not None and row[0]:
            rows = conn.execute("SELECT key FROM identities").fetchall()
        else:
            rows = conn.execute(
                "SELECT DISTINCT identity FROM changes WHERE at > %s",
                (last_alive - REPLAY_MARGIN,),
            ).fetchall()
        store.log.info(
            "registry change listener reconnected; replaying {count} identities",
            count=len(rows),
        )
        for (key,) in rows:
            self._deliver(key)
