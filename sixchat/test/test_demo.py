"""C{sixchat demo}, the README's main command, as a user runs it."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sixchat.test.processes import run_cli


class DemoTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_demo_runs_green(self) -> Any:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        out, err, code = yield run_cli(["demo"], cwd=cwd)
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("Traceback", out + err)
        # each step of the story, in order
        steps = [
            "created CA",
            "registry  listening on 127.0.0.1:",
            "enrolled: key made locally",
            "alice     agent up on 127.0.0.1:",
            "(queued: bob is offline)",
            "is still queued, waiting in the outbox",
            "registry says bob@example.com is phone",
            "group x25519-mlkem768",
            "bob       <- alice@example.com: Hi Bob! Are you there?",
            "receipt from bob: message",
            "alice     <- bob@example.com: Yes, just got online. Got your message!",
            "conversation with bob has 4 messages, all receipted",
            "done: every message stored once and receipted",
        ]
        position = 0
        for step in steps:
            found = out.find(step, position)
            self.assertNotEqual(found, -1, f"step {step!r} missing or out of order:\n{out}")
            position = found
        leftovers = [n for n in os.listdir("/tmp") if n.startswith("sixchat-demo-")]
        self.assertFalse(any(n in out for n in leftovers), "the demo left its directory behind")
