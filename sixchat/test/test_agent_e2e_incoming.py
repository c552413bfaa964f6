"""
With real processes (C{twistd -n sixchat-irp}, two C{twistd -n sixchat}, the C{sixchat}
command line): when the registry cannot be asked and the agent never had a record of the
peer, C{sixchat send} is delivered over the session the peer opened to us.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from sixchat.test.processes import eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, E2ECase


class OverIncomingSessionTests(E2ECase):
    @defer.inlineCallbacks
    def test_delivered_over_the_peers_session_while_no_registry_answers(self) -> Any:
        registry = yield self.startRegistry()
        alice = yield self.agent("alice", ALICE).start()
        bob = yield self.agent("bob", BOB).start()
        # bob looks alice up and dials her: alice holds bob's session, never bob's record
        out, err, code = yield bob.cli("send", ALICE, "hello alice", "--wait", "30")
        self.assertEqual(code, 0, out + err)

        assert registry.proc is not None
        registry.proc.signal("KILL")
        yield registry.proc.ended()
        yield eventually(
            lambda: alice.cli_json("status").addCallback(
                lambda s: s["registry"]["state"] in ("waiting", "connecting")
            ),
            DELIVERY_TIMEOUT,
            "alice sees no registry",
        )

        out, err, code = yield alice.cli("send", BOB, "over your session", "--wait", "30")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        self.assertRegex(out, r"^delivered \S+ to bob@example\.com")
        self.assertRegex(
            alice.log,
            r"cannot look bob@example\.com up \(.+\); delivering over the 1 session\(s\) it "
            r"opened to us",
        )
        history = yield alice.inbox(BOB)
        [sent] = [m for m in history if m["direction"] == "out"]
        self.assertEqual((sent["state"], sent["delivered_nodes"], sent["total_nodes"]),
                         ("delivered", 1, 1))  # fmt: skip
        # the target is bob's key (its node's registered name is not known to alice)
        out, err, code = yield alice.cli("send", BOB, "and again", "--wait", "30", "--json")
        self.assertEqual(code, 0, out + err)
        [status] = json.loads(out)["statuses"]
        [target] = status["nodes"]
        self.assertRegex(target["node"], r"^key:[0-9a-f]{16}$")
        self.assertEqual(target["state"], "delivered")
        self.assertRegex(alice.log, rf"established \(responder.*peer key {target['node'][4:]}")
        self.assertExactlyOnce((yield bob.inbox()), ALICE, ["over your session", "and again"])
        self.assertNotIn("Traceback", alice.log + bob.log)
