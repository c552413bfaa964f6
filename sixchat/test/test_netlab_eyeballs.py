"""
Happy Eyeballs in the lab (issue 14 item 5, RFC 8305): bob registers a dead IPv6 address and
a live IPv4 one (and, the reverse, a live IPv6 and a dead IPv4); alice reaches him either way
within the RFC's budget — the next attempt starts 250 ms after the first, so a dead family
costs about that, never the handshake timeout a one-at-a-time dialler would wait.

"Dead" here is the hard case: packets to the address vanish (routed to a lab host that does
not forward), so the connect is never refused and only the timer moves on.

Needs root (network namespaces) and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from sixchat.test.netlab import NetLab
from sixchat.test.test_agent_e2e import BOB
from sixchat.test.test_netlab import LabCase

#: How long alice's agent may take to reach bob (its log: TCP connect and handshake over
#: Happy Eyeballs): the 250 ms attempt delay plus a generous allowance for a loaded machine.
#: A dialler trying the dead address first would wait the handshake timeout (5 s) first.
BOUND = 2.0
DEAD6 = "fd5c:dead::9"
DEAD4 = "10.93.0.9"


def now() -> float:
    return reactor.seconds()  # type: ignore[attr-defined,no-any-return]


class HappyEyeballsTests(LabCase):
    @defer.inlineCallbacks
    def reach(self, tag: str, advertise: list[str]) -> Any:
        """
        Alice's first and second message to bob (C{advertise}d): how long her agent took
        to reach bob (its log), and the two sends' times as the CLI saw them.
        """
        lab = NetLab.create(self, tag)
        hosts = {name: lab.host(name, ipv4=True) for name in ("registry", "alice", "bob")}
        assert hosts["registry"].address4 is not None
        lab.dead_route(hosts["alice"], "fd5c:dead::/64", hosts["registry"].address)
        lab.dead_route(hosts["alice"], "10.93.0.0/24", hosts["registry"].address4)
        alice, bob = yield self.labAgents(lab, hosts, advertise={"bob": advertise})
        times = []
        for text in ("first: a new session", "second: the same session"):
            started = now()
            out, err, code = yield alice.cli("send", BOB, text, "--wait", "30")
            times.append(now() - started)
            self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        inbox = yield bob.inbox()
        bodies = ["first: a new session", "second: the same session"]
        self.assertExactlyOnce(inbox, "alice@example.com", bodies)
        status = yield alice.cli_json("status")
        assert alice.proc is not None
        match = yield alice.proc.wait(r"reached \S+ node bob at (\S+) in ([0-9.]+) s", timeout=5)
        return float(match.group(2)), times, status, alice, bob

    @defer.inlineCallbacks
    def test_dead_ipv6_live_ipv4(self) -> Any:
        reached, (first, second), status, alice, bob = yield self.reach(
            "h1-", [f"[{DEAD6}]", "10.92.0.3"]
        )
        self.assertGreaterEqual(reached, 0.25)  # the IPv6 attempt had its 250 ms
        self.assertLessEqual(reached, BOUND, self.dump(alice, bob))
        [session] = [s for s in status["sessions"] if s.get("node") == "bob"]
        self.assertEqual(session["address"], "10.92.0.3:4605")  # won over IPv4
        print(f"\nnetlab happy eyeballs, dead IPv6 + live IPv4: reached in {reached:.2f} s "
              f"(CLI send: first {first:.2f} s, second {second:.2f} s)")  # fmt: skip

    @defer.inlineCallbacks
    def test_live_ipv6_dead_ipv4(self) -> Any:
        reached, (first, second), status, alice, bob = yield self.reach(
            "h2-", [DEAD4, "[fd5c:6c61:6200::3]"]
        )
        self.assertLessEqual(reached, BOUND, self.dump(alice, bob))
        [session] = [s for s in status["sessions"] if s.get("node") == "bob"]
        self.assertEqual(session["address"], "[fd5c:6c61:6200::3]:4605")
        print(f"\nnetlab happy eyeballs, live IPv6 + dead IPv4: reached in {reached:.2f} s "
              f"(CLI send: first {first:.2f} s, second {second:.2f} s)")  # fmt: skip
