"""
The user agent end to end inside one reactor: real TCP on 127.0.0.1 between agents, real
SQLite stores, and a fake directory standing in for the registry (the registry itself is
tested in test_irp_*; the processes-and-registry tests are in test_agent_e2e).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest
from zope.interface import implementer

from sixchat.agent import outbox as agent_outbox
from sixchat.agent.errors import MessageFinal, UnknownIdentity, UnknownMessage
from sixchat.agent.interfaces import IAgentEvents
from sixchat.agent.service import AgentError, UserAgentService
from sixchat.handshake import PeerConfig
from sixchat.identity import Identity
from sixchat.irp.messages import Contact, NodeBinding
from sixchat.test import certs
from sixchat.testing.directory import MemoryDirectory

CA = certs.make_ca()


class FakeDirectory(MemoryDirectory):
    """The registry as the agent sees it: agents publish their listening node by name."""

    def publish(self, identity: str, node: str, agent: UserAgentService) -> None:
        port = agent.listener.port.getHost().port
        binding = NodeBinding(node, (Contact("127.0.0.1", port),), agent.identity.leaf_der, "", "")
        self.register(identity, binding)


@implementer(IAgentEvents)
class Events:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def agentEvent(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def deferLater(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class AgentCase(unittest.TestCase):
    """Agents on real TCP with real stores, found through a L{FakeDirectory}."""

    timeout = 60
    #: The name L{source} gives a file by default.
    source_name = "photo.jpg"

    def source(self, data: bytes, name: str | None = None) -> str:
        """A file holding C{data} to send, in the test's directory."""
        os.makedirs(self.base, exist_ok=True)
        path = os.path.join(self.base, name or self.source_name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def setUp(self) -> None:
        self.patch(agent_outbox, "TICK", 0.05)
        self.patch(agent_outbox, "RETRY_BASE", 0.05)
        self.patch(agent_outbox, "RETRY_MAX", 0.2)
        self.directory = FakeDirectory()
        self.base = os.path.abspath(self.mktemp())

    def identity(self, name: str, **kw: Any) -> Identity:
        return certs.make_identity(name, CA, **kw)

    @defer.inlineCallbacks
    def agent(
        self, name: str, node: str = "n1", identity: Identity | None = None, **kw: Any
    ) -> Any:
        identity = identity or self.identity(name)
        config = PeerConfig([identity], certs.trust_for(CA))
        agent = UserAgentService(
            reactor,
            config,
            os.path.join(self.base, f"{name}-{node}"),
            node=node,
            control=False,
            **{"directory": self.directory, "listen": "tcp:0:interface=127.0.0.1", **kw},
        )
        events = Events()
        agent.addObserver(events)
        agent.privilegedStartService()
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        yield agent.ready
        return agent, events

    @defer.inlineCallbacks
    def until(self, predicate: Any, timeout: float = 10) -> Any:
        for _ in range(int(timeout / 0.02)):
            result = predicate()
            if isinstance(result, defer.Deferred):
                result = yield result
            if result:
                return result
            yield deferLater(0.02)
        self.fail("condition not reached in time")


class AgentTests(AgentCase):
    @defer.inlineCallbacks
    def test_a_peer_connecting_while_the_store_opens_waits_and_is_served(self) -> Any:
        from sixchat.agent.store import MessageStore
        from sixchat.protocol import connectPeer

        gate: defer.Deferred[None] = defer.Deferred()
        real_open = MessageStore.open

        def slow_open(store: MessageStore) -> defer.Deferred[None]:
            return gate.addCallback(lambda _: real_open(store))

        self.patch(MessageStore, "open", slow_open)
        bob = UserAgentService(
            reactor, PeerConfig([self.identity("bob@example.com")], certs.trust_for(CA)),
            os.path.join(self.base, "bob"), listen="tcp:0:interface=127.0.0.1",
            control=False, directory=self.directory,
        )  # fmt: skip
        bob.privilegedStartService()
        bob.startService()
        self.addCleanup(lambda: bob.stopService() if bob.running else None)
        self.assertTrue(bob.listener.held)
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", bob.listener.port.getHost().port, timeout=10
        )
        config = PeerConfig([self.identity("alice@example.com")], certs.trust_for(CA))
        done: list[Any] = []
        handshake = connectPeer(reactor, endpoint, None, to="bob@example.com", config=config)
        handshake.addBoth(lambda result: done.append(result) or result)
        yield deferLater(0.3)
        self.assertEqual(done, [])  # neither a session nor a refusal while the store opens
        gate.callback(None)
        yield bob.ready
        self.assertFalse(bob.listener.held)
        session = yield handshake
        self.addCleanup(session.close)
        receipt = yield session.sendMessage("before you were ready")
        self.assertTrue(receipt.id)
        [entry] = yield bob.history("alice@example.com", None, 10)
        self.assertEqual(entry["body"], "before you were ready")

    @defer.inlineCallbacks
    def test_send_while_offline_then_deliver(self) -> Any:
        alice, alice_events = yield self.agent("alice@example.com")
        sent = yield alice.send("bob@example.com", "are you there?")
        self.assertEqual(sent["state"], "queued")
        yield deferLater(0.2)
        status = yield alice.status_of(sent["id"])
        self.assertEqual(status["state"], "queued")
        self.assertIn("bob@example.com", self.directory.watched)
        bob, bob_events = yield self.agent("bob@example.com")
        waiting = alice.waitDelivered(sent["id"], 10)
        self.directory.publish("bob@example.com", "n1", bob)  # bob comes online: a push
        status = yield waiting
        self.assertEqual(status["state"], "delivered")
        self.assertEqual((status["delivered_nodes"], status["total_nodes"]), (1, 1))
        [incoming] = bob_events.of("message")
        self.assertEqual(
            (incoming["peer"], incoming["body"]), ("alice@example.com", "are you there?")
        )
        history = yield bob.history("alice@example.com", None, 10)
        self.assertEqual([h["body"] for h in history], ["are you there?"])
        states = [e["state"] for e in alice_events.of("delivery")]
        self.assertEqual(states[0], "queued")
        self.assertEqual(states[-1], "delivered")

    @defer.inlineCallbacks
    def test_conversation_both_ways_reuses_sessions(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("alice@example.com", "n1", alice)
        self.directory.publish("bob@example.com", "n1", bob)
        for i in range(5):
            a = yield alice.send("bob@example.com", f"ping {i}")
            b = yield bob.send("alice@example.com", f"pong {i}")
            yield alice.waitDelivered(a["id"], 10)
            yield bob.waitDelivered(b["id"], 10)
        history = yield alice.history("bob@example.com", None, 100)
        self.assertEqual(len(history), 10)
        self.assertEqual(
            [h["body"] for h in history if h["direction"] == "in"], [f"pong {i}" for i in range(5)]
        )
        self.assertEqual(len(alice.sessions.outgoing), 1)  # one session per peer node, reused
        status = yield alice.status()
        self.assertEqual(status["outbox"].get("queued", 0), 0)

    @defer.inlineCallbacks
    def test_a_warm_send_costs_no_outbox_read(self) -> Any:
        # Issue 15: the outbox starts from what the store read right after the commit
        # (queue_outgoing's on_written), while the fsync runs; no pending_for round trip.
        alice, _ = yield self.agent("alice@example.com")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "opens the session")
        yield alice.waitDelivered(first["id"], 10)
        yield deferLater(0.1)  # the session's own kicks (sessionStarted) are over
        # No periodic tick meanwhile: it kicks whatever is due (a message just queued, not
        # yet targeted, is) without a list, and then the outbox reads, as it should.
        self.patch(alice.outbox, "schedule", lambda delay: None)
        tick = alice.outbox._tick_call
        if tick is not None and tick.active():
            tick.cancel()
        reads: list[str] = []
        real = alice.store.pending_for
        self.patch(alice.store, "pending_for",
                   lambda to, now=None: reads.append(to) or real(to, now))  # fmt: skip
        for i in range(5):
            sent = yield alice.send("bob@example.com", f"warm {i}")
            status = yield alice.waitDelivered(sent["id"], 10)
            self.assertEqual(status["state"], "delivered")
        self.assertEqual(reads, [])
        self.assertEqual(len(alice.sessions.outgoing), 1)

    @defer.inlineCallbacks
    def test_two_nodes_both_receive(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        bob_key = certs.key_for("ed25519", "leaf:bob@example.com")
        laptop, laptop_events = yield self.agent("bob@example.com", "laptop")
        phone_identity = self.identity("bob@example.com", key=bob_key)
        phone, phone_events = yield self.agent("bob@example.com", "phone", identity=phone_identity)
        self.directory.publish("bob@example.com", "laptop", laptop)
        self.directory.publish("bob@example.com", "phone", phone)
        sent = yield alice.send("bob@example.com", "to all my devices")
        yield self.until(
            lambda: alice.status_of(sent["id"]).addCallback(lambda s: s["delivered_nodes"] == 2)
        )
        status = yield alice.status_of(sent["id"])
        self.assertEqual(status["description"], "delivered (2/2 devices)")
        for events in (laptop_events, phone_events):
            self.assertEqual([e["body"] for e in events.of("message")], ["to all my devices"])

    @defer.inlineCallbacks
    def test_key_change_refused_until_trusted(self) -> Any:
        alice, alice_events = yield self.agent("alice@example.com", pin_policy="refuse")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "hello old key")
        yield alice.waitDelivered(first["id"], 10)
        yield bob.stopService()
        new_bob_identity = self.identity("bob@example.com", key=certs.new_key("ed25519"))
        bob2, bob2_events = yield self.agent("bob@example.com", "n2", identity=new_bob_identity)
        self.directory.withdraw("bob@example.com", "n1")
        self.directory.publish("bob@example.com", "n2", bob2)
        second = yield alice.send("bob@example.com", "hello new key?")
        yield self.until(lambda: alice_events.of("key_change"))
        change = alice_events.of("key_change")[0]
        self.assertEqual((change["peer"], change["action"]), ("bob@example.com", "refused"))
        yield deferLater(0.3)
        status = yield alice.status_of(second["id"])
        self.assertEqual(status["state"], "queued")
        self.assertEqual(bob2_events.of("message"), [])
        contacts = yield alice.contacts()
        self.assertTrue(contacts[0]["key_change_pending"])
        trusted = yield alice.trust("bob@example.com", True)
        self.assertEqual(len(trusted["accepted"]), 1)
        status = yield alice.waitDelivered(second["id"], 10)
        self.assertEqual(status["state"], "delivered")

    @defer.inlineCallbacks
    def test_key_change_warned_and_delivered(self) -> Any:
        alice, alice_events = yield self.agent("alice@example.com")  # default policy warn
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "one")
        yield alice.waitDelivered(first["id"], 10)
        new_bob = self.identity("bob@example.com", key=certs.new_key("ed25519"))
        bob2, _ = yield self.agent("bob@example.com", "n2", identity=new_bob)
        self.directory.withdraw("bob@example.com", "n1")
        self.directory.publish("bob@example.com", "n2", bob2)
        second = yield alice.send("bob@example.com", "two")
        status = yield alice.waitDelivered(second["id"], 10)
        self.assertEqual(status["state"], "delivered")
        [change] = alice_events.of("key_change")
        self.assertEqual(change["action"], "warned")

    @defer.inlineCallbacks
    def test_duplicate_is_stored_once_and_receipted_again(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        bob, bob_events = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        sent = yield alice.send("bob@example.com", "once")
        yield alice.waitDelivered(sent["id"], 10)
        session = next(iter(alice.sessions.outgoing.values()))
        outgoing = yield alice.store.outgoing(sent["id"])
        receipt = yield session.send(outgoing.stanza)  # a retransmission, same id
        self.assertEqual(receipt.id, sent["id"])
        history = yield bob.history("alice@example.com", None, 10)
        self.assertEqual(len(history), 1)
        self.assertEqual(len(bob_events.of("message")), 1)

    @defer.inlineCallbacks
    def test_send_window_bounds_unreceipted_messages(self) -> Any:
        self.patch(agent_outbox, "SEND_WINDOW", 4)
        alice, _ = yield self.agent("alice@example.com")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "open the session")
        yield alice.waitDelivered(first["id"], 10)
        slow_store = bob.store.store_incoming

        def slowly(*args: Any) -> Any:  # bob stores slowly: receipts lag behind
            return task.deferLater(reactor, 0.02, slow_store, *args)

        self.patch(bob.store, "store_incoming", slowly)
        session = next(iter(alice.sessions.outgoing.values()))
        in_flight: list[int] = []
        send = session.send

        def counting(message: Any) -> Any:
            d = send(message)
            in_flight.append(len(session._pending))
            return d

        self.patch(session, "send", counting)
        ids = []
        for i in range(30):
            sent = yield alice.send("bob@example.com", f"burst {i}")
            ids.append(sent["id"])
        for message_id in ids:
            status = yield alice.waitDelivered(message_id, 20)
            self.assertEqual(status["state"], "delivered")
        self.assertEqual(len(in_flight), 30)
        self.assertLessEqual(max(in_flight), 4)

    @defer.inlineCallbacks
    def test_expiry(self) -> Any:
        self.patch(agent_outbox, "EXPIRE_EVERY", 0.05)
        alice, alice_events = yield self.agent(
            "alice@example.com", message_ttl=timedelta(seconds=0.2)
        )
        sent = yield alice.send("bob@example.com", "nobody home")
        status = yield alice.waitDelivered(sent["id"], 5)
        self.assertEqual(status["state"], "expired")
        self.assertIn("expired", [e["state"] for e in alice_events.of("delivery")])

    @defer.inlineCallbacks
    def test_invalid_recipient(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        yield self.assertFailure(alice.send("not an identity", "x"), AgentError)

    @defer.inlineCallbacks
    def test_one_agent_per_data_dir(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        config = PeerConfig([self.identity("alice@example.com")], certs.trust_for(CA))
        second = UserAgentService(
            reactor, config, alice.data_dir, listen="tcp:0:interface=127.0.0.1", control=False
        )
        self.assertRaises(AgentError, second.privilegedStartService)

    @defer.inlineCallbacks
    def test_construction_has_no_side_effects(self) -> Any:
        """The data directory appears when the service starts; the caller's config is kept."""
        config = PeerConfig([self.identity("alice@example.com")], certs.trust_for(CA))
        data_dir = os.path.join(self.base, "alice-later")
        agent = UserAgentService(
            reactor, config, data_dir, listen="tcp:0:interface=127.0.0.1", control=False
        )
        self.assertFalse(os.path.exists(data_dir))
        self.assertIsNone(config.pins)
        self.assertIsNot(agent.config, config)
        self.assertEqual(agent.config.pins.policy, "warn")  # type: ignore[union-attr]
        agent.startService()
        self.addCleanup(lambda: agent.stopService() if agent.running else None)
        yield agent.ready
        self.assertEqual(os.stat(data_dir).st_mode & 0o777, 0o700)
        self.assertIsNone(config.pins)

    @defer.inlineCallbacks
    def test_restart_keeps_outbox(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        sent = yield alice.send("bob@example.com", "survives restart")
        yield alice.stopService()
        config = PeerConfig([alice.identity], certs.trust_for(CA))
        again = UserAgentService(
            reactor, config, alice.data_dir, listen="tcp:0:interface=127.0.0.1",
            control=False, directory=self.directory,
        )  # fmt: skip
        again.privilegedStartService()
        again.startService()
        self.addCleanup(lambda: again.stopService() if again.running else None)
        yield again.ready
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        status = yield again.waitDelivered(sent["id"], 10)
        self.assertEqual(status["state"], "delivered")


class UnknownRecipientTests(AgentCase):
    """
    Issue 17 item 3: a recipient the registry does not know is refused (nothing stored, no
    contact made) unless queued on purpose; an offline one is queued; C{cancel} takes a
    message out of the outbox.
    """

    def setUp(self) -> None:
        super().setUp()
        self.directory = FakeDirectory(unknown_unregistered=True)

    @defer.inlineCallbacks
    def test_unknown_recipient_is_refused_and_nothing_is_left(self) -> Any:
        alice, events = yield self.agent("alice@example.com")
        failure = yield self.assertFailure(
            alice.send("carol@example.com", "hi"), UnknownIdentity
        )
        self.assertEqual(
            str(failure),
            "carol@example.com is not known to the directory (never registered there, or its "
            "certificate expired or was revoked)",
        )
        history = yield alice.history(None, None, 10)
        contacts = yield alice.contacts()
        counts = yield alice.store.outbox_counts()
        self.assertEqual((history, contacts), ([], []))
        self.assertEqual(counts, {"queued": 0, "sent": 0, "delivered": 0})
        self.assertEqual(events.of("delivery"), [])
        [event] = events.of("unknown_recipient")
        self.assertEqual(
            (event["peer"], event["action"], event["ids"]), ("carol@example.com", "refused", [])
        )

    @defer.inlineCallbacks
    def test_offline_known_recipient_is_queued(self) -> Any:
        alice, events = yield self.agent("alice@example.com")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        self.directory.withdraw("bob@example.com", "n1")  # registered once, offline now
        yield bob.stopService()
        sent = yield alice.send("bob@example.com", "later")
        self.assertEqual(sent["state"], "queued")
        yield deferLater(0.2)
        status = yield alice.status_of(sent["id"])
        self.assertEqual((status["state"], status["recipient_unknown"]), ("queued", False))
        self.assertEqual(events.of("unknown_recipient"), [])

    @defer.inlineCallbacks
    def test_queue_unknown_waits_for_the_first_registration(self) -> Any:
        alice, events = yield self.agent("alice@example.com")
        sent = yield alice.send("carol@example.com", "welcome", queue_unknown=True)
        self.assertEqual(sent["state"], "queued")
        [event] = yield self.until(lambda: events.of("unknown_recipient"))
        self.assertEqual(
            (event["action"], event["ids"], event["peer"]),
            ("queued", [sent["id"]], "carol@example.com"),
        )
        status = yield alice.status_of(sent["id"])
        self.assertEqual((status["state"], status["recipient_unknown"]), ("queued", True))
        # carol's own directory: the shared one pushes presence to the newest agent only
        carol, carol_events = yield self.agent("carol@example.com", directory=MemoryDirectory())
        waiting = alice.waitDelivered(sent["id"], 10)
        self.directory.publish("carol@example.com", "n1", carol)  # the push: known and online
        status = yield waiting
        self.assertEqual(status["state"], "delivered")
        self.assertEqual([e["body"] for e in carol_events.of("message")], ["welcome"])
        self.assertFalse(alice.outbox.isUnknown("carol@example.com"))

    @defer.inlineCallbacks
    def test_a_silent_directory_does_not_block_sending(self) -> Any:
        from sixchat.agent.service import RECIPIENT_CHECK

        clock = task.Clock()
        clock.advance(1_800_000_000)
        silent = FakeDirectory()
        asked: list[defer.Deferred[Any]] = []
        silent.lookup = lambda identity: asked.append(defer.Deferred()) or asked[-1]  # type: ignore[method-assign]
        alice, _ = yield self.agent("alice@example.com", directory=silent, clock=clock)
        d = alice.send("bob@example.com", "anyone?")
        self.assertNoResult(d)
        self.assertEqual(len(asked), 1)
        clock.advance(RECIPIENT_CHECK)
        sent = yield d
        self.assertEqual(sent["state"], "queued")
        asked[0].errback(UnknownIdentity("too late"))  # the outbox reports it from now on
        status = yield alice.status_of(sent["id"])
        self.assertEqual(status["state"], "queued")

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        alice, events = yield self.agent("alice@example.com")
        sent = yield alice.send("carol@example.com", "typo", queue_unknown=True)
        waiting = alice.waitDelivered(sent["id"], 30)
        cancelled = yield alice.cancel(sent["id"])
        self.assertEqual((cancelled["id"], cancelled["state"]), (sent["id"], "cancelled"))
        released = yield waiting
        self.assertEqual(released["state"], "cancelled")
        self.assertEqual(events.of("delivery")[-1]["state"], "cancelled")
        history = yield alice.history(None, None, 10)
        contacts = yield alice.contacts()
        self.assertEqual((history, contacts), ([], []))
        yield self.assertFailure(alice.cancel(sent["id"]), UnknownMessage)
        yield self.assertFailure(alice.cancel("no-such-id"), UnknownMessage)

    @defer.inlineCallbacks
    def test_cancel_keeps_a_real_contact_and_refuses_delivered(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        bob, _ = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "delivered")
        status = yield alice.waitDelivered(first["id"], 10)
        self.assertEqual(status["state"], "delivered")
        failure = yield self.assertFailure(alice.cancel(first["id"]), MessageFinal)
        self.assertIn("already delivered", str(failure))
        yield bob.stopService()
        self.directory.withdraw("bob@example.com", "n1")
        second = yield alice.send("bob@example.com", "never mind")
        yield alice.cancel(second["id"])
        contacts = yield alice.contacts()
        self.assertEqual([c["identity"] for c in contacts], ["bob@example.com"])
        history = yield alice.history("bob@example.com", None, 10)
        self.assertEqual([m["body"] for m in history], ["delivered"])


def _now() -> datetime:
    return datetime.now(UTC)


class AddressChangeTests(AgentCase):
    """Mobility inside one reactor: the agent's address watch with a fake address source."""

    @defer.inlineCallbacks
    def test_sessions_on_a_vanished_address_end_and_the_next_send_redials(self) -> Any:
        addresses = {"now": frozenset({"127.0.0.1", "2001:db8::1"})}
        alice, _ = yield self.agent(
            "alice@example.com", address_poll=0.05, address_source=lambda: addresses["now"]
        )
        bob, bob_events = yield self.agent("bob@example.com")
        self.directory.publish("bob@example.com", "n1", bob)
        first = yield alice.send("bob@example.com", "one")
        yield alice.waitDelivered(first["id"], 10)
        [old] = alice.sessions.outgoing.values()
        self.assertIsNotNone(alice.addresses)
        addresses["now"] = frozenset({"2001:db8::1", "2001:db8::2"})  # 127.0.0.1 is gone
        yield self.until(lambda: old.ended)
        self.assertEqual(str(old.end_reason), "our address 127.0.0.1 is gone")
        addresses["now"] = frozenset({"127.0.0.1", "2001:db8::2"})  # back (it is loopback)
        second = yield alice.send("bob@example.com", "two")
        status = yield alice.waitDelivered(second["id"], 10)
        self.assertEqual(status["state"], "delivered")
        [new] = alice.sessions.outgoing.values()
        self.assertIsNot(new, old)
        self.assertEqual(sorted(e["body"] for e in bob_events.of("message")), ["one", "two"])

    @defer.inlineCallbacks
    def backed_off(self, **alice_options: Any) -> Any:
        """
        Alice with a message for bob that failed once and waits a minute for its retry; bob
        then listens where the directory said, without a presence push to alice.
        """
        import socket

        self.patch(agent_outbox, "RETRY_BASE", 60.0)
        self.patch(agent_outbox, "RETRY_MAX", 300.0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        bob_id = self.identity("bob@example.com")
        binding = NodeBinding("n1", (Contact("127.0.0.1", port),), bob_id.leaf_der, "", "")
        self.directory.register("bob@example.com", binding)
        alice, _ = yield self.agent("alice@example.com", **alice_options)
        sent = yield alice.send("bob@example.com", "after the network came back")

        def waiting() -> Any:
            d = alice.store.status(sent["id"])
            return d.addCallback(lambda st: st.nodes and st.nodes[0].next_attempt is not None)

        yield self.until(waiting)
        yield self.agent("bob@example.com", identity=bob_id,
                         listen=f"tcp:{port}:interface=127.0.0.1")  # fmt: skip
        yield deferLater(0.3)
        status = yield alice.status_of(sent["id"])
        self.assertEqual(status["state"], "queued")  # still waiting for its backoff
        return alice, sent["id"]

    @defer.inlineCallbacks
    def test_an_address_change_retries_at_once_what_waits_for_its_backoff(self) -> Any:
        addresses = {"now": frozenset({"127.0.0.1"})}
        alice, message_id = yield self.backed_off(
            address_poll=0.05, address_source=lambda: addresses["now"]
        )
        addresses["now"] = frozenset({"127.0.0.1", "2001:db8::7"})  # a new network
        status = yield alice.waitDelivered(message_id, 10)
        self.assertEqual(status["state"], "delivered")

    @defer.inlineCallbacks
    def test_the_registry_answering_again_retries_at_once(self) -> Any:
        from twisted.application import service

        class Keeper(service.Service):
            on_state: Any = None
            on_conflict: Any = None

        keeper = Keeper()
        real_opened = UserAgentService._opened

        def opened(agent: UserAgentService, result: Any) -> Any:
            agent.keeper = agent.reachability.keeper = keeper
            return real_opened(agent, result)

        self.patch(UserAgentService, "_opened", opened)
        alice, message_id = yield self.backed_off()
        keeper.on_state("registered")  # no outage before: nothing to retry
        yield deferLater(0.3)
        self.assertEqual((yield alice.status_of(message_id))["state"], "queued")
        keeper.on_state("waiting")  # the registry could not be reached …
        keeper.on_state("registered")  # … and answers again
        status = yield alice.waitDelivered(message_id, 10)
        self.assertEqual(status["state"], "delivered")

    @defer.inlineCallbacks
    def test_off_by_default_in_the_library(self) -> Any:
        alice, _ = yield self.agent("alice@example.com")
        self.assertIsNone(alice.addresses)


class AddressPollOptionTests(unittest.TestCase):
    def test_bad_values(self) -> None:
        from twisted.python import usage

        from sixchat.agent import tap

        for value, message in (
            ("often", "--address-poll must be a number of seconds"),
            ("-1", "--address-poll must be 0 (off) or a number of seconds"),
            ("inf", "--address-poll must be 0 (off) or a number of seconds"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                tap.Options().parseOptions(
                    ["--cert", "x.p12", "--trust", "x.pem", "--address-poll", value]
                )
            self.assertEqual(str(caught.exception), message)
        self.assertEqual(tap.Options()["address-poll"], "1")
