"""
Dead-peer detection for an established session: keep-alive C{ping}s (§8.3) on the injected
clock.

A session whose peer vanished (link down, address gone, partition) gets no TCP error for
minutes: nothing is acknowledged, nothing is refused. L{KeepAlive} notices within a bound
instead. It looks at the session every C{bound / 3} seconds:

  - a record arrived since the last look: the peer is alive (no ping while data flows: a
    look costs one comparison of record counters, and nothing is done per record);
  - nothing arrived and a ping is out since the last look: the peer is dead (C{dead()});
  - nothing arrived: send a ping (C{ping()}), which a live peer answers with a C{pong}.

So a silent peer is pinged after C{bound / 3} to C{2 bound / 3} of silence and declared dead
after C{2 bound / 3} to C{bound} of silence: never later than C{bound}. A live but idle peer
answers each ping and is never cut.

The idle timeout (§9.2) is not changed: idle still means no record received (§11.13), and a
ping counts. So that idle sessions still end, pings stop once no application stanza has been
received for the idle period and nothing of ours awaits an answer (C{waiting()}); the idle
timer then closes the session as before. docs/protocol.md has the reading.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sixchat.session import SessionLost

#: Default bound, in seconds, from a peer's last record to declaring it dead.
KEEPALIVE = 30.0


class PeerUnresponsive(SessionLost):
    """The peer answered no ping within the keep-alive bound: the session is dead."""


class KeepAlive:
    """
    The keep-alive timer of one session.

    @param records: the number of records received so far.
    @param activity: the number of application stanzas (not pings or pongs) received so far.
    @param waiting: whether something of ours awaits an answer (receipts, pongs, queued data).
    @param ping: send one C{ping}.
    @param dead: the peer did not answer in time; end the session.
    """

    def __init__(
        self,
        clock: IReactorTime,
        bound: float,
        idle_timeout: float,
        *,
        records: Callable[[], int],
        activity: Callable[[], int],
        waiting: Callable[[], bool],
        ping: Callable[[], None],
        dead: Callable[[], None],
    ) -> None:
        if bound <= 0:
            raise ValueError("the keep-alive bound must be positive")
        self.clock = clock
        self.bound = bound
        self.step = bound / 3
        self.idle_timeout = idle_timeout
        self._records = records
        self._activity = activity
        self._waiting = waiting
        self._ping = ping
        self._dead = dead
        self._timer: IDelayedCall | None = None
        self._seen = -1
        self._active_seen = -1
        self._active_at = 0.0
        #: A ping is out and nothing was received since it left.
        self.pinged = False
        #: Pings sent (tests, statistics).
        self.pings = 0

    def start(self) -> None:
        self._seen = self._records()
        self._active_seen = self._activity()
        self._active_at = self.clock.seconds()
        self._timer = self.clock.callLater(self.step, self._look)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _look(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        active = self._activity()
        if active != self._active_seen:
            self._active_seen = active
            self._active_at = now
        records = self._records()
        if records != self._seen:
            self._seen = records
            self.pinged = False
        elif self.pinged:
            self._dead()
            return
        elif now - self._active_at < self.idle_timeout or self._waiting():
            self.pinged = True
            self.pings += 1
            self._ping()
        self._timer = self.clock.callLater(self.step, self._look)
