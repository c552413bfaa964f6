"""
The performance shortcuts are exact shortcuts (docs/benchmarks.md): each is checked against
the generic code it bypasses, which stays the definition of what goes on the wire and what
is accepted from it.

  - L{stanza_fastpaths.serialize_stanza} is byte for byte C{serialize(stanza.to_element())}, and
    raises where that raises;
  - L{stanza_fastpaths.parse_application} returns nothing, or exactly what the hardened parser and
    C{from_element} return, for any input — in particular it accepts nothing they refuse;
  - L{stanzas.is_valid_timestamp} accepts exactly what L{stanzas.parse_timestamp} accepts;
  - L{xmlcodec.is_xml_text} and the serializer's C{Char} check are the XML 1.0 C{Char}
    production (the regular expression they replaced);
  - L{xmlcodec.b64decode} accepts exactly the canonical base64 spellings (the pattern and
    padding-bit check it replaced);
  - L{record.RecordReader} frames any chunking of a stream into the same records, and its
    per-chunk L{record.RecordReader.sealed_records} into the same records and errors as
    L{record.RecordReader.next_record} alone;
  - L{connection.Connection.receive_data}, which handles an established session's SEALED
    records a chunk at a time, gives the same events, answers and state as the loop that
    passes every record through C{_receive_record};
  - the long-text C{Char} check (one memchr per control) and the body check on decoded
    text agree with the definitions for texts long enough to take them.
"""

from __future__ import annotations

import base64
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.connection import (
    AlertReceived,
    Connection,
    ConnectionFailed,
    Event,
    StanzaReceived,
)
from sixchat.errors import AlertError, StanzaError
from sixchat.record import (
    MAX_PLAINTEXT,
    MAX_SEALED,
    PLAIN,
    SEALED,
    TAG_LEN,
    CipherState,
    RecordReader,
    header,
    plain_record,
)
from sixchat.stanza_fastpaths import (
    parse_application,
    serialize_stanza,
)
from sixchat.stanzas import (
    APPLICATION_STANZAS,
    MAX_BODY_CHARS,
    Message,
    Ping,
    Pong,
    Receipt,
    is_valid_timestamp,
    parse_timestamp,
)
from sixchat.test.test_connection_fuzz import _PLAINTEXTS, handshake
from sixchat.xmlcodec import (
    ascii_text_is_char,
    b64decode,
    encode_checked,
    is_xml_text,
    parse,
    serialize,
)

HYPOTHESIS = settings(max_examples=300, deadline=None)

#: The definitions the fast code replaced.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def _reference_b64decode(text: str) -> bytes:
    if _B64.match(text) is None:
        raise ValueError("invalid base64")
    data = base64.b64decode(text, validate=True)
    if (text[-2:-1] == "=" or text[-1:] == "=") and base64.b64encode(data).decode() != text:
        raise ValueError("invalid base64")
    return data


def _generic(data: bytes) -> object:
    """What the generic receive path makes of a SEALED plaintext: a stanza or an error."""
    try:
        element = parse(data)
    except AlertError as e:
        return ("alert", e.reason)
    cls = APPLICATION_STANZAS.get(element.tag)
    if cls is None:
        return ("unknown", element.tag)
    try:
        return cls.from_element(element)
    except StanzaError as e:
        return ("stanza-error", e.reason)


# Characters that matter to XML, to UTF-8 and to the fast path's exclusions, made frequent.
_TRICKY = st.sampled_from(
    list("\r\n\t &<>\"']];-_.:TZ") + ["]]>", "\x00", "\x01", "\x1f", "\x7f", "\x85", "\ufffe",
    "\uffff", "\ufdd0", "\ud7ff", "\ue000", "\U0001f600", "\U0010ffff", "é"]
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_TRICKY, st.characters()), max_size=30).map("".join),
)
_IDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.text(max_size=70),
)
_TIMES = st.one_of(
    st.just("2026-11-26T00:25:21.123Z"),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,10})?Z?", fullmatch=True
    ),
    st.text(alphabet="0123456789-:.TZtz ", max_size=30),
)
_MESSAGES = st.builds(
    Message,
    _IDS,
    _TIMES,
    _TEXT,
    st.one_of(st.none(), _TEXT),
    st.one_of(st.none(), _IDS),
)
_STANZAS = st.one_of(
    _MESSAGES,
    st.builds(Receipt, _IDS),
    st.builds(Ping, _IDS),
    st.builds(Pong, _IDS),
)


def _long_text(pieces: list[tuple[int, str]], length: int, base: str) -> str:
    """A long filler text (past the memchr threshold) with C{pieces} inserted."""
    text = (base * (length // len(base) + 1))[:length]
    for position, piece in pieces:
        at = position % (len(text) + 1)
        text = text[:at] + piece + text[at:]
    return text


_LONG_TEXTS = st.builds(
    _long_text,
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.one_of(_TRICKY, st.characters(), st.sampled_from(["\ud800", "\udfff"])),
        ),
        max_size=4,
    ),
    st.integers(480, 3000),
    st.sampled_from(["abcdefghij", "a b\tc\nd", "x&y<z>", "é😀a"]),
)


def _outcome(f, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", f(*args))
    except ValueError as e:
        return ("ValueError", type(e).__mro__[-3].__name__)


class SerializeStanzaTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(_STANZAS)
    def test_same_bytes_as_generic(self, stanza: object) -> None:
        fast = _outcome(serialize_stanza, stanza)
        generic = _outcome(lambda s: serialize(s.to_element()), stanza)
        self.assertEqual(fast[0], generic[0])
        if fast[0] == "ok":
            self.assertEqual(fast[1], generic[1])

    def test_examples(self) -> None:
        self.assertEqual(
            serialize_stanza(Message("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", "2026-11-26T00:25:21.123Z",
                                     "Hello, Bob")),  # fmt: skip
            b'<message id="01JD3Q2V9XJ2H6Z7T8K4M5N6P7" ts="2026-11-26T00:25:21.123Z">'
            b"<body>Hello, Bob</body></message>",
        )
        self.assertEqual(
            serialize_stanza(Message("a", "t", "")), b'<message id="a" ts="t"><body/></message>'
        )
        self.assertEqual(
            serialize_stanza(Message("a", "t", "x", "", "r")),
            b'<message id="a" ts="t"><body>x</body><thread/><reply to="r"/></message>',
        )
        self.assertEqual(serialize_stanza(Receipt("x")), b'<receipt id="x"/>')
        self.assertRaises(ValueError, serialize_stanza, Message("a", "t", "\x00"))
        self.assertRaises(ValueError, serialize_stanza, Receipt("\ud800"))


_STANZA_PIECES = [
    b"\r", b"&", b"&amp;", b"<", b">", b"]]>", b"\x00", b"\x01", b"\x0b", b"\xff", b"\xc3",
    b"\xed\xa0\x80", b"\xef\xbf\xbe", b"\xef\xbb\xbf", b'"', b" ", b"<!---->", b"<b/>",
    b' x="1"', b"\t", b"\n", b"/", b"=", b"message", b"body", b"\xc3\xa9",
]  # fmt: skip


def mutations(
    data: bytes, pieces: list[bytes] = _STANZA_PIECES, max_drop: int = 2
) -> st.SearchStrategy[bytes]:
    """C{data} with a few of C{pieces} inserted, or bytes replaced or removed."""
    pieces_st = st.sampled_from(pieces)

    def mutate(edits: list[tuple[int, bytes, int]]) -> bytes:
        out = data
        for position, piece, drop in edits:
            at = position % (len(out) + 1)
            out = out[:at] + piece + out[at + drop :]
        return out

    return st.lists(
        st.tuples(st.integers(0, 10_000), pieces_st, st.integers(0, max_drop)),
        min_size=1,
        max_size=3,
    ).map(mutate)


_WIRE = st.one_of(
    _STANZAS.map(lambda s: _outcome(serialize_stanza, s)).filter(lambda o: o[0] == "ok").map(
        lambda o: o[1]
    ),
)


class ParseApplicationTests(SynchronousTestCase):
    def check(self, data: bytes) -> None:
        fast = parse_application(data)
        if fast is not None:
            self.assertEqual(fast, _generic(data), data)

    @HYPOTHESIS
    @given(_WIRE)
    def test_what_we_send(self, data: bytes) -> None:
        self.check(data)

    @HYPOTHESIS
    @given(_WIRE.flatmap(mutations))
    def test_mutated(self, data: bytes) -> None:
        self.check(data)

    @HYPOTHESIS
    @given(
        st.binary(max_size=120).map(
            lambda b: b'<message id="a" ts="2026-11-26T00:25:21Z"><body>' + b + b"</body></message>"
        )
    )
    def test_arbitrary_body_bytes(self, data: bytes) -> None:
        self.check(data)

    @HYPOTHESIS
    @given(st.binary(max_size=100))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self.check(data)
        self.check(b'<receipt id="' + data)
        self.check(b'<message id="' + data)

    @HYPOTHESIS
    @given(
        _LONG_TEXTS.map(
            lambda t: serialize_stanza(Message("m1", "2026-11-26T00:25:21.123Z", t))
            if is_xml_text(t) else b'<message id="m1" ts="2026-11-26T00:25:21Z"><body>'
            + t.encode("utf-8", "surrogatepass") + b"</body></message>"
        ).flatmap(lambda d: st.one_of(st.just(d), mutations(d)))
    )  # fmt: skip
    def test_long_bodies(self, data: bytes) -> None:
        """Bodies long enough for the memchr checks, as sent and mutated."""
        self.check(data)

    def test_long_body_taken(self) -> None:
        for text in ("a" * 5000, "é" * 3000 + "\n", "&<>" * 1000 + "\t" * 600):
            data = serialize_stanza(Message("m1", "2026-11-26T00:25:21.123Z", text))
            self.assertEqual(parse_application(data), _generic(data))
            self.assertIsNotNone(parse_application(data))

    def test_fast_path_taken_for_plain_messages(self) -> None:
        """The shortcut is used for what we send (else it would buy nothing)."""
        for stanza in (
            Message("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", "2026-11-26T00:25:21.123Z", "Hello, Bob"),
            Message("x", "2026-11-26T00:25:21Z", ""),
            Message("x" * 64, "2026-02-28T23:59:60.123456789Z", "é \U0001f600 \t\n > ' \""),
            Message("m", "2026-11-26T00:25:21Z", "a<b & c>d &amp; &lt;x&gt; ]]>"),
            Receipt("abc"),
            Ping("p-1"),
            Pong("P_2"),
        ):
            data = serialize_stanza(stanza)
            self.assertEqual(parse_application(data), stanza)
            self.assertEqual(_generic(data), stanza)

    def test_left_to_the_generic_path(self) -> None:
        """Everything the shortcut cannot prove equal goes the long way."""
        for data in (
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>a\r\nb</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>a&#38;b</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>a&quot;b</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>a&amp</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>a]]>b</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>\x01</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>\xef\xbf\xbf</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>\xed\xa0\x80</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>\xc3</body></message>',
            b'<message id="a" ts="2026-02-30T00:25:21Z"><body>x</body></message>',
            b'<message id="a" ts="2026-11-26T24:25:21Z"><body>x</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>x</body><thread>t</thread></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z" x="1"><body>x</body></message>',
            b'<message id="a b" ts="2026-11-26T00:25:21Z"><body>x</body></message>',
            b'<message id="' + b"a" * 65 + b'" ts="2026-11-26T00:25:21Z"><body>x</body></message>',
            b'<message id="a" ts="2026-11-26T00:25:21Z"><body>'
            + b"x" * (MAX_BODY_CHARS + 1)
            + b"</body></message>",
            b'<receipt id="a" />',
            b'<receipt id="a"></receipt>',
            b'<receipt id=""/>',
        ):
            self.assertIsNone(parse_application(data), data)


class TimestampTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(_TIMES)
    def test_same_as_parse_timestamp(self, value: str) -> None:
        try:
            parse_timestamp(value)
        except ValueError:
            expected = False
        else:
            expected = True
        self.assertEqual(is_valid_timestamp(value), expected)
        self.assertEqual(is_valid_timestamp(value), expected)  # cached answer


class CharTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(
        st.one_of(
            st.text(), st.lists(st.one_of(_TRICKY, st.characters()), max_size=20).map("".join)
        )
    )
    def test_is_xml_text_is_char(self, text: str) -> None:
        self.assertEqual(is_xml_text(text), _NOT_XML_CHAR.search(text) is None)


class LongCharTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(_LONG_TEXTS)
    def test_is_xml_text_is_char(self, text: str) -> None:
        self.assertEqual(is_xml_text(text), _NOT_XML_CHAR.search(text) is None)

    @HYPOTHESIS
    @given(_LONG_TEXTS)
    def test_encode_checked(self, text: str) -> None:
        expected = (
            ("ok", text.encode("utf-8")) if _NOT_XML_CHAR.search(text) is None
            else ("ValueError", "Exception")
        )  # fmt: skip
        self.assertEqual(_outcome(encode_checked, text), expected)

    @HYPOTHESIS
    @given(st.text(alphabet=st.characters(max_codepoint=0x7F), min_size=400, max_size=700))
    def test_ascii_both_ways(self, text: str) -> None:
        """Either side of the threshold, the ASCII check is the Char production."""
        data = text.encode("ascii")
        self.assertEqual(ascii_text_is_char(text, data), _NOT_XML_CHAR.search(text) is None)

    def test_each_control_found_at_any_length(self) -> None:
        for length in (0, 100, 511, 512, 5000):
            for code in range(0x20):
                text = "a" * length + chr(code) + "b"
                expected = code in (0x09, 0x0A, 0x0D)
                self.assertEqual(is_xml_text(text), expected, (length, code))
                self.assertEqual(ascii_text_is_char(text, text.encode()), expected)


class Base64Tests(SynchronousTestCase):
    @HYPOTHESIS
    @given(st.one_of(
        st.text(alphabet="AQZaz09+/=-_ \n\x00é", max_size=16),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    ))  # fmt: skip
    def test_same_as_pattern(self, text: str) -> None:
        self.assertEqual(_outcome(b64decode, text)[0], _outcome(_reference_b64decode, text)[0])
        if _outcome(b64decode, text)[0] == "ok":
            self.assertEqual(b64decode(text), _reference_b64decode(text))


class RecordReaderTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(
        st.lists(st.integers(1, 3000), min_size=1, max_size=8),
        st.lists(st.integers(1, 5000), max_size=12),
    )
    def test_any_chunking(self, sizes: list[int], cuts: list[int]) -> None:
        state = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
        stream = plain_record(b"<hello/>") + b"".join(state.seal(os.urandom(n)) for n in sizes)
        expected = _frame(stream, [len(stream)])
        self.assertEqual(_frame(stream, cuts), expected)
        self.assertEqual(len(expected), len(sizes) + 1)

    def test_large_sealed_payload_is_a_view_of_the_same_bytes(self) -> None:
        state = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
        record = state.seal(b"x" * 20_000)
        reader = RecordReader()
        reader.feed(record)
        kind, head, payload = reader.next_record(True)  # type: ignore[misc]
        self.assertEqual(kind, SEALED)
        self.assertEqual(head + bytes(payload), record)
        opener = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
        self.assertEqual(opener.open(head, payload), b"x" * 20_000)

    def test_keeps_only_the_unfinished_record(self) -> None:
        state = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
        two = state.seal(b"a" * 100) + state.seal(b"b" * 100)
        reader = RecordReader()
        reader.feed(two[:-10])
        self.assertIsNotNone(reader.next_record(True))
        self.assertIsNone(reader.next_record(True))
        self.assertEqual(reader.buffered, len(two) // 2 - 10)


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def _frame_outcome(stream: bytes, cuts: list[int], per_chunk: bool) -> list[object]:
    """Records and the error they end with, framed one at a time or a chunk at a time."""
    reader = RecordReader()
    out: list[object] = []
    try:
        for chunk in _chunks(stream, cuts):
            reader.feed(chunk)
            while True:
                if per_chunk:
                    out += [(SEALED, bytes(h), bytes(p)) for h, p in reader.sealed_records()]
                record = reader.next_record(True)
                if record is None:
                    break
                out.append((record[0], bytes(record[1]), bytes(record[2])))
    except AlertError as e:
        out.append(("error", type(e).__name__))
    out.append(("buffered", reader.buffered))
    return out


def _record_pieces() -> st.SearchStrategy[bytes]:
    state = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
    return st.one_of(
        st.integers(1, 3000).map(lambda n: state.seal(bytes(n))),
        st.integers(1, 300).map(lambda n: plain_record(b"<a/>" * n)),
        st.sampled_from([
            header(SEALED, 0), header(SEALED, TAG_LEN - 1), header(SEALED, MAX_SEALED + 1),
            header(PLAIN, 0), header(PLAIN, MAX_PLAINTEXT + 1), b"\x03\x00\x00\x10",
            header(SEALED, MAX_SEALED), header(SEALED, TAG_LEN) + bytes(TAG_LEN),
        ]),
        st.binary(max_size=6),
    )  # fmt: skip


class SealedRecordsTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(st.lists(_record_pieces(), min_size=1, max_size=8),
           st.lists(st.integers(1, 8000), max_size=10))  # fmt: skip
    def test_same_as_one_at_a_time(self, pieces: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(pieces)
        self.assertEqual(
            _frame_outcome(stream, cuts, per_chunk=True),
            _frame_outcome(stream, cuts, per_chunk=False),
        )

    def test_stops_before_the_refused_header(self) -> None:
        state = CipherState.from_key_iv("aes-256-gcm", bytes(32), bytes(12))
        good = state.seal(b"x" * 10)
        reader = RecordReader()
        reader.feed(good + header(SEALED, MAX_SEALED + 1))
        self.assertEqual([bytes(h + p) for h, p in reader.sealed_records()], [good])
        self.assertRaises(AlertError, reader.next_record, True)


def _frame(stream: bytes, cuts: list[int]) -> list[tuple[int, bytes, bytes]]:
    reader = RecordReader()
    out = []
    position = 0
    chunks = []
    for cut in cuts:
        if position >= len(stream):
            break
        chunks.append(stream[position : position + cut])
        position += cut
    if position < len(stream):
        chunks.append(stream[position:])
    for chunk in chunks:
        reader.feed(chunk)
        while (record := reader.next_record(True)) is not None:
            kind, head, payload = record
            out.append((kind, bytes(head), bytes(payload)))
    return out


# ---------------------------------------------------------------------------------------------
# The registry's lookups (sixchat.irp.server)


def _generic_request(payload: bytes) -> object:
    from sixchat.irp.messages import IRPError, parse_request

    try:
        return parse_request(parse(payload), allow_private=True)
    except (AlertError, IRPError) as e:
        return ("error", type(e).__name__)


_IDENTITIES = st.one_of(
    st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,10}\.[a-z]{2,5}", fullmatch=True),
    st.text(alphabet="ab@.-_+\"&<> \t\u00e9", max_size=20),
)


class RegistryFastPathTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(
        st.one_of(
            st.builds(
                lambda rid, identity: b'<lookup id="' + rid.encode() + b'" identity="'
                + identity.encode() + b'"/>',
                _IDS,
                _IDENTITIES,
            ),
            st.binary(max_size=60).map(lambda b: b'<lookup id="1" identity="' + b + b'"/>'),
        ).flatmap(lambda p: st.one_of(st.just(p), mutations(p)))
    )  # fmt: skip
    def test_lookup_same_as_generic(self, payload: bytes) -> None:
        from sixchat.irp.server import fast_lookup

        fast = fast_lookup(payload)
        if fast is not None:
            self.assertEqual(fast, _generic_request(payload), payload)

    def test_lookup_taken(self) -> None:
        from sixchat.irp.messages import Lookup
        from sixchat.irp.server import fast_lookup
        from sixchat.xmlcodec import serialize as ser

        payload = ser(Lookup("17", "bob@example.com").to_element())
        self.assertEqual(fast_lookup(payload), Lookup("17", "bob@example.com"))
        self.assertIsNone(fast_lookup(b'<lookup id="1" identity="bob"/>'))  # invalid: long way
        self.assertIsNone(fast_lookup(b'<lookup identity="a@b.c" id="1"/>'))

    @HYPOTHESIS
    @given(
        _IDS,
        _TEXT,
        st.lists(
            st.tuples(
                _TEXT,
                st.lists(st.tuples(_TEXT, st.integers(0, 70000)), max_size=3),
                st.binary(max_size=20),
                st.datetimes(),
                st.datetimes(),
            ),
            max_size=3,
        ),
        st.one_of(st.none(), st.binary(max_size=20)),
    )
    def test_record_same_bytes_as_generic(self, rid, identity, nodes, cert) -> None:  # type: ignore[no-untyped-def]
        from datetime import UTC

        from sixchat.irp.messages import Contact, Record
        from sixchat.irp.server.fastpaths import _nodes, record_bytes
        from sixchat.irp.store.interfaces import Binding, IdentityState

        bindings = tuple(
            Binding(name, tuple(Contact(h, p) for h, p in contacts), c, 1,
                    until.replace(tzinfo=UTC), updated.replace(tzinfo=UTC))  # fmt: skip
            for name, contacts, c, until, updated in nodes
        )
        state = IdentityState(identity, bindings, cert)
        fast = _outcome(record_bytes, state, rid)
        generic = _outcome(
            lambda st_, r: serialize(Record(st_.identity, _nodes(st_), st_.cert, r).to_element()),
            state,
            rid,
        )
        self.assertEqual(fast, generic)


    def test_record_memo_by_object(self) -> None:
        """
        The tail remembered by the state object answers that object only (an equal or a
        changed state gets its own, right bytes), and stays bounded.
        """
        from datetime import UTC, datetime

        from sixchat.irp.messages import Contact, Record
        from sixchat.irp.server import fastpaths
        from sixchat.irp.store.interfaces import Binding, IdentityState

        def generic(state: IdentityState, rid: str) -> bytes:
            nodes = fastpaths._nodes(state)
            return serialize(Record(state.identity, nodes, state.cert, rid).to_element())

        t = datetime(2026, 12, 7, tzinfo=UTC)
        one = IdentityState("a@example.com", (Binding("n", (Contact("192.0.2.1", 1),), b"c",
                                                       1, t, t),), None)  # fmt: skip
        moved = IdentityState("a@example.com", (Binding("n", (Contact("192.0.2.2", 1),),
                                                         b"c", 1, t, t),), None)  # fmt: skip
        for state, rid in ((one, "1"), (one, "2"), (moved, "3"), (one, "4")):
            self.assertEqual(fastpaths.record_bytes(state, rid), generic(state, rid))
        self.assertIs(fastpaths._TAILS[id(one)][0], one)
        for i in range(fastpaths._TAILS_KEPT + 10):
            fastpaths.record_bytes(IdentityState(f"u{i}@example.com"), "x")
        self.assertLessEqual(len(fastpaths._TAILS), fastpaths._TAILS_KEPT)


# ---------------------------------------------------------------------------------------------
# The receive loop of an established session (sixchat.connection)


class _OneRecordAtATime(Connection):
    """The receive loop without the per-chunk path: every record through _receive_record."""

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state == "closed":
            return []
        self._reader.feed(data)
        events: list[Event] = []
        try:
            while self.state != "closed":
                record = self._reader.next_record(self._read is not None)
                if record is None:
                    break
                self.records_received += 1
                self._receive_record(*record, events)
        except AlertError as error:
            events.append(self._fatal(error))
        if self.state == "closed":
            self._reader = RecordReader()
        return events


def _comparable(event: object) -> object:
    """Events with their exceptions reduced to what they say (exceptions compare by identity)."""
    if isinstance(event, ConnectionFailed):
        error = event.error
        return ("failed", type(error).__name__, error.reason, str(error), event.truncated)
    if isinstance(event, AlertReceived):
        return ("alert", event.alert.reason, event.alert.text)
    return event


_SESSION_PLAINTEXTS = st.one_of(
    _PLAINTEXTS,
    _WIRE,
    st.sampled_from([b"<rekey/>", b"<close/>", b'<ping id="p1"/>', b"<typing state='paused'/>",
                     b'<error ref="m1" reason="bad_request"/>', b"<hello/>", b"<x id='1'/>"]),
)  # fmt: skip


class ReceiveLoopTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.tuples(_SESSION_PLAINTEXTS, st.integers(0, 3)), min_size=1, max_size=8),
        st.sampled_from([b"", b"\x03\x00\x00\x10", header(SEALED, MAX_SEALED + 1), b"\x02\x00"]),
        st.lists(st.integers(1, 400), max_size=8),
        st.sampled_from(["initiator", "responder"]),
    )
    def test_same_as_one_record_at_a_time(
        self, plaintexts: list[tuple[bytes, int]], tail: bytes, cuts: list[int], role: str
    ) -> None:
        outcomes = []
        for cls in (Connection, _OneRecordAtATime):
            initiator, responder = handshake()
            target, peer = (initiator, responder) if role == "initiator" else (responder, initiator)
            target.__class__ = cls
            write = peer._write
            assert write is not None
            stream = b""
            for plaintext, padding in plaintexts:
                stream += write.seal(plaintext + b" " * padding)
                if plaintext == b"<rekey/>":
                    write.rekey()
            events = []
            for chunk in _chunks(stream + tail, cuts):
                events += target.receive_data(chunk)
            outcomes.append((
                [_comparable(e) for e in events], target.data_to_send(), target.state,
                target.records_received, target.buffered, target.peer_closed,
            ))  # fmt: skip
        self.assertEqual(outcomes[0], outcomes[1])

    def test_fast_loop_used(self) -> None:
        """An established session's records do go the per-chunk way."""
        initiator, responder = handshake()
        initiator.send(Message("m1", "2026-11-26T00:25:21.123Z", "hi"))
        initiator.send(Ping("p1"))
        calls = []
        original = responder._receive_sealed

        def spy(records, events):  # type: ignore[no-untyped-def]
            calls.append(len(records))
            return original(records, events)

        responder._receive_sealed = spy  # type: ignore[method-assign]
        events = responder.receive_data(initiator.data_to_send())
        self.assertEqual(calls[0], 2)
        self.assertEqual(events, [StanzaReceived(Message("m1", "2026-11-26T00:25:21.123Z", "hi"))])
        self.assertEqual(initiator.receive_data(responder.data_to_send()),
                         [StanzaReceived(Pong("p1"))])  # fmt: skip
