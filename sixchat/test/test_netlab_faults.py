"""
Faults in the lab (issue 14 item 6): alice and bob reach each other only through the
fault-injecting relay (L{sixchat.test.faultrelay}, in a host of its own), while both keep
their registry.

  - A partition that heals: the relay partitions them; both send while partitioned (their
    sessions are found dead by the keep-alive, their redials hang); the partition heals, and
    every message is delivered once: 0 lost, 0 duplicated.
  - A lossy, slow link: latency, a bandwidth limit, stalls and dropped connections (every
    connection is cut after 16 KB, and some earlier); messages both ways all arrive, each
    once.

Needs root (network namespaces) and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, reactor

from sixchat.test.netlab import NetLab
from sixchat.test.processes import START_TIMEOUT, bounded, eventually
from sixchat.test.test_agent_e2e import ALICE, BOB
from sixchat.test.test_netlab import LabCase

#: Short bounds keep the test well under a minute: dead after 4 s, redials give up after 3.
KEEPALIVE = 4
HANDSHAKE = 3


def now() -> float:
    return reactor.seconds()  # type: ignore[attr-defined,no-any-return]


class RelayedCase(LabCase):
    @defer.inlineCallbacks
    def relayed(self, tag: str, *faults: str) -> Any:
        """Registry, alice, bob, and the relay (with C{faults}) between alice and bob."""
        lab = NetLab.create(self, tag)
        hosts = {name: lab.host(name) for name in ("registry", "alice", "bob", "wan")}
        wan = hosts["wan"].address
        relay = lab.spawn(hosts["wan"], "relay", [
            sys.executable, "-m", "sixchat.test.faultrelay", *faults,
            "--route", f"tcp6:4605=[{hosts['alice'].address}]:4605",
            "--route", f"tcp6:4606=[{hosts['bob'].address}]:4605",
        ], self.base)  # fmt: skip
        self.addCleanup(relay.terminate)
        yield relay.wait(r"relay listening on 4606 ", timeout=START_TIMEOUT)
        alice, bob = yield self.labAgents(
            lab, hosts, ("--keepalive", str(KEEPALIVE), "--handshake-timeout", str(HANDSHAKE)),
            advertise={"alice": [f"[{wan}]:4605"], "bob": [f"[{wan}]:4606"]},
        )  # fmt: skip
        return relay, alice, bob


class PartitionTests(RelayedCase):
    @defer.inlineCallbacks
    def test_partition_heals_both_sides_delivered_once(self) -> Any:
        relay, alice, bob = yield self.relayed("p1-", "--latency", "20")
        out, err, code = yield alice.cli("send", BOB, "a0", "--wait", "60")
        self.assertEqual(code, 0, out + err + relay.log + alice.log[-3000:])
        out, err, code = yield bob.cli("send", ALICE, "b0", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))

        assert alice.proc is not None and bob.proc is not None
        relay.signal("USR1")
        yield relay.wait("partitioned")
        partitioned_at = now()
        for i in (1, 2):
            out, err, code = yield alice.cli("send", BOB, f"a{i}")
            self.assertEqual(code, 0, out + err)
            out, err, code = yield bob.cli("send", ALICE, f"b{i}")
            self.assertEqual(code, 0, out + err)
        # both find their session dead (no reset crosses a partition), nothing is delivered
        yield alice.proc.wait(r"answered no ping in \S+ s: session ended as dead", timeout=60)
        yield bob.proc.wait(r"answered no ping in \S+ s: session ended as dead", timeout=60)
        for agent in (alice, bob):
            status = yield agent.cli_json("status")
            outbox = status["outbox"]
            self.assertEqual(outbox["queued"] + outbox["sent"], 2, status)
        relay.signal("USR2")
        yield relay.wait("healed")
        healed_at = now()

        def delivered(agent: Any, peer: str, bodies: set[str]) -> Any:
            def check(history: list[dict[str, Any]]) -> bool:
                done = {m["body"] for m in history if m["direction"] == "out"
                        and m["state"] == "delivered"}  # fmt: skip
                return bodies <= done

            return lambda: agent.inbox(peer).addCallback(check)

        yield bounded(
            eventually(delivered(alice, BOB, {"a1", "a2"}), 60, "alice's messages delivered"),
            70, "alice's messages after the heal", lambda: self.dump(alice, bob),
        )  # fmt: skip
        yield bounded(
            eventually(delivered(bob, ALICE, {"b1", "b2"}), 60, "bob's messages delivered"),
            70, "bob's messages after the heal", lambda: self.dump(alice, bob),
        )  # fmt: skip
        after_heal = now() - healed_at
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["a0", "a1", "a2"])
        inbox = yield alice.inbox()
        self.assertExactlyOnce(inbox, BOB, ["b0", "b1", "b2"])
        for agent in (alice, bob):
            status = yield agent.cli_json("status")
            self.assertEqual(status["outbox"]["queued"] + status["outbox"]["sent"], 0, status)
        print(
            f"\nnetlab partition: {healed_at - partitioned_at:.1f} s partitioned; every "
            f"message delivered once {after_heal:.1f} s after the heal"
        )


class LossyLinkTests(RelayedCase):
    @defer.inlineCallbacks
    def test_messages_both_ways_over_a_lossy_slow_link_each_once(self) -> Any:
        relay, alice, bob = yield self.relayed(
            "p2-", "--latency", "40", "--rate", "20000", "--stall-prob", "0.05",
            "--stall", "1000", "--drop-prob", "0.01", "--drop-after", "16000", "--seed", "14",
        )  # fmt: skip
        started = now()
        clients = {}
        for agent in (alice, bob):
            clients[agent.name] = yield agent.control(self)
        count = 6
        ids: dict[str, list[str]] = {"alice": [], "bob": []}
        for i in range(count):
            sent = yield clients["alice"].send(BOB, f"a{i} " + "x" * 2000)
            ids["alice"].append(sent["id"])
            sent = yield clients["bob"].send(ALICE, f"b{i} " + "y" * 2000)
            ids["bob"].append(sent["id"])

        def all_delivered(name: str) -> Any:
            @defer.inlineCallbacks
            def check() -> Any:
                states = []
                for message_id in ids[name]:
                    status = yield clients[name].status_of(message_id)
                    states.append(status["state"])
                return states == ["delivered"] * count

            return check

        for name in ("alice", "bob"):
            yield bounded(
                eventually(all_delivered(name), 90, f"{name}'s messages delivered", 0.5),
                100, f"{name}'s messages over the lossy link", lambda: self.dump(alice, bob),
            )  # fmt: skip
        took = now() - started
        inbox = yield bob.inbox()
        self.assertExactlyOnce(
            [dict(m, body=m["body"].split()[0]) for m in inbox], ALICE,
            [f"a{i}" for i in range(count)],
        )  # fmt: skip
        inbox = yield alice.inbox()
        self.assertExactlyOnce(
            [dict(m, body=m["body"].split()[0]) for m in inbox], BOB,
            [f"b{i}" for i in range(count)],
        )  # fmt: skip
        drops = relay.log.count("dropped a connection")
        self.assertGreaterEqual(drops, 1, relay.log)  # 12 KB each way and the handshakes
        print(f"\nnetlab lossy link: {2 * count} messages of 2 KB, each delivered once in "
              f"{took:.1f} s ({drops} connection(s) dropped by the relay)")  # fmt: skip
