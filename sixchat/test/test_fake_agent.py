"""
The public fake agent (L{sixchat.testing.agent}): it must stay a faithful L{IUserAgent}, or the
tests and applications built on it would test against something the real agent is not.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyClass, verifyObject

from sixchat.agent.interfaces import IUserAgent
from sixchat.testing.agent import BOB, FakeAgent


class FakeAgentTests(unittest.TestCase):
    def test_provides_the_agent_interface(self) -> None:
        verifyClass(IUserAgent, FakeAgent)
        verifyObject(IUserAgent, FakeAgent(reactor))
        verifyObject(IUserAgent, FakeAgent(Clock()))

    def test_slow_delivery_waits_on_the_given_clock(self) -> None:
        clock = Clock()
        agent = FakeAgent(clock)
        sent = self.successResultOf(agent.send("slow@example.com", "hi"))
        d = agent.waitDelivered(sent["id"], 5)
        self.assertNoResult(d)
        clock.advance(5)
        self.assertEqual(self.successResultOf(d)["state"], "sent")

    def test_records_calls(self) -> None:
        agent = FakeAgent(Clock())
        self.successResultOf(agent.send(BOB, "hello"))
        self.successResultOf(agent.typing(BOB, "composing"))
        self.assertEqual(agent.sends(), [("send", BOB, "hello", None, None)])
        self.assertEqual(agent.typings(), [("typing", BOB, "composing")])

    def test_unknown_recipient_queue_unknown_and_cancel(self) -> None:
        from sixchat.agent.errors import MessageFinal, UnknownIdentity, UnknownMessage

        clock = Clock()
        agent = FakeAgent(clock)
        events: list[dict[str, object]] = []
        agent.addObserver(type("O", (), {"agentEvent": lambda self, e: events.append(e)})())
        with self.assertRaises(UnknownIdentity) as refused:
            agent.send("nobody@example.com", "hi")
        self.assertIn("is not known to registry", str(refused.exception))
        self.assertEqual(
            [(e["type"], e["action"]) for e in events], [("unknown_recipient", "refused")]
        )
        sent = self.successResultOf(agent.send("nobody@example.com", "hi", queue_unknown=True))
        d = agent.waitDelivered(sent["id"], 2)
        clock.advance(2)
        self.assertEqual(self.successResultOf(d)["recipient_unknown"], True)
        cancelled = self.successResultOf(agent.cancel(sent["id"]))
        self.assertEqual(cancelled["state"], "cancelled")
        self.assertEqual(events[-1]["type"], "delivery")
        self.failureResultOf(agent.cancel(sent["id"]), UnknownMessage)
        delivered = self.successResultOf(agent.send(BOB, "x"))
        self.successResultOf(agent.waitDelivered(delivered["id"], 1))
        self.failureResultOf(agent.cancel(delivered["id"]), MessageFinal)
