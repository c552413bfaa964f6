"""
The user agent end to end, with real processes on 127.0.0.1 only: a C{twistd -n sixchat-irp}
registry, C{twistd -n sixchat} agents, and the C{sixchat} command line (plus, where hundreds
of calls would be too slow as subprocesses, the control client of L{sixchat.agent.control}
in this process, which is what the command line itself uses).

What is proven here (the user-agent issue's "Tests"):

  1. a message sent while the peer is offline is delivered when it comes online;
  2. SIGKILLing the receiver in the middle of a burst of 500 messages loses and duplicates
     nothing once it is restarted on the same data directory;
  3. the sender restarted with a full outbox delivers all of it, once;
  4. two nodes of one identity both receive, and the sender counts 2/2;
  5. a key change is refused (C{--pin-policy refuse}) until C{sixchat trust --accept-new-key},
     whether the sender or the receiver refuses it, shown by C{watch}, C{contacts}, C{inbox}
     and C{chat}, and old keys retired with C{--forget-old}; under the default C{warn} it
     is shown in the conversation too, and C{inbox} reads the store of a stopped agent;
     C{chat} says when the peer goes offline and comes back;
  6. the control socket (0600 in a 0700 directory) refuses another user's process.

Every process gets an ephemeral port, every wait is bounded, and every process is stopped
(SIGTERM, then SIGKILL) by a cleanup even when the test fails. Data directories live under
C{/tmp/sc-XXXXXX/}: the control socket's path must stay under 107 bytes, which trial's own
temporary directories exceed.

The helpers (L{RegistryProcess}, L{AgentProcess}, L{E2ECase}, on L{sixchat.test.processes}'
L{ChildProcess}) are meant to be reused by other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface import implementer

from sixchat.agent.interfaces import IAgentEvents
from sixchat.test.processes import (
    START_TIMEOUT,
    ChildProcess,
    bounded,
    eventually,
    run_cli,
    short_tempdir,
    spawn,
    twistd_argv,
)

ALICE = "alice@example.com"
BOB = "bob@example.com"

#: Bounds for waits (seconds) beyond START_TIMEOUT/STOP_TIMEOUT (L{sixchat.test.processes}).
#: Generous for a loaded 2-core CI machine; a healthy run takes a fraction of each.
DELIVERY_TIMEOUT = 60.0
BURST_TIMEOUT = 120.0

_READY_AGENT = r"user agent \S+ \(node {node}\) ready"
_REGISTERED = r"registered node {node} at "
_READY_REGISTRY = r"IRP registry for .* listening on (\S+) port (\d+)"


class RegistryProcess:
    """C{twistd -n sixchat-irp} on 127.0.0.1, an ephemeral port, loopback contacts allowed."""

    def __init__(self, case: unittest.TestCase, base: str, cert: str, ca_dir: str) -> None:
        self.base = base
        self.args = [
            "--cert", cert, "--ca-dir", ca_dir, "--db", os.path.join(base, "irp.sqlite"),
            "--listen", "tcp:0:interface=127.0.0.1", "--allow-private-addresses",
        ]  # fmt: skip
        self.proc: ChildProcess | None = None
        self.address = ""
        case.addCleanup(self.stop)

    @defer.inlineCallbacks
    def start(self) -> Any:
        argv = [*twistd_argv(), "-n", "--pidfile=", "sixchat-irp", *self.args]
        self.proc = spawn("registry", argv, self.base)
        match = yield self.proc.wait(_READY_REGISTRY, timeout=START_TIMEOUT)
        self.address = f"127.0.0.1:{int(match.group(2))}"
        return self.address

    def stop(self) -> Any:
        return self.proc.terminate() if self.proc is not None else None

    @property
    def log(self) -> str:
        return self.proc.log if self.proc else ""


class AgentProcess:
    """
    One C{twistd -n sixchat} agent with its own short data directory, which survives
    L{stop}/L{kill} and L{start} again (a restart). L{start} returns once the agent is
    ready (store open, control socket listening) and, with a registry, registered.
    """

    def __init__(
        self,
        case: unittest.TestCase,
        base: str,
        name: str,
        cert: str,
        trust: str,
        *,
        registry: RegistryProcess | None = None,
        registry_ca: str | None = None,
        node: str | None = None,
        data_dir: str | None = None,
        extra: Iterable[str] = (),
    ) -> None:
        self.base = base
        self.name = name
        self.cert = cert
        self.trust = trust
        self.registry = registry
        self.registry_ca = registry_ca
        self.node = node or name
        self.data_dir = data_dir or os.path.join(base, name)
        self.extra = list(extra)
        self.proc: ChildProcess | None = None
        self.runs: list[ChildProcess] = []
        self.port = 0
        case.addCleanup(self.stop)

    def argv(self) -> list[str]:
        args = [
            "--cert", self.cert, "--trust", self.trust, "--data-dir", self.data_dir,
            "--listen", "tcp:0:interface=127.0.0.1", "--node", self.node, *self.extra,
        ]  # fmt: skip
        if self.registry is not None:
            args += ["--registry", self.registry.address]
            if self.registry_ca:
                args += ["--registry-ca", self.registry_ca]
        return [*twistd_argv(), "-n", "--pidfile=", "sixchat", *args]

    @defer.inlineCallbacks
    def start(self) -> Any:
        assert self.proc is None or not self.proc.running, f"{self.name} is already running"
        argv = self.argv()
        if self.registry is None:  # --node needs --registry
            i = argv.index("--node")
            del argv[i : i + 2]
        self.proc = spawn(f"{self.name} (run {len(self.runs) + 1})", argv, self.base)
        self.runs.append(self.proc)
        match = yield self.proc.wait(r"listening on \S+ port (\d+)", timeout=START_TIMEOUT)
        self.port = int(match.group(1))
        node = re.escape(self.node)
        if self.registry is None:
            yield self.proc.wait(r"user agent \S+ \(node \S+\) ready", timeout=START_TIMEOUT)
        else:
            yield self.proc.wait(_READY_AGENT.format(node=node), timeout=START_TIMEOUT)
            yield self.proc.wait(_REGISTERED.format(node=node), timeout=START_TIMEOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def stop(self) -> Any:
        """SIGTERM (a clean shutdown: sessions closed, unregistered), SIGKILL if stuck."""
        return self.proc.terminate() if self.proc is not None else None

    @defer.inlineCallbacks
    def kill(self) -> Any:
        """SIGKILL: a crash, nothing cleaned up."""
        assert self.proc is not None
        self.proc.signal("KILL")
        result = yield self.proc.ended()
        return result

    @property
    def log(self) -> str:
        return "\n".join(f"=== {p.name} ===\n{p.log}" for p in self.runs)

    def tail(self) -> str:
        return self.proc.tail() if self.proc else ""

    # the command line and the control API ------------------------------------------------

    @defer.inlineCallbacks
    def cli(self, *args: str) -> Any:
        """C{sixchat ARGS --data-dir DIR}: (stdout, stderr, exit status)."""
        out, err, code = yield run_cli([*args, "--data-dir", self.data_dir], cwd=self.base)
        if "Traceback" in err:
            raise AssertionError(f"sixchat {' '.join(args)} crashed:\n{err}")
        return out, err, code

    @defer.inlineCallbacks
    def cli_json(self, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
        """C{sixchat ARGS --json}, parsed; the exit status must be one of C{codes}."""
        out, err, code = yield self.cli(*args, "--json")
        if code not in codes:
            raise AssertionError(f"sixchat {' '.join(args)} --json exited {code}:\n{out}{err}")
        return json.loads(out)

    @defer.inlineCallbacks
    def control(self, case: unittest.TestCase) -> Any:
        """A L{sixchat.agent.control.ControlClient} connected to this agent (closed at the
        end of the test)."""
        from sixchat.agent.control.client import connect_control

        client = yield connect_control(reactor, self.data_dir)
        case.addCleanup(lambda: client.transport and client.transport.loseConnection())
        return client

    @defer.inlineCallbacks
    def inbox(self, peer: str | None = None, limit: int = 1000) -> Any:
        args = ["inbox", "--limit", str(limit)]
        if peer:
            args += ["--peer", peer]
        result = yield self.cli_json(*args)
        return result


@implementer(IAgentEvents)
class EventLog:
    """Collects agent events (from L{ControlClient.addObserver})."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def agentEvent(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


class E2ECase(unittest.TestCase):
    """
    A CA and certificates (made in this process: fast), and helpers that start a registry
    and agents in real processes under one short temporary directory.
    """

    timeout = 240

    def setUp(self) -> None:
        from sixchat import pki

        self.base = short_tempdir(self)
        self.ca_dir = os.path.join(self.base, "ca")
        self.ca_key, self.ca_cert = pki.init_ca(self.ca_dir, "Example CA")
        self.ca = os.path.join(self.ca_dir, "ca.pem")
        key = pki.generate_key("p256")
        cert = pki.issue_server(self.ca_key, self.ca_cert, ["127.0.0.1"], key.public_key())
        self.server_p12 = os.path.join(self.base, "irp.p12")
        pki.write_p12(self.server_p12, key, cert, [], None)
        self.registry: RegistryProcess | None = None

    def issue(self, identity: str, filename: str | None = None) -> str:
        """A new key and certificate for C{identity} from the test CA, as a .p12 file."""
        from sixchat import pki

        path = os.path.join(self.base, filename or identity.split("@")[0] + ".p12")
        key = pki.generate_key("ed25519")
        cert = pki.issue_leaf(self.ca_key, self.ca_cert, [identity], key.public_key())
        pki.write_p12(path, key, cert, [], None, overwrite=True)
        return path

    @defer.inlineCallbacks
    def startRegistry(self) -> Any:
        self.registry = RegistryProcess(self, self.base, self.server_p12, self.ca_dir)
        yield self.registry.start()
        return self.registry

    def agent(self, name: str, identity: str, *extra: str, **kw: Any) -> AgentProcess:
        """An agent for C{identity} (not started); its certificate is issued on first use."""
        cert = kw.pop("cert", None) or os.path.join(self.base, name + ".p12")
        if not os.path.exists(cert):
            self.issue(identity, os.path.basename(cert))
        return AgentProcess(
            self, self.base, name, cert, self.ca,
            registry=self.registry, registry_ca=self.ca, extra=extra, **kw,
        )  # fmt: skip

    def cli_process(self, agent: AgentProcess, *args: str) -> ChildProcess:
        """A long-running C{sixchat ARGS --data-dir DIR} (watch, chat), stopped at the end."""
        argv = [sys.executable, "-m", "sixchat.cli", *args, "--data-dir", agent.data_dir]
        proc = spawn(f"sixchat {args[0]}", argv, self.base)
        self.addCleanup(proc.terminate)
        return proc

    def dump(self, *agents: AgentProcess) -> str:
        parts = [a.tail() for a in agents]
        if self.registry is not None and self.registry.proc is not None:
            parts.append(self.registry.proc.tail(20))
        return "\n".join(parts)

    @defer.inlineCallbacks
    def waitDelivered(
        self, client: Any, ids: list[str], seconds: float, *agents: AgentProcess
    ) -> Any:
        """Every message in C{ids} delivered (per the sender's agent), within C{seconds}."""
        statuses = yield bounded(
            defer.gatherResults([client.waitDelivered(i, seconds) for i in ids]),
            seconds + 10,
            f"{len(ids)} deliveries",
            lambda: self.dump(*agents),
        )
        late = [s for s in statuses if s["state"] != "delivered"]
        if late:
            raise AssertionError(
                f"{len(late)} of {len(ids)} not delivered within {seconds:g} s, e.g. "
                f"{late[0]}\n{self.dump(*agents)}"
            )
        return statuses

    def assertExactlyOnce(
        self, inbox: list[dict[str, Any]], sender: str, bodies: list[str]
    ) -> None:
        """C{inbox} holds each of C{bodies} from C{sender} once, and nothing else from it."""
        got = [m for m in inbox if m["direction"] == "in" and m["peer"] == sender]
        ids = [m["id"] for m in got]
        self.assertEqual(len(ids), len(set(ids)), "a message id is stored twice")
        self.assertEqual(sorted(m["body"] for m in got), sorted(bodies))


class OfflineDeliveryTests(E2ECase):
    @defer.inlineCallbacks
    def test_send_while_offline_then_deliver(self) -> Any:
        """
        1. `send --wait 1` to an offline peer exits 3 (still queued); once bob's agent runs,
        a second `send --wait` exits 0, bob has both messages once each, and alice's agent
        shows the first delivered.
        """
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()  # registered once: known to the registry
        yield bob.stop()  # offline (unregistered), not unknown

        out, err, code = yield alice.cli("send", BOB, "hi while you are away", "--wait", "1")
        self.assertEqual(code, 3, out + err)
        self.assertIn("not delivered after 1 s", out)
        self.assertNotIn("not known", out + err)
        history = yield alice.inbox(BOB)
        (first,) = history
        self.assertEqual((first["direction"], first["state"]), ("out", "queued"))
        status = yield alice.cli_json("status")
        self.assertEqual(status["outbox"]["queued"], 1)

        yield bob.start()
        out, err, code = yield alice.cli("send", BOB, "and now?", "--wait", "30")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        self.assertRegex(out, r"^delivered \S+ to bob@example\.com")

        # the first one went out on the same session; give its receipt a bounded moment
        def first_delivered() -> Any:
            return alice.inbox(BOB).addCallback(
                lambda h: [m for m in h if m["id"] == first["id"] and m["state"] == "delivered"]
            )

        yield eventually(first_delivered, DELIVERY_TIMEOUT, "first message delivered")
        history = yield alice.inbox(BOB)
        self.assertEqual([m["state"] for m in history], ["delivered", "delivered"])
        self.assertEqual([(m["delivered_nodes"], m["total_nodes"]) for m in history], [(1, 1)] * 2)
        status = yield alice.cli_json("status")
        self.assertEqual(status["outbox"], {"queued": 0, "sent": 0, "delivered": 0})

        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["hi while you are away", "and now?"])
        self.assertEqual({m["id"] for m in inbox}, {m["id"] for m in history})


class UnknownRecipientTests(E2ECase):
    """
    Issue 17 item 3 with a real registry and real processes: an unknown recipient is refused
    in one line (exit 1), leaves no outbox entry and no contact, and shows in `watch`;
    --queue-unknown queues it, `cancel` removes it; an offline peer is still queued.
    """

    @defer.inlineCallbacks
    def test_unknown_recipient_refused_queued_on_purpose_and_cancelled(self) -> Any:
        carol = "carol@example.com"
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        assert self.registry is not None
        watch = spawn(
            "watch", [sys.executable, "-m", "sixchat.cli", "watch", "--data-dir", alice.data_dir],
            self.base,
        )  # fmt: skip
        self.addCleanup(watch.terminate)
        client = yield alice.control(self)
        events = EventLog()
        client.addObserver(events)
        yield client.subscribe()

        out, err, code = yield alice.cli("send", carol, "hi", "--wait", "5")
        self.assertEqual(code, 1, out + err)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            f"sixchat: error: {carol} is not known to registry {self.registry.address} (never "
            "registered there, or its certificate expired or was revoked); nothing was queued: "
            "check the address, or use --queue-unknown to queue it until it registers\n",
        )
        contacts = yield alice.cli_json("contacts")
        history = yield alice.inbox()
        status = yield alice.cli_json("status")
        self.assertEqual((contacts, history), ([], []))
        self.assertEqual(status["outbox"], {"queued": 0, "sent": 0, "delivered": 0})
        # `watch` shows it (a refused send changes nothing, so it may be repeated until the
        # watch, started above, has subscribed).
        shown = rf"!! {re.escape(carol)} is not known to registry .*: message not sent"
        yield eventually(
            lambda: watch.count(shown) or alice.cli("send", carol, "hi").addCallback(lambda _: 0),
            DELIVERY_TIMEOUT,
            "watch showing the refusal",
        )
        refused = yield eventually(lambda: events.of("unknown_recipient"), 10, "event")
        self.assertEqual({(e["peer"], e["action"], tuple(e["ids"])) for e in refused},
                         {(carol, "refused", ())})  # fmt: skip

        # Queued on purpose: exit 3 says the recipient is unknown; watch shows it; cancel.
        out, err, code = yield alice.cli("send", carol, "welcome", "--queue-unknown", "--wait", "2")
        self.assertEqual(code, 3, out + err)
        mid = re.match(r"not delivered after 2 s: (\S+) to ", out)
        assert mid is not None, out
        self.assertIn(f"{carol} is not known to the registry yet (sixchat cancel {mid[1]}", out)
        yield watch.wait(rf"message\(s\) {mid[1]} stay queued", timeout=DELIVERY_TIMEOUT)
        contacts = yield alice.cli_json("contacts")
        self.assertEqual([c["identity"] for c in contacts], [carol])
        out, err, code = yield alice.cli("cancel", mid[1])
        self.assertEqual((out, code), (f"cancelled {mid[1]} to {carol}\n", 0), err)
        yield watch.wait(rf"-> {re.escape(carol)}  {mid[1]} cancelled", timeout=DELIVERY_TIMEOUT)
        contacts = yield alice.cli_json("contacts")
        history = yield alice.inbox()
        self.assertEqual((contacts, history), ([], []))
        out, err, code = yield alice.cli("cancel", mid[1])
        self.assertEqual(
            (out, err, code), ("", f"sixchat: error: no outgoing message {mid[1]}\n", 1)
        )

    @defer.inlineCallbacks
    def test_queued_for_an_unknown_peer_delivered_once_it_registers(self) -> Any:
        """--queue-unknown for someone who enrolled but never ran an agent: delivered later."""
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = self.agent("bob", BOB)
        out, err, code = yield alice.cli("send", BOB, "for later", "--queue-unknown")
        self.assertEqual(code, 0, out + err)
        yield bob.start()
        yield eventually(
            lambda: alice.inbox(BOB).addCallback(
                lambda h: [m for m in h if m["state"] == "delivered"]
            ),
            DELIVERY_TIMEOUT,
            "delivered after bob's first registration",
        )
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["for later"])


class CrashTests(E2ECase):
    BURST = 500
    KILL_AFTER = 40

    @defer.inlineCallbacks
    def test_receiver_killed_mid_burst(self) -> Any:
        """
        2. Alice sends 500 messages at once; bob's agent is SIGKILLed after it stored some
        of them, and restarted on the same data directory: alice ends with all 500
        delivered, and bob has each exactly once.
        """
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()
        client = yield alice.control(self)

        received = r"message \S+ from alice@example\.com: burst "
        killed = bob.proc.wait(received, count=self.KILL_AFTER, timeout=DELIVERY_TIMEOUT)  # type: ignore[union-attr]
        killed.addCallback(lambda _: bob.kill())
        bodies = [f"burst {i:03d}" for i in range(self.BURST)]
        sends = defer.gatherResults([client.send(BOB, body) for body in bodies])
        results = yield bounded(sends, DELIVERY_TIMEOUT, "queueing the burst", alice.tail)
        ids = [r["id"] for r in results]
        self.assertEqual(len(set(ids)), self.BURST)
        yield killed
        first_run = bob.runs[0]
        self.assertEqual(first_run.exit, ("signal", signal.SIGKILL))
        stored_before = first_run.count(received)
        self.assertGreaterEqual(stored_before, self.KILL_AFTER)
        self.assertLess(stored_before, self.BURST, "the burst was over before the kill")
        status = yield client.status()
        self.assertGreater(sum(status["outbox"].values()), 0, status)

        yield bob.start()
        statuses = yield self.waitDelivered(client, ids, BURST_TIMEOUT, alice, bob)
        self.assertEqual({s["delivered_nodes"] for s in statuses}, {1})

        inbox = yield bob.inbox(ALICE, limit=self.BURST * 2)
        self.assertEqual(len(inbox), self.BURST)
        self.assertExactlyOnce(inbox, ALICE, bodies)
        self.assertEqual({m["id"] for m in inbox}, set(ids))
        # Bob's second run stored (and logged) only what the first had not: a resend of a
        # stored message is receipted again, not stored again. (Not "exactly 500 logged":
        # the SIGKILL may land between a commit and its log line.)
        stored_after = bob.runs[1].count(received)
        self.assertLessEqual(stored_before + stored_after, self.BURST)

        history = yield alice.inbox(BOB, limit=self.BURST * 2)
        self.assertEqual(len(history), self.BURST)
        self.assertEqual({m["state"] for m in history}, {"delivered"})
        status = yield alice.cli_json("status")
        self.assertEqual(status["outbox"], {"queued": 0, "sent": 0, "delivered": 0})

    @defer.inlineCallbacks
    def test_sender_restarted_with_full_outbox(self) -> Any:
        """
        3. Alice queues 50 messages while bob is offline and is stopped (SIGTERM); bob
        starts; alice restarts on the same data directory and delivers all 50, once each.
        """
        count = 50
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = self.agent("bob", BOB)
        client = yield alice.control(self)
        bodies = [f"queued {i:02d}" for i in range(count)]
        # bob has never run an agent: the registry does not know him, so queue on purpose
        results = yield defer.gatherResults(
            [client.send(BOB, body, None, None, True) for body in bodies]
        )
        ids = [r["id"] for r in results]
        status = yield client.status()
        self.assertEqual(status["outbox"]["queued"], count)
        client.transport.loseConnection()

        exit_status = yield alice.stop()
        self.assertIn("Server Shut Down", alice.runs[0].log)
        self.assertNotIn("Traceback", alice.runs[0].log, exit_status)
        yield bob.start()
        yield alice.start()
        client = yield alice.control(self)
        yield self.waitDelivered(client, ids, DELIVERY_TIMEOUT, alice, bob)

        inbox = yield bob.inbox()
        self.assertEqual(len(inbox), count)
        self.assertExactlyOnce(inbox, ALICE, bodies)
        history = yield alice.inbox(BOB)
        self.assertEqual(len(history), count)
        self.assertEqual({m["state"] for m in history}, {"delivered"})


class MultiNodeTests(E2ECase):
    @defer.inlineCallbacks
    def test_two_nodes_both_receive(self) -> Any:
        """
        4. Bob runs two nodes (own data directories, own keys); one message from alice
        reaches both, and alice counts it delivered 2/2.
        """
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        phone = self.agent("bob-phone", BOB, node="phone")
        laptop = self.agent("bob-laptop", BOB, node="laptop")
        yield defer.gatherResults([phone.start(), laptop.start()])

        result = yield alice.cli_json("send", BOB, "to all of you", "--wait", "30")
        self.assertEqual(result["outcome"], "delivered", result)
        message_id = result["message"]["id"]

        def both() -> Any:
            return alice.inbox(BOB).addCallback(
                lambda h: [m for m in h if m["id"] == message_id and m["delivered_nodes"] == 2]
            )

        (entry,) = yield eventually(both, DELIVERY_TIMEOUT, "delivered to both nodes")
        self.assertEqual((entry["state"], entry["total_nodes"]), ("delivered", 2))
        for node in (phone, laptop):
            inbox = yield node.inbox()
            self.assertExactlyOnce(inbox, ALICE, ["to all of you"])
            self.assertEqual(inbox[0]["id"], message_id)
        client = yield alice.control(self)
        status = yield client.status_of(message_id)
        self.assertEqual((status["delivered_nodes"], status["total_nodes"]), (2, 2))
        self.assertEqual(
            sorted((n["node"], n["state"]) for n in status["nodes"]),
            [("laptop", "delivered"), ("phone", "delivered")],
        )
        # two devices with two keys, first contact: both keys are bob's, no key change
        self.assertNotIn("KEY CHANGE", alice.log)
        contacts = yield alice.cli_json("contacts")
        (bob,) = [c for c in contacts if c["identity"] == BOB]
        self.assertEqual((len(bob["keys"]), bob["key_change_pending"]), (2, False))


class KeyChangeTests(E2ECase):
    @defer.inlineCallbacks
    def rekeyBob(self, bob: AgentProcess) -> Any:
        """Bob stops, gets a new key and certificate (`sixchat pki issue` from the
        registry's CA directory) and starts again with it."""
        yield bob.stop()
        out, err, code = yield run_cli(
            ["pki", "issue", BOB, "--ca", self.ca_dir, "--out", "bob-new.p12"], cwd=self.base
        )
        self.assertEqual(code, 0, out + err)
        bob.cert = os.path.join(self.base, "bob-new.p12")
        yield bob.start()

    @defer.inlineCallbacks
    def rekey(self, agent: AgentProcess, identity: str) -> Any:
        """The agent stops, gets a new key and certificate and starts again with it."""
        yield agent.stop()
        agent.cert = self.issue(identity, f"{agent.name}-new.p12")
        yield agent.start()

    @defer.inlineCallbacks
    def test_refused_incoming_key_change_can_be_accepted(self) -> Any:
        """
        Issue 17 item 5. Bob refuses key changes; alice comes back with a new key and dials
        him (so bob is the responder that refuses). The change is recorded as pending, the
        log names alice and the key change, `watch`, `contacts`, `inbox` and `chat` show
        it; `trust --accept-new-key` accepts it, the message comes through, and
        `trust --forget-old` retires alice's old key.
        """
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB, "--pin-policy", "refuse").start()
        out, err, code = yield alice.cli("send", BOB, "before", "--wait", "30")
        self.assertEqual(code, 0, out + err)
        contacts = yield bob.cli_json("contacts")
        (old,) = [c for c in contacts if c["identity"] == ALICE]
        watch = self.cli_process(bob, "watch")
        # once watch shows a message it has subscribed (it may start after the first one)
        watched: list[str] = []

        @defer.inlineCallbacks
        def shown() -> Any:
            body = f"watched {len(watched) + 1}"
            watched.append(body)
            yield alice.cli("send", BOB, body, "--wait", "30")
            return watch.count(rf"<- {re.escape(ALICE)}  watched \d+$")

        yield eventually(shown, DELIVERY_TIMEOUT, "watch to show a message", interval=0.5)

        yield self.rekey(alice, ALICE)
        result = yield alice.cli_json("send", BOB, "after", "--wait", "3", codes=(3,))
        message_id = result["message"]["id"]

        def pending() -> Any:
            return bob.cli_json("contacts").addCallback(
                lambda cs: [c for c in cs if c["identity"] == ALICE and c["pending_keys"]]
            )

        (contact,) = yield eventually(pending, DELIVERY_TIMEOUT, "key change pending at bob")
        self.assertTrue(contact["key_change_pending"])
        self.assertEqual(contact["keys"], old["keys"])  # the new key is not pinned
        (new_key,) = contact["pending_keys"]
        self.assertNotIn(new_key, old["keys"])
        self.assertEqual(
            [(e["what"], e["fingerprint"]) for e in contact["key_events"]], [("refused", new_key)]
        )
        # the log names the peer and the key change, not only "sent alert bad_certificate"
        self.assertRegex(
            bob.log, rf"KEY CHANGE: in a handshake, a new key for {re.escape(ALICE)} \({new_key}\)"
            r"; refused"
        )
        # watch shows it (by default)
        yield watch.wait(rf"!! {re.escape(ALICE)} has a NEW KEY {new_key}, REFUSED")
        out, err, code = yield bob.cli("contacts")
        self.assertIn(f"KEY CHANGE PENDING: sixchat trust {ALICE} --accept-new-key", out)
        out, err, code = yield bob.cli("inbox", "--peer", ALICE)
        lines = out.splitlines()
        self.assertRegex(lines[0], rf"<- {re.escape(ALICE)}  before$")
        self.assertEqual(len(lines), 2 + len(watched), out)
        self.assertRegex(lines[-1], rf"!! {re.escape(ALICE)} has a NEW KEY {new_key}, REFUSED")
        # chat shows it in the conversation
        chat = self.cli_process(bob, "chat", ALICE)
        yield chat.wait(rf"!! {re.escape(ALICE)} has a NEW KEY {new_key}, REFUSED")
        chat.transport.write(b"/quit\n")
        yield chat.ended()
        out, err, code = yield bob.cli("trust", ALICE)
        self.assertIn(f"new key {new_key}  (refused, pending)", out)

        out, err, code = yield bob.cli("trust", ALICE, "--accept-new-key")
        self.assertEqual((code, out.splitlines()[0]), (0, f"accepted the new key of {ALICE}"), err)
        client = yield alice.control(self)
        yield alice.cli("send", BOB, "again", "--wait", "30")  # wakes alice's outbox
        yield self.waitDelivered(client, [message_id], DELIVERY_TIMEOUT, alice, bob)
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before", *watched, "after", "again"])

        out, err, code = yield bob.cli("trust", ALICE, "--forget-old")
        self.assertEqual(code, 0, out + err)
        self.assertIn(f"forgot 1 old key(s) of {ALICE}:\n  forgotten {old['keys'][0]}", out)
        contacts = yield bob.cli_json("contacts")
        (after,) = [c for c in contacts if c["identity"] == ALICE]
        self.assertEqual((after["keys"], after["pending_keys"]), ([new_key], []))
        self.assertEqual(
            [e["what"] for e in after["key_events"]], ["refused", "trusted", "forgotten"]
        )
        out, err, code = yield bob.cli("trust", ALICE, "--forget-old")
        self.assertEqual((code, out), (0, f"no old key of {ALICE} to forget\n  key {new_key}\n"))
        # issue 17 item 6: the many CLI calls above left no info line each in the log
        self.assertNotIn("ControlProtocol connection", bob.log)
        messages = re.findall(r"\[sixchat\.agent\.service#info\] message ", bob.log)
        self.assertGreater(len(messages), 3)  # info lines are there: only those went

    @defer.inlineCallbacks
    def test_refuse_until_trusted(self) -> Any:
        """
        5a. With `--pin-policy refuse`, a message to bob after his key changed stays queued
        and `contacts` shows the key change pending; `trust --accept-new-key` lets it through.
        """
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE, "--pin-policy", "refuse").start()
        bob = yield self.agent("bob", BOB).start()
        out, err, code = yield alice.cli("send", BOB, "before", "--wait", "30")
        self.assertEqual(code, 0, out + err)
        contacts = yield alice.cli_json("contacts")
        (before,) = [c for c in contacts if c["identity"] == BOB]
        self.assertEqual((len(before["keys"]), before["key_change_pending"]), (1, False))
        # no key change yet: nothing tells an old key from a new one
        out, err, code = yield alice.cli("trust", BOB, "--forget-old")
        self.assertEqual(
            (code, out, err),
            (1, "", f"sixchat: error: no key change of {BOB} is recorded, so no key is older "
                    "than another; nothing forgotten\n"),
        )  # fmt: skip

        yield self.rekeyBob(bob)
        result = yield alice.cli_json("send", BOB, "after", "--wait", "3", codes=(3,))
        self.assertEqual(result["outcome"], "pending", result)
        message_id = result["message"]["id"]

        def pending() -> Any:
            return alice.cli_json("contacts").addCallback(
                lambda cs: [c for c in cs if c["identity"] == BOB and c["key_change_pending"]]
            )

        (contact,) = yield eventually(pending, DELIVERY_TIMEOUT, "key change pending")
        self.assertEqual(contact["keys"], before["keys"])  # the new key is not pinned
        self.assertIn("KEY CHANGE", alice.log)
        self.assertIn("refused", alice.log)
        inbox = yield bob.inbox()
        self.assertEqual([m["body"] for m in inbox], ["before"])  # bob's data dir kept
        history = yield alice.inbox(BOB)
        self.assertEqual(history[-1]["state"], "queued")

        out, err, code = yield alice.cli("trust", BOB)
        self.assertEqual(code, 0, out + err)
        self.assertIn("a key change is pending", out)
        out, err, code = yield alice.cli("trust", BOB, "--forget-old")  # decide first
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn(f"a key change of {BOB} is pending: decide on it first", err)
        out, err, code = yield alice.cli("trust", BOB, "--accept-new-key")
        self.assertEqual(code, 0, out + err)
        self.assertIn(f"accepted the new key of {BOB}", out)
        client = yield alice.control(self)
        yield self.waitDelivered(client, [message_id], DELIVERY_TIMEOUT, alice, bob)
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before", "after"])
        contacts = yield alice.cli_json("contacts")
        (after,) = [c for c in contacts if c["identity"] == BOB]
        self.assertFalse(after["key_change_pending"])
        self.assertEqual(len(after["keys"]), 2)
        self.assertIn(before["keys"][0], after["keys"])

    @defer.inlineCallbacks
    def test_warn_delivers_and_reports(self) -> Any:
        """5b. With the default `warn`, delivery proceeds and a key_change event (and a
        warning in the log) reports it."""
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()
        out, err, code = yield alice.cli("send", BOB, "before", "--wait", "30")
        self.assertEqual(code, 0, out + err)
        client = yield alice.control(self)
        events = EventLog()
        client.addObserver(events)
        yield client.subscribe(["key_change"])

        yield self.rekeyBob(bob)
        out, err, code = yield alice.cli("send", BOB, "after", "--wait", "30")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        (event,) = yield eventually(
            lambda: events.of("key_change"), DELIVERY_TIMEOUT, "key_change event"
        )
        self.assertEqual((event["peer"], event["policy"], event["action"]), (BOB, "warn", "warned"))
        self.assertRegex(event["fingerprint"], r"^[0-9a-f]{64}$")
        self.assertRegex(alice.log, r"KEY CHANGE: .* new key for bob@example\.com .*; warned")
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before", "after"])
        # visible in the conversation, not only in the log (issue 17 item 5)
        fp = event["fingerprint"]
        out, err, code = yield alice.cli("inbox", "--peer", BOB)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertRegex(lines[0], rf"-> {re.escape(BOB)}  before  \[delivered\]$")
        # noted when "after" (queued first) went out to bob's new key
        self.assertRegex(lines[1], rf"-> {re.escape(BOB)}  after  \[delivered\]$")
        self.assertRegex(
            lines[2], rf"!! {re.escape(BOB)} has a NEW KEY {fp} \(pin policy warn: messages "
        )
        chat = self.cli_process(alice, "chat", BOB)
        yield chat.wait(rf"\] !! {re.escape(BOB)} has a NEW KEY {fp} \(pin policy warn")
        chat.transport.closeStdin()  # end of input: leave
        self.assertEqual((yield chat.ended()), ("exit", 0), chat.tail())
        out, err, code = yield alice.cli("contacts")
        self.assertRegex(out, r"key changed \d{4}-\d\d-\d\d \d\d:\d\d \(warned\)")
        # the warned key is the newest: --forget-old keeps it and retires the old one
        out, err, code = yield alice.cli("trust", BOB, "--forget-old")
        self.assertEqual(code, 0, out + err)
        self.assertIn("forgot 1 old key(s)", out)
        contacts = yield alice.cli_json("contacts")
        (bob_contact,) = [c for c in contacts if c["identity"] == BOB]
        self.assertEqual(bob_contact["keys"], [fp])
        # issue 17 item 6: with alice's agent stopped, inbox reads her store, read-only
        running, err, code = yield alice.cli("inbox", "--peer", BOB)
        self.assertIn("you retired the old key", running)
        history = yield alice.inbox(BOB)
        yield alice.stop()
        out, err, code = yield alice.cli("inbox", "--peer", BOB)
        self.assertEqual((code, out), (0, running), err)
        self.assertIn("the agent is not running: read from ", err)
        self.assertIn("read-only", err)
        stopped = yield alice.inbox(BOB)
        self.assertEqual(stopped, history)
        out, err, code = yield alice.cli("status")
        self.assertEqual(code, 1)  # the other commands still need the agent
        self.assertIn("no sixchat agent is running", err)


class ChatPresenceTests(E2ECase):
    @defer.inlineCallbacks
    def test_chat_shows_the_peer_going_offline_and_back(self) -> Any:
        """Issue 17 item 6: `chat` says when the peer goes offline (its agent stops and
        unregisters) and when it is back, instead of showing nothing."""
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()
        out, err, code = yield alice.cli("send", BOB, "hello", "--wait", "30")
        self.assertEqual(code, 0, out + err)
        chat = self.cli_process(alice, "chat", BOB)
        yield chat.wait(r"\] me: hello$")
        yield bob.stop()
        yield chat.wait(
            rf"^--- {re.escape(BOB)} is offline: messages wait in the outbox until they are "
            "back ---$",
            timeout=DELIVERY_TIMEOUT,
        )
        yield bob.start()
        yield chat.wait(rf"^--- {re.escape(BOB)} is online again", timeout=DELIVERY_TIMEOUT)
        chat.transport.closeStdin()
        self.assertEqual((yield chat.ended()), ("exit", 0), chat.tail())
        self.assertEqual(chat.count("is offline"), 1, chat.log)


# A stdlib-only client run as another user: connect to the socket, say what happened.
OTHER_USER_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
except OSError as e:
    print("ERRNO", e.errno)
else:
    print("CONNECTED")
"""


class ControlSocketTests(E2ECase):
    @defer.inlineCallbacks
    def test_other_user_is_refused(self) -> Any:
        """6. The control socket is 0600 in a 0700 directory; the user nobody cannot
        connect to it (as root, with runuser)."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root, to run a process as the user nobody")
        runuser = shutil.which("runuser")
        if runuser is None:
            raise unittest.SkipTest("needs runuser (util-linux) to act as the user nobody")
        alice = yield self.agent("alice", ALICE).start()
        sock = os.path.join(alice.data_dir, "control.sock")
        dir_mode = os.stat(alice.data_dir)
        sock_mode = os.stat(sock)
        self.assertTrue(stat.S_ISDIR(dir_mode.st_mode))
        self.assertEqual(stat.S_IMODE(dir_mode.st_mode), 0o700)
        self.assertTrue(stat.S_ISSOCK(sock_mode.st_mode))
        self.assertEqual(stat.S_IMODE(sock_mode.st_mode), 0o600)
        self.assertEqual((dir_mode.st_uid, sock_mode.st_uid), (os.geteuid(), os.geteuid()))

        from twisted.internet.utils import getProcessOutputAndValue

        python = None
        for candidate in (sys.executable, "/usr/bin/python3"):
            if os.path.exists(candidate):
                _, _, code = yield getProcessOutputAndValue(
                    runuser, ["-u", "nobody", "--", candidate, "-c", "pass"], env=dict(os.environ)
                )
                if code == 0:
                    python = candidate
                    break
        if python is None:
            raise unittest.SkipTest("no Python interpreter the user nobody may run")

        def as_nobody() -> Any:
            d = getProcessOutputAndValue(
                runuser, ["-u", "nobody", "--", python, "-c", OTHER_USER_CLIENT, sock],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )  # fmt: skip
            return d.addCallback(lambda r: r[0].decode().strip() + r[1].decode().strip())

        # The base directory (mkdtemp: 0700) would stop nobody before the data directory is
        # even reached; open it, so that what is tested is the agent's own directory …
        os.chmod(self.base, 0o711)
        result = yield as_nobody()
        self.assertEqual(result, "EACCES")
        # … and, with that opened too, the socket's own mode
        os.chmod(alice.data_dir, 0o711)
        try:
            result = yield as_nobody()
        finally:
            os.chmod(alice.data_dir, 0o700)
        self.assertEqual(result, "EACCES")
        # the agent's own user still gets in
        status = yield alice.cli_json("status")
        self.assertEqual(status["identity"], ALICE)
