"""
Mobility in the lab (L{sixchat.test.netlab}, issue 14 item 2): bob's address changes under his
running agent (a new IPv6 address, the old one removed, no C{--advertise}), and alice's next
message reaches him within seconds — not after the keep-alive bound (left at its 30 s default
here, so it cannot be what saves the day), and nothing is lost or doubled.

Needs root (network namespaces) and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, reactor

from sixchat.test.netlab import NetLab
from sixchat.test.processes import bounded, eventually
from sixchat.test.test_agent_e2e import ALICE, BOB
from sixchat.test.test_netlab import LabCase

#: The target (issue 14): reachable again at most this long after the address changed.
TARGET = 5.0
#: What the assertion allows on top on a loaded shared machine (process start of the CLI,
#: scheduling); the measured figure is printed and goes into docs/networks.md.
SLACK = 5.0


def now() -> float:
    return reactor.seconds()  # type: ignore[attr-defined,no-any-return]


class MobilityTests(LabCase):
    @defer.inlineCallbacks
    def test_address_change_reregistered_and_next_message_delivered_within_seconds(
        self,
    ) -> Any:
        lab = NetLab.create(self, "m1-")
        hosts = {name: lab.host(name) for name in ("registry", "alice", "bob")}
        alice, bob = yield self.labAgents(lab, hosts)
        out, err, code = yield alice.cli("send", BOB, "before the move", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        out, err, code = yield bob.cli("send", ALICE, "bob before the move", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))

        assert bob.proc is not None and alice.proc is not None
        old = hosts["bob"].address
        moved_at = now()
        new = lab.move(hosts["bob"], 0x103)
        self.assertNotEqual(new, old)
        # (the agent's output is read by this reactor: nothing is missed while move ran)
        noticed = bob.proc.wait(r"this host's addresses changed", timeout=60)
        registered = bob.proc.wait(
            rf"registered node bob at \[{re.escape(new)}\]:4605 ", timeout=60
        )
        out, err, code = yield alice.cli("send", BOB, "after the move", "--wait", "30")
        delivered = now() - moved_at
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        yield noticed
        yield registered  # the new address, found by itself
        reregistered = now() - moved_at  # an upper bound: the log line is read after
        self.assertLessEqual(delivered, TARGET + SLACK, self.dump(alice, bob))

        # bob's side: his reply goes out from the new address; alice's agent was never told
        out, err, code = yield bob.cli("send", ALICE, "bob after the move", "--wait", "30")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before the move", "after the move"])
        inbox = yield alice.inbox()
        self.assertExactlyOnce(inbox, BOB, ["bob before the move", "bob after the move"])
        status = yield bob.cli_json("status")
        self.assertEqual(status["advertised"], [f"[{new}]:4605"])
        # the keep-alive did not do it: no session of alice's was found dead
        self.assertNotIn("answered no ping", alice.log)
        self.assertTrue(re.search(rf"ending the session with \S+: our address {old} is gone",
                                  bob.log), bob.log)  # fmt: skip
        print(
            f"\nnetlab mobility: delivered {delivered:.1f} s after bob's address changed "
            f"(re-registration seen within {reregistered:.1f} s)"
        )
        if os.environ.get("SIXCHAT_LAB_LOGS"):
            print(alice.log[-6000:])

    @defer.inlineCallbacks
    def test_moved_while_unplugged_the_peer_leaves_the_stale_session(self) -> Any:
        """
        Bob moves while his link is down (another network), so nothing he sends from his
        old address reaches alice: her session to it still looks open. Her next message
        goes out on it, the registry's push of bob's new address ends that session, and
        the message is sent again to where bob is now, once.
        """
        lab = NetLab.create(self, "m3-")
        hosts = {name: lab.host(name) for name in ("registry", "alice", "bob")}
        alice, bob = yield self.labAgents(lab, hosts)
        out, err, code = yield alice.cli("send", BOB, "before the move", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        assert bob.proc is not None
        lab.cut(hosts["bob"])
        new = lab.move(hosts["bob"], 0x106)
        registered = bob.proc.wait(
            rf"registered node bob at \[{re.escape(new)}\]:4605 ", timeout=60
        )
        # What bob's kernel sent while unplugged (the reset of his session with alice) waits
        # for neighbour discovery (unplugging flushed his neighbour entries); once that gave
        # up it is dropped, as on another network. Plugging him back in before would deliver
        # the reset, and alice's session would end before the registry's push could end it.
        yield bob.proc.wait(r"ending the session with alice@example\.com: our address", timeout=60)
        reset_at = now()
        alice_address = hosts["alice"].address
        queued = []

        def gave_up() -> bool:
            entry = lab.exec(hosts["bob"], "ip", "-6", "neigh", "show", alice_address)
            if "INCOMPLETE" in entry or "DELAY" in entry or "PROBE" in entry:
                queued.append(entry)
                return False
            # An entry not there yet is not one that gave up: FAILED, or seen waiting before,
            # or (no entry was ever made: nothing queued) past the kernel's 3 s of solicits.
            return "FAILED" in entry or bool(queued) or now() - reset_at > 4

        yield eventually(gave_up, 30, "bob's neighbour discovery of alice given up")
        lab.restore(hosts["bob"])
        moved_at = now()
        yield registered
        out, err, code = yield alice.cli("send", BOB, "after the move", "--wait", "30")
        delivered = now() - moved_at
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        self.assertLessEqual(delivered, TARGET + SLACK, self.dump(alice, bob))
        self.assertIn("ending the session with bob@example.com node bob: the node moved",
                      alice.log, alice.log + "\n" + bob.log)  # fmt: skip
        self.assertNotIn("answered no ping", alice.log)
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before the move", "after the move"])
        print(f"\nnetlab mobility (moved while unplugged): delivered {delivered:.1f} s after "
              "bob was back")  # fmt: skip

    @defer.inlineCallbacks
    def test_message_queued_across_the_move_delivered_once(self) -> Any:
        """Alice sends while bob is moving and keeps sending: nothing lost, nothing twice."""
        lab = NetLab.create(self, "m2-")
        hosts = {name: lab.host(name) for name in ("registry", "alice", "bob")}
        alice, bob = yield self.labAgents(lab, hosts)
        out, err, code = yield alice.cli("send", BOB, "m0", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        lab.move(hosts["bob"], 0x104)
        for i in range(1, 4):
            out, err, code = yield alice.cli("send", BOB, f"m{i}")
            self.assertEqual(code, 0, out + err)
        lab.move(hosts["bob"], 0x105)  # and again, at once
        out, err, code = yield alice.cli("send", BOB, "m4")
        self.assertEqual(code, 0, out + err)

        def all_delivered() -> Any:
            return alice.inbox(BOB).addCallback(
                lambda h: [m for m in h if m["state"] == "delivered"] if len(
                    [m for m in h if m["state"] == "delivered"]) == 5 else []
            )  # fmt: skip

        yield bounded(
            eventually(all_delivered, 60, "every message delivered"),
            70,
            "delivery across two moves",
            lambda: self.dump(alice, bob),
        )
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, [f"m{i}" for i in range(5)])
