"""
The outbox and deliveries that take long (a file: its offer's Deferred fires only with the
receipt, after the whole file was streamed), on a C{task.Clock}: an entry in flight is not
due again while its transfer goes on, however long that is and whatever kicks, ticks and
presence pushes come meanwhile; it is due again only once the transfer ends without a
receipt (the session lost), and never after a receipt or a refusal (a reject or an error).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sixchat.agent import outbox
from sixchat.agent.store import OutgoingMessage
from sixchat.protocol import SessionLost, StanzaRefused
from sixchat.stanzas import ErrorStanza, Receipt
from sixchat.test import test_agent_outbox_scheduler as base
from sixchat.test.test_agent_outbox_scheduler import BOB, binding


class SlowFiles:
    """
    The outbox's C{deliver} for files (L{sixchat.agent.files.sending.FileOutbox.deliver}),
    reduced to what the outbox sees: one Deferred per offer, which the test fires when the
    transfer ends (the receipt, a refusal, the session lost).
    """

    def __init__(self) -> None:
        self.offers: list[tuple[Any, str, defer.Deferred[Receipt]]] = []

    def __call__(self, session: Any, message: OutgoingMessage) -> defer.Deferred[Receipt]:
        d: defer.Deferred[Receipt] = defer.Deferred()
        self.offers.append((session, message.id, d))
        return d


class InFlightTests(unittest.TestCase):
    #: The transfer's length, many times the first retry delay (1-2 s by default).
    TRANSFER = 10 * outbox.RETRY_BASE * 2
    scheduler = base.SchedulerTests.scheduler
    queue = base.SchedulerTests.queue
    entry = base.SchedulerTests.entry

    def setUp(self) -> None:
        base.SchedulerTests.setUp(self)  # type: ignore[arg-type]
        self.files = SlowFiles()
        self.directory.register(BOB, binding())

    def started(self) -> outbox.OutboxScheduler:
        """A scheduler ticking, with one file queued and offered once."""
        scheduler = self.scheduler(deliver=self.files)
        self.queue(scheduler, "f1")
        scheduler.schedule(0)
        self.clock.advance(0)
        self.assertEqual([i for _, i, _ in self.files.offers], ["f1"])
        return scheduler

    def run_transfer(self, scheduler: outbox.OutboxScheduler, seconds: float) -> None:
        """Let C{seconds} pass in ticks, with kicks and presence pushes for the peer."""
        step = 0
        while step * outbox.TICK < seconds:
            self.clock.advance(outbox.TICK)
            step += 1
            scheduler.kick(BOB)  # e.g. a session from the peer, a send to it
            if step % 5 == 0:
                scheduler.peerAppeared(BOB)  # a presence push: every owed entry is due

    def test_a_transfer_longer_than_the_retry_delay_is_offered_once(self) -> None:
        scheduler = self.started()
        retry_at = self.entry("f1").next_attempt
        self.run_transfer(scheduler, self.TRANSFER)
        self.assertLess(retry_at, scheduler.now())  # the entry's retry time has passed
        self.assertEqual(len(self.files.offers), 1)  # and still only the one offer
        self.assertEqual(self.sessions.dials, [(BOB, "phone")])
        _, _, d = self.files.offers[0]
        d.callback(Receipt("f1"))  # the transfer ends: the receipt
        self.assertEqual(self.entry("f1").state, "delivered")
        self.run_transfer(scheduler, self.TRANSFER)
        self.assertEqual(len(self.files.offers), 1)

    def test_a_transfer_cut_off_is_offered_again_once(self) -> None:
        scheduler = self.started()
        self.run_transfer(scheduler, self.TRANSFER)
        first, _, d = self.files.offers[0]
        del self.sessions.sessions["phone"]
        first.ended = True
        d.errback(SessionLost("gone"))  # the transfer ends: the session is lost
        self.clock.advance(0)  # the tick that a lost session asks for
        self.assertEqual(len(self.files.offers), 2)  # due again at once: its time passed
        second, _, again = self.files.offers[1]
        self.assertIsNot(second, first)
        self.run_transfer(scheduler, self.TRANSFER)
        self.assertEqual(len(self.files.offers), 2)  # the second transfer, in flight
        again.callback(Receipt("f1"))
        self.assertEqual(self.entry("f1").state, "delivered")
        self.assertEqual(self.entry("f1").attempts, 2)

    def test_a_refused_transfer_is_not_offered_again(self) -> None:
        for reason in ("too_large", "sha256_mismatch"):  # a reject, an error
            self.setUp()
            scheduler = self.started()
            self.run_transfer(scheduler, self.TRANSFER)
            _, _, d = self.files.offers[0]
            d.errback(StanzaRefused(ErrorStanza(reason, "f1")))
            self.assertEqual((self.entry("f1").state, self.entry("f1").reason), ("failed", reason))
            self.run_transfer(scheduler, self.TRANSFER)
            self.assertEqual(len(self.files.offers), 1)
            scheduler.stop()
