"""
The user agent as one Twisted service: it composes the listener, the registration keeper,
the message store, the outbox (L{sixchat.agent.outbox}), the session table
(L{sixchat.agent.sessions}), the directory of peers (L{sixchat.agent.directory}), CRL updates
and the local control endpoint — and offers the small Python API (L{IUserAgent}) that the
control interface and embedding applications use.

Receiving: a message is committed to the store before its receipt is sent; duplicates are
receipted again and not stored twice (§8.2). Sending: see L{sixchat.agent.outbox}.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent import events
from sixchat.agent.addresses import AddressSource, AddressWatch, thread_source
from sixchat.agent.crls import DEFAULT_REFRESH as DEFAULT_CRL_REFRESH
from sixchat.agent.crls import CRLUpdater
from sixchat.agent.datadir import DataDirLock, prepare_data_dir
from sixchat.agent.directory import unknown_reason
from sixchat.agent.errors import AgentError, MessageFinal, UnknownIdentity, UnknownMessage
from sixchat.agent.files.disk import FilesDir
from sixchat.agent.files.own import OwnNodeFiles
from sixchat.agent.files.receiving import FileInbox
from sixchat.agent.files.sending import FileOutbox
from sixchat.agent.inbox import Inbox
from sixchat.agent.interfaces import IAgentEvents, IDirectory, IUserAgent
from sixchat.agent.outbox import DEFAULT_TTL, OutboxScheduler
from sixchat.agent.ownnodes import OwnNodeSync, merged_handler
from sixchat.agent.pinning import KeyChanges, RegistryKeyPins
from sixchat.agent.queries import AgentQueries
from sixchat.agent.reachability import Reachability
from sixchat.agent.sessions import SessionTable
from sixchat.agent.store import MessageStatus, MessageStore, OutgoingMessage, encryption
from sixchat.agent.store.files import TransferStore
from sixchat.agent.store.sync import SyncStore
from sixchat.agent.views import status_dict
from sixchat.agent.waiters import DeliveryWaiters
from sixchat.filetransfer.machine import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_FILE_SIZE, FileLimits
from sixchat.handshake import PeerConfig
from sixchat.identity import is_valid_identity, normalize_identity, same_identity
from sixchat.irp.messages import default_node
from sixchat.listener import DEFAULT_LISTEN, PeerListenerService
from sixchat.protocol import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE, split_text
from sixchat.stanzas import TYPING_STATES
from sixchat.trust import PinPolicy

if TYPE_CHECKING:
    from sixchat.agent.registry import RegistryLink
    from sixchat.irp.messages import Record

#: AgentError and DEFAULT_TTL are defined elsewhere and stay importable from here.
__all__ = ["DEFAULT_TTL", "RECIPIENT_CHECK", "AgentError", "UserAgentService"]

log = Logger()

#: How long C{send} waits for the directory to say whether the recipient exists before it
#: queues the message anyway (a slow or unreachable registry never blocks sending).
RECIPIENT_CHECK = 5.0


@implementer(IUserAgent)
class UserAgentService(AgentQueries, service.MultiService):
    """
    A complete user agent. Compose it into any Twisted application::

        agent = UserAgentService(reactor, config, data_dir, registry="irp.example.com")
        agent.setServiceParent(application)
        d = agent.send("bob@example.com", "hi")  # fires once stored

    Constructing it only records its parts: the data directory is created and locked, and
    the store opened, when the service starts. C{config} is copied, not changed.

    At rest (docs/security.md): C{store_encryption} is C{auto} (the default: a new store is
    encrypted when C{store_password}, the identity's PKCS#12 password, is given), C{on}
    (the store must be encrypted) or C{off} (new stores plain); an existing store opens as
    it is (L{sixchat.agent.store.encryption.unlock}).
    """

    def __init__(
        self,
        reactor: Any,
        config: PeerConfig,
        data_dir: str,
        *,
        listen: str = DEFAULT_LISTEN,
        registry: str | None = None,
        registry_anchors: Sequence[x509.Certificate] | None = None,
        node: str | None = None,
        advertise: Sequence[tuple[str, int | None]] = (),
        register_expires: int = 300,
        pin_policy: str = "warn",
        message_ttl: timedelta = DEFAULT_TTL,
        control: bool = True,
        directory: IDirectory | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        keepalive: float | None = KEEPALIVE,
        address_poll: float | None = None,
        address_source: AddressSource | None = None,
        rand: Callable[[], float] = random.random,
        clock: IReactorTime | None = None,
        crl_refresh: float = DEFAULT_CRL_REFRESH,
        crl_fetch: Callable[[], defer.Deferred[list[x509.CertificateRevocationList]]] | None = None,
        store_password: bytes | None = None,
        store_encryption: str = "auto",
        files_dir: str | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        max_concurrent_files: int = DEFAULT_MAX_CONCURRENT,
        own_sync: bool = True,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        #: Time for the outbox (retries, expiry, waits): the reactor unless a test gives a
        #: C{task.Clock}; sockets and threads always use the reactor.
        self.clock: IReactorTime = clock or reactor
        self.identity = config.identities[0]
        self.name_ = self.identity.names[0]
        self.data_dir = data_dir
        self.node = node or default_node()
        self.message_ttl = message_ttl
        self.control_enabled = control
        self.pin_policy = pin_policy
        self.registry = registry
        self.registry_anchors = list(registry_anchors) if registry_anchors else None
        self.lock = DataDirLock(data_dir)
        # At rest: encryption.unlock picks the key (or none) on the store's thread.
        self.store = MessageStore(
            os.path.join(data_dir, "messages.sqlite"),
            reactor,
            functools.partial(
                encryption.unlock,
                data_dir,
                store_password,
                store_encryption,
                note=lambda text: reactor.callFromThread(log.warn, "{text}", text=text),
            ),
        )
        policy = PinPolicy(self.store.pins, pin_policy, own=self.name_)
        self.config = dataclasses.replace(
            config, pins=policy, file_transfer=True, own_sync=own_sync
        )
        self._events = events.EventFanout(events.LogEvents())
        #: The registry's parts (directory, keeper, CRL source), when there is a registry.
        self.link: RegistryLink | None = None
        if registry is not None:
            from sixchat.agent.registry import RegistryLink

            self.link = RegistryLink(reactor, registry, self.identity, registry_anchors)
            directory = self.link.directory(self._presence)
            if crl_fetch is None:
                crl_fetch = self.link.fetchCRLs
        elif directory is not None and hasattr(directory, "on_presence"):
            directory.on_presence = self._presence
        #: Where peers are looked up: the registry, or the given L{IDirectory}.
        self.directory = directory
        self.sessions = SessionTable(
            reactor,
            self.config,
            self._emit,
            clock=self.clock,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            keepalive=keepalive,
        )
        #: Revocation: CRLs kept in the data directory, fetched from the registry (or from
        #: C{crl_fetch}: tests, embedders) every C{crl_refresh} seconds (0: never).
        self.crls = CRLUpdater(
            reactor,
            self.clock,
            self.config.trust,
            os.path.join(data_dir, "crls"),
            crl_fetch,
            own_chain=self.identity.chain_der,
            on_new=self.sessions.crlsTaken,
            refresh=crl_refresh,
            rand=rand,
            source="the registry" if self.link is None else self.link.source,
        )
        #: Key changes (§9.3), from the registry and from handshakes in both roles.
        self.key_changes = KeyChanges(policy, self.store.pins, self.now, self._emit)
        policy.on_refused = self.key_changes.refused
        pins = RegistryKeyPins(policy, self.store.pins, self.key_changes)
        #: Peers whose presence a client follows (chat), with how many follow each.
        self._following: dict[str, int] = {}
        #: File transfer (§8.7): where incoming files land, and both sides' drivers.
        self.files_dir = FilesDir(files_dir or os.path.join(data_dir, "files"))
        self.transfers = TransferStore(self.store)
        self.file_outbox = FileOutbox(reactor, self.transfers, self._emit, self.now)
        self.file_inbox = FileInbox(
            reactor,
            self.store,
            self.files_dir,
            FileLimits(max_file_size, max_concurrent_files),
            self._emit,
            self.now,
        )
        self.outbox = OutboxScheduler(
            self.clock,
            self.store,
            self.sessions,
            self.directory,
            self._statusChanged,
            message_ttl=message_ttl,
            rand=rand,
            usable_nodes=pins.usable_nodes,
            on_unknown=lambda peer, reason, ids: self._emit(
                events.unknown_recipient_event(peer, reason, ids, "queued")
            ),
            deliver=self.file_outbox.deliver,
        )
        self.outbox.keep_watching = lambda peer: (
            normalize_identity(peer) in self._following or same_identity(peer, self.name_)
        )
        #: Own-device sync with this identity's other nodes (L{sixchat.agent.ownnodes}).
        self.own_nodes: OwnNodeSync | None = None
        #: Files between our nodes (L{sixchat.agent.files.own}), with own-device sync.
        self.own_files: OwnNodeFiles | None = None
        if own_sync:
            self.own_nodes = OwnNodeSync(
                self.clock, self.name_, self.node, SyncStore(self.store), self.sessions,
                self.directory, self.now,
                on_applied=merged_handler(
                    self._emit, self.outbox, SyncStore(self.store),
                    lambda applied: self.own_files.synced(applied) if self.own_files else None,
                ),
                on_unlinked=lambda node: self.outbox.schedule(0),  # its messages are ours now
            )  # fmt: skip
            self.own_nodes.is_us = self._isUs
            self.own_files = OwnNodeFiles(
                reactor, data_dir, self.own_nodes, self.transfers, self.file_outbox,
                self.file_inbox, self.outbox,
            )  # fmt: skip
            self.outbox.elsewhere = self.own_files.elsewhere
        self.inbox = Inbox(
            self.sessions, self.crls, self.store, self._emit, self.outbox.kick, self.now,
            self.key_changes,
            files=(self.file_inbox, self.file_outbox),
            sync=self.own_nodes,
        )  # fmt: skip
        self.sessions.observer = self.inbox
        self.listener = PeerListenerService(
            reactor,
            self.config,
            listen,
            observer=self.inbox,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            keepalive=keepalive,
        )
        self.listener.hold()  # until the store is open (pins, messages)
        self.listener.on_fatal = self._fatal  # a bind that fails once running
        self.listener.setServiceParent(self)
        #: The L{RegistrationKeeper} with a registry (typed loosely: callers read its state).
        self.keeper: Any = None
        if self.link is not None:
            self.keeper = self.link.keeper(
                self.node, self._listeningAddress, advertise, register_expires
            )
        #: What changes of our own network move (addresses, the registry reachable again).
        self.reachability = Reachability(
            self.sessions, self.directory, self.keeper, self.outbox, self.crls.registryReachable
        )
        #: Mobility: the host's addresses looked at every C{address_poll} seconds (None or
        #: 0: never), from C{address_source} (default: the kernel's list, in a thread).
        self.addresses: AddressWatch | None = None
        if address_poll:
            self.addresses = AddressWatch(
                self.clock, address_source or thread_source(reactor),
                self.reachability.addressesChanged, address_poll,
            )  # fmt: skip
        self._waiters = DeliveryWaiters(self.clock, self.status_of)
        #: Called with one line when the agent cannot go on (another agent holds our node at
        #: the registry); the twistd plugin prints it and exits 1. Default: log, stop.
        self.on_fatal: Callable[[str], None] | None = None
        self._control_port: IListeningPort | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()

    # lifecycle -----------------------------------------------------------------------------

    def _lockDataDir(self) -> None:
        if not self.lock.held:
            prepare_data_dir(self.data_dir)
            self.lock.acquire()
            self.files_dir.prepare()
            if self.own_files is not None:
                self.own_files.prepare()

    def privilegedStartService(self) -> None:
        self._lockDataDir()
        super().privilegedStartService()

    def startService(self) -> None:
        self._lockDataDir()
        self.crls.load()  # before any session: revocation survives a restart
        super().startService()
        self.outbox.start()
        d = self.store.open()
        d.addCallback(self._opened)
        d.addErrback(self._startFailed)

    def _fatal(self, line: str) -> None:
        if self.on_fatal is not None:
            self.on_fatal(line)
        else:
            log.critical("{line}; stopping", line=line)
            self.stopService()

    def _startFailed(self, failure: Failure) -> None:
        import sqlite3

        from sixchat.errors import SixchatError

        # A damaged or foreign messages.sqlite, an unusable socket path, …: one line under
        # twistd (on_fatal); the traceback only for what no person can fix.
        if self.on_fatal is None or not failure.check(sqlite3.Error, OSError, SixchatError):
            log.failure("the user agent could not start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.on_fatal is not None:
            self.ready.addErrback(lambda _: None)  # said here; not again when collected
            self.on_fatal(
                f"cannot start on data directory {self.data_dir}: {failure.getErrorMessage()}"
            )

    @defer.inlineCallbacks
    def _opened(self, _: object) -> Any:
        self.listener.release()
        if self.control_enabled:
            from sixchat.agent.control.server import listen_control

            self._control_port = yield listen_control(self.reactor, self.data_dir, self)
        if self.keeper is not None:
            self.keeper.setServiceParent(self)
            previous = self.keeper.on_state

            def state(new: str) -> None:
                if previous is not None:
                    previous(new)
                self.reachability.keeperState(new)

            self.keeper.on_state = state
            self.keeper.on_conflict = self._fatal
        if self.addresses is not None:
            self.addresses.setServiceParent(self)
        self.crls.start()
        outgoing = yield self.transfers.outgoing_files()
        self.file_outbox.ids, self.file_outbox.held = outgoing.ids, outgoing.held
        self.file_outbox.holders = outgoing.holders
        if self.own_files is not None:
            self.own_files.start()
        log.info(
            "user agent {identity} (node {node}) ready; data in {dir} ({at_rest})",
            identity=self.name_,
            node=self.node,
            dir=self.data_dir,
            at_rest="store encrypted"
            if self.store.encrypted
            else "store NOT encrypted (docs/security.md: at rest)",
        )
        self.outbox.schedule(0)
        if self.own_nodes is not None:
            yield self.own_nodes.start()
        self.ready.callback(None)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.outbox.stop()
        if self.own_nodes is not None:
            self.own_nodes.stop()
        if self.own_files is not None:
            self.own_files.stop()
        crls_stopped = self.crls.stop()
        self._waiters.releaseAll()
        yield self.sessions.closeAll()
        yield self.file_inbox.stop()  # partial files closed, prefixes recorded
        if self._control_port is not None:
            yield self._control_port.stopListening()
            self._control_port = None
        yield super().stopService()
        # Sessions that completed their handshake while the first closeAll ran (the listener
        # was still accepting) are closed too, not left to a stopped agent.
        yield self.sessions.closeAll()
        if self.directory is not None:
            yield self.directory.close()
        yield crls_stopped  # no CRL file write outlives the lock
        if self.store.is_open:
            yield self.store.close()
        self.lock.release()

    def _fileQueued(self, peer: str) -> None:
        """A file was queued here: deliver it, and hand its bytes to our other nodes."""
        self.outbox.kick(peer)
        if self.own_files is not None:
            self.own_files.queued()

    def _isUs(self, binding: Any) -> bool:
        """A registered binding that is this agent: our certificate at one of our addresses."""
        if binding.cert != self.identity.leaf_der:
            return False
        ours = set()
        port = self._listeningAddress()
        if port is not None:
            ours.add((port.host, port.port))
        if self.keeper is not None:
            ours |= {(c.host, c.port) for c in self.keeper.contacts}
        return any((c.host, c.port) in ours for c in binding.contacts)

    def _listeningAddress(self) -> Any:
        port = self.listener.port
        return port.getHost() if port is not None else None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    # events --------------------------------------------------------------------------------

    def addObserver(self, observer: IAgentEvents) -> None:
        self._events.add(observer)

    def removeObserver(self, observer: IAgentEvents) -> None:
        self._events.remove(observer)

    def _emit(self, event: dict[str, Any]) -> None:
        self._events.emit(event)

    def _presence(self, peer: str, record: Record) -> None:
        if self.own_nodes is not None and same_identity(peer, self.name_):
            self.own_nodes.nodesChanged(record)
            return
        self._emit(events.presence_event(peer, record))
        if getattr(record, "nodes", None):
            self.sessions.contactsChanged(peer, record)  # a node moved: leave where it was
            self.outbox.peerAppeared(peer)

    def _statusChanged(self, status: MessageStatus) -> None:
        self._emit(events.delivery_event(status))
        if status.state in ("delivered", "expired", "failed"):
            self._waiters.release(status.id, status_dict(status))
            if self.own_files is not None:
                self.own_files.ended(status.id)

    # the API -------------------------------------------------------------------------------

    def kick(self, peer: str) -> None:
        """Deliver what is owed to C{peer} now (coalesced per peer)."""
        self.outbox.kick(peer)

    def send(
        self,
        to: str,
        text: str,
        thread: str | None = None,
        reply_to: str | None = None,
        queue_unknown: bool = False,
    ) -> defer.Deferred[dict[str, Any]]:
        if not is_valid_identity(to):
            return defer.fail(AgentError(f"{to!r} is not an identity (local@domain)"))
        if not self.store.is_open:
            return defer.fail(AgentError("the agent is still starting"))

        @defer.inlineCallbacks
        def queue() -> Any:
            if not queue_unknown and self.directory is not None:
                unknown = yield unknown_reason(self.clock, self.directory, to, RECIPIENT_CHECK)
                if unknown is not None:
                    self._emit(events.unknown_recipient_event(to, unknown, [], "refused"))
                    if ";" not in unknown:  # the registry said no more than "unknown"
                        unknown += " (never registered there, or its certificate expired or "
                        unknown += "was revoked)"
                    raise UnknownIdentity(unknown)
            parts = split_text(text)
            # The outbox starts on the last part as soon as the parts are committed, with
            # what the store read for it then, while the fsync that makes them durable runs
            # (send still fires only once they are durable).
            def written(pending: list[OutgoingMessage] | None) -> None:
                self.outbox.kick(to, pending)

            writes = [
                self.store.queue_outgoing(
                    to,
                    part,
                    self.now(),
                    thread=thread,
                    reply_to=reply_to,
                    on_written=written if i == len(parts) - 1 else None,
                )
                for i, part in enumerate(parts)
            ]
            try:
                queued = yield defer.gatherResults(writes, consumeErrors=True)
            except defer.FirstError as e:
                self.outbox.kick(to)  # the parts that were queued
                e.subFailure.raiseException()
            for message in queued:
                self._emit(events.delivery_event(message.status))
            ids = [message.id for message in queued]
            return {"id": ids[-1], "ids": ids, "peer": to, "state": "queued"}

        return queue()

    def cancel(self, message_id: str) -> defer.Deferred[dict[str, Any]]:
        def done(status: MessageStatus | None) -> dict[str, Any]:
            if status is None:
                raise UnknownMessage(f"no outgoing message {message_id}")
            if status.state not in ("queued", "sent") or status.delivered_nodes:
                what = status.describe()
                raise MessageFinal(f"message {message_id} is already {what}; nothing to cancel")
            event = events.cancelled_event(status)
            self._emit(event)
            if self.own_files is not None:
                self.own_files.ended(message_id)  # a spooled copy of it is not needed
            result = {k: v for k, v in event.items() if k != "type"}
            self._waiters.release(message_id, result)
            return result

        return self.store.cancel(message_id).addCallback(done)

    def sendFile(self, to: str, path: str) -> defer.Deferred[dict[str, Any]]:
        """
        Queue the file at C{path} for C{to} (§8.7): hashed now (in a thread), sent from disk
        when delivered, so the file must stay as it is until then (a changed file is
        rejected by the peer). Fires once queued, like L{send}.
        """
        if not is_valid_identity(to):
            return defer.fail(AgentError(f"{to!r} is not an identity (local@domain)"))
        if not self.store.is_open:
            return defer.fail(AgentError("the agent is still starting"))
        return defer.ensureDeferred(
            self.file_outbox.queue(to, os.path.abspath(path), self._fileQueued)
        )

    def waitDelivered(self, message_id: str, timeout: float) -> defer.Deferred[dict[str, Any]]:
        return self._waiters.wait(message_id, timeout)

    def trust(
        self, identity: str, accept_new_key: bool, forget_old: bool = False
    ) -> defer.Deferred[dict[str, Any]]:
        return defer.ensureDeferred(
            self.key_changes.decide(identity, accept_new_key, forget_old, self.outbox.kick)
        )

    def followPresence(self, peer: str) -> Callable[[], None]:
        """
        Watch C{peer}'s presence at the registry (C{presence} events when its devices come
        and go) until the callable returned is called; followers share one watch. The
        control server calls it for a subscription to one peer's presence (C{sixchat chat}).
        """
        key = normalize_identity(peer)
        self._following[key] = self._following.get(key, 0) + 1
        if self.directory is not None:
            self.directory.watch(peer)
        released: list[bool] = []

        def release() -> None:
            if released:
                return
            released.append(True)
            self._following[key] -= 1
            if not self._following[key]:
                del self._following[key]
                # the outbox ends the watch unless it still owes the peer messages
                self.outbox.kick(peer)

        return release

    def typing(self, to: str, state: str) -> defer.Deferred[dict[str, Any]]:
        if state not in TYPING_STATES:
            return defer.fail(AgentError("typing state is composing or paused"))
        session = self.sessions.anySession(to)
        if session is None:
            return defer.succeed({"sent": False})
        try:
            session.sendTyping(state)
        except Exception:
            return defer.succeed({"sent": False})
        return defer.succeed({"sent": True})

