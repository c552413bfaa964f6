"""
The embedded registry store: one SQLite file, the default of C{twistd sixchat-irp}.

Why it looks the way it does:

  - B{Off the reactor.} Every SQLite call runs on a dedicated thread
    (L{sixchat._sqlite.DatabaseThread}), which owns the only connection. One thread
    serialises all work of this process without locks of our own, and SQLite's file locks
    (with a busy timeout that blocks only that thread) serialise it against other
    processes, e.g. C{sixchat pki invite} or C{sixchat pki revoke} run by an administrator
    while the registry serves.
  - B{WAL mode}, so readers in other processes never block the registry's writes, with
    C{synchronous=FULL}: a committed revocation or a consumed token must survive a power cut.
    Write transactions start with C{BEGIN IMMEDIATE} so two processes never deadlock while
    upgrading read locks.
  - B{Versioned schema.} A C{schema_version} table holds one number; L{MIGRATIONS} is the
    ordered list of steps, step I{n} taking the schema from version I{n}-1 to I{n}, applied
    by the runner the agent's store uses too (L{sixchat._sqlite.migrate}). A later version
    appends steps and never edits old ones; a database newer than this code is refused
    rather than misread.
  - B{Values.} Times are integer microseconds since the epoch (exact round trips; the wire
    carries milliseconds). Serials are lowercase hex text, because 128-bit serials (and the
    20-octet ones RFC 5280 allows) do not fit SQLite's 64-bit integers. Identities are keyed
    by L{normalize_identity}; the certificate's spelling is kept for answers (irp-1 §3.3).
  - B{Issuers} are compared by name: a revocation is keyed by the subject name (DER) of the
    issuer certificate it is given (L{issuer_key}, the same key as in PostgreSQL), and each
    binding remembers its certificate's issuer name, so a revocation reaches exactly the
    certificates of that CA even if two CAs ever used the same serial. Bytes that do not
    parse as a certificate are keyed by their own hash.
  - B{Tokens} are stored only as the hashes the caller gives; consuming one is a single
    C{UPDATE … RETURNING} inside an immediate transaction, so of two concurrent consumers
    (threads or processes) exactly one succeeds.
  - B{Change notification.} Each mutation appends the identities it touched to a C{changes}
    table in the same transaction, tagged with this store's random origin, and calls the local
    subscribers at once. A poll every C{poll_interval} seconds (on the injected reactor's
    clock, while someone subscribed or the lookup cache is on) delivers the rows written by
    I{other} processes, so an administrator's C{sixchat pki revoke} reaches the running
    registry's watchers and connections within a second. The table is trimmed to its most
    recent rows.
  - B{A lookup cache} (L{LookupCache}, as the PostgreSQL store's), kept exact against this
    process's writes at once and against other processes' through that poll; it answers
    only while a poll that started within L{SQLiteStore.cache_fresh} seconds succeeded
    (docs/irp.md). A cached lookup costs no thread hop and no query.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat._sqlite import DatabaseThread, from_us, immediate, migrate, to_us
from sixchat.errors import SixchatError
from sixchat.identity import normalize_identity
from sixchat.irp.messages import Contact
from sixchat.irp.store import sqlite_reads as reads
from sixchat.irp.store.cached import cached_is_revoked, cached_state, changing, revoking
from sixchat.irp.store.common import (
    cert_issuer_name,
    contact_pairs,
    issuer_key,
    sha256,
)
from sixchat.irp.store.interfaces import ConflictError, IdentityState, IRegistryStore
from sixchat.irp.store.lookup_cache import REVOCATION, LookupCache
from sixchat.irp.store.sqlite_changes import ChangeFeed
from sixchat.irp.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "StoreError", "issuer_key"]

log = Logger()

T = TypeVar("T")


class StoreError(SixchatError):
    """The database cannot be opened or used; one line for the administrator."""


def _serial(serial: int) -> str:
    return format(serial, "x")


def _contacts_json(contacts: Iterable[Contact]) -> str:
    return json.dumps(contact_pairs(contacts), separators=(",", ":"))


_REVOKE_BINDINGS = """
    DELETE FROM bindings WHERE serial = ?
    AND (? IS NULL OR issuer_name IS NULL OR issuer_name = ?) RETURNING spelling"""
_CERT_HOLDERS = """
    SELECT spelling FROM presented WHERE serial = ?
    AND (? IS NULL OR issuer_name IS NULL OR issuer_name = ?)
    UNION SELECT spelling FROM issued WHERE issuer = ? AND serial = ?"""


@implementer(IRegistryStore)
class SQLiteStore:
    """
    L{IRegistryStore} in one SQLite file.

    @param path: the database file (created if missing; its directory must exist), or
        C{":memory:"} for a private in-memory database (tests).
    @param reactor: provides C{IReactorTime} (the change poll) and
        C{IReactorFromThreads} (results come back to the reactor thread).
    @param poll_interval: seconds between looks for changes made by other processes.
    @param cache_size: identities kept in the lookup cache (L{LookupCache}); 0: none,
        every lookup reads the file.
    """

    #: The lookup cache answers only while a poll of the C{changes} table that started at
    #: most this many seconds ago succeeded: the most a lookup can lag behind a change
    #: written by another process sharing the file (docs/irp.md). Several poll intervals,
    #: so that one slow poll does not turn the cache off.
    cache_fresh = 3.0

    def __init__(self, path: str | os.PathLike[str], reactor: Any, *,
                 poll_interval: float = 1.0, cache_size: int = 20_000) -> None:  # fmt: skip
        self.path = os.fspath(path)
        self._reactor = reactor
        self.poll_interval = poll_interval
        self._pool: DatabaseThread | None = None
        self._conn: sqlite3.Connection | None = None
        self._changes = ChangeFeed(self)
        self._shutdown_trigger: Any = None
        self._closing: defer.Deferred[None] | None = None
        self._pending_reads: list[tuple[Callable[..., Any], tuple[Any, ...], Any]] = []
        self._reading = False
        #: Identity states and revocation answers (L{LookupCache}); None: every read goes
        #: to the file (C{cache_size=0}).
        self.cache = LookupCache(cache_size) if cache_size > 0 else None

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    # --- plumbing ---------------------------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self._pool is None:
            return defer.fail(StoreError(f"registry database {self.path} is not open"))
        return self._pool.run(fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run C{fn(conn, *args)} in one immediate transaction, in the store's thread."""

        def transaction() -> T:
            with immediate(self._connection()) as conn:
                return fn(conn, *args)

        return self._run(transaction)

    def _read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """
        Run C{fn(conn, *args)} in the store's thread. Reads are batched: while one batch is
        in the thread, the reads that arrive queue up and go over together as the next one,
        so a busy registry pays one thread round trip (queue, wake-up, callback through the
        reactor) per batch instead of per lookup. A read never sees older data than it
        would unbatched: the thread still runs everything in submission order, and a queued
        read is submitted after anything already submitted.
        """
        d: defer.Deferred[T] = defer.Deferred()
        self._pending_reads.append((fn, args, d))
        if not self._reading:
            self._submit_reads()
        return d

    def _submit_reads(self) -> None:
        batch, self._pending_reads = self._pending_reads, []
        self._reading = True

        def run_batch() -> list[tuple[bool, Any]]:
            conn = self._connection()
            outcomes: list[tuple[bool, Any]] = []
            for fn, args, _ in batch:
                try:
                    outcomes.append((True, fn(conn, *args)))
                except BaseException:
                    outcomes.append((False, Failure()))
            return outcomes

        def deliver(outcomes: list[tuple[bool, Any]]) -> None:
            for (ok, value), (_, _, d) in zip(outcomes, batch, strict=True):
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)

        def failed(failure: Failure) -> None:  # the store is closed: every read fails
            for _, _, d in batch:
                d.errback(failure)

        def next_batch(_: Any) -> None:
            self._reading = False
            if self._pending_reads:
                self._submit_reads()

        self._run(run_batch).addCallbacks(deliver, failed).addBoth(next_batch)

    def _live_cache(self) -> LookupCache | None:
        """
        The cache if it may answer now: the store is open and a poll for other processes'
        changes that started at most L{cache_fresh} seconds ago succeeded. Everything
        cached is dropped when the polls resume after a stall (changes may have been
        trimmed from the table meanwhile).
        """
        cache, feed = self.cache, self._changes
        if cache is None or self._pool is None or feed.fresh_at is None:
            return None
        # The reactor's clock is the wall clock: one that went back counts as stale too.
        if not 0 <= self._reactor.seconds() - feed.fresh_at <= self.cache_fresh:
            return None
        cache.sync(feed.epoch)
        return cache

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"registry database {self.path} is closed")
        return self._conn

    # --- open / close -----------------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        if self._pool is not None:
            return defer.succeed(None)
        self._pool = DatabaseThread(self._reactor, f"sixchat-irp-sqlite {self.path}")
        self._pool.start()
        if hasattr(self._reactor, "addSystemEventTrigger"):
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self.close
            )
        d = self._run(self._open_db)

        def opened(last_change: int) -> None:
            self._changes.last_change = last_change
            self._changes.start_polling()
            log.info(
                "registry database {path} open (schema version {version})",
                path=self.path,
                version=SCHEMA_VERSION,
            )

        def failed(failure: Any) -> Any:
            self._stop_pool()
            return failure

        return d.addCallbacks(opened, failed)

    def _open_db(self) -> int:
        try:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open registry database {self.path}: {e}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"cannot use registry database {self.path}: {e}") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return int(row[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        def too_new(version: int, known: int) -> StoreError:
            return StoreError(
                f"registry database {self.path} has schema version {version}, newer than "
                f"this sixchat understands ({known}); upgrade sixchat"
            )

        migrate(conn, MIGRATIONS, too_new)

    def close(self) -> defer.Deferred[None]:
        if self._closing is not None:
            return self._closing
        if self._pool is None:
            return defer.succeed(None)
        self._changes.stop_polling()
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass
            self._shutdown_trigger = None

        def close_db() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def closed(result: Any) -> Any:
            self._stop_pool()
            self._closing = None
            return result

        d = self._run(close_db)
        self._closing = d
        d.addBoth(closed)
        return d

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    # --- bindings ---------------------------------------------------------------------------

    def register(
        self,
        identity: str,
        node: str,
        contacts: list[Contact],
        cert: bytes,
        serial: int,
        cert_not_after: datetime,
        now: datetime,
        until: datetime,
        max_nodes: int,
    ) -> defer.Deferred[None]:
        key = normalize_identity(identity)
        issuer_name = cert_issuer_name(cert)

        def run(conn: sqlite3.Connection) -> None:
            existing = conn.execute(
                "SELECT 1 FROM bindings WHERE identity = ? AND node = ?", (key, node)
            ).fetchone()
            if existing is None:
                (live,) = conn.execute(
                    "SELECT count(*) FROM bindings WHERE identity = ? AND until > ?",
                    (key, to_us(now)),
                ).fetchone()
                if live >= max_nodes:
                    raise ConflictError(f"{identity} already has {live} nodes")
            conn.execute(
                "INSERT OR REPLACE INTO bindings (identity, node, spelling, contacts, cert, "
                "serial, issuer_name, cert_not_after, until, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, node, identity, _contacts_json(contacts), cert, _serial(serial),
                 issuer_name, to_us(cert_not_after), to_us(until), to_us(now)),
            )  # fmt: skip
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM presented WHERE identity = ?", (key,)
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO presented (identity, cert_sha256, spelling, cert, "
                "serial, issuer_name, not_after, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, sha256(cert), identity, cert, _serial(serial),
                 issuer_name, to_us(cert_not_after), seq),
            )  # fmt: skip
            self._changes.log(conn, [identity])

        # The cache forgets before the local subscribers hear of the change.
        d = changing(self.cache, identity, self._write(run))
        return d.addCallback(lambda _: self._changes.announce([identity]))

    def unregister(self, identity: str, node: str) -> defer.Deferred[bool]:
        key = normalize_identity(identity)

        def run(conn: sqlite3.Connection) -> bool:
            removed = conn.execute(
                "DELETE FROM bindings WHERE identity = ? AND node = ?", (key, node)
            ).rowcount
            if removed:
                self._changes.log(conn, [identity])
            return bool(removed)

        def done(removed: bool) -> bool:
            if removed:
                self._changes.announce([identity])
            return removed

        return changing(self.cache, identity, self._write(run)).addCallback(done)

    def state(self, identity: str, now: datetime) -> defer.Deferred[IdentityState]:
        """
        From the lookup cache when it holds the identity at C{now}; else read, and cached
        if nothing changed the identity meanwhile (L{LookupCache}, L{cached_state}).
        """
        # Module functions and their arguments, not closures: a queued read holds fewer
        # objects (a busy registry's full collections walk every queued read).
        def plain() -> defer.Deferred[IdentityState]:
            return self._read(reads.state_only, identity, normalize_identity(identity), to_us(now))

        if self.cache is None:
            return plain()
        return cached_state(
            self._live_cache, identity, now,
            lambda key: self._read(reads.read_state, identity, key, to_us(now)), plain,
        )  # fmt: skip

    def expire(self, now: datetime) -> defer.Deferred[set[str]]:
        t = to_us(now)

        def run(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "DELETE FROM bindings WHERE until <= ? OR cert_not_after <= ? RETURNING spelling",
                (t, t),
            ).fetchall()
            # Housekeeping that needs a clock, and the caller's is the only one we have.
            conn.execute("DELETE FROM presented WHERE not_after <= ?", (t,))
            conn.execute("DELETE FROM tokens WHERE expires <= ?", (t,))
            touched = {spelling for (spelling,) in rows}
            self._changes.log(conn, touched)
            return touched

        def expired(touched: set[str]) -> set[str]:
            # Cached states already leave out what this deletes (L{valid_until}); dropping
            # them is for tidiness.
            if self.cache is not None:
                for spelling in touched:
                    self.cache.invalidate(normalize_identity(spelling))
            return self._changes.announce_and_return(touched)

        return self._write(run).addCallback(expired)

    def next_expiry(self) -> defer.Deferred[datetime | None]:
        def run(conn: sqlite3.Connection) -> datetime | None:
            (value,) = conn.execute(
                "SELECT min(min(until, cert_not_after)) FROM bindings"
            ).fetchone()
            return None if value is None else from_us(int(value))

        return self._read(run)

    # --- certificates and revocation --------------------------------------------------------

    def record_issued(
        self, identity: str, serial: int, issuer: bytes, cert: bytes
    ) -> defer.Deferred[None]:
        key, _name = issuer_key(issuer)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO issued (issuer, serial, identity, spelling, cert) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, _serial(serial), normalize_identity(identity), identity, cert),
            )

        return self._write(run)

    def revoke(self, serial: int, issuer: bytes, now: datetime) -> defer.Deferred[set[str]]:
        key, name = issuer_key(issuer)
        hex_serial = _serial(serial)

        def run(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
            conn.execute(
                "INSERT OR IGNORE INTO revocations (issuer, serial, issuer_name, revoked_at) "
                "VALUES (?, ?, ?, ?)",
                (key, hex_serial, name, to_us(now)),
            )
            rows = conn.execute(_REVOKE_BINDINGS, (hex_serial, name, name)).fetchall()
            touched = {spelling for (spelling,) in rows}
            # Connections authenticated by the certificate must hear of it even when it has
            # no binding (irp-1 §7.7), so its identity is announced too when we know it.
            holders = conn.execute(
                _CERT_HOLDERS, (hex_serial, name, name, key, hex_serial)
            ).fetchall()
            announced = touched | {s for (s,) in holders}
            # REVOCATION first tells other processes' caches to forget every "not revoked".
            self._changes.log(conn, [REVOCATION, *announced])
            return touched, announced

        def done(result: tuple[set[str], set[str]]) -> set[str]:
            touched, announced = result
            self._changes.announce(announced)
            return touched

        return revoking(self.cache, lambda: self._write(run)).addCallback(done)

    def revoked(self, issuer: bytes) -> defer.Deferred[list[tuple[int, datetime]]]:
        key, _name = issuer_key(issuer)

        def run(conn: sqlite3.Connection) -> list[tuple[int, datetime]]:
            rows = conn.execute(
                "SELECT serial, revoked_at FROM revocations WHERE issuer = ? ORDER BY revoked_at",
                (key,),
            ).fetchall()
            return [(int(serial, 16), from_us(at)) for serial, at in rows]

        return self._read(run)

    def is_revoked(self, serial: int, issuer: bytes) -> defer.Deferred[bool]:
        """
        Cached like states: a revocation through any process drops every cached "not
        revoked" (this one's at once, others' with the poll that reads their L{REVOCATION}
        row), which is also kept a minute at most (L{LookupCache.not_revoked_ttl}).
        """
        key, _name = issuer_key(issuer)
        if self.cache is None:
            return self._read(reads.is_revoked, key, _serial(serial))
        return cached_is_revoked(
            self._live_cache, serial, key, self._reactor.seconds(),
            lambda: self._read(reads.is_revoked, key, _serial(serial)),
        )  # fmt: skip

    # --- enrolment tokens -------------------------------------------------------------------

    def add_token(
        self, token_hash: bytes, identity: str, expires: datetime
    ) -> defer.Deferred[None]:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO tokens (hash, identity, expires, used) VALUES (?, ?, ?, NULL)",
                (token_hash, identity, to_us(expires)),
            )

        return self._write(run)

    def token_identity(self, token_hash: bytes, now: datetime) -> defer.Deferred[str | None]:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT identity FROM tokens WHERE hash = ? AND used IS NULL AND expires > ?",
                (token_hash, to_us(now)),
            ).fetchone()
            return None if row is None else str(row[0])

        return self._read(run)

    def consume_token(self, token_hash: bytes, now: datetime) -> defer.Deferred[str | None]:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "UPDATE tokens SET used = ? WHERE hash = ? AND used IS NULL AND expires > ? "
                "RETURNING identity",
                (to_us(now), token_hash, to_us(now)),
            ).fetchone()
            return None if row is None else str(row[0])

        return self._write(run)

    # --- change notification ----------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._changes.subscribers.append(callback)
        self._changes.start_polling()

    def notify(self, identity: str) -> defer.Deferred[None]:
        def run(conn: sqlite3.Connection) -> None:
            self._changes.log(conn, [identity])

        # The cache forgets before the local subscribers hear of the change.
        d = changing(self.cache, identity, self._write(run))
        return d.addCallback(lambda _: self._changes.announce([identity]))

