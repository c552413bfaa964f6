"""
Worker role for the bulk and stanza benchmarks (C{stream_client}): one session or connection
per run, the sender writing while its transport is not paused, against the responders of
L{sixchat.bench.peers.peer_server}. Ours sends receipted C{message}s; the TLS, TCP and XMPP
baselines send raw chunks and answer once at the end.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from sixchat.bench import baselines, fixtures
from sixchat.bench.common import cpu_times, emit, quiet_logs, sleep
from sixchat.bench.peers import OurClientFactory, client_endpoint, our_session, peer_config

#: Batches the senders write per reactor turn before letting the reactor run (writes,
#: reads, receipts): the same for ours and the baselines.
STANZA_BATCH = 100
BULK_BATCH = 4
#: Unreceipted messages our sender allows (bulk: 4 MiB; stanzas: ~400 KiB).
BULK_WINDOW = 256
STANZA_WINDOW = 2000


@implementer(IPushProducer, IHandshakeListener)
class _Streamer(Protocol):
    """
    Baseline sender for bulk and stanzas: writes chunks made by C{make(i)} while the
    transport is not paused, C{batch} per reactor turn; C{reply} fires with the first bytes
    the peer sends back (its end-of-run answer).
    """

    def __init__(self) -> None:
        self.reply: defer.Deferred[bytes] = defer.Deferred()
        self.handshake: defer.Deferred[None] = defer.Deferred()
        self.paused = False
        self._on_resume: Callable[[], None] | None = None
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if not hasattr(self.transport, "_tlsConnection"):
            self.handshakeCompleted()  # plain TCP: nothing to wait for

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.counter is not None:  # receipted XMPP: parse every answer as it comes
            if not self.reply.called and self.counter.feed(data):
                self.reply.callback(b"")
            return
        self._buffer += data
        if not self.reply.called and self._complete(self._buffer):
            self.reply.callback(self._buffer)

    counter: Any = None

    _complete: Callable[[bytes], bool] = staticmethod(lambda data: True)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.reply.called:
            self.reply.errback(reason)


def pump(
    reactor: Any,
    count: int,
    batch: int,
    send: Callable[[int], None],
    is_paused: Callable[[], bool],
    set_resume: Callable[[Callable[[], None]], None],
) -> defer.Deferred[None]:
    """
    Call C{send(i)} for i in 0..count-1, C{batch} per reactor turn, pausing while the
    transport says its buffer is full. Fires when the last one was handed to the transport.
    """
    done: defer.Deferred[None] = defer.Deferred()
    state = {"i": 0, "scheduled": False}

    def run() -> None:
        state["scheduled"] = False
        i = state["i"]
        end = min(count, i + batch)
        while i < end:
            if is_paused():
                break
            send(i)
            i += 1
        state["i"] = i
        if i >= count:
            if not done.called:
                done.callback(None)
            return
        if not is_paused():
            schedule()

    def schedule() -> None:
        if not state["scheduled"] and state["i"] < count:
            state["scheduled"] = True
            reactor.callLater(0, run)

    set_resume(schedule)
    schedule()
    return done


# -- bulk and stanzas ----------------------------------------------------------------------------


def _letters(n: int, seed: int = 0) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,"
    return "".join(alphabet[(i * 7 + seed) % len(alphabet)] for i in range(n))


async def _ours_stream(
    reactor: Any,
    port: int,
    workdir: str,
    count: int,
    batch: int,
    body_of: Callable[[int], str],
    window: int,
) -> float:
    """
    Send C{count} messages on one session; seconds until the last receipt arrived.

    At most C{window} messages are unreceipted at a time, as an application that waits for
    its receipts would do. Without such a window, both peers can end up with full write
    buffers (messages one way, receipts the other) while each has stopped reading because
    its own buffer is full: the back-pressure rule of the protocol adapter would then stall
    both (see docs/benchmarks.md).
    """
    factory = OurClientFactory(reactor, peer_config(workdir, "alice", "ed25519"))
    session = await our_session(reactor, factory, port)
    proto = session._protocol
    all_receipted: defer.Deferred[None] = defer.Deferred()
    state = {"receipts": 0, "sent": 0}
    resume: list[Callable[[], None]] = []

    def receipted(_: Any) -> None:
        state["receipts"] += 1
        if state["receipts"] == count:
            all_receipted.callback(None)
        elif state["sent"] - state["receipts"] == window // 2 and resume:
            resume[0]()  # hysteresis: refill half a window at a time

    def failed(f: Any) -> None:
        if not all_receipted.called:
            all_receipted.errback(f)

    def send(i: int) -> None:
        state["sent"] += 1
        session.sendMessage(body_of(i)).addCallbacks(receipted, failed)

    def set_resume(callback: Callable[[], None]) -> None:
        proto.on_resume = callback
        resume.append(callback)

    def blocked() -> bool:
        return bool(proto.paused) or state["sent"] - state["receipts"] >= window

    t0 = time.perf_counter()
    await pump(reactor, count, batch, send, blocked, set_resume)
    await all_receipted
    elapsed = time.perf_counter() - t0
    proto.transport.abortConnection()
    return elapsed


async def _baseline_stream(
    reactor: Any,
    port: int,
    tls_options: Any,
    count: int,
    batch: int,
    first: bytes,
    chunk_of: Callable[[int], bytes],
    last: bytes,
    complete: Callable[[bytes], bool],
    counter: Any = None,
    aggregate: bool = True,
) -> float:
    app = Factory.forProtocol(_Streamer)
    app.noisy = False
    factory: Any = (
        app if tls_options is None else baselines.wrap_tls(tls_options, True, app, aggregate)
    )
    factory.noisy = False
    proto = await client_endpoint(reactor, port, 0).connect(factory)
    streamer: _Streamer = proto.wrappedProtocol if tls_options is not None else proto
    streamer._complete = complete
    streamer.counter = counter
    await streamer.handshake
    transport = streamer.transport
    assert transport is not None

    def set_resume(callback: Callable[[], None]) -> None:
        streamer._on_resume = callback

    t0 = time.perf_counter()
    transport.write(first)
    await pump(reactor, count, batch, lambda i: transport.write(chunk_of(i)),
               lambda: streamer.paused, set_resume)  # fmt: skip
    if last:
        transport.write(last)
    await streamer.reply
    elapsed = time.perf_counter() - t0
    transport.abortConnection()  # type: ignore[attr-defined]
    return elapsed


async def stream_client(reactor: Any, spec: dict[str, Any]) -> None:
    """
    C{bulk}: C{total} bytes of application data in C{write}-byte writes, on one session.
    Ours carries each write as a C{message} whose body is C{write} characters, receipted as
    the protocol requires; the baselines carry raw bytes and answer once at the end.

    C{stanza}: C{count} 200-byte C{message} stanzas, each its own write, one way; ours are
    receipted one by one, XMPP's are answered by one C{iq} after the last.
    """
    quiet_logs()
    workdir = spec["workdir"]
    ports = spec["ports"]
    bench = spec["bench"]
    ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
    tls_options = baselines.tls_options(
        fixtures.load_identity(workdir, "alice", "ed25519"), ca, b"X25519MLKEM768"
    )
    runners: dict[str, Callable[[int], Any]] = {}
    if bench == "bulk":
        size = spec["write"]
        count = spec["total"] // size
        body = _letters(size)
        chunk = body.encode("ascii")
        runners["ours"] = lambda n: _ours_stream(
            reactor, ports["ours-ed25519"], workdir, n, BULK_BATCH, lambda i: body, BULK_WINDOW
        )
        def bulk_runner(name: str, options: Any) -> Callable[[int], Any]:
            return lambda n: _baseline_stream(
                reactor, ports[f"{name}-sink"], options, n, BULK_BATCH,
                struct.pack(">Q", n * size), lambda i: chunk, b"",
                lambda data: data.startswith(b"D"),
            )  # fmt: skip

        runners["tls"] = bulk_runner("tls", tls_options)
        runners["tcp"] = bulk_runner("tcp", None)
    else:
        count = spec["count"]
        size = spec["stanza_bytes"]
        from sixchat.stanzas import Message, format_timestamp
        from sixchat.xmlcodec import serialize

        # Overheads measured with a one-character body ("" would be written <body/>).
        probe = serialize(
            Message(os.urandom(16).hex(), format_timestamp(_now()), "x").to_element()
        )
        ours_body = _letters(size - len(probe) + 1)
        xmpp_body = _letters(size + 1 - len(baselines.xmpp_message("x", os.urandom(16).hex())))
        assert len(baselines.xmpp_message(xmpp_body, os.urandom(16).hex())) == size
        assert len(serialize(Message(os.urandom(16).hex(), format_timestamp(_now()),
                                     ours_body).to_element())) == size  # fmt: skip
        runners["ours"] = lambda n: _ours_stream(
            reactor, ports["ours-ed25519"], workdir, n, STANZA_BATCH, lambda i: ours_body,
            STANZA_WINDOW,
        )

        def xmpp_chunk(i: int) -> bytes:
            return baselines.xmpp_message(xmpp_body, os.urandom(16).hex())

        def xmpp_runner(name: str, options: Any) -> Callable[[int], Any]:
            return lambda n: _baseline_stream(
                reactor, ports[f"{name}-xmpp"], options, n, STANZA_BATCH,
                baselines.STREAM_HEADER, xmpp_chunk, b"<iq type='get' id='done'/>",
                lambda data: b"type='result'" in data,
            )  # fmt: skip

        runners["xmpp_tls"] = xmpp_runner("tls", tls_options)
        runners["xmpp_tcp"] = xmpp_runner("tcp", None)
        # Informational, not in the default run (it needs a "tls_records" listener): XMPP
        # over TLS with one TLS record per stanza, i.e. without Twisted's write aggregation.
        runners["xmpp_tls_records"] = lambda n: _baseline_stream(
            reactor, ports.get("tls_records-xmpp", 0), tls_options, n, STANZA_BATCH,
            baselines.STREAM_HEADER, xmpp_chunk, b"<iq type='get' id='done'/>",
            lambda data: b"type='result'" in data, aggregate=False,
        )  # fmt: skip
        runners["xmpp_tls_receipts"] = lambda n: _baseline_stream(
            reactor, ports["tls-xmpp_receipts"], tls_options, n, STANZA_BATCH,
            baselines.STREAM_HEADER, xmpp_chunk, b"", lambda data: False,
            baselines.XmppReceiptCounter(n),
        )  # fmt: skip
    variants = [v for v in spec["variants"] if v in runners]
    for variant in variants:  # warm-up: a short run of each, not reported
        await runners[variant](max(1, count // 20))
    for rnd in range(spec["rounds"]):
        order = variants if rnd % 2 == 0 else list(reversed(variants))
        for variant in order:
            server0, client0 = cpu_times(spec.get("server_pid")), cpu_times()
            elapsed = await runners[variant](count)
            server1, client1 = cpu_times(spec.get("server_pid")), cpu_times()
            metrics = {
                "seconds": elapsed,
                "mib_per_s": count * size / elapsed / 2**20,
                # CPU microseconds per write (a message, for ours) of each process: steadier
                # than throughput on a loaded machine (connection set-up included, negligible).
                "sender_cpu_us": (sum(client1) - sum(client0)) / count * 1e6,
                "receiver_cpu_us": (sum(server1) - sum(server0)) / count * 1e6,
                # Of which in the kernel (system time: the socket calls, epoll).
                "sender_sys_us": (client1[1] - client0[1]) / count * 1e6,
                "receiver_sys_us": (server1[1] - server0[1]) / count * 1e6,
            }
            if bench == "stanza":
                metrics["msgs_per_s"] = count / elapsed
            emit("sample", bench=bench, variant=variant, round=rnd, metrics=metrics)
            await sleep(reactor, 0.05)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
