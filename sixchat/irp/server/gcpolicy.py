"""
The registry process's garbage-collection policy (C{twistd sixchat-irp --gc-interval}).

CPython frees almost everything by reference counting; its cycle collector exists for the
rest, and it stops the whole process while it runs. Its young collections are short, but a
collection of the oldest generation walks every tracked object of the process: every
module, class and function loaded at start-up, and every object of every open connection.
The collector starts one whenever the objects that survived two young collections have
grown by a quarter, and a busy registry makes survivors all the time: the lookups in flight
(their Deferreds, requests and the store's rows) are alive at every young collection and get
promoted. Measured with 1,000 TLS clients at 5,000 lookups/s (docs/benchmarks.md): about one
full collection a second, each stalling the reactor for 10-40 ms of CPU (more when the
machine is busy), which is the registry's latency tail.

L{CollectorPolicy} replaces that with a deliberate policy:

  - B{start-up state is frozen} (C{gc.freeze()}) once the registry is ready: modules,
    classes, the CA, the trust store, the store's connection. They live as long as the
    process and are never scanned again, which halves the cost of a full collection at
    1,000 connections (about 41,000 objects out of 68,000);
  - B{no automatic full collections}: the oldest generation's threshold is set out of
    reach, while the young generations keep Python's thresholds, so young cycles are
    reclaimed as usual;
  - B{a full collection every C{interval} seconds} from the reactor instead (default 1),
    after which B{what survived it is frozen too}: so each periodic collection walks only
    the objects that became old since the previous one (requests in flight, connections
    opened meanwhile), not every open connection again. Before this, each periodic
    collection walked all of them: about 75 objects per TLS connection, 30 ms of CPU at
    1,000 connections on the slower days of docs/benchmarks.md, more than 50 ms of wall
    clock on a loaded machine;
  - B{a complete collection} (everything unfrozen, walked once, frozen again) when the
    frozen objects have grown to C{growth} times (default 2) their number after the last
    complete one (or the start-up freeze), and by at least C{min_growth} objects (default
    100,000, about 1,300 connections). Frozen objects that later become cyclic garbage are
    reclaimed only then, so this bounds them: at most C{growth - 1} times the live objects
    of the last complete collection (or C{min_growth}), the rule of a collector that runs
    when the heap has doubled. In a registry whose connection count is steady the frozen set does
    not grow (what dies is freed by reference counting, see below), and complete
    collections happen only while it grows: a handful of times on the way to its
    connection count (each doubling), each as long as a full collection was before.

Memory stays bounded because the registry's garbage is almost all reclaimed by reference
counting: requests and answers form no cycles, nor do store calls
(L{sixchat._sqlite.DatabaseThread}), and a closed connection leaves none either
(L{sixchat.irp.server.protocol.IRPServerProtocol.connectionLost} unregisters itself from its
transport, which would otherwise keep connection, TLS wrapper and socket in one cycle).
What cycles remain (failures, young cycles promoted by chance) wait at most C{interval}
seconds if they become garbage before the next periodic collection, and otherwise until
the next complete one. Stopping the service restores Python's thresholds and unfreezes.

The policy is process-wide, so library code never applies it: C{twistd sixchat-irp} starts
it with the registry (L{sixchat.irp.tap}), and C{--gc-interval 0} leaves Python's collector
as it is. It is written for CPython 3.11-3.13's generational collector; on an interpreter
without C{gc.freeze} it does nothing.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["DEFAULT_GROWTH", "DEFAULT_INTERVAL", "MIN_GROWTH_OBJECTS", "CollectorPolicy"]

#: Seconds between the policy's full collections.
DEFAULT_INTERVAL = 1.0
#: A threshold for the oldest generation that is never reached (a C int).
NEVER = 2**31 - 1
#: A complete collection when the frozen objects have grown to this many times their
#: number after the last one ...
DEFAULT_GROWTH = 2.0
#: ... and by at least this many objects (about 1,300 TLS connections of the registry).
MIN_GROWTH_OBJECTS = 100_000


class CollectorPolicy(service.Service):
    """
    See the module docstring. C{startService} applies the thresholds and starts the
    periodic full collection; L{freeze} moves what exists now out of the collector's way
    (call it once start-up is over); C{stopService} undoes all of it.

    @param clock: the reactor's C{IReactorTime}; the collections run on it.
    @param interval: seconds between full collections.
    @param growth: a complete collection when the frozen objects have grown to this many
        times their number after the last one (more than 1) ...
    @param min_growth: ... and by at least this many.
    @param gc_module: the C{gc} module (tests pass a fake).
    @param timer: a clock for the pause statistics (C{time.perf_counter}).

    @ivar collections: full collections run by the policy.
    @ivar collected: unreachable objects they found.
    @ivar longest: the longest of their pauses, seconds.
    @ivar complete: how many of them were complete collections (everything unfrozen).
    @ivar longest_complete: the longest pause of those, seconds.
    """

    name = "gc-policy"
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
        *,
        growth: float = DEFAULT_GROWTH,
        min_growth: int = MIN_GROWTH_OBJECTS,
        gc_module: Any = gc,
        timer: Any = time.perf_counter,
    ) -> None:
        if interval <= 0:
            raise ValueError("the full-collection interval must be positive")
        if not growth > 1:
            raise ValueError("the growth before a complete collection must be more than 1")
        self.clock = clock
        self.interval = interval
        self.growth = growth
        self.min_growth = min_growth
        self._gc = gc_module
        self._timer = timer
        self._saved: tuple[int, int, int] | None = None
        self._loop: task.LoopingCall | None = None
        self._frozen = False
        self._base = 0  # frozen objects after the last complete collection
        self.collections = 0
        self.collected = 0
        self.longest = 0.0
        self.complete = 0
        self.longest_complete = 0.0

    @property
    def supported(self) -> bool:
        """Whether this interpreter has the generational collector the policy is for."""
        return hasattr(self._gc, "freeze") and hasattr(self._gc, "set_threshold")

    def startService(self) -> None:
        super().startService()
        if not self.supported:
            return
        g = self._gc
        self._saved = g.get_threshold()
        young, middle, _old = self._saved
        g.set_threshold(young, middle, NEVER)
        loop = task.LoopingCall(self.collect)
        loop.clock = self.clock
        loop.start(self.interval, now=False)
        self._loop = loop

    def freeze(self) -> None:
        """Collect once, then keep everything alive now out of every later collection."""
        if not self.running or not self.supported:
            return
        self.collect()
        self._gc.freeze()
        self._frozen = True
        self._base = self._gc.get_freeze_count()
        self.log.info(
            "garbage collection: {frozen} start-up objects frozen, a full collection "
            "every {interval:g} s (--gc-interval)",
            frozen=self._gc.get_freeze_count(),
            interval=self.interval,
        )

    def collect(self) -> None:
        """
        One full collection (the policy's timer calls this); once L{freeze} was called,
        its survivors are frozen, and it is a complete one when the frozen set has grown
        C{growth} times.
        """
        g = self._gc
        start = self._timer()
        complete = False
        if self._frozen:
            frozen = g.get_freeze_count()
            complete = frozen > max(self.growth * self._base, self._base + self.min_growth)
        if complete:
            g.unfreeze()
        found = g.collect()
        if self._frozen:
            g.freeze()
            if complete:
                self._base = g.get_freeze_count()
        pause = self._timer() - start
        self.collections += 1
        self.collected += found
        self.longest = max(self.longest, pause)
        if complete:
            self.complete += 1
            self.longest_complete = max(self.longest_complete, pause)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._saved is not None:
            self._gc.set_threshold(*self._saved)
            self._saved = None
        if self._frozen:
            self._gc.unfreeze()
            self._frozen = False
            self._base = 0
