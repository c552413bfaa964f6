"""
One node, one agent (docs/irp.md), with real processes: a C{twistd -n sixchat-irp} registry
and C{twistd -n sixchat} agents of one identity with one node name.

  1. A second agent with the first one's identity and node name (another data directory)
     refuses to start, in one line with exit status 1, and the first stays registered and
     reachable.
  2. When another agent takes the node over at the registry, the first agent's C{status}
     says so; it re-registers once the binding is removed, and it never unregisters a
     binding it no longer holds when it stops.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, reactor

from sixchat.irp import messages as m
from sixchat.test.processes import ProcessGone, eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, E2ECase


class OneNodeOneAgentTests(E2ECase):
    @defer.inlineCallbacks
    def registryClient(self, cert: str) -> Any:
        """An authenticated IRP connection with C{cert} (closed at the end of the test)."""
        from sixchat.identity import load_identity
        from sixchat.irp.client import connectRegistry, load_certificates

        assert self.registry is not None
        client = yield connectRegistry(
            reactor,
            self.registry.address,
            ALICE,
            anchors=load_certificates(self.ca),
            client_identity=load_identity(cert),
        )
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def node(self, client: Any, name: str) -> Any:
        """The registry's binding of C{name} for alice (None: no binding)."""
        try:
            record = yield client.lookup(ALICE)
        except m.IRPError:
            return None
        return next((n for n in record.nodes if n.name == name), None)

    @defer.inlineCallbacks
    def test_second_agent_with_the_same_node_refuses_to_start(self) -> Any:
        yield self.startRegistry()
        first = yield self.agent("alice", ALICE, node="n1").start()
        second = self.agent("alice-again", ALICE, node="n1", cert=first.cert)
        yield self.assertFailure(second.start(), ProcessGone)
        assert second.proc is not None
        ended = yield second.proc.ended()
        self.assertEqual(ended, ("exit", 1), second.tail())
        expected = (
            f"sixchat: error: node n1 of {ALICE} is already registered by a running agent at "
            f"127.0.0.1:{first.port} (a second agent of this identity, e.g. on another data "
            "directory?): stop it, or give this one another --node"
        )
        self.assertIn(expected, second.proc.lines, second.tail())
        self.assertNotIn("Traceback", second.log)
        self.assertNotRegex(second.log, r"registered node n1 at ")

        # the first is untouched: registered, bound at its own port, reachable
        status = yield first.cli_json("status")
        self.assertEqual(status["registry"]["state"], "registered", status)
        client = yield self.registryClient(first.cert)
        bound = yield self.node(client, "n1")
        self.assertEqual(list(bound.contacts), [m.Contact("127.0.0.1", first.port)])
        bob = yield self.agent("bob", BOB).start()
        result = yield bob.cli_json("send", ALICE, "still there?", "--wait", "30")
        self.assertEqual(result["outcome"], "delivered", result)
        inbox = yield first.inbox()
        self.assertExactlyOnce(inbox, BOB, ["still there?"])

    @defer.inlineCallbacks
    def test_taken_over_shown_restored_and_never_unregistered(self) -> Any:
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE, node="n1").start()
        other = yield self.registryClient(alice.cert)
        elsewhere = m.Contact("127.0.0.1", 9)  # what a second agent would have registered

        def registry_state() -> Any:
            return alice.cli_json("status").addCallback(lambda s: s["registry"])

        # another agent of alice takes node n1 over: status says so, with where
        yield other.register("n1", [elsewhere], 300)
        registry = yield eventually(
            lambda: registry_state().addCallback(
                lambda r: r if r["state"] == "taken-over" else None
            ),
            DELIVERY_TIMEOUT,
            "status shows the takeover",
        )
        self.assertEqual(registry["held_by"], "127.0.0.1:9")
        out, _err, code = yield alice.cli("status")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"registry: +taken-over with 127\.0\.0\.1:\d+ .*held_by")
        self.assertIn("node n1 was taken over at", alice.log)

        # the other one leaves: alice restores her registration at once
        yield other.unregister("n1")
        yield eventually(
            lambda: registry_state().addCallback(lambda r: r["state"] == "registered"),
            DELIVERY_TIMEOUT,
            "the registration restored",
        )
        bound = yield self.node(other, "n1")
        self.assertEqual(list(bound.contacts), [m.Contact("127.0.0.1", alice.port)])
        registry = yield registry_state()
        self.assertRegex(
            registry["last_lost"],
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: removed at the registry",
        )

        # taken over again, then alice stops: she leaves the other agent's binding alone
        yield other.register("n1", [elsewhere], 300)
        yield eventually(
            lambda: registry_state().addCallback(lambda r: r["state"] == "taken-over"),
            DELIVERY_TIMEOUT,
            "the second takeover seen",
        )
        yield alice.stop()
        bound = yield self.node(other, "n1")
        self.assertIsNotNone(bound, "alice unregistered a binding she no longer held")
        self.assertEqual(list(bound.contacts), [elsewhere])
        self.assertNotRegex(alice.log, re.escape("unregistered node n1"))

    @defer.inlineCallbacks
    def test_stopping_unregisters_its_own_binding(self) -> Any:
        """The ordinary case still works: a clean stop removes the agent's own binding."""
        yield self.startRegistry()
        alice = yield self.agent("alice", ALICE, node="n1").start()
        client = yield self.registryClient(alice.cert)
        bound = yield self.node(client, "n1")
        self.assertIsNotNone(bound)
        yield alice.stop()
        self.assertIn("unregistered node n1", alice.log)
        bound = yield self.node(client, "n1")
        self.assertIsNone(bound)
        self.assertTrue(os.path.isdir(alice.data_dir))
