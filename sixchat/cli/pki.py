"""
C{sixchat pki}: a small CA for people who do not have one, and a look inside identity files.

    sixchat pki init-ca DIR [--name NAME] [--key-type T] [--days N] [--password-file F]
    sixchat pki issue IDENTITY... --ca DIR [--out F.p12] [--key-type T] [--days N]
                      [--password-file F] [--ca-password-file F] [--also-pem] [--force]
    sixchat pki show FILE [--password-file F] [--key KEYFILE]
    sixchat pki issue-server NAME|IP... --ca DIR --out irp.p12 [--key-type T] [--days N]
    sixchat pki invite IDENTITY --db PATH|DSN [--days 7]
    sixchat pki revoke --db PATH|DSN --ca DIR (--serial HEX | --cert FILE)

The last three serve an IRP registry; their code is in L{sixchat.cli.pki_registry}.

Passwords are read from files or C{$SIXCHAT_P12_PASSWORD}, never from the command line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sixchat import pki
from sixchat.cli import CommandError, UsageError, positive_int, warn
from sixchat.identity import (
    PASSWORD_ENV,
    Identity,
    IdentityLoadError,
    is_valid_identity,
    load_identity,
    normalize_identity,
    read_password,
    same_identity,
    spki_sha256,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pki",
        help="create a CA, issue identities, inspect certificate files",
        description="Certificates for sixchat: a minimal CA and identity files (PKCS#12).",
    )
    commands = parser.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init-ca",
        help="create a new CA directory",
        description="Create a CA in DIR: DIR/ca.pem (the trust anchor to give to peers) and "
        "DIR/ca.key (the private key, mode 0600; unencrypted unless --password-file).",
    )
    init.add_argument("directory", metavar="DIR", help="new or empty directory")
    init.add_argument("--name", default="sixchat CA", help="CA common name (default: %(default)s)")
    init.add_argument("--key-type", choices=pki.KEY_TYPES, default="ed25519",
                      help="CA key type (default: %(default)s)")
    init.add_argument("--days", type=positive_int, default=3650,
                      help="validity in days (default: %(default)s)")
    init.add_argument("--password-file", metavar="FILE",
                      help="encrypt the CA key with the password on the first line of FILE")
    init.set_defaults(handler=init_ca)

    issue = commands.add_parser(
        "issue",
        help="issue an identity certificate and key as PKCS#12",
        description="Issue a certificate for one or more identities (local@domain) from the "
        f"CA in DIR and write it with a new key as PKCS#12 (mode 0600). The password comes "
        f"from --password-file or ${PASSWORD_ENV}; without one the file is not encrypted.",
    )
    issue.add_argument("identities", metavar="IDENTITY", nargs="+",
                       help="identity to certify, e.g. alice@example.com")
    issue.add_argument("--ca", required=True, metavar="DIR", help="CA directory")
    issue.add_argument("--out", metavar="FILE", help="output file (default: IDENTITY.p12)")
    issue.add_argument("--key-type", choices=pki.KEY_TYPES, default="ed25519",
                       help="key type (default: %(default)s)")
    issue.add_argument("--days", type=positive_int, default=365,
                       help="validity in days (default: %(default)s)")
    issue.add_argument("--password-file", metavar="FILE",
                       help="PKCS#12 password: first line of FILE")
    issue.add_argument("--ca-password-file", metavar="FILE",
                       help="password of an encrypted CA key: first line of FILE")
    issue.add_argument("--also-pem", action="store_true",
                       help="also write OUT.pem (certificate and chain) and OUT.key (key, 0600)")
    issue.add_argument("--force", action="store_true", help="overwrite existing output files")
    issue.set_defaults(handler=issue_identity)

    server = commands.add_parser(
        "issue-server",
        help="issue a registry's TLS server certificate as PKCS#12",
        description="Issue a TLS server certificate for an IRP registry from the CA in DIR: "
        "every NAME (DNS name or IP address) becomes a subjectAltName; EKU serverAuth. "
        "Written with a new key as PKCS#12 (mode 0600) for 'twistd sixchat-irp --cert'.",
    )
    server.add_argument("names", metavar="NAME", nargs="+",
                        help="DNS name or IP address clients connect to, e.g. irp.example.com")
    server.add_argument("--ca", required=True, metavar="DIR", help="CA directory")
    server.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. irp.p12")
    server.add_argument("--key-type", choices=pki.KEY_TYPES, default="p256",
                        help="key type (default: %(default)s, which every TLS client accepts)")
    server.add_argument("--days", type=positive_int, default=365,
                        help="validity in days (default: %(default)s)")
    server.add_argument("--password-file", metavar="FILE",
                        help="PKCS#12 password: first line of FILE")
    server.add_argument("--ca-password-file", metavar="FILE",
                        help="password of an encrypted CA key: first line of FILE")
    server.add_argument("--force", action="store_true", help="overwrite an existing file")
    server.set_defaults(handler=_registry_command("issue_server"))

    invite = commands.add_parser(
        "invite",
        help="create a one-time enrolment token for an identity",
        description="Store a one-time enrolment token for IDENTITY in the registry's "
        "database and print it (only the token, on standard output). The user enrols with "
        "'sixchat enroll --token TOKEN IDENTITY'. Only a hash of the token is stored.",
    )
    invite.add_argument("identity", metavar="IDENTITY", help="e.g. alice@example.com")
    invite.add_argument("--db", required=True, metavar="PATH|DSN",
                        help="the registry's SQLite file or postgresql:// DSN")
    invite.add_argument("--days", type=positive_int, default=7,
                        help="days the token stays valid (default: %(default)s)")
    invite.set_defaults(handler=_registry_command("invite"))

    revoke = commands.add_parser(
        "revoke",
        help="revoke a certificate in the registry's database",
        description="Revoke a certificate issued by the CA in DIR: its registrations are "
        "removed, running registries refuse it and list it in their CRL.",
    )
    revoke.add_argument("--db", required=True, metavar="PATH|DSN",
                        help="the registry's SQLite file or postgresql:// DSN")
    revoke.add_argument("--ca", required=True, metavar="DIR", help="the issuing CA directory")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX", help="serial number in hex (see 'pki show')")
    which.add_argument("--cert", metavar="FILE", help="the certificate (PEM, DER or PKCS#12)")
    revoke.add_argument("--password-file", metavar="FILE",
                        help="password of a PKCS#12 --cert: first line of FILE")
    revoke.set_defaults(handler=_registry_command("revoke"))

    show = commands.add_parser(
        "show",
        help="describe an identity file or certificate",
        description="Print the identities, key, validity, issuer and SPKI fingerprint of a "
        "PKCS#12 or PEM file.",
    )
    show.add_argument("file", metavar="FILE")
    show.add_argument("--password-file", metavar="FILE", help="password: first line of FILE")
    show.add_argument("--key", metavar="KEYFILE", help="private key in a separate PEM file")
    show.set_defaults(handler=show_file)


def _registry_command(name: str) -> Any:
    """A handler from L{sixchat.cli.pki_registry}, imported only when it runs."""

    def handler(args: argparse.Namespace) -> int:
        from sixchat.cli import pki_registry

        return int(getattr(pki_registry, name)(args))

    return handler


def _out(line: str = "") -> None:
    print(line, file=sys.stdout)


def _when(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def init_ca(args: argparse.Namespace) -> int:
    password = read_password(args.password_file, environ={}) if args.password_file else None
    _key, cert = pki.init_ca(
        args.directory, args.name, args.key_type, args.days, password=password
    )
    directory = Path(args.directory)
    protection = "encrypted" if password else "NOT encrypted, protect the directory"
    _out(f"created CA {args.name!r} in {directory}")
    _out(f"  certificate:  {directory / 'ca.pem'}  (the trust anchor peers configure)")
    _out(f"  private key:  {directory / 'ca.key'}  (mode 0600, {protection})")
    _out(f"  key type:     {pki.describe_key(cert.public_key())}")
    _out(f"  valid until:  {_when(cert.not_valid_after_utc)}")
    return 0


def _identities(raw: list[str]) -> list[str]:
    result: list[str] = []
    for name in raw:
        if not is_valid_identity(name):
            raise UsageError(
                f"{name!r} is not a valid identity (local@domain, ASCII only, an "
                "internationalised domain as A-labels: xn--…)"
            )
        name = normalize_identity(name)
        if not any(same_identity(name, other) for other in result):
            result.append(name)
    return result


def issue_identity(args: argparse.Namespace) -> int:
    identities = _identities(args.identities)
    out = Path(args.out or f"{identities[0]}.p12")
    stem = out.name[: -len(out.suffix)] if out.suffix.lower() in (".p12", ".pfx") else out.name
    pem_out, key_out = out.with_name(stem + ".pem"), out.with_name(stem + ".key")
    if not args.force:
        for path in [out, *([pem_out, key_out] if args.also_pem else [])]:
            if path.exists():
                raise CommandError(f"{path} already exists (remove it or use --force)")

    password = read_password(args.password_file)
    ca_password = (
        read_password(args.ca_password_file, environ={}) if args.ca_password_file else None
    )
    ca_key, ca_cert = pki.load_ca(args.ca, ca_password)
    now = datetime.datetime.now(datetime.UTC)
    ca_end = ca_cert.not_valid_after_utc
    if ca_end <= now:
        raise CommandError(f"the CA certificate in {args.ca} expired on {_when(ca_end)}")
    if ca_cert.not_valid_before_utc > now:
        raise CommandError(f"the CA certificate in {args.ca} is not valid before "
                           f"{_when(ca_cert.not_valid_before_utc)}")
    not_after = now + datetime.timedelta(days=args.days)
    clamped = not_after > ca_end
    if clamped:
        not_after = ca_end

    key = pki.generate_key(args.key_type)
    leaf = pki.issue_leaf(ca_key, ca_cert, identities, key.public_key(), not_after=not_after)
    chain = [ca_cert, *pki.load_ca_chain(args.ca)]
    # The same checks as loading the file later will make, before anything is written.
    identity = Identity(key, leaf, chain, source=str(out))

    pki.write_p12(out, key, leaf, chain, password, overwrite=args.force,
                  friendly_name=identities[0].encode())
    written = [f"{out} (PKCS#12, mode 0600, "
               f"{'password-protected' if password else 'NOT password-protected'})"]
    if args.also_pem:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *chain])
        pki.write_private_file(pem_out, pem, overwrite=args.force)
        os.chmod(pem_out, 0o644)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password
            else serialization.NoEncryption()
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        pki.write_private_file(key_out, key_pem, overwrite=args.force)
        written += [f"{pem_out} (certificate and chain)",
                    f"{key_out} (private key, mode 0600)"]

    for line in written:
        _out(f"wrote {line}")
    _out(f"  identities:   {', '.join(identity.names)}")
    _out(f"  key:          {pki.describe_key(key)} (alg {identity.alg})")
    _out(f"  valid:        {_when(leaf.not_valid_before_utc)} to {_when(leaf.not_valid_after_utc)}"
         + (" (limited by the CA's validity)" if clamped else ""))
    _out(f"  issuer:       {ca_cert.subject.rfc4514_string()}")
    _out(f"  SPKI SHA-256: {identity.fingerprint()}")
    if not password:
        warn(f"{out} is not password-protected (use --password-file or {PASSWORD_ENV})")
    return 0


def _describe(cert: x509.Certificate, now: datetime.datetime) -> list[str]:
    from sixchat import sigalgs
    from sixchat.errors import BadCertificate
    from sixchat.identity import rfc822_names

    try:
        names = ", ".join(rfc822_names(cert)) or "(none: no rfc822Name, not usable with sixchat)"
    except ValueError:
        names = "(unreadable extensions)"
    public_key = cert.public_key()
    try:
        alg = f"alg {sigalgs.alg_for_public_key(public_key)}"
    except BadCertificate:
        alg = "not allowed for a sixchat identity"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    state = "EXPIRED" if end < now else "NOT YET VALID" if start > now else "valid now"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    return [
        f"  identities:   {names}" + (" [CA certificate]" if is_ca else ""),
        f"  key:          {pki.describe_key(public_key)} ({alg})",
        f"  valid:        {_when(start)} to {_when(end)} ({state})",
        f"  subject:      {cert.subject.rfc4514_string() or '(empty)'}",
        f"  issuer:       {cert.issuer.rfc4514_string()}",
        f"  serial:       {cert.serial_number:x}",
        f"  SPKI SHA-256: {spki_sha256(public_key).hex()}",
    ]


def _certificates_only(path: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CommandError(f"{path} holds no readable certificate") from None


def show_file(args: argparse.Namespace) -> int:
    password = read_password(args.password_file)
    now = datetime.datetime.now(datetime.UTC)
    try:
        identity = load_identity(args.file, password, args.key)
    except IdentityLoadError as e:
        # A bare certificate (a CA's ca.pem, a peer's certificate) is worth showing too.
        if e.code not in ("no_key", "format", "no_identity", "key_type"):
            raise
        try:
            certs = _certificates_only(args.file)
        except CommandError:
            raise e from None
        kind = "no private key" if e.code in ("no_key", "format") else f"not usable: {e}"
        _out(f"{args.file}: {len(certs)} certificate(s), {kind}")
        for i, cert in enumerate(certs):
            if i:
                _out()
            for line in _describe(cert, now):
                _out(line)
        return 0
    _out(f"{args.file}: identity with private key")
    for line in _describe(identity.leaf, now):
        _out(line)
    _out(f"  chain:        {len(identity.chain_der)} certificate(s) sent to peers")
    for der in identity.chain_der[1:]:
        cert = x509.load_der_x509_certificate(der)
        _out(f"                {cert.subject.rfc4514_string()}")
    return 0
