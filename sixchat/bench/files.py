"""
The C{file} benchmark (§8.7): one file from alice's agent to bob's agent, two
L{UserAgentService} processes — offered, streamed from disk under the session's flow
control, written to bob's partial file, fsynced, SHA-256 checked, linked under its name,
recorded and receipted; the time runs from C{sendFile} (which hashes the file first) to
alice's "delivered". The baseline, in the same run and rounds: the same file over Twisted
TLS 1.3 with C{FileSender}, written to disk by the receiver and fsynced before it answers.

Figures: C{file_mib_per_s} (ours), C{file_ratio_tls} (ours / TLS), C{file_rss_growth_mib}
(the larger growth of the resident size, peak during the transfer minus before, of either
agent).
"""

from __future__ import annotations

import base64
import os
import struct
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from sixchat.bench import fixtures
from sixchat.bench.common import commands, emit

__all__ = ["bench_file", "file_agent", "tls_file_client", "tls_file_server", "write_source"]

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kib() -> int:
    """The resident size now (no garbage collection: this is sampled during a transfer)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_KIB


def _cpu_seconds() -> float:
    """User and system CPU time of this process so far, every thread (the disk threads too)."""
    times = os.times()
    return times.user + times.system


class PeakRSS:
    """
    The peak resident size since L{mark}, sampled every 20 ms on the reactor, and the CPU
    time used since L{mark} (which, unlike the rate, hardly depends on what else the
    machine runs).
    """

    def __init__(self, reactor: Any) -> None:
        self.base = self.peak = _rss_kib()
        self.cpu_base = _cpu_seconds()
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = reactor
        self._loop.start(0.02)

    def _sample(self) -> None:
        self.peak = max(self.peak, _rss_kib())

    def mark(self) -> None:
        self.base = self.peak = _rss_kib()
        self.cpu_base = _cpu_seconds()

    def cpu(self) -> float:
        return _cpu_seconds() - self.cpu_base

    def growth_mib(self) -> float:
        self._sample()
        return (self.peak - self.base) / 1024


def write_source(path: str, size: int) -> None:
    """C{size} incompressible bytes at C{path} (made by the parent, once)."""
    block = 1 << 20
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(block, size - written)
            f.write(os.urandom(n))
            written += n


# -- ours: two agents ------------------------------------------------------------------------


async def file_agent(reactor: Any, spec: dict[str, Any]) -> None:
    """
    One agent. Commands: C{peer} (a directory record), C{mark} (reset the peak RSS),
    C{send_file} (a C{sent} event once delivered), C{peak} (the growth), C{clean} (delete
    received files).
    """
    from sixchat.agent.interfaces import IAgentEvents
    from sixchat.agent.service import UserAgentService
    from sixchat.bench.common import quiet_logs
    from sixchat.handshake import PeerConfig
    from sixchat.testing.directory import MemoryDirectory

    quiet_logs()
    workdir = spec["workdir"]
    identity = fixtures.load_identity(workdir, spec["who"], "ed25519")
    directory = MemoryDirectory()
    data_dir = os.path.join(workdir, f"file-agent-{spec['who']}-{os.getpid()}")
    service = UserAgentService(
        reactor,
        PeerConfig([identity], fixtures.load_trust(workdir)),
        data_dir,
        listen="tcp:0:interface=127.0.0.1",
        node="n1",
        control=False,
        directory=directory,
    )
    delivered: dict[str, defer.Deferred[str]] = {}

    @implementer(IAgentEvents)
    class Deliveries:
        def agentEvent(self, event: dict[str, Any]) -> None:
            if event["type"] == "delivery" and event["state"] in ("delivered", "failed"):
                d = delivered.pop(event["id"], None)
                if d is not None:
                    d.callback(event["state"])

    service.addObserver(Deliveries())
    service.privilegedStartService()
    service.startService()
    await service.ready
    peak = PeakRSS(reactor)
    port = service.listener.port.getHost().port  # type: ignore[union-attr]

    async def send(to: str, path: str) -> None:
        peak.mark()
        t0 = time.perf_counter()
        queued = await service.sendFile(to, path)
        d: defer.Deferred[str] = defer.Deferred()
        delivered[queued["id"]] = d
        state = await d
        seconds = time.perf_counter() - t0
        emit("sent", seconds=seconds, state=state, rss_mib=peak.growth_mib(), cpu_s=peak.cpu())

    def command(cmd: dict[str, Any]) -> None:
        name = cmd["cmd"]
        if name == "peer":
            from sixchat.irp.messages import Contact, NodeBinding

            contacts = (Contact("127.0.0.1", cmd["port"]),)
            binding = NodeBinding("n1", contacts, base64.b64decode(cmd["cert"]), "", "")
            directory.register(cmd["identity"], binding)
            emit("ok")
        elif name == "mark":
            peak.mark()
            emit("ok")
        elif name == "peak":
            emit("peak", rss_mib=peak.growth_mib(), cpu_s=peak.cpu())
        elif name == "clean":
            for entry in os.scandir(service.files_dir.root):
                if entry.is_file():
                    os.unlink(entry.path)
            emit("ok")
        elif name == "send_file":
            d = defer.ensureDeferred(send(cmd["to"], cmd["path"]))
            d.addErrback(lambda f: emit("error", error=f.getTraceback()))

    commands(reactor, command)
    emit("ready", port=port, pid=os.getpid(), identity=identity.names[0],
         cert=base64.b64encode(identity.leaf_der).decode())  # fmt: skip
    await defer.Deferred()


# -- the baseline: Twisted TLS 1.3 and FileSender --------------------------------------------


class _DiskSink(Protocol):
    """Receives an 8-byte size, then the file: writes it to disk, fsyncs, answers C{D}."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.expected: int | None = None
        self.received = 0
        self._head = b""
        self._file: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.expected is None:
            data = self._head + data
            if len(data) < 8:
                self._head = data
                return
            (self.expected,) = struct.unpack(">Q", data[:8])
            data = data[8:]
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed at the end
        self._file.write(data)
        self.received += len(data)
        if self.received >= self.expected:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.unlink(self.path)
            self.transport.write(b"D")  # type: ignore[union-attr]


async def tls_file_server(reactor: Any, spec: dict[str, Any]) -> None:
    from sixchat.bench import baselines
    from sixchat.bench.common import quiet_logs

    quiet_logs()
    workdir = spec["workdir"]
    identity = fixtures.load_identity(workdir, "bob", "ed25519")
    ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
    options = baselines.tls_options(identity, ca, baselines.TLS_GROUPS["x25519mlkem768"])
    target = os.path.join(workdir, f"tls-received-{os.getpid()}")
    factory = Factory.forProtocol(lambda: _DiskSink(target))
    port = reactor.listenTCP(0, baselines.wrap_tls(options, False, factory), interface="127.0.0.1")
    peak = PeakRSS(reactor)

    def command(cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "mark":
            peak.mark()
            emit("ok")
        elif cmd["cmd"] == "peak":
            emit("peak", rss_mib=peak.growth_mib(), cpu_s=peak.cpu())

    commands(reactor, command)
    emit("ready", port=port.getHost().port, pid=os.getpid())
    await defer.Deferred()


class _FileClient(Protocol):
    def __init__(self, path: str) -> None:
        self.path = path
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        from twisted.protocols.basic import FileSender

        size = os.path.getsize(self.path)
        self.transport.write(struct.pack(">Q", size))  # type: ignore[union-attr]
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed when sent
        FileSender().beginFileTransfer(self._file, self.transport).addCallback(
            lambda _: self._file.close()
        )

    def dataReceived(self, data: bytes) -> None:
        if b"D" in data and not self.done.called:
            self.done.callback(None)


async def tls_file_client(reactor: Any, spec: dict[str, Any]) -> None:
    from twisted.internet import endpoints

    from sixchat.bench import baselines
    from sixchat.bench.common import quiet_logs

    quiet_logs()
    workdir = spec["workdir"]
    identity = fixtures.load_identity(workdir, "alice", "ed25519")
    ca = fixtures.load_cert(os.path.join(workdir, "peer-ca.pem"))
    options = baselines.tls_options(identity, ca, baselines.TLS_GROUPS["x25519mlkem768"])
    peak = PeakRSS(reactor)

    async def send(path: str) -> None:
        peak.mark()
        t0 = time.perf_counter()
        client = _FileClient(path)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", spec["port"])
        factory = baselines.wrap_tls(options, True, Factory.forProtocol(lambda: client))
        await endpoint.connect(factory)
        await client.done
        seconds = time.perf_counter() - t0
        client.transport.loseConnection()  # type: ignore[union-attr]
        growth = peak.growth_mib()
        emit("sent", seconds=seconds, state="delivered", rss_mib=growth, cpu_s=peak.cpu())

    def command(cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "send_file":
            d = defer.ensureDeferred(send(cmd["path"]))
            d.addErrback(lambda f: emit("error", error=f.getTraceback()))

    commands(reactor, command)
    emit("ready", pid=os.getpid())
    await defer.Deferred()


# -- parent side --------------------------------------------------------------------------------


def bench_file(run: Any) -> None:
    size = run.profile.file_size
    run.say(f"file: {size // 2**20} MiB agent to agent vs Twisted TLS 1.3 FileSender")
    source = os.path.join(run.workdir, "file-source.bin")
    write_source(source, size)
    mib = size / 2**20
    bob = run.worker("file-bob", {"role": "file_agent", "who": "bob", "deadline": 3600})
    with bob:
        b = bob.expect("ready", 60)
        alice = run.worker("file-alice", {"role": "file_agent", "who": "alice", "deadline": 3600})
        with alice:
            alice.expect("ready", 60)
            alice.send("peer", identity=b["identity"], port=b["port"], cert=b["cert"])
            alice.expect("ok", 30)
            server = run.worker("file-tls-server", {"role": "tls_file_server", "deadline": 3600})
            with server:
                s = server.expect("ready", 60)
                client = run.worker(
                    "file-tls-client",
                    {"role": "tls_file_client", "port": s["port"], "deadline": 3600},
                )
                with client:
                    client.expect("ready", 60)
                    for rnd in range(run.profile.rounds):
                        order = ("ours", "tls") if rnd % 2 == 0 else ("tls", "ours")
                        for impl in order:
                            if impl == "ours":
                                receiver, sender = bob, alice
                                sender_args = {"to": b["identity"], "path": source}
                            else:
                                receiver, sender = server, client
                                sender_args = {"path": source}
                            receiver.send("mark")
                            receiver.expect("ok", 60)
                            sender.send("send_file", **sender_args)
                            sent = sender.expect("sent", 3600)
                            receiver.send("peak")
                            peak = receiver.expect("peak", 60)
                            if impl == "ours":
                                bob.send("clean")
                                bob.expect("ok", 60)
                            if sent["state"] != "delivered":
                                raise RuntimeError(f"the file was not delivered: {sent}")
                            run.record({
                                "bench": "file", "variant": impl, "round": rnd,
                                "metrics": {
                                    "mib_per_s": mib / sent["seconds"],
                                    "rss_growth_mib": max(sent["rss_mib"], peak["rss_mib"]),
                                    "sender_rss_growth_mib": sent["rss_mib"],
                                    "receiver_rss_growth_mib": peak["rss_mib"],
                                    # CPU seconds per GiB, every thread of each process
                                    "sender_cpu_s_per_gib": sent["cpu_s"] * 1024 / mib,
                                    "receiver_cpu_s_per_gib": peak["cpu_s"] * 1024 / mib,
                                },
                            })  # fmt: skip
    os.unlink(source)
