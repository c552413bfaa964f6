"""
Getting, renewing and revoking your own certificate through a registry (irp-1 §4):

    sixchat enroll IDENTITY (--token T | --token-file F) --out F.p12 [--registry HOST[:PORT]]
                   [--registry-ca FILE] [--key-type T] [--password-file F] [--ca-out FILE]
    sixchat renew --cert F.p12 [--out F2.p12] [--new-key [--key-type T]] [--registry …]
    sixchat revoke-self --cert F.p12 --yes [--registry …]

The private key is made here and never leaves the machine: the registry sees a CSR signed
with it. C{enroll} fetches the registry's trust anchors (C{ca}) on the same anonymous
connection and saves them beside the identity (C{alice-ca.pem}): that is the C{--trust} file
for C{twistd sixchat} and C{sixchat probe}.

Everything that can go wrong locally (output exists, bad identity, unreadable files) is
checked I{before} the token is sent, because the token is single-use; the name is sent with
it, and a sixchat registry refuses an invitation for another name without spending the token
(a typo costs nothing). Tokens are never
printed or logged; C{--token-file} keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

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
    same_identity,
    spki_sha256,
)

T = TypeVar("T")

#: What the registry's refusals mean to the person at the keyboard.
_REASONS = {
    "invalid_token": "the registry refused the token (wrong, already used or expired; ask "
    "your administrator for a new invitation)",
    "bad_csr": "the registry refused the certificate request (key type not accepted?)",
    "unauthenticated": "the registry does not accept this certificate (expired or revoked?)",
    "rate_limited": "the registry is rate-limiting this connection; try again later",
    "unsupported": "the registry does not support this request",
    "forbidden": "the registry does not allow this",
}


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        metavar="HOST[:PORT]",
        help="the registry (port 4604), or a comma list of registries sharing one database "
        "(the first that answers); default: found from the identity's domain (DNS SRV)",
    )
    p.add_argument(
        "--registry-ca",
        metavar="FILE",
        help="CA certificate(s) the registry's server certificate chains to "
        "(default: the system's trust store)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per step (default 30)")


def register(subparsers: Any) -> None:
    enroll = subparsers.add_parser(
        "enroll",
        help="get a certificate from a registry with an invitation token",
        description="Make a key here, send a certificate request with the one-time token "
        "to the registry, and write the issued certificate with the key as PKCS#12 (mode "
        "0600), plus the registry's trust anchors beside it (NAME-ca.pem). The key never "
        f"leaves this machine. The PKCS#12 password comes from --password-file or "
        f"${PASSWORD_ENV}; without one the file is not encrypted.",
    )
    enroll.add_argument("identity", metavar="IDENTITY", help="e.g. alice@example.com")
    token = enroll.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the invitation token (visible to local users in ps)")
    token.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    enroll.add_argument("--out", required=True, metavar="FILE", help="the .p12 to write")
    enroll.add_argument("--ca-out", metavar="FILE", help="where to save the trust anchors "
                        "(default: beside --out, NAME-ca.pem)")  # fmt: skip
    enroll.add_argument("--key-type", choices=pki.KEY_TYPES, default="ed25519",
                        help="key type (default: %(default)s)")  # fmt: skip
    enroll.add_argument("--password-file", metavar="FILE", help="PKCS#12 password file")
    enroll.add_argument("--force", action="store_true", help="overwrite existing files")
    _registry_args(enroll)
    enroll.set_defaults(handler=run_enroll)

    renew = subparsers.add_parser(
        "renew",
        help="get a fresh certificate for your identity from the registry",
        description="Authenticate to the registry with your current certificate and get a "
        "new one for the same identity (irp-1 §4.3). By default the key stays the same (so "
        "peers' pins stay valid) and --cert is replaced; --new-key makes a new key.",
    )
    renew.add_argument("--cert", required=True, help="your identity (.p12)")
    renew.add_argument("--password-file", metavar="FILE", help="PKCS#12 password file")
    renew.add_argument("--out", metavar="FILE", help="write here instead of replacing --cert")
    renew.add_argument("--new-key", action="store_true", help="make a new key")
    renew.add_argument("--key-type", choices=pki.KEY_TYPES, default="ed25519",
                       help="with --new-key (default: %(default)s)")  # fmt: skip
    _registry_args(renew)
    renew.set_defaults(handler=run_renew)

    revoke = subparsers.add_parser(
        "revoke-self",
        help="revoke your own certificate (key compromise)",
        description="Tell the registry to revoke the certificate in --cert (irp-1 §4.4): "
        "its registrations disappear and peers holding the registry's CRL refuse it. This "
        "cannot be undone; enrol again with a new invitation afterwards.",
    )
    revoke.add_argument("--cert", required=True, help="the identity to revoke (.p12)")
    revoke.add_argument("--password-file", metavar="FILE", help="PKCS#12 password file")
    revoke.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    _registry_args(revoke)
    revoke.set_defaults(handler=run_revoke)


# -- helpers ---------------------------------------------------------------------------------


def _out(line: str = "") -> None:
    print(line, file=sys.stdout)


def _when(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def make_csr(key: CertificateIssuerPrivateKeyTypes, identity: str) -> bytes:
    """A PKCS#10 request (DER) signed with C{key}, naming C{identity} as rfc822Name."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=False)
        .sign(key, _hash_for(key))  # type: ignore[arg-type]
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _anchors(args: argparse.Namespace) -> list[x509.Certificate] | None:
    if not args.registry_ca:
        return None
    from sixchat.irp.client import load_certificates

    return load_certificates(args.registry_ca)


def _check_registry(args: argparse.Namespace) -> None:
    if args.registry and args.registry != "auto":
        from sixchat.irp.discovery import parse_registry_list

        try:
            parse_registry_list(args.registry)
        except ValueError as e:
            raise UsageError(f"--registry: {e}") from None
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")


def run_with_registry(
    args: argparse.Namespace,
    identity: str,
    client_identity: Identity | None,
    work: Callable[[Any], Awaitable[T]],
) -> T:
    """
    Connect to the registry, run C{work(protocol)}, close; in a reactor run by the CLI.
    Registry refusals become one-line L{CommandError}s.
    """
    from twisted.internet import defer, task

    from sixchat.irp.client import connectRegistry
    from sixchat.irp.messages import IRPError

    anchors = _anchors(args)
    box: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        try:
            proto = await connectRegistry(
                reactor,
                args.registry,
                identity,
                anchors=anchors,
                client_identity=client_identity,
                timeout=args.timeout,
            )
            try:
                box["result"] = await work(proto)
            finally:
                if proto.connected:
                    await proto.close()
        except IRPError as e:
            explained = _REASONS.get(e.reason, f"the registry answered {e.reason}")
            box["error"] = CommandError(explained + (f": {e.text}" if e.text else ""))
        except ValueError as e:
            box["error"] = UsageError(str(e))
        except Exception as e:
            box["error"] = e

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    if "error" in box:
        error = box["error"]
        if isinstance(error, UsageError | CommandError):
            raise error
        from sixchat.errors import SixchatError

        if isinstance(error, SixchatError):
            raise CommandError(str(error))
        raise CommandError(f"{type(error).__name__}: {error}")
    return box["result"]


def _check_issued(
    issued: list[x509.Certificate],
    key: CertificateIssuerPrivateKeyTypes,
    identity: str,
) -> None:
    if not issued:
        raise CommandError("the registry answered with no certificate")
    leaf = issued[0]
    if spki_sha256(leaf.public_key()) != spki_sha256(key.public_key()):
        raise CommandError("the registry issued a certificate for another key; not saved")
    if not any(same_identity(identity, n) for n in rfc822_names(leaf)):
        raise CommandError(
            f"the registry issued a certificate for {', '.join(rfc822_names(leaf)) or 'nobody'}"
            f", not {identity}; not saved"
        )


def _verify_chain(issued: list[x509.Certificate], anchors: list[x509.Certificate]) -> str | None:
    """Whether the issued chain validates under the registry's anchors (a warning if not)."""
    from sixchat.errors import SixchatError
    from sixchat.trust import TrustStore

    try:
        trust = TrustStore(anchors)
        ders = [c.public_bytes(serialization.Encoding.DER) for c in issued]
        trust.validate(ders, datetime.datetime.now(datetime.UTC))
    except SixchatError as e:
        return str(e) or type(e).__name__
    return None


def _ca_path(out: Path, ca_out: str | None) -> Path:
    if ca_out:
        return Path(ca_out)
    stem = out.name[: -len(out.suffix)] if out.suffix.lower() in (".p12", ".pfx") else out.name
    return out.with_name(stem + "-ca.pem")


def _writable_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CommandError(f"cannot write to directory {parent}")


def _summary(out: Path, identity: Identity, leaf: x509.Certificate, password: bytes | None) -> None:
    protection = "password-protected" if password else "NOT password-protected"
    _out(f"wrote {out} (PKCS#12, mode 0600, {protection})")
    _out(f"  identity:     {', '.join(identity.names)}")
    _out(f"  key:          {pki.describe_key(identity.private_key)} (alg {identity.alg})")
    _out(f"  valid:        {_when(leaf.not_valid_before_utc)} to {_when(leaf.not_valid_after_utc)}")
    _out(f"  issuer:       {leaf.issuer.rfc4514_string()}")
    _out(f"  SPKI SHA-256: {identity.fingerprint()}")


# -- enroll ----------------------------------------------------------------------------------


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise CommandError(f"cannot read {args.token_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CommandError(f"{args.token_file} does not hold a text token") from None
    else:
        token = args.token.strip()
    if not token:
        raise UsageError("the token is empty")
    return token


def run_enroll(args: argparse.Namespace) -> int:
    identity = args.identity
    if not is_valid_identity(identity):
        raise UsageError(f"{identity!r} is not a valid identity (local@domain)")
    _check_registry(args)
    token = _read_token(args)
    out = Path(args.out)
    ca_out = _ca_path(out, args.ca_out)
    for path in (out, ca_out):
        if path.exists() and not args.force:
            raise CommandError(f"{path} already exists (remove it or use --force)")
        _writable_dir(path)
    password = read_password(args.password_file)
    _anchors(args)  # fail on a bad --registry-ca now, before the token is spent

    key = pki.generate_key(args.key_type)
    csr = make_csr(key, identity)

    from sixchat.irp.messages import IRPError

    async def work(proto: Any) -> tuple[list[x509.Certificate] | str, list[x509.Certificate]]:
        # Both pipelined; the certificate matters most (the token is spent once it is
        # issued), so a failing `ca` only costs a warning.
        got_ca: list[Any] = []
        fetched = proto.ca().addBoth(got_ca.append)
        try:
            # With the name we expect: the registry refuses an invitation for another name
            # before spending the token, so the right name still works with it afterwards.
            issued = await proto.enroll(token, csr, identity)
        except IRPError as e:
            if e.reason == "forbidden" and e.text:
                raise CommandError(f"{e.text} (enrol again with the invitation's name)") from None
            raise
        await fetched
        anchors = got_ca[0] if isinstance(got_ca[0], list) else got_ca[0].getErrorMessage()
        return anchors, issued

    anchors, issued = run_with_registry(args, identity, None, work)
    _check_issued(issued, key, identity)
    leaf, chain = issued[0], issued[1:]
    try:
        ident = Identity(key, leaf, chain, source=str(out))
    except IdentityLoadError as e:
        raise CommandError(f"the issued certificate is unusable: {e}") from None
    # The key exists nowhere else: write it first, and only then the anchors.
    pki.write_p12(out, key, leaf, chain, password, overwrite=args.force,
                  friendly_name=identity.encode())  # fmt: skip
    _summary(out, ident, leaf, password)
    if isinstance(anchors, str):
        warn(f"could not fetch the registry's trust anchors ({anchors}); get its CA another way")
    elif anchors:
        pem = b"".join(a.public_bytes(serialization.Encoding.PEM) for a in anchors)
        pki.write_private_file(ca_out, pem, overwrite=args.force)
        os.chmod(ca_out, 0o644)
        _out(f"wrote {ca_out} ({len(anchors)} trust anchor(s) of the registry's users: "
             f"{'; '.join(a.subject.rfc4514_string() for a in anchors)})")  # fmt: skip
        problem = _verify_chain(issued, anchors)
        if problem:
            warn(f"the issued certificate does not validate under {ca_out}: {problem}")
    else:
        warn("the registry returned no trust anchors; get the CA certificate another way")
    if not password:
        warn(f"{out} is not password-protected (use --password-file or {PASSWORD_ENV})")
    return 0


# -- renew, revoke-self -------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[Identity, bytes | None]:
    password = read_password(args.password_file)
    identity = load_identity(args.cert, password)
    return identity, password


def run_renew(args: argparse.Namespace) -> int:
    _check_registry(args)
    identity, password = _load(args)
    name = identity.default_name
    out = Path(args.out) if args.out else Path(args.cert)
    replacing = out.resolve() == Path(args.cert).resolve()
    if out.exists() and not replacing:
        raise CommandError(f"{out} already exists (remove it first)")
    _writable_dir(out)
    _anchors(args)
    key: CertificateIssuerPrivateKeyTypes
    key = pki.generate_key(args.key_type) if args.new_key else identity.private_key  # type: ignore[assignment]
    csr = make_csr(key, name)

    async def work(proto: Any) -> list[x509.Certificate]:
        return await proto.renew(csr)

    issued = run_with_registry(args, name, identity, work)
    _check_issued(issued, key, name)
    leaf, chain = issued[0], issued[1:]
    try:
        ident = Identity(key, leaf, chain, source=str(out))
    except IdentityLoadError as e:
        raise CommandError(f"the issued certificate is unusable: {e}") from None
    pki.write_p12(out, key, leaf, chain, password, overwrite=replacing,
                  friendly_name=name.encode())  # fmt: skip
    _summary(out, ident, leaf, password)
    if args.new_key:
        _out("  the key changed: peers that pinned the old one will see a key change")
    if not replacing:
        _out(f"  {args.cert} stays valid until it expires (revoke it if it was compromised)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    _check_registry(args)
    if not args.yes:
        raise UsageError("revoking cannot be undone; add --yes to confirm")
    identity, _password = _load(args)
    name = identity.default_name

    async def work(proto: Any) -> None:
        await proto.revoke()

    run_with_registry(args, name, identity, work)
    _out(f"revoked the certificate of {name} in {args.cert}")
    _out(f"  serial:       {identity.leaf.serial_number:x}")
    _out(f"  SPKI SHA-256: {identity.fingerprint()}")
    _out("  its registrations are gone; enrol again with a new invitation to get a new one")
    return 0
