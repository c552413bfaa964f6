"""
The outbox when the registry cannot be asked and holds no record of the peer (it is
unreachable, or there is none): what is owed goes over the sessions the peer's nodes opened
to us, one per key, each key a target of its own; on a C{task.Clock} with the scheduler
tests' fakes. And the session table's list of those sessions (open, not revoked).
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from sixchat.agent import outbox
from sixchat.agent.errors import UnknownIdentity
from sixchat.agent.outbox import incoming_node
from sixchat.agent.sessions import SessionTable
from sixchat.irp.messages import IRPError
from sixchat.protocol import SessionLost
from sixchat.test import test_agent_outbox_scheduler as base
from sixchat.test.test_agent_outbox_scheduler import BOB, FakeSession, FakeSessions, binding
from sixchat.testing.directory import MemoryDirectory


def spki(device: bytes) -> bytes:
    return hashlib.sha256(device).digest()


class IncomingSession(FakeSession):
    """A session the peer's node opened to us, with the key its handshake proved."""

    def __init__(self, device: bytes = b"bob's phone") -> None:
        super().__init__()
        self.result = SimpleNamespace(peer=SimpleNamespace(spki_sha256=spki(device)))


class Sessions(FakeSessions):
    """The scheduler tests' session table, plus the peer's sessions to us."""

    def __init__(self) -> None:
        super().__init__()
        self.from_peer: list[IncomingSession] = []

    def incomingFrom(self, peer: str) -> list[Any]:
        assert peer == BOB
        return [s for s in self.from_peer if not s.ended]


class UnreachableDirectory(MemoryDirectory):
    """A directory whose registry cannot be asked (C{error}) while C{down}."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.error: Exception = ConnectionRefusedError("registry unreachable")

    def lookup(self, identity: str) -> Any:
        if self.down:
            self.lookups += 1
            return defer.fail(self.error)
        return super().lookup(identity)


class IncomingTests(unittest.TestCase):
    scheduler = base.SchedulerTests.scheduler
    queue = base.SchedulerTests.queue
    entry = base.SchedulerTests.entry

    def setUp(self) -> None:
        base.SchedulerTests.setUp(self)  # type: ignore[arg-type]
        self.sessions = Sessions()
        self.directory = UnreachableDirectory()

    def test_delivered_over_the_peers_session_when_the_registry_cannot_be_asked(self) -> None:
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.store.nodes["m1"], {})  # nothing reaches bob: still queued
        phone = IncomingSession()
        self.sessions.from_peer.append(phone)
        scheduler.kick(BOB)  # what a session from the peer does
        self.assertEqual([m.id for m, _ in phone.sent], ["m1"])
        node = "key:" + spki(b"bob's phone").hex()[:16]
        self.assertEqual(incoming_node(phone), node)  # type: ignore[arg-type]
        self.assertEqual(list(self.store.nodes["m1"]), [node])
        self.assertEqual((self.entry(node=node).state, self.entry(node=node).attempts), ("sent", 1))
        phone.receipt()
        self.assertEqual(self.entry(node=node).state, "delivered")
        self.assertEqual(self.statuses[-1].state, "delivered")
        self.assertEqual(self.sessions.dials, [])  # nothing was dialled

    def test_one_session_per_key_and_every_key_targeted(self) -> None:
        phone, again, laptop = (
            IncomingSession(b"phone"), IncomingSession(b"phone"), IncomingSession(b"laptop"),
        )  # fmt: skip
        self.sessions.from_peer += [phone, again, laptop]
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual((len(phone.sent), len(again.sent), len(laptop.sent)), (1, 0, 1))
        self.assertEqual(
            sorted(self.store.nodes["m1"]),
            sorted("key:" + spki(d).hex()[:16] for d in (b"phone", b"laptop")),
        )

    def test_a_lost_session_leaves_the_message_owed_until_the_next_one(self) -> None:
        phone = IncomingSession()
        self.sessions.from_peer.append(phone)
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        phone.ended = True
        phone.sent[0][1].errback(SessionLost("gone"))
        self.clock.advance(outbox.TICK * 5)  # due again, but no session reaches bob
        node = incoming_node(phone)  # type: ignore[arg-type]
        self.assertEqual(self.entry(node=node).state, "sent")
        self.assertTrue(self.entry(node=node).owed)
        back = IncomingSession()  # the same device, on a new session
        self.sessions.from_peer.append(back)
        scheduler.kick(BOB)
        self.assertEqual([m.id for m, _ in back.sent], ["m1"])
        back.receipt()
        self.assertEqual(self.entry(node=node).state, "delivered")
        self.assertEqual(self.entry(node=node).attempts, 2)

    def test_without_a_registry_the_peers_sessions_carry_it(self) -> None:
        phone = IncomingSession()
        self.sessions.from_peer.append(phone)
        scheduler = self.scheduler(directory=None)
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual([m.id for m, _ in phone.sent], ["m1"])
        self.assertEqual(self.sessions.dials, [])

    def test_a_registry_that_answers_is_followed(self) -> None:
        phone = IncomingSession()
        self.sessions.from_peer.append(phone)
        scheduler = self.scheduler()
        self.directory.down = False
        self.directory.register(BOB, binding())  # a record: bob's node is dialled
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(phone.sent, [])
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])
        self.assertEqual(list(self.store.nodes["m1"]), ["phone"])

    def test_unknown_or_rate_limited_is_not_cannot_be_asked(self) -> None:
        phone = IncomingSession()
        self.sessions.from_peer.append(phone)
        for error in (UnknownIdentity("not known"), IRPError("rate_limited", "slow down")):
            self.directory.error = error
            scheduler = self.scheduler()
            self.queue(scheduler)
            scheduler.kick(BOB)
            self.assertEqual(phone.sent, [])
            self.assertEqual(self.store.nodes["m1"], {})
            scheduler.stop()


class Connection:
    def __init__(self, role: str) -> None:
        self.role = role
        self.state = "open"


class TableSession:
    def __init__(self, peer: str, role: str = "responder") -> None:
        self.connection = Connection(role)
        self.result = SimpleNamespace(peer_name=peer)
        self.ended = False


class SessionTableTests(unittest.SynchronousTestCase):
    def test_incoming_from_lists_open_unrevoked_sessions_the_peer_opened(self) -> None:
        table = SessionTable(
            None, None, lambda event: None,  # type: ignore[arg-type]
            clock=task.Clock(), handshake_timeout=10, idle_timeout=60,
        )  # fmt: skip
        open_, ended, closing, revoked, ours, other = (
            TableSession("bob@Example.COM"), TableSession(BOB), TableSession(BOB),
            TableSession(BOB), TableSession(BOB, "initiator"), TableSession("carol@example.com"),
        )  # fmt: skip
        for session in (open_, ended, closing, revoked, ours, other):
            table.add(session)  # type: ignore[arg-type]
        ended.ended = True
        closing.connection.state = "closing"
        table.revoked.add(revoked)  # type: ignore[arg-type]
        self.assertEqual(table.incomingFrom(BOB), [open_])
        self.assertEqual(table.incomingFrom("bob@EXAMPLE.com"), [open_])
        table.remove(open_)  # type: ignore[arg-type]
        self.assertEqual(table.incomingFrom(BOB), [])
