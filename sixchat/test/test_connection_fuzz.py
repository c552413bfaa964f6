"""
Property tests of L{sixchat.connection.Connection}: whatever arrives, C{receive_data} never
raises, every failure is a L{ConnectionFailed} carrying an L{AlertError}, and the input buffer
stays bounded; and a stateful test driving a pair of connections through a session.

Identities and the trust store are minimal fakes built from the handshake vector, so this
module does not depend on the certificate machinery.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from sixchat import sigalgs
from sixchat.connection import (
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionFailed,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import AlertError, BadCertificate
from sixchat.groups import FixedEntropy
from sixchat.handshake import PeerConfig
from sixchat.record import MAX_SEALED, SEALED, CipherState, header
from sixchat.stanzas import ErrorStanza, Message, Ping, Pong, Receipt, Typing
from sixchat.test.test_xmlcodec import elements
from sixchat.xmlcodec import Element, b64encode, is_xml_text, parse, serialize

VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "handshake-ed25519-x25519.json").read_text()
)
I2R = bytes.fromhex(VECTOR["initiator_to_responder"])
R2I = bytes.fromhex(VECTOR["responder_to_initiator"])
MESSAGE_ID = "01JD3Q2V9XJ2H6Z7T8K4M5N6P7"
VECTOR_MESSAGE = Message(MESSAGE_ID, "2026-11-26T00:25:21.123Z", "Hello, Bob")

#: At most one partial record: a header and a SEALED payload one byte short (or a whole one).
MAX_BUFFERED = 4 + MAX_SEALED

FUZZ = settings(max_examples=75, deadline=None)


# ---------------------------------------------------------------------------------------------
# Fakes


class FakeIdentity:
    def __init__(self, name: str, cert_pem: str, key_pem: str) -> None:
        self.leaf = x509.load_pem_x509_certificate(cert_pem.encode())
        self.leaf_der = self.leaf.public_bytes(serialization.Encoding.DER)
        self.chain_der = [self.leaf_der]
        self.private_key = serialization.load_pem_private_key(key_pem.encode(), None)
        self.names = (name,)
        self.alg = sigalgs.alg_for_private_key(self.private_key)  # type: ignore[arg-type]

    def sign(self, data: bytes) -> bytes:
        return sigalgs.sign(self.private_key, data)  # type: ignore[arg-type]


class FakePeer:
    def __init__(self, der: bytes) -> None:
        self.leaf_der = der
        cert = x509.load_der_x509_certificate(der)
        self.public_key = cert.public_key()
        self.spki_sha256 = hashlib.sha256(
            cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).digest()
        self.names = tuple(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.RFC822Name)
        )


class FakeTrust:
    """Accepts any parsable leaf; an unparsable one is bad_certificate, as a real store says."""

    def validate(self, certs, now, require_key_encipherment=False):  # type: ignore[no-untyped-def]
        try:
            return FakePeer(certs[0])
        except (ValueError, x509.ExtensionNotFound):
            raise BadCertificate("unparsable certificate") from None


IDENTITIES = {
    side: FakeIdentity(VECTOR[side]["identity"], VECTOR[side]["cert_pem"], VECTOR[side]["key_pem"])
    for side in ("initiator", "responder")
}


def make(role: str, vector_entropy: bool = True, **config: object) -> Connection:
    """A connection as in the vector: alice initiates to bob, x25519, chacha20 or aes-256."""
    side = "initiator" if role == "initiator" else "responder"
    if vector_entropy:
        entropy = FixedEntropy(
            [bytes.fromhex(VECTOR[side]["random"])],
            [bytes.fromhex(VECTOR[side]["x25519_private"])],
        )
    else:
        entropy = FixedEntropy()
    options: dict[str, object] = {
        "suites": ("chacha20-poly1305", "aes-256-gcm"),
        "groups": ("x25519",),
        "entropy": entropy,
    }
    options.update(config)
    peer_config = PeerConfig([IDENTITIES[side]], FakeTrust(), **options)  # type: ignore[arg-type]
    connection = Connection(
        peer_config, role, to="bob@example.com" if role == "initiator" else None
    )
    connection.start()
    return connection


def handshake(**config: object) -> tuple[Connection, Connection]:
    """A completed initiator/responder pair with nothing in flight."""
    initiator = make("initiator", **config)
    responder = make("responder", **config)
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    responder.receive_data(initiator.data_to_send())
    assert initiator.state == responder.state == "open"
    return initiator, responder


def records(stream: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(stream) >= 4:
        length = int.from_bytes(stream[1:4], "big")
        out.append((stream[0], stream[4 : 4 + length]))
        stream = stream[4 + length :]
    return out


# ---------------------------------------------------------------------------------------------
# Strategies

_XML_CHAR = st.characters().filter(is_xml_text)
_TAGS = st.sampled_from(
    ["hello", "identity", "verify", "finished", "alert", "message", "receipt", "ping", "pong",
     "typing", "rekey", "close", "error", "cert", "body", "share", "suite", "file", "x"]
)
_ATTR_NAMES = st.sampled_from(
    ["id", "ts", "reason", "ref", "state", "name", "alg", "version", "versions", "random",
     "suite", "group", "to", "key", "z"]
)
_VALUES = st.one_of(
    st.sampled_from(
        ["1", "m1", MESSAGE_ID, "2026-11-26T00:25:21.123Z", "2026-02-30T00:00:00Z", "composing",
         "paused", "too_large", "bad_request", "unsupported", "protocol_error", "ed25519",
         "alice@example.com", "bob@example.com", "x25519", "chacha20-poly1305", "", "a b",
         b64encode(bytes(32)), b64encode(IDENTITIES["initiator"].leaf_der),
         b64encode(IDENTITIES["responder"].leaf_der)]
    ),
    st.text(_XML_CHAR, max_size=12),
)


def _elements() -> st.SearchStrategy[Element]:
    return elements(_TAGS, _VALUES, _ATTR_NAMES, width=3, max_leaves=6)


#: Plaintexts for sealed records: XML-ish elements with optional padding, or raw bytes.
_PLAINTEXTS = st.one_of(
    st.tuples(_elements(), st.integers(0, 40)).map(lambda t: serialize(t[0]) + b" " * t[1]),
    st.binary(min_size=1, max_size=100),
    st.sampled_from([b" ", b"   ", b"<ping id='p1'/>", b"<rekey/>", b"<close/>", b"<hello/>",
                     b"<alert/>", b'<alert reason="nope">x</alert>', b"\x00", b"<a>"]),
)

#: PLAIN records carrying hello-like payloads, to get past the header checks.
_PLAIN_RECORDS = st.one_of(
    _elements().map(serialize),
    st.builds(
        lambda versions, random, suites, shares, to: serialize(
            Element(
                "hello",
                {"versions": versions, "random": random, **({"to": to} if to else {})},
                [Element("suite", text=s) for s in suites]
                + [Element("share", {"group": g}, text=v) for g, v in shares],
            )
        ),
        st.sampled_from(["1", "2", "1 2", ""]),
        st.sampled_from([b64encode(bytes(32)), b64encode(bytes(31)), "AA", ""]),
        st.lists(st.sampled_from(["aes-256-gcm", "chacha20-poly1305", "x"]), max_size=3),
        st.lists(
            st.tuples(
                st.sampled_from(["x25519", "secp256r1", "x25519-mlkem768", "rsa-oaep", "y"]),
                st.one_of(st.binary(min_size=32, max_size=32).map(b64encode),
                          st.sampled_from([b64encode(bytes(32)), "", "AA", "!"])),
            ),
            max_size=3,
        ),
        st.sampled_from([None, "bob@example.com", "BOB@example.com", "bob@EXAMPLE.com",
                         "eve@example.com"]),
    ),
).filter(lambda payload: 0 < len(payload) <= 65_536).map(
    lambda payload: header(1, len(payload)) + payload
)

_GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_PLAIN_RECORDS, st.binary(max_size=20)), max_size=4).map(b"".join),
)


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


# ---------------------------------------------------------------------------------------------


class FuzzMixin(SynchronousTestCase):
    def feed(self, connection: Connection, chunks: list[bytes]) -> list[object]:
        """Feed chunks one by one, checking the invariants after each; return all events."""
        events: list[object] = []
        for chunk in chunks:
            was_closed = connection.state == "closed"
            new = connection.receive_data(chunk)
            self.assertIsInstance(new, list)
            if was_closed:
                self.assertEqual(new, [])
            events += new
            if connection.state != "closed":
                self.assertLess(connection.buffered, MAX_BUFFERED)
            self.assertLessEqual(connection.buffered, max(MAX_BUFFERED, len(chunk) + 4))
        self.checkEvents(connection, events)
        return events

    def checkEvents(self, connection: Connection, events: list[object]) -> None:
        terminal = [e for e in events if isinstance(e, ConnectionFailed | AlertReceived)]
        for event in events:
            self.assertIsInstance(
                event,
                HandshakeComplete | StanzaReceived | CloseReceived | AlertReceived
                | ConnectionFailed,
            )
            if isinstance(event, ConnectionFailed):
                self.assertIsInstance(event.error, AlertError)
                self.assertIn(event.error.reason, _REASONS)
        # At most one terminal event, and nothing after it; then the connection is closed.
        self.assertLessEqual(len(terminal), 1, events)
        if terminal:
            self.assertIs(events[-1], terminal[0])
            self.assertEqual(connection.state, "closed")
        self.assertLessEqual(sum(isinstance(e, HandshakeComplete) for e in events), 1)

    def checkAlertQueued(self, connection: Connection, failure: ConnectionFailed) -> None:
        """A failure queues exactly one alert record at the end of the output (§9.1)."""
        out = records(connection.data_to_send())
        self.assertTrue(out, "no alert queued")
        record_type, payload = out[-1]
        if record_type == 1:
            alert = parse(payload)
            self.assertEqual(alert.tag, "alert")
            self.assertEqual(alert.get("reason"), failure.error.reason)
        else:
            self.assertEqual(record_type, SEALED)


_REASONS = {
    "protocol_error", "record_overflow", "bad_record_mac", "unsupported_version",
    "no_common_suite", "no_common_group", "illegal_parameter", "bad_certificate", "unknown_ca",
    "certificate_expired", "certificate_revoked", "identity_mismatch", "access_denied",
    "decrypt_error", "handshake_timeout", "internal_error",
}


class VectorSanityTests(FuzzMixin):
    """The fakes and streams the fuzzers start from really complete the vector session."""

    def test_responder_accepts_vector_stream(self) -> None:
        responder = make("responder")
        events = self.feed(responder, [I2R])
        self.assertEqual(len(events), 2)
        self.assertIsInstance(events[0], HandshakeComplete)
        self.assertEqual(events[1], StanzaReceived(VECTOR_MESSAGE))

    def test_responder_output_is_vector(self) -> None:
        responder = make("responder")
        m1_length = 4 + int.from_bytes(I2R[1:4], "big")
        self.assertEqual(responder.receive_data(I2R[:m1_length]), [])
        self.assertTrue(R2I.startswith(responder.data_to_send()))

    def test_initiator_accepts_vector_stream(self) -> None:
        initiator = make("initiator")
        self.assertTrue(I2R.startswith(initiator.data_to_send()))
        events = self.feed(initiator, [R2I])
        self.assertIsInstance(events[0], HandshakeComplete)
        self.assertEqual(events[1:], [StanzaReceived(Receipt(MESSAGE_ID))])


class ArbitraryBytesTests(FuzzMixin):
    @FUZZ
    @given(st.sampled_from(["initiator", "responder"]), _GARBAGE, st.lists(st.integers(0, 400)))
    def test_fresh_connection(self, role: str, data: bytes, cuts: list[int]) -> None:
        connection = make(role, vector_entropy=False)
        connection.data_to_send()
        events = self.feed(connection, _splits(data, cuts))
        for event in events:
            self.assertNotIsInstance(event, HandshakeComplete | StanzaReceived)
            if isinstance(event, ConnectionFailed):
                self.assertFalse(event.truncated)
                self.checkAlertQueued(connection, event)

    @FUZZ
    @given(st.sampled_from(["initiator", "responder"]), _GARBAGE, st.lists(st.integers(0, 400)))
    def test_open_connection(self, role: str, data: bytes, cuts: list[int]) -> None:
        initiator, responder = handshake(vector_entropy=False)
        connection = initiator if role == "initiator" else responder
        events = self.feed(connection, _splits(data, cuts))
        for event in events:
            self.assertNotIsInstance(event, HandshakeComplete | StanzaReceived)
            if isinstance(event, ConnectionFailed):
                # Unauthenticated garbage after the handshake: treat as truncation (§11.4).
                self.assertTrue(event.truncated)
                self.checkAlertQueued(connection, event)
        if data and connection.state == "closed":
            self.assertEqual(len(events), 1)


class FlippedStreamTests(FuzzMixin):
    """Valid vector streams, split anywhere, with zero or more bytes flipped."""

    @FUZZ
    @given(
        st.sampled_from(["initiator", "responder"]),
        st.lists(st.integers(0, len(I2R) + len(R2I))),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
    )
    def test_flipped(self, role: str, cuts: list[int], flips: list[tuple[int, int]]) -> None:
        connection = make(role)
        connection.data_to_send()
        original = R2I if role == "initiator" else I2R
        stream = bytearray(original)
        for position, mask in flips:
            stream[position % len(stream)] ^= mask
        events = self.feed(connection, _splits(bytes(stream), cuts))
        expected = (
            StanzaReceived(Receipt(MESSAGE_ID))
            if role == "initiator"
            else StanzaReceived(VECTOR_MESSAGE)
        )
        if stream == original:  # no flips, or flips that cancel out
            self.assertEqual(len(events), 2)
            self.assertIsInstance(events[0], HandshakeComplete)
            self.assertEqual(events[1], expected)
        else:
            # Every byte is authenticated (transcript, AAD or tag): no flipped stream delivers.
            self.assertNotIn(expected, events)
            for event in events:
                if isinstance(event, ConnectionFailed):
                    self.checkAlertQueued(connection, event)
        # Whatever happened, nothing more is accepted after a failure.
        if connection.state == "closed":
            self.assertEqual(connection.receive_data(I2R + R2I), [])

    @FUZZ
    @given(st.sampled_from(["initiator", "responder"]), st.integers(0, 10**6),
           st.binary(min_size=1, max_size=40))
    def test_truncated_and_extended(self, role: str, cut: int, extra: bytes) -> None:
        """A valid stream cut short and followed by junk never raises."""
        connection = make(role)
        connection.data_to_send()
        stream = R2I if role == "initiator" else I2R
        self.feed(connection, [stream[: cut % len(stream)], extra])


class SealedFuzzTests(FuzzMixin):
    """Arbitrary plaintexts sealed with the right keys reach the parsers behind the AEAD."""

    @FUZZ
    @given(st.sampled_from(["initiator", "responder"]),
           st.lists(_PLAINTEXTS, min_size=1, max_size=5), st.sampled_from([0, 1, 32]))
    def test_application_stage(self, role: str, plaintexts: list[bytes], padding: int) -> None:
        initiator, responder = handshake(vector_entropy=False, padding=padding)
        target, peer = (initiator, responder) if role == "initiator" else (responder, initiator)
        write = peer._write
        assert write is not None
        stream = b"".join(write.seal(p) for p in plaintexts)
        events = self.feed(target, [stream])
        failed = [e for e in events if isinstance(e, ConnectionFailed)]
        for event in failed:
            self.assertTrue(event.truncated)
        # What the target answered (pongs, errors, an alert) is well-formed for the real peer.
        answer = target.data_to_send()
        peer_events = self.feed(peer, [answer])
        for event in peer_events:
            self.assertNotIsInstance(event, ConnectionFailed)
            if isinstance(event, StanzaReceived):
                self.assertIsInstance(event.stanza, Pong | ErrorStanza)
        if failed:
            self.assertIsInstance(peer_events[-1], AlertReceived)
            self.assertEqual(peer_events[-1].alert.reason, failed[0].error.reason)

    @FUZZ
    @given(st.lists(_PLAINTEXTS, min_size=1, max_size=4))
    def test_initiator_waiting_for_m3(self, plaintexts: list[bytes]) -> None:
        """Sealed with r_hs after a valid M2: identity/verify/finished parsing and checks."""
        responder = make("responder")
        initiator = make("initiator")
        responder.receive_data(initiator.data_to_send())
        m2 = records(responder.data_to_send())[0]
        self.assertEqual(self.feed(initiator, [header(1, len(m2[1])) + m2[1]]), [])
        secrets = responder.handshake.secrets
        assert secrets is not None
        write = CipherState("chacha20-poly1305", secrets.r_hs_traffic)
        events = self.feed(initiator, [b"".join(write.seal(p) for p in plaintexts)])
        self.assertNotIn("open", [initiator.state])
        for event in events:
            self.assertNotIsInstance(event, HandshakeComplete | StanzaReceived)
            if isinstance(event, ConnectionFailed):
                self.checkAlertQueued(initiator, event)

    @FUZZ
    @given(st.lists(_PLAINTEXTS, min_size=1, max_size=4))
    def test_responder_waiting_for_m6(self, plaintexts: list[bytes]) -> None:
        """Sealed with i_hs after M1: the responder's M6-M8 parsing and checks."""
        responder = make("responder")
        initiator = make("initiator")
        responder.receive_data(initiator.data_to_send())
        initiator.receive_data(responder.data_to_send())
        initiator.data_to_send()  # the real M6-M8 are dropped
        secrets = initiator.handshake.secrets
        assert secrets is not None
        write = CipherState("chacha20-poly1305", secrets.i_hs_traffic)
        events = self.feed(responder, [b"".join(write.seal(p) for p in plaintexts)])
        for event in events:
            self.assertNotIsInstance(event, HandshakeComplete | StanzaReceived)
            if isinstance(event, ConnectionFailed):
                # The responder has written M5 already: its alert is sealed (r_ap).
                self.assertEqual(records(responder.data_to_send())[-1][0], SEALED)


class BufferTests(FuzzMixin):
    def test_partial_max_record_buffered(self) -> None:
        """A live connection holds one partial record, up to 65,555 bytes, then fails cleanly."""
        initiator, responder = handshake()
        head = header(SEALED, MAX_SEALED)
        self.assertEqual(responder.receive_data(head + bytes(MAX_SEALED - 1)), [])
        self.assertEqual(responder.buffered, MAX_BUFFERED - 1)
        [event] = responder.receive_data(b"\x00")
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.error.reason, "bad_record_mac")

    def test_overflow_header_alone(self) -> None:
        """An oversized header fails as soon as its 4 bytes arrive."""
        for role in ("initiator", "responder"):
            connection = make(role)
            connection.data_to_send()
            self.assertEqual(connection.receive_data(b"\x01\x01\x00"), [])
            [event] = connection.receive_data(b"\x01")
            assert isinstance(event, ConnectionFailed)
            self.assertEqual(event.error.reason, "record_overflow")
            self.assertEqual(connection.receive_data(bytes(100_000)), [])

    def test_many_records_in_one_call(self) -> None:
        """Many complete records in one call are all processed; nothing stays buffered."""
        initiator, responder = handshake()
        for n in range(200):
            initiator.send(Message(f"m{n}", "2026-11-26T00:25:21.123Z", "x" * 500))
        data = initiator.data_to_send()
        self.assertGreater(len(data), MAX_BUFFERED)
        events = responder.receive_data(data)
        self.assertEqual([e.stanza.id for e in events], [f"m{n}" for n in range(200)])  # type: ignore[attr-defined]
        self.assertEqual(responder.buffered, 0)

    def test_buffer_released_after_failure(self) -> None:
        """After a failure the unprocessed rest of the input is not kept (bounded buffer)."""
        connection = make("responder")
        [event] = connection.receive_data(b"\x05" + bytes(100_000))
        self.assertIsInstance(event, ConnectionFailed)
        self.assertEqual(connection.buffered, 0)


# ---------------------------------------------------------------------------------------------
# Stateful: a session between two connections


_BODIES = st.one_of(
    st.text(_XML_CHAR, max_size=40),
    st.sampled_from(["", "\r\n", "]]>", "&<>", " " * 10]),
    st.integers(1000, 6000).map(lambda n: "é" * n),
)
SIDES = ("initiator", "responder")


class SessionMachine(RuleBasedStateMachine):
    """
    Sends messages, pings, typing notifications and rekeys on both sides in any order, and
    delivers queued bytes in arbitrary slices (in order within a direction).
    """

    @initialize(
        padding=st.sampled_from([0, 1, 16, 256]),
        rekey_bytes=st.sampled_from([2**30, 400]),
        suite=st.sampled_from(["chacha20-poly1305", "aes-256-gcm"]),
    )
    def setup(self, padding: int, rekey_bytes: int, suite: str) -> None:
        self.conns = {
            role: make(role, vector_entropy=False, padding=padding, suites=(suite,))
            for role in SIDES
        }
        for conn in self.conns.values():
            conn.rekey_bytes = rekey_bytes
        self.wire = {role: bytearray() for role in SIDES}  # bytes sent by role, in flight
        self.sent: dict[str, list[Message]] = {role: [] for role in SIDES}
        self.received: dict[str, list[Message]] = {role: [] for role in SIDES}
        self.pings: dict[str, set[str]] = {role: set() for role in SIDES}
        self.pongs: dict[str, list[str]] = {role: [] for role in SIDES}
        self.typing: dict[str, list[str]] = {role: [] for role in SIDES}
        self.typing_received: dict[str, list[str]] = {role: [] for role in SIDES}
        self.counter = 0
        self.complete = {role: False for role in SIDES}
        self._collect("initiator")
        # Handshake, delivering everything at once, in whatever order work appears.
        while self.wire["initiator"] or self.wire["responder"]:
            for role in SIDES:
                self._deliver(role, len(self.wire[role]))
        assert self.complete == {"initiator": True, "responder": True}, self.complete

    # helpers -------------------------------------------------------------------------------

    @staticmethod
    def _peer(role: str) -> str:
        return "responder" if role == "initiator" else "initiator"

    def _collect(self, role: str) -> None:
        self.wire[role] += self.conns[role].data_to_send()

    def _deliver(self, sender: str, amount: int) -> None:
        receiver = self._peer(sender)
        chunk = bytes(self.wire[sender][:amount])
        del self.wire[sender][:amount]
        conn = self.conns[receiver]
        for event in conn.receive_data(chunk):
            if isinstance(event, HandshakeComplete):
                self.complete[receiver] = True
            elif isinstance(event, StanzaReceived):
                stanza = event.stanza
                if isinstance(stanza, Message):
                    self.received[sender].append(stanza)
                elif isinstance(stanza, Pong):
                    self.pongs[receiver].append(stanza.id)
                elif isinstance(stanza, Typing):
                    self.typing_received[sender].append(stanza.state)
                else:
                    raise AssertionError(f"unexpected stanza {stanza!r}")
            else:
                raise AssertionError(f"unexpected event {event!r}")
        assert conn.buffered < MAX_BUFFERED
        self._collect(receiver)  # pongs go back

    def _next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # rules ---------------------------------------------------------------------------------

    @rule(role=st.sampled_from(SIDES), body=_BODIES)
    def send_message(self, role: str, body: str) -> None:
        message = Message(self._next_id("m"), "2026-11-26T00:25:21.123Z", body)
        self.conns[role].send(message)
        self.sent[role].append(message)
        self._collect(role)

    @rule(role=st.sampled_from(SIDES))
    def send_ping(self, role: str) -> None:
        ping_id = self._next_id("p")
        self.conns[role].send(Ping(ping_id))
        self.pings[role].add(ping_id)
        self._collect(role)

    @rule(role=st.sampled_from(SIDES), state=st.sampled_from(["composing", "paused"]))
    def send_typing(self, role: str, state: str) -> None:
        self.conns[role].send(Typing(state))
        self.typing[role].append(state)
        self._collect(role)

    @rule(role=st.sampled_from(SIDES))
    def rekey(self, role: str) -> None:
        self.conns[role].rekey()
        self._collect(role)

    @precondition(lambda self: self.wire["initiator"] or self.wire["responder"])
    @rule(role=st.sampled_from(SIDES), fraction=st.floats(0, 1), extra=st.integers(0, 3))
    def deliver(self, role: str, fraction: float, extra: int) -> None:
        self._deliver(role, int(len(self.wire[role]) * fraction) + extra)

    # invariants ----------------------------------------------------------------------------

    @invariant()
    def in_order_prefix(self) -> None:
        for role in SIDES:
            got = self.received[role]
            assert got == self.sent[role][: len(got)], (role, got)
            typing = self.typing_received[role]
            assert typing == self.typing[role][: len(typing)], (role, typing)
            assert set(self.pongs[role]) <= self.pings[role]
            assert len(set(self.pongs[role])) == len(self.pongs[role]), "pong twice"
            assert self.conns[role].state == "open"

    def teardown(self) -> None:
        if not hasattr(self, "conns"):
            return
        while self.wire["initiator"] or self.wire["responder"]:
            for role in SIDES:
                self._deliver(role, len(self.wire[role]))
        for role in SIDES:
            assert self.received[role] == self.sent[role], role
            assert self.typing_received[role] == self.typing[role], role
            assert sorted(self.pongs[role]) == sorted(self.pings[role]), role


class SessionTests(SynchronousTestCase):
    def test_random_sessions(self) -> None:
        run_state_machine_as_test(
            SessionMachine,
            settings=settings(max_examples=50, stateful_step_count=30, deadline=None),
        )


class SessionSanityTests(SynchronousTestCase):
    """The machine's teardown check can fail: a dropped record is noticed."""

    def test_lost_message_detected(self) -> None:
        machine = SessionMachine()
        machine.setup(padding=0, rekey_bytes=2**30, suite="aes-256-gcm")
        machine.send_message("initiator", "hello")
        machine.wire["initiator"].clear()  # lost in transit
        self.assertRaises(AssertionError, machine.teardown)

    def test_session(self) -> None:
        machine = SessionMachine()
        machine.setup(padding=16, rekey_bytes=400, suite="chacha20-poly1305")
        for n in range(5):
            machine.send_message("initiator", "x" * 300)
            machine.send_ping("responder")
            machine.rekey("responder")
            machine.deliver("initiator", 0.5, n)
            machine.deliver("responder", 0.3, 1)
            machine.in_order_prefix()
        machine.teardown()
        self.assertEqual(len(machine.received["initiator"]), 5)
        self.assertEqual(len(machine.pongs["responder"]), 5)
