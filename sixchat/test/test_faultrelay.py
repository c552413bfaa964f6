"""
The lab's fault-injecting relay (L{sixchat.test.faultrelay}): its timing (L{Pacer}) on a
C{task.Clock}, the relay on loopback TCP, and the C{python -m sixchat.test.faultrelay}
process as the lab runs it (partition and heal by signal). No root needed.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest

from sixchat.test.faultrelay import FaultRelay, Faults, Pacer
from sixchat.test.processes import eventually, spawn


class PacerTests(unittest.TestCase):
    def pacer(self, rolls: list[float] | None = None, **faults: Any) -> Pacer:
        self.clock = task.Clock()
        self.out: list[tuple[float, bytes]] = []
        dice = iter(rolls or [])
        return Pacer(
            self.clock, Faults(**faults), lambda d: self.out.append((self.clock.seconds(), d)),
            lambda: next(dice, 1.0),
        )  # fmt: skip

    def test_nothing_passes_at_once(self) -> None:
        p = self.pacer()
        p.send(b"a")
        self.clock.advance(0)
        self.assertEqual(self.out, [(0, b"a")])

    def test_latency_delays_and_keeps_order(self) -> None:
        p = self.pacer(latency=0.05)
        p.send(b"a")
        self.clock.advance(0.01)
        p.send(b"b")
        self.clock.advance(0.039)
        self.assertEqual(self.out, [])
        self.clock.advance(0.001)
        self.clock.advance(0.01)
        self.assertEqual([d for _, d in self.out], [b"a", b"b"])
        self.assertEqual([round(t, 3) for t, _ in self.out], [0.05, 0.06])

    def test_rate_paces_chunks_back_to_back(self) -> None:
        p = self.pacer(rate=1000)  # 1000 bytes/s
        p.send(b"x" * 100)
        p.send(b"y" * 300)
        self.clock.advance(0.1)
        self.assertEqual([d[:1] for _, d in self.out], [b"x"])
        self.clock.advance(0.2999)
        self.assertEqual(len(self.out), 1)
        self.clock.advance(0.0001)
        self.assertEqual([round(t, 4) for t, _ in self.out], [0.1, 0.4])

    def test_stall_holds_the_direction(self) -> None:
        p = self.pacer(rolls=[0.0, 0.9], stall_prob=0.5, stall=2.0)
        p.send(b"a")  # rolls 0.0 < 0.5: stalls 2 s
        p.send(b"b")  # not stalled itself, but behind a
        self.clock.advance(1.9)
        self.assertEqual(self.out, [])
        self.clock.advance(0.1)
        self.assertEqual([d for _, d in self.out], [b"a", b"b"])

    def test_hold_and_release(self) -> None:
        p = self.pacer(latency=0.1)
        p.send(b"a")
        p.hold()
        p.send(b"b")
        self.clock.advance(10)
        self.assertEqual(self.out, [])
        p.release()
        self.clock.advance(0)
        self.assertEqual([d for _, d in self.out], [b"a", b"b"])

    def test_drain_and_stop(self) -> None:
        p = self.pacer(latency=1)
        drained: list[float] = []
        p.drain(lambda: drained.append(self.clock.seconds()))
        self.assertEqual(drained, [0])  # nothing waited
        p.send(b"a")
        p.drain(lambda: drained.append(self.clock.seconds()))
        self.clock.advance(1)
        self.assertEqual(drained, [0, 1])
        p.send(b"b")
        p.stop()
        self.clock.advance(5)
        self.assertEqual([d for _, d in self.out], [b"a"])

    def test_bad_faults(self) -> None:
        for bad in ({"latency": -1}, {"rate": -5}, {"drop_prob": 1.5}, {"stall_prob": -0.1}):
            with self.assertRaises(ValueError):
                Faults(**bad)


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.lost = defer.Deferred[None]()

    def dataReceived(self, data: bytes) -> None:
        self.got += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class RelayTests(unittest.TestCase):
    """The relay on loopback TCP (real time, kept to tens of milliseconds)."""

    timeout = 30

    @defer.inlineCallbacks
    def relay(self, **faults: Any) -> Any:
        echo = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(echo.stopListening)
        target = ("127.0.0.1", echo.getHost().port)
        self.fault_relay = FaultRelay(reactor, target, Faults(**faults))
        self.said: list[str] = []
        self.fault_relay.say = self.said.append
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.fault_relay.factory()
        )
        self.addCleanup(port.stopListening)
        client = Client()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        self.addCleanup(lambda: client.transport and client.transport.loseConnection())
        return client

    @defer.inlineCallbacks
    def test_relays_both_ways_with_latency(self) -> Any:
        client = yield self.relay(latency=0.05)
        started = reactor.seconds()
        assert client.transport is not None
        client.transport.write(b"hello")
        yield eventually(lambda: client.got == b"hello", 5, "the echo", interval=0.01)
        self.assertGreaterEqual(reactor.seconds() - started, 0.1)  # 50 ms each way

    @defer.inlineCallbacks
    def test_partition_holds_then_heal_delivers_in_order(self) -> Any:
        client = yield self.relay()
        assert client.transport is not None
        client.transport.write(b"one ")
        yield eventually(lambda: client.got == b"one ", 5, "before", interval=0.01)
        self.fault_relay.partition()
        client.transport.write(b"two ")
        client.transport.write(b"three")
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.got, b"one ")  # nothing passes
        self.fault_relay.heal()
        yield eventually(lambda: client.got == b"one two three", 5, "after", interval=0.01)

    @defer.inlineCallbacks
    def test_new_connection_during_a_partition_waits_for_the_heal(self) -> Any:
        client = yield self.relay()
        self.fault_relay.partition()
        second = Client()
        port = self.fault_relay  # the same relay, a second connection
        listening = [link for link in port.links]
        self.assertEqual(len(listening), 1)
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(
                reactor, "127.0.0.1", client.transport.getPeer().port  # type: ignore[union-attr]
            ),
            second,
        )
        assert second.transport is not None
        second.transport.write(b"late")
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((second.got, len(self.fault_relay.waiting)), (b"", 1))
        self.fault_relay.heal()
        yield eventually(lambda: second.got == b"late", 5, "after the heal", interval=0.01)
        second.transport.loseConnection()

    @defer.inlineCallbacks
    def test_a_close_during_the_partition_reaches_the_other_side_after_the_heal(self) -> Any:
        client = yield self.relay()
        assert client.transport is not None
        client.transport.write(b"x")
        yield eventually(lambda: client.got == b"x", 5, "before", interval=0.01)
        [link] = self.fault_relay.links
        self.fault_relay.partition()
        client.transport.write(b"lost")
        client.transport.loseConnection()
        yield client.lost
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(link.closed)  # the echo server has not heard of it
        self.fault_relay.heal()
        self.assertTrue(link.closed)

    @defer.inlineCallbacks
    def test_drop_after_aborts_the_connection(self) -> Any:
        client = yield self.relay(drop_after=15)  # both directions count: 5 out, 5 back
        assert client.transport is not None
        client.transport.write(b"12345")
        yield eventually(lambda: client.got == b"12345", 5, "under the limit", interval=0.01)
        client.transport.write(b"67890")  # 15 bytes passed in total: dropped
        yield client.lost
        self.assertEqual(self.fault_relay.drops, 1)
        self.assertEqual(self.said, ["dropped a connection after 15 bytes"])
        self.assertEqual(client.got, b"12345")  # and nothing of it was relayed


class ProcessTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_the_command_relays_and_partitions_by_signal(self) -> Any:
        echo = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(echo.stopListening)
        route = f"tcp:0:interface=127.0.0.1=127.0.0.1:{echo.getHost().port}"
        proc = spawn("faultrelay", [sys.executable, "-m", "sixchat.test.faultrelay",
                                    "--route", route, "--latency", "10"])  # fmt: skip
        self.addCleanup(proc.terminate)
        match = yield proc.wait(r"relay listening on (\d+) to ")
        client = Client()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(match.group(1))), client
        )
        assert client.transport is not None
        self.addCleanup(client.transport.loseConnection)
        proc.signal("USR1")
        yield proc.wait("partitioned")
        client.transport.write(b"held")
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(client.got, b"")
        proc.signal("USR2")
        yield proc.wait("healed")
        yield eventually(lambda: client.got == b"held", 5, "after the heal", interval=0.02)

    @defer.inlineCallbacks
    def test_bad_arguments_are_one_line(self) -> Any:
        argv = [sys.executable, "-m", "sixchat.test.faultrelay", "--route", "tcp:0=127.0.0.1:9"]
        proc = spawn("faultrelay", [*argv, "--drop-prob", "2"])
        yield proc.ended()
        self.assertIn("faultrelay: drop_prob is a probability: 0 to 1", proc.log)
        self.assertNotIn("Traceback", proc.log)
        self.assertEqual(proc.exit, ("exit", 1))

    @defer.inlineCallbacks
    def test_a_port_in_use_is_one_line(self) -> Any:
        taken = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        argv = [sys.executable, "-m", "sixchat.test.faultrelay"]
        proc = spawn("faultrelay", [*argv, "--route", f"tcp:{port}:interface=127.0.0.1=[::1]:9"])
        yield proc.ended()
        self.assertIn(f"faultrelay: cannot listen on tcp:{port}:interface=127.0.0.1:", proc.log)
        self.assertNotIn("Traceback", proc.log)
        self.assertEqual(proc.exit, ("exit", 1))
