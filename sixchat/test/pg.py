"""
PostgreSQL for tests: a fresh, empty database per test.

Where the server comes from, in order:

 1. C{$SIXCHAT_TEST_POSTGRES_DSN}: a database someone provisioned (CI, a developer's
    server). Each test gets a database of its own there (C{CREATE DATABASE}) or, if the
    role may not create databases, a schema of its own (the DSN then sets C{search_path}).
 2. A throwaway cluster of this test process, started on first use when the server binaries
    are installed (C{pg_config --bindir}, C{/usr/lib/postgresql/*/bin}, C{$PATH}): C{initdb}
    and C{pg_ctl start} in a temporary directory, listening on a Unix socket in that
    directory only (no TCP port to collide with), with fsync off. C{initdb} refuses to run
    as root, so under root (CI) both run as the C{postgres} user through C{runuser}, in a
    directory chowned to it. It takes well under a second to start here, and is stopped and
    removed when the process exits.
 3. Otherwise the tests are skipped, saying why.

The functions here block (subprocesses, a connection); tests call them through
L{database_for}, which runs them in the reactor's thread pool.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import itertools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Any
from unittest import SkipTest

ENV = "SIXCHAT_TEST_POSTGRES_DSN"
SKIP_REASON = (
    f"PostgreSQL server binaries not found; install Debian's postgresql package or set {ENV}"
)
_PORT = 5432  # only names the socket file, inside a private directory
_counter = itertools.count(1)
_lock = threading.Lock()
_cluster: Cluster | None = None
_cluster_error: str | None = None


def _has_server(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl"))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_bindir() -> str | None:
    """The directory holding C{initdb} and C{pg_ctl}, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for bindir in candidates:
        if bindir and _has_server(bindir):
            return bindir
    return None


def psycopg_missing() -> str | None:
    """Why the PostgreSQL store cannot even be imported here, or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'sixchat[postgres]')"
    return None


def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None if they can (cheap: no server started)."""
    missing = psycopg_missing()
    if missing is not None:
        return missing
    if os.environ.get(ENV):
        return None
    if find_bindir() is None:
        return SKIP_REASON
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (initdb refuses root)"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run initdb as"
    return None


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory, reachable by Unix socket."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.directory: str | None = None
        self._as: list[str] = []

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, dbname: str) -> str:
        assert self.directory is not None
        return f"host={self.directory} port={_PORT} user=postgres dbname={dbname}"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        """C{initdb} then C{pg_ctl start -w}; raises RuntimeError with the server's log."""
        root = os.geteuid() == 0
        # Under root the directory must be reachable by the postgres user, so use /tmp, not a
        # TMPDIR that may sit in root's home; a short path also keeps the socket name legal.
        base = "/tmp" if root or len(tempfile.gettempdir()) > 60 else None
        self.directory = tempfile.mkdtemp(prefix="sixchat-pg-", dir=base)
        if root:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.directory, "data")
        log = os.path.join(self.directory, "log")
        initdb = self._run(
            os.path.join(self.bindir, "initdb"),
            "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N",
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr.strip()[-2000:]}")
        options = (
            f"-F -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
            f" -c listen_addresses= -k {shlex.quote(self.directory)} -p {_PORT}"
        )
        start = self._run(
            os.path.join(self.bindir, "pg_ctl"),
            "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start",
            timeout=90,
        )  # fmt: skip
        if start.returncode != 0:
            try:
                with open(log) as f:
                    tail = f.read()[-2000:]
            except OSError:
                tail = start.stderr
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {tail.strip()}")

    def stop(self) -> None:
        """Stop the server (immediate: its data is thrown away) and remove the directory."""
        if self.directory is None:
            return
        data = os.path.join(self.directory, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            try:
                self._run(
                    os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w",
                    "-t", "30", "stop", timeout=60,
                )  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


def _shared_cluster() -> Cluster:
    """This process's cluster, started on first use (under a lock: tests may race here)."""
    global _cluster, _cluster_error
    with _lock:
        if _cluster is not None:
            return _cluster
        if _cluster_error is not None:
            raise RuntimeError(_cluster_error)
        reason = skip_reason()
        if reason is not None:
            raise SkipTest(reason)
        bindir = find_bindir()
        assert bindir is not None
        cluster = Cluster(bindir)
        try:
            cluster.start()
        except Exception as e:
            # One failure is reported by every test, without retrying initdb each time.
            _cluster_error = str(e)
            raise
        atexit.register(cluster.stop)
        _cluster = cluster
        return cluster


@dataclass
class Database:
    """A fresh database (or schema) for one test; C{drop} removes it."""

    dsn: str
    admin_dsn: str
    name: str
    kind: str  # "database" or "schema"

    def drop(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            if self.kind == "database":
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.name)
                    )
                )
            else:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.name))
                )


def fresh_database() -> Database:
    """
    A new empty database (blocking). Raises L{SkipTest} if PostgreSQL is unavailable.
    """
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    provided = os.environ.get(ENV)
    if provided:
        admin = provided
        name = f"sixchat_test_{os.getpid()}_{next(_counter)}"
    else:
        admin = _shared_cluster().admin_dsn
        name = f"test_{next(_counter)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            if not provided:
                raise
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            dsn = make_conninfo(provided, options=f"-c search_path={name}")
            return Database(dsn, admin, name, "schema")
    return Database(make_conninfo(admin, dbname=name), admin, name, "database")


def database_for(testcase: Any) -> Any:
    """
    A Deferred firing with the DSN of a fresh database for C{testcase} (a trial TestCase),
    dropped at its cleanup. Process and database work runs in the reactor's thread pool.
    """
    from twisted.internet import threads

    def made(db: Database) -> str:
        testcase.addCleanup(threads.deferToThread, db.drop)
        return db.dsn

    return threads.deferToThread(fresh_database).addCallback(made)
