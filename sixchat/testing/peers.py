"""
Peers in memory: a throwaway CA, a recording session observer and a connected pair of
L{PeerProtocol}s, everything on a C{task.Clock} with no sockets.

What is here:

  - L{ThrowawayCA}: a CA made in memory, with identities and peer configurations under it,
    for tests that need peers but not any particular certificates.
  - L{RecordingObserver}: an L{ISessionObserver} that keeps everything it sees and can hold
    receipts back, to test what happens before a message is stored.
  - L{PeerPair}: an initiator and a responder L{PeerProtocol} connected through
    C{twisted.test.iosim}, with L{PeerPair.flush} to move the bytes and both L{Session}s.

Typical use::

    pair = PeerPair.throwaway()          # alice@example.com -> bob@example.com
    d = pair.initiator_session.sendMessage("hi")
    pair.flush()
    receipt = successResultOf(d)
    [message] = pair.responder_observer.messages

Sixchat's own tests use these too, so they stay in step with the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress
from twisted.test import iosim
from zope.interface import implementer

from sixchat import pki
from sixchat.connection import INITIATOR
from sixchat.handshake import PeerConfig
from sixchat.identity import Identity
from sixchat.peers import PeerFactory
from sixchat.protocol import PeerProtocol
from sixchat.session import ISessionObserver, Session, SessionObserver
from sixchat.stanzas import Message
from sixchat.trust import TrustStore

__all__ = ["PeerPair", "RecordingObserver", "ThrowawayCA"]


class ThrowawayCA:
    """
    A root CA made in memory, for tests that need authenticated peers but not particular
    certificates: L{identity} issues identities under it, L{trust} trusts exactly it, and
    L{config} makes the L{PeerConfig} of a peer that uses both.

    Keys are generated afresh for each CA and identity; Ed25519 (the default) costs well
    under a millisecond. Tests that make many peers can reuse one C{ThrowawayCA}.
    """

    def __init__(self, name: str = "sixchat.testing CA", key_type: str = "ed25519") -> None:
        self.key: CertificateIssuerPrivateKeyTypes
        self.cert: x509.Certificate
        self.key, self.cert = pki.create_ca(name, key_type)
        #: A trust store whose only anchor is this CA.
        self.trust = TrustStore([self.cert])

    def identity(self, *names: str, key_type: str = "ed25519", **issue_options: Any) -> Identity:
        """
        An L{Identity} for C{names} (one or more user@domain names) with a fresh key.
        C{issue_options} go to L{pki.issue_leaf} (e.g. C{days}, C{not_after}) for tests of
        expired or otherwise odd certificates.
        """
        if not names:
            raise TypeError("an identity needs at least one name")
        key = pki.generate_key(key_type)
        leaf = pki.issue_leaf(self.key, self.cert, list(names), key.public_key(), **issue_options)
        return Identity(key, leaf, source=f"throwaway identity {list(names)}")

    def config(self, *names: str, **peer_config_options: Any) -> PeerConfig:
        """
        The L{PeerConfig} of a peer with one fresh identity for C{names} that trusts this CA;
        C{peer_config_options} are further L{PeerConfig} fields (C{access}, C{groups}, ...).
        """
        return PeerConfig([self.identity(*names)], self.trust, **peer_config_options)


@implementer(ISessionObserver)
class RecordingObserver(SessionObserver):
    """
    An observer that keeps what it sees, to assert on: L{messages} and other L{stanzas}
    received, the sessions L{started}, the reasons sessions L{ended} for.

    With C{hold=True} a message is not "stored" until the test fires its Deferred in
    L{held} (C{callback(None)} to store, C{errback(...)} for a storage failure): the peer
    gets its receipt only then, which is how store-before-receipt is tested.
    """

    def __init__(self, hold: bool = False) -> None:
        self.messages: list[Message] = []
        self.stanzas: list[Any] = []
        self.started: list[Any] = []
        self.ended: list[Any] = []
        self.hold = hold
        self.held: list[defer.Deferred[None]] = []

    def sessionStarted(self, session: Any) -> None:
        self.started.append(session)

    def messageReceived(self, session: Any, message: Message) -> Any:
        self.messages.append(message)
        if self.hold:
            d: defer.Deferred[None] = defer.Deferred()
            self.held.append(d)
            return d
        return None

    def stanzaReceived(self, session: Any, stanza: Any) -> None:
        self.stanzas.append(stanza)

    def sessionEnded(self, session: Any, reason: Any) -> None:
        self.ended.append(reason)


class _ResponderName:
    def __repr__(self) -> str:
        return "<the responder's first name>"


#: L{PeerPair}'s default C{to}: the first name of the responder's first identity.
RESPONDER_NAME: Any = _ResponderName()


class PeerPair:
    """
    An initiator and a responder connected in memory: two L{PeerProtocol}s built by their
    L{PeerFactory}s and joined by C{twisted.test.iosim}, sharing one C{task.Clock}. The
    constructor connects them and runs the handshake (L{flush}); then
    L{initiator_session} and L{responder_session} are the two ends, or, if the handshake
    failed, C{initiator.handshakeDone} holds the failure.

    Nothing moves between the peers until the test calls L{flush} (or L{pump}), and no time
    passes until it calls L{advance}: a test sees every intermediate state.

    @ivar clock: the C{task.Clock} both peers read (timeouts, pings, message timestamps).
    @ivar initiator: the initiator's L{PeerProtocol} (C{.connection} is its sans-IO core).
    @ivar responder: the responder's L{PeerProtocol}.
    @ivar initiator_factory: the initiator's L{PeerFactory}.
    @ivar responder_factory: the responder's L{PeerFactory} (its §9.2 handshake limits apply).
    @ivar initiator_observer: what the initiator reports to (a L{RecordingObserver} unless
        one was given).
    @ivar responder_observer: likewise for the responder.
    @ivar iopump: the C{iosim.IOPump} that carries the bytes.
    """

    def __init__(
        self,
        initiator_config: PeerConfig,
        responder_config: PeerConfig,
        *,
        to: str | None = RESPONDER_NAME,
        initiator_observer: ISessionObserver | None = None,
        responder_observer: ISessionObserver | None = None,
        clock: task.Clock | None = None,
        address: IAddress | None = None,
        **initiator_options: Any,
    ) -> None:
        """
        @param to: the name the initiator asks for; by default the responder's first name,
            C{None} to ask for none (the responder then answers as its first identity).
        @param address: the initiator's address as the responder's factory sees it (for
            the per-source limits); 127.0.0.1 by default.
        @param initiator_options: further L{PeerProtocol} options of the initiator
            (C{groups}, C{suites}, C{responder_cert}, C{handshake_timeout}, ...).
        """
        if to is RESPONDER_NAME:
            to = responder_config.identities[0].names[0]
        self.clock = clock or task.Clock()
        self.initiator_observer: Any = initiator_observer or RecordingObserver()
        self.responder_observer: Any = responder_observer or RecordingObserver()
        self.responder_factory = PeerFactory(responder_config, self.clock, self.responder_observer)
        self.initiator_factory = PeerFactory(
            initiator_config,
            self.clock,
            self.initiator_observer,
            role=INITIATOR,
            to=to,
            **initiator_options,
        )
        addr = address or IPv4Address("TCP", "127.0.0.1", 40000)
        initiator: Any
        responder: Any
        initiator, responder, self.iopump = iosim.connectedServerAndClient(
            lambda: self.responder_factory.buildProtocol(addr),
            lambda: self.initiator_factory.buildProtocol(addr),
            clock=self.clock,
            greet=False,
        )
        self.initiator: PeerProtocol = initiator
        self.responder: PeerProtocol = responder
        # Kept past the end of the session (the protocol forgets it), to assert on its end.
        self._sessions: dict[str, Session] = {}
        for role, protocol in (("initiator", initiator), ("responder", responder)):
            protocol.handshakeDone.addCallback(self._keep, role)
        self.flush()

    def _keep(self, session: Session, role: str) -> Session:
        self._sessions[role] = session
        return session

    @classmethod
    def throwaway(
        cls,
        initiator: str = "alice@example.com",
        responder: str = "bob@example.com",
        **options: Any,
    ) -> PeerPair:
        """
        A pair with fresh identities for C{initiator} and C{responder} under one fresh
        L{ThrowawayCA}, for tests that only need two peers that trust each other.
        C{options} go to the constructor.
        """
        ca = ThrowawayCA()
        return cls(ca.config(initiator), ca.config(responder), **options)

    def flush(self) -> None:
        """Move bytes both ways until neither peer has anything more to send."""
        self.iopump.flush()

    def pump(self) -> bool:
        """Move what each peer has written once, each way; true if anything moved."""
        return bool(self.iopump.pump())

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass on the shared clock (timers fire), then L{flush}."""
        self.clock.advance(seconds)
        self.flush()

    @property
    def initiator_session(self) -> Session:
        """
        The initiator's end of the session, also after it ended (see its C{ended} and
        C{end_reason}); a C{RuntimeError} if the handshake has not completed.
        """
        return self._session("initiator", self.initiator)

    @property
    def responder_session(self) -> Session:
        """The responder's end of the session, as L{initiator_session}."""
        return self._session("responder", self.responder)

    @property
    def sessions(self) -> Sequence[Session]:
        """Both ends, initiator first."""
        return (self.initiator_session, self.responder_session)

    def _session(self, role: str, protocol: PeerProtocol) -> Session:
        session = self._sessions.get(role)
        if session is None:
            failure = protocol.failure
            raise RuntimeError(
                f"the {role} has no session" + (f" ({failure})" if failure is not None else "")
            )
        return session
