"""
C{sixchat probe}: our C{openssl s_client}. Runs one handshake with a peer and reports what
was negotiated and who answered; with C{--send}, also one message and its receipt.

The target is an address, or an identity: then the registry (C{--registry}, or the one DNS
names for the identity's domain) is asked where it is, the node contacts are tried (IPv6
first), and the certificate the peer presents must be the one the registry returned for that
node: a registry and a peer that disagree is a failure (C{bad_certificate}), because it
means one of them is not who it claims to be.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from sixchat.groups import GROUPS
from sixchat.netaddr import client_endpoint, format_hostport, parse_hostport
from sixchat.record import SUITES

DEFAULT_PORT = 4605


def _warn(text: str) -> None:
    """Revocation that could not be checked, a stale CRL: said on standard error (§4)."""
    print(f"sixchat: warning: {text}", file=sys.stderr)


def _read_cert_der(path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "probe",
        help="run a handshake with a peer and show what was negotiated",
        description="Connect to a SixChat user agent, run the handshake and print the "
        "negotiated version, suite and group, the peer's identity, chain and key "
        "fingerprint. Exit status 1 on failure, with the alert reason.",
    )
    p.add_argument(
        "target",
        metavar="HOST[:PORT]|IDENTITY",
        help="the peer's address (port 4605), or its identity to look up in the registry",
    )
    p.add_argument("--cert", required=True, help="your identity (.p12, or PEM cert+key)")
    p.add_argument("--key", help="private key file if --cert is a PEM certificate alone")
    p.add_argument("--password-file", help="file holding the PKCS#12 password")
    p.add_argument("--trust", required=True, help="trust anchors (PEM bundle or directory)")
    p.add_argument("--crl", action="append", default=[], help="CRL file; repeatable")
    p.add_argument(
        "--revocation",
        choices=("soft", "hard"),
        default="soft",
        help="without a usable CRL for an issuer: soft: warn and go on (default); hard: refuse",
    )
    p.add_argument("--to", help="the identity you want to reach (sent like TLS SNI)")
    p.add_argument("--group", choices=GROUPS, action="append", help="offer only this group")
    p.add_argument("--suite", choices=tuple(SUITES), action="append", help="offer this suite")
    p.add_argument(
        "--peer-cert",
        help="the peer's certificate (PEM or DER), needed to offer rsa-oaep key transport",
    )
    p.add_argument("--send", metavar="TEXT", help="also send TEXT and wait for the receipt")
    p.add_argument(
        "--send-file",
        metavar="PATH",
        help="also offer the file at PATH (§8.7), stream it and wait for the receipt",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds for everything")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--registry",
        metavar="HOST[:PORT]",
        help="with an IDENTITY target: the registry to ask, or a comma list of them (the first "
        "that answers); default: DNS SRV of its domain",
    )
    p.add_argument(
        "--registry-ca",
        metavar="FILE",
        help="CA certificate(s) of the registry's server certificate (default: system trust)",
    )
    p.set_defaults(handler=run)


def _chain(peer: Any) -> list[dict[str, str]]:
    from cryptography.hazmat.primitives import hashes

    out = []
    for cert in peer.chain:
        out.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sha256": cert.fingerprint(hashes.SHA256()).hex(),
            }
        )
    return out


def _report(args: argparse.Namespace, info: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    if "node" in info:
        print(f"registry:       {info['identity']} is node {info['node']!r} at {info['address']}")
    if not info["ok"] and (info["alert"] == "offline" or info["alert"].startswith("registry_")):
        print(f"lookup of {info['identity']} FAILED: {info['alert']}: {info['text']}")
        return
    if not info["ok"]:
        who = " (sent by the peer)" if info.get("by_peer") else ""
        text = f": {info['text']}" if info["text"] else ""
        print(f"handshake with {info['address']} FAILED: {info['alert']}{who}{text}")
        return
    print(f"connected to {info['address']}")
    print(f"version:        {info['version']}")
    print(f"suite:          {info['suite']}")
    print(f"group:          {info['group']}")
    print(f"peer identity:  {info['peer']}")
    print(f"peer key:       {info['alg']} SPKI SHA-256 {info['spki_sha256']}")
    print("peer chain:")
    for i, cert in enumerate(info["chain"]):
        print(f"  {i} {cert['subject']}  (issuer {cert['issuer']}, until {cert['not_after']})")
    print(f"handshake time: {info['handshake_ms']:.1f} ms (ping {info['ping_ms']:.1f} ms)")
    if "receipt_ms" in info:
        print(f"sent message {info['message_id']}: receipt after {info['receipt_ms']:.1f} ms")
    elif "send_error" in info:
        print(f"message NOT delivered: {info['send_error']}")
    if "file_id" in info:
        print(f"sent file {info['file_id']} ({info['file_size']} bytes): receipt after "
              f"{info['file_ms']:.1f} ms")  # fmt: skip
    elif "file_error" in info:
        print(f"file NOT delivered: {info['file_error']}")


def run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from sixchat.errors import SixchatError
    from sixchat.handshake import PeerConfig
    from sixchat.identity import is_valid_identity, load_identity, read_password
    from sixchat.protocol import HandshakeFailed, SessionLost, connectPeer
    from sixchat.trust import TrustStore

    by_identity = "@" in args.target
    host, port = "", 0
    if by_identity:
        if not is_valid_identity(args.target):
            print(f"sixchat: error: {args.target!r} is not a valid identity", file=sys.stderr)
            return 2
        if args.registry and args.registry != "auto":
            from sixchat.irp.discovery import parse_registry_list

            try:
                parse_registry_list(args.registry)
            except ValueError as e:
                print(f"sixchat: error: --registry: {e}", file=sys.stderr)
                return 2
    else:
        if args.registry or args.registry_ca:
            print("sixchat: error: --registry needs an IDENTITY target", file=sys.stderr)
            return 2
        try:
            host, port = parse_hostport(args.target, DEFAULT_PORT)
        except ValueError as e:
            print(f"sixchat: error: {e}", file=sys.stderr)
            return 2
    try:
        identity = load_identity(args.cert, read_password(args.password_file), key_path=args.key)
        trust = TrustStore.from_paths(
            args.trust, args.crl, warn=_warn, revocation=args.revocation
        )
        registry_anchors = None
        if args.registry_ca:
            from sixchat.irp.client import load_certificates

            registry_anchors = load_certificates(args.registry_ca)
    except SixchatError as e:
        print(f"sixchat: error: {e}", file=sys.stderr)
        return 1
    key_transport = bool(args.group and "rsa-oaep" in args.group)
    peer_cert = None
    if args.peer_cert:
        try:
            peer_cert = _read_cert_der(args.peer_cert)
        except (OSError, ValueError) as e:
            print(f"sixchat: error: --peer-cert {args.peer_cert}: {e}", file=sys.stderr)
            return 1
    elif key_transport:
        print("sixchat: error: --group rsa-oaep needs --peer-cert", file=sys.stderr)
        return 2
    file_path = os.path.abspath(args.send_file) if args.send_file else None
    if file_path is not None and not os.path.isfile(file_path):
        print(f"sixchat: error: --send-file {args.send_file}: no such file", file=sys.stderr)
        return 2
    config = PeerConfig(
        [identity], trust, key_transport=key_transport, file_transfer=file_path is not None
    )
    files = None
    if file_path is not None:
        from sixchat.agent.files.sending import OneFileSender

        files = OneFileSender(file_path)
    info: dict[str, Any] = {
        "ok": False,
        "address": format_hostport(host, port),
        "alert": None,
        "text": "",
    }

    async def lookup(reactor: Any) -> list[tuple[str, int, str, bytes]] | None:
        """(host, port, node, registered leaf DER) to try, IPv6 first; None: failed."""
        from sixchat.irp.client import connectRegistry
        from sixchat.irp.messages import IRPError

        info.update(identity=args.target, address=args.target)
        try:
            registry = await connectRegistry(
                reactor,
                args.registry,
                args.target,
                anchors=registry_anchors,
                client_identity=identity,
                timeout=args.timeout,
            )
            try:
                record = await registry.lookup(args.target)
            finally:
                await registry.close()
        except IRPError as e:
            info.update(alert=f"registry_{e.reason}", text=e.text or f"lookup of {args.target}")
            return None
        except (SixchatError, ValueError) as e:
            info.update(alert="registry_failed", text=str(e))
            return None
        targets = []
        for node in record.nodes:
            contacts = sorted(node.contacts, key=lambda c: ":" not in c.host)  # IPv6 first
            targets += [(c.host, c.port, node.name, node.cert) for c in contacts]
        if not targets:
            info.update(alert="offline", text=f"{args.target} has no live registration")
            return None
        return targets

    async def handshake(reactor: Any) -> Any:
        """The session, or None (info says why)."""
        if not by_identity:
            targets: list[tuple[str, int, str | None, bytes | None]] = [(host, port, None, None)]
        else:
            found = await lookup(reactor)
            if found is None:
                return None
            targets = list(found)
        for i, (h, p, node, registered) in enumerate(targets):
            info["address"] = format_hostport(h, p)
            if node is not None:
                info["node"] = node
            endpoint = client_endpoint(reactor, h, p, timeout=args.timeout)
            started = time.perf_counter()
            try:
                session = await connectPeer(
                    reactor,
                    endpoint,
                    identity,
                    config=config,
                    to=args.to or (args.target if by_identity else None),
                    responder_cert=peer_cert,
                    groups=args.group,
                    suites=args.suite,
                    handshake_timeout=args.timeout,
                    observer=files,
                )
            except HandshakeFailed as e:
                info.update(alert=e.reason, text=e.text, by_peer=e.sent_by_peer)
                return None
            except Exception as e:  # connection refused, DNS, timeouts: say it in one line
                info.update(alert="connection_failed", text=str(e) or type(e).__name__)
                if i + 1 < len(targets):
                    continue
                return None
            info["handshake_ms"] = (time.perf_counter() - started) * 1000
            if registered is not None and session.result.peer.leaf_der != registered:
                info.update(
                    alert="bad_certificate",
                    text="peer certificate differs from the registry's",
                    by_peer=False,
                    peer_spki_sha256=session.result.peer.spki_sha256.hex(),
                )
                await session.close()
                return None
            return session
        return None

    async def probe(reactor: Any) -> int:
        session = await handshake(reactor)
        if session is None:
            return 1
        result = session.result
        peer_addr: Any = session.address()
        info["address"] = format_hostport(peer_addr.host, peer_addr.port)
        # The initiator is done once it sent M8; a ping proves the responder accepted us
        # (it would answer an access-policy refusal with an alert instead).
        try:
            info["ping_ms"] = await session.ping() * 1000
        except SessionLost:
            reason = session.end_reason
            if isinstance(reason, HandshakeFailed):
                info.update(alert=reason.reason, text=reason.text, by_peer=reason.sent_by_peer)
            else:
                info.update(alert="connection_lost", text=str(reason or "closed by peer"))
            return 1
        info.update(
            ok=True,
            version=result.version,
            suite=result.suite,
            group=result.group,
            peer=result.peer_name,
            alg=result.peer.alg,
            spki_sha256=result.peer.spki_sha256.hex(),
            chain=_chain(result.peer),
            local=result.local_name,
        )
        status = 0
        if args.send is not None:
            sent = time.perf_counter()
            try:
                receipts = await session.sendText(args.send)
                info["message_id"] = receipts[-1].id
                info["receipt_ms"] = (time.perf_counter() - sent) * 1000
            except Exception as e:
                info["send_error"] = str(e)
                status = 1
        if files is not None and status == 0:
            sent = time.perf_counter()
            try:
                receipt = await files.send(reactor, session)
                info["file_id"] = receipt.id
                info["file_size"] = files.size
                info["file_ms"] = (time.perf_counter() - sent) * 1000
            except Exception as e:
                info["file_error"] = str(e)
                status = 1
        await session.close()
        return status

    def main(reactor: Any) -> defer.Deferred[int]:
        d = defer.ensureDeferred(probe(reactor))
        d.addCallback(lambda status: info.__setitem__("status", status))
        return d

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            info.setdefault("status", 1)
    _report(args, info)
    return int(info.get("status", 1))
