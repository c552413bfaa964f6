"""
Own-device sync, the agent's side (docs/protocol.md, "Extension: own-device sync"): finding
this identity's other nodes through the registry (a lookup and a watch of our own identity,
skipping our own node), keeping a session to each while both run, and on every such session
pulling the other node's change feed into our store while it pulls ours.

Each session between two nodes of ours is a L{Link}: both ends send C{sync-hello} (node,
store, feed top) when it starts and again whenever their feed grows (looked at every
L{NOTIFY} seconds while a link is up: one indexed query, nothing on the wire when nothing
changed); each end then pulls, one C{sync-pull} in flight per link, until it has what the
hello announced. Batches are merged exactly once (the store moves the cursor in the same
transaction); a peer node without sync answers C{error unsupported}, and is left alone.

Delivery by any node: an outgoing message is delivered by the node that queued it while
that node is linked to us, else by the linked node with the smallest name, else by us
(L{OwnNodeSync.defers}); a receipt any node gets travels to the others and marks the message
delivered everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.agent import events
from sixchat.identity import same_identity
from sixchat.protocol import Session, new_stanza_id
from sixchat.stanzas import ErrorStanza, format_timestamp
from sixchat.sync.stanzas import MAX_ITEMS, SyncBatch, SyncHello, SyncPull

if TYPE_CHECKING:
    from sixchat.agent.interfaces import IDirectory
    from sixchat.agent.sessions import SessionTable
    from sixchat.agent.store.sync import Applied, SyncStore
    from sixchat.irp.messages import NodeBinding, Record

__all__ = ["KEEP_LINKED", "NOTIFY", "REDIAL_MAX", "Link", "OwnNodeSync", "merged_handler"]

log = Logger(namespace="sixchat.agent.service")

#: How often a linked node looks whether its feed grew (and says so with a hello).
NOTIFY = 1.0
#: A hello at least this often even when nothing changed, so that the link never reaches
#: the idle timeout (§9.2; a third of it when that is shorter): own nodes stay linked.
KEEP_LINKED = 120.0
#: Redialling an own node that is registered but not linked: from REDIAL_MIN, doubling.
REDIAL_MIN = 2.0
REDIAL_MAX = 60.0


@dataclass
class Link:
    """One session with another node of ours."""

    session: Session
    hello_id: str
    node: str | None = None
    store: str | None = None
    top: int = 0
    pulling: str | None = None
    unsupported: bool = False
    pulled_items: int = 0
    #: The node takes our outgoing files (its hello said C{out-files="1"}).
    out_files: bool = False
    #: When our last hello went out on it (the clock's seconds).
    said_at: float = 0.0


class OwnNodeSync:
    """
    @param on_applied: told what each merged batch changed (events, outbox, pin cache).
    """

    def __init__(
        self,
        clock: IReactorTime,
        identity: str,
        node: str,
        store: SyncStore,
        sessions: SessionTable,
        directory: IDirectory | None,
        now: Callable[[], datetime],
        *,
        on_applied: Callable[[Applied], None],
        on_unlinked: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.identity = identity
        self.node = node
        self.store = store
        self.sessions = sessions
        self.directory = directory
        self.now = now
        self.on_applied = on_applied
        #: Told the name of an own node whose last link ended (its messages are ours now).
        self.on_unlinked = on_unlinked
        self.links: dict[Session, Link] = {}
        #: Own nodes the registry lists (not ours), by name.
        self.registered: dict[str, NodeBinding] = {}
        self.store_id = ""
        self.top = 0
        self.running = False
        self._notify: IDelayedCall | None = None
        self._redial: dict[str, tuple[IDelayedCall | None, float]] = {}
        self._dialing: set[str] = set()
        #: Sessions we dialled, to the node name we dialled.
        self._dialled: dict[Session, str] = {}
        #: Registered names that turned out to be this very agent (a binding registered under
        #: another name with our address): never dialled again while registered so.
        self.ourselves: set[str] = set()
        #: Whether a registered binding is this very agent under another name (our
        #: certificate at one of our addresses): not dialled. The agent sets it.
        self.is_us: Callable[[NodeBinding], bool] = lambda binding: False
        #: Told when a link with another node of ours is up (its hello came): files.
        self.on_linked: Callable[[], None] = lambda: None

    # lifecycle -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Once the store is open: our feed's state, then our other nodes."""
        self.store_id, self.top = yield self.store.feed_state()
        self.running = True
        if self.directory is not None:
            # A watch answers with the current record at once (irp-1 §3.4), then with every
            # change: our nodes come as presence (UserAgentService._presence).
            self.directory.watch(self.identity)
        self._schedule()

    def stop(self) -> None:
        self.running = False
        if self._notify is not None and self._notify.active():
            self._notify.cancel()
        self._notify = None
        for call, _ in self._redial.values():
            if call is not None and call.active():
                call.cancel()
        self._redial.clear()

    def isOwn(self, peer: str) -> bool:
        return same_identity(peer, self.identity)

    # discovery -----------------------------------------------------------------------------

    def nodesChanged(self, record: Record) -> None:
        """Our identity's registry record (lookup or watch): dial the nodes not linked."""
        self.registered = {
            n.name: n for n in record.nodes if n.name != self.node and not self.is_us(n)
        }
        self.ourselves &= set(self.registered)
        for name in list(self._redial):
            if name not in self.registered:
                call, _ = self._redial.pop(name)
                if call is not None and call.active():
                    call.cancel()
        for name in sorted(self.registered):
            self._dial(name)

    def linked(self, node: str) -> bool:
        """Whether a session with own node C{node} is up and speaks sync."""
        return any(
            link.node == node and not link.unsupported and not link.session.ended
            for link in self.links.values()
        )

    def _dial(self, name: str) -> None:
        if not self.running or self.linked(name) or name in self._dialing or name in self.ourselves:
            return
        node = self.registered.get(name)
        if node is None:
            return
        self._dialing.add(name)
        d = defer.ensureDeferred(self.sessions.sessionFor(self.identity, node))

        def failed(f: Failure) -> None:
            log.info("cannot reach our node {node}: {why}", node=name, why=f.getErrorMessage())
            self._retry(name)

        def dialled(session: Session | None) -> None:
            self._redial.pop(name, None)
            if session is not None:
                self._dialled[session] = name

        d.addCallbacks(dialled, failed)
        d.addBoth(lambda _: self._dialing.discard(name))

    def _retry(self, name: str) -> None:
        if not self.running or name not in self.registered:
            return
        call, delay = self._redial.get(name, (None, REDIAL_MIN / 2))
        if call is not None and call.active():
            return
        delay = min(REDIAL_MAX, delay * 2)

        def again() -> None:
            self._redial[name] = (None, delay)
            self._dial(name)

        self._redial[name] = (self.clock.callLater(delay, again), delay)

    # sessions ------------------------------------------------------------------------------

    def sessionStarted(self, session: Session) -> None:
        if not self.running or not self.isOwn(session.peer):
            return
        link = Link(session, new_stanza_id())
        self.links[session] = link

        def fresh(state: tuple[str, int]) -> None:
            self.top = max(self.top, state[1])
            if not session.ended:
                self._hello(link)

        self.store.feed_state().addCallbacks(
            fresh, lambda f: log.debug("sync feed state: {e}", e=f.getErrorMessage())
        )

    def sessionEnded(self, session: Session) -> None:
        self._dialled.pop(session, None)
        link = self.links.pop(session, None)
        if link is None or link.node is None:
            return
        if not self.linked(link.node):
            log.info("our node {node} is no longer linked", node=link.node)
            self.on_unlinked(link.node)
            self._retry(link.node)

    def file_links(self) -> list[tuple[Session, str]]:
        """The open links whose node syncs, with its name (received files go there)."""
        return [
            (link.session, link.node)
            for link in self.links.values()
            if link.node is not None and not link.unsupported and not link.session.ended
        ]

    def takesOutgoingFiles(self, session: Session) -> bool:
        """Whether the node on C{session} said it takes our outgoing files (C{out-files})."""
        link = self.links.get(session)
        return link is not None and link.out_files

    def _hello(self, link: Link) -> None:
        hello = SyncHello(link.hello_id, self.node, self.store_id, self.top, out_files=True)
        link.said_at = self.clock.seconds()
        try:
            link.session.sendStanza(hello)
        except Exception as e:
            log.debug("sync hello not sent: {e}", e=e)

    def _schedule(self) -> None:
        if self.running and (self._notify is None or not self._notify.active()):
            self._notify = self.clock.callLater(NOTIFY, self._look)

    @defer.inlineCallbacks
    def _look(self) -> Any:
        """
        Has our feed grown? Then say so on every link (they pull); and on a link that heard
        nothing from us for a while, say it all the same (it keeps the link from going idle).
        """
        self._notify = None
        try:
            if self.links:
                _, top = yield self.store.feed_state()
                grown, self.top = top != self.top, top
                keep = min(KEEP_LINKED, self.sessions.idle_timeout / 3)
                for link in list(self.links.values()):
                    if link.unsupported or link.session.ended:
                        continue
                    if grown or self.clock.seconds() - link.said_at >= keep:
                        self._hello(link)
        except Exception as e:
            if self.running:
                log.debug("sync feed check failed: {e}", e=e)
        finally:
            self._schedule()

    # stanzas -------------------------------------------------------------------------------

    def stanza(self, session: Session, stanza: object) -> bool:
        """A stanza from a session; True if it was ours to handle."""
        link = self.links.get(session)
        if link is None:
            return False
        if isinstance(stanza, SyncHello):
            defer.ensureDeferred(self._helloReceived(link, stanza)).addErrback(self._failed, link)
        elif isinstance(stanza, SyncPull):
            defer.ensureDeferred(self._pullReceived(link, stanza)).addErrback(self._failed, link)
        elif isinstance(stanza, SyncBatch):
            defer.ensureDeferred(self._batchReceived(link, stanza)).addErrback(self._failed, link)
        elif isinstance(stanza, ErrorStanza) and stanza.ref in (link.hello_id, link.pulling):
            if stanza.reason == "unsupported" and not link.unsupported:
                link.unsupported = True
                log.info("our node at {peer} does not sync (error unsupported)",
                         peer=_address(session))  # fmt: skip
            elif stanza.reason != "unsupported":
                log.warn(
                    "our node {node} refused our sync stanza: {reason} {text}",
                    node=link.node, reason=stanza.reason, text=stanza.text or "",
                )  # fmt: skip
            link.pulling = None
        else:
            return False
        return True

    def _failed(self, failure: Failure, link: Link) -> None:
        link.pulling = None
        if self.running and not link.session.ended:
            log.failure("sync with our node {node} failed", failure, node=link.node)

    async def _helloReceived(self, link: Link, hello: SyncHello) -> None:
        if hello.node == self.node:
            link.unsupported = True
            dialled = self._dialled.get(link.session)
            if dialled is not None and hello.store == self.store_id:
                # We dialled a registered name and reached ourselves.
                self.ourselves.add(dialled)
                link.session.close()
                return
            if hello.store != self.store_id:
                log.warn(
                    "another node of ours also calls itself {node}: not syncing with it "
                    "(give each node its own --node)",
                    node=self.node,
                )
            return
        first = link.node is None
        link.node, link.store, link.top = hello.node, hello.store, hello.top
        link.out_files = hello.out_files
        if first:
            log.info("linked with our node {node}", node=hello.node)
            self._redial.pop(hello.node, None)
            self.on_linked()
        if link.pulling is None:
            after = await self.store.node_seen(hello.node, hello.store, hello.top, self.now())
            if hello.top > after and link.pulling is None:
                self._pull(link, after)

    def _pull(self, link: Link, after: int) -> None:
        assert link.store is not None
        link.pulling = new_stanza_id()
        try:
            link.session.sendStanza(SyncPull(link.pulling, link.store, after, MAX_ITEMS))
        except Exception as e:
            link.pulling = None
            log.debug("sync pull not sent: {e}", e=e)

    async def _pullReceived(self, link: Link, pull: SyncPull) -> None:
        if link.node is None:
            link.session.sendAnswer(ErrorStanza("bad_request", pull.id, "sync-hello first"))
            return
        after = pull.after if pull.store == self.store_id else 0  # another feed: from its start
        page = await self.store.read_feed(
            after, pull.max, node=self.node, requester=link.node, out_files=link.out_files
        )
        if page.skipped:
            log.warn("{n} item(s) too large for a sync batch were not synced", n=page.skipped)
        if not link.session.ended:
            link.session.sendAnswer(
                SyncBatch(pull.id, page.store, page.next, page.more, page.items)
            )

    async def _batchReceived(self, link: Link, batch: SyncBatch) -> None:
        if batch.ref != link.pulling or link.node is None:
            return  # not the answer we wait for (a late one after an error): ignored
        applied = await self.store.apply(
            batch.items, node=self.node, source=link.node, store=batch.store,
            next_cursor=batch.next, now=self.now(),
        )  # fmt: skip
        link.pulling = None
        link.store = batch.store
        link.pulled_items += len(batch.items)
        self.on_applied(applied)
        if (batch.more or link.top > batch.next) and not link.session.ended:
            self._pull(link, batch.next)

    # what others ask -----------------------------------------------------------------------

    def defers(self, origin: str | None, holders: set[str] | None = None) -> bool:
        """
        Whether an outgoing message queued by C{origin} is another node's to deliver now:
        the origin's while it is linked to us; when it is not, the linked node with the
        smallest name, if that is not us (so that of several nodes left behind by the
        origin, the ones linked to each other deliver it once). For a file, C{holders}: the
        other nodes known to hold its bytes (the origin always does); only they count, so a
        node without the bytes never keeps one that has them from delivering.
        """
        if origin is None or origin == self.node:
            return False
        if self.linked(origin):
            return True
        if holders is None:
            others = {link.node for link in self.links.values() if link.node is not None}
        else:
            others = holders
        return any(node < self.node and self.linked(node) for node in others)

    def report(self) -> defer.Deferred[dict[str, Any]]:
        """C{sixchat devices}: this node, and each other node with its sync state."""
        return self.store.own_nodes().addCallback(
            lambda known: {"node": self.node, "sync": True, "own_nodes": self.describe(known)}
        )

    def describe(self, known: list[Any]) -> list[dict[str, Any]]:
        """Own nodes for C{status}/C{devices}: registered, linked, and what the store knows."""
        by_name = {n.node: n for n in known}
        names = sorted(set(self.registered) | set(by_name) | {
            link.node for link in self.links.values() if link.node
        })  # fmt: skip
        out = []
        for name in names:
            row = by_name.get(name)
            link = next((lk for lk in self.links.values() if lk.node == name), None)
            out.append(
                {
                    "node": name,
                    "registered": name in self.registered,
                    "linked": self.linked(name),
                    "sync": None if link is None else ("unsupported" if link.unsupported else
                                                       "pulling" if link.pulling else "idle"),
                    "their_top": None if row is None else row.top,
                    "pulled_to": None if row is None else row.after,
                    "last_sync": None
                    if row is None or row.synced_us is None
                    else format_timestamp(datetime.fromtimestamp(row.synced_us / 1e6, UTC)),
                    "items_merged": 0 if row is None else row.items,
                }
            )  # fmt: skip
        return out


def _address(session: Session) -> str:
    try:
        address = session.address()
        return f"{getattr(address, 'host', '?')}"
    except Exception:
        return "?"


def merged_handler(
    emit: Callable[[dict[str, Any]], None],
    outbox: Any,
    store: SyncStore,
    files: Callable[[Applied], None] = lambda applied: None,
) -> Callable[[Applied], None]:
    """
    What the agent does once a batch from another node of ours is merged: a C{message} event
    for each message that node received first, outgoing files made known to the file outbox
    (C{files}: before any delivery round, so that no file id is ever sent as a message), a
    delivery round for the outgoing messages (they may be ours to deliver), and the pin
    cache re-read when pins changed.
    """

    def merged(applied: Applied) -> None:
        files(applied)
        for sender, message, at_us in applied.received:
            at = format_timestamp(datetime.fromtimestamp(at_us / 1e6, UTC))
            emit(events.message_event(sender, message, at))
        if applied.outgoing:
            outbox.schedule(0)
        if applied.pins_changed:
            store.reload_pins().addErrback(lambda f: log.failure("reloading pins after sync", f))

    return merged
