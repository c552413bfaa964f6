"""
C{twistd sixchat}: run a user agent (L{UserAgentService}): it accepts End2End Direct sessions,
stores messages durably in its data directory, delivers its outbox, serves the local control
socket the C{sixchat send/inbox/watch/chat/…} commands talk to, and with C{--registry} keeps
itself registered (irp-1 §3.1) and finds peers by identity.

Configuration errors become one actionable line (C{usage.UsageError}), never a traceback.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.python import usage

from sixchat.errors import SixchatError
from sixchat.handshake import AccessPolicy, PeerConfig
from sixchat.listener import DEFAULT_LISTEN
from sixchat.twistd import OneLineOptions, check_listen

PIN_POLICIES = ("accept", "warn", "refuse")


class Options(OneLineOptions):
    tapname = "sixchat"
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
        [
            "revocation",
            None,
            "soft",
            "soft: without a usable CRL for an issuer, log it and accept (the spec's default); "
            "hard: refuse (bad_certificate) unless every issuer on the path has a current CRL",
        ],
        ["handshake-timeout", None, "15", "seconds a handshake may take"],
        ["idle-timeout", None, "300", "seconds without traffic before a session is closed"],
        [
            "keepalive",
            None,
            "30",
            "seconds after which a peer that answers no ping is declared dead (0: off)",
        ],
        [
            "address-poll",
            None,
            "1",
            "seconds between two looks at this host's addresses: when they change, sessions "
            "bound to a vanished one end and the new ones are registered at once (0: off)",
        ],
        ["padding", None, "0", "pad sealed records to a multiple of this many bytes (0: off)"],
        [
            "registry-ca",
            None,
            None,
            "CA certificate(s) of the registry's server certificate "
            "(default: the system's trust store)",
        ],
        ["node", None, None, "this device's name at the registry (default: the host name)"],
        ["register-expires", None, "300", "seconds a registration lasts (refreshed at 2/3)"],
        [
            "crl-refresh",
            None,
            "1h",
            "with --registry: fetch the registry's CRLs at start-up and then this often "
            "(e.g. 15m, 1h; at least 60 s; sooner when a CRL's nextUpdate comes first); "
            "0: never fetch",
        ],
        [
            "data-dir",
            "d",
            None,
            "where messages, contacts, pins and the control socket live "
            "(default: $XDG_DATA_HOME/sixchat/<identity>/)",
        ],
        [
            "store-encryption",
            None,
            "auto",
            "the message store at rest: on (must be encrypted; needs a PKCS#12 password), "
            "auto (a new store is encrypted when the identity has a password), off (a new "
            "store is plain); an existing store opens as it is (sixchat store encrypt/decrypt)",
        ],
        [
            "message-ttl",
            None,
            "7d",
            "give up on undelivered messages after this long (e.g. 7d, 12h)",
        ],
        ["files-dir", None, None, "where received files land (default: <data-dir>/files)"],
        [
            "max-file-size",
            None,
            "4G",
            "refuse offered files larger than this (bytes, or with K, M, G, T: binary units)",
        ],
        ["max-file-transfers", None, "4", "files one peer may send us at the same time"],
        [
            "web",
            None,
            None,
            "serve the web UI on this endpoint, e.g. tcp:8605:interface=127.0.0.1 (off by "
            "default; a non-loopback address needs ssl:; the link: `sixchat web`)",
        ],
    ]
    optFlags = [
        ["key-transport", None, "also accept rsa-oaep key transport (not forward secret)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["crl"] = []
        self["allow"] = []
        self["advertise"] = []
        self["registry"] = None

    def opt_registry(self, value: str) -> None:
        self["registry"] = ",".join(filter(None, [self["registry"], value.strip()]))

    opt_registry.__doc__ = (
        "register with this IRP registry: HOST[:PORT] (port 4604), or 'auto' to find it from "
        "your identity's domain (DNS SRV _irp._tcp); registries sharing one database: repeat "
        "it or give a comma list (the agent uses the first that answers, and moves to another "
        "when it fails)"
    )

    def opt_crl(self, path: str) -> None:
        """a CRL file (PEM or DER) to check revocation with; repeatable"""
        self["crl"].append(path)

    def opt_allow(self, entry: str) -> None:
        """admit only this identity or @domain; repeatable (default: anyone trusted)"""
        if not (entry.startswith("@") or "@" in entry):
            raise usage.UsageError(f"--allow {entry!r}: give an identity or @domain")
        self["allow"].append(entry)

    def opt_advertise(self, entry: str) -> None:
        """with --registry: publish this IP[:PORT] instead of the machine's addresses; repeatable"""
        from sixchat.irp.keeper import parse_advertise

        try:
            self["advertise"].append(parse_advertise(entry))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        if not self["cert"]:
            raise usage.UsageError("--cert is required (your .p12 identity file)")
        if not self["trust"]:
            raise usage.UsageError("--trust is required (the CA certificate(s) you trust)")
        check_listen(self["listen"])
        if self["pin-policy"] not in PIN_POLICIES:
            raise usage.UsageError("--pin-policy must be accept, warn or refuse")
        check_revocation_option(self["revocation"])
        for name in ("handshake-timeout", "idle-timeout", "keepalive", "address-poll"):
            try:
                self[name] = float(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a number of seconds") from None
            if name in ("keepalive", "address-poll"):
                if not 0 <= self[name] < float("inf"):
                    raise usage.UsageError(f"--{name} must be 0 (off) or a number of seconds")
            elif self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        try:
            self["padding"] = int(self["padding"])
        except ValueError:
            raise usage.UsageError("--padding must be a whole number of bytes") from None
        from sixchat.agent.store.encryption import MODES

        if self["store-encryption"] not in MODES:
            raise usage.UsageError("--store-encryption must be on, auto or off")
        self["config"] = build_config(self)
        check_registry_options(self)
        self["message-ttl"] = parse_duration(self["message-ttl"], "--message-ttl")
        self["crl-refresh"] = parse_crl_refresh(self["crl-refresh"])
        self["max-file-size"] = parse_size(self["max-file-size"], "--max-file-size")
        try:
            self["max-file-transfers"] = int(self["max-file-transfers"])
        except ValueError:
            raise usage.UsageError("--max-file-transfers must be a whole number") from None
        if self["max-file-transfers"] < 1:
            raise usage.UsageError("--max-file-transfers must be at least 1")
        if not self["data-dir"]:
            from sixchat.agent.datadir import default_data_dir

            self["data-dir"] = default_data_dir(self["config"].identities[0].names[0])
        check_store(self)
        if self["web"]:
            from sixchat.web.server import parse_web_endpoint

            try:
                parse_web_endpoint(self["web"])
            except ValueError as e:
                raise usage.UsageError(f"--web {self['web']!r}: {e}") from None


def check_store(options: Any) -> None:
    """The store's at-rest mode against what is on disk: a wrong password is one line here."""
    from sixchat.agent.store.encryption import check

    try:
        check(options["data-dir"], options["store-password"], options["store-encryption"])
    except SixchatError as e:
        raise usage.UsageError(str(e)) from None


def parse_duration(text: str, option: str) -> Any:
    """C{90s}, C{15m}, C{12h}, C{7d} or plain seconds, as a timedelta."""
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise usage.UsageError(f"{option} {text!r}: use e.g. 90s, 15m, 12h or 7d") from None
    if seconds <= 0:
        raise usage.UsageError(f"{option} must be positive")
    return timedelta(seconds=seconds)


def parse_size(text: str, option: str) -> int:
    """A size in bytes, optionally with K, M, G or T (powers of 1024): C{4G}, C{500M}."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    body = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (body[:-1], body[-1]) if body and body[-1] in units else (body, "")
    try:
        size = int(float(number) * units.get(unit, 1))
    except ValueError:
        raise usage.UsageError(f"{option} must be a size such as 4G, 500M or 1048576") from None
    if size < 0:
        raise usage.UsageError(f"{option} must not be negative")
    return size


def parse_crl_refresh(text: str) -> float:
    """C{--crl-refresh}: 0 (off), or a duration of at least a minute, in seconds."""
    number = text.strip().rstrip("smhd")
    try:
        if text.strip() == "off" or float(number) == 0:
            return 0.0
    except ValueError:
        pass  # parse_duration says what is wrong
    seconds = parse_duration(text, "--crl-refresh").total_seconds()
    if seconds < 60:
        raise usage.UsageError("--crl-refresh must be 0 (off) or at least 60 s")
    return float(seconds)


def check_registry_options(options: Any) -> None:
    """Validate the registry options, load C{--registry-ca}; one-line errors."""
    from sixchat.irp import messages
    from sixchat.irp.client import load_certificates
    from sixchat.irp.discovery import parse_registry_list

    options["registry-anchors"] = None
    registry = options["registry"]
    if not registry:
        for name in ("registry-ca", "node"):
            if options[name]:
                raise usage.UsageError(f"--{name} needs --registry")
        if options["advertise"]:
            raise usage.UsageError("--advertise needs --registry")
        return
    if registry != "auto":
        try:
            parse_registry_list(registry)
        except ValueError as e:
            raise usage.UsageError(f"--registry: {e}") from None
    if options["registry-ca"]:
        try:
            options["registry-anchors"] = load_certificates(options["registry-ca"])
        except SixchatError as e:
            raise usage.UsageError(f"--registry-ca: {e}") from None
    from sixchat.irp.messages import default_node

    node = options["node"] or default_node()
    if not messages.is_valid_node(node):
        raise usage.UsageError(f"--node {node!r}: use 1-64 letters, digits, '_', '.' or '-'")
    options["node"] = node
    try:
        expires = int(options["register-expires"])
    except (TypeError, ValueError):
        raise usage.UsageError("--register-expires must be a whole number of seconds") from None
    if not messages.MIN_EXPIRES <= expires <= messages.MAX_EXPIRES:
        raise usage.UsageError(
            f"--register-expires must be {messages.MIN_EXPIRES} to {messages.MAX_EXPIRES}"
        )
    options["register-expires"] = expires


def check_revocation_option(value: str) -> None:
    """C{--revocation}: soft or hard (L{sixchat.trust.crl.REVOCATION_MODES})."""
    from sixchat.trust.crl import REVOCATION_MODES

    if value not in REVOCATION_MODES:
        raise usage.UsageError(f"--revocation must be soft or hard, not {value!r}")


def build_config(options: Any) -> PeerConfig:
    """Load identity, trust anchors, CRLs and policies; one-line errors for the user."""
    from twisted.logger import Logger

    from sixchat.identity import load_identity, read_password
    from sixchat.trust import PinPolicy, TrustStore

    log = Logger(namespace="sixchat.trust")
    try:
        password = read_password(options["password-file"])
        identity = load_identity(options["cert"], password, key_path=options["key"])
        # Kept for the store key only (unwrapped once, on the store's thread, at start).
        options["store-password"] = password
        trust = TrustStore.from_paths(
            options["trust"],
            options["crl"],
            warn=lambda text: log.warn("{text}", text=text),
            revocation=options.get("revocation") or "soft",
        )
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

    from sixchat.agent.service import UserAgentService

    agent = UserAgentService(
        reactor,
        options["config"],
        options["data-dir"],
        listen=options["listen"],
        registry=options["registry"] or None,
        registry_anchors=options["registry-anchors"],
        node=options["node"],
        advertise=options["advertise"],
        register_expires=options["register-expires"] if options["registry"] else 300,
        pin_policy=options["pin-policy"],
        message_ttl=options["message-ttl"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
        keepalive=options["keepalive"],
        address_poll=options["address-poll"],
        crl_refresh=options["crl-refresh"],
        store_password=options["store-password"],
        store_encryption=options["store-encryption"],
        files_dir=options["files-dir"],
        max_file_size=options["max-file-size"],
        max_concurrent_files=options["max-file-transfers"],
    )
    agent.ready.addCallback(freeze_start_up)
    if options["web"]:
        from sixchat.web.server import WebService

        web = WebService(reactor, agent, options["web"], max_upload=options["max-file-size"])
        web.setServiceParent(agent)
    return agent


def freeze_start_up(result: object, gc_module: Any = gc) -> object:
    """
    Once the agent is ready: collect once, then keep everything alive now (modules, the
    trust store, the identity, the store) out of every later collection (C{gc.freeze}).
    They live as long as the process; without this each full collection walks them all,
    19-25 ms in the latency benchmark (docs/benchmarks.md, "Latency"), a stall of the
    reactor that a message in flight waits for. Process-wide, so only the twistd plugin
    (and the benchmark's agents, which stand for it) apply it, never library code.
    """
    if hasattr(gc_module, "freeze"):
        gc_module.collect()
        gc_module.freeze()
    return result
