"""
Real networks in the lab (L{sixchat.test.netlab}): a registry and two agents in three network
namespaces on one IPv6 link (ULA addresses, the real ports 4604 and 4605, no C{--advertise}),
driven by C{twistd} and the C{sixchat} command line as a user would.

  - a message is delivered over IPv6;
  - bob's link is cut under his running agent: alice's session to him is found dead within
    the keep-alive bound (C{--keepalive}), her message stays queued, and it is delivered,
    once, when bob's link is back.

Needs root (network namespaces) and iproute2; skipped with the reason otherwise. The lab's own
set-up and teardown are tested too (nothing left behind, stale namespaces removed).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sixchat.test import netlab
from sixchat.test.netlab import NetLab
from sixchat.test.processes import START_TIMEOUT, bounded, eventually, twistd_argv
from sixchat.test.test_agent_e2e import ALICE, BOB, AgentProcess, E2ECase

#: The agents' keep-alive bound in this test (seconds), and the slack allowed on top of it
#: for a loaded machine (process scheduling, log writing).
KEEPALIVE = 6
SLACK = 6


def lab_namespaces() -> list[str]:
    return [
        line.split()[0]
        for line in netlab.ip("netns", "list").splitlines()
        if line.startswith(netlab.PREFIX)
    ]


_PROBE = """
import errno, socket, sys
host = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.settimeout(2)
try:
    s.connect((host, 9))
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as e:
    print("unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else e)
"""


def probe(lab: NetLab, host: netlab.Host, address: str) -> str:
    """From C{host}, a TCP connect to port 9 of C{address}: refused, timeout or unreachable."""
    return lab.exec(host, sys.executable, "-c", _PROBE, address).strip()


class SkipReasonTests(unittest.TestCase):
    """Runs everywhere: without root the lab tests skip with a reason a person can act on."""

    def test_not_root(self) -> None:
        self.patch(netlab.os, "geteuid", lambda: 1000)
        self.patch(netlab.sys, "platform", "linux")
        self.assertEqual(
            netlab.lab_skip_reason(),
            "the network lab needs root (network namespaces); CI runs it as root",
        )

    def test_no_ip_command(self) -> None:
        self.patch(netlab.os, "geteuid", lambda: 0)
        self.patch(netlab.sys, "platform", "linux")
        self.patch(netlab.shutil, "which", lambda name: None)
        self.assertEqual(netlab.lab_skip_reason(), "the network lab needs iproute2's ip command")

    def test_create_skips(self) -> None:
        self.patch(netlab, "lab_skip_reason", lambda: "no lab here")
        with self.assertRaises(unittest.SkipTest) as caught:
            NetLab.create(self)
        self.assertEqual(str(caught.exception), "no lab here")


class LabTests(unittest.TestCase):
    def setUp(self) -> None:
        reason = netlab.lab_skip_reason()
        if reason:
            raise unittest.SkipTest(reason)

    @defer.inlineCallbacks
    def test_hosts_talk_and_teardown_leaves_nothing(self) -> Any:
        lab = NetLab.create(self, "t1-")
        a = lab.host("a", ipv4=True)
        b = lab.host("b", ipv4=True)
        self.assertIn("fd5c:6c61:6200::1/64", lab.exec(a, "ip", "-6", "addr", "show", "eth0"))
        self.assertIn("10.92.0.2/24", lab.exec(b, "ip", "-4", "addr", "show", "eth0"))
        # reachable: a closed port answers with a reset (ECONNREFUSED) ...
        self.assertEqual(probe(lab, a, b.address), "refused")
        self.assertEqual(probe(lab, a, b.address4 or ""), "refused")
        # ... cut off: no answer at all
        lab.cut(b)
        self.assertIn(probe(lab, a, b.address), ("timeout", "unreachable"))
        lab.restore(b)
        # the host's own namespace never sees the lab's interfaces
        self.assertNotIn("eth0@", netlab.ip("link", "show", "type", "veth"))
        names = set(lab_namespaces())
        self.assertTrue({lab.switch, a.netns, b.netns} <= names)
        yield lab.teardown()
        self.assertFalse(names & set(lab_namespaces()))

    def test_stale_namespaces_of_dead_runs_removed(self) -> None:
        dead = 2**22 + 12345  # above any pid_max default: never a running process
        stale = f"{netlab.PREFIX}{dead}-sw"
        netlab.ip("netns", "add", stale)
        self.addCleanup(netlab.ip, "netns", "delete", stale, check=False)
        lab = NetLab.create(self, "t2-")  # removes the stale one, keeps its own
        self.assertNotIn(stale, lab_namespaces())
        self.assertIn(lab.switch, lab_namespaces())


class LabAgent(AgentProcess):
    """An L{AgentProcess} run inside a lab host on the real port 4605."""

    lab: NetLab
    host: netlab.Host

    @defer.inlineCallbacks
    def start(self) -> Any:
        argv = self.argv()
        i = argv.index("--listen")
        argv[i + 1] = "tcp6:4605"
        self.proc = self.lab.spawn(self.host, self.name, argv, self.base)
        self.runs.append(self.proc)
        node = re.escape(self.node)
        yield self.proc.wait(rf"user agent \S+ \(node {node}\) ready", timeout=START_TIMEOUT)
        yield self.proc.wait(rf"registered node {node} at ", timeout=START_TIMEOUT)
        return self


class LabCase(E2ECase):
    """A registry and agents inside a lab (L{NetLab}), started by the command line."""

    timeout = 180

    @defer.inlineCallbacks
    def labAgents(
        self,
        lab: NetLab,
        hosts: dict[str, netlab.Host],
        extra: tuple[str, ...] = (),
        advertise: dict[str, list[str]] | None = None,
    ) -> Any:
        """Start the registry in C{hosts["registry"]}, then alice and bob in theirs."""
        registry_address = hosts["registry"].address
        self._labRegistry(lab, hosts["registry"])
        yield self.registry_proc.wait(r"listening on \S+ port 4604", timeout=START_TIMEOUT)
        agents = {}
        for name, identity in (("alice", ALICE), ("bob", BOB)):
            cert = os.path.join(self.base, name + ".p12")
            self.issue(identity, os.path.basename(cert))
            more = [a for entry in (advertise or {}).get(name, []) for a in ("--advertise", entry)]
            agent = LabAgent(
                self, self.base, name, cert, self.ca,
                extra=["--registry", f"[{registry_address}]:4604", "--registry-ca", self.ca,
                       "--handshake-timeout", "5", *extra, *more],
            )  # fmt: skip
            agent.lab, agent.host = lab, hosts[name]
            agents[name] = yield agent.start()
        return agents["alice"], agents["bob"]

    def _labRegistry(self, lab: NetLab, host: netlab.Host) -> None:
        from sixchat import pki

        key = pki.generate_key("p256")
        cert = pki.issue_server(self.ca_key, self.ca_cert, [host.address], key.public_key())
        p12 = os.path.join(self.base, "irp-lab.p12")
        pki.write_p12(p12, key, cert, [], None)
        argv = [
            *twistd_argv(), "-n", "--pidfile=", "sixchat-irp", "--cert", p12,
            "--ca-dir", self.ca_dir, "--db", os.path.join(self.base, "irp.sqlite"),
            "--listen", "tcp6:4604", "--allow-private-addresses",
        ]  # fmt: skip
        self.registry_proc = lab.spawn(host, "registry", argv, self.base)
        self.addCleanup(self.registry_proc.terminate)


class LabDeliveryTests(LabCase):
    @defer.inlineCallbacks
    def test_cut_link_detected_dead_queued_then_delivered(self) -> Any:
        lab = NetLab.create(self, "t3-")
        hosts = {name: lab.host(name) for name in ("registry", "alice", "bob")}
        alice, bob = yield self.labAgents(lab, hosts, ("--keepalive", str(KEEPALIVE)))

        out, err, code = yield alice.cli("send", BOB, "hello over IPv6", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))

        # bob's link goes; his agent keeps running with the same address
        assert alice.proc is not None
        dead = alice.proc.wait(r"answered no ping in \S+ s: session ended as dead", timeout=90)
        cut_at = reactor.seconds()  # type: ignore[attr-defined]
        lab.cut(hosts["bob"])
        out, err, code = yield alice.cli("send", BOB, "while you are cut off", "--wait", "1")
        self.assertEqual(code, 3, out + err)  # queued, not delivered
        yield dead
        detected = reactor.seconds() - cut_at  # type: ignore[attr-defined]
        self.assertLessEqual(detected, KEEPALIVE + SLACK, self.dump(alice, bob))
        status = yield alice.cli_json("status")
        self.assertEqual(status["outbox"]["queued"] + status["outbox"]["sent"], 1)

        lab.restore(hosts["bob"])
        restored_at = reactor.seconds()  # type: ignore[attr-defined]

        def second_delivered() -> Any:
            return alice.inbox(BOB).addCallback(
                lambda h: [m for m in h if m["body"] == "while you are cut off"
                           and m["state"] == "delivered"]
            )  # fmt: skip

        yield bounded(
            eventually(second_delivered, 90, "the queued message delivered"),
            100,
            "delivery after the link came back",
            lambda: self.dump(alice, bob),
        )
        redelivered = reactor.seconds() - restored_at  # type: ignore[attr-defined]
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["hello over IPv6", "while you are cut off"])
        # figures for docs/development.md ("The network lab")
        print(
            f"\nnetlab: dead peer detected {detected:.1f} s after the cut (--keepalive "
            f"{KEEPALIVE}); delivered {redelivered:.1f} s after the link came back"
        )
