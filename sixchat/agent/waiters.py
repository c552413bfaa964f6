"""
Callers waiting for a message to be final (C{waitDelivered}): each wait ends with the
message's status dict when it is delivered, expired or failed, when its timeout passes, or
with an error when the agent stops — never left hanging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sixchat.agent.errors import AgentError

__all__ = ["DeliveryWaiters", "FINAL_STATES"]

#: States a message never leaves on its own.
FINAL_STATES = ("delivered", "expired", "failed")

Status = dict[str, Any]


class DeliveryWaiters:
    """
    @param status_of: the message's current status dict (fails for an unknown id); what a
        wait whose timeout passed fires with.
    """

    def __init__(
        self, clock: IReactorTime, status_of: Callable[[str], defer.Deferred[Status]]
    ) -> None:
        self.clock = clock
        self.status_of = status_of
        self._waiters: dict[str, list[tuple[defer.Deferred[Status], IDelayedCall]]] = {}

    def wait(self, message_id: str, timeout: float) -> defer.Deferred[Status]:
        """Fires when the message is final, or after C{timeout} seconds (C{<= 0}: at once)."""
        d: defer.Deferred[Status] = defer.Deferred()

        def check(status: Status) -> None:
            if status["state"] in FINAL_STATES or timeout <= 0:
                d.callback(status)
            else:
                timer = self.clock.callLater(timeout, self._timedOut, message_id, d)
                self._waiters.setdefault(message_id, []).append((d, timer))

        self.status_of(message_id).addCallbacks(check, d.errback)
        return d

    def _timedOut(self, message_id: str, d: defer.Deferred[Status]) -> None:
        waiters = self._waiters.get(message_id, [])
        for entry in list(waiters):
            if entry[0] is d:
                waiters.remove(entry)
                self.status_of(message_id).chainDeferred(d)

    def release(self, message_id: str, status: Status | None) -> None:
        """The message is final (C{status}), or (C{None}) the agent stops: end its waits."""
        for d, timer in self._waiters.pop(message_id, []):
            if timer.active():
                timer.cancel()
            if status is None:
                d.errback(AgentError("the agent stopped"))
            else:
                d.callback(status)

    def releaseAll(self) -> None:
        for message_id in list(self._waiters):
            self.release(message_id, None)
