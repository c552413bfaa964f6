"""
Tests for L{sixchat.xmlcodec}: the hardened one-element XML profile of spec §3 and its strict
base64.
"""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat import xmlcodec
from sixchat.errors import AlertError, ProtocolError
from sixchat.xmlcodec import Element, b64decode, b64encode, is_xml_text, parse, serialize

HYPOTHESIS = settings(max_examples=100, deadline=None)


class RefusedInputTests(SynchronousTestCase):
    """Everything §3 makes a C{protocol_error} is refused with L{ProtocolError}."""

    def assertRefused(self, data: bytes) -> ProtocolError:
        error = self.assertRaises(ProtocolError, parse, data)
        self.assertEqual(error.reason, "protocol_error")
        return error

    def test_xml_declaration(self) -> None:
        self.assertRefused(b'<?xml version="1.0"?><a/>')
        self.assertRefused(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><a/>')

    def test_xml_declaration_with_other_encoding(self) -> None:
        self.assertRefused(b'<?xml version="1.0" encoding="ISO-8859-1"?><a>\xe9</a>')

    def test_utf8_bom(self) -> None:
        self.assertRefused(b"\xef\xbb\xbf<a/>")

    def test_utf16_le_bom(self) -> None:
        self.assertRefused("\ufeff<a/>".encode("utf-16-le"))

    def test_utf16_be_bom(self) -> None:
        self.assertRefused("\ufeff<a/>".encode("utf-16-be"))

    def test_utf16_without_bom(self) -> None:
        """
        expat sniffs UTF-16 from a NUL in the first two bytes even though UTF-8 is forced;
        a UTF-16 payload is not UTF-8 and must be refused.
        """
        self.assertRefused("<a>hi</a>".encode("utf-16-le"))
        self.assertRefused("<a>hi</a>".encode("utf-16-be"))
        self.assertRefused(" <a/>".encode("utf-16-le"))

    def test_utf32_bom(self) -> None:
        self.assertRefused("<a/>".encode("utf-32"))

    def test_doctype(self) -> None:
        self.assertRefused(b"<!DOCTYPE a><a/>")
        self.assertRefused(b'<!DOCTYPE a SYSTEM "http://example.com/a.dtd"><a/>')
        self.assertRefused(b'<!DOCTYPE a PUBLIC "-//x//y" "a.dtd"><a/>')

    def test_internal_entity(self) -> None:
        self.assertRefused(b'<!DOCTYPE a [<!ENTITY x "...">]><a>&x;</a>')

    def test_billion_laughs(self) -> None:
        lol = (
            b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            b'<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
            b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
            b"]><lolz>&lol3;</lolz>"
        )
        self.assertRefused(lol)

    def test_external_entity(self) -> None:
        self.assertRefused(
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
        )

    def test_parameter_entity(self) -> None:
        self.assertRefused(
            b'<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><a/>'
        )
        self.assertRefused(b'<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd">]><a/>')

    def test_undefined_entity(self) -> None:
        self.assertRefused(b"<a>&foo;</a>")
        self.assertRefused(b'<a b="&foo;"/>')
        self.assertRefused(b"<a>&nbsp;</a>")

    def test_processing_instruction_before_root(self) -> None:
        self.assertRefused(b'<?xml-stylesheet href="x"?><a/>')
        self.assertRefused(b"<?pi data?><a/>")

    def test_processing_instruction_inside_root(self) -> None:
        self.assertRefused(b"<a><?pi data?></a>")
        self.assertRefused(b"<a><b>x<?pi?></b></a>")

    def test_processing_instruction_after_root(self) -> None:
        self.assertRefused(b"<a/><?pi data?>")
        self.assertRefused(b"<a/>\n<?pi?>\n")

    def test_two_roots(self) -> None:
        self.assertRefused(b"<a/><b/>")
        self.assertRefused(b"<a/><a/>")
        self.assertRefused(b"<a></a> <!-- c --> <b/>")

    def test_text_after_root(self) -> None:
        self.assertRefused(b"<a/>x")
        self.assertRefused(b"<a/>  x  ")

    def test_text_before_root(self) -> None:
        self.assertRefused(b"x<a/>")

    def test_invalid_utf8(self) -> None:
        self.assertRefused(b"<a>\xff</a>")
        self.assertRefused(b"<a>\x80</a>")
        self.assertRefused(b"<a>\xc3</a>")  # truncated two-byte sequence
        self.assertRefused(b'<a b="\xfe"/>')

    def test_overlong_utf8(self) -> None:
        # '<' (U+003C) as an overlong two-byte sequence, and U+0000 as C0 80.
        self.assertRefused(b"<a>\xc0\xbc</a>")
        self.assertRefused(b"<a>\xc0\x80</a>")
        self.assertRefused(b"<a>\xe0\x80\xaf</a>")

    def test_encoded_surrogates(self) -> None:
        self.assertRefused(b"<a>\xed\xa0\x80</a>")  # U+D800
        self.assertRefused(b"<a>\xed\xbf\xbf</a>")  # U+DFFF
        self.assertRefused(b"<a>\xed\xa0\xbd\xed\xb8\x80</a>")  # CESU-8 pair

    def test_non_char_bytes(self) -> None:
        self.assertRefused(b"<a>\x00</a>")
        self.assertRefused(b"<a>\x01</a>")
        self.assertRefused(b"<a>\xef\xbf\xbe</a>")  # U+FFFE

    def test_prefixed_element(self) -> None:
        self.assertRefused(b"<x:a/>")
        self.assertRefused(b"<a><x:b/></a>")

    def test_prefixed_attribute(self) -> None:
        self.assertRefused(b'<a x:b="1"/>')
        self.assertRefused(b'<a xml:lang="en"/>')

    def test_xmlns_attribute(self) -> None:
        self.assertRefused(b'<a xmlns="urn:x"/>')
        self.assertRefused(b'<a xmlns=""/>')
        self.assertRefused(b'<a><b xmlns="urn:x"/></a>')

    def test_xmlns_prefix_attribute(self) -> None:
        self.assertRefused(b'<a xmlns:x="urn:x"/>')

    def test_char_ref_to_non_char(self) -> None:
        for ref in (b"&#0;", b"&#x0;", b"&#1;", b"&#xFFFE;", b"&#xFFFF;", b"&#xD800;"):
            self.assertRefused(b"<a>" + ref + b"</a>")
            self.assertRefused(b'<a b="' + ref + b'"/>')

    def test_char_ref_out_of_range(self) -> None:
        self.assertRefused(b"<a>&#x110000;</a>")

    def test_unclosed(self) -> None:
        self.assertRefused(b"<a>")
        self.assertRefused(b"<a><b></b>")
        self.assertRefused(b"<a")

    def test_mismatched_tag(self) -> None:
        self.assertRefused(b"<a></b>")

    def test_duplicate_attribute(self) -> None:
        self.assertRefused(b'<a b="1" b="2"/>')

    def test_empty(self) -> None:
        self.assertRefused(b"")

    def test_whitespace_only(self) -> None:
        self.assertRefused(b"  \n\t\r ")

    def test_comment_only(self) -> None:
        self.assertRefused(b"<!-- nothing -->")

    def test_error_is_alert(self) -> None:
        """A refusal is a fatal alert with the protocol_error reason."""
        error = self.assertRefused(b"<a>")
        self.assertIsInstance(error, AlertError)


class AcceptedInputTests(SynchronousTestCase):
    def test_simple(self) -> None:
        element = parse(b'<hello versions="1" random="AA=="/>')
        self.assertEqual(element.tag, "hello")
        self.assertEqual(element.attrs, {"versions": "1", "random": "AA=="})
        self.assertEqual(element.children, [])
        self.assertEqual(element.text, "")

    def test_whitespace_and_comments_around_root(self) -> None:
        element = parse(b" \n\t<!-- before -->\r\n<a>x</a>\n<!-- after -->  \n")
        self.assertEqual(element, Element("a", text="x"))

    def test_comments_removed_from_text(self) -> None:
        element = parse(b"<a>one<!-- a comment -->two</a>")
        self.assertEqual(element.text, "onetwo")

    def test_cdata_unwrapped(self) -> None:
        element = parse(b"<a>x<![CDATA[<b>&amp;]]>y</a>")
        self.assertEqual(element.text, "x<b>&amp;y")
        self.assertEqual(element.children, [])

    def test_cdata_with_comment_and_refs(self) -> None:
        element = parse(b"<body><![CDATA[a]]><!--c-->&amp;<![CDATA[]]]]><![CDATA[>]]></body>")
        self.assertEqual(element.text, "a&]]>")

    def test_predefined_entities(self) -> None:
        element = parse(b'<a b="&lt;&gt;&amp;&quot;&apos;">&lt;&gt;&amp;&quot;&apos;</a>')
        self.assertEqual(element.text, "<>&\"'")
        self.assertEqual(element.get("b"), "<>&\"'")

    def test_character_references(self) -> None:
        element = parse(b'<a v="&#9;&#10;&#13;&#x41;">&#65;&#x42;&#x1F600;&#13;&#xD7FF;</a>')
        self.assertEqual(element.text, "AB\U0001f600\r\ud7ff")
        self.assertEqual(element.get("v"), "\t\n\rA")

    def test_line_end_normalisation(self) -> None:
        """Literal CR LF reads as LF (XML 1.0); only &#13; carries a CR."""
        self.assertEqual(parse(b"<a>x\r\ny\rz</a>").text, "x\ny\nz")

    def test_attribute_whitespace_normalisation(self) -> None:
        """Literal TAB/LF in an attribute read as spaces; references survive."""
        self.assertEqual(parse(b'<a v="1\t2\n3"/>').get("v"), "1 2 3")
        self.assertEqual(parse(b'<a v="1&#9;2&#10;3"/>').get("v"), "1\t2\n3")

    def test_non_ascii(self) -> None:
        element = parse("<a n=\"é\">Grüße \U0001f600</a>".encode())
        self.assertEqual(element.text, "Grüße \U0001f600")
        self.assertEqual(element.get("n"), "é")

    def test_children_and_text(self) -> None:
        element = parse(b"<a>1<b k='v'>2<c/></b>3<!--x--><b>4</b></a>")
        self.assertEqual(element.text, "13")
        self.assertEqual([c.tag for c in element.children], ["b", "b"])
        first = element.find("b")
        assert first is not None
        self.assertEqual(first.text, "2")
        self.assertEqual(first.get("k"), "v")
        self.assertEqual(first.children, [Element("c")])
        self.assertEqual([b.text for b in element.findall("b")], ["2", "4"])
        self.assertIsNone(element.find("z"))
        self.assertEqual(element.findall("z"), [])
        self.assertEqual([e.tag for e in element.iter()], ["a", "b", "c", "b"])

    def test_attribute_order_kept(self) -> None:
        element = parse(b'<a z="1" b="2" m="3"/>')
        self.assertEqual(list(element.attrs), ["z", "b", "m"])

    def test_get_missing(self) -> None:
        self.assertIsNone(parse(b"<a/>").get("b"))

    def test_names_with_dots_and_dashes(self) -> None:
        element = parse(b'<a-b.c d-e.f="1"/>')
        self.assertEqual(element, Element("a-b.c", {"d-e.f": "1"}))

    def test_root_named_xml(self) -> None:
        """A name merely starting with 'xml' has no prefix; nothing in §3 refuses it."""
        self.assertEqual(parse(b"<xml/>").tag, "xml")


class ElementTests(SynchronousTestCase):
    def test_equality(self) -> None:
        self.assertEqual(Element("a", {"b": "1"}, [Element("c")], "t"),
                         Element("a", {"b": "1"}, [Element("c")], "t"))
        self.assertNotEqual(Element("a"), Element("b"))
        self.assertNotEqual(Element("a", {"b": "1"}), Element("a", {"b": "2"}))
        self.assertNotEqual(Element("a", text="x"), Element("a", text="y"))
        self.assertNotEqual(Element("a", children=[Element("c")]), Element("a"))
        self.assertNotEqual(Element("a"), "a")

    def test_defaults_not_shared(self) -> None:
        one, two = Element("a"), Element("a")
        one.attrs["x"] = "1"
        one.children.append(Element("b"))
        self.assertEqual(two.attrs, {})
        self.assertEqual(two.children, [])


class SerializeTests(SynchronousTestCase):
    def test_empty_self_closed(self) -> None:
        self.assertEqual(serialize(Element("rekey")), b"<rekey/>")

    def test_attributes_in_order(self) -> None:
        element = Element("a", {"z": "1", "b": "2", "m": "3"})
        self.assertEqual(serialize(element), b'<a z="1" b="2" m="3"/>')

    def test_message(self) -> None:
        element = Element(
            "message",
            {"id": "01JD3Q2V9XJ2H6Z7T8K4M5N6P7", "ts": "2026-11-26T00:25:21.123Z"},
            [Element("body", text="Hello, Bob")],
        )
        self.assertEqual(
            serialize(element),
            b'<message id="01JD3Q2V9XJ2H6Z7T8K4M5N6P7" ts="2026-11-26T00:25:21.123Z">'
            b"<body>Hello, Bob</body></message>",
        )

    def test_text_before_children(self) -> None:
        element = Element("a", children=[Element("b", text="2")], text="1")
        self.assertEqual(serialize(element), b"<a>1<b>2</b></a>")

    def test_text_escapes(self) -> None:
        element = Element("a", text="& < > \" ' ]]>")
        self.assertEqual(serialize(element), b"<a>&amp; &lt; &gt; \" ' ]]&gt;</a>")

    def test_text_cr(self) -> None:
        element = Element("a", text="x\r\ny\rz\tw\n")
        self.assertEqual(serialize(element), b"<a>x&#13;\ny&#13;z\tw\n</a>")

    def test_attribute_escapes(self) -> None:
        element = Element("a", {"v": "&<>\"'"})
        self.assertEqual(serialize(element), b'<a v="&amp;&lt;&gt;&quot;\'"/>')

    def test_attribute_whitespace(self) -> None:
        element = Element("a", {"v": "1\t2\n3\r4 5"})
        self.assertEqual(serialize(element), b'<a v="1&#9;2&#10;3&#13;4 5"/>')

    def test_utf8(self) -> None:
        element = Element("a", {"n": "é"}, text="\U0001f600\ufffd")
        self.assertEqual(serialize(element), '<a n="é">\U0001f600\ufffd</a>'.encode())

    def test_refuses_non_chars_in_text(self) -> None:
        for bad in ("\x00", "\x01", "\x1f", "\ufffe", "\uffff", "\ud800", "\udfff"):
            self.assertRaises(ValueError, serialize, Element("a", text="ok" + bad))

    def test_refuses_non_chars_in_attribute(self) -> None:
        for bad in ("\x00", "\x01", "\x0b", "\ufffe", "\ud800"):
            self.assertRaises(ValueError, serialize, Element("a", {"v": bad + "ok"}))

    def test_refuses_non_chars_in_child(self) -> None:
        element = Element("a", children=[Element("b", children=[Element("c", text="\x00")])])
        self.assertRaises(ValueError, serialize, element)
        element = Element("a", children=[Element("b", {"x": "\udc00"})])
        self.assertRaises(ValueError, serialize, element)

    def test_is_xml_text(self) -> None:
        self.assertTrue(is_xml_text(""))
        self.assertTrue(is_xml_text("\t\n\r \ud7ff\ue000\ufffd\U00010000\U0010ffff"))
        for bad in ("\x00", "\x08", "\x0b", "\x0c", "\x1f", "\ud800", "\udfff", "\ufffe",
                    "\uffff"):
            self.assertFalse(is_xml_text("a" + bad), repr(bad))

    def test_serialize_then_parse_exact(self) -> None:
        element = Element("a", {"v": " \t\n\r "}, [Element("b", text="\r\n")], " \r\t\n ")
        self.assertEqual(parse(serialize(element)), element)


# ---------------------------------------------------------------------------------------------
# Property tests

_NAMES = st.from_regex(r"[a-z][a-z0-9_.-]{0,7}", fullmatch=True).filter(
    lambda name: not name.startswith("xml")
)
_XML_CHAR = st.characters().filter(is_xml_text)
# st.text() filtered by is_xml_text, with the characters that need escaping made frequent.
_TEXT = st.one_of(
    st.text().filter(is_xml_text),
    st.text(
        st.one_of(st.sampled_from(list("\r\n\t &<>\"'];")), _XML_CHAR), max_size=20
    ),
)


def elements(
    names: st.SearchStrategy[str] = _NAMES,
    texts: st.SearchStrategy[str] = _TEXT,
    attr_names: st.SearchStrategy[str] | None = None,
    *,
    width: int = 4,
    max_leaves: int = 12,
) -> st.SearchStrategy[Element]:
    """Element trees: up to C{width} attributes and children each, C{max_leaves} leaves."""
    attrs = st.dictionaries(attr_names or names, texts, max_size=width)
    leaves = st.builds(Element, names, attrs, st.just([]), texts)
    return st.recursive(
        leaves,
        lambda kids: st.builds(Element, names, attrs, st.lists(kids, max_size=width), texts),
        max_leaves=max_leaves,
    )


# Byte soup made of XML-ish tokens, so the fuzzer reaches deeper into the parser.
_TOKENS = st.sampled_from(
    [b"<", b">", b"/", b"a", b"b", b"=", b'"', b"'", b" ", b"&", b";", b"#", b"x", b"<a>",
     b"</a>", b"<b/>", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"<?", b"?>", b"<!DOCTYPE",
     b"&amp;", b"&#0;", b"&#x41;", b":", b"xmlns", b"\x00", b"\xff", b"\xc3\xa9", b"\xef\xbb\xbf",
     b"\r", b"\n", b"\t"]
)


class PropertyTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(elements())
    def test_round_trip(self, element: Element) -> None:
        data = serialize(element)
        self.assertEqual(parse(data), element)
        # Serialising is deterministic and the parse result serialises identically.
        self.assertEqual(serialize(parse(data)), data)

    @HYPOTHESIS
    @given(_TEXT, _TEXT)
    def test_text_and_attribute_preserved(self, text: str, value: str) -> None:
        parsed = parse(serialize(Element("a", {"v": value}, text=text)))
        self.assertEqual(parsed.text, text)
        self.assertEqual(parsed.get("v"), value)

    @HYPOTHESIS
    @given(st.text())
    def test_non_xml_text_refused(self, text: str) -> None:
        if is_xml_text(text):
            self.assertEqual(parse(serialize(Element("a", text=text))).text, text)
        else:
            self.assertRaises(ValueError, serialize, Element("a", text=text))
            self.assertRaises(ValueError, serialize, Element("a", {"v": text}))

    @HYPOTHESIS
    @given(st.one_of(st.binary(max_size=200), st.lists(_TOKENS, max_size=40).map(b"".join)))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        try:
            result = parse(data)
        except ProtocolError:
            return
        self.assertIsInstance(result, Element)
        # Whatever was accepted is a valid tree: it serialises and reads back the same.
        self.assertEqual(parse(serialize(result)), result)


# ---------------------------------------------------------------------------------------------
# base64


class Base64Tests(SynchronousTestCase):
    def test_encode(self) -> None:
        self.assertEqual(b64encode(b""), "")
        self.assertEqual(b64encode(b"f"), "Zg==")
        self.assertEqual(b64encode(b"fo"), "Zm8=")
        self.assertEqual(b64encode(b"foo"), "Zm9v")
        self.assertEqual(b64encode(b"\xfb\xff"), "+/8=")

    def test_decode_canonical(self) -> None:
        self.assertEqual(b64decode(""), b"")
        self.assertEqual(b64decode("Zg=="), b"f")
        self.assertEqual(b64decode("Zm8="), b"fo")
        self.assertEqual(b64decode("Zm9v"), b"foo")
        self.assertEqual(b64decode("Zm9vYmFy"), b"foobar")
        self.assertEqual(b64decode("+/8="), b"\xfb\xff")

    def test_non_zero_padding_bits_refused(self) -> None:
        """One spelling per value: 'QR==' and 'Zm9=' carry stray bits (RFC 4648 §3.5)."""
        for text in ("QR==", "Zm9=", "Zh=="):
            self.assertRaises(ValueError, b64decode, text)
        self.assertEqual(b64decode("QQ=="), b"A")

    def test_whitespace_refused(self) -> None:
        for text in (" Zm9v", "Zm9v ", "Zm 9v", "Zm9v\n", "Zm\r\n9v", "\tZm9v", "Zm9v\u00a0"):
            self.assertRaises(ValueError, b64decode, text)

    def test_missing_padding_refused(self) -> None:
        for text in ("Zg", "Zg=", "Zm8", "Z", "Zm9vY"):
            self.assertRaises(ValueError, b64decode, text)

    def test_extra_padding_refused(self) -> None:
        for text in ("Zm9v=", "Zm9v====", "=", "====", "Z===", "Zg==Zg==", "Zg=a"):
            self.assertRaises(ValueError, b64decode, text)

    def test_url_alphabet_refused(self) -> None:
        for text in ("-_8=", "Zm-v", "Zm_v"):
            self.assertRaises(ValueError, b64decode, text)

    @given(
        st.one_of(
            st.binary(max_size=40).map(lambda b: b64encode(b)),
            st.text(alphabet="ABCDQRZghm89+/=-_ \n\u00e9", max_size=16),
            st.binary(max_size=12).map(lambda b: b64encode(b)).flatmap(
                lambda t: st.integers(0, max(len(t) - 1, 0)).flatmap(
                    lambda i: st.sampled_from("AQRgh9+/=").map(
                        lambda c: (t[:i] + c + t[i + 1 :]) if t else c
                    )
                )
            ),
        )
    )
    def test_same_as_decode_then_reencode_whole(self, text: str) -> None:
        """
        The fast canonical check (re-encoding only the last quad) accepts and refuses exactly
        what decoding and re-encoding the whole text does.
        """
        import binascii

        try:
            raw = text.encode("ascii")
            expected: bytes | None = binascii.a2b_base64(raw, strict_mode=True)
            if binascii.b2a_base64(expected, newline=False) != raw:
                expected = None
        except (UnicodeEncodeError, binascii.Error):
            expected = None
        try:
            got: bytes | None = b64decode(text)
        except ValueError:
            got = None
        self.assertEqual(got, expected)

    def test_other_characters_refused(self) -> None:
        for text in ("Zm9v.", "Zm*v", "Zm9\u0661", "Ｚm9v", "Zm9v\x00"):
            self.assertRaises(ValueError, b64decode, text)

    def test_error_is_value_error_not_alert(self) -> None:
        """Callers decide the reason (§3): protocol_error or stanza bad_request."""
        try:
            b64decode("!")
        except ValueError as error:
            self.assertNotIsInstance(error, AlertError)
        else:
            self.fail("no error")

    @HYPOTHESIS
    @given(st.binary(max_size=100))
    def test_round_trip(self, data: bytes) -> None:
        text = b64encode(data)
        self.assertEqual(text, base64.b64encode(data).decode("ascii"))
        self.assertEqual(b64decode(text), data)

    @HYPOTHESIS
    @given(st.text(alphabet="AZaz09+/=-_ \n", max_size=12))
    def test_decode_agrees_with_strict_stdlib(self, text: str) -> None:
        """Anything accepted is what the standard library reads; nothing else escapes."""
        try:
            decoded = b64decode(text)
        except ValueError:
            return
        self.assertEqual(decoded, base64.b64decode(text, validate=True))
        self.assertEqual(len(text) % 4, 0)



def _reference_b64decode(raw: bytes) -> bytes | None:
    """Strict decoding the slow, obvious way: the standard library, then the whole text
    re-encoded must be the very same text (one spelling per value)."""
    import binascii

    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return None
    return data if binascii.b2a_base64(data, newline=False) == raw else None


#: Long texts (the SIMD decoder's range, from xmlcodec._SIMD_FROM characters) and damaged
#: copies of them: a character replaced or inserted anywhere, cut short, padding added.
_LONG_TEXTS = st.tuples(
    st.binary(min_size=96, max_size=3000),
    st.sampled_from(["none", "replace", "insert", "truncate", "suffix", "prefix"]),
    st.integers(0, 2**16),
    st.sampled_from(
        [b"=", b"==", b"-", b"_", b" ", b"\n", b"\x00", b"\xff", b"\xc3\xa9", b"A", b"/"]
    ),
).map(lambda t: _damage(base64.b64encode(t[0]), *t[1:]))


def _damage(text: bytes, how: str, where: int, junk: bytes) -> bytes:
    i = where % (len(text) + 1)
    if how == "replace" and i < len(text):
        return text[:i] + junk + text[i + len(junk) :]
    if how == "insert":
        return text[:i] + junk + text[i:]
    if how == "truncate":
        return text[:i]
    if how == "suffix":
        return text + junk
    if how == "prefix":
        return junk + text
    return text


class Base64SIMDTests(SynchronousTestCase):
    """
    Texts of L{xmlcodec._SIMD_FROM} characters or more are decoded by C{pybase64}, shorter
    ones by C{binascii}: both routes give exactly the strict reading.
    """

    def test_long_texts_take_the_simd_route(self) -> None:
        self.assertLess(xmlcodec._SIMD_FROM, 4 * ((32_768 + 2) // 3))  # a file chunk's text

    @HYPOTHESIS
    @given(_LONG_TEXTS)
    def test_long_texts_same_as_the_reference(self, raw: bytes) -> None:
        try:
            got: bytes | None = xmlcodec.b64decode_bytes(raw)
        except ValueError:
            got = None
        self.assertEqual(got, _reference_b64decode(raw))
        # A view into a larger buffer (how parse_chunk passes a chunk's text) reads the same.
        view = memoryview(b"<x>" + raw + b"</x>")[3 : 3 + len(raw)]
        try:
            from_view: bytes | None = xmlcodec.b64decode_bytes(view)
        except ValueError:
            from_view = None
        self.assertEqual(from_view, got)

    @HYPOTHESIS
    @given(
        st.one_of(
            _LONG_TEXTS,
            st.binary(max_size=12).map(base64.b64encode),
            st.lists(st.sampled_from(list(b"ABQRgh9+/=-_ \n\xff")), max_size=16).map(bytes),
        )
    )
    def test_both_routes_agree(self, raw: bytes) -> None:
        """Either decoder, whatever the length: the same bytes or the same refusal."""
        results = []
        for simd_from in (0, 10**9):
            self.patch(xmlcodec, "_SIMD_FROM", simd_from)
            try:
                results.append(xmlcodec.b64decode_bytes(raw))
            except ValueError:
                results.append(None)
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], _reference_b64decode(raw))

    def test_damaged_long_texts(self) -> None:
        good = base64.b64encode(bytes(range(256)) * 4)
        self.assertEqual(xmlcodec.b64decode_bytes(good), bytes(range(256)) * 4)
        self.assertEqual(b64decode(good.decode()), bytes(range(256)) * 4)
        for bad in (
            good[:-1],  # not whole quads
            good + b"====",
            good[:100] + b"=" + good[101:],  # padding inside
            good[:100] + b"-" + good[101:],  # URL alphabet
            good[:100] + b"\n" + good[101:],
            good[:100] + b"\xff" + good[101:],
            base64.b64encode(b"x" * 200)[:-4] + b"eR==",  # stray padding bits at the end
        ):
            self.assertRaises(ValueError, xmlcodec.b64decode_bytes, bad)
        self.assertRaises(ValueError, b64decode, good.decode()[:200] + "\u00e9" + "A" * 3)

    @HYPOTHESIS
    @given(st.binary(max_size=5000))
    def test_encode_bytes(self, data: bytes) -> None:
        self.assertEqual(xmlcodec.b64encode_bytes(data), base64.b64encode(data))
        self.assertEqual(b64encode(data), base64.b64encode(data).decode("ascii"))


class ModuleTests(SynchronousTestCase):
    def test_all(self) -> None:
        for name in xmlcodec.__all__:
            self.assertTrue(hasattr(xmlcodec, name), name)
