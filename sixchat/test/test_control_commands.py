"""
The control interface's commands (L{sixchat.agent.control.commands}) end to end: a
L{ControlClient} calling a L{FakeAgent} over a real UNIX socket, arguments checked before the
agent sees them, and the agent's failures as one-line AMP errors.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.protocols import amp
from twisted.trial import unittest

from sixchat.agent.control.commands import normalize_timestamp
from sixchat.agent.errors import (
    AgentFailure,
    BadArgument,
    MessageFinal,
    NotConnected,
    UnknownIdentity,
    UnknownMessage,
)
from sixchat.test.control_support import ServerMixin
from sixchat.testing.agent import ALICE, BOB

# -- the AMP commands ----------------------------------------------------------------------


class CommandTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_send(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        result = yield client.send(BOB, "hello ✓", thread="t1", reply_to="r1")
        self.assertEqual(result, {"id": "m1", "peer": BOB, "state": "queued"})
        self.assertEqual(self.agent.calls, [("send", BOB, "hello ✓", "t1", "r1")])
        result = yield client.send(BOB, "plain")
        self.assertEqual(self.agent.calls[-1], ("send", BOB, "plain", None, None))

    @defer.inlineCallbacks
    def test_send_queue_unknown_and_cancel(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        result = yield client.send("nobody@example.com", "hi", None, None, True)
        self.assertEqual(result["state"], "queued")
        self.assertEqual(
            self.agent.calls[-1], ("send", "nobody@example.com", "hi", None, None, "queue_unknown")
        )
        cancelled = yield client.cancel(result["id"])
        self.assertEqual((cancelled["id"], cancelled["state"]), (result["id"], "cancelled"))
        self.assertEqual(self.agent.calls[-1], ("cancel", result["id"]))
        failure = yield self.assertFailure(client.cancel(result["id"]), UnknownMessage)
        self.assertIn(result["id"], str(failure))
        sent = yield client.send(BOB, "delivered soon")
        yield client.waitDelivered(sent["id"], 1)
        failure = yield self.assertFailure(client.cancel(sent["id"]), MessageFinal)
        self.assertEqual(
            str(failure), f"message {sent['id']} is already delivered; nothing to cancel"
        )
        yield self.assertFailure(client.cancel(""), BadArgument)

    @defer.inlineCallbacks
    def test_send_long_text_crosses_amp_value_limit(self) -> Any:
        """A body far over AMP's 64 KiB value limit (and multi-byte) arrives intact."""
        yield self.serve()
        client = yield self.connect()
        text = ("é😀😀😀 line\n" * 10_000)[:100_000]
        self.assertGreater(len(text.encode()), 3 * amp.MAX_VALUE_LENGTH)
        result = yield client.send(BOB, text)
        self.assertEqual(self.agent.calls[0][2], text)
        self.assertEqual(result["ids"], ["m1", "m2", "m3", "m4"])

    @defer.inlineCallbacks
    def test_large_history_response(self) -> Any:
        yield self.serve()
        self.agent.messages = [
            {"id": f"x{i}", "peer": BOB, "direction": "in", "body": "ü" * 200, "ts": f"{i:06d}"}
            for i in range(2000)
        ]
        client = yield self.connect()
        messages = yield client.history(None, None, 5000)
        self.assertEqual(messages, self.agent.messages)

    @defer.inlineCallbacks
    def test_wait_delivered_and_status_of(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        sent = yield client.send(BOB, "hi")
        status = yield client.status_of(sent["id"])
        self.assertEqual(status["state"], "queued")
        status = yield client.waitDelivered(sent["id"], 2.5)
        self.assertEqual(status["state"], "delivered")
        self.assertIn(("waitDelivered", "m1", 2.5), self.agent.calls)
        status = yield client.status_of(sent["id"])
        self.assertEqual((status["state"], status["delivered_nodes"]), ("delivered", 1))

    @defer.inlineCallbacks
    def test_history_arguments(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        messages = yield client.history(BOB, "2026-11-26T09:00:30+01:00", 10)
        # The zone is normalised to the spec's UTC form before the agent sees it.
        self.assertEqual(self.agent.calls[-1], ("history", BOB, "2026-11-26T08:00:30.000Z", 10))
        self.assertEqual([m["id"] for m in messages], ["h2"])
        messages = yield client.history(None, None, 2)
        self.assertEqual([m["id"] for m in messages], ["h2", "h3"])

    @defer.inlineCallbacks
    def test_conversations_contacts_status(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        conversations = yield client.conversations()
        self.assertEqual(conversations[0]["peer"], BOB)
        self.assertEqual(conversations[0]["unread"], 1)
        contacts = yield client.contacts()
        self.assertEqual([c["identity"] for c in contacts], [BOB, "carol@example.com"])
        self.assertTrue(contacts[1]["key_change_pending"])
        status = yield client.status()
        self.assertEqual(status["registry"]["registry"], "irp.example.com")
        self.assertEqual(status["sessions"][0]["group"], "x25519-mlkem768")
        self.assertEqual(status["outbox"], {"queued": 2, "sent": 1})

    @defer.inlineCallbacks
    def test_trust_and_typing(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        result = yield client.trust("carol@example.com", True)
        self.assertEqual(result, {"identity": "carol@example.com", "keys": ["aa" * 32, "bb" * 32],
                                  "accepted": ["bb" * 32], "forgotten": []})  # fmt: skip
        result = yield client.trust(BOB, False)
        self.assertFalse(result["accepted"])
        self.assertEqual(self.agent.calls[-1], ("trust", BOB, False, False))
        result = yield client.trust("carol@example.com", False, True)
        self.assertEqual((result["keys"], result["forgotten"]), (["bb" * 32], ["aa" * 32]))
        self.assertEqual(self.agent.calls[-1], ("trust", "carol@example.com", False, True))
        yield client.typing(BOB, "composing")
        yield client.typing(BOB, "paused")
        self.assertEqual(
            self.agent.typings(), [("typing", BOB, "composing"), ("typing", BOB, "paused")]
        )


class ErrorTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        ServerMixin.setUp(self)
        yield self.serve()
        self.client = yield self.connect()

    @defer.inlineCallbacks
    def assertFails(self, exc: type[Exception], d: Any, *fragments: str) -> Any:
        error = yield self.assertFailure(d, exc)
        message = str(error)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("Traceback", message)
        return message

    @defer.inlineCallbacks
    def test_unknown_identity(self) -> Any:
        yield self.assertFails(
            UnknownIdentity, self.client.send("nobody@example.com", "x"), "nobody@example.com"
        )
        yield self.assertFails(
            UnknownIdentity, self.client.trust("zed@example.com", True), "not a contact"
        )

    @defer.inlineCallbacks
    def test_bad_arguments_checked_before_the_agent(self) -> Any:
        c = self.client
        yield self.assertFails(BadArgument, c.send("not an identity", "x"), "not an identity")
        yield self.assertFails(BadArgument, c.send(BOB, ""), "empty message")
        yield self.assertFails(BadArgument, c.typing(BOB, "dancing"), "composing, paused")
        yield self.assertFails(BadArgument, c.history(None, None, 0), "limit")
        yield self.assertFails(BadArgument, c.history(None, "yesterday", 5), "RFC 3339")
        yield self.assertFails(BadArgument, c.history(None, "2026-11-26T08:00:00", 5), "zone")
        yield self.assertFails(BadArgument, c.waitDelivered("m1", -1), "timeout")
        yield self.assertFails(BadArgument, c.subscribe(["gossip"]), "gossip")
        self.assertEqual(self.agent.calls, [])

    @defer.inlineCallbacks
    def test_agent_value_error_is_bad_argument(self) -> Any:
        yield self.assertFails(
            BadArgument, self.client.send("bad@example.com", "x"), "XML cannot carry"
        )

    @defer.inlineCallbacks
    def test_not_connected_and_unknown_message(self) -> Any:
        yield self.assertFails(
            NotConnected, self.client.typing("offline@example.com", "composing"), "no session"
        )
        yield self.assertFails(UnknownMessage, self.client.waitDelivered("nope", 1), "nope")

    @defer.inlineCallbacks
    def test_unexpected_exception_is_generic_and_connection_survives(self) -> Any:
        message = yield self.assertFails(
            AgentFailure, self.client.send("boom@example.com", "x"), "internal error", "log"
        )
        self.assertNotIn("secret", message)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        status = yield self.client.status()  # still connected
        self.assertEqual(status["identity"], ALICE)

    @defer.inlineCallbacks
    def test_key_error_from_agent(self) -> Any:
        """An agent raising something unmapped (KeyError) gives AGENT_FAILURE, logged there."""
        yield self.assertFails(AgentFailure, self.client.status_of("nope"), "status_of")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class NormalizeTimestampTests(unittest.TestCase):
    def test_normalize_timestamp(self) -> None:
        n = normalize_timestamp
        self.assertEqual(n("2026-11-26T08:00:00Z"), "2026-11-26T08:00:00.000Z")
        self.assertEqual(n("2026-11-26t08:00:00.123456789+02:00"), "2026-11-26T06:00:00.123Z")
        self.assertEqual(n("2026-11-26 08:00:00-00:30"), "2026-11-26T08:30:00.000Z")
        for bad in ("2026-11-26", "2026-11-26T08:00:00", "2026-02-30T08:00:00Z", "soon"):
            self.assertRaises(BadArgument, n, bad)
