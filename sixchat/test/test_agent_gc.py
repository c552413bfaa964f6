"""
Tests for the agent process's collector set-up (L{sixchat.agent.tap.freeze_start_up}): once
the agent is ready, what start-up made is kept out of later collections.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.python.failure import Failure
from twisted.trial import unittest

from sixchat.agent import tap


class FakeGC:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")


class FreezeTests(unittest.SynchronousTestCase):
    def test_collects_then_freezes_and_passes_the_result_on(self) -> None:
        fake = FakeGC()
        self.assertEqual(tap.freeze_start_up("ready", fake), "ready")
        self.assertEqual(fake.calls, ["collect", "freeze"])

    def test_an_interpreter_without_freeze(self) -> None:
        class Old:
            def collect(self) -> int:
                raise AssertionError("not called")

        self.assertIsNone(tap.freeze_start_up(None, Old()))

    def agent(self) -> Any:
        from sixchat.test.test_integration import alice_options

        options = alice_options(self.mktemp())
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        self.assertEqual(gc.get_freeze_count(), 0)
        return tap.makeService(options)

    def test_twistd_agent_freezes_once_ready(self) -> None:
        agent = self.agent()
        self.assertEqual(gc.get_freeze_count(), 0)  # not before
        agent.ready.callback(None)  # what startService does once everything is up
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_not_when_start_up_failed(self) -> None:
        agent = self.agent()
        agent.ready.errback(Failure(RuntimeError("no")))
        self.failureResultOf(agent.ready, RuntimeError)
        self.assertEqual(gc.get_freeze_count(), 0)
