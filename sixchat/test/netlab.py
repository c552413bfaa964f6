"""
A network lab for tests: hosts as Linux network namespaces on one IPv6 link, real ports,
real processes, and links that can be cut and restored.

    lab = NetLab.create(case)          # skips the test unless root with iproute2
    registry = lab.host("registry")    # fd5c:6c61:6200::1
    alice = lab.host("alice")          # fd5c:6c61:6200::2
    proc = lab.spawn(alice, "alice", argv)   # the process runner's spawn, inside alice
    lab.cut(alice); lab.restore(alice)       # link down / up, the agent keeps running
    lab.move(alice, 0x102)                   # a new address, the old one gone

Layout: one "switch" namespace holds a bridge; each host is a namespace whose C{eth0} is a
veth pair's end, the other end a port of the bridge. Both ends are created from inside the
lab's own namespaces (C{ip -n SWITCH link add … peer … netns HOST}), so nothing is ever
created in, moved through or changed in the machine's own namespace, and no packet can leave
the lab: the bridge has no uplink. Addresses are IPv6 ULA from C{fd5c:6c61:6200::/64}
(added with C{nodad}: usable at once) and, when asked, IPv4 from C{10.92.0.0/24}, which exist
only inside the lab's namespaces.

Every namespace is named C{sixlab-PID-…} (PID: the test process). L{NetLab.create} registers
the teardown with C{addCleanup} (deleting a namespace deletes its interfaces and ends the
bridge), and first removes what a crashed earlier run left: namespaces C{sixlab-PID-…} whose
PID is no longer a running process.

docs/development.md ("The network lab") says how to run the tests that use it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.trial import unittest

from sixchat.test.processes import ChildProcess, child_env

__all__ = ["PREFIX", "Host", "NetLab", "lab_skip_reason"]

#: Every lab namespace's name starts with this, then the creating process's pid.
PREFIX = "sixlab-"
#: The lab's link: IPv6 ULA (fd00::/8), and IPv4 from 10/8 for tests that need it.
NET6 = "fd5c:6c61:6200::"
NET4 = "10.92.0."
_STALE = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def lab_skip_reason() -> str | None:
    """Why the lab cannot run here (a C{SkipTest} text), or None."""
    if sys.platform != "linux":
        return "the network lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces); CI runs it as root"
    if shutil.which("ip") is None:
        return "the network lab needs iproute2's ip command"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def ip(*args: str, check: bool = True) -> str:
    """Run C{ip ARGS} (blocking: lab set-up and teardown only, a few ms each)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def remove_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone; the names removed."""
    removed = []
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = _STALE.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One host of the lab: its namespace, its address(es), its port on the bridge."""

    name: str
    netns: str
    address: str
    port: str
    address4: str | None = None
    processes: list[ChildProcess] = field(default_factory=list)


class NetLab:
    """Namespaces on one bridged IPv6 link; see the module docstring."""

    def __init__(self, tag: str = "") -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-{tag}"
        self.switch = self.prefix + "sw"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []

    @classmethod
    def create(cls, case: unittest.TestCase, tag: str = "") -> NetLab:
        """A lab for C{case} (torn down by its cleanups); skips C{case} if it cannot run."""
        reason = lab_skip_reason()
        if reason is not None:
            raise unittest.SkipTest(reason)
        remove_stale()
        lab = cls(tag)
        case.addCleanup(lab.teardown)
        lab._netns(lab.switch)
        ip("-n", lab.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", lab.switch, "link", "set", "br0", "up")
        return lab

    def _netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def host(self, name: str, ipv4: bool = False) -> Host:
        """A new host on the link: C{eth0} with the next ULA address (and IPv4 if asked)."""
        number = len(self.hosts) + 1
        netns = f"{self.prefix}{name}"
        port = f"p{number}"
        self._netns(netns)
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", netns)  # fmt: skip
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        address = f"{NET6}{number}"
        ip("-n", netns, "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
        address4 = None
        if ipv4:
            address4 = f"{NET4}{number}"
            ip("-n", netns, "addr", "add", f"{address4}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        host = self.hosts[name] = Host(name, netns, address, port, address4)
        return host

    # faults --------------------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Unplug C{host}: its bridge port goes down, so nothing reaches it or leaves it;
        its processes and its own address are left alone."""
        ip("-n", self.switch, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        """Plug C{host} back in."""
        ip("-n", self.switch, "link", "set", host.port, "up")

    def move(self, host: Host, number: int) -> str:
        """
        Give C{host} a new IPv6 address (C{…::NUMBER}) and remove its old one, as a prefix
        change or a move does, under its running processes; the new address.
        """
        new = f"{NET6}{number:x}"
        ip("-n", host.netns, "addr", "add", f"{new}/64", "dev", "eth0", "nodad")
        ip("-n", host.netns, "addr", "del", f"{host.address}/64", "dev", "eth0")
        host.address = new
        return new

    def dead_route(self, host: Host, prefix: str, via: str) -> None:
        """
        From C{host}, send C{prefix} to C{via}, another lab host that does not forward: what
        goes there vanishes without an answer, like an address gone dead upstream (a SYN
        to it is never answered, never refused).
        """
        ip("-n", host.netns, "route", "add", prefix, "via", via)

    # processes -----------------------------------------------------------------------------

    def spawn(
        self,
        host: Host,
        name: str,
        argv: list[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ChildProcess:
        """
        The process runner's C{spawn} (L{sixchat.test.processes}), inside C{host}'s
        namespace: C{argv[0]} is ignored and this interpreter runs the rest.
        """
        from twisted.internet import reactor

        proc = ChildProcess(f"{name} in {host.name}")
        command = ["ip", "netns", "exec", host.netns, sys.executable, *argv[1:]]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            proc, shutil.which("ip") or "ip", command, env=child_env(cwd, **(env or {})), path=cwd
        )
        host.processes.append(proc)
        return proc

    def exec(self, host: Host, *argv: str) -> str:
        """Run a short command in C{host} (blocking; e.g. C{ip addr}); its output."""
        done = subprocess.run(
            ["ip", "netns", "exec", host.netns, *argv], capture_output=True, text=True, timeout=30
        )
        return done.stdout + done.stderr

    # teardown ------------------------------------------------------------------------------

    def teardown(self) -> Any:
        """Stop the lab's processes still running, then delete every namespace made."""
        from twisted.internet import defer

        running = [p for h in self.hosts.values() for p in h.processes if p.running]
        d = defer.DeferredList([p.terminate() for p in running], consumeErrors=True)

        def delete(_: object) -> None:
            for name in reversed(self._made):
                ip("netns", "delete", name, check=False)
            self._made.clear()

        return d.addBoth(delete)
