"""
Happy Eyeballs (RFC 8305) across a node's registered contacts: IPv6 first, address families
interleaved, a new attempt every 250 ms (or as soon as the previous one fails), the first
success wins and every other attempt is cancelled.

Generic over what an "attempt" is (here: TCP connect plus the whole E2E handshake), so the
ordering and timing are unit-tested with C{task.Clock} and fake attempts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")

#: RFC 8305 §5 "Connection Attempt Delay": 250 ms recommended.
ATTEMPT_DELAY = 0.25


class AllAttemptsFailed(Exception):
    """Every contact failed; C{failures} holds (contact, failure) in attempt order."""

    def __init__(self, failures: list[tuple[tuple[str, int], Failure]]) -> None:
        last = failures[-1][1].getErrorMessage() if failures else "no contacts"
        super().__init__(f"all {len(failures)} contact(s) failed; last: {last}")
        self.failures = failures


def order_contacts(contacts: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """
    RFC 8305 §4 ordering: keep the registry's order within each family, start with IPv6 and
    alternate families (v6, v4, v6, v4, …). Duplicates are dropped.
    """
    v6: list[tuple[str, int]] = []
    v4: list[tuple[str, int]] = []
    seen = set()
    for host, port in contacts:
        if (host, port) in seen:
            continue
        seen.add((host, port))
        try:
            family = ipaddress.ip_address(host).version
        except ValueError:
            family = 6 if ":" in host else 4
        (v6 if family == 6 else v4).append((host, port))
    ordered: list[tuple[str, int]] = []
    for i in range(max(len(v6), len(v4))):
        ordered.extend(v6[i : i + 1])
        ordered.extend(v4[i : i + 1])
    return ordered


def happy_eyeballs(
    clock: IReactorTime,
    contacts: Sequence[tuple[str, int]],
    attempt: Callable[[str, int], defer.Deferred[T]],
    delay: float = ATTEMPT_DELAY,
) -> defer.Deferred[T]:
    """
    Race C{attempt(host, port)} over C{contacts} in RFC 8305 order.

    Fires with the first successful result; fails with L{AllAttemptsFailed}. Cancelling the
    returned Deferred cancels every attempt in flight.
    """
    order = order_contacts(contacts)
    failures: list[tuple[tuple[str, int], Failure]] = []
    pending: dict[tuple[str, int], defer.Deferred[Any]] = {}
    state: dict[str, Any] = {"next": 0, "timer": None, "done": False}

    def cancel_all() -> None:
        timer: IDelayedCall | None = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        for d in list(pending.values()):
            d.cancel()

    def cancel(_: defer.Deferred[T]) -> None:
        state["done"] = True
        cancel_all()

    result: defer.Deferred[T] = defer.Deferred(cancel)

    def finish_success(value: T, contact: tuple[str, int]) -> None:
        pending.pop(contact, None)
        if state["done"]:
            return
        state["done"] = True
        cancel_all()
        result.callback(value)

    def finish_failure(failure: Failure, contact: tuple[str, int]) -> None:
        pending.pop(contact, None)
        if state["done"]:
            return
        failures.append((contact, failure))
        if state["next"] < len(order):
            start_next()  # a failure starts the next attempt at once (RFC 8305 §5)
        elif not pending:
            state["done"] = True
            timer = state["timer"]
            if timer is not None and timer.active():
                timer.cancel()
            result.errback(AllAttemptsFailed(failures))

    def start_next() -> None:
        timer: IDelayedCall | None = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        state["timer"] = None
        index = state["next"]
        if index >= len(order) or state["done"]:
            return
        state["next"] = index + 1
        contact = order[index]
        d = defer.maybeDeferred(attempt, *contact)
        pending[contact] = d
        d.addCallbacks(
            finish_success, finish_failure, callbackArgs=(contact,), errbackArgs=(contact,)
        )
        if not state["done"] and state["next"] < len(order):
            state["timer"] = clock.callLater(delay, start_next)

    if not order:
        result.errback(AllAttemptsFailed([]))
        return result
    start_next()
    return result
