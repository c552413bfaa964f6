"""
How costs grow (C{--only scaling}, not part of the default run): in one worker process,
without sockets, so that only our code is measured —

  - B{message size}: CPU microseconds (process time, so other load on the machine
    matters little) per message on the sending side (build, serialise,
    seal, and later open and match its receipt) and on the receiving side (open, parse,
    deliver, seal the receipt), for bodies of 0 B to 32 KiB;
  - B{number of sessions}: resident memory per idle session (both endpoints in this
    process, over an in-memory transport) as the number of sessions grows.

Both drive the real L{PeerProtocol}s over an in-memory transport that hands bytes across
directly; the transport's own cost (sockets, the reactor) is what the socket benchmarks add.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from sixchat.bench.common import emit, rss_kib

SIZES = (0, 64, 200, 1024, 4096, 16384, 32768)


class _Wire:
    """An in-memory transport: what is written is collected for the other side."""

    disconnecting = False

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out = []
        return data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def getPeer(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 1)

    getHost = getPeer


def _pair(clock: Any, initiator: Any, responder: Any) -> tuple[Any, Any, _Wire, _Wire]:
    from sixchat.connection import INITIATOR, RESPONDER
    from sixchat.protocol import PeerProtocol

    i = PeerProtocol(initiator, INITIATOR, clock)
    r = PeerProtocol(responder, RESPONDER, clock)
    wi, wr = _Wire(), _Wire()
    i.makeConnection(wi)
    r.makeConnection(wr)
    for _ in range(2):
        r.dataReceived(wi.take())
        i.dataReceived(wr.take())
    assert i.session is not None and r.session is not None
    return i, r, wi, wr


async def scaling(reactor: Any, spec: dict[str, Any]) -> None:
    from twisted.internet import task

    from sixchat.bench.common import quiet_logs
    from sixchat.bench.peers import peer_config

    quiet_logs()
    workdir = spec["workdir"]
    clock = task.Clock()
    initiator = peer_config(workdir, "alice", "ed25519", ["x25519"])
    responder = peer_config(workdir, "bob", "ed25519")
    i, r, wi, wr = _pair(clock, initiator, responder)
    session = i.session
    for size in spec.get("sizes", SIZES):
        body = ("abcdefghij" * (size // 10 + 1))[:size]
        count = max(200, min(20_000, 4_000_000 // max(size, 200)))
        batch = 50
        send = recv = back = 0.0
        for _ in range(count // batch):
            t0 = time.process_time()
            for _ in range(batch):
                session.sendMessage(body)
            data = wi.take()
            t1 = time.process_time()
            r.dataReceived(data)
            receipts = wr.take()
            t2 = time.process_time()
            i.dataReceived(receipts)
            t3 = time.process_time()
            send += t1 - t0
            recv += t2 - t1
            back += t3 - t2
        n = count // batch * batch
        emit(
            "sample",
            bench="scaling_size",
            variant=str(size),
            round=0,
            metrics={"sender_us": (send + back) / n * 1e6, "receiver_us": recv / n * 1e6},
        )
    held: list[Any] = []
    for target in spec.get("sessions", (100, 1000, 4000)):
        gc.collect()
        before = rss_kib()
        added = 0
        while len(held) < target:
            held.append(_pair(clock, initiator, responder))
            added += 1
        after = rss_kib()
        emit(
            "sample",
            bench="scaling_sessions",
            variant=str(target),
            round=0,
            metrics={"kib_per_session": (after - before) / added / 2, "sessions": float(target)},
        )


def bench_scaling(run: Any) -> None:
    run.say("scaling: cost per message by body size, memory per session by session count")
    sizes = list(SIZES)
    sessions = [100, 1000, 4000] if run.profile.name == "full" else [100, 500]
    if run.profile.name == "smoke":
        sizes, sessions = [0, 200], [5]
    worker = run.worker(
        "scaling", {"role": "scaling", "sizes": sizes, "sessions": sessions, "deadline": 600}
    )
    with worker:
        run.collect(worker, 600)

