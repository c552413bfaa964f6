"""
Worker roles for the peer benchmarks: the responder, handshakes and idle memory (bulk and
stanzas are in L{sixchat.bench.streams}), and our initiator as all of them build it.

C{peer_server} is the responder process: it listens on 127.0.0.1 for every variant the
parent asks for (our responder per key type, the TLS and TCP baselines) and answers
C{measure} commands with its resident size. The client roles run their variants in
interleaved rounds against it and emit one C{sample} line per measurement.

Every loop is bounded by a count given by the parent; every wait by the worker deadline.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from sixchat.bench import baselines, fixtures
from sixchat.bench.common import (
    SOURCE_ADDRESSES,
    commands,
    cpu_seconds,
    emit,
    quiet_logs,
    rss_kib,
    sleep,
)

# -- our protocol -------------------------------------------------------------------------------


def peer_config(
    workdir: str,
    who: str,
    key_type: str,
    groups: list[str] | None = None,
    chain_cache: int | None = None,
) -> Any:
    from sixchat.handshake import PeerConfig

    identity = fixtures.load_identity(workdir, who, key_type)
    trust = fixtures.load_trust(workdir, chain_cache)
    if groups is None:
        return PeerConfig([identity], trust)
    return PeerConfig([identity], trust, groups=groups)


def _bench_protocol_class() -> type:
    from sixchat.protocol import PeerProtocol

    class BenchPeerProtocol(PeerProtocol):
        """Our initiator, telling the bench loop when the transport pauses and resumes it."""

        on_resume: Callable[[], None] | None = None
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True
            super().pauseProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            super().resumeProducing()
            if self.on_resume is not None:
                self.on_resume()

    return BenchPeerProtocol


class OurClientFactory(Factory):
    """Builds our initiator protocol (the bench subclass) for one configuration."""

    noisy = False

    def __init__(self, reactor: Any, config: Any, groups: list[str] | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.groups = groups
        self.cls = _bench_protocol_class()

    def buildProtocol(self, addr: Any) -> Any:
        from sixchat.connection import INITIATOR

        proto = self.cls(self.config, INITIATOR, self.reactor, None, groups=self.groups)
        proto.factory = self
        return proto


def client_endpoint(reactor: Any, port: int, i: int) -> Any:
    source = SOURCE_ADDRESSES[i % len(SOURCE_ADDRESSES)]
    return endpoints.TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=30, bindAddress=(source, 0)
    )


async def our_session(reactor: Any, factory: OurClientFactory, port: int, i: int = 0) -> Any:
    proto = await client_endpoint(reactor, port, i).connect(factory)
    return await proto.handshakeDone


# -- TLS / TCP baselines ------------------------------------------------------------------------


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """Handshake baseline, initiator side: one byte out once connected, done on the echo."""

    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.handshake: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"p")  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


# -- the server -------------------------------------------------------------------------------


async def peer_server(reactor: Any, spec: dict[str, Any]) -> None:
    """Listen for every requested variant; answer C{measure}; stop at EOF."""
    from sixchat.peers import PeerFactory

    quiet_logs()
    workdir = spec["workdir"]
    ports: dict[str, int] = {}
    ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
    apps: dict[str, type[Protocol]] = {
        "echo": baselines.Echo,
        "sink": baselines.Sink,
        "xmpp": baselines.XmppReceiver,
        "xmpp_receipts": baselines.XmppReceiptingReceiver,
    }
    factories: list[Any] = []
    for listener in spec["listeners"]:
        kind = listener["kind"]
        if kind == "ours":
            config = peer_config(
                workdir, "bob", listener["key"], chain_cache=listener.get("chain_cache")
            )
            factory: Any = PeerFactory(config, reactor, None)
            factory.noisy = False
        else:
            app = baselines.server_factory(apps[listener["app"]])
            app.noisy = False
            if kind in ("tls", "tls_records"):
                identity = fixtures.load_identity(workdir, "bob", listener["key"])
                options = baselines.tls_options(identity, ca, b"X25519MLKEM768:X25519")
                factory = baselines.wrap_tls(options, False, app, kind == "tls")
            else:
                factory = app
            factory.noisy = False
        factories.append(factory)
        port = await endpoints.TCP4ServerEndpoint(
            reactor, 0, backlog=1024, interface="127.0.0.1"
        ).listen(factory)
        ports[listener["name"]] = port.getHost().port

    def command(cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "measure":
            sessions = sum(len(getattr(f, "sessions", ())) for f in factories)
            emit("measured", rss_kib=rss_kib(), cpu_s=cpu_seconds(), sessions=sessions)

    commands(reactor, command)
    emit("ready", ports=ports, pid=os.getpid(), rss_kib=rss_kib())
    await defer.Deferred()  # until stdin closes


# -- handshakes --------------------------------------------------------------------------------


async def _one_ours(reactor: Any, factory: OurClientFactory, port: int, i: int) -> Any:
    session = await our_session(reactor, factory, port, i)
    await session.ping()  # the responder has verified M6-M8 and answers
    session._protocol.transport.abortConnection()
    return session


async def _one_tls(reactor: Any, factory: Any, port: int, i: int) -> Any:
    proto = await client_endpoint(reactor, port, i).connect(factory)
    probe = proto.wrappedProtocol
    await probe.done
    group = baselines.tls_group(proto)
    proto.transport.abortConnection()
    return group


async def run_concurrently(
    count: int, concurrency: int, one: Callable[[int], Any]
) -> list[Any]:
    results: list[Any] = []
    counter = iter(range(count))

    async def lane() -> None:
        for i in counter:
            results.append(await one(i))

    await defer.gatherResults(
        [defer.ensureDeferred(lane()) for _ in range(min(concurrency, count))],
        consumeErrors=True,
    )
    return results


async def handshake_client(reactor: Any, spec: dict[str, Any]) -> None:
    """
    For each round, each variant (in alternating order): C{count} full mutual-auth
    handshakes with C{concurrency} in flight, each confirmed by one round trip (our ping and
    pong, the baseline's echoed byte) so the responder has verified the initiator, then an
    abortive close. Reports handshakes/s and CPU milliseconds per handshake on both sides.
    """
    quiet_logs()
    workdir = spec["workdir"]
    ports = spec["ports"]
    server_pid = spec["server_pid"]
    ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
    makers: dict[str, Callable[[int], Any]] = {}
    expected_group: dict[str, str] = {}
    for variant in spec["variants"]:
        impl, mode, key, group = variant.split("-")
        if impl in ("ours", "ourscold"):  # ourscold: no validated-chain cache on either side
            chain_cache = 0 if impl == "ourscold" else None
            groups = [baselines.OUR_GROUPS[group]]
            config = peer_config(workdir, "alice", key, groups, chain_cache)
            ofactory = OurClientFactory(reactor, config, groups)
            port = ports[f"{impl}-{key}"]
            makers[variant] = functools.partial(_one_ours, reactor, ofactory, port)
            expected_group[variant] = baselines.OUR_GROUPS[group]
        else:
            identity = fixtures.load_identity(workdir, "alice", key)
            options = baselines.tls_options(identity, ca, baselines.TLS_GROUPS[group])
            app = Factory.forProtocol(_Probe)
            app.noisy = False
            tfactory = baselines.wrap_tls(options, True, app)
            tfactory.noisy = False
            port = ports[f"tls-{key}"]
            makers[variant] = functools.partial(_one_tls, reactor, tfactory, port)
            expected_group[variant] = baselines.TLS_GROUPS[group].decode()
    # Check every variant negotiates what it claims, and warm up.
    for variant, one in makers.items():
        for i in range(spec.get("warmup", 5)):
            result = await one(i)
        got = result.result.group if not isinstance(result, str) else result
        if got.lower() != expected_group[variant].lower():
            raise RuntimeError(f"{variant} negotiated {got}, not {expected_group[variant]}")
    for rnd in range(spec["rounds"]):
        order = spec["variants"] if rnd % 2 == 0 else list(reversed(spec["variants"]))
        for variant in order:
            mode = variant.split("-")[1]
            count = spec["count"][mode]
            concurrency = 1 if mode == "seq" else spec["concurrency"]
            one = makers[variant]
            server0, client0 = cpu_seconds(server_pid), cpu_seconds()
            t0 = time.perf_counter()
            await run_concurrently(count, concurrency, one)
            elapsed = time.perf_counter() - t0
            server1, client1 = cpu_seconds(server_pid), cpu_seconds()
            emit(
                "sample",
                bench="handshake",
                variant=variant,
                round=rnd,
                metrics={
                    "hs_per_s": count / elapsed,
                    "server_cpu_ms": (server1 - server0) / count * 1000,
                    "client_cpu_ms": (client1 - client0) / count * 1000,
                },
            )
            await sleep(reactor, 0.05)


# -- idle sessions -------------------------------------------------------------------------------


async def idle_client(reactor: Any, spec: dict[str, Any]) -> None:
    """
    Open C{warm} sessions (ours or TLS), report C{warm} with our resident size, wait for
    C{go}, open C{count} more with C{concurrency} in flight, let them settle, report
    C{established} with our resident size and how many are still open, wait for C{done}.
    """
    quiet_logs()
    control = commands(reactor)
    workdir = spec["workdir"]
    impl = spec["impl"]
    port = spec["port"]
    held: list[Any] = []
    lost = {"n": 0}
    if impl == "ours":
        factory: Any = OurClientFactory(reactor, peer_config(workdir, "alice", "ed25519"))

        async def one(i: int) -> Any:
            session = await our_session(reactor, factory, port, i)
            await session.ping()
            session.whenEnded().addCallback(lambda _: lost.__setitem__("n", lost["n"] + 1))
            held.append(session)
    else:
        ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
        options = baselines.tls_options(
            fixtures.load_identity(workdir, "alice", "ed25519"), ca, b"X25519MLKEM768"
        )
        app = Factory.forProtocol(_Probe)
        app.noisy = False
        factory = baselines.wrap_tls(options, True, app)
        factory.noisy = False

        async def one(i: int) -> Any:
            proto = await client_endpoint(reactor, port, i).connect(factory)
            await proto.wrappedProtocol.done
            proto.wrappedProtocol.done = defer.Deferred()
            proto.wrappedProtocol.done.addErrback(
                lambda _: lost.__setitem__("n", lost["n"] + 1)
            )
            held.append(proto)

    await run_concurrently(spec["warm"], spec["concurrency"], one)
    await sleep(reactor, 0.3)
    emit("warm", rss_kib=rss_kib())
    await control.wait("go")
    t0 = time.perf_counter()
    await run_concurrently(spec["count"], spec["concurrency"], lambda i: one(i + spec["warm"]))
    elapsed = time.perf_counter() - t0
    await sleep(reactor, spec.get("settle", 1.0))
    emit(
        "established",
        rss_kib=rss_kib(),
        held=len(held) - lost["n"],
        seconds=elapsed,
    )
    await control.wait("done")
