"""
C{sixchat watch} (L{sixchat.cli.watch}): its event lines in process, and the command as a
user runs it against a fake agent.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sixchat.cli.watch import format_event
from sixchat.test.control_support import AgentCLIMixin, spawn_cli, wait_for
from sixchat.testing.agent import BOB


class FormatEventTests(unittest.TestCase):
    def test_format_event(self) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
        line = format_event(
            {"type": "delivery", "peer": BOB, "id": "m1", "state": "delivered",
             "delivered_nodes": 1, "total_nodes": 2}, now,
        )  # fmt: skip
        self.assertTrue(line.endswith(f"-> {BOB}  m1 delivered (1/2 devices)"), line)
        line = format_event({"type": "message", "peer": BOB, "body": "a\nb"}, now)
        self.assertIn(f"<- {BOB}  a ⏎ b", line)
        line = format_event({"type": "typing", "peer": BOB, "state": "composing"}, now)
        self.assertTrue(line.endswith(f"{BOB} is typing…"))
        reason = "carol@example.com is not known to registry irp.example.com"
        line = format_event(
            {"type": "unknown_recipient", "peer": "carol@example.com", "reason": reason,
             "ids": [], "action": "refused"}, now,
        )  # fmt: skip
        self.assertTrue(line.endswith(f"  !! {reason}: message not sent"), line)
        line = format_event(
            {"type": "unknown_recipient", "peer": "carol@example.com", "reason": reason,
             "ids": ["m1", "m2"], "action": "queued"}, now,
        )  # fmt: skip
        self.assertTrue(
            line.endswith(f"  !! {reason}: message(s) m1 m2 stay queued (sixchat cancel ID)"),
            line,
        )
        line = format_event(
            {"type": "delivery", "peer": BOB, "id": "m3", "state": "cancelled"}, now
        )
        self.assertTrue(line.endswith(f"-> {BOB}  m3 cancelled"), line)

    def test_watch_shows_unknown_recipients_by_default(self) -> None:
        from sixchat.cli.watch import WATCH_DEFAULT_TYPES

        self.assertIn("unknown_recipient", WATCH_DEFAULT_TYPES)


class WatchCLITests(AgentCLIMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_watch(self) -> Any:
        proc = spawn_cli(["watch", *self.dd])
        yield wait_for(lambda: self.agent.observers, what="watch to subscribe")
        self.agent.emit({"type": "message", "peer": BOB, "id": "a", "body": "hi\nthere",
                         "ts": "2026-11-26T08:00:00.000Z"})  # fmt: skip
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})  # filtered
        self.agent.emit({"type": "delivery", "peer": BOB, "id": "m7", "state": "delivered"})
        yield wait_for(lambda: proc.out.count(b"\n") >= 2, what="two lines")
        lines = proc.text.splitlines()
        self.assertEqual(lines[0], f"2026-11-26 08:00:00  <- {BOB}  hi ⏎ there")
        self.assertTrue(lines[1].endswith(f"-> {BOB}  m7 delivered"), lines[1])
        proc.transport.signalProcess("INT")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.err)
        yield wait_for(lambda: not self.agent.observers, what="watch to unsubscribe")

    @defer.inlineCallbacks
    def test_watch_json_all_types_and_agent_going_away(self) -> Any:
        port = self.ports[0]
        proc = spawn_cli(["watch", "--json", "--type", "all", "--peer", BOB, *self.dd])
        yield wait_for(lambda: self.agent.observers, what="watch to subscribe")
        events = [
            {"type": "typing", "peer": BOB, "state": "composing"},
            {"type": "session", "peer": BOB, "node": "n", "suite": "s", "group": "g",
             "state": "open"},
            {"type": "message", "peer": "carol@example.com", "id": "c", "body": "other"},
        ]  # fmt: skip
        for event in events:
            self.agent.emit(event)
        yield wait_for(lambda: proc.out.count(b"\n") >= 2, what="two lines")
        self.assertEqual([json.loads(line) for line in proc.out.splitlines()], events[:2])
        for server in list(port.factory.clients):
            server.transport.loseConnection()
        code = yield proc.ended
        self.assertEqual(code, 1)
        self.assertEqual(proc.err.decode(), "sixchat: error: the agent closed the connection\n")
