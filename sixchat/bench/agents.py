"""
User-agent benchmarks: two complete agents (L{UserAgentService}: SQLite message store,
outbox, listener) in two processes.

  - B{receipted}: alice's agent is asked to send C{count} messages to bob; each is stored in
    alice's outbox, sent, stored durably by bob's agent, receipted, and marked delivered in
    alice's outbox. The rate is messages/s from the first C{send} call to the last
    "delivered" event, end to end.
  - B{latency} (warm): the same two agents, one message at a time, and at a fixed offered
    rate for the load curve (L{sixchat.bench.latency});
  - B{agent_idle}: bob's agent holds C{count} idle sessions opened by a load process; its
    resident size before and after gives the memory per session, and the number still open
    after a hold period shows they are all kept.

The agents find each other through a fixed in-memory directory (L{MemoryDirectory}, a
stand-in for the registry, which has its own benchmark), so the figure is the agents' and
the protocol's alone.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from sixchat.bench import fixtures, latency
from sixchat.bench.common import commands, cpu_seconds, emit, rss_kib


async def agent(reactor: Any, spec: dict[str, Any]) -> None:
    """
    One agent (C{who}, Ed25519). Commands: C{peer} (add a directory record), C{send}
    (C{count} messages to C{to}; a C{sample} when all are delivered), C{measure}.
    """
    from sixchat.agent.interfaces import IAgentEvents
    from sixchat.agent.service import UserAgentService
    from sixchat.agent.tap import freeze_start_up
    from sixchat.bench.common import quiet_logs
    from sixchat.handshake import PeerConfig
    from sixchat.testing.directory import MemoryDirectory

    quiet_logs()
    workdir = spec["workdir"]
    identity = fixtures.load_identity(workdir, spec["who"], "ed25519")
    directory = MemoryDirectory()
    variant = "encrypted" if spec.get("encrypted") else "ours"
    service = UserAgentService(
        reactor,
        PeerConfig([identity], fixtures.load_trust(workdir)),
        os.path.join(workdir, f"agent-{spec['who']}-{os.getpid()}"),
        listen="tcp:0:interface=127.0.0.1:backlog=1024",
        node="n1",
        control=False,
        directory=directory,
        # encrypted: a SQLCipher store (the key wrapped with a stand-in password)
        store_password=b"bench" if spec.get("encrypted") else None,
        store_encryption="on" if spec.get("encrypted") else "off",
    )
    delivered: dict[str, defer.Deferred[None]] = {}

    @implementer(IAgentEvents)
    class Deliveries:
        def agentEvent(self, event: dict[str, Any]) -> None:
            if event["type"] == "delivery" and event["state"] == "delivered":
                d = delivered.pop(event["id"], None)
                if d is not None:
                    d.callback(None)

    service.addObserver(Deliveries())
    clock = latency.observe(service)  # the latency benchmark's one-at-a-time sends
    service.privilegedStartService()
    service.startService()
    await service.ready
    freeze_start_up(None)  # as `twistd sixchat` does once the agent is ready
    port = service.listener.port.getHost().port  # type: ignore[union-attr]

    async def send(to: str, count: int, body: str, rnd: int) -> None:
        t0 = time.perf_counter()
        cpu0 = cpu_seconds()
        waits = []

        def track(queued: dict[str, Any]) -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            delivered[queued["id"]] = d
            return d

        # A burst, as an application (or many `sixchat send`s) hands it over: every send
        # is made at once, so the agent's pipeline is measured rather than this loop's
        # one-at-a-time waiting for each message to be durable.
        for _ in range(count):
            waits.append(service.send(to, body).addCallback(track))
        await defer.gatherResults(waits)
        elapsed = time.perf_counter() - t0
        if rnd >= 0:
            emit("sample", bench="receipted", variant=variant, round=rnd,
                 metrics={"msgs_per_s": count / elapsed,
                          "sender_cpu_ms": (cpu_seconds() - cpu0) / count * 1000})  # fmt: skip
        else:
            emit("sent", seconds=elapsed)

    async def timed(to: str, count: int, body: str, rnd: int) -> None:
        ms, queued = await latency.one_at_a_time(service, clock, [to] * count, body)
        if rnd < 0:
            emit("latencies", count=len(ms))  # warm-up
        else:
            emit("sample", bench="latency", variant="warm", round=rnd,
                 metrics=latency.stats(ms, queued))  # fmt: skip

    async def load(to: str, rate: float, count: int, body: str) -> None:
        ms, achieved = await latency.offered_load(service, clock, to, body, rate, count)
        metrics = {**latency.stats(ms), "offered_per_s": float(rate), "sent_per_s": achieved}
        emit("sample", bench="latency_load", variant=str(rate), round=0, metrics=metrics)

    def command(cmd: dict[str, Any]) -> None:
        name = cmd["cmd"]
        if name == "peer":
            from sixchat.irp.messages import Contact, NodeBinding

            contacts = (Contact("127.0.0.1", cmd["port"]),)
            binding = NodeBinding("n1", contacts, base64.b64decode(cmd["cert"]), "", "")
            directory.register(cmd["identity"], binding)
            emit("ok")
        elif name == "send":
            d = defer.ensureDeferred(send(cmd["to"], cmd["count"], cmd["body"], cmd["round"]))
            d.addErrback(lambda f: emit("error", error=f.getTraceback()))
        elif name == "latency":
            d = defer.ensureDeferred(timed(cmd["to"], cmd["count"], cmd["body"], cmd["round"]))
            d.addErrback(lambda f: emit("error", error=f.getTraceback()))
        elif name == "load":
            d = defer.ensureDeferred(load(cmd["to"], cmd["rate"], cmd["count"], cmd["body"]))
            d.addErrback(lambda f: emit("error", error=f.getTraceback()))
        elif name == "measure":
            sessions = len(service.listener.factory.sessions)
            emit("measured", rss_kib=rss_kib(), cpu_s=cpu_seconds(), sessions=sessions)

    commands(reactor, command)
    emit("ready", port=port, pid=os.getpid(), identity=identity.names[0],
         cert=base64.b64encode(identity.leaf_der).decode())  # fmt: skip
    await defer.Deferred()  # until stdin closes; the process then simply ends


async def idle_client(reactor: Any, spec: dict[str, Any]) -> None:
    """Open sessions to an agent and keep them; same protocol as the idle benchmark."""
    from sixchat.bench.peers import idle_client as peers_idle_client

    await peers_idle_client(reactor, {**spec, "impl": "ours"})


# -- parent side --------------------------------------------------------------------------------


def bench_receipted(run: Any) -> None:
    """
    Two pairs of agents, one with plain stores (variant C{ours}) and one with both stores
    encrypted (C{encrypted}: SQLCipher), measured in alternate rounds of the same run.
    """
    p = run.profile
    run.say(
        f"receipted: {p.receipted_count} messages alice -> bob through two agents "
        "(plain stores, then encrypted stores, alternating)"
    )
    with contextlib.ExitStack() as stack:
        pairs = []
        for encrypted in (False, True):
            tag = "-encrypted" if encrypted else ""
            spec = {"role": "agent", "deadline": 900, "encrypted": encrypted}
            bob = stack.enter_context(run.worker(f"agent-bob{tag}", {**spec, "who": "bob"}))
            b = bob.expect("ready", 60)
            alice = stack.enter_context(
                run.worker(f"agent-alice{tag}", {**spec, "who": "alice"})
            )
            alice.expect("ready", 60)
            alice.send("peer", identity=b["identity"], port=b["port"], cert=b["cert"])
            alice.expect("ok", 30)
            pairs.append((alice, b))
        body = "Hello, Bob! " * 8
        for alice, b in pairs:
            alice.send("send", to=b["identity"], count=20, body=body, round=-1)  # warm-up
            alice.expect("sent", 120)
        for rnd in range(p.rounds):
            for alice, b in pairs:
                alice.send("send", to=b["identity"], count=p.receipted_count, body=body,
                           round=rnd)  # fmt: skip
                event = alice.expect("sample", 600)
                run.record(event)


def bench_agent_idle(run: Any) -> None:
    p = run.profile
    run.say(f"agent idle: {p.agent_sessions} sessions held by one agent")
    bob = run.worker("agent-idle-bob", {"role": "agent", "who": "bob", "deadline": 900})
    with bob:
        b = bob.expect("ready", 60)
        client = run.worker(
            "agent-idle-client",
            {
                "role": "agent_idle_client",
                "port": b["port"],
                "warm": 20,
                "count": p.agent_sessions,
                "concurrency": 64,
                "settle": 2.0,
                "deadline": 900,
            },
        )
        with client:
            warm = client.expect("warm", 120)
            bob.send("measure")
            base = bob.expect("measured", 60)
            client.send("go")
            done = client.expect("established", 900)
            bob.send("measure")
            after = bob.expect("measured", 120)
            hold = {"smoke": 0.2, "quick": 3.0}.get(p.name, 5.0)
            time.sleep(hold)
            bob.send("measure")
            held = bob.expect("measured", 120)
            client.send("done")
    n = p.agent_sessions
    metrics = {
        "sessions_held": float(min(held["sessions"] - 20, done["held"] - 20)),
        "agent_kib": (after["rss_kib"] - base["rss_kib"]) / n,
        "client_kib": (done["rss_kib"] - warm["rss_kib"]) / n,
        "setup_s": float(done["seconds"]),
        "hs_per_s": n / float(done["seconds"]),
    }
    run.record({"bench": "agent_idle", "variant": "ours", "round": 0, "metrics": metrics})
