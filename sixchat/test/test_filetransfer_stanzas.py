"""
Tests for L{sixchat.filetransfer.stanzas}: the §8.7 stanzas and the §11.9 readings of them.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import StanzaError
from sixchat.filetransfer.stanzas import (
    FILE_STANZAS,
    MAX_CHUNK,
    MAX_CHUNK_B64,
    MAX_SIZE,
    Accept,
    Chunk,
    Done,
    FileOffer,
    Reject,
    parse_chunk,
    parse_number,
)
from sixchat.xmlcodec import Element, b64encode, is_xml_text, parse, serialize

HYPOTHESIS = settings(max_examples=100, deadline=None)
DIGEST = hashlib.sha256(b"hello").digest()

ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=64
)
numbers = st.integers(0, MAX_SIZE)
texts = st.text().filter(is_xml_text)


def wire(stanza):  # type: ignore[no-untyped-def]
    """to_element -> serialize -> parse -> from_element, by tag."""
    element = parse(serialize(stanza.to_element()))
    return FILE_STANZAS[element.tag].from_element(element)


def refused(xml: bytes) -> StanzaError:
    element = parse(xml)
    try:
        FILE_STANZAS[element.tag].from_element(element)
    except StanzaError as e:
        return e
    raise AssertionError(f"{xml!r} was accepted")


class RoundTripTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(ids, texts, numbers, st.binary(min_size=32, max_size=32), st.none() | texts)
    def test_file(self, sid: str, name: str, size: int, digest: bytes, mime: str | None) -> None:
        offer = FileOffer(sid, name, size, digest, mime)
        self.assertEqual(wire(offer), offer)

    @HYPOTHESIS
    @given(ids, texts, numbers, st.binary(min_size=32, max_size=32), st.none() | texts, texts)
    def test_file_handed_on(
        self, sid: str, name: str, size: int, digest: bytes, mime: str | None, origin: str
    ) -> None:
        """The own-device sync extension's C{from} (docs/protocol.md 8.6) travels as is."""
        offer = FileOffer(sid, name, size, digest, mime, origin)
        self.assertEqual(wire(offer), offer)

    @HYPOTHESIS
    @given(ids, texts, numbers, st.binary(min_size=32, max_size=32), st.none() | texts, texts)
    def test_outgoing_file_handed_on(
        self, sid: str, name: str, size: int, digest: bytes, mime: str | None, to: str
    ) -> None:
        """The own-device sync extension's C{to} (docs/protocol.md 8.6) travels as is."""
        offer = FileOffer(sid, name, size, digest, mime, None, to)
        self.assertEqual(wire(offer), offer)

    def test_to_is_written_last(self) -> None:
        offer = FileOffer("f1", "a", 1, DIGEST, "text/plain", None, "bob@example.com")
        self.assertEqual(
            serialize(offer.to_element()),
            b'<file id="f1" name="a" size="1" sha256="'
            + b64encode(DIGEST).encode()
            + b'" mime="text/plain" to="bob@example.com"/>',
        )

    def test_from_is_written_last(self) -> None:
        offer = FileOffer("f1", "a", 1, DIGEST, None, "bob@example.com")
        self.assertEqual(
            serialize(offer.to_element()),
            b'<file id="f1" name="a" size="1" sha256="'
            + b64encode(DIGEST).encode()
            + b'" from="bob@example.com"/>',
        )

    @HYPOTHESIS
    @given(ids, numbers, st.binary(max_size=MAX_CHUNK))
    def test_accept_chunk(self, sid: str, offset: int, data: bytes) -> None:
        self.assertEqual(wire(Accept(sid, offset)), Accept(sid, offset))
        self.assertEqual(wire(Chunk(sid, offset, data)), Chunk(sid, offset, data))

    @HYPOTHESIS
    @given(ids, texts)
    def test_done_reject(self, sid: str, reason: str) -> None:
        self.assertEqual(wire(Done(sid)), Done(sid))
        self.assertEqual(wire(Reject(sid, reason)), Reject(sid, reason))

    def test_the_spec_example(self) -> None:
        offer = FileOffer("f1", "report.pdf", 123456, DIGEST, "application/pdf")
        self.assertEqual(
            serialize(offer.to_element()),
            b'<file id="f1" name="report.pdf" size="123456" sha256="'
            + b64encode(DIGEST).encode()
            + b'" mime="application/pdf"/>',
        )
        self.assertEqual(serialize(Accept("f1", 0).to_element()), b'<accept id="f1" offset="0"/>')
        self.assertEqual(
            serialize(Chunk("f1", 0, b"ab").to_element()), b'<chunk id="f1" offset="0">YWI=</chunk>'
        )
        self.assertEqual(serialize(Done("f1").to_element()), b'<done id="f1"/>')
        self.assertEqual(
            serialize(Reject("f1", "sha256_mismatch").to_element()),
            b'<reject id="f1" reason="sha256_mismatch"/>',
        )

    def test_a_full_chunk_fits_one_record(self) -> None:
        longest = Chunk("x" * 64, MAX_SIZE, b"\xff" * MAX_CHUNK)
        self.assertLess(len(serialize(longest.to_element())), 65_536)

    def test_unknown_attributes_and_children_are_ignored(self) -> None:
        """§3 forward compatibility; base64 is read from character data (§11.10)."""
        chunk = parse(
            b'<chunk id="f1" offset="3" x="y"><!-- c --><future/>YW<![CDATA[I=]]></chunk>'
        )
        self.assertEqual(Chunk.from_element(chunk), Chunk("f1", 3, b"ab"))
        offer = parse(
            b'<file id="f1" name="a" size="1" sha256="'
            + b64encode(DIGEST).encode()
            + b'" new="1"/>'
        )
        self.assertEqual(FileOffer.from_element(offer), FileOffer("f1", "a", 1, DIGEST))


class NumberTests(SynchronousTestCase):
    def test_digits_only(self) -> None:
        self.assertEqual(parse_number("0"), 0)
        self.assertEqual(parse_number("007"), 7)
        self.assertEqual(parse_number(str(MAX_SIZE)), MAX_SIZE)
        for bad in (
            None,
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "0x10",
            "١",
            str(MAX_SIZE + 1),
            "9" * 20,
        ):
            self.assertIsNone(parse_number(bad), bad)

    @HYPOTHESIS
    @given(st.text(max_size=25))
    def test_never_raises(self, text: str) -> None:
        number = parse_number(text)
        if number is not None:
            self.assertEqual(str(number), text.lstrip("0") or "0")


class RefusalTests(SynchronousTestCase):
    """After the handshake a missing or malformed attribute is error bad_request (§11.2)."""

    sha = b64encode(DIGEST).encode()

    def test_file_requires_id_name_size_sha256(self) -> None:
        good = b' name="a" size="1" sha256="' + self.sha + b'"'
        self.assertEqual(
            (refused(b"<file" + good + b"/>").reason, refused(b"<file" + good + b"/>").ref),
            ("bad_request", None),
        )
        self.assertEqual(refused(b'<file id="bad id"' + good + b"/>").ref, None)
        for xml in (
            b'<file id="f1" size="1" sha256="' + self.sha + b'"/>',
            b'<file id="f1" name="a" sha256="' + self.sha + b'"/>',
            b'<file id="f1" name="a" size="1"/>',
            b'<file id="f1" name="a" size="-1" sha256="' + self.sha + b'"/>',
            b'<file id="f1" name="a" size="1" sha256="not base64!"/>',
            b'<file id="f1" name="a" size="1" sha256="' + b64encode(b"short").encode() + b'"/>',
        ):
            error = refused(xml)
            self.assertEqual((error.reason, error.ref), ("bad_request", "f1"), xml)

    def test_accept_chunk_done_reject_need_valid_ids(self) -> None:
        for xml in (
            b'<accept offset="0"/>',
            b'<accept id="" offset="0"/>',
            b'<chunk id="a/b" offset="0">YQ==</chunk>',
            b"<done/>",
            b'<reject id="' + b"x" * 65 + b'" reason="busy"/>',
        ):
            error = refused(xml)
            self.assertEqual((error.reason, error.ref), ("bad_request", None), xml)

    def test_accept_and_chunk_need_an_offset(self) -> None:
        for xml in (
            b'<accept id="f1"/>',
            b'<accept id="f1" offset="x"/>',
            b'<chunk id="f1">YQ==</chunk>',
        ):
            error = refused(xml)
            self.assertEqual((error.reason, error.ref), ("bad_request", "f1"), xml)

    def test_reject_needs_a_reason(self) -> None:
        error = refused(b'<reject id="f1"/>')
        self.assertEqual((error.reason, error.ref), ("bad_request", "f1"))

    def test_invalid_base64_in_a_chunk(self) -> None:
        for text in (b"YQ", b"Y Q==", b"YQ==\n", b"!!!!"):
            error = refused(b'<chunk id="f1" offset="0">' + text + b"</chunk>")
            self.assertEqual((error.reason, error.ref), ("bad_request", "f1"), text)

    def test_oversize_chunks_are_too_large(self) -> None:
        """§11.9: over 32,768 bytes of data is error too_large, however it is spelt."""
        for data in (b"\0" * (MAX_CHUNK + 1), b"\0" * (MAX_CHUNK + 2), b"\0" * (MAX_CHUNK * 4)):
            xml = b'<chunk id="f1" offset="0">' + b64encode(data).encode() + b"</chunk>"
            error = refused(xml)
            self.assertEqual((error.reason, error.ref), ("too_large", "f1"))
        # The longest base64 text that may still decode to too many bytes (no padding).
        self.assertEqual(len(b64encode(b"\0" * MAX_CHUNK)), MAX_CHUNK_B64)
        error = refused(b'<chunk id="f1" offset="0">' + b"A" * MAX_CHUNK_B64 + b"</chunk>")
        self.assertEqual(error.reason, "too_large")
        # Even garbage is too_large before it is decoded at all.
        error = refused(b'<chunk id="f1" offset="0">' + b"!" * (MAX_CHUNK_B64 + 1) + b"</chunk>")
        self.assertEqual(error.reason, "too_large")

    @HYPOTHESIS
    @given(
        st.sampled_from(sorted(FILE_STANZAS)),
        st.dictionaries(
            st.sampled_from(["id", "name", "size", "sha256", "offset", "reason", "mime"]), texts
        ),
        texts,
    )
    def test_arbitrary_attributes_parse_or_are_refused(
        self, tag: str, attrs: dict[str, str], text: str
    ) -> None:
        """Whatever the values, parsing gives a stanza or a StanzaError, nothing else."""
        element = parse(serialize(Element(tag, attrs, text=text)))
        try:
            stanza = FILE_STANZAS[tag].from_element(element)
        except StanzaError as e:
            self.assertIn(e.reason, ("bad_request", "too_large"))
        else:
            self.assertEqual(wire(stanza), stanza)


class FastPathTests(SynchronousTestCase):
    """The chunk shortcuts are exact: the same bytes out, the same chunk (or none) in."""

    @HYPOTHESIS
    @given(ids | texts, st.integers(0, MAX_SIZE + 10), st.binary(max_size=2 * MAX_CHUNK))
    def test_serialized_is_serialize_of_the_element(
        self, sid: str, offset: int, data: bytes
    ) -> None:
        chunk = Chunk(sid, offset, data)
        self.assertEqual(chunk.serialized(), serialize(chunk.to_element()))

    @HYPOTHESIS
    @given(
        ids,
        st.integers(0, MAX_SIZE),
        st.binary(max_size=MAX_CHUNK + 3),
        st.sampled_from(["none", "byte", "insert", "truncate", "prefix", "suffix"]),
        st.integers(0, 2**16),
        st.sampled_from([b"<", b"&amp;", b" ", b"=", b"A", b"\x00", b"\xc3", b'"', b"!--"]),
    )
    def test_parse_chunk_agrees_with_the_generic_path(
        self, sid: str, offset: int, data: bytes, how: str, where: int, junk: bytes
    ) -> None:
        wire_bytes = Chunk(sid, offset, data).serialized()
        i = where % (len(wire_bytes) + 1)
        if how == "byte" and i < len(wire_bytes):
            wire_bytes = wire_bytes[:i] + junk[:1] + wire_bytes[i + 1 :]
        elif how == "insert":
            wire_bytes = wire_bytes[:i] + junk + wire_bytes[i:]
        elif how == "truncate":
            wire_bytes = wire_bytes[:i]
        elif how == "prefix":
            wire_bytes = junk + wire_bytes
        elif how == "suffix":
            wire_bytes = wire_bytes + junk
        fast = parse_chunk(wire_bytes)
        if fast is None:
            return  # the generic path decides (errors included)
        element = parse(wire_bytes)
        self.assertEqual(fast, Chunk.from_element(element))

    def test_what_the_fast_path_leaves_to_the_generic_one(self) -> None:
        good = Chunk("f1", 7, b"abc").serialized()
        self.assertEqual(parse_chunk(good), Chunk("f1", 7, b"abc"))
        for xml in (
            b'<chunk offset="7" id="f1">YWJj</chunk>',  # attributes in another order
            b'<chunk id="f1" offset="7">YWJj</chunk >',
            b'<chunk id="f1" offset="7">YW<!-- -->Jj</chunk>',
            b'<chunk id="f1" offset="7">YWJ</chunk>',  # invalid base64: the generic error
            b'<chunk id="f1" offset="99999999999999999999">YWJj</chunk>',
            b'<chunk id="f1" offset="0">' + b"A" * (MAX_CHUNK_B64 + 4) + b"</chunk>",
        ):
            self.assertIsNone(parse_chunk(xml), xml[:60])
