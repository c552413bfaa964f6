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
from typing import Any

from sixchat.errors import BadCertificate, ProtocolError, StanzaError
from sixchat.xmlcodec import (
    Element,
    b64decode,
    b64encode,
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
