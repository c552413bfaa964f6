"""
The fuzz target behind C{fuzz/atheris_harness.py} and the corpus replay
(C{test_fuzz_corpus}): one input drives the record layer, the XML codec and the handshake of
either role (or, past the handshake, the application stanzas; or the registry's framing) and
checks what every hostile input must leave true. A violated invariant raises
L{InvariantBroken}; anything else escaping is a bug as well.

Input: byte 0 picks the target (modulo the number of targets), byte 1 how raw payloads are
cut into reads (0: one read; n: reads of n bytes); the rest is the payload. For the
C{*-sealed} and C{open-*} targets the payload is split at C{00 00} into plaintexts, each sealed
with exactly the key and sequence number the victim expects next, so the fuzzer reaches the
XML, identity, certificate and stanza code behind a valid MAC.

  0 responder-m1       a fresh responder; the payload is what arrives as M1 and after
  1 initiator-m2       an initiator that sent M1; the payload arrives as M2 and after
  2 initiator-sealed   an initiator that accepted a real M2: plaintexts sealed as M3, M4, …
  3 responder-sealed   a responder that sent M2–M5: plaintexts sealed as M6, M7, …
  4 open-responder     an established responder: plaintexts sealed as application stanzas
  5 open-initiator     an established initiator: the same
  6 registry           an authenticated registry connection; the payload is raw bytes
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionFailed,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import AlertError
from sixchat.handshake import PeerConfig
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.record import MAX_PLAINTEXT, CipherState, RecordReader
from sixchat.test import certs
from sixchat.xmlcodec import parse

TARGETS = (
    "responder-m1",
    "initiator-m2",
    "initiator-sealed",
    "responder-sealed",
    "open-responder",
    "open-initiator",
    "registry",
)
ALICE = "alice@example.com"
BOB = "bob@example.com"
MAX_BUFFERED = 4 + MAX_PLAINTEXT + 16

_configs: dict[str, PeerConfig] = {}


class InvariantBroken(AssertionError):
    """A hostile input broke something the implementation promises."""


def _check(condition: object, what: str) -> None:
    if not condition:
        raise InvariantBroken(what)


def _config(name: str) -> PeerConfig:
    if name not in _configs:
        ca = certs.make_ca()
        _configs[name] = PeerConfig(
            [certs.make_identity(name, ca)], certs.trust_for(ca), groups=("x25519",)
        )
    return _configs[name]


def _pair() -> tuple[Connection, Connection]:
    initiator = Connection(_config(ALICE), INITIATOR, to=BOB)
    responder = Connection(_config(BOB), RESPONDER)
    initiator.start()
    return initiator, responder


def _records(data: bytes) -> list[bytes]:
    out = []
    while len(data) >= 4:
        end = 4 + int.from_bytes(data[1:4], "big")
        out.append(data[:end])
        data = data[end:]
    return out


def _victim(target: str) -> Connection:
    """The connection under test, brought to the state C{target} names."""
    initiator, responder = _pair()
    m1 = initiator.data_to_send()
    if target == "responder-m1":
        return responder
    if target == "initiator-m2":
        return initiator
    responder.receive_data(m1)
    m2_m5 = responder.data_to_send()
    if target == "initiator-sealed":
        initiator.receive_data(_records(m2_m5)[0])
        return initiator
    if target == "responder-sealed":
        return responder
    initiator.receive_data(m2_m5)
    responder.receive_data(initiator.data_to_send())
    _check(initiator.state == responder.state == "open", "set-up handshake failed")
    return responder if target == "open-responder" else initiator


def _feed(victim: Connection, chunks: list[bytes]) -> None:
    for chunk in chunks:
        was_closed = victim.state == "closed"
        events = victim.receive_data(chunk)
        _check(isinstance(events, list), "receive_data returned no list")
        if was_closed:
            _check(events == [], "events after the connection closed")
        terminal = [e for e in events if isinstance(e, ConnectionFailed | AlertReceived)]
        _check(len(terminal) <= 1, "two terminal events")
        if terminal:
            _check(events[-1] is terminal[0], "events after a terminal event")
            _check(victim.state == "closed", "not closed after a terminal event")
        for event in events:
            _check(
                isinstance(
                    event,
                    HandshakeComplete
                    | StanzaReceived
                    | CloseReceived
                    | AlertReceived
                    | ConnectionFailed,
                ),
                f"unknown event {event!r}",
            )
            if isinstance(event, ConnectionFailed):
                _check(isinstance(event.error, AlertError), "failure without an alert")
                _check(victim.data_to_send(), "a failure queued no alert")
            if isinstance(event, StanzaReceived):
                _check(victim.result is not None, "a stanza before the handshake")
        if victim.state == "closed":
            _check(victim.buffered == 0, "input kept after closing")
        else:
            _check(victim.buffered < MAX_BUFFERED, "more than one partial record buffered")
        victim.data_to_send()


def _cuts(payload: bytes, size: int) -> list[bytes]:
    if size == 0 or not payload:
        return [payload]
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def _sealed(victim: Connection, payload: bytes) -> list[bytes]:
    """Each plaintext sealed as the victim's next record (a copy of its read state)."""
    read = victim._read
    _check(read is not None, "victim has no read key")
    assert read is not None
    state = CipherState(read.suite, read.secret)
    state.seq = read.seq
    return [state.seal(p) for p in payload.split(b"\x00\x00") if 0 < len(p) <= MAX_PLAINTEXT]


def run(data: bytes) -> None:
    """One fuzz input (see the module docstring)."""
    if len(data) < 2:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    size, payload = data[1], data[2:]
    if target == "registry":
        _registry(payload, size)
        return
    victim = _victim(target)
    victim.data_to_send()
    if target.endswith("-sealed") or target.startswith("open-"):
        chunks = _sealed(victim, payload)
    else:
        chunks = _cuts(payload, size)
    _feed(victim, chunks)


# ---------------------------------------------------------------------------------------------
# The registry


class SyncSQLiteStore(SQLiteStore):
    """The real SQLite store (in memory), its work run synchronously: no thread, no reactor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes.start_polling = lambda: None  # type: ignore[method-assign]

    def _run(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(fn, *args)

    def open(self) -> defer.Deferred[None]:
        self._changes.last_change = self._open_db()
        self._pool = object()  # type: ignore[assignment]
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return defer.succeed(None)


def _registry(payload: bytes, size: int) -> None:
    from datetime import UTC, datetime

    from sixchat.irp.server import IRPServerFactory, RegistryConfig
    from sixchat.irp.server.authority import Authority

    ca = certs.make_ca()
    clock = task.Clock()
    clock.advance(time.time())
    store = SyncSQLiteStore(":memory:", clock)
    authority = Authority(
        ca.key, ca.cert, store, now=lambda: datetime.fromtimestamp(clock.seconds(), UTC)
    )
    alice = certs.make_identity(ALICE, ca)
    peer = certs.trust_for(ca).validate(alice.chain_der, authority.now())  # type: ignore[attr-defined]
    factory = IRPServerFactory(
        store,
        authority,
        clock,
        RegistryConfig(allow_private_addresses=True),
        peer_for=lambda _transport: peer,
    )
    store.open()
    factory.start()
    try:
        transport = StringTransport()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        reader = RecordReader()
        for chunk in _cuts(payload, size):
            protocol.dataReceived(chunk)
            clock.advance(0.01)
        reader.feed(transport.value())
        answered: set[str] = set()
        fatal = 0
        while (record := reader.next_record(False)) is not None:
            element = parse(record[2])
            _check(element.get("reason") != "internal", "the registry answered internal")
            rid = element.get("id")
            if rid is None and element.tag == "error":
                fatal += 1
                _check(
                    element.get("reason") == "bad_request", "a fatal error other than bad_request"
                )
            elif rid is not None and element.tag != "presence":
                answered.add(rid)
        _check(fatal <= 1, "more than one fatal error")
        if fatal:
            _check(transport.disconnecting, "not closed after a fatal error")
    finally:
        factory.stop()
        store.close()
