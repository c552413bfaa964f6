"""
The control server (L{sixchat.agent.control.server}) against a fake L{IUserAgent} served on a
real UNIX socket: event delivery and flow control, the socket's files and permissions, who may
connect (L{sixchat.agent.control.unixsocket}). One test runs a fake agent as a separate
process (C{python -m sixchat.testing.agent DATA_DIR}) to check the "another agent answers" and
"crashed agent left a stale socket" paths with a real process on the other end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from sixchat.agent.control.client import ControlClient
from sixchat.agent.control.commands import Event
from sixchat.agent.control.unixsocket import check_peer_uid, peer_credentials, socket_path
from sixchat.agent.errors import AgentAlreadyRunning, AgentDisconnected, DataDirError, PeerRefused
from sixchat.test.control_support import Recorder, ServerMixin, run, wait_for
from sixchat.test.processes import spawn
from sixchat.testing.agent import ALICE, BOB, FakeAgent

# -- events and flow control ---------------------------------------------------------------


class StuckClient(ControlClient):
    """Never acknowledges events: the slow client flow control must cope with."""

    @Event.responder
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
    def test_one_peers_presence_is_followed_while_subscribed(self) -> Any:
        """Issue 17 item 6 (chat shows the peer going offline): a subscription to one
        peer's presence has the agent follow it, until unsubscribed or disconnected."""
        yield self.serve()
        client = yield self.connect()
        follows = lambda: [c for c in self.agent.calls if "ollowPresence" in c[0]]  # noqa: E731
        yield client.subscribe(["message"], BOB)  # no presence: nothing followed
        yield client.subscribe(None)  # every peer: nothing followed
        self.assertEqual(follows(), [])
        yield client.subscribe(["message", "presence"], BOB)
        self.assertEqual(follows(), [("followPresence", BOB)])
        yield client.subscribe(["presence"], "carol@example.com")  # replaces it
        yield client.unsubscribe()
        self.assertEqual(
            follows(),
            [("followPresence", BOB), ("unfollowPresence", BOB),
             ("followPresence", "carol@example.com"), ("unfollowPresence", "carol@example.com")],
        )  # fmt: skip
        yield client.subscribe(["presence"], BOB)
        client.transport.loseConnection()
        yield wait_for(lambda: follows()[-1] == ("unfollowPresence", BOB), what="release")

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

    def test_path_too_long(self) -> None:
        error = self.assertRaises(DataDirError, socket_path, "/tmp/" + "x" * 120)
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
        error = yield self.assertFailure(self.serve(agent=FakeAgent(reactor)), AgentAlreadyRunning)
        self.assertIn("another sixchat agent already answers", str(error))
        client = yield self.connect()
        yield client.status()
        self.assertEqual(self.agent.calls, [("status",)])

    def test_check_peer_uid(self) -> None:
        check_peer_uid(1000, 1000)
        error = self.assertRaises(PeerRefused, check_peer_uid, 0, 1000)
        self.assertIn("uid 0 refused", str(error))
        self.assertRaises(PeerRefused, check_peer_uid, 1001, 1000)

    @defer.inlineCallbacks
    def test_peer_credentials_of_a_real_connection(self) -> Any:
        port = yield self.serve()
        client = yield self.connect()
        yield client.status()
        (server,) = port.factory.clients
        self.assertEqual(server.credentials.uid, os.geteuid())
        self.assertEqual(server.credentials.pid, os.getpid())
        self.assertEqual(peer_credentials(client.transport).uid, os.geteuid())
        self.assertIsNone(peer_credentials(object()))

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


# -- a fake agent in its own process -------------------------------------------------------


class SeparateProcessTests(ServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_real_other_agent_then_crash_leaves_stale_socket(self) -> Any:
        proc = spawn("fake agent", [sys.executable, "-m", "sixchat.testing.agent", self.data_dir])
        try:
            yield proc.wait("^ready$")
            out, err, code = yield run(["status", "--json", "--data-dir", self.data_dir])
            self.assertEqual((code, json.loads(out)["identity"]), (0, ALICE), err)
            error = yield self.assertFailure(self.serve(), AgentAlreadyRunning)
            self.assertIn(self.data_dir, str(error))
        finally:
            proc.signal("KILL")  # a crash: the socket file stays behind
            yield proc.ended()
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "control.sock")))
        yield self.serve()
        client = yield self.connect()
        yield client.status()
        self.assertEqual(self.agent.calls, [("status",)])
