"""
Typed stanzas of spec §7 (handshake) and §8 (application), each knowing how to turn itself
into an L{Element} and back.

Handshake parsing raises L{AlertError}s (fatal). Application parsing raises L{StanzaError}
(answered with C{<error/>}, the session continues). Checks that depend on negotiation state
(lengths of shares, which suite was offered, ...) belong to the handshake, not here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sixchat.errors import BadCertificate, ProtocolError, StanzaError
from sixchat.xmlcodec import (
    Element,
    ascii_text_is_char,
    b64decode,
    b64encode,
    encode_checked,
    escape_attribute,
    escape_text,
    has_c0_controls,
    serialize,
)

MAX_BODY_CHARS = 32_768
MAX_CERTS = 8

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_TS = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z\Z", re.ASCII)


def is_valid_id(value: str | None) -> bool:
    """The §8 stanza id rule: 1–64 characters of C{[A-Za-z0-9_-]}."""
    return value is not None and _ID.match(value) is not None


def parse_timestamp(value: str) -> datetime:
    """
    Parse a §11.11 timestamp; a leap second reads as second 59.

    @raise ValueError: if C{value} does not follow the grammar or is no calendar date.
    """
    m = _TS.match(value)
    if m is None:
        raise ValueError("invalid timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("invalid timestamp")
    fraction = m.group(7) or ""
    micro = int((fraction + "000000")[:6])
    return datetime(year, month, day, hour, minute, min(second, 59), micro, tzinfo=UTC)


@functools.lru_cache(maxsize=64)
def _is_date(year: int, month: int, day: int) -> bool:
    try:
        datetime(year, month, day)
    except ValueError:
        return False
    return True


#: Recently checked timestamps: at high rates every message of one millisecond carries the
#: same C{ts}. Bounded (cleared when full), so unique values only cost a recheck.
_checked_timestamps: dict[str, bool] = {}


def is_valid_timestamp(value: str) -> bool:
    """
    Whether L{parse_timestamp} accepts C{value}, without building the C{datetime} (the
    receive fast path only validates C{ts}, §8.1).
    """
    known = _checked_timestamps.get(value)
    if known is not None:
        return known
    m = _TS.match(value)
    if m is None:
        valid = False
    else:
        year, month, day, hour, minute, second = m.groups()[:6]
        valid = (
            int(hour) <= 23
            and int(minute) <= 59
            and int(second) <= 60
            and _is_date(int(year), int(month), int(day))
        )
    if len(_checked_timestamps) >= 256:
        _checked_timestamps.clear()
    _checked_timestamps[value] = valid
    return valid


def format_timestamp(when: datetime) -> str:
    """RFC 3339 UTC with milliseconds and C{Z}, as senders write it (§3)."""
    when = when.astimezone(UTC)
    # Not strftime: its %Y does not zero-pad years before 1000 on every platform.
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


# ---------------------------------------------------------------------------------------------
# Handshake stanzas (§7). Parsing failures are fatal alerts.


def _require(element: Element, name: str) -> str:
    value = element.get(name)
    if value is None:
        raise ProtocolError(f"<{element.tag}> without {name}")
    return value


def _hs_b64(text: str, what: str) -> bytes:
    try:
        return b64decode(text)
    except ValueError:
        raise ProtocolError(f"invalid base64 in {what}") from None


@dataclass
class Share:
    """A key share as received: its value is decoded only once it is chosen (§11.3)."""

    group: str
    text: str
    key: str | None = None  # rsa-oaep only: B64(SHA-256(responder leaf DER))

    def to_element(self) -> Element:
        attrs = {"group": self.group}
        if self.key is not None:
            attrs["key"] = self.key
        return Element("share", attrs, text=self.text)

    def value(self) -> bytes:
        """Decode the chosen share; invalid base64 is a C{protocol_error} (§3)."""
        return _hs_b64(self.text, "share")


def _shares(element: Element) -> list[Share]:
    shares = []
    for child in element.findall("share"):
        group = child.get("group")
        if group is None:
            raise ProtocolError("<share> without group")
        shares.append(Share(group, child.text, child.get("key")))
    return shares


@dataclass
class ClientHello:
    """M1."""

    versions: list[str]
    random: bytes
    suites: list[str]
    shares: list[Share]
    to: str | None = None

    def to_element(self) -> Element:
        attrs = {"versions": " ".join(self.versions), "random": b64encode(self.random)}
        if self.to is not None:
            attrs["to"] = self.to
        children = [Element("suite", text=s) for s in self.suites]
        children += [s.to_element() for s in self.shares]
        return Element("hello", attrs, children)

    @classmethod
    def from_element(cls, element: Element) -> ClientHello:
        if element.tag != "hello":
            raise ProtocolError(f"expected <hello>, got <{element.tag}>")
        versions = _require(element, "versions")
        random = _hs_b64(_require(element, "random"), "random")
        suites = [child.text for child in element.findall("suite")]
        return cls(versions.split(" "), random, suites, _shares(element), element.get("to"))


@dataclass
class ServerHello:
    """M2."""

    version: str
    random: bytes
    suite: str
    shares: list[Share]

    def to_element(self) -> Element:
        attrs = {"version": self.version, "random": b64encode(self.random), "suite": self.suite}
        return Element("hello", attrs, [s.to_element() for s in self.shares])

    @classmethod
    def from_element(cls, element: Element) -> ServerHello:
        if element.tag != "hello":
            raise ProtocolError(f"expected <hello>, got <{element.tag}>")
        version = _require(element, "version")
        random = _hs_b64(_require(element, "random"), "random")
        suite = _require(element, "suite")
        return cls(version, random, suite, _shares(element))


@dataclass
class IdentityStanza:
    """M3 / M6: the claimed identity and its chain, leaf first."""

    name: str
    certs: list[bytes]

    def to_element(self) -> Element:
        children = [Element("cert", text=b64encode(der)) for der in self.certs]
        return Element("identity", {"name": self.name}, children)

    @classmethod
    def from_element(cls, element: Element) -> IdentityStanza:
        if element.tag != "identity":
            raise ProtocolError(f"expected <identity>, got <{element.tag}>")
        name = _require(element, "name")
        certs = element.findall("cert")
        if not certs:
            raise BadCertificate("<identity> without <cert>")
        if len(certs) > MAX_CERTS:
            raise BadCertificate(f"more than {MAX_CERTS} certificates")
        return cls(name, [_hs_b64(c.text, "cert") for c in certs])


@dataclass
class Verify:
    """M4 / M7."""

    alg: str
    signature: bytes

    def to_element(self) -> Element:
        return Element("verify", {"alg": self.alg}, text=b64encode(self.signature))

    @classmethod
    def from_element(cls, element: Element) -> Verify:
        if element.tag != "verify":
            raise ProtocolError(f"expected <verify>, got <{element.tag}>")
        return cls(_require(element, "alg"), _hs_b64(element.text, "verify"))


@dataclass
class Finished:
    """M5 / M8."""

    verify_data: bytes

    def to_element(self) -> Element:
        return Element("finished", text=b64encode(self.verify_data))

    @classmethod
    def from_element(cls, element: Element) -> Finished:
        if element.tag != "finished":
            raise ProtocolError(f"expected <finished>, got <{element.tag}>")
        return cls(_hs_b64(element.text, "finished"))


@dataclass
class Alert:
    """A fatal alert (§9.1); extra attributes carry C{versions}/C{suites}/C{groups} hints."""

    reason: str
    text: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_element(self) -> Element:
        return Element("alert", {"reason": self.reason, **self.extra}, text=self.text)

    @classmethod
    def from_element(cls, element: Element) -> Alert:
        reason = _require(element, "reason")
        extra = {k: v for k, v in element.attrs.items() if k != "reason"}
        return cls(reason, element.text, extra)


# ---------------------------------------------------------------------------------------------
# Application stanzas (§8). Parsing failures are stanza errors, never fatal.


def _stanza_id(element: Element) -> str:
    value = element.get("id")
    if not is_valid_id(value):
        raise StanzaError("bad_request", f"<{element.tag}> without a valid id")
    assert value is not None
    return value


@dataclass
class Message:
    id: str
    ts: str
    body: str
    thread: str | None = None
    reply_to: str | None = None

    def to_element(self) -> Element:
        children = [Element("body", text=self.body)]
        if self.thread is not None:
            children.append(Element("thread", text=self.thread))
        if self.reply_to is not None:
            children.append(Element("reply", {"to": self.reply_to}))
        return Element("message", {"id": self.id, "ts": self.ts}, children)

    @classmethod
    def from_element(cls, element: Element) -> Message:
        sid = _stanza_id(element)
        ts = element.get("ts")
        if ts is None:
            raise StanzaError("bad_request", "message without ts", sid)
        try:
            parse_timestamp(ts)
        except ValueError:
            raise StanzaError("bad_request", "invalid ts", sid) from None
        bodies = element.findall("body")
        if len(bodies) != 1:
            raise StanzaError("bad_request", "a message needs exactly one body", sid)
        body = bodies[0]
        if body.children:
            raise StanzaError("bad_request", "body holds character data only", sid)
        if len(body.text) > MAX_BODY_CHARS:
            raise StanzaError("too_large", f"body over {MAX_BODY_CHARS} characters", sid)
        thread = element.find("thread")
        reply = element.find("reply")
        return cls(
            sid,
            ts,
            body.text,
            thread.text if thread is not None else None,
            reply.get("to") if reply is not None else None,
        )


@dataclass
class Receipt:
    id: str

    def to_element(self) -> Element:
        return Element("receipt", {"id": self.id})

    @classmethod
    def from_element(cls, element: Element) -> Receipt:
        return cls(_stanza_id(element))


@dataclass
class Ping:
    id: str

    def to_element(self) -> Element:
        return Element("ping", {"id": self.id})

    @classmethod
    def from_element(cls, element: Element) -> Ping:
        return cls(_stanza_id(element))


@dataclass
class Pong:
    id: str

    def to_element(self) -> Element:
        return Element("pong", {"id": self.id})

    @classmethod
    def from_element(cls, element: Element) -> Pong:
        return cls(_stanza_id(element))


TYPING_STATES = ("composing", "paused")


@dataclass
class Typing:
    state: str

    def to_element(self) -> Element:
        return Element("typing", {"state": self.state})

    @classmethod
    def from_element(cls, element: Element) -> Typing:
        state = element.get("state")
        if state not in TYPING_STATES:
            raise StanzaError("bad_request", "typing state must be composing or paused")
        assert state is not None
        return cls(state)


@dataclass
class Rekey:
    def to_element(self) -> Element:
        return Element("rekey")

    @classmethod
    def from_element(cls, element: Element) -> Rekey:
        return cls()


@dataclass
class Close:
    def to_element(self) -> Element:
        return Element("close")

    @classmethod
    def from_element(cls, element: Element) -> Close:
        return cls()


@dataclass
class ErrorStanza:
    """C{<error>} (§8.6); an invalid C{ref} reads as none (§11.1)."""

    reason: str
    ref: str | None = None
    text: str = ""

    def to_element(self) -> Element:
        attrs = {}
        if self.ref is not None:
            attrs["ref"] = self.ref
        attrs["reason"] = self.reason
        return Element("error", attrs, text=self.text)

    @classmethod
    def from_element(cls, element: Element) -> ErrorStanza:
        reason = element.get("reason")
        if reason not in ("too_large", "bad_request", "unsupported"):
            reason = "bad_request"
        ref = element.get("ref")
        return cls(reason, ref if is_valid_id(ref) else None, element.text)


#: Application stanza classes by tag.
APPLICATION_STANZAS: dict[str, Any] = {
    "message": Message,
    "receipt": Receipt,
    "ping": Ping,
    "pong": Pong,
    "typing": Typing,
    "rekey": Rekey,
    "close": Close,
    "error": ErrorStanza,
}

ApplicationStanza = Message | Receipt | Ping | Pong | Typing | Rekey | Close | ErrorStanza

#: Handshake tags that are a C{protocol_error} after the handshake (§9.1).
HANDSHAKE_TAGS = frozenset({"hello", "identity", "verify", "finished"})


# ---------------------------------------------------------------------------------------------
# Fast paths for the commonest stanzas (docs/benchmarks.md). Both are exact shortcuts of the
# generic path, which stays the definition: property tests in test_stanzas check that
# L{serialize_stanza} is byte for byte C{serialize(stanza.to_element())} (raising where it
# raises), and that L{parse_application} returns nothing or exactly what L{parse} followed
# by C{from_element} returns.

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
