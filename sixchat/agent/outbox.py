"""
The outbox scheduler ("nothing ever lost"): a message is stored before C{send} fires; the
outbox keeps a per-node entry for every registered node of the peer (§11.16) and retries
each with exponential backoff and jitter until that node's receipt, at once when the
directory reports the peer online, until the message expires (C{message_ttl}).

A peer the directory does not know (the registry's C{not_found}) is reported once through
C{on_unknown} with the ids still queued for it, and looked up again only every
L{UNKNOWN_RETRY} seconds until it registers (a presence with nodes: L{peerAppeared}).

Its time is an injected C{IReactorTime} and its collaborators (store, directory, sessions)
are narrow, so the rules — backoff, jitter, the send window, expiry, ticks — are unit-tested
on a C{task.Clock} with fakes and no reactor.

A dial that fails makes the outbox doubt the address it dialled: it drops the directory's
record of the peer (C{invalidate}, where the directory has it) and looks it up again, and if
the node registers other contacts now (it moved) dials those at once rather than after the
retry backoff.

An entry in flight is never sent again while it is (a file is in flight until its receipt,
however long it streams, though its retry time passes meanwhile): a delivery to a peer lasts
until every send it started has ended, and kicks during it make one pass after it. It is
due again only once it ended without a receipt (the session lost).

When the registry cannot be asked (unreachable, or no registry at all) and holds no record
of the peer, what is owed goes over the sessions the peer's nodes opened to us, if any
(their handshakes proved the peer's identity and passed pinning; a session a CRL revoked is
never used): each key among them is a target of its own, named L{incoming_node}.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.agent.errors import UnknownIdentity
from sixchat.agent.interfaces import IDirectory
from sixchat.identity import normalize_identity
from sixchat.irp.messages import IRPError
from sixchat.protocol import HandshakeFailed, SessionLost, StanzaRefused

if TYPE_CHECKING:
    from sixchat.agent.store import MessageStatus, OutgoingMessage
    from sixchat.irp.messages import NodeBinding
    from sixchat.protocol import Session

__all__ = [
    "DEFAULT_TTL",
    "EXPIRE_EVERY",
    "RETRY_BASE",
    "RATE_LIMITED_RETRY",
    "RETRY_MAX",
    "SEND_WINDOW",
    "TICK",
    "UNKNOWN_RETRY",
    "OutboxScheduler",
    "OutboxSessions",
    "OutboxStore",
    "incoming_node",
]

log = Logger(namespace="sixchat.agent.service")

DEFAULT_TTL = timedelta(days=7)
#: Outbox retry backoff per node: min(MAX, BASE * 2^attempts), times a jitter in [0.5, 1).
RETRY_BASE = 2.0
RETRY_MAX = 300.0
#: Unreceipted messages in flight per session (flow control for long outboxes).
SEND_WINDOW = 64
#: How often the outbox looks for due work and expired messages.
TICK = 1.0
EXPIRE_EVERY = 60.0
#: How often messages owed to an unknown peer look it up again (besides its presence push).
UNKNOWN_RETRY = 30.0
#: A lookup the registry refused for its request rate (irp-1: 50 a second per connection,
#: one token back every 20 ms) is asked again after this, times a jitter in [0.5, 1), rather
#: than at the next L{TICK}.
RATE_LIMITED_RETRY = 0.1


class OutboxStore(Protocol):
    """What the scheduler needs of the message store (L{sixchat.agent.store.MessageStore})."""

    @property
    def is_open(self) -> bool: ...

    def expire(self, now: datetime, ttl: timedelta) -> defer.Deferred[list[MessageStatus]]: ...

    def pending(self, now: datetime | None = None) -> defer.Deferred[list[OutgoingMessage]]: ...

    def pending_for(
        self, to: str, now: datetime | None = None
    ) -> defer.Deferred[list[OutgoingMessage]]: ...

    def add_targets(self, message_id: str, nodes: Iterable[str]) -> defer.Deferred[list[str]]: ...

    def mark_attempt(
        self,
        message_id: str,
        node: str,
        now: datetime,
        next_attempt: datetime | None,
        *,
        sent: bool = True,
    ) -> defer.Deferred[MessageStatus | None]: ...

    def mark_delivered(
        self, message_id: str, node: str, now: datetime
    ) -> defer.Deferred[MessageStatus | None]: ...

    def mark_failed(
        self, message_id: str, node: str | None, reason: str, now: datetime
    ) -> defer.Deferred[MessageStatus | None]: ...


class OutboxSessions(Protocol):
    """What the scheduler needs of the session table (L{sixchat.agent.sessions.SessionTable})."""

    async def sessionFor(self, peer: str, node: NodeBinding) -> Session: ...

    def incomingFrom(self, peer: str) -> list[Session]:
        """The open sessions C{peer} opened to us (none that a CRL revoked)."""


def _all_nodes(peer: str, nodes: Sequence[NodeBinding]) -> list[NodeBinding]:
    return list(nodes)


class OutboxScheduler:
    """
    Delivers what the store owes: a tick every L{TICK} seconds (and L{kick} whenever a peer
    may be reachable: a send, a presence push, a session from it) finds due entries; every
    L{EXPIRE_EVERY} seconds messages older than C{message_ttl} are given up.

    @param usable_nodes: which of a peer's registered nodes may be dialled (the pin rule,
        L{sixchat.agent.pinning.RegistryKeyPins.usable_nodes}); default all.
    @param on_status: told every status change the scheduler causes (events, waiters).
    @param deliver: sends one entry on a session (default: C{session.send(entry.stanza)}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: OutboxStore,
        sessions: OutboxSessions,
        directory: IDirectory | None,
        on_status: Callable[[MessageStatus], None],
        *,
        message_ttl: timedelta = DEFAULT_TTL,
        rand: Callable[[], float] = random.random,
        usable_nodes: Callable[[str, Sequence[NodeBinding]], list[NodeBinding]] = _all_nodes,
        on_unknown: Callable[[str, str, list[str]], None] | None = None,
        deliver: Callable[[Session, OutgoingMessage], defer.Deferred[Any]] | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.sessions = sessions
        self.directory = directory
        self.on_status = on_status
        self.message_ttl = message_ttl
        self.rand = rand
        self.usable_nodes = usable_nodes
        #: Told (peer, the directory's reason, ids still queued) when a peer with queued
        #: messages is found unknown, once until it is known again.
        self.on_unknown = on_unknown
        #: Peers found unknown (normalized) -> when last looked up.
        self.unknown: dict[str, float] = {}
        #: Peers whose registry watch stays when nothing is owed them (someone follows
        #: their presence: C{UserAgentService.followPresence}).
        self.keep_watching: Callable[[str], bool] = lambda peer: False
        #: How one entry goes out on a session: fires with the receipt, fails like
        #: C{Session.send} (the agent's file outbox sends files this way, §8.7).
        self.deliver = deliver or _send_message
        #: Whether another node of ours delivers this message now (own-device sync: the
        #: node that queued it, while linked to us; L{sixchat.agent.ownnodes}).
        self.elsewhere: Callable[[OutgoingMessage], bool] = lambda message: False
        self.running = False
        self.stopping = False
        self._tick_call: IDelayedCall | None = None
        self._last_expire = 0.0
        self._delivering: set[str] = set()
        #: Peers kicked during a delivery to them: the newest list of what they are owed
        #: given meanwhile, or None (read it again).
        self._again: dict[str, list[OutgoingMessage] | None] = {}
        #: Peers whose pass after the one in flight treats every owed entry as due.
        self._now_due: set[str] = set()
        #: Peers whose lookup the registry refused for its rate: the retry waiting.
        self._soon: dict[str, IDelayedCall] = {}
        #: Peers served over their incoming sessions since their last lookup that worked
        #: (logged once).
        self._over_incoming: set[str] = set()
        #: The next tick treats every owed entry as due (L{retryAllNow}).
        self._retry_all = False

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def start(self) -> None:
        """Accept work from now on; the first L{schedule} (once the store is open) ticks."""
        self.running = True

    def stop(self) -> None:
        """No more ticks or deliveries; what is in flight finishes quietly."""
        self.stopping = True
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        for call in self._soon.values():
            if call.active():
                call.cancel()
        self._soon.clear()

    def schedule(self, delay: float) -> None:
        """Tick in C{delay} seconds, unless a tick is due sooner already."""
        if not self.running or self.stopping:
            return
        if self._tick_call is not None and self._tick_call.active():
            if self._tick_call.getTime() <= self.clock.seconds() + delay:
                return
            self._tick_call.cancel()
        self._tick_call = self.clock.callLater(delay, self.tick)

    def retryAllNow(self) -> None:
        """
        Our side of the network came back or changed (an address appeared or went, the
        registry answers again after an outage): what failed while it was down waits for
        its backoff (up to L{RETRY_MAX}), which is now likely stale. The next tick, at
        once, treats every owed entry as due.
        """
        self._retry_all = True
        self.schedule(0)

    @defer.inlineCallbacks
    def tick(self) -> Any:
        self._tick_call = None
        if self.stopping or not self.store.is_open:
            return
        retry_all, self._retry_all = self._retry_all, False
        try:
            now = self.now()
            if self.clock.seconds() - self._last_expire >= EXPIRE_EVERY:
                self._last_expire = self.clock.seconds()
                expired = yield self.store.expire(now, self.message_ttl)
                for status in expired:
                    self.on_status(status)
            due = yield self.store.pending(None if retry_all else now)
            for peer in sorted({m.to_display for m in due}):
                self.kick(peer, now_due=retry_all)
        except Exception:
            if retry_all:
                # The store failed before every owed entry was kicked: the next tick tries
                # again with all of them due (a kick made twice coalesces), rather than
                # leaving them to the backoff retryAllNow was asked to cut short.
                self._retry_all = True
            if not self.stopping:  # a tick in flight while stopping meets a closed store
                log.failure("outbox tick failed")
        finally:
            self.schedule(TICK)

    def kick(
        self, peer: str, pending: list[OutgoingMessage] | None = None, *, now_due: bool = False
    ) -> None:
        """
        Deliver what is owed to C{peer} now (coalesced per peer). C{pending}: what is owed
        to it, just read by the caller (L{MessageStore.queue_outgoing}'s C{on_written}),
        which saves a read. A kick during a delivery to the peer makes one more pass after
        it: from the newest list given meanwhile, less what that delivery attempted (the
        only entries that changed since that list was read), or from a read if any kick
        came without a list. C{now_due}: every owed entry is due at once, whatever its
        backoff (the peer just registered: L{peerAppeared}).
        """
        if not self.running or self.stopping or not self.store.is_open:
            return
        key = normalize_identity(peer)
        if key in self._delivering:
            if now_due:
                self._now_due.add(key)
            if pending is None or self._again.get(key, []) is None:
                self._again[key] = None
            else:
                self._again[key] = pending
            return
        self._delivering.add(key)
        attempted: set[str] = set()
        d = defer.ensureDeferred(self._deliverPeer(peer, pending, attempted, now_due))
        d.addErrback(
            lambda f: (
                None if self.stopping else log.failure("delivery to {peer} failed", f, peer=peer)
            )
        )

        def done(_: object) -> None:
            self._delivering.discard(key)
            if key in self._again:
                again = self._again.pop(key)
                if again is not None:
                    again = [m for m in again if m.id not in attempted]
                forced = key in self._now_due
                self._now_due.discard(key)
                self.kick(peer, again, now_due=forced)

        d.addBoth(done)

    def isUnknown(self, peer: str) -> bool:
        """Whether the last lookup of C{peer} found it unknown to the directory."""
        return normalize_identity(peer) in self.unknown

    def peerAppeared(self, peer: str) -> None:
        """C{peer} has nodes now (a presence push): known again, deliver at once."""
        self.unknown.pop(normalize_identity(peer), None)
        self.kick(peer, now_due=True)

    def _retrySoon(self, peer: str) -> None:
        """Kick C{peer} again after L{RATE_LIMITED_RETRY} (jittered), once per peer."""
        key = normalize_identity(peer)
        if key in self._soon or self.stopping:
            return

        def again() -> None:
            del self._soon[key]
            self.kick(peer)

        delay = RATE_LIMITED_RETRY * (0.5 + self.rand() / 2)
        self._soon[key] = self.clock.callLater(delay, again)

    def retryDelay(self, attempts: int) -> float:
        return min(RETRY_MAX, RETRY_BASE * (2 ** min(attempts, 16))) * (0.5 + self.rand() / 2)

    async def _deliverPeer(
        self,
        peer: str,
        pending: list[OutgoingMessage] | None,
        attempted: set[str],
        now_due: bool = False,
    ) -> None:
        key = normalize_identity(peer)
        if pending is None:
            pending = await self.store.pending_for(peer)
        pending = [m for m in pending if not self.elsewhere(m)]
        if not pending:
            self.unknown.pop(key, None)
            if self.directory is not None and not self.keep_watching(peer):
                self.directory.unwatch(peer)
            return
        if self.directory is None:  # no registry: only the peer's sessions to us reach it
            await self._deliverIncoming(peer, pending, attempted, now_due, "no registry")
            return
        self.directory.watch(peer)  # be told at once when the peer's nodes change
        last = self.unknown.get(key)
        if last is not None and self.clock.seconds() - last < UNKNOWN_RETRY:
            return  # unknown a moment ago; its first registration is pushed to the watch
        try:
            record = await self.directory.lookup(peer)
        except UnknownIdentity as e:
            self.unknown[key] = self.clock.seconds()
            if last is None:
                log.info("{peer} is not known to the registry; its messages stay queued",
                         peer=peer)  # fmt: skip
                if self.on_unknown is not None:
                    self.on_unknown(peer, str(e), [m.id for m in pending])
            return
        except Exception as e:
            log.debug("lookup of {peer} failed: {e}", peer=peer, e=e)
            if isinstance(e, IRPError) and e.reason == "rate_limited":
                self._retrySoon(peer)  # the registry answers: soon, the peer's record
                return
            # The registry cannot be asked and holds no record of the peer.
            await self._deliverIncoming(peer, pending, attempted, now_due, str(e))
            return
        self.unknown.pop(key, None)
        self._over_incoming.discard(key)
        nodes = {n.name: n for n in self.usable_nodes(peer, record.nodes)}
        if not nodes:
            return  # offline: the watch will kick us when a node registers
        await self._fanOut(
            pending, list(nodes), attempted, now_due,
            lambda name, owed: self._deliverNode(peer, nodes[name], owed),
        )  # fmt: skip

    async def _deliverIncoming(
        self,
        peer: str,
        pending: list[OutgoingMessage],
        attempted: set[str],
        now_due: bool,
        why: str,
    ) -> None:
        """
        Deliver what is owed to C{peer} over the sessions its nodes opened to us, one per
        key (the registry cannot be asked, and there is no record of the peer to dial).
        """
        sessions: dict[str, Session] = {}
        for session in self.sessions.incomingFrom(peer):
            sessions.setdefault(incoming_node(session), session)
        if not sessions:
            return  # nothing reaches the peer: its messages stay queued
        key = normalize_identity(peer)
        if key not in self._over_incoming:
            self._over_incoming.add(key)
            log.info("cannot look {peer} up ({why}); delivering over the {n} session(s) it "
                     "opened to us", peer=peer, why=why, n=len(sessions))  # fmt: skip
        await self._fanOut(
            pending, list(sessions), attempted, now_due,
            lambda name, owed: self._sendOn(sessions[name], name, owed),
        )  # fmt: skip

    async def _fanOut(
        self,
        pending: list[OutgoingMessage],
        names: list[str],
        attempted: set[str],
        now_due: bool,
        send: Callable[[str, list[OutgoingMessage]], Coroutine[Any, Any, None]],
    ) -> None:
        """Target every message owed to the peer at the nodes C{names}; C{send} what is due."""
        # The targets are recorded (group-committed with the attempts below, in this order)
        # while the messages go out: what is due is worked out here, from the entries read
        # above and the nodes that are new to a message (queued, never tried: due now),
        # rather than read back after the write (one store round trip less per delivery).
        now = self.now()
        targetable = [m for m in pending if m.state in ("queued", "sent", "delivered")]
        for message in targetable:
            self.store.add_targets(message.id, names).addErrback(
                self._targetsNotRecorded, message.id
            )
        work = []
        for name in names:
            # An entry in flight is never in a new pass (a delivery awaits all its sends),
            # so now_due re-sends only what waits for its backoff.
            owed = [m for m in targetable if _due_to(m, name, now, now_due)]
            if owed:
                attempted.update(m.id for m in owed)
                work.append(defer.ensureDeferred(send(name, owed)))
        if work:
            await defer.DeferredList(work, consumeErrors=True)

    async def _lookAgain(self, peer: str, node: NodeBinding) -> NodeBinding | None:
        """
        After a failed dial: drop what the directory holds for C{peer} (the address may be
        stale: the peer moved) and look it up anew; the node's new binding if its contacts
        changed, else None.
        """
        invalidate = getattr(self.directory, "invalidate", None)
        if self.directory is None or invalidate is None:
            return None
        invalidate(peer)
        try:
            record = await self.directory.lookup(peer)
        except Exception:
            return None
        usable = self.usable_nodes(peer, record.nodes)
        fresh = next((n for n in usable if n.name == node.name), None)
        if fresh is None or set(fresh.contacts) == set(node.contacts):
            return None
        return fresh

    async def _deliverNode(
        self,
        peer: str,
        node: NodeBinding,
        owed: list[OutgoingMessage],
        looked_again: bool = False,
    ) -> None:
        try:
            session = await self.sessions.sessionFor(peer, node)
        except Exception as e:
            log.info("cannot reach {peer} node {node}: {why}", peer=peer, node=node.name, why=e)
            # One failed attempt is enough to doubt the address: look the peer up again,
            # and dial at once where the node is now if it moved (mobility).
            fresh = None if looked_again else await self._lookAgain(peer, node)
            if fresh is not None:
                log.info("{peer} node {node} moved; dialling its new address", peer=peer,
                         node=node.name)  # fmt: skip
                await self._deliverNode(peer, fresh, owed, looked_again=True)
                return
            now = self.now()
            for message in owed:
                delay = self.retryDelay(_attempts(message, node.name))
                await self.store.mark_attempt(
                    message.id, node.name, now, now + timedelta(seconds=delay), sent=False
                )
            return
        await self._sendOn(session, node.name, owed)

    async def _sendOn(self, session: Session, node: str, owed: list[OutgoingMessage]) -> None:
        """Send C{owed} on C{session}, to C{node}'s entries, awaiting every send's end."""
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
            retry_at = now + timedelta(seconds=self.retryDelay(_attempts(message, node)))
            # Not awaited: the store records the attempt in order, before the receipt's
            # mark_delivered; meanwhile the message is already on its way. A crash before
            # the record leaves the message queued: it is sent again and the peer, which
            # keys messages by id, stores it once (§8.2).
            self.store.mark_attempt(message.id, node, now, retry_at).addCallbacks(
                self._attempted, self._attemptNotRecorded, errbackArgs=(message.id,)
            )
            d: defer.Deferred[Any] = self.deliver(session, message)
            d.addBoth(_released, window)
            d.addCallbacks(
                self._receipted,
                self._notReceipted,
                callbackArgs=(message.id, node),
                errbackArgs=(message.id, node),
            )
            sends.append(d)
        await defer.DeferredList(sends, consumeErrors=True)

    def _attempted(self, status: MessageStatus | None) -> None:
        if status is not None:
            self.on_status(status)

    def _targetsNotRecorded(self, failure: Failure, message_id: str) -> None:
        if not self.stopping:
            log.failure("could not record the targets of {id}", failure, id=message_id)

    def _attemptNotRecorded(self, failure: Failure, message_id: str) -> None:
        if not self.stopping:
            log.failure("could not record the attempt for {id}", failure, id=message_id)

    def _receipted(self, receipt: object, message_id: str, node: str) -> defer.Deferred[None]:
        return self.store.mark_delivered(message_id, node, self.now()).addCallback(
            lambda status: self.on_status(status) if status else None
        )

    def _notReceipted(self, failure: Failure, message_id: str, node: str) -> Any:
        if failure.check(StanzaRefused):
            reason = failure.value.reason  # type: ignore[union-attr]
            return self.store.mark_failed(message_id, node, reason, self.now()).addCallback(
                lambda status: self.on_status(status) if status else None
            )
        if failure.check(SessionLost, HandshakeFailed):
            self.schedule(0)  # the next tick re-sends when the entry is due
            return None
        return failure


def _due_to(message: OutgoingMessage, node: str, now: datetime, now_due: bool) -> bool:
    """
    Whether C{message} is due to C{node} at C{now}: its entry is (or, C{now_due}, is owed
    at all), or it has none yet.
    """
    for entry in message.nodes:
        if entry.node == node:
            return entry.owed if now_due else entry.due(now)
    return True  # a new target: queued, never tried


def incoming_node(session: Session) -> str:
    """
    The outbox target for a session the peer opened to us, when its node's name is not known
    (the registry cannot be asked): C{key:} and the first 16 hex digits of the SHA-256 of the
    peer's key, which no registered node name can be (irp-1: C{[A-Za-z0-9_.-]}).
    """
    return "key:" + session.result.peer.spki_sha256.hex()[:16]


def _attempts(message: OutgoingMessage, node: str) -> int:
    return next((n.attempts for n in message.nodes if n.node == node), 0)


def _send_message(session: Session, message: OutgoingMessage) -> defer.Deferred[Any]:
    return session.send(message.stanza)


def _released(result: Any, window: defer.DeferredSemaphore) -> Any:
    """Pass C{result} through after giving the send window's slot back."""
    window.release()
    return result
