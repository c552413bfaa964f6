"""
The control client (L{sixchat.agent.control.client}): what it provides and how it fails when
no agent answers.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from sixchat.agent.control.client import ControlClient, connect_control
from sixchat.agent.errors import NoAgentRunning
from sixchat.agent.interfaces import IUserAgent
from sixchat.test.control_support import short_tempdir


class ClientTests(unittest.TestCase):
    def test_client_provides_the_agent_interface(self) -> None:
        verifyObject(IUserAgent, ControlClient())


class ConnectTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_agent(self) -> Any:
        base = short_tempdir(self)
        error = yield self.assertFailure(connect_control(reactor, base), NoAgentRunning)
        self.assertEqual(
            str(error),
            f"no sixchat agent is running for {base} (start one with twistd -n sixchat …)",
        )
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(base, "control.sock"))
        stale.close()
        yield self.assertFailure(connect_control(reactor, base), NoAgentRunning)
