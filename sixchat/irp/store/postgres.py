"""
The registry's state in PostgreSQL, shared by several registry processes (irp-1 §3.4: "with
several server instances on one shared database, a change made through any instance reaches
the watchers of every instance").

Why it is built this way:

 - B{psycopg 3, synchronously, in a small dedicated thread pool.} The reactor is epoll, not
   asyncio, so psycopg's async API has no loop to run on; a L{ThreadPool} of a few threads,
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
 - B{Migrations are versioned} (C{schema_version}) and applied in one transaction under an
   advisory lock, so processes starting together neither race nor apply a step twice; a
   database newer than this code is refused rather than misread.

DSN passwords never reach logs or error messages: see L{mask_dsn}.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sixchat.errors import SixchatError
from sixchat.identity import normalize_identity
from sixchat.irp.interfaces import Binding, ConflictError, IdentityState, IRegistryStore
from sixchat.irp.messages import Contact

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "PostgresStore",
    "PostgresStoreError",
    "issuer_key",
    "mask_dsn",
]

_R = TypeVar("_R")

_MASK = "***"

#: The LISTEN/NOTIFY channel; payloads are normalized identities.
CHANNEL = "sixchat_irp"

#: Key of the transaction-level advisory lock taken while migrating ("Sixchat" in ASCII).
MIGRATION_LOCK = 0x53697863686174

#: How long the C{changes} table keeps rows for replay after a listener reconnects.
CHANGES_RETENTION = timedelta(hours=1)

#: How far before the listener's last sign of life a replay starts: a change's C{at} is its
#: transaction's start, which precedes its commit (and its NOTIFY) by the transaction's
#: duration; ours last milliseconds, so a minute is ample.
REPLAY_MARGIN = timedelta(minutes=1)

#: Each step is a tuple of DDL statements run in order; step I{n} brings the schema to
#: version I{n}. Append new steps, never edit applied ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per identity ever registered (key: normalized): the row whose lock
        # serialises the registers of one identity, in every process.
        """CREATE TABLE identities (
            key text PRIMARY KEY
        )""",
        # Serials are numeric: X.509 allows up to 20 octets, more than bigint holds.
        # issuer_name is the DER issuer Name of the binding's certificate (NULL if it could
        # not be parsed), so a revocation removes exactly the bindings of that certificate.
        # spelling is the identity as the certificate spells it (irp-1 §3.3). A binding
        # lives until the earlier of its until and its certificate's notAfter.
        """CREATE TABLE bindings (
            identity text NOT NULL REFERENCES identities (key),
            node text NOT NULL,
            spelling text NOT NULL,
            contacts jsonb NOT NULL,
            cert bytea NOT NULL,
            serial numeric NOT NULL,
            issuer_name bytea,
            cert_not_after timestamptz NOT NULL,
            until timestamptz NOT NULL,
            updated timestamptz NOT NULL,
            PRIMARY KEY (identity, node)
        )""",
        "CREATE INDEX bindings_until ON bindings (until)",
        "CREATE INDEX bindings_cert_not_after ON bindings (cert_not_after)",
        "CREATE INDEX bindings_serial ON bindings (serial)",
        # Every leaf presented in a register, for the identity-level cert of irp-1 §7.4 (the
        # most recent one that is still unrevoked and unexpired); seq orders presentations
        # across processes, independently of their clocks.
        """CREATE TABLE presented (
            identity text NOT NULL REFERENCES identities (key),
            cert_sha256 bytea NOT NULL,
            spelling text NOT NULL,
            cert bytea NOT NULL,
            serial numeric NOT NULL,
            issuer_name bytea,
            not_after timestamptz NOT NULL,
            presented_at timestamptz NOT NULL,
            seq bigserial NOT NULL,
            PRIMARY KEY (identity, cert_sha256)
        )""",
        "CREATE INDEX presented_serial ON presented (serial)",
        # Issuers are keyed by L{issuer_key} (a hash of the CA's subject name: a CA is its
        # name, and a certificate can exceed the size of a btree entry); issuer_name, the
        # name itself, matches bindings and presentations.
        """CREATE TABLE issued (
            serial numeric NOT NULL,
            issuer bytea NOT NULL,
            identity text NOT NULL,
            spelling text NOT NULL,
            cert bytea NOT NULL,
            PRIMARY KEY (serial, issuer)
        )""",
        """CREATE TABLE revocations (
            serial numeric NOT NULL,
            issuer bytea NOT NULL,
            issuer_name bytea,
            revoked_at timestamptz NOT NULL,
            PRIMARY KEY (serial, issuer)
        )""",
        # Only the token's hash is stored (irp-1 §4.2).
        """CREATE TABLE tokens (
            hash bytea PRIMARY KEY,
            identity text NOT NULL,
            expires timestamptz NOT NULL,
            used_at timestamptz
        )""",
        # A short journal of changed identities, replayed by listeners after a reconnect.
        """CREATE TABLE changes (
            seq bigserial PRIMARY KEY,
            identity text NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX changes_at ON changes (at)",
    ),
)


class PostgresStoreError(SixchatError):
    """The database cannot be used (connection refused, schema too new); no password inside."""


def mask_dsn(dsn: str) -> str:
    """
    C{dsn} fit for a log line: the password (given as C{password=…} or in a URL) is replaced
    by C{***}. A DSN that does not parse is not shown at all, since libpq's complaint or the
    text itself might carry the password.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable PostgreSQL DSN>"
    if params.get("password"):
        params.update(password=_MASK)
    return make_conninfo("", **params)


def _scrub(message: str, password: str | None) -> str:
    """An error message from libpq with any occurrence of the password replaced."""
    if password:
        message = message.replace(password, _MASK)
    return message


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _issuer_name_of_cert(cert: bytes) -> bytes | None:
    """
    The DER issuer Name of a leaf, or None if C{cert} is not a certificate (only tests do
    that). With the serial it identifies the certificate for revocation: serials are unique
    per issuer, not globally.
    """
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(cert).issuer.public_bytes()
    except ValueError:
        return None


def issuer_key(issuer: bytes) -> tuple[bytes, bytes | None]:
    """
    How revocations and issued certificates name their CA, given the CA certificate's DER:
    the SHA-256 of its subject name (DER) and that name, so a re-issued CA certificate with
    the same name keeps its CRL (as L{sixchat.irp.sqlite_store} does). Bytes that are no
    certificate are keyed by their own hash, with no name.
    """
    from cryptography import x509

    try:
        name = x509.load_der_x509_certificate(issuer).subject.public_bytes()
    except ValueError:
        return _sha256(b"raw:" + issuer), None
    return _sha256(name), name


def _utc(value: datetime) -> datetime:
    """psycopg answers in the session's time zone; the interface speaks UTC."""
    return value.astimezone(UTC)


def _int(value: Decimal | int) -> int:
    return int(value)


#: Matches a revocation to a row of C{bindings} or C{presented} aliased C{x}: same serial
#: and same issuer name. Where a name is unknown (a certificate that does not parse, only in
#: tests) the serial alone decides.
_REVOKED = sql.SQL(
    "EXISTS (SELECT 1 FROM revocations r WHERE r.serial = x.serial AND (x.issuer_name IS NULL"
    " OR r.issuer_name IS NULL OR r.issuer_name = x.issuer_name))"
)

#: An identity's live bindings at a time: not expired, certificate neither expired nor
#: revoked (irp-1 §3.3). Parameters: identity, now, now.
_LIVE_BINDINGS = sql.SQL(
    "SELECT x.node, x.contacts, x.cert, x.serial, x.until, x.updated, x.spelling"
    " FROM bindings x WHERE x.identity = %s AND x.until > %s AND x.cert_not_after > %s"
    " AND NOT {revoked} ORDER BY x.node"
).format(revoked=_REVOKED)

#: The identity-level certificate (irp-1 §7.4): the unrevoked, unexpired leaf most recently
#: presented in a register. Parameters: identity, now.
_IDENTITY_CERT = sql.SQL(
    "SELECT x.cert, x.spelling FROM presented x WHERE x.identity = %s AND x.not_after > %s"
    " AND NOT {revoked} ORDER BY x.seq DESC LIMIT 1"
).format(revoked=_REVOKED)


def _announce(conn: psycopg.Connection[Any], key: str) -> None:
    """
    Journal and NOTIFY a change inside the caller's transaction: PostgreSQL sends the
    notification only when (and if) that transaction commits, so listeners never see a change
    that was rolled back, nor one before it is visible to their queries.
    """
    conn.execute("INSERT INTO changes (identity) VALUES (%s)", (key,))
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key))


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
    heartbeat = 10.0
    backoff_initial = 0.2
    backoff_max = 30.0

    def __init__(self, dsn: str, reactor: Any, *, pool_size: int = 4) -> None:
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
        self._pool = ThreadPool(minthreads=0, maxthreads=pool_size, name="sixchat-irp-postgres")
        self._local = threading.local()
        self._conns: set[psycopg.Connection[Any]] = set()
        self._conns_lock = threading.Lock()
        self._subscribers: list[Callable[[str], None]] = []
        self._listener: _Listener | None = None
        self._state = "new"  # new -> opening -> open -> closing -> closed
        self._shutdown_trigger: Any = None
        self._close_waiters: list[defer.Deferred[None]] = []

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
        d = self._run(self._migrate)

        def listen(_: object) -> defer.Deferred[None]:
            if self._state != "opening":
                raise PostgresStoreError("store closed while opening")
            ready: defer.Deferred[None] = defer.Deferred()
            self._listener = _Listener(self, ready)
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
                f"cannot connect to PostgreSQL ({self._masked}): {_scrub(str(e), self._password)}"
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
                f"PostgreSQL error ({self._masked}): {_scrub(str(e), self._password)}"
            ) from None
        finally:
            self._local.last_used = time.monotonic()

    def _run(self, fn: Callable[..., _R], *args: Any) -> defer.Deferred[_R]:
        """Run C{fn(connection, *args)} in the pool; fires in the reactor thread."""
        if self._state in ("new", "closing", "closed"):
            return defer.fail(RuntimeError(f"PostgresStore used when {self._state}"))
        return deferToThreadPool(self._reactor, self._pool, self._in_thread, fn, args)

    # --- schema -----------------------------------------------------------------------------

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Taken before anything else, so a second process waits here, then finds the
            # schema current and does nothing (CREATE TABLE IF NOT EXISTS alone races).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > len(MIGRATIONS):
                raise PostgresStoreError(
                    f"the database's schema is version {current}, newer than this sixchat "
                    f"understands ({len(MIGRATIONS)}); upgrade sixchat"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)  # constant DDL, no values
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

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
        return self._run(
            self._register,
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

    @staticmethod
    def _register(
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
        issuer_name = _issuer_name_of_cert(cert)
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
                (key, _sha256(cert), identity, cert, serial, issuer_name, cert_not_after, now),
            )
            _announce(conn, key)

    def unregister(self, identity: str, node: str) -> defer.Deferred[bool]:
        return self._run(self._unregister, identity, node)

    @staticmethod
    def _unregister(conn: psycopg.Connection[Any], identity: str, node: str) -> bool:
        key = normalize_identity(identity)
        with conn.transaction():
            removed = conn.execute(
                "DELETE FROM bindings WHERE identity = %s AND node = %s RETURNING node",
                (key, node),
            ).fetchone()
            if removed is not None:
                _announce(conn, key)
        return removed is not None

    def state(self, identity: str, now: datetime) -> defer.Deferred[IdentityState]:
        return self._run(self._state_of, identity, now)

    @staticmethod
    def _state_of(conn: psycopg.Connection[Any], identity: str, now: datetime) -> IdentityState:
        key = normalize_identity(identity)
        with conn.transaction():
            # One snapshot for the three reads, so the bindings and the identity-level
            # certificate never mix two moments.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            rows = conn.execute(_LIVE_BINDINGS, (key, now, now)).fetchall()
            cert_row = conn.execute(_IDENTITY_CERT, (key, now)).fetchone()
        bindings = tuple(
            Binding(
                node=node,
                contacts=tuple(Contact(str(h), int(p)) for h, p in contacts),
                cert=bytes(cert),
                serial=_int(serial),
                until=_utc(until_),
                updated=_utc(updated),
            )
            for node, contacts, cert, serial, until_, updated, _spelling in rows
        )
        # The spelling of the most recent certificate still answered, as the SQLite store.
        spelling = identity
        if cert_row is not None:
            spelling = cert_row[1]
        elif rows:
            spelling = rows[0][6]
        return IdentityState(
            identity=spelling,
            bindings=bindings,
            cert=bytes(cert_row[0]) if cert_row is not None else None,
        )

    def expire(self, now: datetime) -> defer.Deferred[set[str]]:
        """
        Delete bindings whose C{until} or certificate's C{notAfter} is past; fires with the
        identities touched, spelled as their certificates do (as the SQLite store). Also
        prunes what can never be answered again: presented certificates past C{notAfter},
        expired tokens, and journal rows older than L{CHANGES_RETENTION}.
        """
        return self._run(self._expire, now)

    @staticmethod
    def _expire(conn: psycopg.Connection[Any], now: datetime) -> set[str]:
        with conn.transaction():
            rows = conn.execute(
                "DELETE FROM bindings WHERE until <= %s OR cert_not_after <= %s"
                " RETURNING identity, spelling",
                (now, now),
            ).fetchall()
            for key in sorted({key for key, _ in rows}):
                _announce(conn, key)
            conn.execute("DELETE FROM presented WHERE not_after <= %s", (now,))
            conn.execute("DELETE FROM tokens WHERE expires <= %s", (now,))
            # The journal is pruned by the database's clock: its rows are stamped by it.
            conn.execute("DELETE FROM changes WHERE at < now() - %s", (CHANGES_RETENTION,))
        return {spelling for _, spelling in rows}

    def next_expiry(self) -> defer.Deferred[datetime | None]:
        """The earliest moment a binding stops being live (C{until} or its cert's notAfter)."""
        return self._run(self._next_expiry)

    @staticmethod
    def _next_expiry(conn: psycopg.Connection[Any]) -> datetime | None:
        row = conn.execute("SELECT min(least(until, cert_not_after)) FROM bindings").fetchone()
        return _utc(row[0]) if row is not None and row[0] is not None else None

    # --- certificates and revocation --------------------------------------------------------

    def record_issued(
        self, identity: str, serial: int, issuer: bytes, cert: bytes
    ) -> defer.Deferred[None]:
        return self._run(self._record_issued, identity, serial, issuer, cert)

    @staticmethod
    def _record_issued(
        conn: psycopg.Connection[Any], identity: str, serial: int, issuer: bytes, cert: bytes
    ) -> None:
        key, _name = issuer_key(issuer)
        conn.execute(
            "INSERT INTO issued (serial, issuer, identity, spelling, cert)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (serial, issuer) DO UPDATE SET"
            " identity = EXCLUDED.identity, spelling = EXCLUDED.spelling, cert = EXCLUDED.cert",
            (serial, key, normalize_identity(identity), identity, cert),
        )

    def revoke(self, serial: int, issuer: bytes, now: datetime) -> defer.Deferred[set[str]]:
        """
        Revoke (idempotent: the first revocation time stays) and remove the certificate's
        bindings; fires with the identities whose bindings changed, as their certificates
        spell them. Every identity known to hold the certificate is announced, bindings or
        not, so connections it authenticated learn of it on every instance (irp-1 §7.7).
        """
        return self._run(self._revoke, serial, issuer, now)

    @staticmethod
    def _revoke(
        conn: psycopg.Connection[Any], serial: int, issuer: bytes, now: datetime
    ) -> set[str]:
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
            for identity in sorted({k for k, _ in rows} | {k for (k,) in holders}):
                _announce(conn, identity)
        return {spelling for _, spelling in rows}

    def revoked(self, issuer: bytes) -> defer.Deferred[list[tuple[int, datetime]]]:
        return self._run(self._revoked, issuer)

    @staticmethod
    def _revoked(conn: psycopg.Connection[Any], issuer: bytes) -> list[tuple[int, datetime]]:
        key, _name = issuer_key(issuer)
        rows = conn.execute(
            "SELECT serial, revoked_at FROM revocations WHERE issuer = %s"
            " ORDER BY revoked_at, serial",
            (key,),
        ).fetchall()
        return [(_int(s), _utc(at)) for s, at in rows]

    def is_revoked(self, serial: int, issuer: bytes) -> defer.Deferred[bool]:
        return self._run(self._is_revoked, serial, issuer)

    @staticmethod
    def _is_revoked(conn: psycopg.Connection[Any], serial: int, issuer: bytes) -> bool:
        key, _name = issuer_key(issuer)
        row = conn.execute(
            "SELECT 1 FROM revocations WHERE serial = %s AND issuer = %s", (serial, key)
        ).fetchone()
        return row is not None

    # --- enrolment tokens -------------------------------------------------------------------

    def add_token(
        self, token_hash: bytes, identity: str, expires: datetime
    ) -> defer.Deferred[None]:
        return self._run(self._add_token, token_hash, identity, expires)

    @staticmethod
    def _add_token(
        conn: psycopg.Connection[Any], token_hash: bytes, identity: str, expires: datetime
    ) -> None:
        conn.execute(
            "INSERT INTO tokens (hash, identity, expires) VALUES (%s, %s, %s)",
            (token_hash, identity, expires),
        )

    def consume_token(self, token_hash: bytes, now: datetime) -> defer.Deferred[str | None]:
        """
        One statement, so PostgreSQL's row lock decides between concurrent consumers: the
        loser re-checks C{used_at IS NULL} after the winner commits and updates nothing. The
        lookup is by the token's SHA-256, whose timing tells an attacker nothing about
        other tokens (irp-1 §4.2's constant-time comparison is about the token itself).
        """
        return self._run(self._consume_token, token_hash, now)

    @staticmethod
    def _consume_token(
        conn: psycopg.Connection[Any], token_hash: bytes, now: datetime
    ) -> str | None:
        row = conn.execute(
            "UPDATE tokens SET used_at = %s"
            " WHERE hash = %s AND used_at IS NULL AND expires > %s RETURNING identity",
            (now, token_hash, now),
        ).fetchone()
        return row[0] if row is not None else None

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
        return self._run(self._notify, identity)

    @staticmethod
    def _notify(conn: psycopg.Connection[Any], identity: str) -> None:
        key = normalize_identity(identity)
        with conn.transaction():
            _announce(conn, key)

    def _deliver(self, key: str) -> None:
        """In the reactor thread: one subscriber's failure does not starve the others."""
        for callback in list(self._subscribers):
            try:
                callback(key)
            except Exception:
                self.log.failure("registry change subscriber failed for {identity}", identity=key)


class _Listener:
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
                        f"cannot LISTEN on {store._masked}: {_scrub(str(e), store._password)}"
                    )))  # fmt: skip
                    return
                store.log.warn(
                    "registry change listener lost its connection ({error}); reconnecting",
                    error=_scrub(str(e), store._password)
                    if isinstance(e, psycopg.Error)
                    else repr(e),
                )
                if self._listening:
                    # It had been working: a new outage starts with a short wait.
                    backoff = store.backoff_initial
                self._stop.wait(backoff)
                backoff = min(backoff * 2, store.backoff_max)
            finally:
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
                row = conn.execute("SELECT now()").fetchone()
                assert row is not None
                self.last_alive = row[0]
                beat = time.monotonic()

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
