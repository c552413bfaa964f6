"""
The hardened XML codec of spec §3: one element in, one element out.

Why expat directly and not ElementTree through defusedxml: the profile is stricter than what
defusedxml forbids (it also refuses an XML declaration, a byte-order mark, processing
instructions, prefixed names and C{xmlns}), and defusedxml's ElementTree route forces the
pure-Python tree builder, which costs more than the AEAD per stanza. We install the same
refusals defusedxml installs (DTD, entity declarations, external entities, parameter entities
never parsed) plus ours on a bare C{pyexpat} parser, and build a minimal tree ourselves.
See C{docs/protocol.md} "XML".
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from typing import NoReturn
from xml.parsers import expat

import pybase64

from sixchat.errors import ProtocolError

__all__ = [
    "Element",
    "b64decode",
    "b64decode_bytes",
    "b64encode",
    "b64encode_bytes",
    "encode_checked",
    "escape_attribute",
    "escape_text",
    "has_c0_controls",
    "is_xml_text",
    "parse",
    "serialize",
]


class Element:
    """
    A parsed or to-be-sent XML element.

    C{text} is all of the element's own character data concatenated (comments removed, CDATA
    unwrapped), which is how the spec reads tokens, base64 and bodies (§11.10). Attributes keep
    the order they were given in, so serialisation is byte-for-byte reproducible.
    """

    __slots__ = ("tag", "attrs", "children", "text")

    def __init__(
        self,
        tag: str,
        attrs: dict[str, str] | None = None,
        children: list[Element] | None = None,
        text: str = "",
    ) -> None:
        self.tag = tag
        self.attrs = attrs if attrs is not None else {}
        self.children = children if children is not None else []
        self.text = text

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def find(self, tag: str) -> Element | None:
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findall(self, tag: str) -> list[Element]:
        return [child for child in self.children if child.tag == tag]

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.iter()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Element):
            return NotImplemented
        return (
            self.tag == other.tag
            and self.attrs == other.attrs
            and self.text == other.text
            and self.children == other.children
        )

    def __repr__(self) -> str:
        return f"Element({self.tag!r}, {self.attrs!r}, {len(self.children)} children)"


# ---------------------------------------------------------------------------------------------
# Parsing


def _refuse(what: str) -> NoReturn:
    raise ProtocolError(f"XML {what} not allowed")


class _TreeBuilder:
    """expat callbacks building L{Element}s; refuses everything §3 forbids."""

    __slots__ = ("stack", "root", "texts")

    def __init__(self) -> None:
        self.stack: list[Element] = []
        self.texts: list[list[str]] = []
        self.root: Element | None = None

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if ":" in tag:
            _refuse("prefixed name")
        for name in attrs:
            if ":" in name or name == "xmlns":
                _refuse("namespace or prefixed attribute")
        element = Element(tag, attrs)
        if self.stack:
            self.stack[-1].children.append(element)
        elif self.root is not None:
            _refuse("second root element")
        else:
            self.root = element
        self.stack.append(element)
        self.texts.append([])

    def end(self, tag: str) -> None:
        element = self.stack.pop()
        parts = self.texts.pop()
        if parts:
            element.text = "".join(parts)

    def data(self, text: str) -> None:
        if self.texts:
            self.texts[-1].append(text)
        # Character data outside the root can only be whitespace (expat rejects the rest).


def _forbidden(what: str):
    def handler(*args: object) -> NoReturn:
        _refuse(what)

    return handler


_XML_DECL = _forbidden("declaration")
_DOCTYPE = _forbidden("DOCTYPE")
_ENTITY = _forbidden("entity declaration")
_PI = _forbidden("processing instruction")
_EXTERNAL = _forbidden("external entity")
_DECLARATION = _forbidden("DTD declaration")


def parse(data: bytes) -> Element:
    """
    Parse exactly one element from a record payload (padding already stripped).

    @raise ProtocolError: on anything §3 makes a C{protocol_error}.
    """
    # expat sniffs UTF-16 from a BOM or a NUL in the first two bytes even when UTF-8 is
    # forced; neither can start a UTF-8 payload (U+0000 is no XML Char), so refuse them here.
    if data[:3] == b"\xef\xbb\xbf" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        _refuse("byte-order mark")
    if b"\x00" in data[:2]:
        _refuse("encoding other than UTF-8")
    builder = _TreeBuilder()
    # Forcing UTF-8 makes any other encoding invalid input (UTF-16 is refused above).
    parser = expat.ParserCreate("UTF-8")
    parser.buffer_text = True
    parser.ordered_attributes = False
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.XmlDeclHandler = _XML_DECL
    parser.StartDoctypeDeclHandler = _DOCTYPE
    parser.EntityDeclHandler = _ENTITY
    parser.UnparsedEntityDeclHandler = _ENTITY
    parser.NotationDeclHandler = _DECLARATION
    parser.ElementDeclHandler = _DECLARATION
    parser.AttlistDeclHandler = _DECLARATION
    parser.ExternalEntityRefHandler = _EXTERNAL
    parser.ProcessingInstructionHandler = _PI
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise ProtocolError(f"malformed XML: {expat.ErrorString(e.code)}") from None
    except RecursionError:  # pragma: no cover - expat nests iteratively; belt and braces
        raise ProtocolError("XML nested too deeply") from None
    if builder.root is None:
        _refuse("payload without an element")
    return builder.root


# ---------------------------------------------------------------------------------------------
# Serialising

# XML 1.0 Char, spec §3: anything outside it must never be sent.
#
# Not with a regular expression over the text: a character class over a 16 KiB body costs
# more than sealing it (about 37 µs against 2 µs). Outside Char are the C0 controls other
# than TAB, LF and CR, the surrogates (which strict UTF-8 encoding refuses) and U+FFFE,
# U+FFFF (the byte sequences EF BF BE and EF BF BF, which can only encode those two).
#
# The C0 controls are found in one of two ways, both in C: short data in one pass of
# bytes.translate (mapping them to NUL) and a memchr for NUL; from _SCAN_FROM characters on,
# in an ASCII str, with one memchr per control (29 of them: each scan is so much faster than
# translate's loop, which also writes a copy, that together they cost half as much at 16 KiB).
#: Maps the C0 controls outside Char to NUL (itself one of them) and every other byte to
#: itself.
C0_TO_NUL = bytes(0 if b < 0x20 and b not in (0x09, 0x0A, 0x0D) else b for b in range(256))
#: From this length on, L{_ascii_has_c0} beats one translation (they cost the same near 500).
_SCAN_FROM = 512


def has_c0_controls(data: bytes) -> bool:
    """Whether C{data} holds a byte 0x00–0x1F other than TAB, LF and CR."""
    return b"\x00" in data.translate(C0_TO_NUL)


def _ascii_has_c0(text: str) -> bool:
    """
    Whether the ASCII C{text} holds a C0 control other than TAB, LF and CR: one memchr per
    control (C{in} on a one-byte-per-character str), spelt out so no Python loop runs.
    """
    return (
        "\x00" in text or "\x01" in text or "\x02" in text or "\x03" in text
        or "\x04" in text or "\x05" in text or "\x06" in text or "\x07" in text
        or "\x08" in text or "\x0b" in text or "\x0c" in text or "\x0e" in text
        or "\x0f" in text or "\x10" in text or "\x11" in text or "\x12" in text
        or "\x13" in text or "\x14" in text or "\x15" in text or "\x16" in text
        or "\x17" in text or "\x18" in text or "\x19" in text or "\x1a" in text
        or "\x1b" in text or "\x1c" in text or "\x1d" in text or "\x1e" in text
        or "\x1f" in text
    )  # fmt: skip


def ascii_text_is_char(text: str, data: bytes) -> bool:
    """
    Whether ASCII C{text}, encoded as C{data} (the same characters), holds only XML Char:
    no C0 control but TAB, LF and CR (every other ASCII character is a Char).
    """
    if len(data) < _SCAN_FROM:
        return b"\x00" not in data.translate(C0_TO_NUL)
    return not _ascii_has_c0(text)


def _xml_bytes(data: bytes) -> bool:
    """Whether UTF-8 C{data} (from a str, so no invalid sequences) holds only XML Char."""
    if b"\x00" in data.translate(C0_TO_NUL):
        return False
    return data.isascii() or (b"\xef\xbf\xbe" not in data and b"\xef\xbf\xbf" not in data)


def encode_checked(text: str) -> bytes:
    """C{text} as UTF-8, refusing (C{ValueError}) any code point outside XML C{Char}."""
    if text.isascii():  # O(1) on str; ASCII encodes as a copy, and only C0 can be wrong
        data = text.encode("ascii")
        if ascii_text_is_char(text, data):
            return data
        raise ValueError("text contains a code point XML cannot carry")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        raise ValueError("text contains a code point XML cannot carry") from None
    if not _xml_bytes(data):
        raise ValueError("text contains a code point XML cannot carry")
    return data


def is_xml_text(text: str) -> bool:
    """True if every code point of C{text} may travel in XML (§3 C{Char})."""
    try:
        encode_checked(text)
    except ValueError:
        return False
    return True


def escape_text(text: str) -> str:
    """Character data as we write it: C{& < >} and CR escaped, nothing else (§3)."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    return text


_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def escape_attribute(value: str) -> str:
    """An attribute value as we write it inside double quotes (§3)."""
    # Values without a character to escape (ids, times, tokens) skip the translate call;
    # seven memchr scans find out faster than a set or a regular expression would.
    if (
        "&" in value or "<" in value or ">" in value or '"' in value
        or "\t" in value or "\n" in value or "\r" in value
    ):  # fmt: skip
        return value.translate(_ATTR_ESCAPES)
    return value


def _write(element: Element, out: list[str]) -> None:
    out.append("<" + element.tag)
    for name, value in element.attrs.items():
        out.append(f' {name}="{escape_attribute(value)}"')
    if not element.children and not element.text:
        out.append("/>")
        return
    out.append(">")
    if element.text:
        out.append(escape_text(element.text))
    for child in element.children:
        _write(child, out)
    out.append(f"</{element.tag}>")


def serialize(element: Element) -> bytes:
    """
    The exact bytes we send for C{element}: attributes in the given order, text before
    children, empty elements self-closed, CR written as C{&#13;} (§3).

    The whole document is checked for code points outside XML C{Char} once, after encoding
    (escaping only ever adds ASCII, and every other character of the output comes from a
    text, an attribute value or a name).

    @raise ValueError: if any text, attribute value or name holds a code point outside
        XML C{Char}.
    """
    out: list[str] = []
    _write(element, out)
    return encode_checked("".join(out))


# ---------------------------------------------------------------------------------------------
# base64 (§3: the RFC 4648 §4 alphabet, '=' padding, no whitespace)

#: Texts of at least this many characters are decoded by C{pybase64}, shorter ones by
#: C{binascii} (see L{b64decode_bytes}).
_SIMD_FROM = 128


def b64encode(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")


def b64encode_bytes(data: bytes) -> bytes:
    """L{b64encode} as ASCII bytes (what a serialiser writes as it stands)."""
    return pybase64.b64encode(data)


def b64decode(text: str) -> bytes:
    """
    Strict base64 decoding: the RFC 4648 §4 alphabet, C{=} padding, no whitespace, and zero
    padding bits (so every value has exactly one spelling).

    Implemented as "decode, then re-encode and require the very same text": exactly the
    canonical encoding of some bytes passes, which is what the rule above describes (the
    pattern C{(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?} plus zero
    padding bits). A regular expression over a 1.6 KB key share cost more than the rest
    of its handling; this is all C.

    @raise ValueError: on anything else.
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("invalid base64") from None
    return b64decode_bytes(raw)


def b64decode_bytes(raw: bytes | memoryview) -> bytes:
    """
    L{b64decode} of ASCII bytes (a file chunk's text as it stands in the record, or a view
    of it).

    From L{_SIMD_FROM} characters on, the decoding is C{pybase64}'s (SIMD: some 20 times
    faster than C{binascii} on a 43 KB file chunk; below, its call costs more than
    C{binascii}'s whole decoding) with C{validate=True}, which refuses everything but the
    alphabet and well-placed padding; it accepts no input that
    C{binascii.a2b_base64(strict_mode=True)} refuses (property-tested). What either lets
    through that is not canonical — a length that is not a whole number of quads, padding
    bits that are not zero (RFC 4648 §3.5), which only the last quad can have — the checks
    here refuse: re-encoding the last quad's bytes (not the whole text: a 43 KB chunk would
    cost twice) gives one spelling per value.

    @raise ValueError: on anything else.
    """
    if len(raw) % 4:
        raise ValueError("invalid base64")
    try:
        if len(raw) < _SIMD_FROM:
            data = binascii.a2b_base64(raw, strict_mode=True)
        else:
            data = pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("invalid base64") from None
    tail = len(data) % 3 or 3
    if data and binascii.b2a_base64(data[-tail:], newline=False) != raw[-4:]:
        raise ValueError("invalid base64")
    return data
