"""
The registry's bound on queued store work (L{Backlog}): requests whose answer waits for the
store, across all connections of the process.

Each connection's token bucket (irp-1 §6) bounds what one client may ask, but not what
all of them ask together: 1,000 clients each within their 50 requests a second can offer
far more lookups than the store answers, and without a bound every request waits in the
store's queue. Under such an overload the queue, and with it each answer's latency and the
registry's memory, grows for as long as the overload lasts, and every full garbage
collection walks the thousands of queued requests (measured: SQLite registries queueing
several thousand lookups, with full collections of 125-460 ms of CPU; docs/benchmarks.md).

With the bound, a request that arrives while C{limit} requests already wait for the store
is answered at once with C{rate_limited} (irp-1 §2: the spec's error for "too many
requests"; §6 already uses it for the per-connection limit, and clients retry it after a
short pause) and the connection is kept. Requests the store answers without waiting (a
store's lookup cache) are never counted, and a C{ping} is never refused.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["BUSY_TEXT", "Backlog"]

#: The text of the C{rate_limited} error of a refused request.
BUSY_TEXT = "the registry is busy"

_T = TypeVar("_T")


class Backlog:
    """
    Counts the store Deferreds of requests that have not fired yet.

    @param limit: how many may wait at once; L{admit} refuses beyond it.
    @ivar queued: how many wait now.
    @ivar refused: requests refused since the start (for logs and benchmarks).
    @ivar peak: the most that ever waited at once.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the bound on queued requests must be at least 1")
        self.limit = limit
        self.queued = 0
        self.refused = 0
        self.peak = 0

    def admit(self) -> bool:
        """Whether a new request may go to the store now (counts a refusal otherwise)."""
        if self.queued >= self.limit:
            self.refused += 1
            return False
        return True

    def track(self, d: defer.Deferred[_T]) -> defer.Deferred[_T]:
        """Count C{d} until it fires (nothing, if it has fired already); returns C{d}."""
        if d.called:
            return d
        self.enter()
        d.addBoth(self._done)
        return d

    def enter(self) -> None:
        """One more request waits (the caller calls L{leave} exactly once when it is over)."""
        self.queued += 1
        if self.queued > self.peak:
            self.peak = self.queued

    def leave(self) -> None:
        """A request counted by L{enter} is over."""
        self.queued -= 1

    def _done(self, result: Any) -> Any:
        self.queued -= 1
        return result
