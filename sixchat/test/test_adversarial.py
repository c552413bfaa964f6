"""
Hostile peers over real sockets on loopback (docs/security.md, "Attacks tried").

One responder (bob, a L{PeerFactory} with the default limits) listens on 127.0.0.1. Attacks
come from other loopback addresses (127.0.0.2, and 127.0.1.x where many sources are needed),
so the per-source limit of §9.2 sees them as other hosts; while each attack runs, a
legitimate initiator (alice, from 127.0.0.1) opens a session, gets a message receipted and
closes: L{AttackCase.legit}. Each test checks the alert the spec names (as the attacker reads
it, and as bob logged it) or the silent close §9.2 names, and that alice got in.

Scaled for CI: the handshake timeout is lowered to 2 s where a test has to wait for it (the
15 s default is pinned with a fake clock in C{test_protocol.TimeoutTests}); 5,000 half-open
connections are opened for real.
"""

from __future__ import annotations

import datetime
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.trial import unittest

from sixchat import pki
from sixchat.connection import INITIATOR
from sixchat.handshake import PeerConfig
from sixchat.identity import Identity
from sixchat.protocol import (
    MAX_UNPROCESSED,
    HandshakeFailed,
    PeerFactory,
    PeerProtocol,
    Session,
    SessionLost,
    connectPeer,
)
from sixchat.record import PLAIN, SEALED, header, plain_record
from sixchat.stanzas import ErrorStanza, Message
from sixchat.test import certs
from sixchat.test.test_protocol import Recorder
from sixchat.xmlcodec import Element, parse, serialize

LEGIT = "127.0.0.1"
ATTACKER = "127.0.0.2"
RELAY_SOURCE = "127.0.0.3"
ALICE = "alice@example.com"
BOB = "bob@example.com"
MALLORY = "mallory@example.com"

CA = certs.make_ca()
TRUST = certs.trust_for(CA)
#: Revoked by the CRL bob holds.
REVOKED = certs.make_identity("revoked@example.com", CA, key=certs.key_for("ed25519", "revoked"))
CRL = pki.issue_crl(CA.key, CA.cert, [REVOKED.leaf.serial_number])


log = Logger()


def figure(name: str, **values: Any) -> None:
    """Log a measured figure (docs/security.md quotes them; grep 'figure' in test.log)."""
    text = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    log.info("figure {name}: {text}", name=name, text=text)


def raise_nofile(wanted: int) -> int:
    """Raise the soft limit on open files towards C{wanted} (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    """Let the reactor run until C{predicate()} is true, at most C{seconds}."""
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        await sleep(0.01)
    return value


def records(data: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream into (type, payload) without any checks (what an observer sees)."""
    out = []
    while len(data) >= 4:
        length = int.from_bytes(data[1:4], "big")
        out.append((data[0], data[4 : 4 + length]))
        data = data[4 + length :]
    return out


def plain_alerts(data: bytes) -> list[str]:
    """The reasons of the PLAIN alerts in a received byte stream."""
    reasons = []
    for kind, payload in records(data):
        if kind == PLAIN:
            element = parse(payload)
            if element.tag == "alert":
                reasons.append(element.get("reason") or "")
    return reasons


def write_buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds, not yet written to its socket."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def is_reading(transport: Any) -> bool:
    return transport in reactor.getReaders()  # type: ignore[attr-defined]


class RecordingFactory(PeerFactory):
    """Bob's factory, keeping every protocol it built (to read the alert each one sent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[PeerProtocol] = []

    def buildProtocol(self, addr: Any) -> PeerProtocol | None:  # type: ignore[override]
        proto = super().buildProtocol(addr)
        if proto is not None:
            proto.peer_host = addr.host  # type: ignore[attr-defined]
            self.built.append(proto)
        return proto

    def failures_from(self, host: str, by_peer: bool = False) -> list[str]:
        """The alerts we sent to (or, C{by_peer}, received from) connections from C{host}."""
        return [
            p.failure.reason
            for p in self.built
            if getattr(p, "peer_host", None) == host
            and isinstance(p.failure, HandshakeFailed)
            and p.failure.sent_by_peer == by_peer
        ]


class RawPeer(protocol.Protocol):
    """An attacker speaking bytes: writes C{data} on connect, keeps what it receives."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.received = bytearray()
        self.connected_at = 0.0
        self.lost_at: float | None = None
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.connected_at = time.monotonic()
        if self.data:
            self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost_at = time.monotonic()
        self.done.callback(bytes(self.received))

    def close(self) -> defer.Deferred[bytes]:
        if self.lost_at is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        return self.done


class RawFactory(protocol.ClientFactory):
    def __init__(self, make: Callable[[], RawPeer]) -> None:
        self.make = make
        self.failed: list[Any] = []

    def buildProtocol(self, addr: Any) -> RawPeer:
        return self.make()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failed.append(reason)
        peer = self.make()
        if peer.lost_at is None:
            peer.connectionLost(reason)  # never connected: it counts as closed


def identity_with_leaf(name: str, leaf: Any, key: Any, chain: tuple[Any, ...] = ()) -> Identity:
    """An identity claiming C{name} with an arbitrary (possibly invalid) leaf."""
    identity = certs.make_identity(name, CA, key=key)
    identity.leaf = leaf
    identity.leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    identity.chain_der = [
        identity.leaf_der,
        *(c.public_bytes(serialization.Encoding.DER) for c in chain),
    ]
    return identity


class AttackCase(unittest.TestCase):
    """Bob listening on 127.0.0.1, alice able to reach him, attackers elsewhere on loopback."""

    timeout = 90
    handshake_timeout = 15.0

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.bob_identity = certs.make_identity(BOB, CA)
        self.bob = PeerConfig([self.bob_identity], certs.trust_for(CA, crls=[CRL]))
        self.alice = PeerConfig([certs.make_identity(ALICE, CA)], TRUST)
        self.observer = Recorder()
        self.factory = RecordingFactory(
            self.bob, reactor, self.observer, handshake_timeout=self.handshake_timeout
        )
        self.port = reactor.listenTCP(0, self.factory, backlog=1024, interface=LEGIT)  # type: ignore[attr-defined]
        self.addCleanup(self._tearDownServer)
        self.bob_port = self.port.getHost().port
        self.raw_peers: list[RawPeer] = []

    async def _tearDownServer(self) -> None:
        for peer in self.raw_peers:
            peer.close()
        await self.port.stopListening()
        for proto in self.factory.built:
            if not proto._lost and proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        await until(lambda: all(p._lost for p in self.factory.built), 10, "connections closed")
        await until(lambda: all(p.lost_at for p in self.raw_peers), 10, "attackers closed")

    # the legitimate peer ----------------------------------------------------------------------

    def endpoint(self, source: str, port: int | None = None) -> Any:
        return endpoints.TCP4ClientEndpoint(
            reactor, LEGIT, port or self.bob_port, timeout=10, bindAddress=(source, 0)
        )

    async def legit(self, within: float = 15.0, port: int | None = None) -> float:
        """Alice opens a session, gets a message receipted, closes; returns the seconds taken."""
        started = time.monotonic()

        async def run() -> None:
            session = await connectPeer(
                reactor, self.endpoint(LEGIT, port), None, to=BOB, config=self.alice
            )
            self.assertEqual(session.peer, BOB)
            receipt = await session.sendMessage("still reachable during the attack")
            self.assertTrue(receipt.id)
            await session.close()

        await defer.ensureDeferred(run()).addTimeout(within, reactor)
        return time.monotonic() - started

    # attackers ----------------------------------------------------------------------------

    async def raw(self, data: bytes = b"", source: str = ATTACKER) -> RawPeer:
        peer = RawPeer(data)
        self.raw_peers.append(peer)
        await endpoints.connectProtocol(self.endpoint(source), peer)
        return peer

    def raw_many(self, count: int, source: str | Callable[[int], str] = ATTACKER) -> list[RawPeer]:
        """Open C{count} raw connections at once (not waiting for them)."""
        peers = []
        for i in range(count):
            peer = RawPeer()
            factory = RawFactory(lambda peer=peer: peer)  # type: ignore[misc]
            where = source(i) if callable(source) else source
            reactor.connectTCP(LEGIT, self.bob_port, factory, 30, (where, 0))  # type: ignore[attr-defined]
            peers.append(peer)
        self.raw_peers.extend(peers)
        return peers

    async def attacker_session(self, config: PeerConfig, to: str = BOB, **kw: Any) -> Session:
        return await connectPeer(reactor, self.endpoint(ATTACKER), None, to=to, config=config, **kw)

    def m1(self) -> bytes:
        """A valid M1 from alice (as a captured record would be)."""
        from sixchat.connection import Connection

        connection = Connection(self.alice, INITIATOR, to=BOB)
        connection.start()
        return connection.data_to_send()


# ---------------------------------------------------------------------------------------------
# Floods and slow peers (§7.7, §9.2)


class SlowlorisTests(AttackCase):
    handshake_timeout = 2.0

    async def test_one_byte_per_second(self) -> None:
        """
        20 connections trickle a valid M1 at one byte per second: 16 are held until the
        handshake timeout, which a trickle cannot extend (PLAIN handshake_timeout); the other
        4 are closed at once without an alert (per-source limit); alice gets in meanwhile.
        """
        m1 = self.m1()
        peers = [await self.raw() for _ in range(20)]

        def trickle() -> None:
            for peer in peers:
                if peer.lost_at is None:
                    sent = getattr(peer, "sent", 0)
                    peer.transport.write(m1[sent : sent + 1])  # type: ignore[union-attr]
                    peer.sent = sent + 1  # type: ignore[attr-defined]

        loop = task.LoopingCall(trickle)
        loop.start(1.0)
        self.addCleanup(lambda: loop.running and loop.stop())
        took = await self.legit()
        await until(lambda: all(p.lost_at for p in peers), 10, "slowloris connections ended")
        loop.stop()
        alerts = [plain_alerts(bytes(p.received)) for p in peers]
        self.assertEqual(alerts.count(["handshake_timeout"]), 16, alerts)
        self.assertEqual(alerts.count([]), 4, alerts)
        for peer in peers:
            assert peer.lost_at is not None
            self.assertLess(peer.lost_at - peer.connected_at, self.handshake_timeout + 1.5)
        self.assertEqual(self.factory.failures_from(ATTACKER), ["handshake_timeout"] * 16)
        self.assertLess(took, self.handshake_timeout)
        self.assertEqual(self.factory.handshaking, 0)
        figure("slowloris", held=16, refused=4, legit_seconds=took)


class HalfOpenTests(AttackCase):
    timeout = 120

    async def test_5000_half_open_connections(self) -> None:
        """
        5,000 connections from one address that never send a byte, opened in waves of 500 (so
        the kernel's accept queue, not the responder, is never the bottleneck): 16 are held
        (per-source limit), 4,984 are closed at once with nothing sent; alice gets in during
        the flood.
        """
        count, wave = 5000, 500
        if raise_nofile(2 * count + 512) < 2 * count + 512:
            raise unittest.SkipTest(f"cannot open {2 * count} file descriptors (ulimit -n)")
        started = time.monotonic()
        peers: list[RawPeer] = []
        legit: defer.Deferred[float] | None = None
        for _ in range(count // wave):
            peers += self.raw_many(wave)
            if legit is None:
                legit = defer.ensureDeferred(self.legit(within=30))
            opened = len(peers)
            await until(
                lambda n=opened: self.factory.refused + len(self.factory.built) >= n,
                30,
                f"{len(peers)} connections accepted",
            )
        await until(
            lambda: sum(p.lost_at is not None for p in peers) >= count - 16,
            30,
            "refused connections closed",
        )
        flood_seconds = time.monotonic() - started
        assert legit is not None
        took = await legit
        held = [p for p in peers if p.lost_at is None]
        self.assertEqual(len(held), 16)
        self.assertEqual(self.factory.refused, count - 16)
        self.assertEqual({bytes(p.received) for p in peers}, {b""})  # no alert, nothing at all
        self.assertEqual(self.factory.handshaking, 16)
        self.assertLess(took, 30)
        self.assertLess(flood_seconds, 60)
        figure("half-open", connections=count, held=16, flood_seconds=flood_seconds,
               legit_seconds=took)  # fmt: skip

    async def test_half_closed_connections_free_their_slot(self) -> None:
        """A connection half-closed (FIN, never a byte) is dropped at once, freeing its slot."""
        peers = [await self.raw() for _ in range(16)]
        for peer in peers:
            peer.transport.loseWriteConnection()  # type: ignore[union-attr]
        await until(lambda: all(p.lost_at for p in peers), 5, "half-closed connections dropped")
        await until(lambda: self.factory.handshaking == 0, 5, "slots released")
        await self.legit()

    async def test_distributed_half_open_fills_the_responder(self) -> None:
        """
        Known limit (§9.2): 300 silent connections from 20 addresses fill all 256 handshake
        slots and alice is refused (closed, no alert) until they time out; then she gets in.
        """
        self.factory.protocol_options["handshake_timeout"] = 2.0
        peers = self.raw_many(300, lambda i: f"127.0.1.{1 + i % 20}")
        await until(lambda: self.factory.handshaking == 256, 20, "all slots taken")
        await until(lambda: sum(p.lost_at is not None for p in peers) >= 44, 20, "44 refused")
        refused = RawPeer()
        await endpoints.connectProtocol(self.endpoint(LEGIT), refused)
        self.raw_peers.append(refused)
        self.assertEqual(await refused.done, b"")  # closed at once, no alert
        await until(lambda: self.factory.handshaking == 0, 10, "attack timed out")
        await self.legit()


class HandshakeFloodTests(AttackCase):
    async def test_replayed_m1_flood_from_one_address(self) -> None:
        """
        One address replays a captured M1 as fast as it can, 32 connections at a time, each
        dropped once bob answered: at most 16 are in handshake at once, the rest are closed
        without an alert; alice's handshake completes within seconds during the flood.
        """
        m1 = self.m1()
        answered = refused = 0
        stop = False
        peak = 0

        async def attacker() -> None:
            nonlocal answered, refused, peak
            while not stop:
                peer = RawPeer(m1)
                self.raw_peers.append(peer)
                await endpoints.connectProtocol(self.endpoint(ATTACKER), peer)
                peak = max(peak, self.factory.in_handshake.get(ATTACKER, 0))
                await until(lambda p=peer: p.received or p.lost_at, 10, "an answer or a close")
                if peer.received:
                    answered += 1
                else:
                    refused += 1
                await peer.close()
                self.raw_peers.remove(peer)

        started = time.monotonic()
        workers = [defer.ensureDeferred(attacker()) for _ in range(32)]
        await sleep(1.0)
        took = await self.legit(within=20)
        await sleep(1.0)
        stop = True
        await defer.gatherResults(workers)
        seconds = time.monotonic() - started
        self.assertGreater(answered, 16)
        self.assertGreater(refused, 0)
        self.assertLessEqual(peak, 16)
        self.assertLess(took, 20)
        figure("m1-flood", answered=answered, refused=refused, peak_in_handshake=peak,
               seconds=seconds, legit_seconds=took)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Malformed input (§2, §3, §11.6)


class MalformedInputTests(AttackCase):
    async def attack(self, data: bytes) -> list[str]:
        peer = await self.raw(data)
        return plain_alerts(await peer.done)

    async def test_oversized_and_invalid_record_headers(self) -> None:
        """Each header gets its §11.6 alert before any payload is buffered; then the close."""
        cases = {
            "PLAIN over 65,536": (header(PLAIN, 65_537) + bytes(1_000_000), "record_overflow"),
            "SEALED 2^24-1": (header(SEALED, 0xFFFFFF), "record_overflow"),
            "SEALED over 65,552 before keys": (header(SEALED, 65_553), "record_overflow"),
            "SEALED before keys": (header(SEALED, 32) + bytes(32), "protocol_error"),
            "unknown type (TLS)": (b"\x16\x03\x01\x00\x10" + bytes(16), "protocol_error"),
            "zero length": (header(PLAIN, 0), "protocol_error"),
            "HTTP": (b"GET / HTTP/1.1\r\nHost: bob\r\n\r\n", "protocol_error"),
        }
        legit = defer.ensureDeferred(self.legit())
        results = await defer.gatherResults(
            [defer.ensureDeferred(self.attack(data)) for data, _ in cases.values()]
        )
        await legit
        for (name, (_, expected)), alerts in zip(cases.items(), results, strict=True):
            self.assertEqual(alerts, [expected], name)
        for proto in self.factory.built:
            self.assertEqual(proto.connection.buffered, 0)

    async def test_xml_bombs_and_external_entities(self) -> None:
        """Billion laughs, external entities, PIs and BOMs in M1: PLAIN protocol_error."""
        laughs = (
            b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
            + b"".join(
                b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                for i in range(1, 10)
            )
            + b']><hello versions="1" random="x">&lol9;</hello>'
        )
        payloads = {
            "billion laughs": laughs,
            "external entity": b'<!DOCTYPE h [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<hello versions="1">&x;</hello>',
            "external DTD": b'<!DOCTYPE hello SYSTEM "http://127.0.0.1:9/x.dtd"><hello/>',
            "parameter entity": b'<!DOCTYPE h [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
            b"<hello/>",
            "undefined entity": b'<hello versions="1">&x;</hello>',
            "processing instruction": b'<?xml-stylesheet href="x"?><hello versions="1"/>',
            "XML declaration": b'<?xml version="1.0"?><hello versions="1"/>',
            "UTF-16 BOM": b"\xff\xfe<\x00h\x00/\x00>\x00",
            "namespace": b'<hello xmlns="urn:x" versions="1"/>',
        }
        legit = defer.ensureDeferred(self.legit())
        results = await defer.gatherResults(
            [defer.ensureDeferred(self.attack(plain_record(p))) for p in payloads.values()]
        )
        await legit
        for name, alerts in zip(payloads, results, strict=True):
            self.assertEqual(alerts, ["protocol_error"], name)

    async def test_xml_bomb_after_the_handshake(self) -> None:
        """An authenticated peer's billion laughs in a SEALED stanza: SEALED protocol_error."""
        mallory = PeerConfig([certs.make_identity(MALLORY, CA)], TRUST)
        session = await self.attacker_session(mallory)
        conn = session.connection
        bomb = (
            b'<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]><message>&b;</message>'
        )
        session._protocol.transport.write(conn._write.seal(bomb))  # type: ignore[union-attr]
        await session.whenEnded()
        assert isinstance(session.end_reason, HandshakeFailed)
        self.assertEqual(
            (session.end_reason.reason, session.end_reason.sent_by_peer), ("protocol_error", True)
        )
        await self.legit()


# ---------------------------------------------------------------------------------------------
# Back-pressure (§9.2)


class HoldFrom(Recorder):
    """Stores at once, except messages from C{sender}: held until released (a slow store)."""

    def __init__(self, sender: str) -> None:
        super().__init__()
        self.sender = sender

    def messageReceived(self, session: Any, message: Message) -> Any:
        self.messages.append(message)
        if session.peer != self.sender:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self.held.append(d)
        return d


class NeverReadsTests(AttackCase):
    timeout = 120

    async def mallory(self) -> tuple[Session, PeerProtocol, Recorder]:
        observer = Recorder()
        config = PeerConfig([certs.make_identity(MALLORY, CA)], TRUST)
        session = await connectPeer(
            reactor, self.endpoint(ATTACKER), None, to=BOB, config=config, observer=observer
        )
        servers = await until(
            lambda: [p for p in self.factory.built if p.session and p.session.peer == MALLORY],
            5,
            "bob's session",
        )
        return session, servers[0], observer

    async def test_peer_that_never_reads(self) -> None:
        """
        Mallory stops reading and sends stanzas whose answers are as large (an unknown element
        with a 30,000-character name is answered error unsupported naming it) until bob stops
        reading, then 8 MB more. Bob's write buffer never holds more than 1 MiB however much
        mallory sends, alice gets in meanwhile, and once mallory reads again every answer
        arrives.
        """
        session, server, observer = await self.mallory()
        attacker = session._protocol.transport
        attacker.unregisterProducer()  # type: ignore[union-attr]
        attacker.pauseProducing()  # type: ignore[union-attr]
        tcp = server.transport
        peak = 0

        def sample() -> None:
            nonlocal peak
            peak = max(peak, write_buffered(tcp))

        sampler = task.LoopingCall(sample)
        sampler.start(0.002)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        stanza = Element("x" * 30_000, {"id": "big"})
        count = 0

        def send(n: int) -> None:
            nonlocal count
            for _ in range(n):
                session.connection._send_element(stanza)
            session._protocol.flush()
            count += n

        # Send until bob stops reading (the kernel's socket buffers fill first: a few MB on
        # loopback), at most 64 MB; then 8 MB more, which must change nothing on bob's side.
        while is_reading(tcp) and count < 2_200:
            send(20)
            await sleep(0.01)
        await until(lambda: not is_reading(tcp), 30, "bob stops reading from mallory")
        for _ in range(14):
            send(20)
            await sleep(0.01)
        await sleep(0.5)
        self.assertFalse(is_reading(tcp))
        sent_unread = write_buffered(attacker)  # mallory's own backlog: bob is not reading it
        self.assertGreater(sent_unread, 2_000_000)
        self.assertLess(peak, 1 << 20)
        await self.legit()
        self.assertLess(peak, 1 << 20)
        sampler.stop()
        attacker.resumeProducing()  # type: ignore[union-attr]

        def answered() -> int:
            return sum(isinstance(s, ErrorStanza) for s in observer.stanzas)

        await until(lambda: answered() == count, 60, "every answer delivered")
        self.assertEqual({s.reason for s in observer.stanzas}, {"unsupported"})
        figure("never-reads", sent_bytes=count * 30_000, peak_buffer=peak,
               attacker_backlog=sent_unread)  # fmt: skip

    async def test_storage_backlog_is_bounded(self) -> None:
        """
        §9.2's 256 KiB of unprocessed input: mallory floods 4 MB of messages while bob's store
        is slow (nothing stored until released). Bob stops reading once 256 KiB of messages
        await storage; once storage catches up every message is stored and receipted once.
        """
        self.factory.observer = self.observer = HoldFrom(MALLORY)
        session, server, _ = await self.mallory()
        count = 128
        body = "m" * 32_000
        receipts = [session.sendMessage(body) for _ in range(count)]
        await until(lambda: server.unstored > MAX_UNPROCESSED, 20, "storage backlog")
        await until(lambda: not is_reading(server.transport), 20, "bob stops reading")
        await sleep(0.5)
        bound = MAX_UNPROCESSED + 2 * 65_556 + 40_000
        self.assertLessEqual(server.unstored, bound)
        self.assertLess(len(self.observer.held), count)
        await self.legit()
        deadline = time.monotonic() + 60
        peak_unstored = server.unstored
        while not all(d.called for d in receipts):
            self.assertLess(time.monotonic(), deadline, "receipts not all back")
            self.assertLessEqual(server.unstored, bound)
            peak_unstored = max(peak_unstored, server.unstored)
            held, self.observer.held = self.observer.held, []
            for d in held:
                d.callback(None)
            await sleep(0.02)
        await defer.gatherResults(receipts)
        figure("storage-backlog", sent_bytes=count * len(body), peak_unstored=peak_unstored)
        mine = [m for m in self.observer.messages if m.body == body]
        self.assertEqual(len(mine), count)
        self.assertEqual(len({m.id for m in mine}), count)
        await session.close()


# ---------------------------------------------------------------------------------------------
# A man in the middle: replay, reordering, cross-session records, reflection, downgrade


class RelayConnection(protocol.Protocol):
    """The client side of the relay; opens its own connection to the real responder."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.upstream: protocol.Protocol | None = None
        self.pending: list[bytes] = []
        self.buffers = {"c2s": b"", "s2c": b""}
        self.counts = {"c2s": 0, "s2c": 0}

    def connectionMade(self) -> None:
        relay = self

        class Upstream(protocol.Protocol):
            def connectionMade(self) -> None:
                relay.upstream = self
                for data in relay.pending:
                    self.transport.write(data)  # type: ignore[union-attr]
                relay.pending = []

            def dataReceived(self, data: bytes) -> None:
                relay.received("s2c", data)

            def connectionLost(self, reason: Any = None) -> None:
                if relay.transport is not None:
                    relay.transport.loseConnection()

        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, LEGIT, self.relay.target, bindAddress=(RELAY_SOURCE, 0)
        )
        endpoints.connectProtocol(endpoint, Upstream())

    def dataReceived(self, data: bytes) -> None:
        self.received("c2s", data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()

    def received(self, direction: str, data: bytes) -> None:
        buffer = self.buffers[direction] + data
        while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[1:4], "big"):
            end = 4 + int.from_bytes(buffer[1:4], "big")
            record, buffer = buffer[:end], buffer[end:]
            self.counts[direction] += 1
            self.relay.captured.setdefault((self.relay.sessions, direction), []).append(record)
            self.relay.hook(self, direction, self.counts[direction], record)
        self.buffers[direction] = buffer

    def to_server(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        elif self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def to_client(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def forward(self, direction: str, record: bytes) -> None:
        (self.to_server if direction == "c2s" else self.to_client)(record)


class Relay(protocol.Factory):
    """Listens on 127.0.0.1; relays record by record to C{target}, through C{hook}."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sessions = 0
        self.captured: dict[tuple[int, str], list[bytes]] = {}
        self.hook: Callable[[RelayConnection, str, int, bytes], None] = (
            lambda conn, direction, n, record: conn.forward(direction, record)
        )

    def buildProtocol(self, addr: Any) -> RelayConnection:
        self.sessions += 1
        return RelayConnection(self)


def edit_m1(record: bytes, edit: Callable[[Element], None]) -> bytes:
    element = parse(record[4:])
    edit(element)
    return plain_record(serialize(element))


class ManInTheMiddleTests(AttackCase):
    async def relay(self) -> Relay:
        relay = Relay(self.bob_port)
        port = reactor.listenTCP(0, relay, interface=LEGIT)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.relay_port = port.getHost().port
        return relay

    async def alice_via_relay(self) -> Session:
        return await connectPeer(
            reactor, self.endpoint(LEGIT, self.relay_port), None, to=BOB, config=self.alice
        )

    def bob_failures(self) -> list[str]:
        return self.factory.failures_from(RELAY_SOURCE)

    async def test_replayed_record(self) -> None:
        """A record delivered twice: bob's sequence number has moved on, bad_record_mac."""
        relay = await self.relay()

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            conn.forward(direction, record)
            if direction == "c2s" and n == 5:  # alice's first application record
                conn.forward(direction, record)

        relay.hook = hook
        session = await self.alice_via_relay()
        session.sendMessage("once").addErrback(lambda f: None)
        await session.whenEnded()
        await until(self.bob_failures, 5, "bob's alert")
        self.assertEqual(self.bob_failures(), ["bad_record_mac"])
        self.assertEqual([m.body for m in self.observer.messages], ["once"])
        await self.legit()

    async def test_reordered_records(self) -> None:
        """Two records swapped: the first to arrive does not open, nothing is delivered."""
        relay = await self.relay()
        held: list[bytes] = []

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            if direction == "c2s" and n == 5:
                held.append(record)
                return
            conn.forward(direction, record)
            if direction == "c2s" and n == 6:
                conn.forward(direction, held[0])

        relay.hook = hook
        session = await self.alice_via_relay()
        for text in ("first", "second"):
            session.sendMessage(text).addErrback(lambda f: f.trap(SessionLost))
        await session.whenEnded()
        await until(self.bob_failures, 5, "bob's alert")
        self.assertEqual(self.bob_failures(), ["bad_record_mac"])
        self.assertEqual(self.observer.messages, [])
        await self.legit()

    async def test_record_from_another_session(self) -> None:
        """A record captured in one session and injected into the next: bad_record_mac."""
        relay = await self.relay()
        first = await self.alice_via_relay()
        await first.sendMessage("session one")
        await first.close()
        old = relay.captured[(1, "c2s")][4]

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            conn.forward(direction, old if (direction, n) == ("c2s", 5) else record)

        relay.hook = hook
        second = await self.alice_via_relay()
        second.sendMessage("session two").addErrback(lambda f: f.trap(SessionLost))
        await second.whenEnded()
        await until(lambda: len(self.bob_failures()) == 1, 5, "bob's alert")
        self.assertEqual(self.bob_failures(), ["bad_record_mac"])
        self.assertEqual([m.body for m in self.observer.messages], ["session one"])
        await self.legit()

    async def test_reflected_application_record(self) -> None:
        """Alice's own record sent back to her: her read key is not her write key."""
        relay = await self.relay()

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            if (direction, n) == ("c2s", 5):
                conn.to_client(record)
            else:
                conn.forward(direction, record)

        relay.hook = hook
        session = await self.alice_via_relay()
        d = session.sendMessage("to myself?")
        await session.whenEnded()
        self.failureResultOf(d)
        assert isinstance(session.end_reason, HandshakeFailed)
        self.assertEqual(
            (session.end_reason.reason, session.end_reason.sent_by_peer), ("bad_record_mac", False)
        )
        self.assertEqual(self.observer.messages, [])
        await self.legit()

    async def test_reflected_handshake(self) -> None:
        """Alice's M1 reflected to her (protocol_error), bob's M2-M5 to him (protocol_error)."""
        relay = await self.relay()

        def to_alice(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            conn.to_client(record) if direction == "c2s" else None

        relay.hook = to_alice
        with self.assertRaises(HandshakeFailed) as caught:
            await self.alice_via_relay()
        self.assertEqual((caught.exception.reason, caught.exception.sent_by_peer),
                         ("protocol_error", False))  # fmt: skip

        def to_bob(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            conn.to_server(record)

        relay.hook = to_bob
        with self.assertRaises((defer.TimeoutError, SessionLost)):
            await defer.ensureDeferred(self.alice_via_relay()).addTimeout(3, reactor)
        await until(self.bob_failures, 5, "bob's alert")
        self.assertEqual(self.bob_failures(), ["protocol_error"])
        await self.legit()

    async def downgrade(self, edit: Callable[[Element], None]) -> None:
        relay = await self.relay()

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            if (direction, n) == ("c2s", 1):
                record = edit_m1(record, edit)
            conn.forward(direction, record)

        relay.hook = hook
        with self.assertRaises(HandshakeFailed) as caught:
            await self.alice_via_relay()
        self.assertEqual((caught.exception.reason, caught.exception.sent_by_peer),
                         ("bad_record_mac", False))  # fmt: skip
        await until(self.bob_failures, 5, "bob's alert")
        self.assertEqual(self.bob_failures(), ["bad_record_mac"])
        self.assertEqual(self.observer.started, [])
        await self.legit()

    async def test_downgrade_dropping_the_hybrid_share(self) -> None:
        """M1 without its x25519-mlkem768 share: bob picks x25519, alice cannot open M3."""

        def drop(m1: Element) -> None:
            m1.children = [
                c for c in m1.children if not (c.tag == "share" and c.get("group") != "x25519")
            ]

        await self.downgrade(drop)

    async def test_downgrade_editing_the_suites(self) -> None:
        """M1 offering only aes-128-gcm: bob picks it, alice cannot open M3."""

        def weaken(m1: Element) -> None:
            m1.children = [c for c in m1.children if c.tag != "suite"] + [
                Element("suite", text="aes-128-gcm")
            ]

        await self.downgrade(weaken)

    async def test_downgrade_editing_m2(self) -> None:
        """M2's suite rewritten on the way to alice: alice cannot open M3."""
        relay = await self.relay()

        def hook(conn: RelayConnection, direction: str, n: int, record: bytes) -> None:
            if (direction, n) == ("s2c", 1):
                element = parse(record[4:])
                element.attrs["suite"] = "aes-128-gcm"
                record = plain_record(serialize(element))
            conn.forward(direction, record)

        relay.hook = hook
        with self.assertRaises(HandshakeFailed) as caught:
            await self.alice_via_relay()
        self.assertEqual(caught.exception.reason, "bad_record_mac")
        await self.legit()


# ---------------------------------------------------------------------------------------------
# Certificates (§4, §7.4)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateAttackTests(AttackCase):
    async def presenting(self, identity: Identity, expected: str) -> None:
        """Mallory initiates with C{identity}: bob refuses it with C{expected}; alice gets in."""
        config = PeerConfig([identity], TRUST)

        async def attack() -> None:
            session = await self.attacker_session(config)
            await session.whenEnded()
            assert isinstance(session.end_reason, HandshakeFailed)
            self.assertEqual(
                (session.end_reason.reason, session.end_reason.sent_by_peer), (expected, True)
            )

        await defer.gatherResults(
            [defer.ensureDeferred(attack()), defer.ensureDeferred(self.legit())]
        )
        self.assertEqual(self.factory.failures_from(ATTACKER), [expected])
        self.assertEqual([s.peer for s in self.observer.started], [ALICE])

    def mallory(self, **issue: Any) -> Identity:
        return certs.make_identity(MALLORY, CA, check=False, **issue)

    async def test_expired(self) -> None:
        now = _now()
        identity = self.mallory(
            not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
        )
        await self.presenting(identity, "certificate_expired")

    async def test_not_yet_valid(self) -> None:
        now = _now()
        identity = self.mallory(
            not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30)
        )
        await self.presenting(identity, "certificate_expired")

    async def test_wrong_eku(self) -> None:
        await self.presenting(self.mallory(eku=("serverAuth",)), "bad_certificate")

    async def test_no_rfc822_name(self) -> None:
        key = certs.key_for("ed25519", "leaf:" + MALLORY)
        leaf = pki.issue_leaf(CA.key, CA.cert, [], key.public_key(), no_san=True)
        await self.presenting(identity_with_leaf(MALLORY, leaf, key), "bad_certificate")

    async def test_rsa_1024(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        key = certs.key_for("rsa1024")
        identity = self.mallory(key=key)
        # Our own signer refuses a 1024-bit key; an attacker's would not.
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
        identity.alg = "rsa-pss-sha256"
        identity.sign = lambda data: key.sign(data, pss, hashes.SHA256())  # type: ignore[method-assign,union-attr,call-arg]
        await self.presenting(identity, "bad_certificate")

    async def test_chain_deeper_than_eight(self) -> None:
        ca = CA
        for i in range(8):
            ca = certs.make_intermediate(ca, f"adversarial level {i}", path_length=None)
        identity = certs.make_identity(MALLORY, ca, check=False)
        self.assertEqual(len(identity.chain_der), 9)
        await self.presenting(identity, "bad_certificate")

    async def test_self_signed_leaf(self) -> None:
        key = certs.key_for("ed25519", "self:" + MALLORY)
        _, issuer = pki.create_ca(MALLORY, key=key)
        leaf = pki.issue_leaf(key, issuer, [MALLORY], key.public_key())
        await self.presenting(identity_with_leaf(MALLORY, leaf, key), "unknown_ca")

    async def test_revoked_by_crl(self) -> None:
        await self.presenting(REVOKED, "certificate_revoked")

    async def test_unknown_ca(self) -> None:
        stranger = certs.make_identity(MALLORY, certs.make_ca(name="adversarial stranger CA"))
        await self.presenting(stranger, "unknown_ca")

    async def test_claiming_a_name_not_in_the_certificate(self) -> None:
        """Mallory's certificate, but M6 says alice@example.com: identity_mismatch."""
        identity = certs.make_identity(MALLORY, CA)
        identity.names = (ALICE,)
        await self.presenting(identity, "identity_mismatch")

    async def test_responder_naming_another_identity_than_to(self) -> None:
        """
        A responder dialled as bob@example.com that presents carol's valid certificate (as
        a compromised contact or a hijacked address would): alice refuses with
        identity_mismatch, sealed, and never starts a session.
        """
        carol = certs.make_identity("carol@example.com", CA)

        class Impostor(PeerConfig):
            def identity_for(self, name: str | None) -> Any:
                return carol, "carol@example.com"

        impostor = RecordingFactory(Impostor([carol], TRUST), reactor, Recorder())
        port = reactor.listenTCP(0, impostor, interface=ATTACKER)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, ATTACKER, port.getHost().port)
        legit = defer.ensureDeferred(self.legit())
        with self.assertRaises(HandshakeFailed) as caught:
            await connectPeer(reactor, endpoint, None, to=BOB, config=self.alice)
        self.assertEqual((caught.exception.reason, caught.exception.sent_by_peer),
                         ("identity_mismatch", False))  # fmt: skip
        await until(lambda: impostor.failures_from(LEGIT, True), 5, "impostor got the alert")
        self.assertEqual(impostor.failures_from(LEGIT, by_peer=True), ["identity_mismatch"])
        await legit


class SanityTests(unittest.SynchronousTestCase):
    """The helpers see what they claim to."""

    def test_plain_alerts(self) -> None:
        data = plain_record(b'<alert reason="protocol_error"/>') + header(SEALED, 16) + bytes(16)
        self.assertEqual(plain_alerts(data), ["protocol_error"])

    def test_source_addresses_are_distinct_sources(self) -> None:
        from sixchat.protocol import source_key

        keys = {source_key(IPv4Address("TCP", h, 1)) for h in (LEGIT, ATTACKER, RELAY_SOURCE)}
        self.assertEqual(len(keys), 3)

    def test_loopback_aliases_bind(self) -> None:
        with socket.socket() as s:
            s.bind((ATTACKER, 0))
