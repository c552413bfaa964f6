"""
What sixchat's two SQLite stores (the agent's L{sixchat.agent.store} and the registry's
L{sixchat.irp.store.sqlite}) share, written once: how times are stored, how a write
transaction starts and ends, how the schema is migrated, and the one thread that owns the
connection.

  - B{Times} are integer microseconds since the epoch: exact round trips and cheap, exact
    ordering and range queries. Naive datetimes are read as UTC; answers are aware, in UTC.
  - B{Write transactions} start with C{BEGIN IMMEDIATE}: the write lock is taken up front,
    so a read-then-write decision cannot race with another writer and two processes never
    deadlock upgrading read locks.
  - B{Migrations}: a C{schema_version} table holds one number; a store's migration list has
    one entry per version, applied in order, never edited once released (a later version
    appends). Every pending entry runs in one immediate transaction that reads the version
    under the write lock, so an interrupted migration leaves the file at its old version and
    two processes opening the file together apply nothing twice. A file newer than the code
    is refused rather than misread.
  - B{One thread}: a connection is used by one worker thread at a time, so each store runs
    every database call on a private pool of exactly one thread. The reactor thread never
    blocks, the connection is never shared, and calls run (and their Deferreds fire) in
    the order they were made.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

__all__ = [
    "EPOCH",
    "MICROSECOND",
    "DatabaseThread",
    "Migrations",
    "Step",
    "aware",
    "from_us",
    "immediate",
    "migrate",
    "opt_dt",
    "opt_us",
    "to_us",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

# -- time -----------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def aware(when: datetime) -> datetime:
    """C{when} with a time zone: naive datetimes are UTC."""
    if not isinstance(when, datetime):
        raise TypeError(f"expected a datetime, got {type(when).__name__}")
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def to_us(when: datetime) -> int:
    """Microseconds since the epoch, the stored form of a time."""
    return (aware(when) - EPOCH) // MICROSECOND


def opt_us(when: datetime | None) -> int | None:
    return None if when is None else to_us(when)


def from_us(us: int) -> datetime:
    """The aware UTC datetime of a stored time."""
    return EPOCH + timedelta(microseconds=us)


def opt_dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


# -- transactions and migrations ------------------------------------------------------------


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """
    One write transaction on a connection opened with C{isolation_level=None}: committed if
    the block returns, rolled back if it raises.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


#: One step of a migration: an SQL statement, or a callable for a data migration.
Step = str | Callable[[sqlite3.Connection], None]

#: Entry I{n} (0-based) takes the schema from version I{n} to I{n} + 1.
Migrations = Sequence[Sequence[Step]]


def migrate(
    conn: sqlite3.Connection,
    migrations: Migrations,
    too_new: Callable[[int, int], BaseException],
) -> int:
    """
    Bring the file to version C{len(migrations)}; returns the version it had.

    @param too_new: builds the error raised for a file of a newer version, from that version
        and the one this code knows (each store words it for its own reader).
    """
    known = len(migrations)
    with immediate(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = int(row[0])
        if version > known:
            raise too_new(version, known)
        for number in range(version + 1, known + 1):
            for step in migrations[number - 1]:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
            conn.execute("UPDATE schema_version SET version = ?", (number,))
    return version


# -- the thread -----------------------------------------------------------------------------


class DatabaseThread:
    """
    The one worker thread that owns a store's connection. L{start} and L{stop} are explicit
    (nothing runs from the constructor); L{stop} joins the thread, so call it when the
    thread is idle (after the store's last call, e.g. its close, has fired). With
    C{threads} above 1 (the PostgreSQL registry store: one connection per thread), that
    many threads take the calls from one queue, in order but not one after the other.

    A plain thread and queue rather than Twisted's C{ThreadPool}: every call through
    C{ThreadPool.callInThreadWithCallback} makes a reference cycle (its C{inContext}
    function refers to itself through its closure), garbage that only the cycle collector
    frees. Our calls leave none, so a busy store feeds the collector nothing (see
    L{sixchat.irp.server.gcpolicy}).
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("a DatabaseThread needs at least one thread")
        self._reactor = reactor
        self._name = name
        self._count = threads
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] | None = None
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return self._queue is not None

    def start(self) -> None:
        if self._queue is not None:
            raise RuntimeError(f"{self._name} is already running")
        work: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._work, args=(work,), daemon=True,
                name=self._name if self._count == 1 else f"{self._name}-{i}",
            )
            for i in range(self._count)
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()
        self._queue = work

    def _work(self, work: queue.SimpleQueue[tuple[Any, ...] | None]) -> None:
        call_from_thread = self._reactor.callFromThread
        while (item := work.get()) is not None:
            f, args, kwargs, d = item
            try:
                outcome = (d.callback, f(*args, **kwargs))
            except BaseException:
                outcome = (d.errback, Failure())
            # Nothing of this call stays referenced by the idle thread.
            del item, f, args, kwargs, d
            call_from_thread(*outcome)
            del outcome

    def run(self, f: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_R]:
        """Run C{f} on the thread after every earlier call; fires in the reactor thread."""
        if self._queue is None:
            raise RuntimeError(f"{self._name} is not running")
        d: Deferred[_R] = Deferred()
        self._queue.put((f, args, kwargs, d))
        return d

    def stop(self) -> None:
        """
        Stop (and join) the thread once the calls already made have run; stopping a
        stopped thread does nothing.
        """
        work, threads = self._queue, self._threads
        self._queue, self._threads = None, []
        if work is not None:
            for _ in threads:
                work.put(None)
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
