"""
The registry benchmark: one IRP registry process (TLS 1.3, SQLite or PostgreSQL) and one load
process holding C{clients} authenticated TLS connections, each a different user.

Per round, on those connections:

  - B{register}: every client registers its node (closed loop, one request in flight per
    client, C{register_per_client} each): registers/s;
  - B{lookup, saturation}: after an unmeasured warm-up (L{_warm_up}: every instance looks
    up every user once, so that the registrations just made leave no cache cold), every
    client keeps one C{lookup} of a random registered user in flight for C{seconds}:
    lookups/s is the registry's capacity with that many clients;
  - B{lookup, offered load}: C{rate} lookups/s spread evenly over the clients (open loop,
    issued on a 5 ms tick whether or not earlier ones were answered) for C{seconds}: the
    latency percentiles at that load, and the rate actually achieved.

Every client stays under the registry's per-connection limit (50 requests/s) at the offered
load; a C{rate_limited} answer would be counted as an error, not as a lookup.

The registry process runs with the garbage-collection policy of C{twistd sixchat-irp}
(L{sixchat.irp.server.gcpolicy}; the spec's C{gc_interval}, 0 for Python's default collector) and
reports, after the rounds, the pauses its collector made once it was serving (variant
C{server}): the longest pause of any collection and of the full ones (wall clock, and the
collecting thread's CPU), their count and total, and its resident size; the start-up
collection (the policy's freeze, before the first client connects) apart.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import threading
import time
from typing import Any

from twisted.internet import defer, endpoints, task
from twisted.internet.protocol import Factory, Protocol

from sixchat.bench import fixtures
from sixchat.bench.common import CLK_TCK, commands, cpu_seconds, emit, rss_kib, sleep
from sixchat.bench.results import percentile

TICK = 0.005


async def registry_server(reactor: Any, spec: dict[str, Any]) -> None:
    """Run the registry on 127.0.0.1 over SQLite (C{db} a path) or PostgreSQL (a DSN)."""
    from sixchat.bench.common import quiet_logs
    from sixchat.identity import Identity
    from sixchat.irp.server import IRPServerService, RegistryConfig, make_store
    from sixchat.irp.server.authority import Authority
    from sixchat.irp.server.gcpolicy import DEFAULT_INTERVAL, CollectorPolicy

    quiet_logs()
    pauses = _CollectorPauses()
    if spec.get("gc_off"):  # for diagnosis only (docs/benchmarks.md): never by the CLI
        gc.disable()
    interval = float(spec.get("gc_interval", DEFAULT_INTERVAL))
    workdir = spec["workdir"]
    ca_key = fixtures.load_key(os.path.join(workdir, "registry-ca.key.pem"))
    ca_cert = fixtures.load_cert(os.path.join(workdir, "registry-ca.pem"))
    server_key = fixtures.load_key(os.path.join(workdir, "registry-server.key.pem"))
    server_cert = fixtures.load_cert(os.path.join(workdir, "registry-server.cert.pem"))
    if spec.get("postgres"):
        from sixchat.irp.store.postgres import PostgresStore

        store: Any = PostgresStore(spec["db"], reactor)
    else:
        store = make_store(spec["db"], reactor)
    authority = Authority(ca_key, ca_cert, store)
    service = IRPServerService(
        reactor,
        store,
        authority,
        Identity(server_key, server_cert, (), server=True),
        listen="tcp:0:interface=127.0.0.1:backlog=1024",
        config=RegistryConfig(allow_private_addresses=True),
        collector=CollectorPolicy(reactor, interval) if interval else None,
    )
    service.privilegedStartService()
    service.startService()
    await service.factory.whenReady()
    assert service.port is not None

    def command(cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "serving":
            # The start-up collection (the policy's freeze, before the first client) is
            # reported apart; the pauses from here on are those of a serving registry.
            pauses.reset()
        elif cmd["cmd"] == "measure":
            emit("measured", rss_kib=rss_kib(), cpu_s=cpu_seconds(),
                 connections=len(service.factory.connections))  # fmt: skip
        elif cmd["cmd"] == "report":
            backlog = service.factory.backlog
            metrics = {**pauses.metrics(), "rss_kib": rss_kib(), "gc_interval_s": interval,
                       "backlog_refused": float(backlog.refused),
                       "backlog_peak": float(backlog.peak)}  # fmt: skip
            policy = service.collector
            if policy is not None:  # complete collections (everything unfrozen)
                metrics["gc_complete_count"] = float(policy.complete)
                metrics["gc_complete_max_ms"] = policy.longest_complete * 1000
            cache = getattr(store, "cache", None)
            if cache is not None:  # the store's lookup cache
                metrics["cache_hits"] = float(cache.hits)
                metrics["cache_misses"] = float(cache.misses)
            variant = cmd.get("variant", "server")
            emit("sample", bench=cmd["bench"], variant=variant, round=0, metrics=metrics)

    commands(reactor, command)
    emit("ready", port=service.port.getHost().port, pid=os.getpid())  # type: ignore[attr-defined]
    await defer.Deferred()  # until stdin closes; the process then simply ends


class _CollectorPauses:
    """The registry process's garbage collections, timed (wall clock) from C{gc.callbacks}."""

    def __init__(self) -> None:
        self.started = 0.0
        self.started_cpu = 0.0
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.longest_cpu = 0.0
        self.total = 0.0
        self.other_thread = 0
        self.startup = 0.0
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            self.started_cpu = time.thread_time()
            return
        pause = time.perf_counter() - self.started
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], pause)
        # The collecting thread's own CPU: the pause without the time the machine (other
        # processes) or the GIL (other threads, while finalizers ran) took from it.
        self.longest_cpu = max(self.longest_cpu, time.thread_time() - self.started_cpu)
        self.total += pause
        if threading.current_thread() is not threading.main_thread():
            self.other_thread += 1

    def reset(self) -> None:
        self.startup = max(self.longest)
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.longest_cpu = 0.0
        self.total = 0.0
        self.other_thread = 0

    def metrics(self) -> dict[str, float]:
        return {
            "gc_startup_max_ms": self.startup * 1000,
            "gc_pause_max_ms": max(self.longest) * 1000,
            "gc_pause_cpu_max_ms": self.longest_cpu * 1000,
            "gc_off_reactor_count": float(self.other_thread),
            "gc_full_max_ms": self.longest[2] * 1000,
            "gc_full_count": float(self.count[2]),
            "gc_count": float(sum(self.count)),
            "gc_pause_total_ms": self.total * 1000,
        }


class LeanIRPClient(Protocol):
    """
    The load generator's side of one registry connection: it speaks IRP directly —
    requests are written from pre-serialised templates as PLAIN records, answers are framed
    and matched to their request by id with a bytes search — so that, on a two-core machine
    where it shares the CPU with the registry, it costs a fraction of what sixchat's full
    L{IRPClientProtocol} does per request (timeouts, typed answers, certificate decoding)
    and the figure is the registry's, not the client's. What the registry receives and
    sends is byte for byte the same as with the full client.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 0
        self._waiting: dict[bytes, defer.Deferred[bytes]] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.lost = False

    def connectionMade(self) -> None:
        self.request(b'<ping id="%s"/>').addCallback(lambda _: self.ready.callback(None))

    def request(self, template: bytes) -> defer.Deferred[bytes]:
        """Send C{template % id} as one record; fires with the answer's payload."""
        self._next_id += 1
        rid = b"%d" % self._next_id
        payload = template % rid
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiting[rid] = d
        self.transport.write(b"\x01" + len(payload).to_bytes(3, "big") + payload)  # type: ignore[union-attr]
        return d

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        while len(buffer) - pos >= 4:
            end = pos + 4 + int.from_bytes(buffer[pos + 1 : pos + 4], "big")
            if len(buffer) < end:
                break
            payload = buffer[pos + 4 : end]
            pos = end
            start = payload.find(b' id="')
            if start < 0:
                continue  # a presence push: not used here
            rid = payload[start + 5 : payload.find(b'"', start + 5)]
            d = self._waiting.pop(rid, None)
            if d is not None:
                if payload.startswith(b"<error"):
                    d.errback(RuntimeError(payload.decode(errors="replace")))
                else:
                    d.callback(payload)
        self._buffer = buffer[pos:]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(RuntimeError("registry connection lost"))
        if not self.ready.called:
            self.ready.errback(RuntimeError("registry connection lost"))


def _lookup_template(identity: str) -> bytes:
    return b'<lookup id="%s" identity="' + identity.encode().replace(b"%", b"%%") + b'"/>'


def _register_template(i: int) -> bytes:
    return (
        b'<register id="%s" node="n1" expires="300"><contact host="127.0.0.1" port="'
        + str(20000 + i % 40000).encode()
        + b'"/></register>'
    )


async def _connect_all(reactor: Any, ports: list[int], users: list[Any], anchors: list[Any],
                       concurrency: int) -> list[LeanIRPClient]:  # fmt: skip
    """Client C{i} connects to C{ports[i % len(ports)]} (several registry instances)."""
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    from sixchat.irp.tls import client_options

    clients: list[Any] = [None] * len(users)
    todo = iter(range(len(users)))

    async def lane() -> None:
        for i in todo:
            # The TLS set-up of sixchat's client: TLS 1.3, the registry's certificate
            # checked against 127.0.0.1, the user's certificate presented. Each request is
            # one write, so the transport is Twisted's unbuffered TLS protocol (as the
            # registry's): no timer per write to gather writes that never come together.
            options = client_options("127.0.0.1", anchors, users[i])
            factory = Factory.forProtocol(LeanIRPClient)
            factory.noisy = False
            tls_factory = TLSMemoryBIOFactory(options, True, factory)
            tls_factory.protocol = TLSMemoryBIOProtocol
            port = ports[i % len(ports)]
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
            tls: Any = await endpoint.connect(tls_factory)
            proto = tls.wrappedProtocol
            await proto.ready
            clients[i] = proto

    await defer.gatherResults(
        [defer.ensureDeferred(lane()) for _ in range(concurrency)], consumeErrors=True
    )
    return clients


async def _register(clients: list[LeanIRPClient], per_client: int) -> tuple[int, float]:
    async def one(i: int, client: LeanIRPClient) -> None:
        template = _register_template(i)
        for _ in range(per_client):
            await client.request(template)

    t0 = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(one(i, c)) for i, c in enumerate(clients)], consumeErrors=True
    )
    return len(clients) * per_client, time.perf_counter() - t0


async def _warm_up(clients: list[LeanIRPClient], names: list[bytes]) -> None:
    """
    Client C{i} looks up user C{i}, then user C{i + 1}: with the clients spread over one or
    two instances, every instance reads every user once.
    """

    async def lane(i: int, client: LeanIRPClient) -> None:
        for j in (i, i + 1):
            await client.request(names[j % len(names)])

    await defer.gatherResults(
        [defer.ensureDeferred(lane(i, c)) for i, c in enumerate(clients)], consumeErrors=True
    )


async def _saturate(reactor: Any, clients: list[LeanIRPClient], names: list[bytes],
                    seconds: float, rng: random.Random) -> tuple[int, int]:  # fmt: skip
    end = time.perf_counter() + seconds
    counts = {"ok": 0, "err": 0}

    async def lane(client: LeanIRPClient) -> None:
        while time.perf_counter() < end:
            try:
                await client.request(rng.choice(names))
                counts["ok"] += 1
            except Exception:
                counts["err"] += 1

    await defer.gatherResults([defer.ensureDeferred(lane(c)) for c in clients],
                              consumeErrors=True)  # fmt: skip
    return counts["ok"], counts["err"]


def _offered(reactor: Any, clients: list[LeanIRPClient], names: list[bytes], rate: int,
             seconds: float, rng: random.Random) -> defer.Deferred[dict[str, float]]:  # fmt: skip
    """
    Issue C{rate}/s lookups for C{seconds} regardless of answers; latencies in ms. The
    answers still outstanding are counted, not gathered: a C{DeferredList} over every
    request, built after the last tick, held the reactor for tens of milliseconds while the
    last answers were arriving, and showed in their latencies.
    """
    latencies: list[float] = []
    errors = {"n": 0}
    issued = {"n": 0, "i": 0, "outstanding": 0, "ticking": 1}
    start = time.perf_counter()
    total = int(rate * seconds)
    done: defer.Deferred[dict[str, float]] = defer.Deferred()

    def settled() -> None:
        issued["outstanding"] -= 1
        if not issued["outstanding"] and not issued["ticking"]:
            finish()

    def answered(_: Any, t0: float) -> None:
        latencies.append((time.perf_counter() - t0) * 1000)
        settled()

    def failed(_: Any) -> None:
        errors["n"] += 1
        settled()

    def tick() -> None:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while issued["n"] < due:
            client = clients[issued["i"] % len(clients)]
            issued["i"] += 1
            issued["n"] += 1
            issued["outstanding"] += 1
            d = client.request(rng.choice(names))
            d.addCallbacks(answered, failed, callbackArgs=(time.perf_counter(),))
        if issued["n"] >= total:
            loop.stop()

    loop = task.LoopingCall(tick)
    loop.clock = reactor

    def ticked(_: Any) -> None:
        issued["ticking"] = 0
        if not issued["outstanding"]:
            finish()

    def finish() -> None:
        elapsed = time.perf_counter() - start
        done.callback(
            {
                "achieved_per_s": len(latencies) / elapsed,
                "p50_ms": percentile(latencies, 50) or 0.0,
                "p99_ms": percentile(latencies, 99) or 0.0,
                "max_ms": max(latencies, default=0.0),
                "errors": float(errors["n"]),
                "offered_per_s": float(rate),
            }
        )

    loop.start(TICK).addCallback(ticked)
    return done


async def _full_client_cost(reactor: Any, port: int, users: list[Any], anchors: list[Any],
                            names: list[str]) -> float:  # fmt: skip
    """
    Client CPU microseconds per lookup with sixchat's own IRP client, for reference: 20
    connections, 40 lookups each (inside the registry's 50 requests/s per connection).
    """
    from sixchat.irp.client import connectRegistry

    clients = [
        await connectRegistry(reactor, f"127.0.0.1:{port}", user.names[0], anchors=anchors,
                              client_identity=user)  # fmt: skip
        for user in users[:20]
    ]
    rng = random.Random(2)  # noqa: S311 - lookup targets
    await sleep(reactor, 1.0)  # let the token buckets refill
    cpu0 = cpu_seconds()
    await defer.gatherResults(
        [c.lookup(rng.choice(names)) for c in clients for _ in range(40)], consumeErrors=True
    )
    cpu = cpu_seconds() - cpu0
    for client in clients:
        client.close()
    return cpu / (len(clients) * 40) * 1e6


async def registry_client(reactor: Any, spec: dict[str, Any]) -> None:
    from sixchat.bench.common import quiet_logs

    quiet_logs()
    workdir = spec["workdir"]
    bench = spec["bench"]
    # Every registry instance's CPU counts, and (PostgreSQL) the database server's.
    server_pids: list[int] = spec["server_pids"]
    db_pid: int | None = spec.get("db_pid")

    def server_cpu() -> float:
        return sum(cpu_seconds(pid) for pid in server_pids)

    def db_cpu() -> float:
        return cluster_cpu_seconds(db_pid) if db_pid else 0.0

    users = fixtures.load_registry_users(workdir, spec["clients"])
    anchors = [fixtures.load_cert(os.path.join(workdir, "registry-ca.pem"))]
    rng = random.Random(1)  # noqa: S311 - choosing lookup targets, not secrets
    t0 = time.perf_counter()
    clients = await _connect_all(reactor, spec["ports"], users, anchors, 32)
    emit("connected", seconds=time.perf_counter() - t0, clients=len(clients))
    # The load generator's own garbage collections would show as registry latency: move its
    # long-lived objects (1,000 connections) out of the collector's way.
    gc.collect()
    gc.freeze()
    identities = [u.names[0] for u in users]
    names = [_lookup_template(name) for name in identities]
    await _register(clients, 1)  # everyone exists before the first lookup
    for rnd in range(spec["rounds"]):
        cpu0, db0 = server_cpu(), db_cpu()
        n, elapsed = await _register(clients, spec["register_per_client"])
        cpu1, db1 = server_cpu(), db_cpu()
        register = {"per_s": n / elapsed, "server_cpu_us": (cpu1 - cpu0) / n * 1e6}
        if db_pid:
            register["db_cpu_us"] = (db1 - db0) / n * 1e6
        emit("sample", bench=bench, variant="register", round=rnd, metrics=register)
        await sleep(reactor, 0.2)
        # Unmeasured warm-up, the same for every backend: the round's registrations just
        # changed every identity, so a cache (PostgreSQL's lookup cache; SQLite's page cache
        # and answer memo) would otherwise be measured cold on its first lookup of each.
        await _warm_up(clients, names)
        cpu0, mine0, db0 = server_cpu(), cpu_seconds(), db_cpu()
        ok, errors = await _saturate(reactor, clients, names, spec["seconds"], rng)
        cpu1, mine1, db1 = server_cpu(), cpu_seconds(), db_cpu()
        saturation = ok / spec["seconds"]
        await sleep(reactor, 0.5)
        offered = await _offered(reactor, clients, names, spec["rate"], spec["seconds"], rng)
        metrics = {
            "lookups_per_s": saturation,
            "saturation_errors": float(errors),
            "server_cpu_us": (cpu1 - cpu0) / max(ok, 1) * 1e6,
            "client_cpu_us": (mine1 - mine0) / max(ok, 1) * 1e6,
            **offered,
        }
        if db_pid:
            metrics["db_cpu_us"] = (db1 - db0) / max(ok, 1) * 1e6
        emit("sample", bench=bench, variant="lookup", round=rnd, metrics=metrics)
        await sleep(reactor, 0.2)
    full = await _full_client_cost(reactor, spec["ports"][0], users, anchors, identities)
    emit("sample", bench=bench, variant="full_client", round=0,
         metrics={"client_cpu_us": full})  # fmt: skip
    for client in clients:
        client.transport.loseConnection()  # type: ignore[union-attr]
    await sleep(reactor, 0.2)


def bench_registry(run: Any) -> None:
    """
    Parent side: SQLite, then (if available and asked for) PostgreSQL with one instance,
    then PostgreSQL with two instances on the same database, the clients split between them.
    """
    p = run.profile
    # (bench, one database per instance, PostgreSQL?, the postmaster's pid or 0)
    runs: list[tuple[str, list[Any], bool, int]] = [
        ("registry_sqlite", [os.path.join(run.workdir, "registry.sqlite")], False, 0)
    ]
    if p.registry_postgres:
        dsn = _postgres_dsn(run)
        if dsn is not None:
            db_pid = _postmaster_pid()  # 0 for a database someone else runs: not measured
            runs.append(("registry_postgres", [dsn], True, db_pid))
            runs.append(("registry_postgres_x2", [dsn, dsn], True, db_pid))
    for bench, dbs, postgres, db_pid in runs:
        run.say(f"registry ({bench.split('_', 1)[1]}): {p.registry_clients} TLS clients, "
                f"lookups at {p.registry_lookup_rate}/s offered")  # fmt: skip
        servers = [
            run.worker(f"{bench}-server{i or ''}", {"role": "registry_server", "db": db,
                       "postgres": postgres, "deadline": 900})  # fmt: skip
            for i, db in enumerate(dbs)
        ]
        with contextlib.ExitStack() as stack:
            readies = []
            for server in servers:
                stack.enter_context(server)
                readies.append(server.expect("ready", 120))
                server.send("serving")
            client = run.worker(
                f"{bench}-client",
                {
                    "role": "registry_client",
                    "bench": bench,
                    "ports": [r["port"] for r in readies],
                    "server_pids": [r["pid"] for r in readies],
                    "db_pid": db_pid or None,
                    "clients": p.registry_clients,
                    "rounds": p.registry_rounds,
                    "register_per_client": 2,
                    "seconds": p.registry_seconds,
                    "rate": p.registry_lookup_rate,
                    "deadline": 900,
                },
            )
            with client:
                connected = client.expect("connected", 300)
                run.say(f"  {connected['clients']} clients connected in "
                        f"{connected['seconds']:.1f} s")  # fmt: skip
                run.collect(client, 900)
            for i, server in enumerate(servers):
                server.send("report", bench=bench, variant=f"server{i + 1 if i else ''}")
                run.record(server.expect("sample", 60))


def _postmaster_pid() -> int:
    """The throwaway cluster's postmaster (0 when the database is not ours to measure)."""
    from sixchat.test import pg

    cluster = pg._cluster
    if cluster is None or cluster.directory is None:
        return 0
    try:
        with open(os.path.join(cluster.directory, "data", "postmaster.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return 0


def cluster_cpu_seconds(postmaster: int) -> float:
    """User + system CPU of a PostgreSQL server: its postmaster and every child process."""
    total = cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def _postgres_dsn(run: Any, what: str = "PostgreSQL registry") -> str | None:
    """
    A fresh database in a throwaway cluster (as the test suite makes them), or None with
    "C{what} skipped: why" in the run's notes.
    """
    try:
        from sixchat.test import pg
    except ImportError:  # pragma: no cover - the test package is not installed
        run.notes.append(f"{what} skipped: sixchat.test.pg is not importable")
        return None
    reason = pg.skip_reason()
    if reason:
        run.notes.append(f"{what} skipped: {reason}")
        run.say(f"{what} skipped: {reason}")
        return None
    database = pg.fresh_database()
    run.cleanups.append(database.drop)
    return str(database.dsn)
