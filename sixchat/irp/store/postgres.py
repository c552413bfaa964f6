"""
The registry's state in PostgreSQL, shared by several registry processes (irp-1 §3.4: "with
several server instances on one shared database, a change made through any instance reaches
the watchers of every instance").

Why it is built this way:

 - B{psycopg 3, synchronously, in a small dedicated thread pool.} The reactor is epoll, not
   asyncio, so psycopg's async API has no loop to run on; a L{DatabaseThread} of a few threads,
   each with its own connection (psycopg connections are not meant to be shared between
   concurrent callers), keeps every round trip off the reactor thread without a new
   dependency such as psycopg_pool.
 - B{Every write is one transaction.} The node limit of C{register} is enforced under a row
   lock on the identity (C{INSERT … ON CONFLICT DO UPDATE} takes it, so concurrent registers
   of one identity queue behind each other, in this process or another); a token is consumed
   with a single C{UPDATE … WHERE used_at IS NULL … RETURNING}, which PostgreSQL serialises
   on the row, so two consumers never both succeed.
 - B{Change notification crosses processes through LISTEN/NOTIFY.} Each mutating transaction
   sends C{pg_notify('sixchat_irp', <normalized identity>)}; PostgreSQL delivers it only if
   and when the transaction commits. A listener thread with its own connection hands each
   payload to the subscribers in the reactor thread. Changes made by I{this} process come
   back the same way (there is no second, in-process path), so a subscriber may hear of its
   own change slightly later than the write's Deferred fires and may hear of one change
   twice: subscribers must be idempotent (re-read the state and push it).
 - B{Notifications lost while the listener is disconnected are replayed.} Every change is
   also written to the C{changes} table; after reconnecting, the listener delivers every
   identity changed since it was last known connected (with a safety margin). Without this
   a PostgreSQL restart would silently drop pushes to watchers.
 - B{Lookups are answered from a cache per instance} (L{LookupCache}) that the change
   notifications keep exact: a state is dropped when its identity's notification arrives,
   never answered past its first expiry, and the whole cache answers only while the
   listener proved itself alive within L{PostgresStore.cache_fresh} seconds (docs/irp.md).
   A cached lookup costs no round trip and no thread hop.
 - B{Migrations are versioned} (C{schema_version}) and applied in one transaction under an
   advisory lock, so processes starting together neither race nor apply a step twice; a
   database newer than this code is refused rather than misread.

DSN passwords never reach logs or error messages: see L{mask_dsn}.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat._sqlite import DatabaseThread
from sixchat.identity import normalize_identity
from sixchat.irp.messages import Contact
from sixchat.irp.store import postgres_queries as queries
from sixchat.irp.store.cached import cached_is_revoked, cached_state, changing, revoking
from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.interfaces import IdentityState, IRegistryStore
from sixchat.irp.store.lookup_cache import REVOCATION, LookupCache
from sixchat.irp.store.postgres_dsn import PostgresStoreError, mask_dsn, scrub
from sixchat.irp.store.postgres_notify import CHANNEL, Listener
from sixchat.irp.store.postgres_schema import MIGRATIONS, migrate

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "PostgresStore",
    "PostgresStoreError",
    "issuer_key",
    "mask_dsn",
]

_R = TypeVar("_R")


@implementer(IRegistryStore)
class PostgresStore:
    """
    L{IRegistryStore} on PostgreSQL through psycopg 3.

    @param dsn: a libpq connection string, C{postgresql://user:pass@host/db} or
        C{host=… dbname=…}; it is never logged unmasked.
    @param reactor: provides C{IReactorFromThreads} (results and notifications come back
        to the reactor thread) and C{IReactorCore} (a shutdown trigger closes the store).
    @param pool_size: worker threads, hence connections used for queries (plus one for the
        listener). Registry operations are a few milliseconds each, so a handful suffices.
    """

    log = Logger()

    #: A worker connection unused for this many seconds is checked with a round trip before
    #: use, so a database restart during a quiet period costs no failed request.
    idle_check = 30.0

    #: Listener: poll granularity (how soon it notices C{close}), heartbeat interval, and
    #: reconnection backoff bounds, in seconds.
    listen_poll = 0.2
    heartbeat = 1.0
    backoff_initial = 0.2
    backoff_max = 30.0

    #: The lookup cache answers only while the listener proved itself alive (a round trip on
    #: its connection, every L{heartbeat}) within this many seconds: the most a lookup can lag
    #: behind a change if the listener's connection dies without a sign (docs/irp.md).
    cache_fresh = 3.0

    def __init__(
        self, dsn: str, reactor: Any, *, pool_size: int = 4, cache_size: int = 20_000
    ) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's message quotes the text around the error, which may be the password.
            raise ValueError("invalid PostgreSQL DSN (not shown: it may hold a password)") from None
        self._dsn = dsn
        self._password = str(params.get("password") or "") or None
        self._masked = mask_dsn(dsn)
        self._extra: dict[str, Any] = {}
        if "application_name" not in params:
            self._extra["application_name"] = "sixchat-irp"
        if "connect_timeout" not in params:
            self._extra["connect_timeout"] = 10
        self._reactor = reactor
        # Not Twisted's ThreadPool: each of its calls leaves a reference cycle (see
        # DatabaseThread), garbage for the registry's collector on every cache miss.
        self._pool = DatabaseThread(reactor, "sixchat-irp-postgres", threads=pool_size)
        self._local = threading.local()
        self._conns: set[psycopg.Connection[Any]] = set()
        self._conns_lock = threading.Lock()
        self._subscribers: list[Callable[[str], None]] = []
        self._listener: Listener | None = None
        self._state = "new"  # new -> opening -> open -> closing -> closed
        self._shutdown_trigger: Any = None
        self._close_waiters: list[defer.Deferred[None]] = []
        #: Identity states and revocation answers (L{LookupCache}); None: every read goes
        #: to the database (C{cache_size=0}).
        self.cache = LookupCache(cache_size) if cache_size > 0 else None
        self._monotonic = time.monotonic

    def __repr__(self) -> str:
        return f"<PostgresStore {self._masked}>"

    # --- lifecycle --------------------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        """
        Start the pool, migrate, then start the listener; fires once the listener is
        LISTENing, so a change committed after C{open} fires is never missed.
        """
        if self._state != "new":
            return defer.fail(RuntimeError(f"PostgresStore.open() when {self._state}"))
        self._state = "opening"
        self._pool.start()
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self.close
        )
        d = self._run(migrate)

        def listen(_: object) -> defer.Deferred[None]:
            if self._state != "opening":
                raise PostgresStoreError("store closed while opening")
            ready: defer.Deferred[None] = defer.Deferred()
            self._listener = Listener(self, ready)
            self._listener.start()
            return ready

        def opened(_: object) -> None:
            self._state = "open"
            self.log.info("PostgreSQL registry store open: {dsn}", dsn=self._masked)

        def failed(f: Failure) -> Any:
            # Leave nothing running behind a failed open; the caller gets the first error.
            if self._state != "opening":
                return f  # close() was called meanwhile and is already shutting down
            self._state = "open"
            return self.close().addCallback(lambda _: f)

        d.addCallback(listen)
        d.addCallbacks(opened, failed)
        return d

    def close(self) -> defer.Deferred[None]:
        """
        Stop the listener and the pool and close every connection. Joining threads blocks, so
        it happens in a short-lived thread of its own; the Deferred fires in the reactor once
        all is done (queries already queued finish first). Safe to call more than once.
        """
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._state in ("new", "closed"):
            self._state = "closed"
            waiter.callback(None)
            return waiter
        self._close_waiters.append(waiter)
        if self._state == "closing":
            return waiter
        self._state = "closing"
        if self._shutdown_trigger is not None:
            trigger, self._shutdown_trigger = self._shutdown_trigger, None
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # we are that trigger, already running
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

        def finished() -> None:
            self._state = "closed"
            waiters, self._close_waiters = self._close_waiters, []
            for w in waiters:
                w.callback(None)

        def shut() -> None:
            try:
                self._pool.stop()
                if listener is not None:
                    listener.join()
                with self._conns_lock:
                    conns, self._conns = list(self._conns), set()
                for conn in conns:
                    conn.close()
            finally:
                self._reactor.callFromThread(finished)

        threading.Thread(target=shut, name="sixchat-irp-postgres-close", daemon=True).start()
        return waiter

    # --- connections ------------------------------------------------------------------------

    def _connect(self, **extra: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection (transactions are explicit); errors carry no password."""
        try:
            return psycopg.connect(self._dsn, autocommit=True, **self._extra, **extra)
        except psycopg.Error as e:
            raise PostgresStoreError(
                f"cannot connect to PostgreSQL ({self._masked}): {scrub(str(e), self._password)}"
            ) from None

    def _worker_connection(self) -> psycopg.Connection[Any]:
        """
        This worker thread's connection: made on first use, replaced when broken, and
        checked with a round trip after a quiet spell (a restarted server shows only then).
        """
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        last: float = getattr(self._local, "last_used", 0.0)
        if conn is not None and not conn.closed and time.monotonic() - last > self.idle_check:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                self._discard(conn)
                conn = None
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.add(conn)
        return conn

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._conns_lock:
            self._conns.discard(conn)
        try:
            conn.close()
        except psycopg.Error:
            pass
        self._local.conn = None

    def _in_thread(self, fn: Callable[..., _R], args: Sequence[Any]) -> _R:
        conn = self._worker_connection()
        try:
            return fn(conn, *args)
        except psycopg.OperationalError as e:
            if conn.broken or conn.closed:
                self._discard(conn)
            raise PostgresStoreError(
                f"PostgreSQL error ({self._masked}): {scrub(str(e), self._password)}"
            ) from None
        finally:
            self._local.last_used = time.monotonic()

    def _run(self, fn: Callable[..., _R], *args: Any) -> defer.Deferred[_R]:
        """Run C{fn(connection, *args)} in the pool; fires in the reactor thread."""
        if self._state in ("new", "closing", "closed"):
            return defer.fail(RuntimeError(f"PostgresStore used when {self._state}"))
        return self._pool.run(self._in_thread, fn, args)

    # --- schema -----------------------------------------------------------------------------

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
        d = self._run(
            queries.register,
            identity,
            node,
            [[c.host, c.port] for c in contacts],
            cert,
            serial,
            cert_not_after,
            now,
            until,
            max_nodes,
        )
        return changing(self.cache, identity, d)

    def unregister(self, identity: str, node: str) -> defer.Deferred[bool]:
        return changing(self.cache, identity, self._run(queries.unregister, identity, node))

    def state(self, identity: str, now: datetime) -> defer.Deferred[IdentityState]:
        """
        From the lookup cache when it holds the identity at C{now}; else read in one
        statement, and cached if nothing changed the identity meanwhile (L{LookupCache}).
        """
        return cached_state(
            self._live_cache, identity, now,
            lambda _key: self._run(queries.state_and_expiry, identity, now),
            lambda: self._run(queries.state_of, identity, now),
        )  # fmt: skip

    def _live_cache(self) -> LookupCache | None:
        """
        The cache if it may answer now: the store is open and the listener is LISTENing and
        proved itself alive within L{cache_fresh} seconds. Everything cached is dropped
        when the listener has reconnected since (notifications may have been lost).
        """
        cache, listener = self.cache, self._listener
        if cache is None or listener is None or self._state != "open" or not listener.live:
            return None
        if self._monotonic() - listener.alive_at > self.cache_fresh:
            return None
        cache.sync(listener.epoch)
        return cache

    def expire(self, now: datetime) -> defer.Deferred[set[str]]:
        """
        Delete bindings whose C{until} or certificate's C{notAfter} is past; fires with the
        identities touched, spelled as their certificates do (as the SQLite store). Also
        prunes what can never be answered again: presented certificates past C{notAfter},
        expired tokens, and journal rows older than L{CHANGES_RETENTION}.
        """
        d = self._run(queries.expire, now)
        cache = self.cache
        if cache is None:
            return d

        def expired(touched: set[str]) -> set[str]:
            # Cached states already leave out what this deletes (L{valid_until}); dropping
            # them is for tidiness, and the notifications do the same.
            for spelling in touched:
                try:
                    cache.invalidate(normalize_identity(spelling))
                except ValueError:  # pragma: no cover - only valid identities are stored
                    pass
            return touched

        return d.addCallback(expired)

    def next_expiry(self) -> defer.Deferred[datetime | None]:
        """The earliest moment a binding stops being live (C{until} or its cert's notAfter)."""
        return self._run(queries.next_expiry)

    # --- certificates and revocation --------------------------------------------------------

    def record_issued(
        self, identity: str, serial: int, issuer: bytes, cert: bytes
    ) -> defer.Deferred[None]:
        return self._run(queries.record_issued, identity, serial, issuer, cert)

    def revoke(self, serial: int, issuer: bytes, now: datetime) -> defer.Deferred[set[str]]:
        """
        Revoke (idempotent: the first revocation time stays) and remove the certificate's
        bindings; fires with the identities whose bindings changed, as their certificates
        spell them. Every identity known to hold the certificate is announced, bindings or
        not, so connections it authenticated learn of it on every instance (irp-1 §7.7).
        """
        return revoking(self.cache, lambda: self._run(queries.revoke, serial, issuer, now))

    def revoked(self, issuer: bytes) -> defer.Deferred[list[tuple[int, datetime]]]:
        return self._run(queries.revoked, issuer)

    def is_revoked(self, serial: int, issuer: bytes) -> defer.Deferred[bool]:
        """
        Cached like states (every connection asks about once a second): a revocation
        anywhere drops every cached "not revoked" (L{REVOCATION}), which is also kept a
        minute at most (L{LookupCache.not_revoked_ttl}).
        """
        return cached_is_revoked(
            self._live_cache, serial, issuer_key(issuer)[0], self._monotonic(),
            lambda: self._run(queries.is_revoked, serial, issuer),
        )  # fmt: skip

    # --- enrolment tokens -------------------------------------------------------------------

    def add_token(
        self, token_hash: bytes, identity: str, expires: datetime
    ) -> defer.Deferred[None]:
        return self._run(queries.add_token, token_hash, identity, expires)

    def token_identity(self, token_hash: bytes, now: datetime) -> defer.Deferred[str | None]:
        """The identity of an unexpired, unused token, without using it."""
        return self._run(queries.token_identity, token_hash, now)

    def consume_token(self, token_hash: bytes, now: datetime) -> defer.Deferred[str | None]:
        """
        One statement, so PostgreSQL's row lock decides between concurrent consumers: the
        loser re-checks C{used_at IS NULL} after the winner commits and updates nothing. The
        lookup is by the token's SHA-256, whose timing tells an attacker nothing about
        other tokens (irp-1 §4.2's constant-time comparison is about the token itself).
        """
        return self._run(queries.consume_token, token_hash, now)

    # --- change notification ----------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """
        Call C{callback(normalized identity)} in the reactor thread for every change made
        through any process on this database, this one included (changes come back through
        LISTEN/NOTIFY only, shortly after the write's Deferred fires; the same change may
        be delivered twice after a reconnection). Callbacks must be idempotent.
        """
        self._subscribers.append(callback)

    def notify(self, identity: str) -> defer.Deferred[None]:
        """Announce a change to every process (journal + NOTIFY, one transaction)."""
        return changing(self.cache, identity, self._run(queries.notify, identity))

    def _deliver(self, key: str) -> None:
        """
        In the reactor thread: the cache forgets the identity before anyone hears of the
        change; one subscriber's failure does not starve the others.
        """
        cache = self.cache
        if key == REVOCATION:
            if cache is not None:
                cache.revocations_changed()
            return
        if cache is not None:
            cache.invalidate(key)
        for callback in list(self._subscribers):
            try:
                callback(key)
            except Exception:
                self.log.failure("registry change subscriber failed for {identity}", identity=key)
