"""
What the control and CLI tests share: a L{FakeAgent} served by L{listen_control} in a short
temporary directory (L{ServerMixin}), the CLI run as a real subprocess (C{python -m
sixchat.cli}, so each CLI process has its own reactor), and a recorder of agent events.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from sixchat.agent.control.client import connect_control
from sixchat.agent.control.server import listen_control
from sixchat.agent.interfaces import IAgentEvents
from sixchat.test.processes import child_env
from sixchat.testing.agent import ALICE, FakeAgent


@implementer(IAgentEvents)
class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def agentEvent(self, event: dict[str, Any]) -> None:
        self.events.append(event)


# -- helpers ------------------------------------------------------------------------------


@defer.inlineCallbacks
def wait_for(predicate: Any, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.02, lambda: None)


class CLIProcess(protocol.ProcessProtocol):
    """A C{sixchat} CLI child whose output we can watch while it runs."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, ProcessDone | ProcessTerminated) else None
        if code is None and isinstance(value, ProcessTerminated):
            code = -(value.signal or 0)
        self.ended.callback(code)

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")


def spawn_cli(args: list[str], env: dict[str, str] | None = None, pty: bool = False) -> CLIProcess:
    proc = CLIProcess()
    reactor.spawnProcess(
        proc,
        sys.executable,
        [sys.executable, "-m", "sixchat.cli", *args],
        env=child_env(TZ="UTC", **(env or {})),
        usePTY=pty,
    )
    return proc


@defer.inlineCallbacks
def run(args: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> Any:
    """Run the CLI to completion: (stdout, stderr, exit status)."""
    proc = spawn_cli(args, env)
    if stdin:
        proc.transport.write(stdin)
    proc.transport.closeStdin()
    code = yield proc.ended
    return proc.out.decode("utf-8"), proc.err.decode("utf-8"), code


def short_tempdir(case: unittest.TestCase) -> str:
    """UNIX socket paths are limited to 107 bytes: trial's temp dirs are too deep."""
    path = tempfile.mkdtemp(prefix="sxc", dir="/tmp")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class ServerMixin:
    """A fake agent served by L{listen_control} in a short temporary directory."""

    def setUp(self) -> None:
        self.base = short_tempdir(self)  # type: ignore[arg-type]
        self.data_dir = os.path.join(self.base, ALICE)
        self.agent = FakeAgent(reactor)
        self.ports: list[Any] = []

    @defer.inlineCallbacks
    def serve(self, data_dir: str | None = None, agent: Any = None, **options: Any) -> Any:
        port = yield listen_control(
            reactor, data_dir or self.data_dir, agent or self.agent, **options
        )
        self.ports.append(port)
        self.addCleanup(self.close_port, port)  # type: ignore[attr-defined]
        return port

    @defer.inlineCallbacks
    def close_port(self, port: Any) -> Any:
        for proto in list(port.factory.clients):
            proto.transport.loseConnection()
        yield wait_for(lambda: not port.factory.clients, what="server connections to close")
        yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)  # aborted (refused) connections

    @defer.inlineCallbacks
    def connect(self, data_dir: str | None = None) -> Any:
        client = yield connect_control(reactor, data_dir or self.data_dir)
        self.addCleanup(self.disconnect, client)  # type: ignore[attr-defined]
        return client

    @defer.inlineCallbacks
    def disconnect(self, client: Any) -> Any:
        if client.transport is not None:
            client.transport.loseConnection()
        yield client.disconnected


class AgentCLIMixin(ServerMixin):
    """A served fake agent and C{--data-dir} options pointing the CLI at it (C{self.dd})."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        ServerMixin.setUp(self)
        yield self.serve()
        self.dd = ["--data-dir", self.data_dir]
