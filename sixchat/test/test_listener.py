"""
Tests for L{sixchat.listener.PeerListenerService}'s hold and release: while the user agent's
store opens, a peer that connects waits instead of being refused (real sockets on loopback).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial.unittest import TestCase

from sixchat.listener import PeerListenerService
from sixchat.protocol import connectPeer
from sixchat.test.test_adversarial import until
from sixchat.testing.peers import RecordingObserver, ThrowawayCA

BOB = "bob@example.com"


class _Counting(protocol.Protocol):
    """A raw client: notes whether the connection was made and lost."""

    made = False
    lost = False

    def connectionMade(self) -> None:
        self.made = True

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class HoldTests(TestCase):
    def setUp(self) -> None:
        self.ca = ThrowawayCA()
        self.observer = RecordingObserver()
        self.listener = PeerListenerService(
            reactor, self.ca.config(BOB), "tcp:0:interface=127.0.0.1", observer=self.observer
        )
        self.built: list[Any] = []
        build = self.listener.factory.buildProtocol

        def counting(addr: Any) -> Any:
            proto = build(addr)
            self.built.append(proto)
            return proto

        self.patch(self.listener.factory, "buildProtocol", counting)

    def start(self) -> int:
        self.listener.startService()
        self.addCleanup(self.listener.stopService)
        assert self.listener.port is not None
        return self.listener.port.getHost().port  # type: ignore[attr-defined,no-any-return]

    async def disconnect(self, raw: _Counting) -> None:
        raw.transport.loseConnection()
        await until(lambda: raw.lost, 10, "the raw connection closed")
        await until(lambda: all(p._lost for p in self.built if p), 10, "connections closed")

    def endpoint(self, port: int) -> Any:
        return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)

    async def held_then_released(self, hold_once_bound: bool = False) -> None:
        port = self.start()
        if hold_once_bound:
            self.listener.hold()
        raw = _Counting()
        await endpoints.connectProtocol(self.endpoint(port), raw)
        self.addCleanup(self.disconnect, raw)
        alice = self.ca.config("alice@example.com")
        done: list[object] = []
        handshake = connectPeer(reactor, self.endpoint(port), None, to=BOB, config=alice)
        handshake.addBoth(lambda result: done.append(result) or result)
        # Both connections are made (the kernel's listen queue), none is accepted, and
        # neither is closed, however many turns the reactor takes.
        for _ in range(20):
            await defer.succeed(None)
            await _turn()
        self.assertTrue(raw.made)
        self.assertFalse(raw.lost)
        self.assertEqual(self.built, [])
        self.assertEqual(done, [])  # no session yet, and no failure
        self.listener.release()
        session = await handshake.addTimeout(15, reactor)
        self.addCleanup(session.close)
        self.assertEqual(session.peer, BOB)
        receipt = await session.sendMessage("sent while the store was opening")
        self.assertTrue(receipt.id)
        self.assertEqual([m.body for m in self.observer.messages],
                         ["sent while the store was opening"])  # fmt: skip
        self.assertEqual(len(self.built), 2)  # the raw one too

    def test_held_connections_wait_and_are_taken_on_release(self) -> defer.Deferred[None]:
        self.listener.hold()  # before listening: applied once bound (as the agent does)
        return defer.ensureDeferred(self.held_then_released())

    def test_hold_once_listening(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.held_then_released(hold_once_bound=True))

    def test_a_port_that_cannot_stop_accepting_closes_connections_instead(self) -> None:
        class Port:
            connected = True

        self.listener.port = Port()  # type: ignore[assignment]
        self.listener.hold()
        self.assertTrue(self.listener.factory.paused)
        self.assertIsNone(self.listener.factory.buildProtocol(None))  # type: ignore[arg-type]
        self.listener.release()
        self.assertFalse(self.listener.factory.paused)
        self.assertFalse(self.listener.held)

    def test_release_after_the_port_closed_does_not_restart_it(self) -> defer.Deferred[None]:
        async def run() -> None:
            self.start()
            port = self.listener.port
            self.listener.hold()
            await self.listener.stopService()
            self.listener.port = port
            self.listener.release()  # no startReading on a closed socket
            self.assertFalse(port.connected)  # type: ignore[union-attr]

        return defer.ensureDeferred(run())


def _turn() -> defer.Deferred[None]:
    """One pass of the reactor (a delayed call of 0 s runs on the next iteration)."""
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, d.callback, None)  # type: ignore[attr-defined]
    return d

