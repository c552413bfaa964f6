"""
Files between real processes (§8.7): a C{twistd -n sixchat-irp} registry, two C{twistd -n
sixchat} agents and the C{sixchat} command line, on 127.0.0.1. A file goes from one agent to
the other with C{sixchat send-file}; a transfer survives a SIGKILL of the receiver and of the
sender, resuming from the receiver's durable prefix. Helpers come from test_agent_e2e.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from sixchat.agent.interfaces import IAgentEvents
from sixchat.test.processes import run_cli
from sixchat.test.test_agent_e2e import (
    ALICE,
    BOB,
    DELIVERY_TIMEOUT,
    AgentProcess,
    E2ECase,
    bounded,
)

#: Large enough that the receiver syncs (every 32 MiB) well before the end.
BIG = 160 * 1024 * 1024


def write_file(path: str, size: int) -> str:
    """A file of C{size} pseudo-random bytes; returns its SHA-256 in hex."""
    hasher = hashlib.sha256()
    block = hashlib.sha256(path.encode()).digest() * 32768  # 1 MiB
    with open(path, "wb") as f:
        written = 0
        while written < size:
            part = block[: min(len(block), size - written)]
            f.write(part)
            hasher.update(part)
            written += len(part)
            block = block[1:] + block[:1]
    return hasher.hexdigest()


def sha256_of(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


@implementer(IAgentEvents)
class ProgressSeen:
    """Fires C{seen} at the first C{file} event saying bob holds a durable prefix."""

    def __init__(self) -> None:
        self.seen: defer.Deferred[None] = defer.Deferred()

    def agentEvent(self, event: dict[str, Any]) -> None:
        if (
            event.get("type") == "file"
            and event.get("state") == "receiving"
            and event.get("received", 0) > 0
            and not self.seen.called
        ):
            self.seen.callback(None)


class FileE2ETests(E2ECase):
    timeout = 400

    @defer.inlineCallbacks
    def agents(self) -> Any:
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()
        return alice, bob

    @defer.inlineCallbacks
    def received(self, bob: AgentProcess, file_id: str) -> Any:
        files = yield bob.cli_json("files")
        [entry] = [f for f in files if f["id"] == file_id]
        return entry

    @defer.inlineCallbacks
    def test_send_file_from_the_command_line(self) -> Any:
        alice, bob = yield self.agents()
        path = os.path.join(self.base, "holiday photo.jpg")
        digest = write_file(path, 3 * 1024 * 1024 + 17)
        out, err, code = yield alice.cli("send-file", BOB, path, "--wait", str(DELIVERY_TIMEOUT))
        self.assertEqual(code, 0, f"{out}{err}\n{self.dump(alice, bob)}")
        self.assertRegex(out, r"^delivered file \S+ to bob@example.com\n$")
        [sent] = yield alice.cli_json("files")
        self.assertEqual(
            {k: sent[k] for k in ("peer", "direction", "name", "state", "sha256")},
            {"peer": BOB, "direction": "out", "name": "holiday photo.jpg",
             "state": "delivered", "sha256": digest},
        )  # fmt: skip
        entry = yield self.received(bob, sent["id"])
        self.assertEqual(
            {k: entry[k] for k in ("peer", "direction", "name", "size", "received", "state")},
            {"peer": ALICE, "direction": "in", "name": "holiday photo.jpg",
             "size": 3 * 1024 * 1024 + 17, "received": 3 * 1024 * 1024 + 17,
             "state": "received"},
        )  # fmt: skip
        self.assertEqual(entry["path"], os.path.join(bob.data_dir, "files", "holiday photo.jpg"))
        self.assertEqual(sha256_of(entry["path"]), digest)
        history = yield bob.inbox(ALICE)
        self.assertEqual([m["body"] for m in history], ["[file] holiday photo.jpg (3145745 bytes)"])
        out, err, code = yield bob.cli("files")
        self.assertIn("<- alice@example.com  holiday photo.jpg  3.0 MiB  received", out)

    @defer.inlineCallbacks
    def test_probe_send_file(self) -> Any:
        """C{sixchat probe HOST:PORT --send-file}: offered, streamed, receipted, stored."""
        alice, bob = yield self.agents()
        path = os.path.join(self.base, "notes.txt")
        digest = write_file(path, 100_000)
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{bob.port}", "--cert", alice.cert, "--trust", self.ca,
             "--send-file", path, "--timeout", "60", "--json"],
            cwd=self.base,
        )  # fmt: skip
        self.assertEqual(code, 0, f"{out}{err}")
        report = json.loads(out)
        self.assertEqual(report["file_size"], 100_000)
        entry = yield self.received(bob, report["file_id"])
        self.assertEqual((entry["state"], entry["name"]), ("received", "notes.txt"))
        self.assertEqual(sha256_of(entry["path"]), digest)
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{bob.port}", "--cert", alice.cert, "--trust", self.ca,
             "--send-file", os.path.join(self.base, "missing")],
            cwd=self.base,
        )  # fmt: skip
        self.assertEqual(code, 2)
        self.assertIn("--send-file", err)

    @defer.inlineCallbacks
    def killed_mid_transfer(self, victim: str) -> Any:
        """Send BIG bytes; SIGKILL C{victim} once bob holds a durable prefix; restart it."""
        alice, bob = yield self.agents()
        path = os.path.join(self.base, "video.mp4")
        digest = write_file(path, BIG)
        watcher = yield bob.control(self)
        progress = ProgressSeen()
        watcher.addObserver(progress)
        yield watcher.subscribe(["file"])
        client = yield alice.control(self)
        queued = yield client.sendFile(BOB, path)
        yield bounded(
            progress.seen,
            DELIVERY_TIMEOUT,
            "a durable prefix at bob",
            lambda: self.dump(alice, bob),
        )
        target = bob if victim == "bob" else alice
        yield target.kill()
        self.assertEqual(target.runs[0].exit, ("signal", signal.SIGKILL))
        yield target.start()
        if victim == "alice":
            client = yield alice.control(self)
        status = yield bounded(
            client.waitDelivered(queued["id"], 120),
            130,
            "the resumed file",
            lambda: self.dump(alice, bob),
        )
        self.assertEqual(status["state"], "delivered", self.dump(alice, bob))
        entry = yield self.received(bob, queued["id"])
        self.assertEqual((entry["state"], entry["received"]), ("received", BIG))
        self.assertGreater(entry["resumed_from"], 0, "the transfer started again at 0")
        self.assertLess(entry["resumed_from"], BIG)
        self.assertEqual(sha256_of(entry["path"]), digest)
        self.assertEqual(os.listdir(os.path.join(bob.data_dir, "files", ".partial")), [])
        return alice, bob

    def test_resume_after_sigkill_of_the_receiver(self) -> Any:
        return self.killed_mid_transfer("bob")

    def test_resume_after_sigkill_of_the_sender(self) -> Any:
        return self.killed_mid_transfer("alice")
