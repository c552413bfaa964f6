"""
C{twistd sixchat}: run a user agent that accepts End2End Direct sessions.

Configuration errors become one actionable line (C{usage.UsageError}), never a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from sixchat.errors import SixchatError
from sixchat.handshake import AccessPolicy, PeerConfig
from sixchat.service import DEFAULT_LISTEN, PeerListenerService

PIN_POLICIES = ("accept", "warn", "refuse")


class Options(usage.Options):
    synopsis = "--cert FILE.p12 --trust CA.pem [options]"
    longdesc = (
        "Runs a SixChat End2End Direct user agent: accepts sessions from peers whose "
        "certificates chain to the trust anchors, and logs each session and message. "
        "The PKCS#12 password comes from --password-file or SIXCHAT_P12_PASSWORD."
    )

    optParameters = [
        ["cert", "c", None, "your identity: a PKCS#12 file (.p12/.pfx) or a PEM cert + key"],
        ["key", None, None, "the private key, if --cert is a PEM certificate without it"],
        ["password-file", None, None, "file whose first line is the PKCS#12 password"],
        ["trust", "t", None, "trust anchors: a PEM bundle or a directory of PEM files"],
        ["listen", "l", DEFAULT_LISTEN, "Twisted endpoint string to listen on"],
        ["pin-policy", None, "warn", "on a known contact's key change: accept|warn|refuse"],
        ["handshake-timeout", None, "15", "seconds a handshake may take"],
        ["idle-timeout", None, "300", "seconds without traffic before a session is closed"],
        ["padding", None, "0", "pad sealed records to a multiple of this many bytes (0: off)"],
    ]
    optFlags = [
        ["key-transport", None, "also accept rsa-oaep key transport (not forward secret)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["crl"] = []
        self["allow"] = []

    def opt_crl(self, path: str) -> None:
        """a CRL file (PEM or DER) to check revocation with; repeatable"""
        self["crl"].append(path)

    def opt_allow(self, entry: str) -> None:
        """admit only this identity or @domain; repeatable (default: anyone trusted)"""
        if not (entry.startswith("@") or "@" in entry):
            raise usage.UsageError(f"--allow {entry!r}: give an identity or @domain")
        self["allow"].append(entry)

    def postOptions(self) -> None:
        if not self["cert"]:
            raise usage.UsageError("--cert is required (your .p12 identity file)")
        if not self["trust"]:
            raise usage.UsageError("--trust is required (the CA certificate(s) you trust)")
        if self["pin-policy"] not in PIN_POLICIES:
            raise usage.UsageError("--pin-policy must be accept, warn or refuse")
        for name in ("handshake-timeout", "idle-timeout"):
            try:
                self[name] = float(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a number of seconds") from None
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        try:
            self["padding"] = int(self["padding"])
        except ValueError:
            raise usage.UsageError("--padding must be a whole number of bytes") from None
        self["config"] = build_config(self)


def build_config(options: Any) -> PeerConfig:
    """Load identity, trust anchors, CRLs and policies; one-line errors for the user."""
    from sixchat.identity import load_identity, read_password
    from sixchat.trust import PinPolicy, TrustStore

    try:
        password = read_password(options["password-file"])
        identity = load_identity(options["cert"], password, key_path=options["key"])
        trust = TrustStore.from_paths(options["trust"], options["crl"])
    except SixchatError as e:
        raise usage.UsageError(str(e)) from None
    access = AccessPolicy(options["allow"]) if options["allow"] else None
    return PeerConfig(
        [identity],
        trust,
        key_transport=bool(options["key-transport"]),
        access=access,
        pins=PinPolicy(policy=options["pin-policy"]),
        padding=options["padding"],
    )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return PeerListenerService(
        reactor,
        options["config"],
        options["listen"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
    )
