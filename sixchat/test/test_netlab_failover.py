"""
Registry fail-over in the network lab (L{sixchat.test.netlab}; issue 14 items 4 and 6): two
registries in their own namespaces on the IPv6 link, on the real port 4604, on one
PostgreSQL database (a throwaway cluster, reached over its Unix socket, which network
namespaces do not separate), and two agents in theirs on port 4605, given both registries
by their IPv6 addresses (C{--registry [A]:4604,[B]:4604}; bob repeats the option instead).
Registry A's process is killed: both agents register with B within seconds, and messages
between them go on.

Needs root and iproute2 (the lab) and PostgreSQL's server binaries; skipped with the reason
otherwise.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sixchat.test import netlab, pg
from sixchat.test import test_netlab as lab_tests  # its TestCases are not run twice
from sixchat.test.netlab import NetLab
from sixchat.test.processes import START_TIMEOUT, ChildProcess, twistd_argv
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, E2ECase
from sixchat.test.test_agent_e2e_failover import FAILOVER_BOUND
from sixchat.test.test_irp_shared_db import url_for


class LabFailoverTests(E2ECase):
    timeout = 240

    def setUp(self) -> None:
        for reason in (netlab.lab_skip_reason(), pg.skip_reason()):
            if reason:
                raise unittest.SkipTest(reason)
        super().setUp()

    def labRegistry(self, lab: NetLab, host: netlab.Host, p12: str, db: str) -> ChildProcess:
        argv = [
            *twistd_argv(), "-n", "--pidfile=", "sixchat-irp", "--cert", p12,
            "--ca-dir", self.ca_dir, "--db", db, "--listen", "tcp6:4604",
            "--allow-private-addresses",
        ]  # fmt: skip
        proc = lab.spawn(host, "registry", argv, self.base)
        self.addCleanup(proc.terminate)
        return proc

    @defer.inlineCallbacks
    def test_registry_killed_agents_move_over_ipv6(self) -> Any:
        from sixchat import pki

        db = url_for((yield pg.database_for(self)))
        lab = NetLab.create(self, "f1-")
        hosts = {name: lab.host(name) for name in ("reg1", "reg2", "alice", "bob")}
        a, b = f"[{hosts['reg1'].address}]:4604", f"[{hosts['reg2'].address}]:4604"
        key = pki.generate_key("p256")
        addresses = [hosts["reg1"].address, hosts["reg2"].address]
        cert = pki.issue_server(self.ca_key, self.ca_cert, addresses, key.public_key())
        p12 = os.path.join(self.base, "irp-lab.p12")
        pki.write_p12(p12, key, cert, [], None)
        registries = [self.labRegistry(lab, hosts[n], p12, db) for n in ("reg1", "reg2")]
        for proc in registries:
            yield proc.wait(r"listening on \S+ port 4604", timeout=START_TIMEOUT)

        agents = {}
        for name, identity, option in (
            ("alice", ALICE, ["--registry", f"{a},{b}"]),
            ("bob", BOB, ["--registry", a, "--registry", b]),
        ):
            cert_path = os.path.join(self.base, name + ".p12")
            self.issue(identity, os.path.basename(cert_path))
            agent = lab_tests.LabAgent(
                self, self.base, name, cert_path, self.ca,
                extra=[*option, "--registry-ca", self.ca, "--handshake-timeout", "5"],
            )  # fmt: skip
            agent.lab, agent.host = lab, hosts[name]
            agents[name] = yield agent.start()
        alice, bob = agents["alice"], agents["bob"]
        for agent in (alice, bob):
            status = yield agent.cli_json("status")
            self.assertEqual(status["registry"]["connected"], a, agent.name)
        out, err, code = yield alice.cli("send", BOB, "over IPv6", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))

        # registry A's process dies; its host stays on the link (its port now refuses)
        pattern = r"registered node {node} at \S+ with registry \S+ at " + re.escape(b) + " for"
        moved = []
        for agent in (alice, bob):
            assert agent.proc is not None
            moved.append(
                agent.proc.wait(pattern.format(node=agent.node), timeout=DELIVERY_TIMEOUT)
                .addCallback(lambda _: reactor.seconds())
            )  # fmt: skip
        killed = reactor.seconds()
        registries[0].signal("KILL")
        yield registries[0].ended()
        times = yield defer.gatherResults(moved)
        failover = [t - killed for t in times]
        print(f"\nnetlab registry fail-over: alice after {failover[0]:.2f} s, bob after "
              f"{failover[1]:.2f} s")  # fmt: skip
        for seconds in failover:
            self.assertLess(seconds, FAILOVER_BOUND, self.dump(alice, bob))
        for agent in (alice, bob):
            status = yield agent.cli_json("status")
            self.assertEqual((status["registry"]["state"], status["registry"]["connected"]),
                             ("registered", b), agent.name)  # fmt: skip

        out, err, code = yield bob.cli("send", ALICE, "after the fail-over", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))
        self.assertExactlyOnce((yield bob.inbox()), ALICE, ["over IPv6"])
        self.assertExactlyOnce((yield alice.inbox()), BOB, ["after the fail-over"])
        self.assertNotIn("Traceback", alice.log + bob.log)
