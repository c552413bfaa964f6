"""
The registration keeper on a task.Clock with fake registry connections: refresh timing,
backoff growth and jitter bounds, re-registration after a reconnect, unregistering on stop;
and the contact discovery around it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sixchat.irp import keeper as keeper_module
from sixchat.irp import messages as m
from sixchat.irp.client import IRPConnectionLost, IRPTimeout
from sixchat.irp.keeper import AutoContacts, RegistrationKeeper, local_addresses, parse_advertise

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
        self.assertEqual(keeper_module._proc_ipv6(path), ["2001:db8::5", "fd00::9"])
        self.assertEqual(keeper_module._proc_ipv6(path + ".missing"), [])

    def test_local_addresses_are_usable(self) -> None:
        for addr in local_addresses():
            self.assertEqual(m.canonical_host(addr), addr)  # no loopback, link-local, …

    def test_fallbacks_when_linux_sources_are_empty(self) -> None:
        self.patch(keeper_module, "_proc_ipv6", lambda: [])
        self.patch(keeper_module, "_ioctl_ipv4", lambda: [])
        self.patch(
            keeper_module,
            "_route_source",
            lambda family, probe: ["127.0.0.1"] if family == socket.AF_INET else [],
        )
        self.patch(
            keeper_module, "_hostname_addresses", lambda: ["198.51.100.4", "2001:db8::4", "::1"]
        )
        self.assertEqual(local_addresses(), ["2001:db8::4", "198.51.100.4"])
        self.assertEqual(local_addresses(socket.AF_INET), ["198.51.100.4"])

    def test_ioctl_source_runs(self) -> None:
        # whatever this machine has, the probe neither raises nor returns junk
        for addr in keeper_module._ioctl_ipv4():
            socket.inet_aton(addr)
        if os.path.exists("/proc/net/if_inet6"):
            keeper_module._proc_ipv6()
