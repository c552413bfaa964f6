"""
Where peer connections come from: L{PeerFactory}, which accepts (responder) or opens
(initiator) them with one configuration and enforces the §9.2 handshake limits, and
L{connectPeer}, the one call an embedder needs to open a session.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from sixchat.connection import INITIATOR, RESPONDER
from sixchat.handshake import PeerConfig
from sixchat.protocol import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, PeerProtocol
from sixchat.session import ISessionObserver, Session

__all__ = [
    "MAX_HANDSHAKES",
    "MAX_HANDSHAKES_PER_SOURCE",
    "PeerFactory",
    "connectPeer",
    "source_key",
]

MAX_HANDSHAKES = 256
MAX_HANDSHAKES_PER_SOURCE = 16


def source_key(address: IAddress) -> str:
    """The §9.2 per-source bucket: the IPv4 address, or the IPv6 /64."""
    host = getattr(address, "host", None)
    if not host:
        return "?"
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class PeerFactory(Factory):
    """
    Accepts (responder) or opens (initiator) peer connections with one configuration.

    As a server factory it enforces the §9.2 handshake limits: past C{max_handshakes} in
    progress, or C{max_per_source} from one IPv4 address or IPv6 /64, a new TCP connection is
    closed at once without an alert.
    """

    protocol = PeerProtocol
    log = Logger()

    def __init__(
        self,
        config: PeerConfig,
        clock: IReactorTime,
        observer: ISessionObserver | None = None,
        *,
        role: str = RESPONDER,
        max_handshakes: int = MAX_HANDSHAKES,
        max_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
        **protocol_options: Any,
    ) -> None:
        self.config = config
        self.clock = clock
        self.observer = observer
        self.role = role
        self.max_handshakes = max_handshakes
        self.max_per_source = max_per_source
        self.protocol_options = protocol_options
        self.in_handshake: dict[str, int] = {}
        self.handshaking = 0
        self.refused = 0
        self.sessions: set[Session] = set()

    #: While True (e.g. the agent's store is not open yet) new connections are closed at once.
    paused = False

    def buildProtocol(self, addr: IAddress) -> PeerProtocol | None:  # type: ignore[override]
        if self.paused:
            return None
        if self.role == RESPONDER:
            key = source_key(addr)
            if (
                self.handshaking >= self.max_handshakes
                or self.in_handshake.get(key, 0) >= self.max_per_source
            ):
                self.refused += 1
                self.log.debug("refusing connection from {key}: handshake limit", key=key)
                return None
            self.handshaking += 1
            self.in_handshake[key] = self.in_handshake.get(key, 0) + 1
        proto = PeerProtocol(
            self.config, self.role, self.clock, self.observer, **self.protocol_options
        )
        proto.factory = self
        if self.role == RESPONDER:
            proto.on_handshake_end = lambda p, key=key: self._release(key)
        if self.role == RESPONDER:
            # Nobody waits on an accepted connection's handshake; failures are logged.
            proto.handshakeDone.addErrback(lambda f: None)
        return proto

    def _release(self, key: str) -> None:
        self.handshaking -= 1
        count = self.in_handshake.get(key, 0) - 1
        if count > 0:
            self.in_handshake[key] = count
        else:
            self.in_handshake.pop(key, None)

    def _track(self, session: Session) -> None:
        self.sessions.add(session)
        session.whenEnded().addCallback(lambda _: self.sessions.discard(session))


def connectPeer(
    reactor: IReactorTime,
    endpoint: Any,
    identity: Any,
    trust: Any = None,
    to: str | None = None,
    *,
    config: PeerConfig | None = None,
    observer: ISessionObserver | None = None,
    responder_cert: bytes | None = None,
    groups: list[str] | None = None,
    suites: list[str] | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    keepalive: float | None = None,
    **config_options: Any,
) -> defer.Deferred[Session]:
    """
    Open a session to the UA at C{endpoint} (an C{IStreamClientEndpoint}).

    Fires with the L{Session} once the handshake completes, or fails with L{HandshakeFailed}
    (the alert, ours or the peer's), L{SessionLost} or the endpoint's connection error.
    """
    if config is None:
        identities = identity if isinstance(identity, list) else [identity]
        config = PeerConfig(identities, trust, **config_options)
    factory = PeerFactory(
        config,
        reactor,
        observer,
        role=INITIATOR,
        to=to,
        responder_cert=responder_cert,
        groups=groups,
        suites=suites,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        keepalive=keepalive,
    )
    d = endpoint.connect(factory)
    return d.addCallback(lambda proto: proto.handshakeDone)
