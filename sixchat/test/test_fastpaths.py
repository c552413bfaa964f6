"""
The performance shortcuts are exact shortcuts (docs/benchmarks.md): each is checked against
the generic code it bypasses, which stays the definition of what goes on the wire and what
is accepted from it.

  - L{stanzas.serialize_stanza} is byte for byte C{serialize(stanza.to_element())}, and
    raises where that raises;
  - L{stanzas.parse_application} returns nothing, or exactly what the hardened parser and
    C{from_element} return, for any input — in particular it accepts nothing they refuse;
  - L{stanzas.is_valid_timestamp} accepts exactly what L{stanzas.parse_timestamp} accepts;
  - L{xmlcodec.is_xml_text} and the serializer's C{Char} check are the XML 1.0 C{Char}
    production (the regular expression they replaced);
  - L{xmlcodec.b64decode} accepts exactly the canonical base64 spellings (the pattern and
    padding-bit check it replaced);
  - L{record.RecordReader} frames any chunking of a stream into the same records.
"""

from __future__ import annotations

import base64
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import AlertError, StanzaError
from sixchat.record import SEALED, CipherState, RecordReader, plain_record
from sixchat.stanzas import (
    APPLICATION_STANZAS,
    MAX_BODY_CHARS,
    Message,
    Ping,
    Pong,
    Receipt,
    is_valid_timestamp,
    parse_application,
    parse_timestamp,
    serialize_stanza,
)
from sixchat.xmlcodec import b64decode, is_xml_text, parse, serialize

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


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """C{data} with a few bytes inserted, replaced or removed."""
    pieces = st.sampled_from(
        [b"\r", b"&", b"&amp;", b"<", b">", b"]]>", b"\x00", b"\x01", b"\x0b", b"\xff", b"\xc3",
         b"\xed\xa0\x80", b"\xef\xbf\xbe", b"\xef\xbb\xbf", b'"', b" ", b"<!---->", b"<b/>",
         b' x="1"', b"\t", b"\n", b"/", b"=", b"message", b"body", b"\xc3\xa9"]
    )  # fmt: skip

    def mutate(edits: list[tuple[int, bytes, int]]) -> bytes:
        out = data
        for position, piece, drop in edits:
            at = position % (len(out) + 1)
            out = out[:at] + piece + out[at + drop :]
        return out

    return st.lists(
        st.tuples(st.integers(0, 10_000), pieces, st.integers(0, 2)), min_size=1, max_size=3
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
    @given(_WIRE.flatmap(_mutations))
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
        ).flatmap(lambda p: st.one_of(st.just(p), _mutations(p)))
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

        from sixchat.irp.interfaces import Binding, IdentityState
        from sixchat.irp.messages import Contact, Record
        from sixchat.irp.server import _nodes, record_bytes

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
