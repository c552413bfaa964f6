"""
Fast paths for the commonest stanzas (docs/benchmarks.md): L{serialize_stanza} writes a
C{message}, C{receipt}, C{ping} or C{pong} without building its tree, and L{parse_application}
reads one written exactly as we write them. Both are exact shortcuts of the generic path of
L{sixchat.stanzas}, which stays the definition: property tests in test_fastpaths check that
L{serialize_stanza} is byte for byte C{serialize(stanza.to_element())} (raising where it
raises), and that L{parse_application} returns nothing or exactly what L{parse} followed by
C{from_element} returns.
"""

from __future__ import annotations

import re
from typing import Protocol

from sixchat.stanzas import (
    MAX_BODY_CHARS,
    ApplicationStanza,
    Message,
    Ping,
    Pong,
    Receipt,
    is_valid_timestamp,
)
from sixchat.xmlcodec import (
    Element,
    ascii_text_is_char,
    encode_checked,
    escape_attribute,
    escape_text,
    has_c0_controls,
    serialize,
)

__all__ = ["ElementStanza", "parse_application", "serialize_stanza"]

_RECEIPT_LIKE: dict[type, str] = {Receipt: "receipt", Ping: "ping", Pong: "pong"}
#: A stanza id as every valid one is written: nothing to escape, nothing outside Char.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+").fullmatch


class ElementStanza(Protocol):
    """Any other stanza type (the §8.7 ones): it knows its element."""

    def to_element(self) -> Element: ...


def serialize_stanza(stanza: ApplicationStanza | ElementStanza) -> bytes:
    """
    C{serialize(stanza.to_element())} without building the tree for C{message}, C{receipt},
    C{ping} and C{pong}: one format string, the same escaping, the same C{Char} check.

    @raise ValueError: if a text or attribute holds a code point outside XML C{Char}.
    """
    cls = type(stanza)
    if cls is Message:
        assert isinstance(stanza, Message)
        body = stanza.body
        if stanza.thread is None and stanza.reply_to is None:  # the common message
            if body:
                return encode_checked(
                    f'<message id="{escape_attribute(stanza.id)}" ts="'
                    f'{escape_attribute(stanza.ts)}"><body>{escape_text(body)}</body></message>'
                )
            return encode_checked(
                f'<message id="{escape_attribute(stanza.id)}" ts="'
                f'{escape_attribute(stanza.ts)}"><body/></message>'
            )
        parts = [
            '<message id="',
            escape_attribute(stanza.id),
            '" ts="',
            escape_attribute(stanza.ts),
            '"><body>' + escape_text(body) + "</body>" if body else '"><body/>',
        ]
        if stanza.thread is not None:
            thread = stanza.thread
            parts.append("<thread>" + escape_text(thread) + "</thread>" if thread else "<thread/>")
        if stanza.reply_to is not None:
            parts.append('<reply to="' + escape_attribute(stanza.reply_to) + '"/>')
        parts.append("</message>")
        return encode_checked("".join(parts))
    tag = _RECEIPT_LIKE.get(cls)
    if tag is not None:
        sid: str = stanza.id  # type: ignore[union-attr]
        if _PLAIN_ID(sid) is not None:  # ASCII letters, digits, - and _: as it is
            return f'<{tag} id="{sid}"/>'.encode("ascii")
        return encode_checked(f'<{tag} id="{escape_attribute(sid)}"/>')
    # Other stanza types may bring their own shortcut (a file chunk: 43 KB of base64), which
    # their tests hold to the same byte-for-byte equality.
    fast = getattr(stanza, "serialized", None)
    if fast is not None:
        data: bytes = fast()
        return data
    return serialize(stanza.to_element())


#: The start of a message as we write it, up to its body: id and ts in the characters they
#: may hold (the ts grammar is checked by is_valid_timestamp).
_MESSAGE_HEAD = re.compile(rb'<message id="([A-Za-z0-9_-]{1,64})" ts="([0-9TZ:.-]{1,64})"><body')
_BODY_CLOSE = b"</body></message>"
_EMPTY_BODY_END = b"/></message>"
#: Receipts, pings and pongs as we write them.
_RECEIPT = re.compile(rb'<receipt id="([A-Za-z0-9_-]{1,64})"/>').fullmatch
_PING_PONG = re.compile(rb'<(ping|pong) id="([A-Za-z0-9_-]{1,64})"/>').fullmatch


def _fast_body(body: bytes) -> str | None:
    """
    The text expat would report for C{body} as an element's only content, when that is
    plainly C{body} decoded: valid UTF-8, no markup, no references but C{&amp; &lt; &gt;},
    no CR (line-end normalisation), no C{]]>}, nothing outside XML Char. None otherwise.

    Decoded first (strict UTF-8, one C pass that is a copy for ASCII), then checked on the
    text: a character below U+0080 is the same byte in the text and in C{body}, never part
    of a multi-byte sequence, so C{"<" in text} is C{b"<" in body}; and an ASCII text gets
    the cheaper C{Char} check of L{ascii_text_is_char}.
    """
    try:
        text = body.decode("utf-8")  # strict: no surrogates, no overlong forms
    except UnicodeDecodeError:
        return None
    if "<" in text or "\r" in text or (">" in text and "]]>" in text):
        return None
    if text.isascii():  # O(1)
        if not ascii_text_is_char(text, body):
            return None
    elif has_c0_controls(body) or "\ufffe" in text or "\uffff" in text:
        return None
    if "&" in text:
        # Only the three references we write ourselves (escape_text); none overlaps another.
        amp, lt, gt = text.count("&amp;"), text.count("&lt;"), text.count("&gt;")
        if text.count("&") != amp + lt + gt:
            return None
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text


def _fast_message(data: bytes) -> Message | None:
    head = _MESSAGE_HEAD.match(data)
    if head is None:
        return None
    body_start = head.end()
    if data.endswith(_BODY_CLOSE) and data.startswith(b">", body_start):
        body_start += 1
        body_end = len(data) - len(_BODY_CLOSE)
        if body_start > body_end:
            return None
        text = _fast_body(data[body_start:body_end])
        if text is None:
            return None
    elif len(data) == body_start + len(_EMPTY_BODY_END) and data.endswith(_EMPTY_BODY_END):
        text = ""
    else:
        return None
    if len(text) > MAX_BODY_CHARS:
        return None
    ts = head.group(2).decode("ascii")
    if not is_valid_timestamp(ts):
        return None
    return Message(head.group(1).decode("ascii"), ts, text)


def parse_application(data: bytes) -> Message | Receipt | Ping | Pong | None:
    """
    The stanza in C{data} (a SEALED plaintext, padding stripped) when it is a valid
    C{message}, C{receipt}, C{ping} or C{pong} written exactly as we write them — no other
    attributes or children, no references, no CR, no comments — else None, and the caller
    takes the generic path (hardened parser, then C{from_element}), which returns the same
    stanza for every input this accepts and handles everything else, errors included.
    """
    if data.startswith(b'<message id="'):
        return _fast_message(data)
    match = _RECEIPT(data)
    if match is not None:
        return Receipt(match.group(1).decode("ascii"))
    match = _PING_PONG(data)
    if match is not None:
        cls = Ping if match.group(1) == b"ping" else Pong
        return cls(match.group(2).decode("ascii"))
    return None
