"""
The agent's session table: every established session, both roles, and the one outgoing
session per peer node that deliveries share. A node is dialled once however many deliveries
want it (Happy Eyeballs over its registered contacts, L{sixchat.agent.dialer}), and a session
whose peer a CRL revokes is ended here and never used again.

Mobility (docs/networks.md): a session bound to one of our addresses that vanished is ended
at once (L{abandonBoundTo}), and so is an outgoing session, or a dial, to an address the peer's
node no longer registers (L{contactsChanged}, and L{sessionFor} before reusing a session):
the next delivery dials the node where it is now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sixchat.agent._shared import Shared
from sixchat.agent.crls import CRLUpdater
from sixchat.agent.dialer import happy_eyeballs
from sixchat.agent.errors import AgentError
from sixchat.agent.events import revoked_event
from sixchat.agent.views import session_dict
from sixchat.errors import CertificateRevoked
from sixchat.identity import normalize_identity
from sixchat.irp.messages import canonical_host
from sixchat.netaddr import client_endpoint, format_hostport
from sixchat.protocol import KEEPALIVE, ISessionObserver, Session, connectPeer
from sixchat.trust.crl import crl_number, revoked_on_path

if TYPE_CHECKING:
    from cryptography import x509

    from sixchat.handshake import PeerConfig
    from sixchat.irp.messages import NodeBinding, Record

__all__ = ["SessionTable"]

log = Logger(namespace="sixchat.agent.service")


class SessionTable:
    """
    Sessions from C{sessionStarted} to C{sessionEnded} (L{add}, L{remove}), outgoing ones by
    (peer, node) for reuse, incoming ones by peer; L{sessionFor} finds or dials.
    """

    def __init__(
        self,
        reactor: Any,
        config: PeerConfig,
        emit: Callable[[dict[str, Any]], None],
        *,
        clock: IReactorTime,
        handshake_timeout: float,
        idle_timeout: float,
        keepalive: float | None = KEEPALIVE,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.config = config
        #: Told of everything on the sessions we dial (the agent's L{Inbox}); set by the
        #: agent, which builds the inbox on this table.
        self.observer: ISessionObserver | None = None
        self.emit = emit
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        #: Every established session, both roles, from sessionStarted to sessionEnded.
        self.live: set[Session] = set()
        #: Sessions we ended because a CRL revoked the peer: nothing more is stored from them.
        self.revoked: set[Session] = set()
        #: Our sessions to the peers' nodes: (normalized peer, node) -> session.
        self.outgoing: dict[tuple[str, str], Session] = {}
        self.incoming: dict[str, set[Session]] = {}
        self._dialing: dict[tuple[str, str], _Dial] = {}

    # the table -----------------------------------------------------------------------------

    def add(self, session: Session) -> None:
        self.live.add(session)
        if session.connection.role == "responder":
            key = normalize_identity(session.result.peer_name)
            self.incoming.setdefault(key, set()).add(session)

    def remove(self, session: Session) -> None:
        self.live.discard(session)
        self.revoked.discard(session)
        peer = normalize_identity(session.result.peer_name)
        self.incoming.get(peer, set()).discard(session)
        for key, known in list(self.outgoing.items()):
            if known is session:
                del self.outgoing[key]

    def anySession(self, peer: str) -> Session | None:
        """An open session with C{peer}, ours first (for what is never queued: typing)."""
        key = normalize_identity(peer)
        for (p, _), session in self.outgoing.items():
            if p == key and not session.ended:
                return session
        for session in self.incoming.get(key, ()):
            if not session.ended:
                return session
        return None

    def incomingFrom(self, peer: str) -> list[Session]:
        """
        The open sessions C{peer} opened to us: the outbox's way to the peer when
        the registry cannot be asked (their handshakes proved the identity and passed pinning;
        a session a CRL revoked is never used).
        """
        return [
            s
            for s in self.incoming.get(normalize_identity(peer), ())
            if not s.ended and s.connection.state == "open" and s not in self.revoked
        ]

    def describe(self) -> list[dict[str, Any]]:
        return [session_dict(s, node) for (_, node), s in self.outgoing.items()] + [
            session_dict(s, None) for group in self.incoming.values() for s in group
        ]

    def closeAll(self) -> defer.Deferred[Any]:
        sessions = list(self.outgoing.values()) + [
            s for group in self.incoming.values() for s in group
        ]
        return defer.DeferredList([s.close() for s in sessions], consumeErrors=True)

    # revocation ----------------------------------------------------------------------------

    def endIfRevokedSince(self, session: Session, crls: CRLUpdater) -> bool:
        """
        A session that completed its handshake just after new CRLs came in had its chain
        validated against the old ones: check it against the current ones.
        """
        changed = crls.changed_at
        if changed is not None and self.clock.seconds() - changed <= self.handshake_timeout + 1:
            return self.endIfRevoked(session, self.config.trust.crls)
        return False

    def crlsTaken(self, crls: Sequence[x509.CertificateRevocationList]) -> None:
        """New CRLs are in the trust store: end every session whose peer they revoke."""
        for session in list(self.live):
            self.endIfRevoked(session, crls)

    def endIfRevoked(
        self, session: Session, crls: Sequence[x509.CertificateRevocationList]
    ) -> bool:
        if session.ended or session in self.revoked:
            return session in self.revoked
        chain = session.result.peer.chain
        hit = revoked_on_path(chain, crls)
        if hit is None:
            return False
        depth, crl = hit
        self.revoked.add(session)
        what = "certificate" if depth == 0 else f"CA certificate at depth {depth}"
        serial = f"{chain[depth].serial_number:x}"
        log.warn(
            "ending the session with {peer}: its {what} (serial {serial}) is revoked by the CRL "
            "of {issuer} (number {number})",
            peer=session.result.peer_name,
            what=what,
            serial=serial,
            issuer=crl.issuer.rfc4514_string(),
            number=crl_number(crl),
        )
        self.emit(
            revoked_event(session.result.peer_name, serial, depth, crl.issuer.rfc4514_string())
        )
        # A SEALED certificate_revoked alert (§9.1), then the connection is dropped: from
        # now on nothing is read from it or sent on it.
        session.abort(CertificateRevoked(f"{what} revoked"))
        return True

    # mobility ------------------------------------------------------------------------------

    def abandonBoundTo(self, gone: frozenset[str]) -> int:
        """
        End at once every session bound to one of our addresses in C{gone} (they vanished:
        nothing sent from them arrives any more); how many were ended.
        """
        gone = frozenset(h for h in (_canonical(a) for a in gone) if h is not None)
        ended = 0
        for session in list(self.live):
            if session.ended:
                continue
            local = _canonical(getattr(session.localAddress(), "host", ""))
            if local in gone:
                log.info(
                    "ending the session with {peer}: our address {address} is gone",
                    peer=session.result.peer_name,
                    address=local,
                )
                session.abandon(f"our address {local} is gone")
                ended += 1
        return ended

    def contactsChanged(self, peer: str, record: Record) -> None:
        """
        C{peer}'s record changed (a watch's push): end our sessions to, and cancel our dials
        of, addresses its nodes no longer register. A node missing from the record is left
        alone (offline at the registry is not unreachable; the keep-alive decides that).
        """
        key = normalize_identity(peer)
        for node in record.nodes:
            session = self.outgoing.get((key, node.name))
            if session is not None and not session.ended and not _reaches(session, node):
                self._moved(session, node)
            dialing = self._dialing.get((key, node.name))
            if dialing is not None and dialing.contacts != _contact_set(node):
                dialing.cancel()

    def _moved(self, session: Session, node: NodeBinding) -> None:
        where = ", ".join(f"{c.host} port {c.port}" for c in node.contacts) or "nowhere"
        log.info(
            "ending the session with {peer} node {node}: the node moved (now at {where})",
            peer=session.result.peer_name,
            node=node.name,
            where=where,
        )
        session.abandon(f"{session.result.peer_name} node {node.name} moved")

    # dialling ------------------------------------------------------------------------------

    async def sessionFor(self, peer: str, node: NodeBinding) -> Session:
        """The open session to C{peer}'s C{node}, dialled (once, shared) if there is none."""
        key = (normalize_identity(peer), node.name)
        existing = self.outgoing.get(key)
        if existing is not None and not existing.ended and existing.connection.state == "open":
            if _reaches(existing, node):
                return existing
            self._moved(existing, node)  # to an address the node no longer registers
        dialing = self._dialing.get(key)
        if dialing is not None and dialing.contacts != _contact_set(node):
            dialing.cancel()  # dialling where the node was; its failure reaches its waiters
            dialing = None
        if dialing is None:
            d = self._dial(peer, node)
            dialing = self._dialing[key] = _Dial(d, _contact_set(node))

            def finished(result: Any, mine: _Dial = dialing) -> Any:
                if self._dialing.get(key) is mine:
                    del self._dialing[key]
                return result

            d.addBoth(finished)
        session: Session = await dialing.wait()
        return session

    def _dial(self, peer: str, node: NodeBinding) -> defer.Deferred[Session]:
        contacts = [(c.host, c.port) for c in node.contacts]
        started = self.clock.seconds()

        def attempt(host: str, port: int) -> defer.Deferred[Session]:
            endpoint = client_endpoint(self.reactor, host, port, self.handshake_timeout)
            return connectPeer(
                self.reactor,
                endpoint,
                self.config.identities[0],
                config=self.config,
                to=peer,
                observer=self.observer,
                responder_cert=node.cert,
                handshake_timeout=self.handshake_timeout,
                idle_timeout=self.idle_timeout,
                keepalive=self.keepalive,
            )

        def check(session: Session) -> Session:
            if session.result.peer.leaf_der != node.cert:
                session.close()
                raise AgentError(
                    f"{peer} node {node.name} presented another certificate than the one it "
                    "registered"
                )
            self.outgoing[(normalize_identity(peer), node.name)] = session
            log.info(
                "reached {peer} node {node} at {address} in {elapsed:.2f} s ({count} "
                "contact(s) registered)",
                peer=peer,
                node=node.name,
                address=_address_text(session),
                elapsed=self.clock.seconds() - started,
                count=len(contacts),
            )
            return session

        return happy_eyeballs(self.clock, contacts, attempt).addCallback(check)


class _Dial(Shared):
    """A dial in progress, shared by the deliveries that wait for it, and where it dials."""

    def __init__(self, d: defer.Deferred[Any], contacts: frozenset[tuple[str, int]]) -> None:
        super().__init__(d)
        self.deferred = d
        self.contacts = contacts

    def cancel(self) -> None:
        self.deferred.cancel()


def _canonical(host: str) -> str | None:
    """C{host} as registries write contacts (no zone id, IPv4-mapped as IPv4), or None."""
    try:
        return canonical_host(str(host).split("%")[0], allow_private=True)
    except ValueError:
        return None


def _address_text(session: Session) -> str:
    address = session.address()
    return format_hostport(getattr(address, "host", "?"), getattr(address, "port", None))


def _contact_set(node: NodeBinding) -> frozenset[tuple[str, int]]:
    return frozenset((_canonical(c.host) or c.host, c.port) for c in node.contacts)


def _reaches(session: Session, node: NodeBinding) -> bool:
    """Whether C{session} was dialled to one of the addresses C{node} registers now."""
    address = session.address()
    host = _canonical(getattr(address, "host", ""))
    return (host, getattr(address, "port", None)) in _contact_set(node)
