"""
L{sixchat.irp.client.connect} over several registry addresses (a comma list, or SRV
records): the staggered race on a C{task.Clock} with fake attempts (a refusal moves on at
once, a silent address after C{stagger} seconds, the first connection wins and the others are
closed or cancelled, a refused client certificate ends it all), and the same over real TLS on
127.0.0.1 against fake registries (a dead first address, a silent one, SRV targets checked
against the domain).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, protocol, reactor, task
from twisted.trial import unittest

from sixchat.irp.client import (
    IRPConnectionLost,
    RegistryCertificateError,
    TLSAlertError,
    connectRegistry,
)
from sixchat.irp.client.connect import _first_of
from sixchat.irp.discovery import RegistryTarget
from sixchat.test import certs
from sixchat.test import test_irp_client as client_tests  # its TestCase not run twice
from sixchat.test.test_irp_discovery import FakeResolver, srv

A = RegistryTarget("192.0.2.1", 4604, "192.0.2.1")
B = RegistryTarget("192.0.2.2", 4604, "192.0.2.2")
C = RegistryTarget("192.0.2.3", 4604, "192.0.2.3")


class FakeConnection:
    def __init__(self, target: RegistryTarget) -> None:
        self.target = target
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Race:
    """C{_first_of} over fake attempts the test settles by hand."""

    def __init__(self, *targets: RegistryTarget, stagger: float = 2.0) -> None:
        self.clock = task.Clock()
        self.attempts: dict[RegistryTarget, defer.Deferred[Any]] = {}
        self.cancelled: list[RegistryTarget] = []
        self.result = _first_of(self.clock, list(targets), self.attempt, stagger)

    def attempt(self, target: RegistryTarget) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.cancelled.append(target))
        self.attempts[target] = d
        return d

    def started(self) -> list[RegistryTarget]:
        return list(self.attempts)

    def refuse(self, target: RegistryTarget) -> None:
        self.attempts[target].errback(error.ConnectionRefusedError())

    def connect(self, target: RegistryTarget) -> FakeConnection:
        conn = FakeConnection(target)
        self.attempts[target].callback(conn)
        return conn


class StaggerTests(unittest.TestCase):
    def test_one_address_waits_for_its_own_outcome(self) -> None:
        race = Race(A)
        self.assertEqual(race.started(), [A])
        race.clock.advance(1000)
        self.assertNoResult(race.result)
        self.assertEqual(race.clock.getDelayedCalls(), [])
        race.refuse(A)
        f = self.failureResultOf(race.result, IRPConnectionLost)
        self.assertIn("cannot reach the registry (192.0.2.1:4604)", str(f.value))

    def test_no_address_at_all(self) -> None:
        f = self.failureResultOf(Race().result, IRPConnectionLost)
        self.assertIn("no address to try", str(f.value))

    def test_a_refusal_moves_on_at_once(self) -> None:
        race = Race(A, B, C)
        self.assertEqual(race.started(), [A])
        race.refuse(A)
        self.assertEqual(race.started(), [A, B])  # no waiting for the stagger
        conn = race.connect(B)
        self.assertIs(self.successResultOf(race.result), conn)
        self.assertEqual(race.started(), [A, B])  # C never tried
        self.assertEqual(race.clock.getDelayedCalls(), [])

    def test_a_silent_address_gets_the_stagger_then_both_race(self) -> None:
        race = Race(A, B, stagger=2.0)
        race.clock.advance(1.9)
        self.assertEqual(race.started(), [A])
        race.clock.advance(0.1)
        self.assertEqual(race.started(), [A, B])
        conn = race.connect(B)
        self.assertIs(self.successResultOf(race.result), conn)
        self.assertEqual(race.cancelled, [A])  # the slow one is dropped

    def test_the_first_still_wins_if_it_answers_first(self) -> None:
        race = Race(A, B, C, stagger=2.0)
        race.clock.advance(2.0)
        conn = race.connect(A)
        self.assertIs(self.successResultOf(race.result), conn)
        self.assertEqual(race.cancelled, [B])
        race.clock.advance(10)
        self.assertEqual(race.started(), [A, B])

    def test_a_connection_made_while_cancelled_is_closed(self) -> None:
        clock = task.Clock()
        late = FakeConnection(B)
        attempts: dict[RegistryTarget, defer.Deferred[Any]] = {}

        def attempt(target: RegistryTarget) -> defer.Deferred[Any]:
            # B's connection completes in the very tick it is cancelled
            d: defer.Deferred[Any] = defer.Deferred(
                (lambda d: d.callback(late)) if target is B else None
            )
            attempts[target] = d
            return d

        result = _first_of(clock, [A, B], attempt, 1.0)
        clock.advance(1.0)
        won = FakeConnection(A)
        attempts[A].callback(won)
        self.assertIs(self.successResultOf(result), won)
        self.assertTrue(late.closed)
        self.assertFalse(won.closed)

    def test_every_address_failing_names_each(self) -> None:
        race = Race(A, B, stagger=2.0)
        race.clock.advance(2.0)
        race.refuse(B)
        self.assertNoResult(race.result)  # A is still trying
        race.attempts[A].errback(IRPConnectionLost("connection to the registry lost: reset"))
        f = self.failureResultOf(race.result, IRPConnectionLost)
        text = str(f.value)
        self.assertTrue(text.startswith("cannot reach any registry (192.0.2.2:4604: Connection "
                                        "was refused"), text)  # fmt: skip
        self.assertTrue(text.endswith("; 192.0.2.1:4604: connection to the registry lost: reset)"))

    def test_one_kind_of_failure_everywhere_keeps_its_kind(self) -> None:
        race = Race(A, B)
        race.attempts[A].errback(RegistryCertificateError("bad name"))
        race.attempts[B].errback(RegistryCertificateError("bad name"))
        f = self.failureResultOf(race.result, RegistryCertificateError)
        self.assertIn("cannot reach any registry", str(f.value))

    def test_a_refused_certificate_ends_it_all(self) -> None:
        race = Race(A, B, C, stagger=1.0)
        race.clock.advance(1.0)
        race.attempts[A].errback(TLSAlertError("unknown_ca", 48))
        f = self.failureResultOf(race.result, TLSAlertError)
        self.assertEqual(f.value.alert, "unknown_ca")
        self.assertEqual(race.cancelled, [B])
        self.assertEqual(race.clock.getDelayedCalls(), [])
        self.assertEqual(race.started(), [A, B])

    def test_cancelling_cancels_every_attempt(self) -> None:
        race = Race(A, B, C, stagger=1.0)
        race.clock.advance(1.0)
        race.result.cancel()
        self.failureResultOf(race.result, defer.CancelledError)
        self.assertEqual(race.cancelled, [A, B])
        self.assertEqual(race.clock.getDelayedCalls(), [])
        self.assertEqual(race.started(), [A, B])

    def test_an_attempt_failing_at_once_starts_the_next_at_once(self) -> None:
        clock = task.Clock()
        tried: list[RegistryTarget] = []

        def attempt(target: RegistryTarget) -> defer.Deferred[Any]:
            tried.append(target)
            if target is C:
                return defer.succeed(FakeConnection(target))
            return defer.fail(error.ConnectionRefusedError())

        result = _first_of(clock, [A, B, C], attempt, 2.0)
        self.assertEqual(self.successResultOf(result).target, C)
        self.assertEqual(tried, [A, B, C])
        self.assertEqual(clock.getDelayedCalls(), [])


class SilentServer(protocol.Protocol):
    """Accepts TCP and never speaks: a registry that hangs (TLS never completes)."""


class SeveralRegistriesTLSTests(unittest.TestCase):
    """The real connect against fake registries on 127.0.0.1."""

    startRegistry = client_tests.TLSRegistryTests.startRegistry
    cleanupClient = client_tests.TLSRegistryTests.cleanupClient

    def freePort(self) -> Any:
        p = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        free = p.getHost().port
        return p.stopListening().addCallback(lambda _: free)

    @defer.inlineCallbacks
    def test_dead_first_address_then_the_live_one(self) -> Any:
        port = self.startRegistry()
        dead = yield self.freePort()
        alice = certs.make_identity("alice@example.com", self.ca)
        proto = yield connectRegistry(
            reactor, f"127.0.0.1:{dead},127.0.0.1:{port}", anchors=[self.ca.anchor],
            client_identity=alice,
        )  # fmt: skip
        self.cleanupClient(proto)
        self.assertEqual(proto.target, RegistryTarget("127.0.0.1", port, "127.0.0.1"))
        rtt = yield proto.ping()
        self.assertGreaterEqual(rtt, 0)

    @defer.inlineCallbacks
    def test_a_silent_first_address_costs_the_stagger_only(self) -> Any:
        port = self.startRegistry()
        silent = reactor.listenTCP(
            0, protocol.Factory.forProtocol(SilentServer), interface="127.0.0.1"
        )
        self.addCleanup(silent.stopListening)
        started = reactor.seconds()
        proto = yield connectRegistry(
            reactor, f"127.0.0.1:{silent.getHost().port},127.0.0.1:{port}",
            anchors=[self.ca.anchor], timeout=30, stagger=0.3,
        )  # fmt: skip
        self.cleanupClient(proto)
        self.assertEqual(proto.target.port, port)
        self.assertLess(reactor.seconds() - started, 10)  # far below the 30 s timeout

    @defer.inlineCallbacks
    def test_every_address_dead(self) -> Any:
        self.ca = certs.make_ca()
        one = yield self.freePort()
        two = yield self.freePort()
        e = yield self.assertFailure(
            connectRegistry(reactor, f"127.0.0.1:{one},127.0.0.1:{two}",
                            anchors=[self.ca.anchor], timeout=5),
            IRPConnectionLost,
        )  # fmt: skip
        self.assertIn(f"cannot reach any registry (127.0.0.1:{one}: ", str(e))
        self.assertIn(f"; 127.0.0.1:{two}: ", str(e))

    @defer.inlineCallbacks
    def test_srv_records_with_a_dead_first_target(self) -> Any:
        """Discovery: both targets are checked against the domain, the dead one skipped."""
        port = self.startRegistry(names=("example.com",))
        dead = yield self.freePort()
        resolver = FakeResolver(
            [srv(10, 0, dead, "127.0.0.1"), srv(20, 0, port, "127.0.0.1")]
        )
        alice = certs.make_identity("alice@example.com", self.ca)
        proto = yield connectRegistry(
            reactor, "auto", "alice@example.com", anchors=[self.ca.anchor],
            client_identity=alice, resolver=resolver,
        )  # fmt: skip
        self.cleanupClient(proto)
        self.assertEqual(proto.target, RegistryTarget("127.0.0.1", port, "example.com", "srv"))
        self.assertEqual(resolver.queries, ["_irp._tcp.example.com"])

    @defer.inlineCallbacks
    def test_srv_target_with_the_wrong_certificate_is_refused(self) -> Any:
        port = self.startRegistry(names=("127.0.0.1",))  # not the domain's name
        resolver = FakeResolver([srv(10, 0, port, "127.0.0.1")])
        e = yield self.assertFailure(
            connectRegistry(reactor, "auto", "alice@example.com", anchors=[self.ca.anchor],
                            resolver=resolver),
            RegistryCertificateError,
        )  # fmt: skip
        self.assertIn("not valid for the name", str(e))

