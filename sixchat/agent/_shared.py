"""
One Deferred's outcome shared by many waiters: a registry connection being opened or a node
being dialled is wanted by every delivery that needs it, and must be made only once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


class Shared:
    """One Deferred's outcome handed to any number of waiters, now or later."""

    def __init__(self, d: defer.Deferred[Any]) -> None:
        self._waiters: list[defer.Deferred[Any]] = []
        self._done = False
        self._result: Any = None
        d.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        self._done, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._give(waiter)

    def _give(self, waiter: defer.Deferred[Any]) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)

    def wait(self) -> defer.Deferred[Any]:
        waiter: defer.Deferred[Any] = defer.Deferred()
        if self._done:
            self._give(waiter)
        else:
            self._waiters.append(waiter)
        return waiter
