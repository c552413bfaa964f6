"""
Latency benchmarks: what a person feels when they press send, and how soon a registration is
seen through another registry instance.

  - B{warm} (bench C{latency}, variant C{warm}): two agents (L{sixchat.bench.agents}, plain
    stores) with a session already open; alice sends one message, waits until it is
    C{delivered} (stored in her outbox, sent, stored durably by bob's agent, receipted, marked
    delivered), then sends the next. One sample per message: C{send} call to the
    C{delivered} event.
  - B{cold} (variant C{cold}): a real registry (TLS, SQLite) and a farm of receiving agents,
    each a different registry user, registered with their listening address. Alice's agent
    (also with the registry) sends one message to each in turn: every message goes to a
    contact never seen before, so it pays the registry lookup, Happy Eyeballs, a full
    handshake in which both sides validate a leaf they have never seen (no validated-chain
    cache hit: each receiver has its own certificate and has never seen alice's), the
    store at the receiver, and the receipt.
  - B{latency under load} (bench C{latency_load}, one variant per offered rate, only with
    C{--latency-loads}): the warm pair again; alice sends at a fixed rate (open loop, on a
    schedule that does not wait for deliveries) for a few seconds. One sample per message:
    its scheduled send time to its C{delivered} event, so a send delayed by a busy agent
    counts its wait too.
  - B{registry visibility} (bench C{registry_visibility}, variant C{postgres}): two registry
    processes on one PostgreSQL database; a client registers a new contact through registry
    A while another client watches that identity through registry B. One sample per
    registration: register sent to the presence push (carrying the new contact) received.
    Skipped, with the reason in the report's notes, without PostgreSQL server binaries.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from sixchat.bench import fixtures
from sixchat.bench.common import commands, emit, sleep
from sixchat.bench.results import percentile


def stats(latencies_ms: list[float], queued_ms: list[float] | None = None) -> dict[str, float]:
    """Percentiles (ms) of the latencies; of the part until C{send} fired too, if given."""
    out = {
        "p50_ms": percentile(latencies_ms, 50) or 0.0,
        "p99_ms": percentile(latencies_ms, 99) or 0.0,
        "max_ms": max(latencies_ms, default=0.0),
        "samples": float(len(latencies_ms)),
    }
    if queued_ms:
        out["queued_p50_ms"] = percentile(queued_ms, 50) or 0.0
        out["queued_p99_ms"] = percentile(queued_ms, 99) or 0.0
    return out


class DeliveryClock:
    """
    An agent observer that notes when each message became C{delivered}, so a latency is
    exact even if the event comes before the caller has the message's id.
    """

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.waiting: dict[str, defer.Deferred[float]] = {}

    def agentEvent(self, event: dict[str, Any]) -> None:
        if event["type"] == "delivery" and event["state"] == "delivered":
            now = time.perf_counter()
            d = self.waiting.pop(event["id"], None)
            if d is not None:
                d.callback(now)
            else:
                self.at[event["id"]] = now

    def delivered(self, message_id: str) -> defer.Deferred[float]:
        if message_id in self.at:
            return defer.succeed(self.at.pop(message_id))
        d: defer.Deferred[float] = defer.Deferred()
        self.waiting[message_id] = d
        return d


def observe(service: Any) -> DeliveryClock:
    from sixchat.agent.interfaces import IAgentEvents

    clock = implementer(IAgentEvents)(DeliveryClock)()
    service.addObserver(clock)
    return clock


async def one_at_a_time(
    service: Any, clock: DeliveryClock, recipients: list[str], body: str
) -> tuple[list[float], list[float]]:
    """
    Send one message to each recipient in turn, each after the last is delivered: the
    latencies (ms) to C{delivered}, and to C{send} firing (the message stored in the outbox;
    with a registry, after the recipient's lookup).
    """
    latencies, queued_ms = [], []
    for to in recipients:
        t0 = time.perf_counter()
        queued = await service.send(to, body)
        queued_ms.append((time.perf_counter() - t0) * 1000)
        t1 = await clock.delivered(queued["id"])
        latencies.append((t1 - t0) * 1000)
    return latencies, queued_ms


async def offered_load(
    service: Any, clock: DeliveryClock, to: str, body: str, rate: float, count: int
) -> tuple[list[float], float]:
    """
    Send C{count} messages to C{to} at C{rate} a second, on a fixed schedule (open loop):
    message i is due at start + i / rate and is sent at the first reactor turn at or after
    that. Returns the latencies (ms) from each message's due time to its C{delivered} event,
    and the rate actually achieved (messages over the time until the last send call).
    """
    reactor = service.reactor
    start = time.perf_counter() + 0.01
    waits: list[defer.Deferred[float]] = []
    due_at: list[float] = []
    finished: defer.Deferred[None] = defer.Deferred()
    sent = 0

    def track(queued: dict[str, Any]) -> defer.Deferred[float]:
        return clock.delivered(queued["id"])

    def burst() -> None:
        nonlocal sent
        now = time.perf_counter()
        while sent < count and start + sent / rate <= now:
            due_at.append(start + sent / rate)
            waits.append(service.send(to, body).addCallback(track))
            sent += 1
        if sent < count:
            reactor.callLater(max(0.0, start + sent / rate - time.perf_counter()), burst)
        else:
            finished.callback(None)

    reactor.callLater(0.01, burst)
    await finished
    achieved = count / max(1e-9, time.perf_counter() - start)
    delivered_at = await defer.gatherResults(waits)
    return [(t - due) * 1000 for t, due in zip(delivered_at, due_at, strict=True)], achieved


# -- cold: agents with a registry ----------------------------------------------------------------


def _registry_agent(reactor: Any, workdir: str, user: Any, port: int, tag: str) -> Any:
    from sixchat.agent.service import UserAgentService
    from sixchat.handshake import PeerConfig

    anchors = [fixtures.load_cert(os.path.join(workdir, "registry-ca.pem"))]
    from sixchat.trust import TrustStore

    return UserAgentService(
        reactor,
        # The registry's CA issued every user's certificate; the peers trust it.
        PeerConfig([user], TrustStore(anchors)),
        os.path.join(workdir, f"agent-{tag}-{os.getpid()}"),
        listen="tcp:0:interface=127.0.0.1:backlog=1024",
        registry=f"127.0.0.1:{port}",
        registry_anchors=anchors,
        node="n1",
        advertise=[("127.0.0.1", None)],
        control=False,
        store_encryption="off",
    )


async def _start_registered(service: Any) -> None:
    registered: defer.Deferred[None] = defer.Deferred()

    def state(new: str) -> None:
        if new == "registered" and not registered.called:
            registered.callback(None)

    service.keeper.on_state = state
    service.privilegedStartService()
    service.startService()
    await service.ready
    await registered


async def latency_farm(reactor: Any, spec: dict[str, Any]) -> None:
    """C{count} receiving agents (registry users 1..count), each registered; then idle."""
    from sixchat.bench.common import quiet_logs

    quiet_logs()
    users = fixtures.load_registry_users(spec["workdir"], spec["count"] + 1)[1:]
    for i, user in enumerate(users):
        service = _registry_agent(reactor, spec["workdir"], user, spec["port"], f"farm{i}")
        await _start_registered(service)
    emit("ready", identities=[u.names[0] for u in users])
    await defer.Deferred()  # until stdin closes


async def latency_sender(reactor: Any, spec: dict[str, Any]) -> None:
    """Alice (registry user 0): one message to each identity given, one at a time."""
    from sixchat.bench.common import quiet_logs

    quiet_logs()
    user = fixtures.load_registry_users(spec["workdir"], 1)[0]
    service = _registry_agent(reactor, spec["workdir"], user, spec["port"], "sender")
    clock = observe(service)
    await _start_registered(service)
    emit("ready")
    cmd = await commands(reactor).wait("go")
    latencies, queued = await one_at_a_time(service, clock, cmd["to"], "Hello, stranger! " * 4)
    emit("sample", bench="latency", variant="cold", round=0, metrics=stats(latencies, queued))


# -- registry visibility across instances ---------------------------------------------------------


async def visibility_client(reactor: Any, spec: dict[str, Any]) -> None:
    """Register through registry A, watch through registry B; time each push."""
    from sixchat.bench.common import quiet_logs
    from sixchat.irp.client import connectRegistry
    from sixchat.irp.messages import Contact

    quiet_logs()
    workdir = spec["workdir"]
    writer_user, watcher_user = fixtures.load_registry_users(workdir, 2)
    anchors = [fixtures.load_cert(os.path.join(workdir, "registry-ca.pem"))]
    writer = await connectRegistry(reactor, f"127.0.0.1:{spec['port_a']}",
                                   writer_user.names[0], anchors=anchors,
                                   client_identity=writer_user)  # fmt: skip
    watcher = await connectRegistry(reactor, f"127.0.0.1:{spec['port_b']}",
                                    watcher_user.names[0], anchors=anchors,
                                    client_identity=watcher_user)  # fmt: skip
    target = writer_user.names[0]
    await writer.register("n1", [Contact("127.0.0.1", 19999)])
    expected: dict[str, Any] = {"port": None, "d": None}

    def pushed(record: Any) -> None:
        ports = {c.port for n in record.nodes for c in n.contacts}
        d = expected["d"]
        if d is not None and expected["port"] in ports:
            expected["d"] = None
            d.callback(time.perf_counter())

    await watcher.watch(target, pushed)
    latencies = []
    for i in range(spec["count"]):
        port = 20000 + i
        d: defer.Deferred[float] = defer.Deferred()
        d.addTimeout(10, reactor)
        expected["port"], expected["d"] = port, d
        t0 = time.perf_counter()
        await writer.register("n1", [Contact("127.0.0.1", port)])
        t1 = await d
        latencies.append((t1 - t0) * 1000)
        await sleep(reactor, 0.03)  # inside the registry's 50 requests/s per connection
    emit("sample", bench="registry_visibility", variant="postgres", round=0,
         metrics=stats(latencies))  # fmt: skip
    writer.close()
    watcher.close()


# -- parent side ----------------------------------------------------------------------------------


def bench_latency(run: Any) -> None:
    _warm(run)
    _cold(run)
    _visibility(run)
    if run.profile.latency_loads:
        _load_curve(run)


def _warm(run: Any) -> None:
    n = run.profile.latency_warm
    run.say(f"latency, warm: {n} messages alice -> bob, one at a time, session open")
    spec = {"role": "agent", "deadline": 900}
    with run.worker("latency-bob", {**spec, "who": "bob"}) as bob:
        b = bob.expect("ready", 60)
        with run.worker("latency-alice", {**spec, "who": "alice"}) as alice:
            alice.expect("ready", 60)
            alice.send("peer", identity=b["identity"], port=b["port"], cert=b["cert"])
            alice.expect("ok", 30)
            body = "Hello, Bob! " * 8
            # a warm-up that opens the session
            alice.send("latency", to=b["identity"], count=20, body=body, round=-1)
            alice.expect("latencies", 120)
            alice.send("latency", to=b["identity"], count=n, body=body, round=0)
            run.record(alice.expect("sample", 900))


def _load_curve(run: Any) -> None:
    """Offered load against p50/p99: the warm pair at each rate of C{--latency-loads}."""
    loads, seconds = run.profile.latency_loads, run.profile.latency_load_seconds
    run.say(f"latency under load: {', '.join(map(str, loads))} messages/s offered, "
            f"{seconds:g} s each, alice -> bob, session open")  # fmt: skip
    spec = {"role": "agent", "deadline": 900}
    with run.worker("load-bob", {**spec, "who": "bob"}) as bob:
        b = bob.expect("ready", 60)
        with run.worker("load-alice", {**spec, "who": "alice"}) as alice:
            alice.expect("ready", 60)
            alice.send("peer", identity=b["identity"], port=b["port"], cert=b["cert"])
            alice.expect("ok", 30)
            body = "Hello, Bob! " * 8
            alice.send("latency", to=b["identity"], count=20, body=body, round=-1)  # warm-up
            alice.expect("latencies", 120)
            for rate in loads:
                count = max(20, int(rate * seconds))
                alice.send("load", to=b["identity"], rate=rate, count=count, body=body)
                run.record(alice.expect("sample", 600))


def _cold(run: Any) -> None:
    n = run.profile.latency_cold
    run.say(f"latency, cold: first message to each of {n} contacts never seen before "
            "(real registry, full handshake)")  # fmt: skip
    db = os.path.join(run.workdir, "latency-registry.sqlite")
    # A --workdir kept from an earlier run holds that run's registrations, whose nodes (the
    # same names, other ports) the new agents would meet as held by another agent: start
    # from an empty registry.
    for leftover in (db, db + "-wal", db + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    spec = {"role": "registry_server", "db": db, "postgres": False, "deadline": 900}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(run.worker("latency-registry", spec))
        port = server.expect("ready", 120)["port"]
        farm = stack.enter_context(
            run.worker("latency-farm", {"role": "latency_farm", "port": port, "count": n,
                                        "deadline": 900})  # fmt: skip
        )
        identities = farm.expect("ready", 600)["identities"]
        sender = stack.enter_context(
            run.worker("latency-sender", {"role": "latency_sender", "port": port,
                                          "deadline": 900})  # fmt: skip
        )
        sender.expect("ready", 120)
        # Back to back, one new contact every ~20 ms: past the registry's 50 requests a
        # second (three per contact), so some lookups are refused (rate_limited) and retried
        # 50-100 ms later (agent/outbox.py); until that retry they waited for the 1 s tick.
        sender.send("go", to=identities)
        run.record(sender.expect("sample", 900))


def _visibility(run: Any) -> None:
    from sixchat.bench.registry import _postgres_dsn

    if not run.profile.latency_postgres:
        run.notes.append("registry visibility skipped: --no-postgres")
        return
    dsn = _postgres_dsn(run, "registry visibility")
    if dsn is None:
        return
    n = run.profile.visibility_samples
    run.say(f"registry visibility: {n} registrations through A, watched through B "
            "(one PostgreSQL)")  # fmt: skip
    spec = {"role": "registry_server", "db": dsn, "postgres": True, "deadline": 900}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(run.worker("visibility-registry-a", spec))
        port_a = a.expect("ready", 120)["port"]
        b = stack.enter_context(run.worker("visibility-registry-b", spec))
        port_b = b.expect("ready", 120)["port"]
        client = stack.enter_context(
            run.worker("visibility-client", {"role": "visibility_client", "port_a": port_a,
                                             "port_b": port_b, "count": n, "deadline": 900})
        )  # fmt: skip
        run.collect(client, 900)
