"""
The outbox's timing on a C{task.Clock}: per-node retry backoff (exponential, with jitter, capped)
and expiry after C{message_ttl}. Sockets and the store's thread still use the real reactor; only
the outbox's time is fake, so no test waits for retry delays.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sixchat.agent import outbox as agent_outbox
from sixchat.agent.service import UserAgentService
from sixchat.handshake import PeerConfig
from sixchat.irp.messages import Contact, NodeBinding
from sixchat.test import certs
from sixchat.testing.directory import MemoryDirectory

CA = certs.make_ca()


def closed_port() -> int:
    """A loopback port nobody listens on (connects are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def unreachable_bob() -> MemoryDirectory:
    """A directory where bob has one node whose only contact refuses connections."""
    bob = certs.make_identity("bob@example.com", CA)
    directory = MemoryDirectory()
    contacts = (Contact("127.0.0.1", closed_port()),)
    directory.register("bob@example.com", NodeBinding("phone", contacts, bob.leaf_der, "", ""))
    return directory


class OutboxTimingTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def agent(self, rand: float, **kw: Any) -> Any:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)  # 2027: a realistic wall-clock time
        config = PeerConfig([certs.make_identity("alice@example.com", CA)], certs.trust_for(CA))
        agent = UserAgentService(
            reactor,
            config,
            os.path.join(os.path.abspath(self.mktemp()), "alice"),
            listen="tcp:0:interface=127.0.0.1",
            control=False,
            directory=unreachable_bob(),
            clock=self.clock,
            rand=lambda: rand,
            **kw,
        )
        agent.privilegedStartService()
        agent.startService()
        self.addCleanup(agent.stopService)
        yield agent.ready
        return agent

    @defer.inlineCallbacks
    def node_entry(self, agent: UserAgentService, message_id: str, attempts: int) -> Any:
        """Wait (real time, bounded) until the phone entry has C{attempts} recorded."""
        for _ in range(500):
            status = yield agent.store.status(message_id)
            entries = [n for n in status.nodes if n.node == "phone"]
            if entries and entries[0].attempts >= attempts and entries[0].next_attempt:
                return entries[0]
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"no attempt {attempts} recorded")

    @defer.inlineCallbacks
    def test_backoff_doubles_with_jitter_and_is_capped(self) -> Any:
        agent = yield self.agent(rand=0.0)  # jitter factor 0.5 exactly
        sent = yield agent.send("bob@example.com", "are you there?")
        delays = []
        for attempt in range(1, 10):
            entry = yield self.node_entry(agent, sent["id"], attempt)
            delay = (entry.next_attempt - agent.now()).total_seconds()
            delays.append(delay)
            self.clock.advance(delay + agent_outbox.TICK)  # due: the tick retries
        base, cap = agent_outbox.RETRY_BASE, agent_outbox.RETRY_MAX
        expected = [min(cap, base * 2 ** (n - 1)) * 0.5 for n in range(1, 10)]
        # attempt n was recorded with n-1 earlier attempts: delay = min(cap, base*2^(n-1))*0.5
        self.assertEqual([round(d, 3) for d in delays], [round(e, 3) for e in expected])
        self.assertEqual(max(delays), cap * 0.5)

    @defer.inlineCallbacks
    def test_jitter_upper_bound(self) -> Any:
        agent = yield self.agent(rand=0.999)
        sent = yield agent.send("bob@example.com", "hi")
        entry = yield self.node_entry(agent, sent["id"], 1)
        delay = (entry.next_attempt - agent.now()).total_seconds()
        self.assertTrue(agent_outbox.RETRY_BASE * 0.99 <= delay < agent_outbox.RETRY_BASE, delay)

    @defer.inlineCallbacks
    def test_expiry_after_ttl(self) -> Any:
        agent = yield self.agent(rand=0.5, message_ttl=timedelta(hours=1))
        sent = yield agent.send("bob@example.com", "too late")
        waiting = agent.waitDelivered(sent["id"], 7200)
        yield self.node_entry(agent, sent["id"], 1)
        self.clock.advance(1800)  # half the TTL: still owed
        yield task.deferLater(reactor, 0.1, lambda: None)
        status = yield agent.status_of(sent["id"])
        self.assertIn(status["state"], ("queued", "sent"))
        for _ in range(4):  # past the TTL, and past the expiry check's period
            self.clock.advance(agent_outbox.EXPIRE_EVERY * 20)
            yield task.deferLater(reactor, 0.05, lambda: None)
        status = yield waiting
        self.assertEqual(status["state"], "expired")
