"""
The user agent as one Twisted service: listener, registration keeper, message store, outbox
and delivery, local control endpoint — and the small Python API (L{IUserAgent}) that the
control interface and embedding applications use.

Delivery ("nothing ever lost"): a message is stored before C{send} fires; the outbox keeps a
per-node entry for every registered node of the peer (§11.16) and retries each with
exponential backoff and jitter until that node's receipt, at once when the registry reports
the peer online (C{watch}), until the message expires (C{message_ttl}). Receiving: a message
is committed to the store before its receipt is sent; duplicates are receipted again and not
stored twice (§8.2).
"""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent.crls import DEFAULT_REFRESH as DEFAULT_CRL_REFRESH
from sixchat.agent.crls import CRLUpdater, crl_number, revoked_on_path
from sixchat.agent.dialer import happy_eyeballs
from sixchat.agent.interfaces import IAgentEvents, IUserAgent
from sixchat.agent.store import MessageStatus, MessageStore, OutgoingMessage
from sixchat.errors import CertificateRevoked, SixchatError
from sixchat.handshake import PeerConfig
from sixchat.identity import is_valid_identity, normalize_identity, spki_sha256
from sixchat.protocol import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    HandshakeFailed,
    ISessionObserver,
    Session,
    SessionLost,
    StanzaRefused,
    connectPeer,
    split_text,
)
from sixchat.service import DEFAULT_LISTEN, PeerListenerService
from sixchat.stanzas import TYPING_STATES, Message, Typing, format_timestamp, parse_timestamp
from sixchat.trust import PinPolicy

log = Logger()

DEFAULT_TTL = timedelta(days=7)
#: Outbox retry backoff per node: min(MAX, BASE * 2^attempts), times a jitter in [0.5, 1).
RETRY_BASE = 2.0
RETRY_MAX = 300.0
#: Unreceipted messages in flight per session (flow control for long outboxes).
SEND_WINDOW = 64
#: How often the outbox looks for due work and expired messages.
TICK = 1.0
EXPIRE_EVERY = 60.0
#: How long a looked-up registry record is trusted without a watch.
RECORD_TTL = 30.0


class AgentError(SixchatError):
    """A request to the agent that cannot be done (unknown identity, bad argument, …)."""


class _Shared:
    """One Deferred's outcome handed to any number of waiters, now or later."""

    def __init__(self, d: defer.Deferred[Any]) -> None:
        self._waiters: list[defer.Deferred[Any]] = []
        self._done = False
        self._result: Any = None
        d.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        self._done, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._give(waiter)

    def _give(self, waiter: defer.Deferred[Any]) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)

    def wait(self) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        if self._done:
            self._give(waiter)
        else:
            self._waiters.append(waiter)
        return waiter


def _iso(when: datetime | None) -> str | None:
    return None if when is None else format_timestamp(when)


def status_dict(status: MessageStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "peer": status.to,
        "state": status.state,
        "description": status.describe(),
        "delivered_nodes": status.delivered_nodes,
        "total_nodes": status.total_nodes,
        "reason": status.reason,
        "created_at": _iso(status.created_at),
        "nodes": [
            {"node": n.node, "state": n.state, "attempts": n.attempts, "reason": n.reason}
            for n in status.nodes
        ],
    }


class DataDirLock:
    """One agent per data directory: an exclusive C{flock} on C{agent.lock}, held while up."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "agent.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AgentError(
                f"another sixchat agent is already running on {os.path.dirname(self.path)}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@implementer(ISessionObserver)
class _SessionEvents:
    """Incoming side of every session, ours or the peer's: store, receipt, events."""

    def __init__(self, agent: UserAgentService) -> None:
        self.agent = agent

    def sessionStarted(self, session: Session) -> None:
        self.agent._sessionStarted(session)

    def messageReceived(self, session: Session, message: Message) -> Any:
        return self.agent._messageReceived(session, message)

    def stanzaReceived(self, session: Session, stanza: Any) -> None:
        if isinstance(stanza, Typing):
            self.agent._emit({"type": "typing", "peer": session.peer, "state": stanza.state})

    def sessionEnded(self, session: Session, reason: Failure) -> None:
        self.agent._sessionEnded(session, reason)


@implementer(IAgentEvents)
class _LogEvents:
    """The agent's log: sessions are logged by the protocol; messages and deliveries here."""

    def agentEvent(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "message":
            log.info(
                "message {id} from {peer}: {body}",
                id=event["id"],
                peer=event["peer"],
                body=event["body"],
            )
        elif kind == "delivery" and event["state"] != "queued":
            log.info(
                "message {id} to {peer}: {state}",
                id=event["id"],
                peer=event["peer"],
                state=event["description"],
            )


class PeerDirectory:
    """
    Finds peers through the registry (lookup, cached briefly) and keeps C{watch}es on peers
    the outbox waits for, over one registry connection re-opened on demand.
    """

    def __init__(
        self,
        clock: Any,
        connect: Callable[[], defer.Deferred[Any]],
        on_presence: Callable[[str, Any], None],
    ) -> None:
        self.clock = clock
        self.connect = connect
        self.on_presence = on_presence
        self._client: Any = None
        self._connecting: _Shared | None = None
        self._cache: dict[str, tuple[float, Any]] = {}
        self.watched: set[str] = set()

    def _connection(self) -> defer.Deferred[Any]:
        if self._client is not None:
            return defer.succeed(self._client)
        if self._connecting is None:
            d = self.connect()

            def connected(client: Any) -> Any:
                self._client, self._connecting = client, None
                client.whenLost().addBoth(lambda _: self._lost(client))
                for identity in sorted(self.watched):  # a new connection has no watches
                    self._startWatch(client, identity)
                return client

            def failed(f: Failure) -> Failure:
                self._connecting = None
                return f

            self._connecting = _Shared(d.addCallbacks(connected, failed))
        return self._connecting.wait()

    def _startWatch(self, client: Any, identity: str) -> None:
        client.watch(identity, lambda record: self._presence(identity, record)).addErrback(
            lambda f: log.debug("watch {peer}: {f}", peer=identity, f=f.getErrorMessage())
        )

    def _lost(self, client: Any) -> None:
        if self._client is client:
            self._client = None
            self._cache.clear()

    def _presence(self, identity: str, record: Any) -> None:
        self._cache[normalize_identity(identity)] = (self.clock.seconds(), record)
        self.on_presence(identity, record)

    def lookup(self, identity: str) -> defer.Deferred[Any]:
        key = normalize_identity(identity)
        cached = self._cache.get(key)
        if cached is not None and (
            key in self.watched or self.clock.seconds() - cached[0] < RECORD_TTL
        ):
            return defer.succeed(cached[1])

        def remember(record: Any) -> Any:
            self._cache[key] = (self.clock.seconds(), record)
            return record

        return self._connection().addCallback(lambda c: c.lookup(identity)).addCallback(remember)

    def watch(self, identity: str) -> None:
        key = normalize_identity(identity)
        if key in self.watched:
            return
        self.watched.add(key)
        if self._client is not None:
            self._startWatch(self._client, identity)
        else:  # the new connection starts a watch for everything in self.watched
            self._connection().addErrback(
                lambda f: log.debug("registry unreachable: {f}", f=f.getErrorMessage())
            )

    def unwatch(self, identity: str) -> None:
        key = normalize_identity(identity)
        if key not in self.watched:
            return
        self.watched.discard(key)
        self._cache.pop(key, None)
        if self._client is not None:
            self._client.unwatch(identity).addErrback(lambda f: None)

    def close(self) -> defer.Deferred[Any]:
        client, self._client = self._client, None
        if client is not None:
            return defer.maybeDeferred(client.close).addErrback(lambda f: None)
        return defer.succeed(None)


@implementer(IUserAgent)
class UserAgentService(service.MultiService):
    """
    A complete user agent. Compose it into any Twisted application::

        agent = UserAgentService(reactor, config, data_dir, registry="irp.example.com")
        agent.setServiceParent(application)
        d = agent.send("bob@example.com", "hi")  # fires once stored
    """

    def __init__(
        self,
        reactor: Any,
        config: PeerConfig,
        data_dir: str,
        *,
        listen: str = DEFAULT_LISTEN,
        registry: str | None = None,
        registry_anchors: Sequence[Any] | None = None,
        node: str | None = None,
        advertise: Sequence[tuple[str, int | None]] = (),
        register_expires: int = 300,
        pin_policy: str = "warn",
        message_ttl: timedelta = DEFAULT_TTL,
        control: bool = True,
        directory: Any = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        rand: Callable[[], float] = random.random,
        clock: Any = None,
        crl_refresh: float = DEFAULT_CRL_REFRESH,
        crl_fetch: Callable[[], defer.Deferred[list[Any]]] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        #: Time for the outbox (retries, expiry, waits): the reactor unless a test gives a
        #: C{task.Clock}; sockets and threads always use the reactor.
        self.clock: Any = clock or reactor
        self.identity = config.identities[0]
        self.name_ = self.identity.names[0]
        self.data_dir = data_dir
        self.node = node or default_node()
        self.message_ttl = message_ttl
        self.control_enabled = control
        self.rand = rand
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.lock = DataDirLock(data_dir)
        self.store = MessageStore(os.path.join(data_dir, "messages.sqlite"), reactor)
        config.pins = PinPolicy(self.store.pins, pin_policy)
        self.config = config
        self.pin_policy = pin_policy
        self.events = _SessionEvents(self)
        self.listener = PeerListenerService(
            reactor,
            config,
            listen,
            observer=self.events,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
        )
        self.listener.factory.paused = True  # until the store is open (pins, messages)
        self.listener.setServiceParent(self)
        self.registry = registry
        self.registry_anchors = list(registry_anchors) if registry_anchors else None
        #: Where peers are looked up: a registry (L{PeerDirectory}) or anything with its
        #: C{lookup}/C{watch}/C{unwatch}/C{close} (tests, static deployments).
        self.directory: Any = directory
        if directory is not None and hasattr(directory, "on_presence"):
            directory.on_presence = self._presence
        self.keeper: Any = None
        if registry is not None:
            from sixchat.irp.keeper import AutoContacts, RegistrationKeeper

            self.directory = PeerDirectory(reactor, self._connectRegistry, self._presence)
            contacts = AutoContacts(reactor, self._listeningAddress, advertise)
            self.keeper = RegistrationKeeper(
                reactor,
                self._connectRegistry,
                self.node,
                contacts,
                expires=register_expires,
                registry_name=f"registry {registry}" if registry != "auto" else "the registry",
            )
        #: Revocation: CRLs kept in the data directory, fetched from the registry (or from
        #: C{crl_fetch}: tests, embedders) every C{crl_refresh} seconds (0: never).
        if crl_fetch is None and registry is not None:
            crl_fetch = self._fetchRegistryCRLs
        self.crls = CRLUpdater(
            reactor,
            self.clock,
            config.trust,
            os.path.join(data_dir, "crls"),
            crl_fetch,
            own_chain=self.identity.chain_der,
            on_new=self._crlsTaken,
            refresh=crl_refresh,
            rand=rand,
            source="the registry" if registry in (None, "auto") else f"registry {registry}",
        )
        self._observers: list[IAgentEvents] = [_LogEvents()]
        #: Every established session, both roles, from sessionStarted to sessionEnded.
        self._live: set[Session] = set()
        #: Sessions we ended because a CRL revoked the peer: nothing more is stored from them.
        self._revoked: set[Session] = set()
        self._sessions: dict[tuple[str, str], Session] = {}
        self._incoming: dict[str, set[Session]] = {}
        self._dialing: dict[tuple[str, str], _Shared] = {}
        self._delivering: set[str] = set()
        self._again: set[str] = set()
        self._waiters: dict[str, list[tuple[defer.Deferred[Any], IDelayedCall]]] = {}
        self._stopping = False
        self._tick_call: IDelayedCall | None = None
        self._last_expire = 0.0
        self._control_port: Any = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    # lifecycle -----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self.lock.acquire()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.lock._fd is None:
            self.lock.acquire()
        self.crls.load()  # before any session: revocation survives a restart
        super().startService()
        d = self.store.open()
        d.addCallback(self._opened)
        d.addErrback(self._startFailed)

    def _startFailed(self, failure: Failure) -> None:
        log.failure("the user agent could not start", failure)
        if not self.ready.called:
            self.ready.errback(failure)

    @defer.inlineCallbacks
    def _opened(self, _: object) -> Any:
        self.listener.factory.paused = False
        if self.control_enabled:
            from sixchat.agent.control import listen_control

            self._control_port = yield listen_control(self.reactor, self.data_dir, self)
        if self.keeper is not None:
            self.keeper.setServiceParent(self)
            previous = self.keeper.on_state

            def state(new: str) -> None:
                if previous is not None:
                    previous(new)
                if new == "registered":
                    self.crls.registryReachable()

            self.keeper.on_state = state
        self.crls.start()
        log.info(
            "user agent {identity} (node {node}) ready; data in {dir}",
            identity=self.name_,
            node=self.node,
            dir=self.data_dir,
        )
        self._schedule(0)
        self.ready.callback(None)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self._stopping = True
        crls_stopped = self.crls.stop()
        for message_id in list(self._waiters):
            self._releaseWaiters(message_id, None)
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        sessions = list(self._sessions.values()) + [
            s for group in self._incoming.values() for s in group
        ]
        yield defer.DeferredList([s.close() for s in sessions], consumeErrors=True)
        if self._control_port is not None:
            yield self._control_port.stopListening()
            self._control_port = None
        yield super().stopService()
        if self.directory is not None:
            yield self.directory.close()
        yield crls_stopped  # no CRL file write outlives the lock
        if self.store.is_open:
            yield self.store.close()
        self.lock.release()

    def _connectRegistry(self) -> defer.Deferred[Any]:
        from sixchat.irp.client import connectRegistry

        return connectRegistry(
            self.reactor,
            self.registry,
            self.name_,
            anchors=self.registry_anchors,
            client_identity=self.identity,
        )

    def _fetchRegistryCRLs(self) -> defer.Deferred[list[Any]]:
        """irp-1 §4.5 over a short anonymous connection: it works even if we are revoked."""
        from sixchat.irp.client import connectRegistry

        d = connectRegistry(self.reactor, self.registry, self.name_, anchors=self.registry_anchors)

        def fetch(client: Any) -> defer.Deferred[list[Any]]:
            def close(result: Any) -> Any:
                client.close()
                return result

            return client.crl().addBoth(close)

        return d.addCallback(fetch)

    # revocation ----------------------------------------------------------------------------

    def _crlsTaken(self, crls: list[Any]) -> None:
        """New CRLs are in the trust store: end every session whose peer they revoke."""
        for session in list(self._live):
            self._endIfRevoked(session, crls)

    def _endIfRevoked(self, session: Session, crls: Sequence[Any]) -> bool:
        if session.ended or session in self._revoked:
            return session in self._revoked
        chain = session.result.peer.chain
        hit = revoked_on_path(chain, crls)
        if hit is None:
            return False
        depth, crl = hit
        self._revoked.add(session)
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
        self._emit(
            {
                "type": "revoked",
                "peer": session.result.peer_name,
                "serial": serial,
                "depth": depth,
                "issuer": crl.issuer.rfc4514_string(),
            }
        )
        # A SEALED certificate_revoked alert (§9.1), then the connection is dropped: from
        # now on nothing is read from it or sent on it.
        session.abort(CertificateRevoked(f"{what} revoked"))
        return True

    def _listeningAddress(self) -> Any:
        port = self.listener.port
        return port.getHost() if port is not None else None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    # events --------------------------------------------------------------------------------

    def addObserver(self, observer: IAgentEvents) -> None:
        self._observers.append(observer)

    def removeObserver(self, observer: IAgentEvents) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _emit(self, event: dict[str, Any]) -> None:
        for observer in list(self._observers):
            try:
                observer.agentEvent(event)
            except Exception:
                log.failure("event observer failed")

    # receiving -----------------------------------------------------------------------------

    def _sessionStarted(self, session: Session) -> None:
        result = session.result
        changed = self.crls.changed_at
        if changed is not None and self.clock.seconds() - changed <= self.handshake_timeout + 1:
            # Its chain was validated before a CRL that came in meanwhile: check it again.
            if self._endIfRevoked(session, self.config.trust.crls):
                return
        self._live.add(session)
        if session.connection.role == "responder":
            self._incoming.setdefault(normalize_identity(result.peer_name), set()).add(session)
        self.store.touch_contact(result.peer_name, self.now()).addErrback(lambda f: None)
        if result.pin_status == "changed":
            self._emit(
                {
                    "type": "key_change",
                    "peer": result.peer_name,
                    "fingerprint": result.peer.spki_sha256.hex(),
                    "policy": self.pin_policy,
                    "action": "accepted" if self.pin_policy == "accept" else "warned",
                }
            )
        self._emit(
            {
                "type": "session",
                "peer": result.peer_name,
                "state": "open",
                "role": session.connection.role,
                "suite": result.suite,
                "group": result.group,
            }
        )
        # A peer that reaches us may be one we owe messages: try now.
        self.kick(result.peer_name)

    def _sessionEnded(self, session: Session, reason: Failure) -> None:
        self._live.discard(session)
        self._revoked.discard(session)
        peer = normalize_identity(session.result.peer_name)
        self._incoming.get(peer, set()).discard(session)
        for key, known in list(self._sessions.items()):
            if known is session:
                del self._sessions[key]
        self._emit({"type": "session", "peer": session.result.peer_name, "state": "closed"})

    def _messageReceived(self, session: Session, message: Message) -> defer.Deferred[None]:
        sender = session.result.peer_name
        if session in self._revoked:
            # Arrived with the records that completed the handshake: not stored, and no
            # receipt (the connection is failed), so the sender keeps it as undelivered.
            log.info("dropped message {id} from {peer}: revoked", id=message.id, peer=sender)
            return defer.succeed(None)
        d = self.store.store_incoming(sender, message, self.now())

        def stored(new: bool) -> None:
            if new:
                self._emit(
                    {
                        "type": "message",
                        "id": message.id,
                        "peer": sender,
                        "body": message.body,
                        "ts": message.ts,
                        "thread": message.thread,
                        "reply_to": message.reply_to,
                        "received_at": format_timestamp(self.now()),
                    }
                )
            # The receipt goes out when this returns: the row is committed (§8.2).

        return d.addCallback(stored)

    # sending: the API ----------------------------------------------------------------------

    def send(
        self, to: str, text: str, thread: str | None = None, reply_to: str | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        if not is_valid_identity(to):
            return defer.fail(AgentError(f"{to!r} is not an identity (local@domain)"))
        if not self.store.is_open:
            return defer.fail(AgentError("the agent is still starting"))

        @defer.inlineCallbacks
        def queue() -> Any:
            ids = []
            for part in split_text(text):
                queued = yield self.store.queue_outgoing(
                    to, part, self.now(), thread=thread, reply_to=reply_to
                )
                ids.append(queued.id)
                self._emit(self._deliveryEvent(queued.status))
            self.kick(to)
            return {"id": ids[-1], "ids": ids, "peer": to, "state": "queued"}

        return queue()

    def waitDelivered(self, message_id: str, timeout: float) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def check(status: MessageStatus | None) -> None:
            if status is None:
                d.errback(AgentError(f"no message {message_id}"))
            elif status.state in ("delivered", "expired", "failed") or timeout <= 0:
                d.callback(status_dict(status))
            else:
                timer = self.clock.callLater(timeout, self._waitTimedOut, message_id, d)
                self._waiters.setdefault(message_id, []).append((d, timer))

        self.store.status(message_id).addCallbacks(check, d.errback)
        return d

    def _waitTimedOut(self, message_id: str, d: defer.Deferred[Any]) -> None:
        waiters = self._waiters.get(message_id, [])
        for entry in list(waiters):
            if entry[0] is d:
                waiters.remove(entry)
                self.status_of(message_id).chainDeferred(d)

    def _releaseWaiters(self, message_id: str, status: dict[str, Any] | None) -> None:
        for d, timer in self._waiters.pop(message_id, []):
            if timer.active():
                timer.cancel()
            if status is None:
                d.errback(AgentError("the agent stopped"))
            else:
                d.callback(status)

    def status_of(self, message_id: str) -> defer.Deferred[dict[str, Any]]:
        def convert(status: MessageStatus | None) -> dict[str, Any]:
            if status is None:
                raise AgentError(f"no message {message_id}")
            return status_dict(status)

        return self.store.status(message_id).addCallback(convert)

    def history(
        self, peer: str | None, since: str | None, limit: int
    ) -> defer.Deferred[list[dict[str, Any]]]:
        when = parse_timestamp(since) if since else None

        def convert(entries: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "direction": e.direction,
                    "peer": e.peer_display or e.peer,
                    "id": e.id,
                    "ts": e.ts,
                    "body": e.body,
                    "thread": e.thread,
                    "reply_to": e.reply_to,
                    "at": _iso(e.at),
                    "read": e.read,
                    "state": e.state,
                    "delivered_nodes": e.delivered_nodes,
                    "total_nodes": e.total_nodes,
                }
                for e in entries
            ]

        d = self.store.history(peer, when, limit).addCallback(convert)
        if peer is not None:
            d.addCallback(lambda r: self.store.mark_read(peer).addCallback(lambda _: r))
        return d

    def conversations(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.store.conversations().addCallback(
            lambda rows: [
                {
                    "peer": c.display or c.peer,
                    "last_ts": _iso(c.last_at),
                    "last_body": c.last_body,
                    "unread": c.unread,
                    "messages": c.messages,
                }
                for c in rows
            ]
        )

    def contacts(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.store.contacts().addCallback(
            lambda rows: [
                {
                    "identity": c.display or c.identity,
                    "first_seen": _iso(c.first_seen),
                    "last_seen": _iso(c.last_seen),
                    "keys": self._keys(c.identity),
                    "key_change_pending": c.key_change_pending,
                }
                for c in rows
            ]
        )

    @defer.inlineCallbacks
    def status(self) -> Any:
        counts = yield self.store.outbox_counts()
        port = self._listeningAddress()
        keeper = self.keeper
        sessions = [
            {
                "peer": s.result.peer_name,
                "node": node,
                "direction": "outgoing",
                "suite": s.result.suite,
                "group": s.result.group,
            }
            for (_, node), s in self._sessions.items()
        ] + [
            {
                "peer": s.result.peer_name,
                "node": None,
                "direction": "incoming",
                "suite": s.result.suite,
                "group": s.result.group,
            }
            for group in self._incoming.values()
            for s in group
        ]
        return {
            "identity": self.name_,
            "node": self.node,
            "data_dir": self.data_dir,
            "listening": None if port is None else f"{_hostport(port.host, port.port)}",
            "registry": None
            if keeper is None
            else {
                "registry": self.registry,
                "state": keeper.state,
                "expires": keeper.granted,
            },
            "advertised": []
            if keeper is None
            else [_hostport(c.host, c.port) for c in keeper.contacts],
            "sessions": sessions,
            "outbox": counts,
            "revocation": self.crls.status(),
        }

    def trust(self, identity: str, accept_new_key: bool) -> defer.Deferred[dict[str, Any]]:
        if not accept_new_key:
            return defer.succeed(
                {"identity": identity, "keys": self._keys(identity), "accepted": []}
            )

        def accepted(spkis: list[bytes]) -> dict[str, Any]:
            self.kick(identity)
            return {
                "identity": identity,
                "keys": self._keys(identity),
                "accepted": [s.hex() for s in spkis],
            }

        return self.store.pins.accept_key(identity).addCallback(accepted)

    def _keys(self, identity: str) -> list[str]:
        """The contact's pinned keys: SPKI SHA-256 fingerprints in hex, sorted."""
        return sorted(spki.hex() for spki in self.store.pins.known(identity))

    def typing(self, to: str, state: str) -> defer.Deferred[dict[str, Any]]:
        if state not in TYPING_STATES:
            return defer.fail(AgentError("typing state is composing or paused"))
        session = self._anySession(to)
        if session is None:
            return defer.succeed({"sent": False})
        try:
            session.sendTyping(state)
        except Exception:
            return defer.succeed({"sent": False})
        return defer.succeed({"sent": True})

    def _anySession(self, peer: str) -> Session | None:
        key = normalize_identity(peer)
        for (p, _), session in self._sessions.items():
            if p == key and not session.ended:
                return session
        for session in self._incoming.get(key, ()):
            if not session.ended:
                return session
        return None

    # the outbox ----------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self.running or self._stopping:
            return
        if self._tick_call is not None and self._tick_call.active():
            if self._tick_call.getTime() <= self.clock.seconds() + delay:
                return
            self._tick_call.cancel()
        self._tick_call = self.clock.callLater(delay, self._tick)

    @defer.inlineCallbacks
    def _tick(self) -> Any:
        self._tick_call = None
        if self._stopping or not self.store.is_open:
            return
        try:
            now = self.now()
            if self.clock.seconds() - self._last_expire >= EXPIRE_EVERY:
                self._last_expire = self.clock.seconds()
                expired = yield self.store.expire(now, self.message_ttl)
                for status in expired:
                    self._statusChanged(status)
            due = yield self.store.pending(now)
            for peer in sorted({m.to_display for m in due}):
                self.kick(peer)
        except Exception:
            if not self._stopping:  # a tick in flight while stopping meets a closed store
                log.failure("outbox tick failed")
        finally:
            self._schedule(TICK)

    def kick(self, peer: str) -> None:
        """Deliver what is owed to C{peer} now (coalesced per peer)."""
        if not self.running or self._stopping or not self.store.is_open:
            return
        key = normalize_identity(peer)
        if key in self._delivering:
            self._again.add(key)
            return
        self._delivering.add(key)
        d = defer.ensureDeferred(self._deliverPeer(peer))
        d.addErrback(
            lambda f: (
                None if self._stopping else log.failure("delivery to {peer} failed", f, peer=peer)
            )
        )

        def done(_: object) -> None:
            self._delivering.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.kick(peer)

        d.addBoth(done)

    def _presence(self, peer: str, record: Any) -> None:
        self._emit(
            {
                "type": "presence",
                "peer": peer,
                "nodes": [n.name for n in getattr(record, "nodes", [])],
            }
        )
        if getattr(record, "nodes", None):
            self.kick(peer)

    async def _deliverPeer(self, peer: str) -> None:
        pending: list[OutgoingMessage] = await self.store.pending_for(peer)
        if not pending:
            if self.directory is not None:
                self.directory.unwatch(peer)
            return
        if self.directory is None:
            return  # no registry: nowhere to look the peer up; incoming sessions still work
        self.directory.watch(peer)  # be told at once when the peer's nodes change
        try:
            record = await self.directory.lookup(peer)
        except Exception as e:
            log.debug("lookup of {peer} failed: {e}", peer=peer, e=e)
            return
        # First contact: every node's key in this record is the contact's (one key per
        # device), not a key change of the node looked at before it.
        first_contact = not self.store.pins.known(peer)
        nodes = [n for n in record.nodes if self._registryKeyUsable(peer, n.cert, first_contact)]
        if not nodes:
            return  # offline: the watch will kick us when a node registers
        names = [n.name for n in nodes]
        # All at once: the store commits them together (group commit), in this order.
        await defer.gatherResults(
            [
                self.store.add_targets(message.id, names)
                for message in pending
                if message.state in ("queued", "sent", "delivered")
            ]
        )
        now = self.now()
        due: list[OutgoingMessage] = await self.store.pending_for(peer, now)
        work = []
        for node in nodes:
            owed = [m for m in due if node.name in m.due_nodes(now)]
            if owed:
                work.append(defer.ensureDeferred(self._deliverNode(peer, node, owed)))
        if work:
            await defer.DeferredList(work, consumeErrors=True)

    def _registryKeyUsable(self, peer: str, cert_der: bytes, first_contact: bool = False) -> bool:
        """
        §9.3/§11.15: keys of certificates the registry returns join the contact's pin set —
        unless the contact is known and the key is new, which is a key change handled by the
        pin policy (with C{refuse}, that node is not used until the user trusts the key).
        C{first_contact}: the contact had no pins before this registry record, so all of its
        nodes' keys are accepted as new.
        """
        from cryptography import x509

        try:
            spki = spki_sha256(x509.load_der_x509_certificate(cert_der).public_key())  # type: ignore[arg-type]
        except ValueError:
            return False
        pins = self.config.pins
        assert isinstance(pins, PinPolicy)
        status = pins.check(peer, spki)
        if status == "known":
            return True
        if status == "new" or first_contact:
            pins.add(peer, spki)
            return True
        action = {"accept": "accepted", "warn": "warned", "refuse": "refused"}[pins.policy]
        if pins.policy != "refuse":
            pins.add(peer, spki)
        if spki not in self.store.pins.pending_changes(peer):
            self.store.pins.note_key_change(peer, spki, self.now()).addErrback(lambda f: None)
            self._emit(
                {
                    "type": "key_change",
                    "peer": peer,
                    "fingerprint": spki.hex(),
                    "policy": pins.policy,
                    "action": action,
                }
            )
            (log.warn if pins.policy != "accept" else log.info)(
                "KEY CHANGE: the registry returned a new key for {peer} ({fp}); {action}",
                peer=peer,
                fp=spki.hex(),
                action=action,
            )
        return pins.policy != "refuse"

    def _retryDelay(self, attempts: int) -> float:
        return min(RETRY_MAX, RETRY_BASE * (2 ** min(attempts, 16))) * (0.5 + self.rand() / 2)

    async def _deliverNode(self, peer: str, node: Any, owed: list[OutgoingMessage]) -> None:
        try:
            session = await self._sessionFor(peer, node)
        except Exception as e:
            log.info("cannot reach {peer} node {node}: {why}", peer=peer, node=node.name, why=e)
            now = self.now()
            for message in owed:
                entry = next(n for n in message.nodes if n.node == node.name)
                delay = self._retryDelay(entry.attempts)
                await self.store.mark_attempt(
                    message.id, node.name, now, now + timedelta(seconds=delay), sent=False
                )
            return
        # A window of unreceipted messages per session: a long outbox never floods the
        # transport (both peers writing faster than the other reads would stall both, since
        # each stops reading while its write buffer is full).
        window = defer.DeferredSemaphore(SEND_WINDOW)
        sends = []
        for message in owed:
            await window.acquire()
            if session.ended:
                window.release()
                break  # the rest stays owed; the next tick retries on a new session
            now = self.now()
            entry = next(n for n in message.nodes if n.node == node.name)
            retry_at = now + timedelta(seconds=self._retryDelay(entry.attempts))
            # Not awaited: the store records the attempt in order, before the receipt's
            # mark_delivered; meanwhile the message is already on its way. A crash before
            # the record leaves the message queued: it is sent again and the peer, which
            # keys messages by id, stores it once (§8.2).
            self.store.mark_attempt(message.id, node.name, now, retry_at).addCallbacks(
                self._attempted, self._attemptNotRecorded, errbackArgs=(message.id,)
            )
            d: defer.Deferred[Any] = session.send(message.stanza)
            d.addBoth(_released, window)
            d.addCallbacks(
                self._receipted,
                self._notReceipted,
                callbackArgs=(message.id, node.name),
                errbackArgs=(message.id, node.name),
            )
            sends.append(d)
        await defer.DeferredList(sends, consumeErrors=True)

    def _attempted(self, status: MessageStatus | None) -> None:
        if status is not None:
            self._statusChanged(status)

    def _attemptNotRecorded(self, failure: Failure, message_id: str) -> None:
        if not self._stopping:
            log.failure("could not record the attempt for {id}", failure, id=message_id)

    def _receipted(self, receipt: Any, message_id: str, node: str) -> defer.Deferred[None]:
        return self.store.mark_delivered(message_id, node, self.now()).addCallback(
            lambda status: self._statusChanged(status) if status else None
        )

    def _notReceipted(self, failure: Failure, message_id: str, node: str) -> Any:
        if failure.check(StanzaRefused):
            reason = failure.value.reason  # type: ignore[union-attr]
            return self.store.mark_failed(message_id, node, reason, self.now()).addCallback(
                lambda status: self._statusChanged(status) if status else None
            )
        if failure.check(SessionLost, HandshakeFailed):
            self._schedule(0)  # the next tick re-sends when the entry is due
            return None
        return failure

    def _statusChanged(self, status: MessageStatus) -> None:
        self._emit(self._deliveryEvent(status))
        if status.state in ("delivered", "expired", "failed"):
            self._releaseWaiters(status.id, status_dict(status))

    @staticmethod
    def _deliveryEvent(status: MessageStatus) -> dict[str, Any]:
        event = status_dict(status)
        event["type"] = "delivery"
        return event

    async def _sessionFor(self, peer: str, node: Any) -> Session:
        key = (normalize_identity(peer), node.name)
        existing = self._sessions.get(key)
        if existing is not None and not existing.ended and existing.connection.state == "open":
            return existing
        dialing = self._dialing.get(key)
        if dialing is None:
            d = self._dial(peer, node)
            dialing = self._dialing[key] = _Shared(d)
            d.addBoth(lambda r: (self._dialing.pop(key, None), r)[1])
        session: Session = await dialing.wait()
        return session

    def _dial(self, peer: str, node: Any) -> defer.Deferred[Session]:
        contacts = [(c.host, c.port) for c in node.contacts]

        def attempt(host: str, port: int) -> defer.Deferred[Session]:
            cls = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
            endpoint = cls(self.reactor, host, port, timeout=self.handshake_timeout)
            return connectPeer(
                self.reactor,
                endpoint,
                self.identity,
                config=self.config,
                to=peer,
                observer=self.events,
                responder_cert=node.cert,
                handshake_timeout=self.handshake_timeout,
                idle_timeout=self.idle_timeout,
            )

        def check(session: Session) -> Session:
            if session.result.peer.leaf_der != node.cert:
                session.close()
                raise AgentError(
                    f"{peer} node {node.name} presented another certificate than the one it "
                    "registered"
                )
            self._sessions[(normalize_identity(peer), node.name)] = session
            return session

        return happy_eyeballs(self.clock, contacts, attempt).addCallback(check)


def _released(result: Any, window: defer.DeferredSemaphore) -> Any:
    """Pass C{result} through after giving the send window's slot back."""
    window.release()
    return result


def default_node() -> str:
    """The host name's first label, made a valid node name (irp-1 §3.1)."""
    import re
    import socket

    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64] or "node"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
