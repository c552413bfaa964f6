"""Happy Eyeballs ordering and timing with task.Clock and fake attempts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from sixchat.agent.dialer import AllAttemptsFailed, happy_eyeballs, order_contacts

V6A, V6B = ("2001:db8::1", 4605), ("2001:db8::2", 4605)
V4A, V4B = ("192.0.2.1", 4605), ("192.0.2.2", 4605)


class OrderTests(unittest.SynchronousTestCase):
    def test_ipv6_first_and_interleaved(self) -> None:
        self.assertEqual(order_contacts([V4A, V4B, V6A, V6B]), [V6A, V4A, V6B, V4B])

    def test_uneven_families_keep_registry_order(self) -> None:
        self.assertEqual(order_contacts([V4A, V6A, V4B]), [V6A, V4A, V4B])

    def test_duplicates_dropped(self) -> None:
        self.assertEqual(order_contacts([V6A, V6A, V4A]), [V6A, V4A])


class Attempts:
    def __init__(self) -> None:
        self.started: list[tuple[tuple[str, int], float]] = []
        self.deferreds: dict[tuple[str, int], defer.Deferred[Any]] = {}
        self.cancelled: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int, clock: task.Clock) -> defer.Deferred[Any]:
        contact = (host, port)
        self.started.append((contact, clock.seconds()))
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.cancelled.append(contact))
        self.deferreds[contact] = d
        return d


class HappyEyeballsTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.attempts = Attempts()

    def race(self, contacts: list[tuple[str, int]]) -> defer.Deferred[Any]:
        return happy_eyeballs(self.clock, contacts, lambda h, p: self.attempts(h, p, self.clock))

    def test_staggered_by_250ms(self) -> None:
        d = self.race([V4A, V6A, V4B])
        self.assertEqual(self.attempts.started, [(V6A, 0.0)])
        self.clock.advance(0.249)
        self.assertEqual(len(self.attempts.started), 1)
        self.clock.advance(0.001)
        self.assertEqual(self.attempts.started[-1], (V4A, 0.25))
        self.clock.advance(0.25)
        self.assertEqual(self.attempts.started[-1], (V4B, 0.5))
        self.assertNoResult(d)

    def test_first_success_wins_and_cancels_the_rest(self) -> None:
        d = self.race([V6A, V4A, V6B])
        self.clock.advance(0.25)
        self.attempts.deferreds[V4A].callback("session via v4")
        self.assertEqual(self.successResultOf(d), "session via v4")
        self.assertEqual(self.attempts.cancelled, [V6A])
        self.clock.advance(10)
        self.assertEqual(len(self.attempts.started), 2)  # no attempt after success

    def test_failure_starts_next_at_once(self) -> None:
        d = self.race([V6A, V4A])
        self.attempts.deferreds[V6A].errback(ConnectionRefusedError())
        self.assertEqual(self.attempts.started, [(V6A, 0.0), (V4A, 0.0)])
        self.attempts.deferreds[V4A].callback("ok")
        self.assertEqual(self.successResultOf(d), "ok")

    def test_all_fail(self) -> None:
        d = self.race([V6A, V4A])
        self.attempts.deferreds[V6A].errback(ConnectionRefusedError("v6"))
        self.attempts.deferreds[V4A].errback(ConnectionRefusedError("v4"))
        failure = self.failureResultOf(d, AllAttemptsFailed)
        self.assertEqual([c for c, _ in failure.value.failures], [V6A, V4A])

    def test_waits_for_slow_attempt_after_last_started(self) -> None:
        d = self.race([V6A, V4A])
        self.clock.advance(0.25)
        self.attempts.deferreds[V4A].errback(ConnectionRefusedError())
        self.assertNoResult(d)  # V6A still in flight
        self.attempts.deferreds[V6A].callback("late v6")
        self.assertEqual(self.successResultOf(d), "late v6")

    def test_no_contacts(self) -> None:
        self.failureResultOf(self.race([]), AllAttemptsFailed)

    def test_cancel_cancels_attempts(self) -> None:
        d = self.race([V6A, V4A])
        self.clock.advance(0.25)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(sorted(self.attempts.cancelled), sorted([V6A, V4A]))
