"""
The outbox scheduler's rules on a C{task.Clock} with an in-memory store, fake sessions and a
L{MemoryDirectory}: backoff and jitter, the send window, expiry after the TTL, tick
scheduling, per-peer coalescing. No reactor, no sockets, no threads: everything here fires
synchronously, so each test states exactly when something happens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from sixchat.agent import outbox
from sixchat.agent.interfaces import IDirectory
from sixchat.agent.outbox import OutboxScheduler
from sixchat.agent.store import MessageStatus, NodeDelivery, OutgoingMessage
from sixchat.irp.messages import Contact, NodeBinding
from sixchat.protocol import SessionLost, StanzaRefused
from sixchat.stanzas import ErrorStanza, Message, Receipt
from sixchat.testing.directory import MemoryDirectory

BOB = "bob@example.com"
START = 1_800_000_000.0  # 2027: a realistic wall-clock time


class MemoryStore:
    """
    The message store's outbox calls, in memory and synchronous (fired Deferreds): enough
    of its rules (per-node entries, due times, expiry) for the scheduler to be tested.
    """

    is_open = True

    def __init__(self) -> None:
        self.created: dict[str, datetime] = {}
        self.nodes: dict[str, dict[str, NodeDelivery]] = {}
        self.final: dict[str, str] = {}
        self.attempts: list[tuple[str, str, datetime, datetime | None, bool]] = []
        self.expire_calls: list[datetime] = []

    def queue(self, message_id: str, created: datetime) -> None:
        self.created[message_id] = created
        self.nodes[message_id] = {}

    def status(self, message_id: str) -> MessageStatus:
        nodes = tuple(sorted(self.nodes[message_id].values(), key=lambda n: n.node))
        delivered = sum(1 for n in nodes if n.state == "delivered")
        if delivered:
            state = "delivered"
        elif message_id in self.final:
            state = self.final[message_id]
        elif any(n.state == "sent" for n in nodes):
            state = "sent"
        else:
            state = "queued"
        return MessageStatus(
            message_id, BOB, state, self.created[message_id], nodes, delivered, len(nodes)
        )

    def outgoing(self, message_id: str) -> OutgoingMessage:
        return OutgoingMessage(
            message_id, BOB, BOB, "2027-01-15T08:00:00.000Z", f"body of {message_id}",
            None, None, self.created[message_id], self.status(message_id),
        )  # fmt: skip

    def _change(self, message_id: str, node: str, **changes: Any) -> MessageStatus:
        entry = self.nodes[message_id][node]
        self.nodes[message_id][node] = dataclasses.replace(entry, **changes)
        return self.status(message_id)

    # OutboxStore

    def expire(self, now: datetime, ttl: timedelta) -> defer.Deferred[list[MessageStatus]]:
        self.expire_calls.append(now)
        changed = []
        for message_id, created in self.created.items():
            status = self.status(message_id)
            owed = [n.node for n in status.nodes if n.owed]
            if created < now - ttl and (owed or status.state in ("queued", "sent")):
                for node in owed:
                    self._change(message_id, node, state="expired", next_attempt=None)
                self.final[message_id] = "expired"
                changed.append(self.status(message_id))
        return defer.succeed(changed)

    def pending(self, now: datetime | None = None) -> defer.Deferred[list[OutgoingMessage]]:
        return self.pending_for(BOB, now)

    def pending_for(
        self, to: str, now: datetime | None = None
    ) -> defer.Deferred[list[OutgoingMessage]]:
        found = []
        for message_id in self.created:
            message = self.outgoing(message_id)
            if message.state in ("expired", "failed") and not message.status.owed_nodes:
                continue
            if now is None and (message.status.owed_nodes or not message.nodes):
                found.append(message)
            elif now is not None and message.is_due(now):
                found.append(message)
        return defer.succeed(found)

    def add_targets(self, message_id: str, nodes: Iterable[str]) -> defer.Deferred[list[str]]:
        new = [n for n in nodes if n not in self.nodes[message_id]]
        for node in new:
            self.nodes[message_id][node] = NodeDelivery(node, "queued", 0, None, None, None, None)
        return defer.succeed(new)

    def mark_attempt(
        self,
        message_id: str,
        node: str,
        now: datetime,
        next_attempt: datetime | None,
        *,
        sent: bool = True,
    ) -> defer.Deferred[MessageStatus | None]:
        self.attempts.append((message_id, node, now, next_attempt, sent))
        entry = self.nodes[message_id][node]
        return defer.succeed(
            self._change(
                message_id, node, attempts=entry.attempts + 1, last_attempt=now,
                next_attempt=next_attempt, state="sent" if sent else entry.state,
            )
        )  # fmt: skip

    def mark_delivered(
        self, message_id: str, node: str, now: datetime
    ) -> defer.Deferred[MessageStatus | None]:
        return defer.succeed(
            self._change(message_id, node, state="delivered", next_attempt=None, done_at=now)
        )

    def mark_failed(
        self, message_id: str, node: str | None, reason: str, now: datetime
    ) -> defer.Deferred[MessageStatus | None]:
        assert node is not None
        self.final[message_id] = "failed"
        return defer.succeed(
            self._change(
                message_id, node, state="failed", next_attempt=None, done_at=now, reason=reason
            )
        )


class FakeSession:
    """A session whose answers the test gives: each send waits in C{sent} for one."""

    def __init__(self) -> None:
        self.ended = False
        self.sent: list[tuple[Message, defer.Deferred[Receipt]]] = []

    def send(self, message: Message) -> defer.Deferred[Receipt]:
        d: defer.Deferred[Receipt] = defer.Deferred()
        self.sent.append((message, d))
        return d

    def receipt(self, index: int = 0) -> None:
        message, d = self.sent[index]
        d.callback(Receipt(message.id))


class FakeSessions:
    """The session table: one L{FakeSession} per node, or a dial failure while C{down}."""

    def __init__(self) -> None:
        self.down = False
        self.dials: list[tuple[str, str]] = []
        self.sessions: dict[str, FakeSession] = {}

    async def sessionFor(self, peer: str, node: NodeBinding) -> Any:
        self.dials.append((peer, node.name))
        if self.down:
            raise ConnectionRefusedError("refused")
        return self.sessions.setdefault(node.name, FakeSession())

    def incomingFrom(self, peer: str) -> list[Any]:
        return []  # the peer never opened a session to us


def binding(name: str = "phone", cert: bytes = b"cert") -> NodeBinding:
    return NodeBinding(name, (Contact("192.0.2.1", 4605),), cert, "", "")


class SchedulerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.store = MemoryStore()
        self.sessions = FakeSessions()
        self.directory = MemoryDirectory()
        self.statuses: list[MessageStatus] = []
        self.rand = 0.0

    def scheduler(self, **kw: Any) -> OutboxScheduler:
        scheduler = OutboxScheduler(
            self.clock,
            self.store,
            self.sessions,
            kw.pop("directory", self.directory),
            self.statuses.append,
            rand=lambda: self.rand,
            **kw,
        )
        scheduler.start()
        self.addCleanup(scheduler.stop)
        return scheduler

    def queue(self, scheduler: OutboxScheduler, message_id: str = "m1") -> None:
        self.store.queue(message_id, scheduler.now())

    def entry(self, message_id: str = "m1", node: str = "phone") -> NodeDelivery:
        return self.store.nodes[message_id][node]

    def seconds_until(self, when: datetime | None, scheduler: OutboxScheduler) -> float:
        assert when is not None
        return (when - scheduler.now()).total_seconds()

    def fail_five_dials(self, scheduler: OutboxScheduler) -> None:
        """Five failed dials to BOB (sessions down): m1's next try is over 15 s away."""
        for _ in range(4):
            scheduler.kick(BOB)
            self.clock.advance(self.seconds_until(self.entry().next_attempt, scheduler))
        scheduler.kick(BOB)
        self.assertEqual(self.entry().attempts, 5)
        self.assertGreater(self.seconds_until(self.entry().next_attempt, scheduler), 15)

    # backoff and jitter ----------------------------------------------------------------------

    def test_backoff_doubles_with_jitter_and_is_capped(self) -> None:
        self.sessions.down = True
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        delays = []
        for attempt in range(1, 10):
            entry = self.entry()
            self.assertEqual(entry.attempts, attempt)
            delay = self.seconds_until(entry.next_attempt, scheduler)
            delays.append(delay)
            scheduler.schedule(0)
            self.clock.advance(delay)  # due now: the tick retries
        expected = [
            min(outbox.RETRY_MAX, outbox.RETRY_BASE * 2 ** (n - 1)) * 0.5 for n in range(1, 10)
        ]
        self.assertEqual(delays, expected)
        self.assertEqual(max(delays), outbox.RETRY_MAX * 0.5)
        self.assertEqual({a[4] for a in self.store.attempts}, {False})  # never sent

    def test_jitter_bounds(self) -> None:
        scheduler = self.scheduler()
        for attempts in (0, 3, 20):
            base = min(outbox.RETRY_MAX, outbox.RETRY_BASE * 2 ** min(attempts, 16))
            self.rand = 0.0
            self.assertEqual(scheduler.retryDelay(attempts), base * 0.5)
            self.rand = 0.999
            self.assertTrue(base * 0.99 <= scheduler.retryDelay(attempts) < base)

    def test_sent_entry_resent_when_due_after_the_session_is_lost(self) -> None:
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        first = self.sessions.sessions.pop("phone")
        self.assertEqual(len(first.sent), 1)
        entry = self.entry()
        self.assertEqual((entry.state, entry.attempts), ("sent", 1))
        self.assertEqual(self.seconds_until(entry.next_attempt, scheduler), outbox.RETRY_BASE / 2)
        first.ended = True
        first.sent[0][1].errback(SessionLost("gone"))  # no receipt: a tick comes at once
        self.clock.advance(outbox.RETRY_BASE / 2 - 0.01)
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])  # not due yet
        self.clock.advance(outbox.TICK)
        second = self.sessions.sessions["phone"]
        self.assertEqual([m.id for m, _ in second.sent], ["m1"])  # the same stanza again
        self.assertEqual(self.entry().attempts, 2)

    # the send window -------------------------------------------------------------------------

    def test_send_window_bounds_unreceipted_messages(self) -> None:
        self.patch(outbox, "SEND_WINDOW", 4)
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        for i in range(10):
            self.queue(scheduler, f"m{i}")
        scheduler.kick(BOB)
        session = self.sessions.sessions["phone"]
        self.assertEqual(len(session.sent), 4)
        session.receipt(0)
        self.assertEqual(len(session.sent), 5)  # one receipt, one more in flight
        for i in range(1, 10):
            session.receipt(i)
        self.assertEqual([m.id for m, _ in session.sent], [f"m{i}" for i in range(10)])
        self.assertEqual(
            [s.state for s in self.statuses if s.state == "delivered"], ["delivered"] * 10
        )

    def test_ended_session_leaves_the_rest_owed(self) -> None:
        self.patch(outbox, "SEND_WINDOW", 2)
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        for i in range(4):
            self.queue(scheduler, f"m{i}")
        scheduler.kick(BOB)
        session = self.sessions.sessions["phone"]
        session.ended = True
        session.sent[0][1].errback(SessionLost("gone"))
        session.sent[1][1].errback(SessionLost("gone"))
        self.assertEqual(len(session.sent), 2)
        self.assertEqual(self.store.nodes["m2"], {"phone": self.entry("m2")})
        self.assertEqual(self.entry("m2").attempts, 0)  # still owed, never tried

    # receipts and refusals -------------------------------------------------------------------

    def test_refusal_fails_the_message(self) -> None:
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        _, d = self.sessions.sessions["phone"].sent[0]
        d.errback(StanzaRefused(ErrorStanza("too_large")))
        self.assertEqual(self.statuses[-1].state, "failed")
        self.assertEqual(self.entry().reason, "too_large")

    def test_lost_session_ticks_at_once(self) -> None:
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # a kick schedules no tick
        _, d = self.sessions.sessions["phone"].sent[0]
        d.errback(Failure(SessionLost("gone")))
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds())

    # expiry ----------------------------------------------------------------------------------

    def test_expiry_after_ttl_checked_every_period(self) -> None:
        self.sessions.down = True
        self.directory.register(BOB, binding())
        scheduler = self.scheduler(message_ttl=timedelta(hours=1))
        self.queue(scheduler)
        scheduler.schedule(0)
        self.clock.advance(0)
        self.assertEqual(len(self.store.expire_calls), 1)
        self.clock.advance(outbox.EXPIRE_EVERY - outbox.TICK)
        self.assertEqual(len(self.store.expire_calls), 1)  # once per period, not per tick
        self.clock.advance(outbox.TICK)
        self.assertEqual(len(self.store.expire_calls), 2)
        self.assertNotIn("expired", [s.state for s in self.statuses])
        for _ in range(int(3600 / outbox.TICK)):
            self.clock.advance(outbox.TICK)
        self.assertEqual(self.statuses[-1].state, "expired")
        self.assertEqual(self.entry().state, "expired")

    # ticks and kicks -------------------------------------------------------------------------

    def test_schedule_keeps_the_earliest_tick(self) -> None:
        scheduler = self.scheduler()
        scheduler.schedule(5)
        scheduler.schedule(10)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), START + 5)
        scheduler.schedule(1)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), START + 1)

    def test_tick_reschedules_and_stop_cancels(self) -> None:
        scheduler = self.scheduler()
        scheduler.schedule(0)
        self.clock.advance(0)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), START + outbox.TICK)
        scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        scheduler.schedule(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_before_start_or_with_the_store_closed(self) -> None:
        scheduler = OutboxScheduler(
            self.clock, self.store, self.sessions, self.directory, self.statuses.append
        )
        self.queue(scheduler)
        scheduler.kick(BOB)
        scheduler.schedule(0)
        self.assertEqual((self.directory.lookups, self.clock.getDelayedCalls()), (0, []))
        scheduler.start()
        self.store.is_open = False
        scheduler.kick(BOB)
        self.assertEqual(self.directory.lookups, 0)

    def test_kicks_coalesce_per_peer(self) -> None:
        lookups: list[defer.Deferred[Any]] = []
        self.patch(
            self.directory,
            "lookup",
            lambda identity: lookups.append(defer.Deferred()) or lookups[-1],
        )
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        scheduler.kick(BOB)
        scheduler.kick(BOB)
        self.assertEqual(len(lookups), 1)  # one delivery in flight per peer
        lookups[0].callback(self.directory.record(BOB))
        self.assertEqual(len(lookups), 2)  # and once more after it, for the kicks meanwhile
        lookups[1].callback(self.directory.record(BOB))
        self.assertEqual(len(lookups), 2)

    def test_rate_limited_lookup_is_retried_soon_not_at_the_next_tick(self) -> None:
        # The cold-latency outlier of issue 15: a new contact every ~20 ms costs the agent
        # three registry requests each (lookup, watch, unwatch), past the registry's 50 a
        # second; a refused lookup (rate_limited) left the message for the 1 s tick.
        from sixchat.irp.messages import IRPError

        self.directory.register(BOB, binding())
        real_lookup = self.directory.lookup
        refusals = [IRPError("rate_limited", "too many requests", "7")]

        def lookup(identity: str) -> defer.Deferred[Any]:
            if refusals:
                return defer.fail(refusals.pop())
            return real_lookup(identity)

        self.patch(self.directory, "lookup", lookup)
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.sessions.dials, [])  # refused: nothing dialled yet
        self.clock.advance(outbox.RATE_LIMITED_RETRY * 0.5 - 0.001)
        self.assertEqual(self.sessions.dials, [])  # not before the (jittered) delay
        self.clock.advance(0.001)
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])
        self.assertEqual(len(self.sessions.sessions["phone"].sent), 1)
        self.assertLess(outbox.RATE_LIMITED_RETRY, outbox.TICK)

    def test_rate_limited_retry_once_per_peer_and_cancelled_at_stop(self) -> None:
        from sixchat.irp.messages import IRPError

        self.patch(
            self.directory,
            "lookup",
            lambda identity: defer.fail(IRPError("rate_limited", "too many requests", "7")),
        )
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        scheduler.kick(BOB)
        self.assertEqual(len(scheduler._soon), 1)  # one retry pending per peer
        scheduler.stop()
        self.assertEqual(scheduler._soon, {})
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_other_lookup_failures_wait_for_the_tick(self) -> None:
        self.patch(
            self.directory, "lookup", lambda identity: defer.fail(ConnectionRefusedError())
        )
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(scheduler._soon, {})  # an unreachable registry is not hammered

    def test_a_kick_with_what_is_owed_skips_the_read(self) -> None:
        reads: list[str] = []
        real = self.store.pending_for
        self.patch(self.store, "pending_for",
                   lambda to, now=None: reads.append(to) or real(to, now))  # fmt: skip
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        owed = self.successResultOf(real(BOB))
        scheduler.kick(BOB, owed)
        self.assertEqual(reads, [])
        self.assertEqual(len(self.sessions.sessions["phone"].sent), 1)
        # Coalesced with the delivery in flight: the pass after it starts from the newest
        # list given, less what that delivery attempted (m1, whose entry it changed).
        self.queue(scheduler, "m2")
        stale_m1 = self.successResultOf(real(BOB))
        self.queue(scheduler, "m3")
        fresh = self.successResultOf(real(BOB))
        self.assertEqual([m.id for m in fresh], ["m1", "m2", "m3"])
        scheduler.kick(BOB, stale_m1)
        scheduler.kick(BOB, fresh)
        session = self.sessions.sessions["phone"]
        self.assertEqual(len(session.sent), 1)
        session.receipt(0)
        self.assertEqual(reads, [])
        self.assertEqual([m.id for m, _ in session.sent], ["m1", "m2", "m3"])
        # A kick without a list during a delivery: the pass after it reads.
        scheduler.kick(BOB, fresh)  # in flight: m2, m3
        scheduler.kick(BOB)
        scheduler.kick(BOB, fresh)  # a list after a plain kick still reads
        session.receipt(1)
        session.receipt(2)
        self.assertEqual(reads, [BOB])
        self.assertEqual(len(session.sent), 3)  # nothing sent twice

    def test_a_peer_that_registers_gets_its_messages_at_once_whatever_the_backoff(self) -> None:
        # The module's promise ("at once when the directory reports the peer online"): a
        # presence push does not wait for the entries' backoff.
        self.sessions.down = True
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler)
        self.fail_five_dials(scheduler)
        self.sessions.down = False
        scheduler.kick(BOB)  # a plain kick keeps to the backoff
        self.assertEqual(self.sessions.sessions, {})
        scheduler.peerAppeared(BOB)
        self.assertEqual(len(self.sessions.sessions["phone"].sent), 1)
        # During a delivery, the push is kept for the pass after it; an entry in flight
        # is not sent twice.
        self.queue(scheduler, "m2")
        self.store.nodes["m2"]["phone"] = dataclasses.replace(
            self.entry(), attempts=3, next_attempt=scheduler.now() + timedelta(seconds=60),
            state="queued",
        )  # fmt: skip
        scheduler.peerAppeared(BOB)
        self.sessions.sessions["phone"].receipt(0)
        self.assertEqual([m.id for m, _ in self.sessions.sessions["phone"].sent], ["m1", "m2"])

    def test_retry_all_now_sends_what_waits_for_its_backoff_at_the_next_tick(self) -> None:
        # Our network came back (the service calls this on an address change and when the
        # registry answers again after an outage): no entry waits for a stale backoff.
        self.sessions.down = True
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler, "m1")
        self.queue(scheduler, "m2")
        self.fail_five_dials(scheduler)
        self.assertGreater(self.seconds_until(self.entry("m2").next_attempt, scheduler), 15)
        self.sessions.down = False
        scheduler.tick()  # a plain tick keeps to the backoff
        self.assertEqual(self.sessions.sessions, {})
        scheduler.retryAllNow()
        self.clock.advance(0)
        self.assertEqual([m.id for m, _ in self.sessions.sessions["phone"].sent], ["m1", "m2"])
        self.assertFalse(scheduler._retry_all)  # once: later ticks keep to the backoff

    def test_retry_all_now_survives_a_tick_whose_store_read_fails(self) -> None:
        # The store failing the tick's read must not lose the request: the next tick (one
        # TICK later) still treats every owed entry as due, not as its backoff says.
        self.sessions.down = True
        self.directory.register(BOB, binding())
        scheduler = self.scheduler()
        self.queue(scheduler, "m1")
        self.fail_five_dials(scheduler)
        self.sessions.down = False
        reads: list[datetime | None] = []
        pending = self.store.pending

        def failing_once(now: datetime | None = None) -> Any:
            reads.append(now)
            if len(reads) == 1:
                return defer.fail(OSError("disk I/O error"))
            return pending(now)

        self.store.pending = failing_once  # type: ignore[method-assign]
        scheduler.retryAllNow()
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.sessions.sessions, {})
        self.clock.advance(outbox.TICK)
        self.assertEqual(reads, [None, None])  # both reads ask for every owed entry
        self.assertEqual([m.id for m, _ in self.sessions.sessions["phone"].sent], ["m1"])
        self.assertFalse(scheduler._retry_all)

    def test_watch_while_owed_unwatch_when_done(self) -> None:
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.directory.watched, {BOB})  # offline: waits for a push
        self.assertEqual(self.sessions.dials, [])
        self.directory.register(BOB, binding())  # no on_presence here: kick by hand
        scheduler.kick(BOB)
        self.sessions.sessions["phone"].receipt()
        scheduler.kick(BOB)
        self.assertEqual(self.directory.watched, set())

    def test_without_directory_nothing_is_dialled(self) -> None:
        scheduler = self.scheduler(directory=None)
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.sessions.dials, [])

    def test_every_usable_node_is_targeted(self) -> None:
        self.directory.register(BOB, binding("laptop"))
        self.directory.register(BOB, binding("phone"))
        self.directory.register(BOB, binding("tablet", cert=b"refused key"))
        scheduler = self.scheduler(
            usable_nodes=lambda peer, nodes: [n for n in nodes if n.cert != b"refused key"]
        )
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(sorted(self.store.nodes["m1"]), ["laptop", "phone"])
        self.assertEqual(sorted(n for _, n in self.sessions.dials), ["laptop", "phone"])


    # unknown peers (issue 17 item 3) ------------------------------------------------------------

    def test_unknown_peer_reported_once_and_looked_up_every_unknown_retry(self) -> None:
        self.directory = MemoryDirectory(unknown_unregistered=True)
        unknown: list[tuple[str, str, list[str]]] = []
        scheduler = self.scheduler(on_unknown=lambda *a: unknown.append(a))
        self.queue(scheduler, "m1")
        self.queue(scheduler, "m2")
        scheduler.kick(BOB)
        self.assertEqual(unknown, [(BOB, f"{BOB} is not known to the directory", ["m1", "m2"])])
        self.assertTrue(scheduler.isUnknown("bob@EXAMPLE.com"))
        self.assertEqual(self.directory.lookups, 1)
        self.assertEqual(self.directory.watched, {BOB})  # its first registration is pushed
        for _ in range(int(outbox.UNKNOWN_RETRY) - 1):  # ticks and kicks: no lookup
            self.clock.advance(1)
            scheduler.kick(BOB)
        self.assertEqual(self.directory.lookups, 1)
        self.clock.advance(1)
        scheduler.kick(BOB)
        self.assertEqual(self.directory.lookups, 2)
        self.assertEqual(len(unknown), 1)  # reported once while it stays unknown
        self.assertEqual(self.store.attempts, [])
        self.assertEqual(self.sessions.dials, [])
        # It registers: the presence push makes it known and delivers at once.
        self.directory.register(BOB, binding())
        scheduler.peerAppeared(BOB)
        self.assertFalse(scheduler.isUnknown(BOB))
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])
        self.assertEqual(sorted(self.store.nodes), ["m1", "m2"])
        self.assertEqual(len(self.sessions.sessions["phone"].sent), 2)

    def test_known_offline_peer_is_not_unknown(self) -> None:
        unknown: list[Any] = []
        scheduler = self.scheduler(on_unknown=lambda *a: unknown.append(a))
        self.queue(scheduler)
        scheduler.kick(BOB)  # MemoryDirectory() knows everyone: offline, not unknown
        self.assertEqual((unknown, scheduler.isUnknown(BOB)), ([], False))
        scheduler.kick(BOB)
        self.assertEqual(self.directory.lookups, 2)  # no spacing for an offline peer
        # A peer the directory forgets (certificate expired or revoked) becomes unknown.
        self.directory.forget(BOB)
        scheduler.kick(BOB)
        self.assertEqual([u[2] for u in unknown], [["m1"]])
        self.assertTrue(scheduler.isUnknown(BOB))

    def test_unknown_entry_dropped_when_nothing_is_owed(self) -> None:
        self.directory = MemoryDirectory(unknown_unregistered=True)
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertTrue(scheduler.isUnknown(BOB))
        self.store.final["m1"] = "failed"  # e.g. cancelled: nothing owed any more
        self.clock.advance(outbox.UNKNOWN_RETRY)
        scheduler.kick(BOB)
        self.assertFalse(scheduler.isUnknown(BOB))
        self.assertEqual(self.directory.watched, set())


class StaleDirectory(MemoryDirectory):
    """A directory holding an old record of the peer until C{invalidate} (like a cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: Any = None
        self.invalidated: list[str] = []

    def lookup(self, identity: str) -> Any:
        if self.held is not None:
            self.lookups += 1
            return defer.succeed(self.held)
        return super().lookup(identity)

    def invalidate(self, identity: str) -> None:
        self.invalidated.append(identity)
        self.held = None


class MovingSessions(FakeSessions):
    """Dials fail to every address but C{live}."""

    def __init__(self, live: Contact) -> None:
        super().__init__()
        self.live = live

    async def sessionFor(self, peer: str, node: NodeBinding) -> Any:
        self.down = self.live not in node.contacts
        return await super().sessionFor(peer, node)


class MobilityTests(unittest.TestCase):
    """A peer that moved: one failed dial, a fresh lookup, the new address dialled at once."""

    OLD = Contact("2001:db8::1", 4605)
    NEW = Contact("2001:db8::2", 4605)
    scheduler = SchedulerTests.scheduler
    queue = SchedulerTests.queue
    entry = SchedulerTests.entry
    seconds_until = SchedulerTests.seconds_until

    def setUp(self) -> None:
        SchedulerTests.setUp(self)  # type: ignore[arg-type]
        self.directory = StaleDirectory()
        self.sessions = MovingSessions(self.NEW)

    def moved(self) -> None:
        old = NodeBinding("phone", (self.OLD,), b"cert", "", "")
        self.directory.register(BOB, old)
        self.directory.held = self.directory.record(BOB)  # what the agent holds: stale
        self.directory.register(BOB, dataclasses.replace(old, contacts=(self.NEW,)))

    def test_failed_dial_looks_up_again_and_dials_the_new_address_at_once(self) -> None:
        self.moved()
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.directory.invalidated, [BOB])
        self.assertEqual(self.sessions.dials, [(BOB, "phone"), (BOB, "phone")])
        session = self.sessions.sessions["phone"]
        self.assertEqual([m.id for m, _ in session.sent], ["m1"])  # no backoff waited
        session.receipt()
        self.assertEqual(self.statuses[-1].state, "delivered")
        self.assertEqual(self.clock.seconds(), START)

    def test_same_contacts_after_the_lookup_wait_for_the_backoff(self) -> None:
        self.directory.register(BOB, NodeBinding("phone", (self.OLD,), b"cert", "", ""))
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.directory.invalidated, [BOB])  # doubted, looked up: no move
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])  # one dial, not two
        entry = self.entry()
        self.assertEqual((entry.attempts, entry.state), (1, "queued"))
        self.assertEqual(self.seconds_until(entry.next_attempt, scheduler), outbox.RETRY_BASE / 2)

    def test_the_new_address_failing_too_is_not_looked_up_a_third_time(self) -> None:
        self.moved()
        self.sessions.live = Contact("2001:db8::3", 4605)  # nowhere answers
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.directory.invalidated, [BOB])
        self.assertEqual(len(self.sessions.dials), 2)
        self.assertEqual(self.entry().attempts, 1)  # one attempt recorded, then the backoff

    def test_directory_without_invalidate_waits_for_the_backoff(self) -> None:
        self.directory = MemoryDirectory()  # type: ignore[assignment]
        self.directory.register(BOB, NodeBinding("phone", (self.OLD,), b"cert", "", ""))
        scheduler = self.scheduler()
        self.queue(scheduler)
        scheduler.kick(BOB)
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])
        self.assertEqual(self.entry().attempts, 1)


class MemoryDirectoryTests(unittest.TestCase):
    def test_provides_idirectory(self) -> None:
        self.assertTrue(verifyObject(IDirectory, MemoryDirectory()))

    def test_registry_directory_provides_idirectory(self) -> None:
        from sixchat.agent.directory import RegistryDirectory

        directory = RegistryDirectory(task.Clock(), lambda: defer.Deferred())
        self.assertTrue(verifyObject(IDirectory, directory))

    def test_push_only_to_watched_and_identities_normalized(self) -> None:
        directory = MemoryDirectory()
        pushed: list[tuple[str, list[str]]] = []
        directory.on_presence = lambda who, record: pushed.append(
            (who, [n.name for n in record.nodes])
        )
        directory.register(BOB, binding("phone"))
        self.assertEqual(pushed, [])
        directory.watch("bob@EXAMPLE.com")
        directory.register(BOB, binding("laptop"))
        directory.withdraw(BOB, "phone")
        self.assertEqual(pushed, [(BOB, ["phone", "laptop"]), (BOB, ["laptop"])])
        record = self.successResultOf(directory.lookup("bob@Example.COM"))
        self.assertEqual([n.name for n in record.nodes], ["laptop"])
        self.assertEqual(directory.lookups, 1)
        directory.unwatch(BOB)
        directory.withdraw(BOB, "laptop")
        self.assertEqual(len(pushed), 2)
        self.successResultOf(directory.close())
        self.assertTrue(directory.closed)

    def test_unknown_identities(self) -> None:
        from sixchat.agent.errors import UnknownIdentity

        strict = MemoryDirectory(unknown_unregistered=True)
        self.failureResultOf(strict.lookup(BOB), UnknownIdentity)
        strict.register(BOB, binding())
        self.assertEqual(len(self.successResultOf(strict.lookup(BOB)).nodes), 1)
        strict.withdraw(BOB, "phone")  # offline now, still known
        self.assertEqual(self.successResultOf(strict.lookup(BOB)).nodes, [])
        lenient = MemoryDirectory()
        self.assertEqual(self.successResultOf(lenient.lookup(BOB)).nodes, [])
        lenient.forget("bob@EXAMPLE.com")
        failure = self.failureResultOf(lenient.lookup(BOB), UnknownIdentity)
        self.assertEqual(failure.getErrorMessage(), f"{BOB} is not known to the directory")
