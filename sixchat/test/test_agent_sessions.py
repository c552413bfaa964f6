"""
The session table's mobility rules (L{sixchat.agent.sessions.SessionTable}) with fake
sessions: sessions bound to a vanished local address end at once, and so do sessions and
dials to addresses a peer's node no longer registers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from sixchat.agent.sessions import SessionTable
from sixchat.irp.messages import Contact, NodeBinding, Record

BOB = "bob@example.com"
OLD = "2001:db8::1"
NEW = "2001:db8::2"
PEER_OLD = Contact("2001:db8::b1", 4605)
PEER_NEW = Contact("2001:db8::b2", 4605)


class FakeSession:
    def __init__(self, local: str, remote: Contact, role: str = "initiator") -> None:
        self.local, self.remote = local, remote
        self.connection = SimpleNamespace(role=role, state="open")
        self.result = SimpleNamespace(peer_name=BOB)
        self.ended = False
        self.why: str | None = None

    def localAddress(self) -> Any:
        return (IPv6Address if ":" in self.local else IPv4Address)("TCP", self.local, 40000)

    def address(self) -> Any:
        host = self.remote.host
        return (IPv6Address if ":" in host else IPv4Address)("TCP", host, self.remote.port)

    def abandon(self, why: str) -> None:
        self.ended, self.why = True, why


def node(*contacts: Contact) -> NodeBinding:
    return NodeBinding("phone", tuple(contacts), b"cert", "", "")


class MobilityTests(unittest.TestCase):
    def setUp(self) -> None:
        self.table = SessionTable(
            None, None, lambda event: None,  # type: ignore[arg-type]
            clock=task.Clock(), handshake_timeout=5, idle_timeout=300,
        )  # fmt: skip
        self.dials: list[tuple[NodeBinding, defer.Deferred[Any]]] = []

        def dial(peer: str, binding: NodeBinding) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.dials.append((binding, d))
            return d

        self.table._dial = dial  # type: ignore[method-assign]

    def outgoing(self, session: FakeSession) -> None:
        self.table.add(session)  # type: ignore[arg-type]
        self.table.outgoing[(BOB, "phone")] = session  # type: ignore[assignment]

    def test_sessions_bound_to_a_vanished_address_end_at_once(self) -> None:
        gone = FakeSession(OLD, PEER_OLD)
        kept = FakeSession(NEW, PEER_OLD)
        incoming = FakeSession(OLD, PEER_OLD, role="responder")
        mapped = FakeSession("::ffff:192.0.2.7", PEER_OLD, role="responder")
        for session in (gone, kept, incoming, mapped):
            self.table.add(session)  # type: ignore[arg-type]
        ended = self.table.abandonBoundTo(frozenset({OLD, "192.0.2.7"}))
        self.assertEqual(ended, 3)
        self.assertEqual(
            [s.ended for s in (gone, kept, incoming, mapped)], [True, False, True, True]
        )
        self.assertEqual(gone.why, f"our address {OLD} is gone")
        self.assertEqual(self.table.abandonBoundTo(frozenset({OLD})), 0)  # ended already

    def test_a_moved_node_ends_the_session_to_its_old_address(self) -> None:
        session = FakeSession(OLD, PEER_OLD)
        self.outgoing(session)
        self.table.contactsChanged(BOB, Record(BOB, [node(PEER_OLD, PEER_NEW)]))
        self.assertFalse(session.ended)  # still registered there
        self.table.contactsChanged(BOB, Record(BOB, []))  # offline is not unreachable
        self.assertFalse(session.ended)
        self.table.contactsChanged("bob@EXAMPLE.com", Record(BOB, [node(PEER_NEW)]))
        self.assertEqual(session.why, f"{BOB} node phone moved")

    def test_a_moved_node_cancels_the_dial_of_its_old_address(self) -> None:
        waiting = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_OLD)))
        [(dialled, d)] = self.dials
        self.assertEqual(dialled.contacts, (PEER_OLD,))
        self.table.contactsChanged(BOB, Record(BOB, [node(PEER_OLD)]))
        self.assertNoResult(waiting)  # same contacts: the dial goes on
        self.table.contactsChanged(BOB, Record(BOB, [node(PEER_NEW)]))
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertEqual(self.table._dialing, {})

    def test_session_to_an_address_no_longer_registered_is_not_reused(self) -> None:
        session = FakeSession(OLD, PEER_OLD)
        self.outgoing(session)
        same = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_OLD)))
        self.assertIs(self.successResultOf(same), session)
        fresh = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_NEW)))
        self.assertTrue(session.ended)
        [(dialled, d)] = self.dials
        self.assertEqual(dialled.contacts, (PEER_NEW,))
        replacement = FakeSession(NEW, PEER_NEW)
        d.callback(replacement)
        self.assertIs(self.successResultOf(fresh), replacement)

    def test_a_dial_of_old_contacts_is_replaced_not_shared(self) -> None:
        old = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_OLD)))
        also_old = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_OLD)))
        self.assertEqual(len(self.dials), 1)  # shared
        new = defer.ensureDeferred(self.table.sessionFor(BOB, node(PEER_NEW)))
        self.assertEqual(len(self.dials), 2)
        self.failureResultOf(old, defer.CancelledError)
        self.failureResultOf(also_old, defer.CancelledError)
        replacement = FakeSession(NEW, PEER_NEW)
        self.dials[1][1].callback(replacement)
        self.assertIs(self.successResultOf(new), replacement)
        self.assertEqual(self.table._dialing, {})
