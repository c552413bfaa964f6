"""
Tests for L{sixchat.record}: framing, the §11.6 header checks, padding and AEAD sealing (§2).
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import BadRecordMac, ProtocolError, RecordOverflow
from sixchat.keyschedule import next_traffic_secret, traffic_key_iv
from sixchat.record import (
    HEADER_LEN,
    MAX_PLAINTEXT,
    MAX_SEALED,
    MAX_SEQ,
    PLAIN,
    SEALED,
    SUITES,
    TAG_LEN,
    CipherState,
    RecordReader,
    header,
    plain_record,
    strip_padding,
)

VECTORS = Path(__file__).parent / "vectors"
RECORDS = json.loads((VECTORS / "records.json").read_text())
REKEY = json.loads((VECTORS / "rekey.json").read_text())

HYPOTHESIS = settings(max_examples=60, deadline=None)

SECRET = bytes(range(32))


def drain(reader: RecordReader, sealed_allowed: bool = True) -> list[tuple[int, bytes, bytes]]:
    out = []
    while True:
        record = reader.next_record(sealed_allowed)
        if record is None:
            return out
        out.append(record)


class ConstantsTests(SynchronousTestCase):
    def test_limits(self) -> None:
        self.assertEqual((PLAIN, SEALED), (0x01, 0x02))
        self.assertEqual(MAX_PLAINTEXT, 65_536)
        self.assertEqual(MAX_SEALED, 65_552)
        self.assertEqual(MAX_SEQ, 2**24 - 1)
        self.assertEqual((HEADER_LEN, TAG_LEN), (4, 16))
        self.assertEqual(set(SUITES), {"chacha20-poly1305", "aes-256-gcm", "aes-128-gcm"})

    def test_header(self) -> None:
        self.assertEqual(header(PLAIN, 0x0000EB), b"\x01\x00\x00\xeb")
        self.assertEqual(header(SEALED, 65_552), b"\x02\x01\x00\x10")
        self.assertEqual(header(SEALED, 0xABCDEF), b"\x02\xab\xcd\xef")

    def test_plain_record(self) -> None:
        example = RECORDS["plain_example"]
        self.assertEqual(
            plain_record(bytes.fromhex(example["payload"])), bytes.fromhex(example["record"])
        )
        self.assertEqual(plain_record(b"x" * MAX_PLAINTEXT)[:4], b"\x01\x01\x00\x00")
        self.assertRaises(ValueError, plain_record, b"")
        self.assertRaises(ValueError, plain_record, b"x" * (MAX_PLAINTEXT + 1))


class HeaderCheckTests(SynchronousTestCase):
    """§11.6: type -> length 0 -> over the limit -> SEALED before key -> SEALED 1-15 bytes."""

    def check(self, head: bytes, sealed_allowed: bool) -> Exception:
        reader = RecordReader()
        reader.feed(head)
        try:
            reader.next_record(sealed_allowed)
        except Exception as error:
            # Checked on the header alone: nothing of a payload was needed or buffered.
            self.assertEqual(reader.buffered, HEADER_LEN)
            return error
        self.fail(f"header {head.hex()} accepted")

    def assertFails(self, head: bytes, sealed_allowed: bool, cls: type, reason: str) -> None:
        error = self.check(head, sealed_allowed)
        self.assertIs(type(error), cls, f"{head.hex()} sealed_allowed={sealed_allowed}")
        self.assertEqual(error.reason, reason)  # type: ignore[attr-defined]

    def test_unknown_type(self) -> None:
        for record_type in (0x00, 0x03, 0x17, 0x80, 0xFF):
            for length in (0, 5, 0x10000, 0xFFFFFF):
                for allowed in (False, True):
                    self.assertFails(
                        header(record_type, length), allowed, ProtocolError, "protocol_error"
                    )

    def test_type_before_overflow(self) -> None:
        """A bad type with a huge length is protocol_error, not record_overflow."""
        self.assertFails(b"\x03\xff\xff\xff", True, ProtocolError, "protocol_error")

    def test_zero_length(self) -> None:
        for record_type in (PLAIN, SEALED):
            for allowed in (False, True):
                self.assertFails(header(record_type, 0), allowed, ProtocolError, "protocol_error")

    def test_zero_length_before_short(self) -> None:
        """SEALED length 0 with a key is protocol_error (check 2), not bad_record_mac (5)."""
        self.assertFails(header(SEALED, 0), True, ProtocolError, "protocol_error")

    def test_plain_over_limit(self) -> None:
        for length in (MAX_PLAINTEXT + 1, 0x100000, 0xFFFFFF):
            for allowed in (False, True):
                self.assertFails(header(PLAIN, length), allowed, RecordOverflow, "record_overflow")

    def test_sealed_over_limit(self) -> None:
        for length in (MAX_SEALED + 1, 0xFFFFFF):
            self.assertFails(header(SEALED, length), True, RecordOverflow, "record_overflow")

    def test_overflow_before_no_key(self) -> None:
        """An oversized SEALED header before any key is record_overflow (check 3 before 4)."""
        self.assertFails(header(SEALED, MAX_SEALED + 1), False, RecordOverflow, "record_overflow")

    def test_sealed_before_key(self) -> None:
        for length in (1, 15, 16, 100, MAX_SEALED):
            self.assertFails(header(SEALED, length), False, ProtocolError, "protocol_error")

    def test_sealed_short(self) -> None:
        for length in range(1, TAG_LEN):
            self.assertFails(header(SEALED, length), True, BadRecordMac, "bad_record_mac")

    def test_sealed_tag_only_accepted(self) -> None:
        reader = RecordReader()
        reader.feed(header(SEALED, TAG_LEN))
        self.assertIsNone(reader.next_record(True))
        reader.feed(b"t" * TAG_LEN)
        self.assertEqual(reader.next_record(True), (SEALED, header(SEALED, 16), b"t" * 16))

    def test_plain_short_accepted(self) -> None:
        """PLAIN records have no minimum beyond one byte."""
        reader = RecordReader()
        reader.feed(b"\x01\x00\x00\x01x")
        self.assertEqual(reader.next_record(False), (PLAIN, b"\x01\x00\x00\x01", b"x"))

    def test_overflow_fails_without_payload(self) -> None:
        """A header announcing too much fails as soon as its 4th byte arrives, byte by byte."""
        for head, allowed in (
            (header(PLAIN, MAX_PLAINTEXT + 1), False),
            (header(SEALED, MAX_SEALED + 1), True),
            (b"\x01\xff\xff\xff", False),
        ):
            reader = RecordReader()
            for byte in head[:3]:
                reader.feed(bytes([byte]))
                self.assertIsNone(reader.next_record(allowed))
            reader.feed(head[3:])
            self.assertRaises(RecordOverflow, reader.next_record, allowed)
            self.assertEqual(reader.buffered, HEADER_LEN)

    def test_bad_type_needs_only_header(self) -> None:
        reader = RecordReader()
        reader.feed(b"\x05\x00\x00")
        self.assertIsNone(reader.next_record(True))
        reader.feed(b"\x01")
        self.assertRaises(ProtocolError, reader.next_record, True)


class FramingTests(SynchronousTestCase):
    def test_plain_max(self) -> None:
        payload = bytes(range(256)) * 256
        self.assertEqual(len(payload), 65_536)
        reader = RecordReader()
        reader.feed(header(PLAIN, 65_536) + payload)
        self.assertEqual(reader.next_record(False), (PLAIN, b"\x01\x01\x00\x00", payload))
        self.assertEqual(reader.buffered, 0)

    def test_plain_over_max(self) -> None:
        reader = RecordReader()
        reader.feed(header(PLAIN, 65_537) + b"x" * 65_537)
        self.assertRaises(RecordOverflow, reader.next_record, False)

    def test_sealed_max(self) -> None:
        payload = b"s" * 65_552
        reader = RecordReader()
        reader.feed(header(SEALED, 65_552) + payload)
        self.assertEqual(reader.next_record(True), (SEALED, b"\x02\x01\x00\x10", payload))

    def test_sealed_over_max(self) -> None:
        reader = RecordReader()
        reader.feed(header(SEALED, 65_553) + b"s" * 65_553)
        self.assertRaises(RecordOverflow, reader.next_record, True)

    def test_partial_payload_waits(self) -> None:
        reader = RecordReader()
        reader.feed(header(PLAIN, 10) + b"12345")
        self.assertIsNone(reader.next_record(False))
        self.assertIsNone(reader.next_record(False))
        self.assertEqual(reader.buffered, 9)
        reader.feed(b"67890" + b"\x01\x00")
        self.assertEqual(reader.next_record(False), (PLAIN, header(PLAIN, 10), b"1234567890"))
        self.assertEqual(reader.buffered, 2)
        self.assertIsNone(reader.next_record(False))

    def test_several_records_in_one_feed(self) -> None:
        stream = plain_record(b"<a/>") + header(SEALED, 17) + b"x" * 17 + plain_record(b"<b/>")
        reader = RecordReader()
        reader.feed(stream)
        self.assertEqual(
            drain(reader),
            [
                (PLAIN, header(PLAIN, 4), b"<a/>"),
                (SEALED, header(SEALED, 17), b"x" * 17),
                (PLAIN, header(PLAIN, 4), b"<b/>"),
            ],
        )
        self.assertEqual(reader.buffered, 0)

    def test_split_at_every_boundary(self) -> None:
        records = [
            (PLAIN, b"<hello/>"),
            (SEALED, bytes(range(40))),
            (SEALED, b"\x00" * 16),
            (PLAIN, b"x"),
        ]
        stream = b"".join(header(t, len(p)) + p for t, p in records)
        expected = [(t, header(t, len(p)), p) for t, p in records]
        for split in range(len(stream) + 1):
            reader = RecordReader()
            reader.feed(stream[:split])
            got = drain(reader)
            reader.feed(stream[split:])
            got += drain(reader)
            self.assertEqual(got, expected, f"split at {split}")
            self.assertEqual(reader.buffered, 0)
        reader = RecordReader()
        got = []
        for i in range(len(stream)):
            reader.feed(stream[i : i + 1])
            got += drain(reader)
            self.assertLess(reader.buffered, HEADER_LEN + 40)
        self.assertEqual(got, expected)

    @HYPOTHESIS
    @given(
        st.lists(st.tuples(st.sampled_from([PLAIN, SEALED]), st.binary(min_size=16, max_size=300)),
                 max_size=6),
        st.lists(st.integers(0, 2000), max_size=8),
    )
    def test_arbitrary_splits(self, records: list[tuple[int, bytes]], cuts: list[int]) -> None:
        stream = b"".join(header(t, len(p)) + p for t, p in records)
        points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        reader = RecordReader()
        got = []
        for start, end in zip(points, points[1:], strict=False):
            reader.feed(stream[start:end])
            got += drain(reader)
        self.assertEqual(got, [(t, header(t, len(p)), p) for t, p in records])
        self.assertEqual(reader.buffered, 0)


class PaddingTests(SynchronousTestCase):
    def test_strip(self) -> None:
        self.assertEqual(strip_padding(b"<a/>"), b"<a/>")
        self.assertEqual(strip_padding(b"<a/>" + b" " * 1000), b"<a/>")
        self.assertEqual(strip_padding(b"<a> x </a>  "), b"<a> x </a>")

    def test_only_trailing_spaces(self) -> None:
        self.assertEqual(strip_padding(b"  <a/>"), b"  <a/>")
        for other in (b"\t", b"\n", b"\r", b"\x00", b"\xa0", b"\x0b", b"\x0c"):
            self.assertEqual(strip_padding(b"<a/>" + other + b"  "), b"<a/>" + other)

    def test_all_padding(self) -> None:
        for plaintext in (b" ", b" " * 100, b" " * MAX_PLAINTEXT, b""):
            error = self.assertRaises(ProtocolError, strip_padding, plaintext)
            self.assertEqual(error.reason, "protocol_error")


class CipherStateTests(SynchronousTestCase):
    def pair(self, suite: str, secret: bytes = SECRET) -> tuple[CipherState, CipherState]:
        return CipherState(suite, secret), CipherState(suite, secret)

    def test_round_trip_each_suite(self) -> None:
        for suite in SUITES:
            sender, receiver = self.pair(suite)
            for i, plaintext in enumerate([b"<ping id='1'/>", b"x", b"y" * MAX_PLAINTEXT]):
                record = sender.seal(plaintext)
                self.assertEqual(sender.seq, i + 1)
                self.assertEqual(record[:4], header(SEALED, len(plaintext) + TAG_LEN))
                self.assertEqual(len(record), 4 + len(plaintext) + TAG_LEN)
                if len(plaintext) > 4:
                    self.assertNotIn(plaintext, record[4:])
                self.assertEqual(receiver.open(record[:4], record[4:]), plaintext)
                self.assertEqual(receiver.seq, i + 1)

    def test_suites_differ(self) -> None:
        records = {CipherState(s, SECRET).seal(b"<a/>") for s in SUITES}
        self.assertEqual(len(records), 3)

    def test_key_lengths(self) -> None:
        for suite, length in (("chacha20-poly1305", 32), ("aes-256-gcm", 32), ("aes-128-gcm", 16)):
            key, iv = traffic_key_iv(SECRET, length)
            direct = CipherState.from_key_iv(suite, key, iv)
            self.assertEqual(direct.seal(b"<a/>"), CipherState(suite, SECRET).seal(b"<a/>"))

    def test_vectors_seal(self) -> None:
        for case in RECORDS["cases"]:
            state = CipherState.from_key_iv(
                case["suite"], bytes.fromhex(case["key"]), bytes.fromhex(case["iv"]), case["seq"]
            )
            record = state.seal(bytes.fromhex(case["plaintext"]))
            self.assertEqual(record.hex(), case["record"], case)
            self.assertEqual(state.seq, case["seq"] + 1)

    def test_vectors_open(self) -> None:
        for case in RECORDS["cases"]:
            state = CipherState.from_key_iv(
                case["suite"], bytes.fromhex(case["key"]), bytes.fromhex(case["iv"]), case["seq"]
            )
            record = bytes.fromhex(case["record"])
            self.assertEqual(state.open(record[:4], record[4:]).hex(), case["plaintext"])

    def test_vector_wrong_seq(self) -> None:
        case = RECORDS["cases"][1]
        state = CipherState.from_key_iv(
            case["suite"], bytes.fromhex(case["key"]), bytes.fromhex(case["iv"]), case["seq"] + 1
        )
        record = bytes.fromhex(case["record"])
        self.assertRaises(BadRecordMac, state.open, record[:4], record[4:])

    def test_tamper_every_byte(self) -> None:
        for suite in SUITES:
            record = CipherState(suite, SECRET).seal(b"<message id='1'/>")
            for i in range(len(record)):
                for flip in (0x01, 0x80):
                    tampered = bytearray(record)
                    tampered[i] ^= flip
                    receiver = CipherState(suite, SECRET)
                    error = self.assertRaises(
                        BadRecordMac, receiver.open, bytes(tampered[:4]), bytes(tampered[4:])
                    )
                    self.assertEqual(error.reason, "bad_record_mac")
                    self.assertEqual(receiver.seq, 0)

    def test_truncated_or_extended(self) -> None:
        record = CipherState("aes-256-gcm", SECRET).seal(b"<a/>")
        receiver = CipherState("aes-256-gcm", SECRET)
        self.assertRaises(BadRecordMac, receiver.open, record[:4], record[4:-1])
        self.assertRaises(BadRecordMac, receiver.open, record[:4], record[4:] + b"\x00")
        self.assertRaises(BadRecordMac, receiver.open, record[:4], b"")
        self.assertEqual(receiver.open(record[:4], record[4:]), b"<a/>")

    def test_wrong_key(self) -> None:
        record = CipherState("chacha20-poly1305", SECRET).seal(b"<a/>")
        other = CipherState("chacha20-poly1305", bytes(32))
        self.assertRaises(BadRecordMac, other.open, record[:4], record[4:])

    def test_replay(self) -> None:
        for suite in SUITES:
            sender, receiver = self.pair(suite)
            record = sender.seal(b"<a/>")
            self.assertEqual(receiver.open(record[:4], record[4:]), b"<a/>")
            self.assertRaises(BadRecordMac, receiver.open, record[:4], record[4:])

    def test_reorder(self) -> None:
        for suite in SUITES:
            sender, receiver = self.pair(suite)
            first, second = sender.seal(b"<a/>"), sender.seal(b"<b/>")
            self.assertRaises(BadRecordMac, receiver.open, second[:4], second[4:])
            self.assertEqual(receiver.open(first[:4], first[4:]), b"<a/>")
            self.assertEqual(receiver.open(second[:4], second[4:]), b"<b/>")

    def test_open_last_seq_then_overflow(self) -> None:
        """The vector sealed at seq 2^24 - 1 opens; the next record would be seq 2^24."""
        case = RECORDS["cases"][2]
        self.assertEqual(case["seq"], MAX_SEQ)
        state = CipherState.from_key_iv(
            case["suite"], bytes.fromhex(case["key"]), bytes.fromhex(case["iv"]), MAX_SEQ
        )
        record = bytes.fromhex(case["record"])
        self.assertEqual(state.open(record[:4], record[4:]), b"<rekey/>        ")
        self.assertEqual(state.seq, 2**24)
        error = self.assertRaises(ProtocolError, state.open, record[:4], record[4:])
        self.assertEqual(error.reason, "protocol_error")

    def test_open_at_2_24(self) -> None:
        state = CipherState.from_key_iv("aes-128-gcm", bytes(16), bytes(12), 2**24)
        self.assertRaises(ProtocolError, state.open, header(SEALED, 20), bytes(20))

    def test_seal_past_max_seq(self) -> None:
        for suite in SUITES:
            key_len = SUITES[suite][0]
            sender = CipherState.from_key_iv(suite, bytes(key_len), bytes(12), MAX_SEQ)
            receiver = CipherState.from_key_iv(suite, bytes(key_len), bytes(12), MAX_SEQ)
            record = sender.seal(b"<rekey/>")
            self.assertEqual(receiver.open(record[:4], record[4:]), b"<rekey/>")
            self.assertRaises(ValueError, sender.seal, b"<a/>")
            self.assertEqual(sender.seq, MAX_SEQ + 1)

    def test_seal_length_limits(self) -> None:
        state = CipherState("aes-128-gcm", SECRET)
        self.assertRaises(ValueError, state.seal, b"")
        self.assertRaises(ValueError, state.seal, b"x" * (MAX_PLAINTEXT + 1))
        self.assertEqual(state.seq, 0)
        record = state.seal(b"x" * MAX_PLAINTEXT)
        self.assertEqual(len(record), HEADER_LEN + MAX_SEALED)

    def test_bytes_sealed(self) -> None:
        state = CipherState("chacha20-poly1305", SECRET)
        state.seal(b"12345")
        state.seal(b"123")
        self.assertEqual(state.bytes_sealed, 8)
        state.rekey()
        self.assertEqual(state.bytes_sealed, 0)

    def test_rekey(self) -> None:
        for suite in SUITES:
            sender, receiver = self.pair(suite)
            for _ in range(3):
                record = sender.seal(b"<a/>")
                receiver.open(record[:4], record[4:])
            stale = CipherState(suite, SECRET)
            stale.seq = sender.seq
            sender.rekey()
            self.assertEqual(sender.seq, 0)
            self.assertEqual(sender.secret, next_traffic_secret(SECRET))
            record = sender.seal(b"<b/>")
            # The old key at seq 3 or seq 0 cannot open it; the receiver must rekey too.
            self.assertRaises(BadRecordMac, stale.open, record[:4], record[4:])
            self.assertRaises(BadRecordMac, CipherState(suite, SECRET).open, record[:4],
                              record[4:])
            receiver.rekey()
            self.assertEqual(receiver.seq, 0)
            self.assertEqual(receiver.open(record[:4], record[4:]), b"<b/>")
            fresh = CipherState(suite, next_traffic_secret(SECRET))
            self.assertEqual(fresh.open(record[:4], record[4:]), b"<b/>")

    def test_rekey_resets_exhausted_seq(self) -> None:
        state = CipherState("aes-256-gcm", SECRET)
        state.seq = MAX_SEQ + 1
        self.assertRaises(ValueError, state.seal, b"<a/>")
        state.rekey()
        self.assertEqual(state.seq, 0)
        state.seal(b"<a/>")

    def test_raw_state_cannot_rekey(self) -> None:
        state = CipherState.from_key_iv("aes-128-gcm", bytes(16), bytes(12))
        self.assertRaises(ValueError, state.rekey)

    def test_rekey_vector(self) -> None:
        receiver = CipherState(REKEY["suite"], bytes.fromhex(REKEY["steps"][0]["secret"]))
        sender = CipherState(REKEY["suite"], bytes.fromhex(REKEY["steps"][0]["secret"]))
        for step in REKEY["steps"]:
            self.assertEqual(receiver.secret.hex(), step["secret"])
            key, iv = traffic_key_iv(receiver.secret, 32)
            self.assertEqual((key.hex(), iv.hex()), (step["key"], step["iv"]))
            reader = RecordReader()
            reader.feed(bytes.fromhex(step["records"]))
            records = drain(reader)
            self.assertEqual(len(records), 2)
            plaintexts = [receiver.open(head, payload) for _, head, payload in records]
            self.assertEqual(strip_padding(plaintexts[1]), b"<rekey/>")
            self.assertEqual(
                sender.seal(plaintexts[0]) + sender.seal(plaintexts[1]),
                bytes.fromhex(step["records"]),
            )
            receiver.rekey()
            sender.rekey()

    @HYPOTHESIS
    @given(st.sampled_from(sorted(SUITES)), st.binary(min_size=32, max_size=32),
           st.lists(st.binary(min_size=1, max_size=500), min_size=1, max_size=5))
    def test_round_trip_property(self, suite: str, secret: bytes, plaintexts: list[bytes]) -> None:
        sender, receiver = self.pair(suite, secret)
        stream = b"".join(sender.seal(p) for p in plaintexts)
        reader = RecordReader()
        reader.feed(stream)
        opened = [receiver.open(head, payload) for _, head, payload in drain(reader)]
        self.assertEqual(opened, plaintexts)


class AeadRingTests(SynchronousTestCase):
    """Only a bounded number of states hold an AEAD object; the others rebuild theirs."""

    def setUp(self) -> None:
        from sixchat import record

        self.ring = record._AeadRing(3)
        self.patch(record, "_AEADS", self.ring)

    def test_bounded_and_still_working(self) -> None:
        pairs = [(CipherState("aes-256-gcm", bytes([i]) * 32),
                  CipherState("aes-256-gcm", bytes([i]) * 32)) for i in range(5)]  # fmt: skip
        self.assertLessEqual(len(self.ring), 3)
        for _ in range(3):
            for sender, receiver in pairs:
                record = sender.seal(b"<a/>")
                self.assertEqual(receiver.open(record[:4], record[4:]), b"<a/>")
                self.assertLessEqual(len(self.ring), 3)
        held = [s for pair in pairs for s in pair if s._aead is not None]
        self.assertEqual(len(held), 3)

    def test_recently_used_states_keep_theirs(self) -> None:
        """CLOCK: a state used since the hand last passed is spared once."""
        a, b, c = (CipherState("aes-256-gcm", bytes([i]) * 32) for i in range(3))
        # All three are marked used when made: the hand unmarks them all, then takes a's.
        d = CipherState("aes-256-gcm", bytes([3]) * 32)
        self.assertIsNone(a._aead)
        b.seal(b"x")
        e = CipherState("aes-256-gcm", bytes([4]) * 32)  # b marked again: c goes
        self.assertIsNotNone(b._aead)
        self.assertIsNone(c._aead)
        self.assertIsNotNone(d._aead)
        self.assertIsNotNone(e._aead)

    def test_rekey_keeps_or_rebuilds(self) -> None:
        sender, receiver = CipherState("aes-256-gcm", SECRET), CipherState("aes-256-gcm", SECRET)
        others = [CipherState("aes-256-gcm", bytes([i]) * 32) for i in range(3)]
        self.assertIsNone(sender._aead)  # evicted by the others
        for state in (sender, receiver):
            state.rekey()
        record = sender.seal(b"<a/>")
        self.assertEqual(receiver.open(record[:4], record[4:]), b"<a/>")
        expected = CipherState("aes-256-gcm", next_traffic_secret(SECRET))
        self.assertEqual(expected.seal(b"<a/>"), record)
        self.assertLessEqual(len(self.ring), 3)
        del others

    def test_gone_states_free_their_slots(self) -> None:
        import gc

        for i in range(3):
            CipherState("aes-256-gcm", bytes([i]) * 32)
        gc.collect()
        self.assertEqual(len(self.ring), 0)
        kept = [CipherState("aes-256-gcm", bytes([i]) * 32) for i in range(3)]
        self.assertTrue(all(s._aead is not None for s in kept))

    def test_bad_key_length_fails_at_once(self) -> None:
        self.assertRaises(ValueError, CipherState.from_key_iv, "aes-256-gcm", bytes(7), bytes(12))
