"""
L{sixchat.agent.ownnodes} on a C{task.Clock}: two nodes of one identity over fake sessions
that carry the real stanzas through the XML codec, each with an in-memory store run
synchronously (the same functions the agent runs on the store's thread).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from sixchat.agent.ownnodes import KEEP_LINKED, NOTIFY, REDIAL_MIN, OwnNodeSync
from sixchat.agent.store import sync as ssync
from sixchat.agent.store.database import MessageDatabase
from sixchat.stanzas import ErrorStanza
from sixchat.sync.stanzas import SYNC_STANZAS, SyncPull
from sixchat.test import certs
from sixchat.test.test_agent_service import CA, AgentCase
from sixchat.xmlcodec import parse, serialize

ALICE = "alice@example.com"
BOB = "bob@example.com"
T0 = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


class FakeSyncStore:
    """L{SyncStore}'s methods, run at once on one in-memory database."""

    def __init__(self) -> None:
        self.db = MessageDatabase(":memory:")

    def feed_state(self) -> Any:
        return defer.succeed(ssync.feed_state(self.db))

    def read_feed(self, after: int, limit: int, **kw: Any) -> Any:
        return defer.succeed(ssync.read_feed(self.db, after, limit, **kw))

    def apply(self, items: Any, **kw: Any) -> Any:
        return defer.succeed(ssync.apply_items(self.db, items, **kw))

    def node_seen(self, node: str, store: str, top: int, now: datetime) -> Any:
        return defer.succeed(ssync.node_seen(self.db, node, store, top, now))

    def own_nodes(self) -> Any:
        return defer.succeed(ssync.own_nodes(self.db))


class FakeSession:
    """One end of a session: what it sends goes through the codec to the other end."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.ended = False
        self.other: FakeSession | None = None
        self.sync: OwnNodeSync | None = None
        self.sent: list[Any] = []
        #: Stanzas sent before the other end's session started (as a transport would hold them).
        self.held: list[Any] | None = []

    def sendStanza(self, stanza: Any) -> None:
        if self.ended:
            raise RuntimeError("ended")
        if self.held is not None:
            self.held.append(stanza)
            return
        self.sent.append(stanza)
        assert self.other is not None and self.other.sync is not None
        element = parse(serialize(stanza.to_element()))
        cls = SYNC_STANZAS.get(element.tag) or ErrorStanza
        self.other.sync.stanza(self.other, cls.from_element(element))

    sendAnswer = sendStanza

    def address(self) -> Any:
        return None


class FakeSessions:
    idle_timeout = 300.0

    def __init__(self) -> None:
        self.dialled: list[str] = []
        self.fail = False

    async def sessionFor(self, peer: str, node: Any) -> Any:
        self.dialled.append(node.name)
        if self.fail:
            raise ConnectionRefusedError("no")
        return None


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeRecord:
    def __init__(self, *names: str) -> None:
        self.nodes = [FakeNode(n) for n in names]


class Node:
    def __init__(self, clock: task.Clock, name: str) -> None:
        self.store = FakeSyncStore()
        self.sessions = FakeSessions()
        self.applied: list[Any] = []
        self.unlinked: list[str] = []
        self.sync = OwnNodeSync(
            clock, ALICE, name, self.store, self.sessions, None,  # type: ignore[arg-type]
            lambda: T0, on_applied=self.applied.append, on_unlinked=self.unlinked.append,
        )  # fmt: skip
        self.sync.start()


def connect(a: Node, b: Node) -> tuple[FakeSession, FakeSession]:
    sa, sb = FakeSession(ALICE), FakeSession(ALICE)
    sa.other, sb.other = sb, sa
    sa.sync, sb.sync = a.sync, b.sync
    a.sync.sessionStarted(sa)  # type: ignore[arg-type]
    b.sync.sessionStarted(sb)  # type: ignore[arg-type]
    for session in (sa, sb):
        held, session.held = session.held or [], None
        for stanza in held:
            session.sendStanza(stanza)
    return sa, sb


class OwnNodeSyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.laptop = Node(self.clock, "laptop")
        self.home = Node(self.clock, "home")
        self.addCleanup(self.laptop.sync.stop)
        self.addCleanup(self.home.sync.stop)

    def test_a_queued_message_reaches_the_other_node_at_once_and_later_ones_on_the_tick(
        self,
    ) -> None:
        first = self.laptop.store.db.queue_outgoing(BOB, "one", T0)
        connect(self.laptop, self.home)
        self.assertEqual([m.id for m in self.home.store.db.pending()], [first.id])
        self.assertTrue(self.home.sync.defers("laptop"))
        self.assertFalse(self.home.sync.defers(None))
        second = self.laptop.store.db.queue_outgoing(BOB, "two", T0)
        self.assertEqual(len(self.home.store.db.pending()), 1)
        self.clock.advance(NOTIFY)
        self.assertEqual({m.id for m in self.home.store.db.pending()}, {first.id, second.id})
        self.assertEqual(self.home.applied[-1].outgoing, [second.id])

    def test_nothing_changed_is_nothing_on_the_wire(self) -> None:
        sa, sb = connect(self.laptop, self.home)
        self.clock.advance(NOTIFY)
        sent = (len(sa.sent), len(sb.sent))
        for _ in range(10):
            self.clock.advance(NOTIFY)
        self.assertEqual((len(sa.sent), len(sb.sent)), sent)
        # ... but a hello now and then keeps the link from the idle timeout
        self.clock.advance(KEEP_LINKED)
        self.assertEqual((len(sa.sent), len(sb.sent)), (sent[0] + 1, sent[1] + 1))
        self.assertEqual({type(s).__name__ for s in sa.sent[sent[0] :]}, {"SyncHello"})

    def test_the_end_of_the_last_link_hands_the_messages_over(self) -> None:
        sa, sb = connect(self.laptop, self.home)
        self.assertTrue(self.home.sync.linked("laptop"))
        sb.ended = True
        self.home.sync.sessionEnded(sb)  # type: ignore[arg-type]
        self.assertEqual(self.home.unlinked, ["laptop"])
        self.assertFalse(self.home.sync.defers("laptop"))
        self.assertFalse(self.home.sync.linked("laptop"))

    def test_who_delivers_what_another_node_queued(self) -> None:
        phone = Node(self.clock, "phone")
        self.addCleanup(phone.sync.stop)
        sa, sb = connect(self.laptop, self.home)
        connect(self.home, phone)
        connect(self.laptop, phone)
        # the origin, while linked
        self.assertTrue(self.home.sync.defers("laptop"))
        self.assertTrue(phone.sync.defers("laptop"))
        self.assertFalse(self.home.sync.defers(None))  # ours: we deliver it
        self.assertFalse(self.home.sync.defers("home"))
        # the origin gone: the linked node with the smallest name ("home" < "phone")
        sa.ended = sb.ended = True
        self.home.sync.sessionEnded(sb)  # type: ignore[arg-type]
        phone_links = [s for s, link in phone.sync.links.items() if link.node == "laptop"]
        for session in phone_links:
            session.ended = True  # type: ignore[attr-defined]
            phone.sync.sessionEnded(session)
        self.assertFalse(self.home.sync.defers("laptop"))
        self.assertTrue(phone.sync.defers("laptop"))
        # a lost device the others never hear from again: same rule
        self.assertFalse(self.home.sync.defers("lost"))
        self.assertTrue(phone.sync.defers("lost"))

    def test_who_delivers_a_file_only_nodes_holding_it_count(self) -> None:
        """
        A file's delivery: the origin while linked; else, among the nodes known to hold its
        bytes, the linked one with the smallest name. A node without them never stops one
        that has them (the agent never lets a node without the bytes deliver at all).
        """
        phone = Node(self.clock, "phone")
        self.addCleanup(phone.sync.stop)
        sa, sb = connect(self.laptop, self.home)
        connect(self.home, phone)
        connect(self.laptop, phone)
        self.assertTrue(phone.sync.defers("laptop", set()))  # the origin holds it, linked
        sa.ended = sb.ended = True
        self.home.sync.sessionEnded(sb)  # type: ignore[arg-type]
        for session in [s for s, link in phone.sync.links.items() if link.node == "laptop"]:
            session.ended = True  # type: ignore[attr-defined]
            phone.sync.sessionEnded(session)
        # home (smaller name, linked) does not hold the bytes: phone, which does, delivers
        self.assertFalse(phone.sync.defers("laptop", set()))
        self.assertTrue(phone.sync.defers("laptop"))  # (a message: home would)
        # home known to hold them too: home delivers, phone leaves it
        self.assertTrue(phone.sync.defers("laptop", {"home"}))
        self.assertFalse(self.home.sync.defers("laptop", {"phone"}))
        # a holder that is not linked does not count
        self.assertFalse(phone.sync.defers("laptop", {"absent"}))

    def test_a_node_with_our_own_name_is_not_synced_with(self) -> None:
        twin = Node(self.clock, "laptop")
        self.addCleanup(twin.sync.stop)
        twin.store.db.queue_outgoing(BOB, "one", T0)
        connect(self.laptop, twin)
        self.assertEqual(self.laptop.store.db.pending(), [])
        self.flushLoggedErrors()

    def test_unsupported_marks_the_link(self) -> None:
        sa, sb = connect(self.laptop, self.home)
        link = self.laptop.sync.links[sa]  # type: ignore[index]
        self.laptop.sync.stanza(sa, ErrorStanza("unsupported", link.hello_id))  # type: ignore[arg-type]
        self.assertTrue(link.unsupported)
        self.assertFalse(self.laptop.sync.linked("home"))

    def test_pull_before_hello_is_bad_request(self) -> None:
        sa, sb = FakeSession(ALICE), FakeSession(ALICE)
        sa.other, sb.other = sb, sa
        sb.sync = self.home.sync
        sa.sync = self.laptop.sync
        sa.held = sb.held = None
        self.home.sync.sessionStarted(sb)  # type: ignore[arg-type]
        self.laptop.sync.links.clear()
        answers: list[Any] = []
        sb.sendAnswer = answers.append  # type: ignore[method-assign]
        self.home.sync.stanza(sb, SyncPull("p1", "0" * 32, 0))  # type: ignore[arg-type]
        self.assertEqual(answers, [ErrorStanza("bad_request", "p1", "sync-hello first")])

    def test_sessions_from_others_are_not_links(self) -> None:
        other = FakeSession(BOB)
        self.home.sync.sessionStarted(other)  # type: ignore[arg-type]
        self.assertEqual(self.home.sync.links, {})
        self.assertFalse(self.home.sync.stanza(other, SyncPull("p1", "0" * 32, 0)))  # type: ignore[arg-type]

    def test_own_nodes_are_dialled_skipping_ours_and_redialled_with_backoff(self) -> None:
        sessions = self.home.sessions
        sessions.fail = True
        self.home.sync.nodesChanged(FakeRecord("home", "laptop"))  # type: ignore[arg-type]
        self.assertEqual(sessions.dialled, ["laptop"])
        self.clock.advance(REDIAL_MIN)
        self.assertEqual(sessions.dialled, ["laptop"] * 2)
        self.clock.advance(REDIAL_MIN)  # the next wait is twice as long
        self.assertEqual(len(sessions.dialled), 2)
        self.clock.advance(REDIAL_MIN * 2)
        self.assertEqual(len(sessions.dialled), 3)
        self.home.sync.nodesChanged(FakeRecord("home"))  # laptop unregistered: no more dials
        self.clock.advance(1000)
        self.assertEqual(len(sessions.dialled), 3)
        self.flushLoggedErrors()

    def test_a_binding_that_is_this_agent_under_another_name_is_not_dialled(self) -> None:
        self.home.sync.is_us = lambda binding: binding.name == "alias"
        self.home.sync.nodesChanged(FakeRecord("home", "alias", "laptop"))  # type: ignore[arg-type]
        self.assertEqual(self.home.sessions.dialled, ["laptop"])

    def test_describe(self) -> None:
        self.laptop.store.db.queue_outgoing(BOB, "one", T0)
        connect(self.laptop, self.home)
        self.home.sync.registered = {"laptop": FakeNode("laptop")}  # type: ignore[dict-item]
        known = ssync.own_nodes(self.home.store.db)
        (entry,) = self.home.sync.describe(known)
        self.assertEqual(
            {k: entry[k] for k in ("node", "registered", "linked", "sync")},
            {"node": "laptop", "registered": True, "linked": True, "sync": "idle"},
        )
        self.assertEqual(entry["their_top"], entry["pulled_to"])
        self.assertGreater(entry["items_merged"], 0)


class AgentsTests(AgentCase):
    """Two nodes of alice, each with its own key, as real agents on 127.0.0.1."""

    @defer.inlineCallbacks
    def nodes(self, crls: Any = None) -> Any:
        self.crls: list[Any] = []
        fetch = lambda: defer.succeed(list(self.crls))  # noqa: E731
        self.laptop_id = self.identity(ALICE, key=certs.new_key("ed25519"))
        self.home_id = self.identity(ALICE, key=certs.new_key("ed25519"))
        laptop, self.laptop_events = yield self.agent(
            ALICE, "laptop", identity=self.laptop_id, crl_fetch=fetch
        )
        home, _ = yield self.agent(ALICE, "home", identity=self.home_id, crl_fetch=fetch)
        self.directory.publish(ALICE, "laptop", laptop)
        self.directory.publish(ALICE, "home", home)
        yield self.until(
            lambda: laptop.own_nodes.linked("home") and home.own_nodes.linked("laptop")
        )
        return laptop, home

    @defer.inlineCallbacks
    def test_own_nodes_link_with_no_pin_and_no_key_change(self) -> Any:
        laptop, home = yield self.nodes()
        sent = yield laptop.send(BOB, "hello", queue_unknown=True)
        yield self.until(lambda: home.store.outgoing(sent["id"]))
        contacts = yield laptop.contacts()
        self.assertEqual([c["identity"] for c in contacts if c["identity"] == ALICE], [])
        self.assertEqual(self.laptop_events.of("key_change"), [])
        devices = yield home.devices()
        self.assertEqual(devices["node"], "home")
        self.assertEqual(
            [(n["node"], n["linked"]) for n in devices["own_nodes"]], [("laptop", True)]
        )

    @defer.inlineCallbacks
    def test_a_revoked_node_is_cut_off_from_sync_at_once(self) -> Any:
        from sixchat.test.test_agent_crl import crl_of

        laptop, home = yield self.nodes()
        self.crls = [crl_of(CA, [self.home_id], number=2)]
        yield laptop.crls.fetchNow()
        yield self.until(lambda: not laptop.own_nodes.linked("home"))
        self.assertEqual(
            [s for s in laptop.sessions.live if s.result.peer.leaf_der == self.home_id.leaf_der],
            [],
        )
        self.assertEqual(len(self.laptop_events.of("revoked")), 1)
        # what the revoked node queues from now on never reaches the laptop: it cannot get back in
        sent = yield home.send(BOB, "from a stolen phone", queue_unknown=True)
        yield self.until(lambda: "laptop" in home.own_nodes._redial)
        stored = yield laptop.store.outgoing(sent["id"])
        self.assertIsNone(stored)
        self.flushLoggedErrors()
