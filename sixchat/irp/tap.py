"""
C{twistd sixchat-irp}: run an Identity Registration Protocol registry (irp-1, TCP 4604).

    twistd -n sixchat-irp --cert irp.p12 --ca-dir ca/ [--listen tcp6:4604]
        [--db PATH.sqlite | --db postgresql://…] [--lookup-policy authenticated|public]
        [--allow-private-addresses] [--password-file F] [--ca-password-file F]
        [--domain example.com …] [--gc-interval SECONDS]

Everything that can be checked before the reactor runs (files, passwords, the CA, the
database's directory) is checked in C{postOptions} and reported as one line
(C{usage.UsageError}), never a traceback. The database itself is opened by the service once
the reactor runs (it is reached from a thread, or over the network for PostgreSQL); a failure
there is logged as one critical line and stops twistd.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from sixchat.errors import SixchatError
from sixchat.twistd import OneLineOptions, check_listen

DEFAULT_DB = "irp.sqlite"

log = Logger()


def _positive(options: usage.Options, name: str, kind: type[int] | type[float]) -> None:
    try:
        value = kind(options[name])
    except ValueError:
        raise usage.UsageError(f"--{name} must be a number") from None
    if value <= 0:
        raise usage.UsageError(f"--{name} must be positive")
    options[name] = value


class Options(OneLineOptions):
    tapname = "sixchat-irp"
    synopsis = "--cert SERVER.p12 --ca-dir CA_DIR [options]"
    longdesc = (
        "Runs a SixChat IRP registry: users register where they can be reached and look "
        "each other up; the registry's CA enrols users by one-time token, renews and revokes "
        "their certificates and publishes the CRL. The server certificate's PKCS#12 password "
        "comes from --password-file or SIXCHAT_P12_PASSWORD."
    )

    optParameters = [
        ["cert", "c", None, "the registry's TLS certificate and key (PKCS#12 or PEM)"],
        ["password-file", None, None, "file whose first line is the --cert password"],
        ["ca-dir", None, None, "the CA directory (ca.pem, ca.key) users are enrolled by"],
        ["ca-password-file", None, None, "file whose first line is the CA key's password"],
        ["listen", "l", "tcp6:4604", "Twisted endpoint string to listen on"],
        ["db", None, DEFAULT_DB, "SQLite file, or a postgresql:// DSN for a shared database"],
        ["lookup-policy", None, "authenticated", "who may lookup/watch: authenticated|public"],
        ["max-requests", None, "50", "requests per second per connection"],
        ["max-watches", None, "1000", "watches per connection"],
        ["max-nodes", None, "16", "nodes per identity"],
        [
            "max-queued",
            None,
            "1000",
            "requests of all connections that may wait for the database at once; past it a "
            "request gets rate_limited (overload)",
        ],
        ["idle-timeout", None, "600", "seconds without a request before a connection closes"],
        ["leaf-days", None, "365", "validity in days of the certificates the registry issues"],
        [
            "revocation",
            None,
            "soft",
            "checking client chains' revocation: soft (no usable CRL for an issuer: log, "
            "accept) or hard (refuse the TLS handshake)",
        ],
        [
            "lookup-cache",
            None,
            "20000",
            "identities each registry process keeps in its lookup cache (0: none)",
        ],
        [
            "gc-interval",
            None,
            "1",
            "seconds between full garbage collections (start-up state and their survivors "
            "frozen, no automatic full collections); 0: Python's default collector",
        ],
    ]
    optFlags = [
        ["allow-private-addresses", None, "accept loopback/link-local contacts (tests, LANs)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["domain"] = []

    def opt_domain(self, domain: str) -> None:
        """serve only this domain (repeatable; default: every domain the CA issued for)"""
        if not domain or "@" in domain:
            raise usage.UsageError(f"--domain {domain!r}: give a domain such as example.com")
        self["domain"].append(domain.lower())

    def postOptions(self) -> None:
        if not self["cert"]:
            raise usage.UsageError("--cert is required (the registry's TLS certificate, .p12)")
        if not self["ca-dir"]:
            raise usage.UsageError("--ca-dir is required (the CA that enrols users)")
        check_listen(self["listen"])
        if self["lookup-policy"] not in ("authenticated", "public"):
            raise usage.UsageError("--lookup-policy must be authenticated or public")
        if self["revocation"] not in ("soft", "hard"):
            raise usage.UsageError(f"--revocation must be soft or hard, not {self['revocation']!r}")
        for name in ("max-requests", "max-watches", "max-nodes", "max-queued", "leaf-days"):
            _positive(self, name, int)
        _positive(self, "idle-timeout", float)
        try:
            self["lookup-cache"] = int(self["lookup-cache"])
        except ValueError:
            raise usage.UsageError("--lookup-cache must be a number of identities") from None
        if self["lookup-cache"] < 0:
            raise usage.UsageError("--lookup-cache must be 0 (off) or a positive number")
        try:
            self["gc-interval"] = float(self["gc-interval"])
        except ValueError:
            raise usage.UsageError("--gc-interval must be a number of seconds") from None
        if not (math.isfinite(self["gc-interval"]) and self["gc-interval"] >= 0):
            raise usage.UsageError("--gc-interval must be 0 (off) or a positive number")
        db = self["db"]
        if db.startswith(("postgresql://", "postgres://")):
            try:
                import sixchat.irp.store.postgres  # noqa: F401
            except ImportError as e:
                # Not the DSN itself in the message: it may carry a password.
                raise usage.UsageError(
                    f"--db: PostgreSQL support is not installed ({e}; "
                    "pip install 'sixchat[postgres]')"
                ) from None
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(db)
            except Exception:
                # libpq's message quotes the DSN, password included: say only what to fix.
                raise usage.UsageError(
                    "--db: not a valid PostgreSQL DSN (postgresql://USER[:PASSWORD]@HOST/DB)"
                ) from None
        else:
            directory = os.path.dirname(os.path.abspath(db))
            if not os.path.isdir(directory):
                raise usage.UsageError(f"--db {db}: directory {directory} does not exist")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise usage.UsageError(f"--db {db}: directory {directory} is not writable")
        self["loaded"] = load(self)


def load(options: Any) -> tuple[Any, Any, Any]:
    """The server identity, CA key and certificate, and CA chain; one-line errors."""
    from sixchat import pki
    from sixchat.identity import load_identity, read_password

    try:
        password = read_password(options["password-file"])
        credentials = load_identity(options["cert"], password, server=True)
        ca_password = (
            read_password(options["ca-password-file"], environ={})
            if options["ca-password-file"]
            else None
        )
        ca = pki.load_ca(options["ca-dir"], ca_password)
        chain = pki.load_ca_chain(options["ca-dir"])
    except SixchatError as e:
        raise usage.UsageError(str(e)) from None
    return credentials, ca, chain


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from sixchat.irp.server import IRPServerService, RegistryConfig, make_store
    from sixchat.irp.server.authority import Authority
    from sixchat.irp.server.gcpolicy import CollectorPolicy

    credentials, (ca_key, ca_cert), chain = options["loaded"]
    store = make_store(options["db"], reactor, lookup_cache=options["lookup-cache"])
    config = RegistryConfig(
        lookup_policy=options["lookup-policy"],
        allow_private_addresses=bool(options["allow-private-addresses"]),
        domains=frozenset(options["domain"]) if options["domain"] else None,
        max_requests_per_second=options["max-requests"],
        max_watches=options["max-watches"],
        max_nodes=options["max-nodes"],
        max_queued_requests=options["max-queued"],
        idle_timeout=options["idle-timeout"],
    )
    authority = Authority(
        ca_key,
        ca_cert,
        store,
        chain=chain,
        now=lambda: datetime.fromtimestamp(reactor.seconds(), UTC),
        leaf_days=options["leaf-days"],
        warn=lambda text: log.warn("{text}", text=text),
        revocation=options["revocation"],
    )
    interval = options["gc-interval"]
    collector = CollectorPolicy(reactor, interval) if interval else None
    return IRPServerService(
        reactor, store, authority, credentials, options["listen"], config, collector
    )
