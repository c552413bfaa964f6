"""
The registry side of C{sixchat pki}: server certificates, invitations and revocations.

    sixchat pki issue-server NAME|IP... --ca DIR --out irp.p12 [--key-type T] [--days N]
                      [--password-file F] [--ca-password-file F] [--force]
    sixchat pki invite IDENTITY --db PATH|DSN [--days 7]
    sixchat pki revoke --db PATH|DSN --ca DIR (--serial HEX | --cert FILE) [--password-file F]

C{invite} and C{revoke} work on the registry's database directly (SQLite file or PostgreSQL
DSN), so they work whether or not the registry runs; a running registry picks their changes
up through the store's change notifications. C{invite} prints the token and nothing else on
standard output, so scripts can capture it; the token is never logged anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sixchat import pki
from sixchat.cli import CommandError, UsageError, warn
from sixchat.identity import (
    PASSWORD_ENV,
    Identity,
    IdentityLoadError,
    is_valid_identity,
    load_identity,
    read_password,
    rfc822_names,
)

T = TypeVar("T")

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _server_name(name: str) -> str:
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UsageError(
            f"{name!r} is neither an IP address nor a DNS name (internationalised names as "
            "A-labels: xn--…)"
        )
    return name.rstrip(".").lower()


def _when(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def issue_server(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(_server_name(n) for n in args.names))
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CommandError(f"{out} already exists (remove it or use --force)")
    password = read_password(args.password_file)
    ca_password = (
        read_password(args.ca_password_file, environ={}) if args.ca_password_file else None
    )
    ca_key, ca_cert = pki.load_ca(args.ca, ca_password)
    now = datetime.datetime.now(datetime.UTC)
    if ca_cert.not_valid_after_utc <= now:
        raise CommandError(
            f"the CA certificate in {args.ca} expired on {_when(ca_cert.not_valid_after_utc)}"
        )
    not_after = min(now + datetime.timedelta(days=args.days), ca_cert.not_valid_after_utc)
    key = pki.generate_key(args.key_type)
    cert = pki.issue_server(ca_key, ca_cert, names, key.public_key(), not_after=not_after)
    chain = [ca_cert, *pki.load_ca_chain(args.ca)]
    Identity(key, cert, chain, source=str(out), server=True)  # the checks loading will make
    pki.write_p12(out, key, cert, chain, password, overwrite=args.force,
                  friendly_name=names[0].encode())  # fmt: skip
    protection = "password-protected" if password else "NOT password-protected"
    print(f"wrote {out} (PKCS#12, mode 0600, {protection})")
    print(f"  names:        {', '.join(names)}")
    print(f"  key:          {pki.describe_key(key)}")
    print(
        f"  valid:        {_when(cert.not_valid_before_utc)} to {_when(cert.not_valid_after_utc)}"
    )
    print(f"  issuer:       {ca_cert.subject.rfc4514_string()}")
    anchor = Path(args.ca) / "ca.pem"
    print(f"  anchor:       {anchor} (clients trust it: hand it out with invitations)")
    if not password:
        warn(f"{out} is not password-protected (use --password-file or {PASSWORD_ENV})")
    return 0


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    """
    Run C{work(reactor)} on the global reactor until it finishes; return its result or raise
    its exception here, so L{sixchat.cli.main} turns it into one line.
    """
    from twisted.internet import defer
    from twisted.internet import reactor as global_reactor
    from twisted.python.failure import Failure

    reactor: Any = global_reactor
    outcome: list[Any] = []

    def start() -> None:
        d: defer.Deferred[Any] = defer.ensureDeferred(work(reactor))  # type: ignore[arg-type]
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if not outcome:
        raise CommandError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _store(db: str, reactor: Any) -> Any:
    from sixchat.irp.server import make_store

    if not db.startswith(("postgresql://", "postgres://")) and not os.path.exists(db):
        raise CommandError(
            f"no registry database at {db} (start the registry once with --db {db}, "
            "or check the path)"
        )
    try:
        return make_store(db, reactor)
    except ImportError as e:
        raise CommandError(f"PostgreSQL support is not installed ({e})") from None


def invite(args: argparse.Namespace) -> int:
    from sixchat.irp.server.authority import create_invitation

    if not is_valid_identity(args.identity):
        raise UsageError(f"{args.identity!r} is not a valid identity (local@domain)")

    async def work(reactor: Any) -> str:
        store = _store(args.db, reactor)
        await store.open()
        try:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=args.days)
            return await create_invitation(store, args.identity, expires)
        finally:
            await store.close()

    token = _run(work)
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return 0


def _parse_serial(text: str) -> int:
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or not re.fullmatch(r"[0-9a-f]{1,40}", cleaned):
        raise UsageError(f"--serial {text!r}: give the serial in hexadecimal (as 'pki show')")
    return int(cleaned, 16)


def _revoked_cert(path: str, password_file: str | None) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificates(data)[0]
        except ValueError:
            raise CommandError(f"{path} holds no readable certificate") from None
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        pass
    try:
        return load_identity(path, read_password(password_file), server=True).leaf
    except IdentityLoadError as e:
        raise CommandError(str(e)) from None


def revoke(args: argparse.Namespace) -> int:
    ca_cert = pki.load_ca_cert(args.ca)
    names: tuple[str, ...] = ()
    if args.cert:
        cert = _revoked_cert(args.cert, args.password_file)
        try:
            cert.verify_directly_issued_by(ca_cert)
        except Exception:
            raise CommandError(
                f"{args.cert} was not issued by the CA in {args.ca} "
                f"(its issuer is {cert.issuer.rfc4514_string()})"
            ) from None
        serial = cert.serial_number
        try:
            names = rfc822_names(cert)
        except ValueError:
            names = ()
    else:
        serial = _parse_serial(args.serial)
    ca_der = ca_cert.public_bytes(serialization.Encoding.DER)

    async def work(reactor: Any) -> set[str]:
        store = _store(args.db, reactor)
        await store.open()
        try:
            touched: set[str] = await store.revoke(
                serial, ca_der, datetime.datetime.now(datetime.UTC)
            )
            for name in names:  # connections authenticated by it must hear of it (§7.7)
                await store.notify(name)
            return touched
        finally:
            await store.close()

    touched = _run(work)
    who = f" ({', '.join(names)})" if names else ""
    print(f"revoked certificate serial {serial:x}{who} of {ca_cert.subject.rfc4514_string()}")
    if touched:
        print(f"  removed the registrations of {', '.join(sorted(touched))}")
    print("  running registries refuse it within seconds and list it in their CRL within a minute")
    return 0
