"""
The registration keeper on a task.Clock with fake registry connections: refresh timing,
backoff growth and jitter bounds, re-registration after a reconnect, unregistering on stop,
one node per agent (a second agent's binding is detected, shown, never unregistered, and ours
restored); and the contact discovery around it (L{sixchat.irp.contacts}).
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sixchat.irp import contacts as contacts_module
from sixchat.irp import messages as m
from sixchat.irp.client import IRPConnectionLost, IRPTimeout
from sixchat.irp.keeper import (
    AutoContacts,
    RegistrationKeeper,
    local_addresses,
    parse_advertise,
    tcp_probe,
)

CONTACT = m.Contact("2001:db8::5", 4605)


class FakeClient:
    """What the keeper needs of an IRPClientProtocol, driven by the test."""

    def __init__(self) -> None:
        self.registers: list[tuple[str, list[m.Contact], int, defer.Deferred[int]]] = []
        self.unregisters: list[tuple[str, defer.Deferred[None]]] = []
        self.waiters: list[defer.Deferred[Any]] = []
        self.lost: Exception | None = None
        self.closed = False

    def register(self, node: str, contacts: list[m.Contact], expires: int) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        self.registers.append((node, contacts, expires, d))
        return d

    def unregister(self, node: str) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.unregisters.append((node, d))
        return d

    def whenLost(self) -> defer.Deferred[Any]:
        if self.lost is not None:
            return defer.succeed(self.lost)
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiters.append(d)
        return d

    def lose(self, why: Exception | None = None) -> None:
        self.lost = why or IRPConnectionLost("the registry closed the connection")
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(self.lost)
        for _, _, _, d in self.registers:
            if not d.called:
                d.errback(self.lost)

    def close(self) -> defer.Deferred[Any]:
        self.closed = True
        if self.lost is None:
            self.lose(IRPConnectionLost("closed by us"))
        return defer.succeed(self.lost)

    def grant(self, seconds: int) -> None:
        self.registers[-1][3].callback(seconds)


class Harness:
    def __init__(self, rand: float = 0.5, **kw: Any) -> None:
        self.clock = task.Clock()
        self.connects: list[defer.Deferred[Any]] = []
        self.clients: list[FakeClient] = []
        self.contacts: list[m.Contact] = [CONTACT]
        self.states: list[str] = []
        self.keeper = RegistrationKeeper(
            self.clock,
            self.connect,
            "laptop",
            lambda: list(self.contacts),
            rand=lambda: rand,
            **kw,
        )
        self.keeper.on_state = self.states.append

    def connect(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.connects.append(d)
        return d

    def succeed(self) -> FakeClient:
        client = FakeClient()
        self.clients.append(client)
        self.connects[-1].callback(client)
        return client

    def fail(self) -> None:
        self.connects[-1].errback(IRPConnectionLost("connection refused"))

    def next_call_in(self) -> float:
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()


class RefreshTests(unittest.TestCase):
    def test_registers_at_start_and_refreshes_at_two_thirds(self) -> None:
        h = Harness(expires=300)
        h.keeper.startService()
        self.assertEqual(len(h.connects), 1)
        client = h.succeed()
        node, contacts, expires, _ = client.registers[0]
        self.assertEqual((node, contacts, expires), ("laptop", [CONTACT], 300))
        client.grant(90)  # the registry may grant less than asked
        self.assertEqual(h.keeper.state, "registered")
        self.assertEqual(h.keeper.granted, 90)
        h.clock.advance(59.9)
        self.assertEqual(len(client.registers), 1)
        h.clock.advance(0.1)
        self.assertEqual(len(client.registers), 2)
        client.grant(3600)
        h.clock.advance(2399)
        self.assertEqual(len(client.registers), 2)
        h.clock.advance(1)
        self.assertEqual(len(client.registers), 3)
        self.assertEqual(len(h.connects), 1)  # all on one connection

    def test_contacts_are_recomputed_at_each_refresh(self) -> None:
        h = Harness()
        h.keeper.startService()
        client = h.succeed()
        client.grant(300)
        h.contacts = [m.Contact("2001:db8::9", 4605), m.Contact("192.0.2.9", 4605)]
        h.clock.advance(200)
        self.assertEqual(client.registers[1][1], h.contacts)
        client.grant(300)
        self.assertEqual(h.keeper.contacts, h.contacts)

    def test_contacts_provider_may_return_deferred(self) -> None:
        h = Harness()
        pending: defer.Deferred[list[m.Contact]] = defer.Deferred()
        h.keeper.contacts_provider = lambda: pending
        h.keeper.startService()
        client = h.succeed()
        self.assertEqual(client.registers, [])
        pending.callback([CONTACT])
        self.assertEqual(len(client.registers), 1)

    def test_invalid_node_name(self) -> None:
        self.assertRaises(
            ValueError, RegistrationKeeper, task.Clock(), lambda: None, "bad name", lambda: []
        )


class BackoffTests(unittest.TestCase):
    def test_backoff_bounds(self) -> None:
        low = Harness(rand=0.0).keeper
        high = Harness(rand=0.999999).keeper
        for n in range(1, 40):
            base = min(300.0, 2.0 * 2 ** (n - 1))
            self.assertAlmostEqual(low.backoff(n), base / 2)
            self.assertLess(high.backoff(n), base + 1e-3)
            self.assertGreaterEqual(low.backoff(n), 1.0)  # never below min_backoff
            self.assertLessEqual(high.backoff(n), 300.0)  # never above max_backoff
        self.assertEqual([low.backoff(n) for n in (1, 2, 3, 4)], [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(low.backoff(100), 150.0)

    def test_failed_connects_back_off_exponentially(self) -> None:
        h = Harness(rand=0.0)
        h.keeper.startService()
        delays = []
        for _ in range(12):
            h.fail()
            self.assertEqual(h.keeper.state, "waiting")
            delay = h.next_call_in()
            delays.append(delay)
            h.clock.advance(delay)
        self.assertEqual(delays[:5], [1.0, 2.0, 4.0, 8.0, 16.0])
        self.assertEqual(delays[-1], 150.0)  # the cap's lower half
        self.assertEqual(len(h.connects), 13)

    def test_jitter_stays_within_half_to_full_base(self) -> None:
        h = Harness(rand=0.75)
        h.keeper.startService()
        h.fail()
        self.assertAlmostEqual(h.next_call_in(), 1.75)  # base 2: [1, 2]
        h.clock.advance(2)
        h.fail()
        self.assertAlmostEqual(h.next_call_in(), 3.5)  # base 4: [2, 4]

    def test_success_resets_backoff(self) -> None:
        h = Harness(rand=0.0)
        h.keeper.startService()
        for _ in range(4):
            h.fail()
            h.clock.advance(h.next_call_in())
        client = h.succeed()
        client.grant(300)
        self.assertEqual(h.keeper.failures, 0)
        client.lose()
        self.assertEqual(h.next_call_in(), 1.0)


class ReconnectTests(unittest.TestCase):
    def test_reregisters_after_reconnect(self) -> None:
        h = Harness(rand=0.0)
        h.keeper.startService()
        first = h.succeed()
        first.grant(300)
        first.lose(IRPTimeout("the registry did not answer <ping> within 30 s"))
        self.assertEqual(h.keeper.state, "waiting")
        self.assertIsNone(h.keeper.protocol)
        # the refresh timer of the dead connection is gone; only the reconnect is pending
        self.assertEqual(h.next_call_in(), 1.0)
        h.clock.advance(1.0)
        second = h.succeed()
        self.assertEqual(len(second.registers), 1)
        second.grant(300)
        self.assertEqual(h.keeper.state, "registered")
        self.assertEqual(len(first.registers), 1)
        self.assertEqual(
            h.states,
            ["connecting", "registering", "registered", "waiting", "connecting", "registering",
             "registered"],
        )  # fmt: skip

    def test_lost_during_register(self) -> None:
        h = Harness(rand=0.0)
        h.keeper.startService()
        client = h.succeed()
        client.lose()
        self.assertEqual(h.keeper.state, "waiting")
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)

    def test_refusal_retries_on_a_fresh_connection(self) -> None:
        h = Harness(rand=0.0)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h.keeper.startService()
        client = h.succeed()
        client.registers[0][3].errback(m.IRPError("bad_request", "loopback refused", "1"))
        self.assertTrue(client.closed)
        self.assertEqual(h.keeper.state, "waiting")
        self.assertEqual(h.next_call_in(), 1.0)
        h.clock.advance(1.0)
        self.assertEqual(len(h.connects), 2)
        texts = [e.get("log_format", "") for e in events]
        self.assertTrue(any("refused to register" in t for t in texts))

    def test_no_contacts_is_an_error_and_retried(self) -> None:
        h = Harness(rand=0.0)
        h.contacts = []
        h.keeper.startService()
        client = h.succeed()
        self.assertEqual(client.registers, [])
        self.assertEqual(h.keeper.state, "waiting")
        h.contacts = [CONTACT]
        h.clock.advance(h.next_call_in())
        client2 = h.succeed()
        self.assertEqual(len(client2.registers), 1)


class AddressesChangedTests(unittest.TestCase):
    """Mobility: new addresses are registered at once, on a fresh connection, no backoff."""

    def test_registers_again_at_once_on_a_new_connection(self) -> None:
        h = Harness(expires=300)
        h.keeper.startService()
        old = h.succeed()
        old.grant(300)
        old.transport = SimpleNamespace(aborted=False)  # type: ignore[attr-defined]
        old.transport.abortConnection = lambda: setattr(old.transport, "aborted", True)  # type: ignore[attr-defined]
        h.contacts = [m.Contact("2001:db8::6", 4605)]
        h.keeper.addressesChanged()
        self.assertTrue(old.transport.aborted)  # type: ignore[attr-defined]
        self.assertEqual(len(h.connects), 2)  # now, not after a backoff
        new = h.succeed()
        self.assertEqual(new.registers[0][1], h.contacts)
        new.grant(300)
        self.assertEqual((h.keeper.state, h.keeper.failures), ("registered", 0))
        old.lose()  # the old connection's end is not a loss of ours
        self.assertEqual(h.keeper.state, "registered")
        self.assertEqual(h.next_call_in(), 200)  # only the refresh is pending

    def test_a_connect_in_progress_is_replaced(self) -> None:
        h = Harness()
        h.keeper.startService()
        first = h.connects[0]
        h.keeper.addressesChanged()
        self.assertTrue(first.called)  # cancelled, quietly
        self.assertEqual(len(h.connects), 2)
        h.succeed().grant(300)
        self.assertEqual(h.keeper.state, "registered")

    def test_waiting_for_the_backoff_reconnects_now(self) -> None:
        h = Harness()
        h.keeper.startService()
        h.fail()
        self.assertEqual(h.keeper.state, "waiting")
        h.keeper.addressesChanged()
        self.assertEqual(len(h.connects), 2)
        h.succeed().grant(300)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the refresh, no stale retry

    def test_client_without_transport_is_closed(self) -> None:
        h = Harness()
        h.keeper.startService()
        old = h.succeed()
        old.grant(300)
        h.keeper.addressesChanged()
        self.assertTrue(old.closed)

    def test_nothing_when_stopped_or_held_by_another_agent(self) -> None:
        h = Harness()
        h.keeper.addressesChanged()
        self.assertEqual(h.connects, [])
        h.keeper.startService()
        h.succeed().grant(300)
        h.keeper.state = "taken-over"
        h.keeper.addressesChanged()
        self.assertEqual(len(h.connects), 1)


class StopTests(unittest.TestCase):
    def test_unregisters_on_stop(self) -> None:
        h = Harness()
        h.keeper.startService()
        client = h.succeed()
        client.grant(300)
        done = h.keeper.stopService()
        self.assertNoResult(done)
        ((node, d),) = client.unregisters
        self.assertEqual(node, "laptop")
        d.callback(None)
        self.successResultOf(done)
        self.assertTrue(client.closed)
        self.assertEqual(h.keeper.state, "stopped")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_during_first_register_still_unregisters(self) -> None:
        h = Harness()
        h.keeper.startService()
        client = h.succeed()
        self.assertEqual(len(client.registers), 1)  # not answered yet
        done = h.keeper.stopService()
        self.assertEqual([n for n, _ in client.unregisters], ["laptop"])
        client.unregisters[0][1].callback(None)
        self.successResultOf(done)

    def test_stop_is_bounded_by_timeout(self) -> None:
        h = Harness(stop_timeout=5)
        h.keeper.startService()
        client = h.succeed()
        client.grant(300)
        done = h.keeper.stopService()
        h.clock.advance(4.9)
        self.assertNoResult(done)
        h.clock.advance(0.1)
        self.successResultOf(done)
        self.assertTrue(client.closed)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_unregister_refused_still_stops(self) -> None:
        h = Harness()
        h.keeper.startService()
        client = h.succeed()
        client.grant(300)
        done = h.keeper.stopService()
        client.unregisters[0][1].errback(m.IRPError("unauthenticated", "", "2"))
        self.successResultOf(done)

    def test_stop_while_connecting_cancels(self) -> None:
        h = Harness()
        h.keeper.startService()
        done = h.keeper.stopService()
        self.successResultOf(done)
        self.assertTrue(h.connects[0].called)  # cancelled, and the keeper swallowed it
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(len(h.connects), 1)

    def test_stop_while_waiting(self) -> None:
        h = Harness()
        h.keeper.startService()
        h.fail()
        self.successResultOf(h.keeper.stopService())
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_connection_arriving_after_stop_is_closed(self) -> None:
        h = Harness()
        h.keeper.startService()
        pending = h.connects[0]
        h.keeper.running = False  # stopped without cancelling (e.g. a non-cancellable connect)
        client = FakeClient()
        pending.callback(client)
        self.assertTrue(client.closed)
        self.assertEqual(client.registers, [])


# ---------------------------------------------------------------------------------------------
# contacts


ALICE = "alice@example.com"
OTHER = m.Contact("2001:db8::77", 4605)


def binding(*contacts: m.Contact, name: str = "laptop") -> m.NodeBinding:
    return m.NodeBinding(
        name, tuple(contacts), b"cert", "2026-12-07T03:00:00.000Z", "2026-12-07T02:55:00.000Z"
    )


def record(*nodes: m.NodeBinding) -> m.Record:
    return m.Record(ALICE, list(nodes), b"cert", id="1")


class GuardClient(FakeClient):
    """A FakeClient that also answers C{lookup} and takes C{watch} (irp-1 §3.3, §3.4)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[tuple[str, defer.Deferred[m.Record]]] = []
        self.watches: list[tuple[str, Any]] = []

    def lookup(self, identity: str) -> defer.Deferred[m.Record]:
        d: defer.Deferred[m.Record] = defer.Deferred()
        self.lookups.append((identity, d))
        return d

    def watch(self, identity: str, callback: Any) -> defer.Deferred[None]:
        self.watches.append((identity, callback))
        return defer.succeed(None)

    def answer(self, answer: m.Record | Exception) -> None:
        d = self.lookups[-1][1]
        if isinstance(answer, Exception):
            d.errback(answer)
        else:
            d.callback(answer)

    def push(self, *nodes: m.NodeBinding) -> None:
        for _, callback in self.watches:
            callback(m.Record(ALICE, list(nodes)))


class GuardHarness(Harness):
    """A keeper that knows its identity and probes through the test."""

    def __init__(self, **kw: Any) -> None:
        self.probes: list[tuple[list[m.Contact], defer.Deferred[Any]]] = []
        self.conflicts: list[str] = []
        super().__init__(identity=ALICE, probe=self.probe, **kw)
        self.keeper.on_conflict = self.conflicts.append

    def probe(self, contacts: list[m.Contact]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.probes.append((contacts, d))
        return d

    def succeed(self) -> GuardClient:
        client = GuardClient()
        self.clients.append(client)
        self.connects[-1].callback(client)
        return client

    def registered(self) -> GuardClient:
        """Start, find the node free, register: the usual beginning."""
        self.keeper.startService()
        client = self.succeed()
        client.answer(m.IRPError("not_found"))
        client.grant(300)
        assert self.keeper.state == "registered"
        return client


class OneNodeOneAgentTests(unittest.TestCase):
    """Two agents of one identity with one node name (docs/irp.md, "One node, one agent")."""

    def test_looks_before_the_first_register_and_watches_after(self) -> None:
        h = GuardHarness()
        h.keeper.startService()
        client = h.succeed()
        self.assertEqual([i for i, _ in client.lookups], [ALICE])
        self.assertEqual(client.registers, [])  # not before the answer
        client.answer(m.IRPError("not_found"))
        self.assertEqual(len(client.registers), 1)
        client.grant(300)
        self.assertEqual([i for i, _ in client.watches], [ALICE])
        h.clock.advance(200)  # the refresh does not look again
        self.assertEqual((len(client.lookups), len(client.registers)), (1, 2))

    def test_own_stale_binding_is_replaced_without_probing(self) -> None:
        h = GuardHarness()
        h.keeper.startService()
        client = h.succeed()
        client.answer(record(binding(CONTACT), binding(OTHER, name="phone")))
        self.assertEqual(h.probes, [])
        self.assertEqual(len(client.registers), 1)

    def test_live_foreign_binding_is_a_conflict(self) -> None:
        h = GuardHarness()
        h.keeper.startService()
        client = h.succeed()
        client.answer(record(binding(OTHER)))
        ((probed, d),) = h.probes
        self.assertEqual(probed, [OTHER])
        d.callback(OTHER)
        self.assertEqual(client.registers, [])
        self.assertEqual(h.keeper.state, "conflict")
        self.assertTrue(client.closed)
        (line,) = h.conflicts
        self.assertEqual(
            line,
            "node laptop of alice@example.com is already registered by a running agent at "
            "[2001:db8::77]:4605 (a second agent of this identity, e.g. on another data "
            "directory?): stop it, or give this one another --node",
        )
        self.assertEqual(h.keeper.describe()["held_by"], "[2001:db8::77]:4605")
        # it looks again later, and registers once the other agent is gone
        h.clock.advance(h.next_call_in())
        self.assertEqual(h.keeper.state, "conflict")
        again = h.succeed()
        again.answer(record())
        self.assertEqual(len(again.registers), 1)
        again.grant(300)
        self.assertEqual(h.keeper.state, "registered")
        self.assertEqual(len(h.conflicts), 1)

    def test_dead_foreign_binding_is_replaced(self) -> None:
        h = GuardHarness()
        h.keeper.startService()
        client = h.succeed()
        client.answer(record(binding(OTHER)))
        h.probes[0][1].callback(None)  # nobody answers there: a crashed agent's binding
        self.assertEqual(len(client.registers), 1)
        self.assertEqual(h.conflicts, [])

    def test_taken_over_is_shown_and_never_unregistered(self) -> None:
        h = GuardHarness()
        client = h.registered()
        client.push(binding(CONTACT))  # our own register's echo
        self.assertEqual(h.keeper.state, "registered")
        client.push(binding(OTHER))  # another agent registered our node
        self.assertEqual(h.keeper.state, "taken-over")
        self.assertEqual(
            h.keeper.describe(),
            {
                "state": "taken-over",
                "expires": 300,
                "held_by": "[2001:db8::77]:4605",
                "note": "another agent of this identity holds this node name; give one of "
                "them another --node",
                "last_lost": "1970-01-01 00:00:00 UTC: taken over by another agent at "
                "[2001:db8::77]:4605",
            },
        )
        h.clock.advance(10_000)  # no refresh takes it back
        self.assertEqual(len(client.registers), 1)
        h.keeper.stopService()
        self.assertEqual(client.unregisters, [])
        self.assertEqual(len(client.lookups), 1)  # the one at start: no need to look

    def test_stop_unregisters_only_a_binding_still_ours(self) -> None:
        h = GuardHarness()
        client = h.registered()
        d = h.keeper.stopService()
        self.assertEqual(client.unregisters, [])  # not before looking
        client.answer(record(binding(OTHER)))  # taken over without a push reaching us
        self.assertEqual(client.unregisters, [])
        self.assertTrue(d.called)

        h = GuardHarness()
        client = h.registered()
        h.keeper.stopService()
        client.answer(record(binding(CONTACT)))
        self.assertEqual([n for n, _ in client.unregisters], ["laptop"])

        h = GuardHarness()
        client = h.registered()
        h.keeper.stopService()
        client.answer(record(binding(CONTACT, name="phone")))  # ours gone already
        self.assertEqual(client.unregisters, [])

    def test_lookup_failure_on_stop_leaves_the_binding(self) -> None:
        h = GuardHarness()
        client = h.registered()
        d = h.keeper.stopService()
        client.answer(m.IRPError("internal"))
        self.assertEqual(client.unregisters, [])
        self.assertTrue(d.called)

    def test_restores_a_removed_binding(self) -> None:
        h = GuardHarness()
        client = h.registered()
        self.assertNotIn("last_lost", h.keeper.describe())
        h.clock.advance(90)
        client.push()  # unregistered by someone else, or expired
        self.assertEqual(len(client.registers), 2)
        self.assertEqual(h.keeper.state, "registering")
        client.grant(300)
        self.assertEqual(h.keeper.state, "registered")
        # status still says it happened
        self.assertEqual(
            h.keeper.describe(),
            {
                "state": "registered",
                "expires": 300,
                "last_lost": "1970-01-01 00:01:30 UTC: removed at the registry (unregistered "
                "elsewhere, or expired)",
            },
        )

    def test_restores_once_the_other_agent_leaves(self) -> None:
        h = GuardHarness()
        client = h.registered()
        client.push(binding(OTHER))
        self.assertEqual(h.keeper.state, "taken-over")
        client.push(binding(OTHER))  # its refreshes change nothing
        self.assertEqual(len(client.registers), 1)
        client.push()  # it stopped (and unregistered what was its binding)
        self.assertEqual(len(client.registers), 2)
        client.grant(300)
        self.assertEqual(h.keeper.state, "registered")
        self.assertNotIn("held_by", h.keeper.describe())

    def test_taken_over_then_reconnected_waits_without_a_conflict(self) -> None:
        h = GuardHarness()
        client = h.registered()
        client.push(binding(OTHER))
        client.lose()
        self.assertEqual(h.keeper.state, "taken-over")  # still what status should say
        h.clock.advance(h.next_call_in())
        again = h.succeed()
        again.answer(record(binding(OTHER)))
        h.probes[-1][1].callback(OTHER)
        self.assertEqual(again.registers, [])
        self.assertEqual(h.keeper.state, "taken-over")
        self.assertEqual(h.conflicts, [])  # a running agent is not stopped for it


class AdvertiseTests(unittest.SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_advertise("192.0.2.7"), ("192.0.2.7", None))
        self.assertEqual(parse_advertise("192.0.2.7:4700"), ("192.0.2.7", 4700))
        self.assertEqual(parse_advertise("[2001:DB8::5]:4700"), ("2001:db8::5", 4700))
        self.assertEqual(parse_advertise("2001:db8::5"), ("2001:db8::5", None))
        self.assertEqual(parse_advertise("[::ffff:192.0.2.7]"), ("192.0.2.7", None))
        self.assertEqual(parse_advertise("127.0.0.1"), ("127.0.0.1", None))  # for tests
        for bad in ("host.example.com", "192.0.2.7:0", "fe80::1%eth0", "[::1]x", ""):
            self.assertRaises(ValueError, parse_advertise, bad)


class AutoContactsTests(unittest.TestCase):
    def test_advertise_overrides(self) -> None:
        port = IPv6Address("TCP", "::", 4605)
        auto = AutoContacts(None, lambda: port, [("2001:db8::1", None), ("192.0.2.1", 5000)])
        self.assertEqual(
            self.successResultOf(auto()),
            [m.Contact("2001:db8::1", 4605), m.Contact("192.0.2.1", 5000)],
        )

    def test_specific_bind_address_is_the_contact(self) -> None:
        auto = AutoContacts(None, lambda: IPv4Address("TCP", "192.0.2.8", 4711))
        self.assertEqual(self.successResultOf(auto()), [m.Contact("192.0.2.8", 4711)])
        auto = AutoContacts(None, lambda: IPv6Address("TCP", "::ffff:192.0.2.8", 4711))
        self.assertEqual(self.successResultOf(auto()), [m.Contact("192.0.2.8", 4711)])

    def test_port_read_when_asked(self) -> None:
        bound: list[Any] = [None]
        auto = AutoContacts(None, lambda: bound[0], [("192.0.2.1", None)])
        self.failureResultOf(auto(), RuntimeError)
        bound[0] = IPv4Address("TCP", "0.0.0.0", 40001)
        self.assertEqual(self.successResultOf(auto()), [m.Contact("192.0.2.1", 40001)])

    @defer.inlineCallbacks
    def test_wildcard_scans_in_a_thread(self) -> Any:
        from twisted.internet import reactor

        families: list[Any] = []

        def scan(family: Any) -> list[str]:
            families.append(family)
            return ["2001:db8::5", "192.0.2.5"] * 5

        auto = AutoContacts(reactor, lambda: IPv4Address("TCP", "0.0.0.0", 4605), scan=scan)
        contacts = yield auto()
        self.assertEqual(families, [socket.AF_INET])
        self.assertEqual(len(contacts), m.MAX_CONTACTS)
        auto = AutoContacts(reactor, lambda: IPv6Address("TCP", "::", 4605), scan=scan)
        yield auto()
        self.assertEqual(families[-1], None)


class LocalAddressTests(unittest.SynchronousTestCase):
    def test_proc_if_inet6_filtering(self) -> None:
        path = self.mktemp()
        rows = [
            ("20010db8000000000000000000000005", "00", "00"),  # global, permanent: kept
            ("20010db8000000000000000000000006", "00", "01"),  # temporary: dropped
            ("20010db8000000000000000000000007", "00", "20"),  # deprecated: dropped
            ("20010db8000000000000000000000008", "00", "40"),  # tentative: dropped
            ("fe800000000000000000000000000001", "20", "80"),  # link-local: dropped
            ("00000000000000000000000000000001", "10", "80"),  # loopback: dropped
            ("fd000000000000000000000000000009", "00", "80"),  # ULA: kept
        ]
        with open(path, "w") as f:
            for i, (addr, scope, flags) in enumerate(rows):
                f.write(f"{addr} {i + 1:02x} 40 {scope} {flags} eth0\n")
            f.write("garbage line\n")
        self.assertEqual(contacts_module._proc_ipv6(path), ["2001:db8::5", "fd00::9"])
        self.assertEqual(contacts_module._proc_ipv6(path + ".missing"), [])

    def test_local_addresses_are_usable(self) -> None:
        for addr in local_addresses():
            self.assertEqual(m.canonical_host(addr), addr)  # no loopback, link-local, …

    def test_fallbacks_when_linux_sources_are_empty(self) -> None:
        self.patch(contacts_module, "_proc_ipv6", lambda: [])
        self.patch(contacts_module, "_ioctl_ipv4", lambda: [])
        self.patch(
            contacts_module,
            "_route_source",
            lambda family, probe: ["127.0.0.1"] if family == socket.AF_INET else [],
        )
        self.patch(
            contacts_module, "_hostname_addresses", lambda: ["198.51.100.4", "2001:db8::4", "::1"]
        )
        self.assertEqual(local_addresses(), ["2001:db8::4", "198.51.100.4"])
        self.assertEqual(local_addresses(socket.AF_INET), ["198.51.100.4"])

    def test_ioctl_source_runs(self) -> None:
        # whatever this machine has, the probe neither raises nor returns junk
        for addr in contacts_module._ioctl_ipv4():
            socket.inet_aton(addr)
        if os.path.exists("/proc/net/if_inet6"):
            contacts_module._proc_ipv6()


class TCPProbeTests(unittest.TestCase):
    """L{tcp_probe} on real loopback sockets: who answers, and nobody."""

    @defer.inlineCallbacks
    def test_finds_the_listening_contact(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.addCleanup(closed.close)
        live = m.Contact("127.0.0.1", port.getHost().port)
        dead = m.Contact("127.0.0.1", closed.getsockname()[1])
        probe = tcp_probe(reactor, timeout=5)
        found = yield probe([dead, live])
        self.assertEqual(found, live)
        found = yield probe([dead])
        self.assertIsNone(found)


class SeveralRegistriesTests(unittest.TestCase):
    """Registry fail-over: the keeper says which registry of several it registered with,
    and re-registers on the next one that answers after a loss."""

    def test_the_registry_connected_to_is_named(self) -> None:
        from twisted.logger import formatEvent

        from sixchat.irp.discovery import RegistryTarget

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness(registry_name="registry a.example,b.example")
        h.keeper.startService()
        client = h.succeed()
        client.target = RegistryTarget("a.example", 4604, "a.example")  # type: ignore[attr-defined]
        h.clients[-1].grant(300)
        self.assertEqual(h.keeper.describe()["connected"], "a.example:4604")
        client.lose()  # registry a dies
        self.assertNotIn("connected", h.keeper.describe())
        self.assertEqual(h.keeper.state, "waiting")
        h.clock.advance(h.next_call_in())
        other = FakeClient()
        other.target = RegistryTarget("b.example", 4604, "b.example")  # type: ignore[attr-defined]
        h.clients.append(other)
        h.connects[-1].callback(other)
        other.grant(300)
        self.assertEqual(h.keeper.state, "registered")
        self.assertEqual(h.keeper.describe()["connected"], "b.example:4604")
        lines = [formatEvent(e) for e in events if "registered node" in e.get("log_format", "")]
        self.assertEqual(
            lines,
            [
                "registered node laptop at [2001:db8::5]:4605 with registry "
                f"a.example,b.example at {host}:4604 for 300 s"
                for host in ("a.example", "b.example")
            ],
        )

    def test_one_registry_is_not_named_twice(self) -> None:
        from sixchat.irp.discovery import RegistryTarget

        h = Harness(registry_name="registry 127.0.0.1:4604")
        client = FakeClient()
        client.target = RegistryTarget("127.0.0.1", 4604, "127.0.0.1")  # type: ignore[attr-defined]
        self.assertEqual(h.keeper._where(client), "registry 127.0.0.1:4604")
        self.assertEqual(h.keeper._where(FakeClient()), "registry 127.0.0.1:4604")
