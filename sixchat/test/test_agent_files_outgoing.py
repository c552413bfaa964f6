"""
Outgoing files across own nodes (docs/protocol.md 8.6, "Files"): the file's outbox entry and
history line reach every node of ours by the feed (an C{out} item with C{file}); only a node
that holds the bytes delivers it. Real agents on 127.0.0.1: two nodes of alice, and bob.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer

from sixchat.agent import ownnodes
from sixchat.test import certs
from sixchat.test.test_agent_files import payload
from sixchat.test.test_agent_service import AgentCase

ALICE = "alice@example.com"
BOB = "bob@example.com"


class OutgoingFileCase(AgentCase):
    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        self.patch(ownnodes, "REDIAL_MIN", 0.1)
        self.alice_ids = {
            "laptop": self.identity(ALICE, key=certs.new_key("ed25519")),
            "home": self.identity(ALICE, key=certs.new_key("ed25519")),
            "phone": self.identity(ALICE, key=certs.new_key("ed25519")),
        }
        self.bob_id = self.identity(BOB)

    def source(self, data: bytes, name: str = "report.pdf") -> str:
        os.makedirs(self.base, exist_ok=True)
        path = os.path.join(self.base, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    @defer.inlineCallbacks
    def node(self, name: str, **kw: Any) -> Any:
        agent, events = yield self.agent(ALICE, name, identity=self.alice_ids[name], **kw)
        self.directory.publish(ALICE, name, agent)
        return agent, events

    @defer.inlineCallbacks
    def bob(self, publish: bool = True) -> Any:
        bob, _ = yield self.agent(BOB, identity=self.bob_id)
        if publish:
            self.directory.publish(BOB, "n1", bob)
        return bob

    @defer.inlineCallbacks
    def stop(self, agent: Any, node: str) -> Any:
        self.directory.withdraw(ALICE, node)
        yield agent.stopService()

    @defer.inlineCallbacks
    def out_file(self, agent: Any, file_id: str, state: str | None = None) -> Any:
        files = yield agent.files()
        got = [f for f in files if f["id"] == file_id and f["direction"] == "out"]
        if got and (state is None or got[0]["state"] == state):
            return got[0]
        return None

    @defer.inlineCallbacks
    def received(self, bob: Any, file_id: str) -> Any:
        files = yield bob.files()
        return [f for f in files if f["id"] == file_id and f["state"] == "received"]

    @defer.inlineCallbacks
    def linked(self, *agents: Any) -> Any:
        yield self.until(lambda: all(a.own_nodes.file_links() for a in agents), 30)


class WithoutTheBytesTests(OutgoingFileCase):
    @defer.inlineCallbacks
    def test_a_node_without_the_bytes_shows_the_file_and_never_delivers_it(self) -> Any:
        bob = yield self.bob(publish=False)  # offline
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home", max_file_size=10)  # refuses any copy: never holds
        yield self.linked(laptop, home)
        data = payload(300_000)
        queued = yield laptop.sendFile(BOB, self.source(data))
        text = yield laptop.send(BOB, "and a text")
        # home shows the file (and its history line), queued, with no path
        got = yield self.until(lambda: self.out_file(home, queued["id"], "queued"), 30)
        self.assertEqual(
            (got["peer"], got["name"], got["size"], got["sha256"], got["path"]),
            (BOB, "report.pdf", len(data), hashlib.sha256(data).hexdigest(), None),
        )
        history = yield home.history(BOB, None, 10)
        self.assertIn(f"[file] report.pdf ({len(data)} bytes)", [h["body"] for h in history])
        self.assertIn(queued["id"], home.file_outbox.ids)
        self.assertNotIn(queued["id"], home.file_outbox.held)
        # the laptop goes; bob comes online; home delivers the text, never the file
        yield self.stop(laptop, "laptop")
        self.directory.publish(BOB, "n1", bob)
        yield self.until(
            lambda: bob.history(ALICE, None, 10).addCallback(
                lambda h: [m for m in h if m["id"] == text["id"]]
            ),
            30,
        )
        bob_history = yield bob.history(ALICE, None, 10)
        self.assertEqual([m["body"] for m in bob_history], ["and a text"])
        self.assertEqual((yield bob.files()), [])
        # the laptop, back, delivers it; home learns the receipt by the feed
        laptop, _ = yield self.node("laptop")
        [got] = yield self.until(lambda: self.received(bob, queued["id"]), 30)
        self.assertEqual(got["sha256"], hashlib.sha256(data).hexdigest())
        yield self.until(lambda: self.out_file(home, queued["id"], "delivered"), 30)
        bob_history = yield bob.history(ALICE, None, 10)
        self.assertEqual(
            sorted(m["body"] for m in bob_history),
            sorted(["and a text", f"[file] report.pdf ({len(data)} bytes)"]),
        )
