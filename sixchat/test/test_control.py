"""
The local control interface (L{sixchat.agent.control}) and the CLI commands built on it
(L{sixchat.cli.agent}), against a fake L{IUserAgent} served on a real UNIX socket.

The server runs in trial's reactor; the CLI runs as real subprocesses (C{python -m
sixchat.cli}), so the reactor of each CLI process is its own. One test also runs this module
as a separate fake agent process (C{python -m sixchat.test.test_control DATA_DIR}) to check
the "another agent answers" and "crashed agent left a stale socket" paths with a real
process on the other end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sixchat.agent import control
from sixchat.agent.control import (
    AgentAlreadyRunning,
    AgentDisconnected,
    AgentFailure,
    BadArgument,
    ControlClient,
    DataDirError,
    NoAgentRunning,
    NotConnected,
    PeerRefused,
    UnknownIdentity,
    UnknownMessage,
    connect_control,
    listen_control,
)
from sixchat.agent.interfaces import IAgentEvents, IUserAgent
from sixchat.cli import agent as cli_agent
from sixchat.test.processes import child_env

ALICE = "alice@example.com"
BOB = "bob@example.com"


# -- the fake agent ------------------------------------------------------------------------


def sample_history() -> list[dict[str, Any]]:
    return [
        {
            "id": "h1",
            "peer": BOB,
            "direction": "in",
            "body": "Hello, Alice",
            "ts": "2026-11-26T08:00:00.000Z",
            "received_at": "2026-11-26T08:00:01.000Z",
        },
        {
            "id": "h2",
            "peer": BOB,
            "direction": "out",
            "body": "Hi Bob\nsecond line",
            "ts": "2026-11-26T08:01:00.000Z",
            "state": "delivered",
        },
        {
            "id": "h3",
            "peer": "carol@example.com",
            "direction": "in",
            "body": "evil \x1b[2J\u202egnp.exe",
            "ts": "2026-11-26T09:00:00.000Z",
        },
    ]


@implementer(IUserAgent)
class FakeAgent:
    """
    Answers like the real agent, records every call. Recipients steer the outcome: C{nobody@}
    is unknown, C{boom@} crashes, C{bad@} rejects the text, C{slow@} is never delivered in
    time, C{fail@} expires, C{offline@} has no session (typing).
    """

    def __init__(self, clock: Any = reactor) -> None:
        self.clock = clock
        self.calls: list[tuple[Any, ...]] = []
        self.observers: list[Any] = []
        self.counter = 0
        self.statuses: dict[str, dict[str, Any]] = {}
        self.messages = sample_history()
        self.contact_list = [
            {
                "identity": BOB,
                "first_seen": "2026-11-01T10:00:00.000Z",
                "last_seen": "2026-11-26T08:00:00.000Z",
                "keys": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
                "key_change_pending": False,
            },
            {
                "identity": "carol@example.com",
                "first_seen": "2026-11-02T10:00:00.000Z",
                "last_seen": None,
                "keys": ["aa" * 32, "bb" * 32],
                "key_change_pending": True,
            },
        ]

    def send(self, to: str, text: str, thread: str | None = None, reply_to: str | None = None):
        self.calls.append(("send", to, text, thread, reply_to))
        if to.startswith("nobody@"):
            raise UnknownIdentity(f"{to} is not a contact and the registry does not know it")
        if to.startswith("boom@"):
            raise RuntimeError("secret internals")
        if to.startswith("bad@"):
            raise ValueError("text contains a character XML cannot carry")
        ids = []
        for _ in range(0, len(text), 32768):
            self.counter += 1
            mid = f"m{self.counter}"
            ids.append(mid)
            self.statuses[mid] = {
                "id": mid,
                "peer": to,
                "state": "queued",
                "delivered_nodes": 0,
                "total_nodes": 2 if to.startswith("multi@") else 1,
            }
        result: dict[str, Any] = {"id": ids[0], "peer": to, "state": "queued"}
        if len(ids) > 1:
            result["ids"] = ids
        return defer.succeed(result)

    def waitDelivered(self, message_id: str, timeout: float):
        self.calls.append(("waitDelivered", message_id, timeout))
        status = self.statuses.get(message_id)
        if status is None:
            return defer.fail(UnknownMessage(f"no message {message_id}"))
        if status["peer"].startswith("slow@"):
            return deferLater(self.clock, timeout, lambda: dict(status, state="sent"))
        if status["peer"].startswith("fail@"):
            status.update(state="expired", reason="no receipt within 7 days")
            return defer.succeed(dict(status))
        status.update(state="delivered", delivered_nodes=status["total_nodes"])
        return defer.succeed(dict(status))

    def status_of(self, message_id: str):
        self.calls.append(("status_of", message_id))
        if message_id not in self.statuses:
            raise KeyError(message_id)
        return defer.succeed(dict(self.statuses[message_id]))

    def history(self, peer: str | None, since: str | None, limit: int):
        self.calls.append(("history", peer, since, limit))
        found = [
            m
            for m in self.messages
            if (peer is None or m["peer"] == peer) and (since is None or m["ts"] >= since)
        ]
        return defer.succeed(found[-limit:])

    def conversations(self):
        self.calls.append(("conversations",))
        return defer.succeed(
            [{"peer": BOB, "last_ts": "2026-11-26T08:01:00.000Z", "last_body": "Hi", "unread": 1}]
        )

    def contacts(self):
        self.calls.append(("contacts",))
        return defer.succeed(self.contact_list)

    def status(self):
        self.calls.append(("status",))
        return defer.succeed(
            {
                "identity": ALICE,
                "node": "n-01",
                "listening": ["tcp6:4605"],
                "registry": {
                    "state": "registered",
                    "registry": "irp.example.com",
                    "expires": "2026-11-26T10:00:00.000Z",
                },
                "advertised": ["[2001:db8::1]:4605", "192.0.2.1:4605"],
                "sessions": [
                    {
                        "peer": BOB,
                        "node": "n-b",
                        "suite": "chacha20-poly1305",
                        "group": "x25519-mlkem768",
                        "since": "2026-11-26T07:00:00.000Z",
                    }
                ],
                "outbox": {"queued": 2, "sent": 1},
            }
        )

    def trust(self, identity: str, accept_new_key: bool):
        self.calls.append(("trust", identity, accept_new_key))
        for contact in self.contact_list:
            if contact["identity"] == identity:
                accepted = bool(accept_new_key and contact["key_change_pending"])
                if accepted:
                    contact["key_change_pending"] = False
                    contact["keys"] = contact["keys"][-1:]
                return defer.succeed(
                    {"identity": identity, "keys": contact["keys"], "accepted": accepted}
                )
        raise UnknownIdentity(f"{identity} is not a contact")

    def typing(self, to: str, state: str):
        self.calls.append(("typing", to, state))
        if to.startswith("offline@"):
            raise NotConnected(f"no session with {to}")
        return defer.succeed(None)

    def addObserver(self, observer: Any) -> None:
        self.observers.append(observer)

    def removeObserver(self, observer: Any) -> None:
        self.observers.remove(observer)

    def emit(self, event: dict[str, Any]) -> None:
        for observer in list(self.observers):
            observer.agentEvent(event)

    def sends(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "send"]

    def typings(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "typing"]


@implementer(IAgentEvents)
class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def agentEvent(self, event: dict[str, Any]) -> None:
        self.events.append(event)


# -- helpers -------------------------------------------------------------------------------


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
        self.agent = FakeAgent()
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
        self.assertEqual(result, {"identity": "carol@example.com", "keys": ["bb" * 32],
                                  "accepted": True})  # fmt: skip
        result = yield client.trust(BOB, False)
        self.assertFalse(result["accepted"])
        self.assertEqual(self.agent.calls[-1], ("trust", BOB, False))
        yield client.typing(BOB, "composing")
        yield client.typing(BOB, "paused")
        self.assertEqual(
            self.agent.typings(), [("typing", BOB, "composing"), ("typing", BOB, "paused")]
        )

    def test_client_provides_the_agent_interface(self) -> None:
        verifyObject(IUserAgent, ControlClient())


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


# -- events and flow control ---------------------------------------------------------------


class StuckClient(ControlClient):
    """Never acknowledges events: the slow client flow control must cope with."""

    @control.Event.responder
    def _event(self, event: Any) -> Any:
        self.received = getattr(self, "received", [])
        self.received.append(event)
        ControlClient._event(self, event)  # observers, the overflow flag
        return defer.Deferred()


class EventTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_events_reach_subscriber_filtered(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        recorder = Recorder()
        client.addObserver(recorder)
        self.assertEqual(self.agent.observers, [])  # explicit subscribe below
        client._observers.clear()
        client.subscribed = False
        yield client.subscribe(["message", "typing"], BOB)
        client.addObserver(recorder)
        self.assertEqual(len(self.agent.observers), 1)
        self.agent.emit({"type": "message", "peer": BOB, "id": "a", "body": "one"})
        self.agent.emit({"type": "message", "peer": "carol@example.com", "id": "b", "body": "x"})
        self.agent.emit({"type": "delivery", "peer": BOB, "id": "m1", "state": "sent"})
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})
        yield wait_for(lambda: len(recorder.events) == 2, what="two events")
        self.assertEqual([e.get("id", e["type"]) for e in recorder.events], ["a", "typing"])
        # Subscribing again replaces the filter.
        yield client.subscribe()
        self.agent.emit({"type": "presence", "peer": "carol@example.com", "nodes": []})
        yield wait_for(lambda: len(recorder.events) == 3, what="third event")
        self.assertEqual(len(self.agent.observers), 1)
        yield client.unsubscribe()
        self.assertEqual(self.agent.observers, [])
        self.agent.emit({"type": "message", "peer": BOB, "id": "late", "body": "x"})
        yield client.status()  # a round trip: a late event would have arrived by now
        self.assertEqual(len(recorder.events), 3)

    @defer.inlineCallbacks
    def test_add_observer_subscribes_and_disconnect_unsubscribes(self) -> Any:
        yield self.serve()
        client = yield self.connect()
        recorder = Recorder()
        client.addObserver(recorder)
        yield wait_for(lambda: self.agent.observers, what="subscription")
        self.agent.emit({"type": "session", "peer": BOB, "state": "open"})
        yield wait_for(lambda: recorder.events, what="event")
        client.transport.loseConnection()
        yield wait_for(lambda: not self.agent.observers, what="observer removal")

    @defer.inlineCallbacks
    def test_many_events_in_order_with_small_window(self) -> Any:
        yield self.serve(window=2, max_queued=1000)
        client = yield self.connect()
        recorder = Recorder()
        yield client.subscribe()
        client.addObserver(recorder)
        for i in range(300):
            self.agent.emit({"type": "message", "peer": BOB, "id": str(i), "body": "x" * 500})
        yield wait_for(lambda: len(recorder.events) == 300, what="300 events")
        self.assertEqual([e["id"] for e in recorder.events], [str(i) for i in range(300)])

    @defer.inlineCallbacks
    def test_slow_client_is_disconnected_not_buffered(self) -> Any:
        port = yield self.serve(window=2, max_queued=3)
        endpoint = endpoints.UNIXClientEndpoint(
            reactor, os.path.join(self.data_dir, "control.sock")
        )
        client = yield endpoint.connect(protocol.Factory.forProtocol(StuckClient))
        self.addCleanup(self.disconnect, client)
        yield client.subscribe()
        (server,) = port.factory.clients
        for i in range(5):  # two in flight, three queued: still within bounds
            self.agent.emit({"type": "message", "peer": BOB, "id": str(i), "body": "x"})
        self.assertEqual((server._in_flight, len(server._queue)), (2, 3))
        self.assertFalse(client.disconnected.called)
        self.agent.emit({"type": "message", "peer": BOB, "id": "5", "body": "x"})
        self.assertEqual(self.agent.observers, [])  # unsubscribed at once
        yield client.disconnected
        self.assertTrue(client.overflowed)
        self.assertEqual([e.get("id") for e in client.received], ["0", "1", None])
        self.assertEqual(client.received[-1], {"type": "overflow", "behind": 6})

    @defer.inlineCallbacks
    def test_pending_agent_calls_cancelled_on_disconnect(self) -> Any:
        port = yield self.serve()
        client = yield self.connect()
        cancelled: list[bool] = []
        waiting: defer.Deferred[Any] = defer.Deferred(lambda _: cancelled.append(True))
        self.agent.waitDelivered = lambda mid, timeout: waiting  # type: ignore[method-assign]
        d = client.waitDelivered("m1", 3600)
        yield wait_for(lambda: port.factory.clients and next(iter(port.factory.clients))._pending)
        client.transport.loseConnection()
        yield self.assertFailure(d, AgentDisconnected)
        yield wait_for(lambda: cancelled, what="cancellation")


# -- files, permissions, peers -------------------------------------------------------------


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@defer.inlineCallbacks
def nobody_python() -> Any:
    """A Python the user nobody may run (our venv may live under /root), or None."""
    from twisted.internet.utils import getProcessValue

    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and os.path.exists(candidate):
            code = yield getProcessValue(
                "runuser", ["-u", "nobody", "--", candidate, "-c", "pass"], env=dict(os.environ)
            )
            if code == 0:
                return candidate
    return None


# A stdlib-only client: connect, send an AMP Status box, report what happened.
OTHER_USER_CLIENT = r"""
import socket, struct, sys
def box(**kv):
    out = b""
    for k, v in kv.items():
        out += struct.pack("!H", len(k)) + k.encode() + struct.pack("!H", len(v)) + v.encode()
    return out + b"\0\0"
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
except OSError as e:
    print("ERR", e.errno); sys.exit(0)
try:
    s.sendall(box(_command="Status", _ask="1"))
    data = s.recv(65536)
except (ConnectionResetError, BrokenPipeError):
    print("RESET"); sys.exit(0)
print("EOF" if not data else "ANSWERED")
"""


class PermissionTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_modes(self) -> Any:
        os.mkdir(self.data_dir, 0o755)
        os.chmod(self.data_dir, 0o755)
        yield self.serve()
        self.assertEqual(mode_of(self.data_dir), 0o700)
        sock = os.path.join(self.data_dir, "control.sock")
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))
        self.assertEqual(mode_of(sock), 0o600)
        self.assertEqual(os.stat(sock).st_uid, os.geteuid())

    @defer.inlineCallbacks
    def test_creates_missing_directory(self) -> Any:
        nested = os.path.join(self.base, "a", "b")
        yield self.serve(nested)
        self.assertEqual(mode_of(nested), 0o700)
        self.assertEqual(mode_of(os.path.join(nested, "control.sock")), 0o600)

    @defer.inlineCallbacks
    def test_socket_removed_on_stop(self) -> Any:
        port = yield self.serve()
        yield port.stopListening()
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "control.sock")))

    @defer.inlineCallbacks
    def test_directory_of_another_user_refused(self) -> Any:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to give a directory to another user")
        os.mkdir(self.data_dir, 0o700)
        os.chown(self.data_dir, 65534, 65534)
        error = yield self.assertFailure(self.serve(), DataDirError)
        self.assertIn("belongs to uid 65534", str(error))

    def test_chmod_failure_refused(self) -> None:
        os.mkdir(self.data_dir, 0o755)
        os.chmod(self.data_dir, 0o755)

        def refuse(path: str, mode: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        self.patch(control.os, "chmod", refuse)
        error = self.assertRaises(DataDirError, control.prepare_data_dir, self.data_dir)
        self.assertIn("accessible to other users (mode 0755)", str(error))
        self.assertIn("Operation not permitted", str(error))

    def test_path_too_long(self) -> None:
        error = self.assertRaises(DataDirError, control._socket_path, "/tmp/" + "x" * 120)
        self.assertIn("too long", str(error))

    @defer.inlineCallbacks
    def test_non_socket_in_the_way_is_kept(self) -> Any:
        os.mkdir(self.data_dir, 0o700)
        path = os.path.join(self.data_dir, "control.sock")
        with open(path, "w") as f:
            f.write("precious")
        error = yield self.assertFailure(self.serve(), DataDirError)
        self.assertIn("not a socket", str(error))
        with open(path) as f:
            self.assertEqual(f.read(), "precious")

    @defer.inlineCallbacks
    def test_stale_socket_removed(self) -> Any:
        os.mkdir(self.data_dir, 0o700)
        path = os.path.join(self.data_dir, "control.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays, nothing listens: a crashed agent's leftover
        yield self.serve()
        client = yield self.connect()
        status = yield client.status()
        self.assertEqual(status["identity"], ALICE)

    @defer.inlineCallbacks
    def test_second_agent_refused_first_keeps_running(self) -> Any:
        yield self.serve()
        error = yield self.assertFailure(self.serve(agent=FakeAgent()), AgentAlreadyRunning)
        self.assertIn("another sixchat agent already answers", str(error))
        client = yield self.connect()
        yield client.status()
        self.assertEqual(self.agent.calls, [("status",)])

    def test_check_peer_uid(self) -> None:
        control.check_peer_uid(1000, 1000)
        error = self.assertRaises(PeerRefused, control.check_peer_uid, 0, 1000)
        self.assertIn("uid 0 refused", str(error))
        self.assertRaises(PeerRefused, control.check_peer_uid, 1001, 1000)

    @defer.inlineCallbacks
    def test_peer_credentials_of_a_real_connection(self) -> Any:
        port = yield self.serve()
        client = yield self.connect()
        yield client.status()
        (server,) = port.factory.clients
        self.assertEqual(server.credentials.uid, os.geteuid())
        self.assertEqual(server.credentials.pid, os.getpid())
        self.assertEqual(control.peer_credentials(client.transport).uid, os.geteuid())
        self.assertIsNone(control.peer_credentials(object()))

    @defer.inlineCallbacks
    def test_other_uid_refused_by_peercred(self) -> Any:
        """The server admits only its configured uid; here a fake one, so we are refused."""
        port = yield self.serve(uid=os.geteuid() + 4242)
        client = yield self.connect()
        yield self.assertFailure(client.status(), AgentDisconnected)
        self.assertEqual(self.agent.calls, [])
        self.assertEqual(port.factory.clients, set())

    @defer.inlineCallbacks
    def test_other_user_cannot_connect(self) -> Any:
        """As root: the user nobody is stopped by the directory, the socket mode, SO_PEERCRED."""
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            raise unittest.SkipTest("needs root and runuser to act as another user")
        python = yield nobody_python()
        if python is None:
            raise unittest.SkipTest("no Python the user nobody may run")
        from twisted.internet.utils import getProcessOutput

        yield self.serve()
        sock = os.path.join(self.data_dir, "control.sock")
        os.chmod(self.base, 0o711)  # let nobody reach the data directory itself

        def attempt() -> Any:
            d = getProcessOutput(
                "runuser", ["-u", "nobody", "--", python, "-c", OTHER_USER_CLIENT, sock],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, errortoo=True,
            )  # fmt: skip
            return d.addCallback(lambda out: out.decode().strip())

        # 1. the data directory (0700) stops it
        result = yield attempt()
        self.assertEqual(result, "EACCES")
        # 2. with the directory opened up, the socket's mode (0600) stops it
        os.chmod(self.data_dir, 0o711)
        result = yield attempt()
        self.assertEqual(result, "EACCES")
        # 3. with the socket opened up too, SO_PEERCRED stops it
        os.chmod(sock, 0o666)
        result = yield attempt()
        self.assertIn(result, ("EOF", "RESET"))
        self.assertEqual(self.agent.calls, [])


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


class DataDirTests(unittest.TestCase):
    def test_default_data_dir(self) -> None:
        env = {"XDG_DATA_HOME": "/x/share", "HOME": "/home/a"}
        self.assertEqual(control.default_data_dir(ALICE, env), f"/x/share/sixchat/{ALICE}/")
        self.assertEqual(
            control.default_data_dir(ALICE, {"HOME": "/home/a"}),
            f"/home/a/.local/share/sixchat/{ALICE}/",
        )
        self.assertRaises(BadArgument, control.default_data_dir, "../etc", env)

    def test_resolve(self) -> None:
        xdg = short_tempdir(self)
        env = {"XDG_DATA_HOME": xdg}
        error = self.assertRaises(NoAgentRunning, control.resolve_data_dir, None, None, env)
        self.assertIn("no sixchat agent found under", str(error))
        self.assertEqual(control.resolve_data_dir("/d", ALICE, env), "/d")
        self.assertEqual(
            control.resolve_data_dir(None, BOB, env), os.path.join(xdg, "sixchat", BOB) + "/"
        )
        socks = []
        for who in (ALICE, BOB):
            path = os.path.join(xdg, "sixchat", who)
            os.makedirs(path)
            socks.append(socket.socket(socket.AF_UNIX))
            socks[-1].bind(os.path.join(path, "control.sock"))
            if who == ALICE:
                self.assertEqual(control.resolve_data_dir(None, None, env), path)
        os.makedirs(os.path.join(xdg, "sixchat", "empty@example.com"))
        error = self.assertRaises(NoAgentRunning, control.resolve_data_dir, None, None, env)
        self.assertIn(f"several agents under {xdg}/sixchat ({ALICE}, {BOB})", str(error))
        self.assertIn("--as IDENTITY", str(error))
        for s in socks:
            s.close()

    def test_normalize_timestamp(self) -> None:
        n = control.normalize_timestamp
        self.assertEqual(n("2026-11-26T08:00:00Z"), "2026-11-26T08:00:00.000Z")
        self.assertEqual(n("2026-11-26t08:00:00.123456789+02:00"), "2026-11-26T06:00:00.123Z")
        self.assertEqual(n("2026-11-26 08:00:00-00:30"), "2026-11-26T08:30:00.000Z")
        for bad in ("2026-11-26", "2026-11-26T08:00:00", "2026-02-30T08:00:00Z", "soon"):
            self.assertRaises(BadArgument, n, bad)


# -- CLI helpers (in-process, pure) ----------------------------------------------------------


class CLIHelperTests(unittest.TestCase):
    def test_parse_since(self) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
        p = cli_agent.parse_since
        self.assertEqual(p("2h", now), "2026-11-26T10:00:00.000Z")
        self.assertEqual(p("3d", now), "2026-11-23T12:00:00.000Z")
        self.assertEqual(p("1d12h", now), "2026-11-25T00:00:00.000Z")
        self.assertEqual(p("90s", now), "2026-11-26T11:58:30.000Z")
        self.assertEqual(p("2026-11-26T08:00:00+01:00", now), "2026-11-26T07:00:00.000Z")
        self.assertEqual(p("2026-11-26T08:00:00Z", now), "2026-11-26T08:00:00.000Z")
        from sixchat.cli import UsageError

        for bad in ("2x", "yesterday", "h2", ""):
            self.assertRaises(UsageError, p, bad, now)

    def test_clean(self) -> None:
        self.assertEqual(cli_agent.clean("a\x1b[2Jb"), "a\\x1b[2Jb")
        self.assertEqual(cli_agent.clean("\u202eabc"), "\\u202eabc")
        self.assertEqual(cli_agent.clean("a\r\nb", oneline=True), "a ⏎ b")
        self.assertEqual(cli_agent.clean("x\x9by"), "x\\x9by")
        self.assertEqual(cli_agent.clean("ünïcode ✓ 😀"), "ünïcode ✓ 😀")

    def test_format_event(self) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
        line = cli_agent.format_event(
            {"type": "delivery", "peer": BOB, "id": "m1", "state": "delivered",
             "delivered_nodes": 1, "total_nodes": 2}, now,
        )  # fmt: skip
        self.assertTrue(line.endswith(f"-> {BOB}  m1 delivered (1/2 devices)"), line)
        line = cli_agent.format_event({"type": "message", "peer": BOB, "body": "a\nb"}, now)
        self.assertIn(f"<- {BOB}  a ⏎ b", line)
        line = cli_agent.format_event({"type": "typing", "peer": BOB, "state": "composing"}, now)
        self.assertTrue(line.endswith(f"{BOB} is typing…"))


# -- the CLI as a user runs it --------------------------------------------------------------


class CLITests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        ServerMixin.setUp(self)
        yield self.serve()
        self.dd = ["--data-dir", self.data_dir]

    @defer.inlineCallbacks
    def test_send_queued(self) -> Any:
        out, err, code = yield run(["send", BOB, "hello there", *self.dd])
        self.assertEqual((out, err, code), (f"queued m1 to {BOB}\n", "", 0))
        self.assertEqual(self.agent.sends(), [("send", BOB, "hello there", None, None)])

    @defer.inlineCallbacks
    def test_send_options_and_json(self) -> Any:
        out, err, code = yield run(
            ["send", BOB, "x", "--thread", "t9", "--reply-to", "h1", "--json", *self.dd]
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"id": "m1", "peer": BOB, "state": "queued"})
        self.assertEqual(self.agent.sends(), [("send", BOB, "x", "t9", "h1")])

    @defer.inlineCallbacks
    def test_send_from_stdin(self) -> Any:
        text = "line one\nline two ✓ " + "z" * 70_000
        out, err, code = yield run(["send", BOB, "-", *self.dd], stdin=text.encode() + b"\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.agent.sends()[0][2], text)
        self.assertEqual(out, f"queued 3 parts to {BOB}: m1 m2 m3\n")

    @defer.inlineCallbacks
    def test_send_wait_delivered(self) -> Any:
        out, err, code = yield run(["send", "multi@example.com", "hi", "--wait", "5", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "delivered m1 to multi@example.com (2/2 devices)\n")
        self.assertIn(("waitDelivered", "m1", 5.0), self.agent.calls)

    @defer.inlineCallbacks
    def test_send_wait_still_pending_exits_3(self) -> Any:
        out, err, code = yield run(["send", "slow@example.com", "hi", "--wait", "0.3", *self.dd])
        self.assertEqual(code, 3, err)
        self.assertEqual(out, "not delivered after 0.3 s: m1 to slow@example.com is sent\n")

    @defer.inlineCallbacks
    def test_send_wait_failed_exits_1_json(self) -> Any:
        out, err, code = yield run(
            ["send", "fail@example.com", "hi", "--wait", "2", "--json", *self.dd]
        )
        self.assertEqual(code, 1, err)
        report = json.loads(out)
        self.assertEqual(report["outcome"], "failed")
        self.assertEqual(report["statuses"][0]["state"], "expired")
        out, err, code = yield run(["send", "fail@example.com", "hi", "--wait", "2", *self.dd])
        self.assertEqual(out, "FAILED m2 to fail@example.com: expired: no receipt within 7 days\n")

    @defer.inlineCallbacks
    def test_send_errors_are_one_line(self) -> Any:
        out, err, code = yield run(["send", "nobody@example.com", "hi", *self.dd])
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "sixchat: error: nobody@example.com is not a contact and the registry does not "
            "know it\n",
        )
        out, err, code = yield run(["send", BOB, "hi", "--wait", "0", *self.dd])
        self.assertEqual(code, 2)
        self.assertIn("--wait", err)
        out, err, code = yield run(["send", BOB, "-", *self.dd], stdin=b"\n")
        self.assertEqual((code, err), (2, "sixchat: error: empty message\n"))

    @defer.inlineCallbacks
    def test_no_agent_running(self) -> Any:
        empty = os.path.join(self.base, "nobody-here")
        out, err, code = yield run(["status", "--data-dir", empty])
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            f"sixchat: error: no sixchat agent is running for {empty} "
            "(start one with twistd -n sixchat …)\n",
        )

    @defer.inlineCallbacks
    def test_inbox(self) -> Any:
        out, err, code = yield run(["inbox", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.splitlines(),
            [
                f"2026-11-26 08:00:00  <- {BOB}  Hello, Alice",
                f"2026-11-26 08:01:00  -> {BOB}  Hi Bob",
                "                                         second line  [delivered]",
                "2026-11-26 09:00:00  <- carol@example.com  evil \\x1b[2J\\u202egnp.exe",
            ],
        )
        self.assertNotIn("\x1b", out)
        self.assertEqual(self.agent.calls[-1], ("history", None, None, 50))

    @defer.inlineCallbacks
    def test_inbox_filters_and_json(self) -> Any:
        out, err, code = yield run(
            ["inbox", "--peer", BOB, "--since", "2026-11-26T08:00:30Z", "--limit", "7", "--json",
             *self.dd]
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual(self.agent.calls[-1], ("history", BOB, "2026-11-26T08:00:30.000Z", 7))
        self.assertEqual(json.loads(out), [self.agent.messages[1]])
        out, err, code = yield run(["inbox", "--since", "2h", *self.dd])
        self.assertEqual(code, 0, err)
        since = self.agent.calls[-1][2]
        self.assertRegex(since, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        out, err, code = yield run(["inbox", "--since", "whenever", *self.dd])
        self.assertEqual(code, 2)
        self.assertIn("--since 'whenever'", err)

    @defer.inlineCallbacks
    def test_contacts(self) -> Any:
        out, err, code = yield run(["contacts", *self.dd])
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["IDENTITY", "LAST", "SEEN", "KEYS"])
        self.assertEqual(lines[1].split(), [BOB, "2026-11-26", "08:00", "1"])
        self.assertIn("carol@example.com", lines[2])
        self.assertIn("KEY CHANGE PENDING: sixchat trust carol@example.com --accept-new-key",
                      lines[2])  # fmt: skip
        out, err, code = yield run(["contacts", "--json", *self.dd])
        self.assertEqual(json.loads(out), self.agent.contact_list)

    @defer.inlineCallbacks
    def test_status(self) -> Any:
        out, err, code = yield run(["status", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.splitlines(),
            [
                f"identity:    {ALICE}",
                "node:        n-01",
                "listening:   tcp6:4605",
                "registry:    registered with irp.example.com, expires 2026-11-26 10:00:00",
                "advertised:  [2001:db8::1]:4605, 192.0.2.1:4605",
                "sessions:    1",
                f"  {BOB}  node n-b  chacha20-poly1305  x25519-mlkem768, since 2026-11-26 07:00:00",
                "outbox:      2 queued, 1 sent",
            ],
        )
        out, err, code = yield run(["status", "--json", *self.dd])
        self.assertEqual(json.loads(out)["advertised"][1], "192.0.2.1:4605")

    @defer.inlineCallbacks
    def test_trust(self) -> Any:
        out, err, code = yield run(["trust", "carol@example.com", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertIn("a key change is pending", out)
        self.assertNotIn(("trust", "carol@example.com", True), self.agent.calls)
        out, err, code = yield run(["trust", "carol@example.com", "--accept-new-key", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(out, f"accepted the new key of carol@example.com\n  key {'bb' * 32}\n")
        self.assertIn(("trust", "carol@example.com", True), self.agent.calls)
        out, err, code = yield run(["trust", "carol@example.com", "--accept-new-key", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertIn("no pending key change for carol@example.com", out)
        out, err, code = yield run(["trust", "zed@example.com", "--accept-new-key", *self.dd])
        self.assertEqual((code, err), (1, "sixchat: error: zed@example.com is not a contact\n"))

    @defer.inlineCallbacks
    def test_data_dir_discovery(self) -> Any:
        xdg = short_tempdir(self)
        env = {"XDG_DATA_HOME": xdg}
        alice_dir = os.path.join(xdg, "sixchat", ALICE)
        yield self.serve(alice_dir, agent=FakeAgent())
        out, err, code = yield run(["status", "--json"], env=env)
        self.assertEqual((code, json.loads(out)["identity"]), (0, ALICE), err)
        bob_agent = FakeAgent()
        yield self.serve(os.path.join(xdg, "sixchat", BOB), agent=bob_agent)
        out, err, code = yield run(["status"], env=env)
        self.assertEqual(code, 1)
        self.assertIn(f"several agents under {xdg}/sixchat ({ALICE}, {BOB})", err)
        out, err, code = yield run(["contacts", "--as", BOB], env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual(bob_agent.calls, [("contacts",)])

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

    @defer.inlineCallbacks
    def test_chat_through_pipes(self) -> Any:
        proc = spawn_cli(["chat", BOB, "--typing-idle", "0.3", *self.dd])
        yield wait_for(lambda: b"second line" in proc.out, what="history")
        self.assertEqual(
            proc.text.splitlines(),
            [
                f"--- chat with {BOB} (/quit or end of input to leave) ---",
                f"[08:00] {BOB}: Hello, Alice",
                "[08:01] me: Hi Bob",
                "            second line",
            ],
        )
        self.assertIn(("history", BOB, None, 20), self.agent.calls)
        yield wait_for(lambda: self.agent.observers, what="subscription")
        # incoming message, typing indicator
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})  # shown once
        self.agent.emit({"type": "message", "peer": BOB, "id": "i1", "body": "news",
                         "ts": "2026-11-26T10:30:00.000Z"})  # fmt: skip
        self.agent.emit({"type": "message", "peer": "carol@example.com", "id": "i2",
                         "body": "not for this chat"})  # fmt: skip
        yield wait_for(lambda: b"news" in proc.out, what="incoming message")
        # typing: a partial line is "composing", silence turns it into "paused"
        proc.transport.write("héllo".encode()[:3])  # even half a UTF-8 character counts
        yield wait_for(lambda: self.agent.typings(), what="composing")
        self.assertEqual(self.agent.typings(), [("typing", BOB, "composing")])
        yield wait_for(lambda: len(self.agent.typings()) == 2, what="paused")
        self.assertEqual(self.agent.typings()[1], ("typing", BOB, "paused"))
        proc.transport.write(b"llo\n")
        yield wait_for(lambda: self.agent.sends(), what="send")
        self.assertEqual(self.agent.sends(), [("send", BOB, "héllo", None, None)])
        self.agent.emit({"type": "delivery", "peer": BOB, "id": "m1", "state": "delivered"})
        yield wait_for(lambda: "delivered" in proc.text.splitlines()[-1], what="tick")
        proc.transport.write(b"/help\n//slash\n/nonsense\n/quit\nnot sent\n")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.err)
        lines = proc.text.splitlines()[4:]
        self.assertEqual(lines[0], f"{BOB} is typing…")
        self.assertEqual(lines[1], f"[10:30] {BOB}: news")
        self.assertRegex(lines[2], r"^\[\d\d:\d\d\] me: héllo$")
        self.assertEqual(lines[3], "  ✓✓ delivered: héllo")
        self.assertIn("/quit leaves", lines[4])
        self.assertRegex(lines[5], r"^\[\d\d:\d\d\] me: /slash$")
        self.assertEqual(lines[6], "unknown command /nonsense (/help lists them)")
        self.assertEqual(len(lines), 7)
        self.assertNotIn("not for this chat", proc.text)
        self.assertEqual([s[2] for s in self.agent.sends()], ["héllo", "/slash"])

    @defer.inlineCallbacks
    def test_chat_end_of_input_sends_last_line(self) -> Any:
        out, err, code = yield run(["chat", BOB, *self.dd], stdin=b"first\nlast without newline")
        self.assertEqual(code, 0, err)
        self.assertEqual([s[2] for s in self.agent.sends()], ["first", "last without newline"])

    @defer.inlineCallbacks
    def test_chat_send_failure_is_shown(self) -> Any:
        out, err, code = yield run(["chat", "nobody@example.com", *self.dd], stdin=b"hi\n")
        self.assertEqual(code, 0, err)
        self.assertIn("  ✗ not sent: nobody@example.com is not a contact", out)

    @defer.inlineCallbacks
    def test_chat_on_a_terminal(self) -> Any:
        """With a pty as stdin the line is edited locally: keystrokes are echoed and count."""
        proc = spawn_cli(["chat", BOB, "--typing-idle", "30", *self.dd], pty=True)
        yield wait_for(lambda: b"second line" in proc.out, what="history")
        yield wait_for(lambda: self.agent.observers, what="subscription")
        proc.transport.write(b"hx\x7fi")  # h, x, backspace, i
        yield wait_for(lambda: self.agent.typings(), what="composing")
        yield wait_for(lambda: b"\b \b" in proc.out, what="backspace echo")
        self.agent.emit({"type": "message", "peer": BOB, "id": "i9", "body": "meanwhile",
                         "ts": "2026-11-26T10:30:00.000Z"})  # fmt: skip
        # the incoming line is printed above the redrawn, still unfinished input
        yield wait_for(lambda: b"meanwhile" in proc.out and proc.out.endswith(b"> hi"),
                       what="redraw")  # fmt: skip
        proc.transport.write(b"\r")
        yield wait_for(lambda: self.agent.sends(), what="send")
        self.assertEqual(self.agent.sends(), [("send", BOB, "hi", None, None)])
        proc.transport.write(b"\x04")  # Ctrl-D on an empty line
        code = yield proc.ended
        self.assertEqual(code, 0, proc.text)


# -- a fake agent in its own process -------------------------------------------------------


class AgentProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"ready\n" in self.out and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.out.decode(errors="replace")))
        self.ended.callback(None)


class SeparateProcessTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_real_other_agent_then_crash_leaves_stale_socket(self) -> Any:
        proc = AgentProcess()
        transport = reactor.spawnProcess(
            proc,
            sys.executable,
            [sys.executable, "-m", "sixchat.test.test_control", self.data_dir],
            env=child_env(),
        )
        try:
            yield proc.ready
            out, err, code = yield run(["status", "--json", "--data-dir", self.data_dir])
            self.assertEqual((code, json.loads(out)["identity"]), (0, ALICE), err)
            error = yield self.assertFailure(self.serve(), AgentAlreadyRunning)
            self.assertIn(self.data_dir, str(error))
        finally:
            transport.signalProcess("KILL")  # a crash: the socket file stays behind
            yield proc.ended
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "control.sock")))
        yield self.serve()
        client = yield self.connect()
        yield client.status()
        self.assertEqual(self.agent.calls, [("status",)])


def serve_fake_agent(data_dir: str) -> None:
    """C{python -m sixchat.test.test_control DATA_DIR}: a fake agent for manual CLI trials."""
    from twisted.internet import task

    async def main(reactor: Any) -> None:
        await listen_control(reactor, data_dir, FakeAgent(reactor))
        print("ready", flush=True)
        await defer.Deferred()  # until killed

    task.react(lambda r: defer.ensureDeferred(main(r)))


if __name__ == "__main__":
    serve_fake_agent(sys.argv[1])
