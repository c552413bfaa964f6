#!/usr/bin/env python3
"""
Soak and chaos: three agents (alice, bob, carol) and a registry, all real C{twistd}
processes on 127.0.0.1, exchange messages for N minutes while a chaos loop SIGKILLs alice,
bob or the registry at random and restarts it on the same data. At the end, with everything
running again, every message an agent accepted must reach its recipient exactly once.

    python scripts/soak.py --minutes 30          # the real soak (not run by CI)
    python scripts/soak.py --short               # under 60 s (trial runs it: test_soak)
    python scripts/soak.py --short --json        # the figures as one JSON object

Printed: sent (accepted by the sender's agent), delivered (in the recipient's store),
duplicated (stored more than once), lost (accepted, never stored), how many sends were
refused or cut off by a crash (and how many of those arrived anyway), kills and restarts,
and each agent's resident memory: the peak, and for carol (never killed) its memory at the
end of warm-up and at the end. Exit status 0 only with 0 lost, 0 duplicated and carol's
memory flat after warm-up (growth under 10 % or 8 MiB; not judged in --short mode, too short
to mean anything).

Only loopback is used; every wait is bounded; every process is stopped at the end, SIGKILL
if SIGTERM does not do it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from twisted.internet import defer, protocol, task  # noqa: E402

from sixchat.test.processes import child_env, twistd_argv  # noqa: E402

AGENTS = ("alice", "bob", "carol")
VICTIMS = ("alice", "bob", "registry")  # carol is never killed: her memory is the steady one
DOMAIN = "example.com"


class Proc(protocol.ProcessProtocol):
    """One child process; its output is kept and can be waited on by pattern."""

    def __init__(self, name: str, reactor: Any) -> None:
        self.name = name
        self.reactor = reactor
        self.lines: list[str] = []
        self.partial = b""
        self.waits: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = False
        self.pid = 0

    def connectionMade(self) -> None:
        self.running = True
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if len(self.lines) > 2000:
                del self.lines[:1000]
            for wait in list(self.waits):
                match = wait[0].search(line)
                if match:
                    self.waits.remove(wait)
                    wait[1].callback(match)

    def processEnded(self, reason: Any) -> None:
        self.running = False
        for _, d in self.waits:
            d.errback(RuntimeError(f"{self.name} ended: {reason.value}\n" + self.tail()))
        self.waits = []
        self.ended.callback(None)

    def wait(self, pattern: str, timeout: float = 60) -> defer.Deferred[re.Match[str]]:
        d: defer.Deferred[re.Match[str]] = defer.Deferred()
        if not self.running and self.ended.called:
            d.errback(RuntimeError(f"{self.name} is not running\n" + self.tail()))
            return d
        self.waits.append((re.compile(pattern), d))
        return d.addTimeout(timeout, self.reactor)

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.lines[-n:])

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except Exception:  # noqa: S110 - already gone
                pass

    async def stop(self, grace: float = 15) -> None:
        if not self.running:
            return
        self.signal("TERM")
        try:
            await _chain(self.ended).addTimeout(grace, self.reactor)
        except defer.TimeoutError:
            self.signal("KILL")
            await _chain(self.ended)


def _chain(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    out: defer.Deferred[Any] = defer.Deferred()
    if d.called:
        out.callback(None)
    else:
        d.addBoth(lambda r: (out.callback(None), r)[1])
    return out


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.rng = random.Random(args.seed)
        self.base = args.keep or tempfile.mkdtemp(prefix="sc-soak-", dir="/tmp")
        self.procs: dict[str, Proc] = {}
        self.clients: dict[str, Any] = {}
        self.registry_port = 0
        self.sent: dict[str, tuple[str, str]] = {}  # body -> (sender, recipient)
        self.cut_off: dict[str, tuple[str, str]] = {}  # send failed: may or may not be queued
        self.refused = 0  # sender down: nothing attempted
        self.kills: Counter[str] = Counter()
        self.memory: dict[str, list[tuple[float, int, int]]] = {a: [] for a in AGENTS}
        self.incarnation: Counter[str] = Counter()
        self.stopping = False
        self.started = 0.0

    # set-up -------------------------------------------------------------------------------

    def make_pki(self) -> None:
        from sixchat import pki

        ca_dir = os.path.join(self.base, "ca")
        ca_key, ca_cert = pki.init_ca(ca_dir, "Soak CA")
        self.ca_pem = os.path.join(ca_dir, "ca.pem")
        self.ca_dir = ca_dir
        key = pki.generate_key("p256")
        cert = pki.issue_server(ca_key, ca_cert, ["127.0.0.1"], key.public_key())
        self.server_p12 = os.path.join(self.base, "irp.p12")
        pki.write_p12(self.server_p12, key, cert, [], None)
        for name in AGENTS:
            key = pki.generate_key("ed25519")
            leaf = pki.issue_leaf(ca_key, ca_cert, [f"{name}@{DOMAIN}"], key.public_key())
            pki.write_p12(os.path.join(self.base, f"{name}.p12"), key, leaf, [], None)

    def spawn(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, self.reactor)
        self.reactor.spawnProcess(
            proc, sys.executable, argv, env=child_env(self.base), path=self.base
        )
        self.procs[name] = proc
        self.incarnation[name] += 1
        return proc

    async def start_registry(self) -> None:
        listen = f"tcp:{self.registry_port}:interface=127.0.0.1"
        argv = [*twistd_argv(), "-n", "--pidfile=", "sixchat-irp", "--cert", self.server_p12,
                "--ca-dir", self.ca_dir, "--db", os.path.join(self.base, "irp.sqlite"),
                "--listen", listen, "--allow-private-addresses"]  # fmt: skip
        proc = self.spawn("registry", argv)
        match = await proc.wait(r"IRP registry for .* listening on (\S+) port (\d+)")
        self.registry_port = int(match.group(2))

    async def start_agent(self, name: str) -> None:
        data_dir = os.path.join(self.base, name)
        argv = [*twistd_argv(), "-n", "--pidfile=", "sixchat",
                "--cert", os.path.join(self.base, f"{name}.p12"), "--trust", self.ca_pem,
                "--data-dir", data_dir, "--listen", "tcp:0:interface=127.0.0.1",
                "--node", name, "--registry", f"127.0.0.1:{self.registry_port}",
                "--registry-ca", self.ca_pem]  # fmt: skip
        proc = self.spawn(name, argv)
        await proc.wait(rf"user agent \S+ \(node {name}\) ready")
        await self.connect_control(name)

    async def connect_control(self, name: str) -> None:
        from sixchat.agent.control.client import connect_control

        self.clients.pop(name, None)
        client = await connect_control(self.reactor, os.path.join(self.base, name))
        self.clients[name] = client

    # the run ------------------------------------------------------------------------------

    async def sender(self, until: float) -> None:
        n = 0
        interval = 1.0 / self.args.rate
        while time.monotonic() < until:
            n += 1
            sender, recipient = self.rng.sample(AGENTS, 2)
            body = f"soak {sender}->{recipient} #{n} " + "x" * self.rng.randrange(0, 200)
            client = self.clients.get(sender)
            if client is None or not self.procs[sender].running:
                self.refused += 1
            else:
                # queue_unknown: an agent just (re)started may not have registered yet; every
                # recipient here is a real agent, so refusing it as unknown would be wrong.
                d = client.send(f"{recipient}@{DOMAIN}", body, None, None, True)
                d.addCallbacks(
                    lambda _r, b=body, s=sender, r=recipient: self.sent.__setitem__(b, (s, r)),
                    lambda _f, b=body, s=sender, r=recipient: self.cut_off.__setitem__(b, (s, r)),
                )
            await task.deferLater(self.reactor, interval, lambda: None)

    async def chaos(self, until: float) -> None:
        low, high = self.args.chaos_interval
        while True:
            await task.deferLater(self.reactor, self.rng.uniform(low, high), lambda: None)
            if time.monotonic() >= until:
                return
            victim = self.rng.choice(VICTIMS)
            proc = self.procs[victim]
            self.kills[victim] += 1
            self.clients.pop(victim, None)
            proc.signal("KILL")
            await _chain(proc.ended)
            await task.deferLater(self.reactor, self.rng.uniform(0.2, 2.0), lambda: None)
            if victim == "registry":
                await self.start_registry()
            else:
                await self.start_agent(victim)

    async def sample_memory(self) -> None:
        while not self.stopping:
            now = time.monotonic() - self.started
            for name in AGENTS:
                proc = self.procs.get(name)
                if proc is not None and proc.running:
                    rss = rss_kib(proc.pid)
                    if rss is not None:
                        self.memory[name].append((now, self.incarnation[name], rss))
            await task.deferLater(self.reactor, 1.0, lambda: None)

    def read_store(self, name: str) -> tuple[Counter[str], set[str]]:
        """From C{name}'s message store (read-only, beside the running agent): the bodies it
        received, with counts, and the bodies it sent that every target node receipted."""
        import sqlite3

        path = os.path.join(self.base, name, "messages.sqlite")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            received = Counter(
                body for (body,) in conn.execute("SELECT body FROM messages WHERE direction='in'")
            )
            receipted = {
                body
                for (body,) in conn.execute(
                    "SELECT body FROM messages WHERE direction='out' AND owed=0 AND outcome IS NULL"
                )
            }
        finally:
            conn.close()
        return received, receipted

    async def converge(self, timeout: float) -> tuple[dict[str, Counter[str]], set[str]]:
        """Wait until every accepted message is receipted (or timeout); read the stores."""
        deadline = time.monotonic() + timeout
        while True:
            received: dict[str, Counter[str]] = {}
            receipted: set[str] = set()
            for name in AGENTS:
                received[name], done = self.read_store(name)
                receipted |= done
            pending = [b for b in self.sent if b not in receipted]
            if not pending or time.monotonic() > deadline:
                return received, receipted
            await task.deferLater(self.reactor, 1.0, lambda: None)

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.make_pki()
        self.started = time.monotonic()
        await self.start_registry()
        await defer.gatherResults([defer.ensureDeferred(self.start_agent(a)) for a in AGENTS])
        sampler = defer.ensureDeferred(self.sample_memory())
        until = time.monotonic() + args.minutes * 60
        await defer.gatherResults(
            [defer.ensureDeferred(self.sender(until)), defer.ensureDeferred(self.chaos(until))]
        )
        traffic_seconds = time.monotonic() - self.started
        for name in ("registry", *AGENTS):
            if not self.procs[name].running:
                await (self.start_registry() if name == "registry" else self.start_agent(name))
        received, receipted = await self.converge(args.settle)
        self.stopping = True
        await sampler
        return self.figures(received, receipted, traffic_seconds)

    def figures(
        self, received: dict[str, Counter[str]], receipted_bodies: set[str], seconds: float
    ) -> dict[str, Any]:
        delivered = lost = duplicated = 0
        for body, (_sender, recipient) in self.sent.items():
            count = received[recipient][body]
            if count == 0:
                lost += 1
            else:
                delivered += 1
                duplicated += count - 1
        cut_off_arrived = sum(1 for body, (_s, r) in self.cut_off.items() if received[r][body] > 0)
        duplicated += sum(
            received[r][b] - 1 for b, (_s, r) in self.cut_off.items() if received[r][b] > 1
        )
        unexpected = sum(
            1
            for name, bodies in received.items()
            for body in bodies
            if body.startswith("soak ") and body not in self.sent and body not in self.cut_off
        )
        receipted = sum(1 for b in self.sent if b in receipted_bodies)
        memory: dict[str, Any] = {}
        for name, samples in self.memory.items():
            if not samples:
                continue
            memory[name] = {"peak_kib": max(s[2] for s in samples)}
        carol = self.memory["carol"]
        warm = self.args.warmup
        after = [s[2] for s in carol if s[0] >= warm]
        timeline: dict[int, int] = {}
        for when, _incarnation, rss in carol:
            timeline[int(when // 60)] = rss  # the last sample of each minute
        memory.setdefault("carol", {})["per_minute_kib"] = [timeline[m] for m in sorted(timeline)]
        if after:
            memory["carol"].update(
                warm_kib=after[0],
                end_kib=after[-1],
                max_after_warmup_kib=max(after),
                growth_kib=max(after) - after[0],
            )
        return {
            "minutes": round(seconds / 60, 2),
            "sent": len(self.sent),
            "delivered": delivered,
            "receipted": receipted,
            "duplicated": duplicated,
            "lost": lost,
            "unexpected": unexpected,
            "cut_off_by_crash": len(self.cut_off),
            "cut_off_delivered_anyway": cut_off_arrived,
            "refused_sender_down": self.refused,
            "kills": dict(self.kills),
            "memory": memory,
        }

    async def shutdown(self) -> None:
        self.stopping = True
        for client in list(self.clients.values()):
            if client.transport is not None:
                client.transport.loseConnection()
        await defer.gatherResults([defer.ensureDeferred(p.stop()) for p in self.procs.values()])
        if not self.args.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def verdict(figures: dict[str, Any], judge_memory: bool) -> list[str]:
    problems = []
    if figures["lost"]:
        problems.append(f"{figures['lost']} lost")
    if figures["duplicated"]:
        problems.append(f"{figures['duplicated']} duplicated")
    if figures["unexpected"]:
        problems.append(f"{figures['unexpected']} unexpected")
    if figures["receipted"] != figures["sent"]:
        problems.append(f"{figures['sent'] - figures['receipted']} without a receipt")
    carol = figures["memory"].get("carol", {})
    if judge_memory and "growth_kib" in carol:
        allowed = max(8 * 1024, carol["warm_kib"] // 10)
        if carol["growth_kib"] > allowed:
            problems.append(f"carol's memory grew {carol['growth_kib']} KiB after warm-up")
    return problems


def print_figures(f: dict[str, Any]) -> None:
    print(f"soak: {f['minutes']} min of traffic, kills {f['kills']}")
    print(f"  sent {f['sent']}  delivered {f['delivered']}  receipted {f['receipted']}  "
          f"duplicated {f['duplicated']}  lost {f['lost']}  "
          f"unexpected {f['unexpected']}")  # fmt: skip
    print(f"  cut off by a crash {f['cut_off_by_crash']} (delivered anyway "
          f"{f['cut_off_delivered_anyway']}), refused while the sender was down "
          f"{f['refused_sender_down']}")  # fmt: skip
    for name, m in f["memory"].items():
        extra = ""
        if "growth_kib" in m:
            extra = (f", after warm-up {m['warm_kib']} -> end {m['end_kib']} KiB "
                     f"(max {m['max_after_warmup_kib']}, "
                     f"growth {m['growth_kib']} KiB)")  # fmt: skip
        print(f"  {name}: peak RSS {m['peak_kib']} KiB{extra}")
        if "per_minute_kib" in m and len(m["per_minute_kib"]) > 1:
            print(f"  {name}: RSS at the end of each minute (KiB): {m['per_minute_kib']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--short", action="store_true", help="a run under 60 s (CI)")
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", help="work in this directory and keep it")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.short:
        args.minutes, args.chaos_interval, args.settle, args.warmup = 0.4, (4.0, 7.0), 25.0, 10.0
    else:
        args.chaos_interval, args.settle = (5.0, 20.0), 120.0
        args.warmup = min(120.0, args.minutes * 60 / 4)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)

    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    async def go() -> None:
        soak = Soak(reactor, args)
        try:
            outcome["figures"] = await soak.run()
        except Exception as e:  # report, clean up, fail
            outcome["error"] = f"{type(e).__name__}: {e}"
        finally:
            await soak.shutdown()

    def stop(_: object) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()).addBoth(stop))  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(reactor.stop))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if "error" in outcome:
        print(f"soak failed: {outcome['error']}", file=sys.stderr)
        return 2
    figures = outcome["figures"]
    figures["seed"] = args.seed
    problems = verdict(figures, judge_memory=not args.short)
    figures["problems"] = problems
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print_figures(figures)
        print("OK" if not problems else "PROBLEMS: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
