"""
A fault-injecting TCP relay for the network lab (L{sixchat.test.netlab}), where the kernel may
have no C{netem}: every connection accepted on a listening port is relayed to a target, and
what passes can be delayed, paced, stalled, cut, or held back entirely (a partition).

    python -m sixchat.test.faultrelay --route tcp6:4606=[fd5c:6c61:6200::2]:4605 \\
        --latency 50 --rate 100000 --stall-prob 0.01 --stall 2000 --drop-prob 0.001

Faults, each per direction of each relayed connection:

  - C{--latency MS}: every chunk arrives MS later (order kept);
  - C{--rate BYTES}: at most BYTES per second (a chunk occupies the link for len/rate);
  - C{--stall-prob P --stall MS}: each chunk, with probability P, holds the direction for MS
    (a burst of loss that TCP recovers from late);
  - C{--drop-prob P}: each chunk, with probability P, aborts the connection (both sides reset:
    loss as a dropped connection); C{--drop-after BYTES}: abort once BYTES passed in total;
  - a B{partition}, switched at run time: C{SIGUSR1} holds everything (bytes in flight and new
    connections, whose target is not even dialled) and C{SIGUSR2} heals (what was held goes
    on, in order, as TCP's retransmissions would deliver it). A connection whose side closes
    during the partition is closed on the other side only after the heal (its held bytes
    dropped: they were lost), as the reset of a real network would arrive.

The relay prints C{relay listening on PORT to TARGET} per route, C{partitioned}, C{healed}
and C{dropped a connection after N bytes}, so tests can wait for them and count. L{Pacer}
(the timing) is unit-tested on a C{task.Clock}; L{FaultRelay} on loopback (test_faultrelay).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sixchat.netaddr import client_endpoint

__all__ = ["FaultRelay", "Faults", "Pacer", "main"]


@dataclass
class Faults:
    """What the relay does to traffic (see the module docstring); defaults: nothing."""

    latency: float = 0.0
    rate: float = 0.0
    stall_prob: float = 0.0
    stall: float = 0.0
    drop_prob: float = 0.0
    drop_after: int = 0

    def __post_init__(self) -> None:
        for name in ("latency", "rate", "stall", "drop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("stall_prob", "drop_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability: 0 to 1")


class Pacer:
    """
    One direction of one connection: C{send(data)} hands C{data} to C{deliver} after the
    latency, the rate's pacing and any stall, in order; L{hold}/L{release} freeze it (a
    partition). Time is C{clock}; chance is C{rand}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        faults: Faults,
        deliver: Callable[[bytes], None],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.faults = faults
        self.deliver = deliver
        self.rand = rand
        self.queue: list[tuple[float, bytes]] = []
        self.held = False
        self._free_at = 0.0  # when the (paced) link is free again
        self._timer: IDelayedCall | None = None
        self._drained: Callable[[], None] | None = None

    def send(self, data: bytes) -> None:
        now = self.clock.seconds()
        f = self.faults
        start = max(now, self._free_at)
        if f.stall_prob and self.rand() < f.stall_prob:
            start += f.stall
        if f.rate:
            start += len(data) / f.rate
        self._free_at = start
        self.queue.append((start + f.latency, data))
        self._schedule()

    def hold(self) -> None:
        self.held = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def release(self) -> None:
        """Heal: what was held goes on at once, in order (its due times have passed)."""
        self.held = False
        self._free_at = max(self._free_at, self.clock.seconds())
        self._schedule()

    def stop(self) -> None:
        self.hold()
        self.queue.clear()
        self._drained = None

    def drain(self, then: Callable[[], None]) -> None:
        """Call C{then} once everything sent so far is delivered (now if nothing waits)."""
        if not self.queue:
            then()
        else:
            self._drained = then

    def _schedule(self) -> None:
        if self.held or not self.queue or (self._timer is not None and self._timer.active()):
            return
        delay = max(0.0, self.queue[0][0] - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self.queue and not self.held and self.queue[0][0] <= now:
            _, data = self.queue.pop(0)
            self.deliver(data)
        if not self.queue and self._drained is not None:
            then, self._drained = self._drained, None
            then()
        self._schedule()


class _Side(protocol.Protocol):
    """One TCP side of a relayed connection; C{link} is the L{_Link} joining both."""

    link: _Link

    def dataReceived(self, data: bytes) -> None:
        self.link.received(self, data)

    def connectionLost(self, reason: Any = None) -> None:
        self.link.lost(self)


class _Link:
    """A relayed connection: the accepted side, the dialled side, a pacer each way."""

    def __init__(self, relay: FaultRelay, inside: _Side) -> None:
        self.relay = relay
        self.inside = inside
        self.outside: _Side | None = None
        self.passed = 0
        self.closed = False
        self.ended_while_held: _Side | None = None
        self.early: list[bytes] = []  # from inside before the target answered
        self.to_outside = relay.pacer(lambda data: self._write(self.outside, data))
        self.to_inside = relay.pacer(lambda data: self._write(self.inside, data))

    def _write(self, side: _Side | None, data: bytes) -> None:
        if side is not None and side.transport is not None and not self.closed:
            side.transport.write(data)

    def connected(self, outside: _Side) -> None:
        self.outside = outside
        if self.closed:
            self._close(outside)
            return
        for data in self.early:
            self.to_outside.send(data)
        self.early.clear()

    def received(self, side: _Side, data: bytes) -> None:
        if self.closed:
            return
        self.passed += len(data)
        f = self.relay.faults
        if (f.drop_after and self.passed >= f.drop_after) or (
            f.drop_prob and self.relay.rand() < f.drop_prob
        ):
            self.relay.drops += 1
            self.relay.say(f"dropped a connection after {self.passed} bytes")
            self.abort()
            return
        if side is self.inside and self.outside is None:
            self.early.append(data)
        else:
            (self.to_outside if side is self.inside else self.to_inside).send(data)

    def lost(self, side: _Side) -> None:
        if self.closed:
            return
        if self.relay.partitioned:
            self.ended_while_held = side  # the other side hears of it after the heal
            return
        # what this side sent before its close still reaches the other side, then the close
        (self.to_outside if side is self.inside else self.to_inside).drain(self.close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.relay.links.discard(self)
        self.to_outside.stop()
        self.to_inside.stop()
        for side in (self.inside, self.outside):
            if side is not None:
                self._close(side)

    def abort(self) -> None:
        for side in (self.inside, self.outside):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()  # type: ignore[attr-defined]
        self.close()

    @staticmethod
    def _close(side: _Side) -> None:
        if side.transport is not None:
            side.transport.loseConnection()

    def hold(self) -> None:
        self.to_outside.hold()
        self.to_inside.hold()

    def release(self) -> None:
        if self.ended_while_held is not None:
            self.close()  # its bytes in flight were lost with the partition
            return
        self.to_outside.release()
        self.to_inside.release()


class FaultRelay:
    """
    Relays connections to C{target} (host, port) with L{Faults}; L{partition} and L{heal}
    switch a partition.
    """

    def __init__(
        self,
        reactor: Any,
        target: tuple[str, int],
        faults: Faults | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.faults = faults or Faults()
        self.rand = rand
        self.partitioned = False
        self.links: set[_Link] = set()
        self.waiting: list[_Link] = []  # accepted during a partition: not dialled yet
        self.drops = 0
        #: Told what the relay did (the command prints it).
        self.say: Callable[[str], None] = lambda line: None

    def pacer(self, deliver: Callable[[bytes], None]) -> Pacer:
        pacer = Pacer(self.reactor, self.faults, deliver, self.rand)
        if self.partitioned:
            pacer.hold()
        return pacer

    def factory(self) -> protocol.Factory:
        relay = self

        class Inside(_Side):
            def connectionMade(self) -> None:
                self.link = _Link(relay, self)
                relay.links.add(self.link)
                if relay.partitioned:
                    relay.waiting.append(self.link)
                else:
                    relay._dial(self.link)

        return protocol.Factory.forProtocol(Inside)

    def _dial(self, link: _Link) -> None:
        def made(side: _Side) -> None:
            side.link = link
            link.connected(side)

        def failed(_: object) -> None:
            link.close()

        endpoint = client_endpoint(self.reactor, *self.target, 10)
        outside = protocol.Factory.forProtocol(_Side)
        d: defer.Deferred[Any] = endpoint.connect(outside)
        d.addCallbacks(made, failed)

    def partition(self) -> None:
        self.partitioned = True
        for link in list(self.links):
            link.hold()

    def heal(self) -> None:
        self.partitioned = False
        waiting, self.waiting = self.waiting, []
        for link in list(self.links):
            link.release()
        for link in waiting:
            if not link.closed:
                self._dial(link)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sixchat.test.faultrelay")
    parser.add_argument(
        "--route",
        action="append",
        required=True,
        metavar="LISTEN=HOST:PORT",
        help="listen on a server endpoint (tcp6:4606) and relay to HOST:PORT ([v6]:port)",
    )
    for name, what in (
        ("latency", "milliseconds added to every chunk"),
        ("rate", "bytes per second, each direction (0: unlimited)"),
        ("stall-prob", "probability that a chunk stalls its direction"),
        ("stall", "milliseconds a stall lasts"),
        ("drop-prob", "probability that a chunk aborts its connection"),
        ("drop-after", "abort each connection after this many bytes (0: never)"),
    ):
        parser.add_argument(f"--{name}", type=float, default=0.0, help=what)
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault dice")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor

    from sixchat.netaddr import parse_hostport

    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        faults = Faults(
            latency=args.latency / 1000, rate=args.rate, stall_prob=args.stall_prob,
            stall=args.stall / 1000, drop_prob=args.drop_prob, drop_after=int(args.drop_after),
        )  # fmt: skip
    except ValueError as e:
        sys.exit(f"faultrelay: {e}")
    rand = random.Random(args.seed).random
    relays: list[FaultRelay] = []

    def switch(signum: int, _: Any) -> None:
        def apply() -> None:
            for relay in relays:
                relay.partition() if signum == signal.SIGUSR1 else relay.heal()
            print("partitioned" if signum == signal.SIGUSR1 else "healed", flush=True)

        reactor.callFromThread(apply)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, switch)
    signal.signal(signal.SIGUSR2, switch)  # before listening: a test may signal at once
    for route in args.route:
        listen, _, target = route.rpartition("=")
        try:
            host, port = parse_hostport(target, 0)
        except ValueError as e:
            sys.exit(f"faultrelay: --route {route!r}: {e}")
        relay = FaultRelay(reactor, (host, port), faults, rand)
        relay.say = lambda line: print(line, flush=True)
        relays.append(relay)
        try:
            server = endpoints.serverFromString(reactor, listen)
        except (ValueError, KeyError) as e:
            sys.exit(f"faultrelay: --route {route!r}: {e}")

        def listening(port_: Any, target: str = target) -> None:
            print(f"relay listening on {port_.getHost().port} to {target}", flush=True)

        failed: list[str] = []
        server.listen(relay.factory()).addCallbacks(listening, lambda f, out=failed: out.append(
            f.getErrorMessage()))  # fmt: skip
        if failed:  # TCP endpoints listen at once
            sys.exit(f"faultrelay: cannot listen on {listen}: {failed[0]}")

    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
