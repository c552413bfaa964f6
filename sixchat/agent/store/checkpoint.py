"""
WAL checkpoints off the write path (L{Checkpointer}).

In WAL mode SQLite appends every commit to the write-ahead log and copies the log back into
the database file in a B{checkpoint}. By default the connection whose commit takes the log
past 1,000 pages runs that checkpoint itself, inside the commit: it copies the pages, fsyncs
the database file and truncates nothing but resets the log, which adds milliseconds to that
one commit. In the agent that commit is a message on its way: a received message's store
before its receipt, or a sent message's "delivered". With about ten pages per message, one
message in a hundred paid for a checkpoint, which is the tail of the warm delivery latency
(docs/benchmarks.md, "Latency").

L{Checkpointer} moves that work to a second connection on its own thread: after every
L{EVERY} write transactions of the store, when the store has nothing else queued, it runs a
C{PASSIVE} checkpoint there, which copies what it can without blocking the writer (the
writer keeps committing meanwhile) and fsyncs the database file. A checkpoint that ends
before the writer's next transaction begins lets that transaction start the log from its
beginning again; one overtaken by a commit leaves the log to grow a little and the next one
catches up. So the log stays small, and the writer's own automatic checkpoint (kept, at
L{BACKSTOP_PAGES}, in case the checkpointer falls behind or fails) is not reached.
Durability is unchanged: every commit still fsyncs the log as before (C{synchronous=FULL});
the checkpoint connection uses the same setting, so it syncs the log before copying and the
database file before the log may be reused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["BACKSTOP_PAGES", "EVERY", "Checkpointer", "checkpoint"]

#: Write transactions of the store between two checkpoints (about 80 log pages at the
#: agent's ten pages a message; SQLite's own default is a checkpoint per 1,000 pages). Small,
#: so that a checkpoint is short and usually ends before the next commit begins: only then
#: may the writer start the log again (see L{Checkpointer.committed}); 8 measured better
#: than 32 (the log kept growing) and no worse than 4.
EVERY = 8
#: The writer's own automatic checkpoint, kept as a backstop (log pages; SQLite: 1,000).
BACKSTOP_PAGES = 4000


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """
    One C{PASSIVE} checkpoint on C{conn}: (busy, pages in the log, pages copied).
    Never waits for the writer or readers; copies what it can.
    """
    # fetchall: the statement ends here, so this connection holds no read lock on the log
    # afterwards (one would keep the writer from starting the log from its beginning).
    (row,) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return int(row[0]), int(row[1]), int(row[2])


class Checkpointer:
    """
    Runs the store's checkpoints on their own thread (see the module docstring).

    Use: C{start()} once the store is open, L{committed} in the reactor thread after each of
    the store's write transactions, C{stop()} before closing the store's own connection.

    @param pool: the thread to run on (L{sixchat._sqlite.DatabaseThread}, not started), or
        anything with C{start}, C{stop} and C{run(f, *args)} returning a Deferred.
    @param connect: opens the second connection (called on that thread).
    @param every: write transactions between two checkpoints.

    @ivar checkpoints: checkpoints run so far (tests and the benchmark read it).
    @ivar incomplete: of those, the ones that could not copy the whole log.
    @ivar failures: checkpoints that failed (each logged; the writer's backstop remains).
    """

    log = Logger()

    def __init__(
        self,
        pool: Any,
        connect: Callable[[], sqlite3.Connection],
        every: int = EVERY,
    ) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self._pool = pool
        self._connect = connect
        self.every = every
        self._conn: sqlite3.Connection | None = None
        self._since = 0
        self._running: Deferred[Any] | None = None
        self._waiting: list[Deferred[None]] = []
        self._started = False
        self.checkpoints = 0
        self.incomplete = 0
        self.failures = 0

    def start(self) -> Deferred[None]:
        """Start the thread and open the connection there."""
        self._pool.start()
        self._started = True

        def opened(conn: sqlite3.Connection) -> None:
            if not self._started:  # stopped meanwhile
                conn.close()
                return
            self._conn = conn

        d: Deferred[Any] = self._pool.run(self._connect)
        self._running = d
        d.addCallback(opened)
        d.addErrback(self._failed)
        d.addBoth(self._idle)
        return d

    def committed(self, idle: bool = True) -> None:
        """
        One more write transaction of the store. C{idle}: the store has nothing else to
        run now. A checkpoint starts when it is time and the store is idle: a commit made
        while it copies keeps it from completing (it copies the log as it was when it
        started), and only a complete one lets the writer start the log again.
        """
        self._since += 1
        if not idle or self._since < self.every or self._running is not None:
            return
        if self._conn is None:
            return
        self._since = 0
        d: Deferred[Any] = self._pool.run(checkpoint, self._conn)
        self._running = d
        d.addCallback(self._done)
        d.addErrback(self._failed)
        d.addBoth(self._idle)

    def _done(self, result: tuple[int, int, int]) -> None:
        self.checkpoints += 1
        busy, pages, copied = result
        if busy or copied < pages:
            # Not complete (the writer committed meanwhile): try again when next idle.
            self.incomplete += 1
            self._since = self.every

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        self.log.failure(
            "a WAL checkpoint of the message store failed (the store checkpoints in its "
            "own commits instead)",
            failure,
        )

    def _idle(self, _: object) -> None:
        self._running = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """Fires once no checkpoint (or the connection's opening) is under way."""
        if self._running is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def stop(self) -> Deferred[None]:
        """Wait for a checkpoint under way, close the connection and stop the thread."""
        if not self._started:
            return succeed(None)
        self._started = False

        # The thread runs its jobs in order: a checkpoint under way ends before the close.
        conn, self._conn = self._conn, None
        d: Deferred[Any] = self._pool.run(conn.close) if conn is not None else succeed(None)
        d.addErrback(self._failed)

        def stopped(_: object) -> None:
            self._pool.stop()

        return d.addCallback(stopped)
