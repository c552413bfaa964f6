"""
The sans-IO L{Connection} on its own: two connections driven against each other over bytes,
with no Twisted, no clock and no socket (h11-style: C{receive_data} gives events,
C{data_to_send} gives bytes).

The handshake's alerts are in test_handshake, arbitrary and flipped bytes in
test_connection_fuzz, the Twisted adapter in test_protocol; this module covers what the
connection itself decides once the handshake is done: stanzas, pings, close, rekeying, its
own alerts, and what it refuses to send.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    CloseReceived,
    Connection,
    ConnectionClosedError,
    ConnectionFailed,
    HandshakeComplete,
    StanzaReceived,
)
from sixchat.errors import HandshakeTimeout, InternalError
from sixchat.filetransfer.stanzas import MAX_CHUNK, Accept, Chunk, Done, FileOffer, Reject
from sixchat.handshake import PeerConfig
from sixchat.record import (
    MAX_PLAINTEXT,
    MAX_SEQ,
    PLAIN,
    SEALED,
    SUITES,
    TAG_LEN,
    CipherState,
    RecordReader,
    header,
    plain_record,
)
from sixchat.stanzas import (
    Close,
    ErrorStanza,
    Message,
    Ping,
    Pong,
    Receipt,
    Rekey,
    Typing,
)
from sixchat.test import certs
from sixchat.xmlcodec import Element, parse, serialize

CA = certs.make_ca()
TS = "2026-11-26T00:25:21.123Z"


def config(name: str, **options: Any) -> PeerConfig:
    return PeerConfig([certs.make_identity(name, CA)], certs.trust_for(CA), **options)


def records(data: bytes) -> list[tuple[int, bytes, bytes]]:
    reader = RecordReader()
    reader.feed(data)
    out = []
    while (record := reader.next_record(sealed_allowed=True)) is not None:
        out.append(record)
    return out


def seal_anything(state: CipherState, plaintext: bytes) -> bytes:
    """A SEALED record for C{plaintext}, even one L{CipherState.seal} refuses to make."""
    head = header(SEALED, len(plaintext) + TAG_LEN)
    aead = SUITES[state.suite][1](state._key)
    nonce = (state._iv ^ state.seq).to_bytes(12, "big")
    state.seq += 1
    return head + aead.encrypt(nonce, plaintext, head)


class Wire:
    """Alice (initiator) and bob (responder), and the events each has seen."""

    def __init__(self, **options: Any) -> None:
        self.alice = Connection(
            config("alice@example.com", **options), INITIATOR, to="bob@example.com"
        )
        self.bob = Connection(config("bob@example.com", **options), RESPONDER)
        self.events: dict[str, list[Any]] = {"alice": [], "bob": []}
        self.alice.start()

    def deliver(self) -> None:
        """Carry bytes both ways until neither side has anything to send."""
        while True:
            to_bob = self.alice.data_to_send()
            if to_bob:
                self.events["bob"] += self.bob.receive_data(to_bob)
            to_alice = self.bob.data_to_send()
            if to_alice:
                self.events["alice"] += self.alice.receive_data(to_alice)
            if not to_bob and not to_alice:
                return

    def take(self, who: str) -> list[Any]:
        events, self.events[who] = self.events[who], []
        return events


def established(**options: Any) -> Wire:
    wire = Wire(**options)
    wire.deliver()
    wire.take("alice")
    wire.take("bob")
    return wire


class HandshakeTests(SynchronousTestCase):
    def test_to_completion(self) -> None:
        wire = Wire()
        self.assertEqual(wire.bob.data_to_send(), b"")  # the responder waits for M1
        m1 = wire.alice.data_to_send()
        self.assertEqual([r[0] for r in records(m1)], [PLAIN])
        self.assertEqual(wire.alice.data_to_send(), b"")  # data_to_send empties the queue
        wire.events["bob"] += wire.bob.receive_data(m1)
        wire.deliver()
        [alice_done] = wire.take("alice")
        [bob_done] = wire.take("bob")
        self.assertIsInstance(alice_done, HandshakeComplete)
        self.assertIsInstance(bob_done, HandshakeComplete)
        alice, bob = alice_done.result, bob_done.result
        self.assertEqual(
            (alice.local_name, alice.peer_name), ("alice@example.com", "bob@example.com")
        )
        self.assertEqual((bob.local_name, bob.peer_name), ("bob@example.com", "alice@example.com"))
        self.assertEqual((alice.suite, alice.group), (bob.suite, bob.group))
        self.assertEqual(alice.exporter_secret, bob.exporter_secret)
        self.assertEqual(wire.alice.state, "open")
        self.assertEqual(wire.bob.state, "open")
        self.assertIs(wire.alice.result, alice)
        self.assertGreater(wire.bob.records_received, 1)

    def test_start_is_for_the_initiator_once(self) -> None:
        wire = Wire()
        first = wire.alice.data_to_send()
        wire.alice.start()
        wire.bob.start()
        self.assertEqual((wire.alice.data_to_send(), wire.bob.data_to_send()), (b"", b""))
        self.assertTrue(first)

    def test_unknown_role(self) -> None:
        self.assertRaises(ValueError, Connection, config("alice@example.com"), "observer")

    def test_release_handshake_only_once_complete(self) -> None:
        wire = Wire()
        wire.alice.release_handshake()
        self.assertIsNotNone(wire.alice.handshake)
        wire.deliver()
        wire.alice.release_handshake()
        self.assertIsNone(wire.alice.handshake)
        wire.alice.send(Typing("composing"))  # the session does not need it
        wire.deliver()
        self.assertEqual(wire.take("bob")[-1], StanzaReceived(Typing("composing")))


class StanzaTests(SynchronousTestCase):
    def test_exchange(self) -> None:
        wire = established()
        message = Message("m1", TS, "Hello, Bob", "t1", None)
        wire.alice.send(message)
        wire.deliver()
        self.assertEqual(wire.take("bob"), [StanzaReceived(message)])
        wire.bob.send(Receipt("m1"))
        wire.bob.send(Typing("paused"))
        wire.deliver()
        self.assertEqual(
            wire.take("alice"), [StanzaReceived(Receipt("m1")), StanzaReceived(Typing("paused"))]
        )

    def test_each_stanza_is_one_sealed_record(self) -> None:
        wire = established()
        for i in range(3):
            wire.alice.send(Message(f"m{i}", TS, "x"))
        self.assertEqual([r[0] for r in records(wire.alice.data_to_send())], [SEALED] * 3)

    def test_pieces_are_the_same_bytes(self) -> None:
        """
        pieces_to_send hands over what data_to_send would join: small records whole, a
        large one as its header and ciphertext; the bytes are the same either way.
        """
        one, two = established(), established()  # different keys: compare lengths
        stanzas = [Message("m0", TS, "x"), Message("m1", TS, "y" * 5000), Receipt("m0")]
        for stanza in stanzas:
            one.alice.send(stanza)
            two.alice.send(stanza)
        pieces = one.alice.pieces_to_send()
        self.assertEqual([len(p) for p in pieces[1:3]], [4, len(pieces[2])])
        self.assertEqual(len(pieces), 4)  # the large record in two
        self.assertEqual(len(b"".join(pieces)), len(two.alice.data_to_send()))
        self.assertEqual(one.alice.pieces_to_send(), [])
        one.events["bob"] += one.bob.receive_data(b"".join(pieces))
        self.assertEqual([e.stanza for e in one.take("bob")], stanzas)

    def test_ping_is_answered_by_the_connection(self) -> None:
        wire = established()
        wire.alice.send(Ping("p1"))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [])  # bob's user never sees the ping
        self.assertEqual(wire.take("alice"), [StanzaReceived(Pong("p1"))])

    def test_prepared_stanzas_are_sealed_later_in_order(self) -> None:
        wire = established()
        prepared = [wire.alice.prepare(Message(f"m{i}", TS, f"body {i}")) for i in range(3)]
        self.assertEqual(wire.alice.data_to_send(), b"")  # nothing sealed yet
        for serialized in prepared:
            wire.alice.send_prepared(serialized)
        wire.deliver()
        self.assertEqual([e.stanza.body for e in wire.take("bob")], ["body 0", "body 1", "body 2"])

    def test_padding_hides_lengths_and_is_stripped(self) -> None:
        wire = established(padding=256)
        wire.alice.send(Message("m1", TS, "short"))
        wire.alice.send(Message("m2", TS, "a little longer than the first one"))
        data = wire.alice.data_to_send()
        lengths = {len(payload) for _, _, payload in records(data)}
        self.assertEqual(len(lengths), 1)  # both padded to one block (plus the AEAD tag)
        wire.events["bob"] += wire.bob.receive_data(data)
        self.assertEqual(
            [e.stanza.body for e in wire.take("bob")],
            ["short", "a little longer than the first one"],
        )

    def test_unsupported_and_invalid_stanzas_are_answered_not_fatal(self) -> None:
        wire = established()
        wire.alice._send_element(Element("frobnicate", {"id": "abc123"}))
        wire.alice._send_element(Message("m1", "yesterday", "bad ts").to_element())
        wire.deliver()
        self.assertEqual(wire.take("bob"), [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in wire.take("alice")],
            [("unsupported", "abc123"), ("bad_request", "m1")],
        )
        self.assertEqual((wire.alice.state, wire.bob.state), ("open", "open"))

    def test_a_bad_error_is_never_answered(self) -> None:
        """§11.1: no error in answer to an error, even an invalid one."""
        wire = established()
        wire.alice._send_element(
            Element("error", {"reason": "bad_request", "ref": "not a valid id!"})
        )
        wire.deliver()
        self.assertEqual(wire.take("alice"), [])
        self.assertEqual(wire.alice.data_to_send() + wire.bob.data_to_send(), b"")


class FileStanzaTests(SynchronousTestCase):
    """§8.7 stanzas reach the application only when it takes files (PeerConfig.file_transfer)."""

    offer = FileOffer("f1", "a.txt", 3, b"\x01" * 32, "text/plain")

    def test_without_file_transfer_every_file_element_is_unsupported(self) -> None:
        wire = established()
        for stanza in (self.offer, Accept("f1", 0), Chunk("f1", 0, b"abc"), Done("f1")):
            wire.alice.send(stanza)
        wire.deliver()
        self.assertEqual(wire.take("bob"), [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in wire.take("alice")],
            [("unsupported", "f1")] * 4,
        )

    def test_with_file_transfer_they_are_events(self) -> None:
        wire = established(file_transfer=True)
        stanzas = [self.offer, Chunk("f1", 0, b"abc"), Done("f1")]
        for stanza in stanzas:
            wire.alice.send(stanza)
        wire.bob.send(Accept("f1", 0))
        wire.bob.send(Reject("f1", "sha256_mismatch"))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [StanzaReceived(s) for s in stanzas])
        self.assertEqual(
            wire.take("alice"),
            [StanzaReceived(Accept("f1", 0)), StanzaReceived(Reject("f1", "sha256_mismatch"))],
        )

    def test_bad_file_stanzas_are_answered_not_fatal(self) -> None:
        wire = established(file_transfer=True)
        oversize = "A" * (4 * MAX_CHUNK // 3 + 8)
        wire.alice._send_element(Element("chunk", {"id": "f1", "offset": "0"}, text=oversize))
        wire.alice._send_element(Element("file", {"id": "f2", "name": "x", "size": "1"}))
        wire.alice._send_element(Element("done", {}))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [])
        self.assertEqual(
            [(e.stanza.reason, e.stanza.ref) for e in wire.take("alice")],
            [("too_large", "f1"), ("bad_request", "f2"), ("bad_request", None)],
        )
        self.assertEqual((wire.alice.state, wire.bob.state), ("open", "open"))

    def test_a_full_chunk_is_one_record(self) -> None:
        wire = established(file_transfer=True, padding=1024)
        chunk = Chunk("x" * 64, 2**40, bytes(MAX_CHUNK))
        wire.alice.send(chunk)
        wire.deliver()
        self.assertEqual(wire.take("bob"), [StanzaReceived(chunk)])


class RefusedSendTests(SynchronousTestCase):
    def test_before_the_handshake(self) -> None:
        wire = Wire()
        self.assertRaises(ConnectionClosedError, wire.alice.send, Message("m1", TS, "early"))
        self.assertRaises(ConnectionClosedError, wire.alice.prepare, Typing("composing"))
        self.assertRaises(ConnectionClosedError, wire.alice.rekey)

    def test_close_and_rekey_have_methods_of_their_own(self) -> None:
        wire = established()
        for stanza in (Close(), Rekey()):
            self.assertRaises(ValueError, wire.alice.send, stanza)
            self.assertRaises(ValueError, wire.alice.prepare, stanza)
        self.assertEqual(wire.alice.data_to_send(), b"")

    def test_too_large_for_one_record(self) -> None:
        wire = established()
        huge = Message("m1", TS, "x" * MAX_PLAINTEXT)
        with self.assertRaises(ValueError) as caught:
            wire.alice.send(huge)
        self.assertIn("65,536", str(caught.exception))
        self.assertRaises(ValueError, wire.alice.prepare, huge)
        self.assertEqual(wire.alice.data_to_send(), b"")
        self.assertEqual(wire.alice.state, "open")

    def test_padding_stops_at_the_record_limit(self) -> None:
        wire = established(padding=4096)
        near = Message("m1", TS, "\u00e9" * 32_000)  # 64,000 bytes: the next block is too far
        wire.alice.send(near)
        [(_, _, payload)] = records(wire.alice.data_to_send())
        self.assertEqual(len(payload), MAX_PLAINTEXT + TAG_LEN)

    def test_over_long_bodies_are_refused_by_the_peer(self) -> None:
        """Over 32,768 characters (§8.1): an error stanza, not an event, not an alert."""
        wire = established()
        wire.alice.send(Message("m1", TS, "x" * 40_000))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [])
        [event] = wire.take("alice")
        self.assertEqual((event.stanza.reason, event.stanza.ref), ("too_large", "m1"))


class CloseTests(SynchronousTestCase):
    def test_graceful_close(self) -> None:
        wire = established()
        wire.alice.close()
        self.assertEqual((wire.alice.state, wire.alice.close_sent), ("closing", True))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [CloseReceived(answered=False)])
        self.assertTrue(wire.bob.peer_closed)
        self.assertFalse(wire.bob.closed_cleanly)  # bob still owes his close
        wire.bob.send(Receipt("m0"))  # pending receipts first (§8.8)
        wire.bob.close()
        wire.deliver()
        self.assertEqual(
            wire.take("alice"), [StanzaReceived(Receipt("m0")), CloseReceived(answered=True)]
        )
        self.assertEqual(wire.alice.state, "closed")
        self.assertTrue(wire.alice.closed_cleanly)
        self.assertTrue(wire.bob.closed_cleanly)
        self.assertEqual(wire.alice.receive_data(b"\x02\x00\x00\x20" + bytes(32)), [])

    def test_after_our_close_only_receipts(self) -> None:
        wire = established()
        wire.alice.close()
        self.assertRaises(ConnectionClosedError, wire.alice.send, Message("m1", TS, "late"))
        self.assertRaises(ConnectionClosedError, wire.alice.send, Ping("p1"))
        self.assertRaises(ConnectionClosedError, wire.alice.prepare, Receipt("m0"))
        self.assertRaises(ConnectionClosedError, wire.alice.send_prepared, b"<typing/>")
        self.assertRaises(ConnectionClosedError, wire.alice.rekey)
        wire.alice.send(Receipt("m0"))
        wire.alice.close()  # a second close sends nothing
        wire.deliver()
        self.assertEqual(
            wire.take("bob"), [CloseReceived(answered=False), StanzaReceived(Receipt("m0"))]
        )

    def test_the_peer_still_speaks_until_it_has_seen_our_close(self) -> None:
        wire = established()
        wire.alice.close()
        wire.bob.send(Message("m1", TS, "crossing"))
        wire.bob.send(Ping("p1"))  # alice is closing: she answers no ping
        wire.deliver()
        self.assertEqual(wire.take("alice")[:1], [StanzaReceived(Message("m1", TS, "crossing"))])
        self.assertNotIn(StanzaReceived(Pong("p1")), wire.take("bob"))

    def test_no_error_answers_after_our_close(self) -> None:
        wire = established()
        wire.alice.close()
        wire.bob._send_element(Element("frobnicate"))
        wire.deliver()
        self.assertEqual(wire.take("bob"), [CloseReceived(answered=False)])


class RekeyTests(SynchronousTestCase):
    def test_on_demand(self) -> None:
        wire = established()
        old_key = wire.alice._write
        assert old_key is not None
        wire.alice.send(Message("m1", TS, "before"))
        wire.alice.rekey()
        self.assertEqual(old_key.seq, 0)  # a fresh key: sequence numbers start again
        wire.alice.send(Message("m2", TS, "after"))
        data = wire.alice.data_to_send()
        self.assertEqual(len(records(data)), 3)  # message, <rekey/>, message
        wire.events["bob"] += wire.bob.receive_data(data)
        self.assertEqual([e.stanza.body for e in wire.take("bob")], ["before", "after"])
        assert wire.bob._read is not None
        self.assertEqual(wire.bob._read.seq, 1)

    def test_before_the_byte_limit(self) -> None:
        wire = established()
        wire.alice.rekey_bytes = 500
        for i in range(4):
            wire.alice.send(Message(f"m{i}", TS, "x" * 200))
        data = wire.alice.data_to_send()
        self.assertEqual(len(records(data)), 4 + 1)  # one automatic <rekey/> on the way
        wire.events["bob"] += wire.bob.receive_data(data)
        self.assertEqual(len(wire.take("bob")), 4)

    def test_before_sequence_numbers_run_out(self) -> None:
        wire = established()
        assert wire.alice._write is not None and wire.bob._read is not None
        wire.alice._write.seq = wire.bob._read.seq = MAX_SEQ
        wire.alice.send(Message("m1", TS, "the last sequence number goes to <rekey/>"))
        wire.deliver()
        self.assertEqual([type(e.stanza) for e in wire.take("bob")], [Message])
        self.assertEqual(wire.alice._write.seq, 1)

    def test_a_receipt_after_our_close_still_rekeys_when_it_must(self) -> None:
        wire = established()
        wire.alice.close()
        wire.deliver()
        assert wire.alice._write is not None and wire.bob._read is not None
        wire.alice._write.seq = wire.bob._read.seq = MAX_SEQ
        wire.alice.send(Receipt("m0"))
        wire.deliver()
        self.assertEqual(wire.take("bob")[-1], StanzaReceived(Receipt("m0")))


class AlertTests(SynchronousTestCase):
    """The connection's own fatal errors after the handshake, and what goes on the wire."""

    def assertSealedAlert(self, wire: Wire, sender: str, reason: str) -> ConnectionFailed:
        """C{sender} failed with C{reason}, sealed the alert, and the other side read it."""
        sending, receiving = (wire.alice, "bob") if sender == "alice" else (wire.bob, "alice")
        [failed] = wire.take(sender)
        self.assertIsInstance(failed, ConnectionFailed)
        self.assertEqual(failed.error.reason, reason)
        self.assertEqual(sending.state, "closed")
        out = sending.data_to_send()
        self.assertEqual([r[0] for r in records(out)], [SEALED])
        other = wire.bob if receiving == "bob" else wire.alice
        [alert] = other.receive_data(out)
        self.assertIsInstance(alert, AlertReceived)
        self.assertEqual(alert.alert.reason, reason)
        self.assertEqual(alert.alert.text, "")  # our diagnostic stays in our log
        self.assertEqual(other.state, "closed")
        return failed

    def test_plain_record_after_the_handshake(self) -> None:
        wire = established()
        hello = serialize(Element("hello", {"version": "1"}))
        wire.events["bob"] += wire.bob.receive_data(plain_record(hello))
        failed = self.assertSealedAlert(wire, "bob", "protocol_error")
        self.assertTrue(failed.truncated)  # §11.4: unauthenticated, so a truncation

    def test_plain_alert_after_the_handshake_is_not_believed(self) -> None:
        wire = established()
        fake = serialize(Element("alert", {"reason": "access_denied"}))
        wire.events["bob"] += wire.bob.receive_data(plain_record(fake))
        self.assertSealedAlert(wire, "bob", "protocol_error")

    def test_handshake_message_after_the_handshake(self) -> None:
        wire = established()
        wire.alice._send_element(Element("finished", {"mac": "AAAA"}))
        wire.events["bob"] += wire.bob.receive_data(wire.alice.data_to_send())
        failed = self.assertSealedAlert(wire, "bob", "protocol_error")
        self.assertIn("<finished> after the handshake", str(failed.error))

    def test_empty_sealed_plaintext(self) -> None:
        for sealed in (b"", b"    "):  # nothing, or padding alone
            wire = established()
            assert wire.alice._write is not None
            record = seal_anything(wire.alice._write, sealed)
            wire.events["bob"] += wire.bob.receive_data(record)
            failed = self.assertSealedAlert(wire, "bob", "protocol_error")
            self.assertIn("empty SEALED plaintext", str(failed.error))

    def test_unparsable_sealed_xml(self) -> None:
        wire = established()
        assert wire.alice._write is not None
        wire.events["bob"] += wire.bob.receive_data(wire.alice._write.seal(b"<message"))
        self.assertSealedAlert(wire, "bob", "protocol_error")

    def test_tampered_record(self) -> None:
        wire = established()
        wire.alice.send(Message("m1", TS, "tampered"))
        data = bytearray(wire.alice.data_to_send())
        data[-1] ^= 1
        wire.events["bob"] += wire.bob.receive_data(bytes(data))
        failed = self.assertSealedAlert(wire, "bob", "bad_record_mac")
        self.assertTrue(failed.truncated)

    def test_sealed_alert_from_the_peer(self) -> None:
        wire = established()
        wire.alice._send_element(Element("alert", {"reason": "certificate_revoked"}))
        wire.alice._send_element(Message("m1", TS, "after the alert").to_element())
        wire.deliver()
        [alert] = wire.take("bob")
        self.assertIsInstance(alert, AlertReceived)
        self.assertEqual(alert.alert.reason, "certificate_revoked")
        self.assertEqual(wire.bob.state, "closed")
        self.assertEqual(wire.bob.buffered, 0)  # nothing after the alert is kept or read

    def test_alert_without_reason_reads_as_protocol_error(self) -> None:
        wire = established()
        wire.alice._send_element(Element("alert"))
        wire.deliver()
        [alert] = wire.take("bob")
        self.assertEqual(alert.alert.reason, "protocol_error")

    def test_fail_from_the_adapter(self) -> None:
        """A timeout noticed outside: PLAIN before any key, SEALED after; at most once."""
        wire = Wire()
        wire.alice.data_to_send()
        [failed] = wire.alice.fail(HandshakeTimeout("no M2 in time"))
        self.assertEqual((failed.error.reason, failed.truncated), ("handshake_timeout", False))
        [(record_type, _, payload)] = records(wire.alice.data_to_send())
        self.assertEqual(record_type, PLAIN)
        self.assertEqual(parse(payload).attrs, {"reason": "handshake_timeout"})
        self.assertEqual(wire.alice.fail(InternalError("again")), [])
        self.assertEqual(wire.alice.data_to_send(), b"")

        wire = established()
        [failed] = wire.bob.fail(InternalError("a bug"))
        self.assertTrue(failed.truncated)
        wire.events["bob"].append(failed)
        self.assertSealedAlert(wire, "bob", "internal_error")

    def test_no_alert_when_nothing_more_can_be_sealed(self) -> None:
        wire = established()
        assert wire.alice._write is not None
        wire.alice._write.seq = MAX_SEQ + 1
        [failed] = wire.alice.fail(InternalError("exhausted"))
        self.assertEqual(failed.error.reason, "internal_error")
        self.assertEqual(wire.alice.data_to_send(), b"")
        self.assertEqual(wire.alice.state, "closed")

    def test_a_closed_connection_reads_nothing_more(self) -> None:
        wire = established()
        wire.alice.fail(InternalError("done"))
        wire.bob.send(Message("m1", TS, "into the void"))
        self.assertEqual(wire.alice.receive_data(wire.bob.data_to_send()), [])
        self.assertEqual(wire.alice.buffered, 0)


class ErrorStanzaTests(SynchronousTestCase):
    def test_error_stanza_reaches_the_user(self) -> None:
        wire = established()
        wire.bob._send_element(ErrorStanza("too_large", "m1", "over the limit").to_element())
        wire.deliver()
        [event] = wire.take("alice")
        self.assertEqual(event, StanzaReceived(ErrorStanza("too_large", "m1", "over the limit")))
