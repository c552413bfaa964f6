"""
C{sixchat send-file} and C{sixchat files} (L{sixchat.cli.files}) as a user runs them: real
subprocesses against a fake agent on a real socket; and how C{watch} shows file events.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sixchat.cli.files import format_size, format_transfer
from sixchat.cli.watch import format_event
from sixchat.test.control_support import AgentCLIMixin, run
from sixchat.testing.agent import BOB


class SendFileTests(AgentCLIMixin, unittest.TestCase):
    def source(self, data: bytes = b"hello file") -> str:
        path = os.path.join(os.path.abspath(self.mktemp()) + "-photo.jpg")
        with open(path, "wb") as f:
            f.write(data)
        return path

    @defer.inlineCallbacks
    def test_queued(self) -> Any:
        path = self.source()
        out, err, code = yield run(["send-file", BOB, path, *self.dd])
        self.assertEqual((out, err, code), (f"queued file f1 (10 B) to {BOB}\n", "", 0))
        self.assertEqual(
            [c for c in self.agent.calls if c[0] == "sendFile"], [("sendFile", BOB, path)]
        )

    @defer.inlineCallbacks
    def test_json_and_wait(self) -> Any:
        path = self.source(b"abc")
        out, err, code = yield run(["send-file", BOB, path, "--json", *self.dd])
        self.assertEqual(code, 0, err)
        answer = json.loads(out)
        self.assertEqual(
            {k: answer[k] for k in ("id", "peer", "direction", "name", "size", "sha256", "state")},
            {
                "id": "f1",
                "peer": BOB,
                "direction": "out",
                "name": os.path.basename(path),
                "size": 3,
                "sha256": hashlib.sha256(b"abc").hexdigest(),
                "state": "queued",
            },
        )
        out, err, code = yield run(["send-file", BOB, path, "--wait", "5", *self.dd])
        self.assertEqual((out, code), (f"delivered file f2 to {BOB}\n", 0), err)
        out, err, code = yield run(
            ["send-file", "slow@example.com", path, "--wait", "0.3", *self.dd]
        )
        self.assertEqual(code, 3, err)
        self.assertEqual(out, "not delivered after 0.3 s: file f3 to slow@example.com is sent\n")
        out, err, code = yield run(
            ["send-file", "slow@example.com", path, "--wait", "0.3", "--json", *self.dd]
        )
        self.assertEqual((code, json.loads(out)["outcome"]), (3, "pending"))

    @defer.inlineCallbacks
    def test_errors_are_one_line(self) -> Any:
        out, err, code = yield run(["send-file", BOB, "/no/such/file", *self.dd])
        self.assertEqual((out, code), ("", 2))
        self.assertEqual(err, "sixchat: error: /no/such/file: no such file\n")
        out, err, code = yield run(["send-file", "nobody@example.com", self.source(), *self.dd])
        self.assertEqual(code, 1)
        self.assertIn("nobody@example.com is not a contact", err)
        self.assertNotIn("Traceback", err)
        out, err, code = yield run(["send-file", "not-an-identity", self.source(), *self.dd])
        self.assertEqual(code, 1)
        self.assertIn("not an identity", err)

    @defer.inlineCallbacks
    def test_files(self) -> Any:
        out, err, code = yield run(["files", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out,
            f"in1  <- {BOB}  photo.jpg  2.0 KiB  received, resumed at 1.0 KiB  "
            "/data/files/photo.jpg\n",
        )
        out, err, code = yield run(["files", "--json", *self.dd])
        [entry] = json.loads(out)
        self.assertEqual(
            sorted(entry),
            sorted(["id", "peer", "direction", "name", "size", "received", "sha256", "state",
                    "path", "resumed_from"]),
        )  # fmt: skip
        self.agent.transfers = []
        out, err, code = yield run(["files", *self.dd])
        self.assertEqual((out, err, code), ("", "no files\n", 0))


class FormatTests(unittest.SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(
            [format_size(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**30, None)],
            ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB", "?"],
        )

    def test_hostile_names_are_cleaned(self) -> None:
        line = format_transfer(
            {"id": "x", "peer": BOB, "direction": "in", "name": "a\x1b[2Jb\u202egpj.exe",
             "size": 10, "received": 5, "state": "receiving", "path": None, "resumed_from": 0}
        )  # fmt: skip
        self.assertNotIn("\x1b", line)
        self.assertNotIn("\u202e", line)
        self.assertIn("receiving 50%", line)

    def test_watch_shows_file_events(self) -> None:
        now = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
        line = format_event(
            {"type": "file", "id": "f1", "peer": BOB, "direction": "in", "name": "p.jpg",
             "size": 100, "state": "received", "received": 100, "path": "/f/p.jpg"},
            now,
        )  # fmt: skip
        self.assertTrue(line.endswith(f"<- {BOB}  file p.jpg received 100/100 bytes -> /f/p.jpg"))
        line = format_event(
            {"type": "file", "id": "f1", "peer": BOB, "direction": "out", "name": "p.jpg",
             "size": 100, "state": "rejected", "reason": "too_large"},
            now,
        )  # fmt: skip
        self.assertTrue(line.endswith(f"-> {BOB}  file p.jpg rejected 100 bytes: too_large"))


class ChatFileTests(AgentCLIMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_slash_file_sends_a_file(self) -> Any:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"12345")
        stdin = f"/file {path}\n/file\n/file /no/such\nhello\n".encode()
        out, err, code = yield run(["chat", BOB, *self.dd], stdin=stdin)
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [c for c in self.agent.calls if c[0] == "sendFile"][0], ("sendFile", BOB, path)
        )
        self.assertIn(f"sending file {os.path.basename(path)} (5 bytes)", out)
        self.assertIn("usage: /file PATH", out)
        self.assertIn("✗ file not sent: cannot read /no/such", out)
        self.assertEqual([s[2] for s in self.agent.sends()], ["hello"])
