"""
The file-transfer stanzas of spec §8.7: C{file} (the offer), C{accept}, C{chunk}, C{done}
and C{reject} (C{receipt} is L{sixchat.stanzas.Receipt}, shared with messages).

Like L{sixchat.stanzas}, each class turns itself into an L{Element} and back; parsing
raises L{StanzaError} (answered with C{<error/>}, never fatal). The readings (§11.2, §11.9):
every attribute named in §8.7 is required except C{mime}; a missing or malformed one is
C{bad_request}; a chunk of more than 32,768 bytes is C{too_large} (checked on the base64
length before anything is decoded); numbers are ASCII decimal digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sixchat.errors import StanzaError
from sixchat.stanzas import is_valid_id
from sixchat.xmlcodec import (
    Element,
    b64decode,
    b64decode_bytes,
    b64encode,
    b64encode_bytes,
    serialize,
)

__all__ = [
    "FILE_STANZAS",
    "MAX_CHUNK",
    "MAX_CHUNK_B64",
    "MAX_SIZE",
    "Accept",
    "Chunk",
    "Done",
    "FileOffer",
    "Reject",
    "parse_chunk",
    "parse_number",
]

#: §8.7: at most this many bytes of data in one chunk.
MAX_CHUNK = 32_768
#: The base64 length of L{MAX_CHUNK} bytes: a longer text cannot hold an allowed chunk.
MAX_CHUNK_B64 = 4 * ((MAX_CHUNK + 2) // 3)
#: The largest size or offset we read (a 64-bit file offset); larger is C{bad_request}.
MAX_SIZE = 2**63 - 1
#: C{reject} reasons this implementation sends. §8.7 names C{sha256_mismatch} and §11.9
#: C{size_mismatch}; the others are ours (any token is allowed; receivers treat every
#: reason alike: the transfer is over).
REJECT_REASONS = (
    "sha256_mismatch",
    "size_mismatch",
    "too_large",
    "no_space",
    "busy",
    "declined",
    "io_error",
)

_DIGITS = re.compile(r"[0-9]{1,19}\Z", re.ASCII)


def parse_number(value: str | None) -> int | None:
    """A size or offset: 1–19 ASCII digits, at most L{MAX_SIZE}; None if anything else."""
    if value is None or _DIGITS.match(value) is None:
        return None
    number = int(value)
    return number if number <= MAX_SIZE else None


def _id(element: Element) -> str:
    value = element.get("id")
    if not is_valid_id(value):
        raise StanzaError("bad_request", f"<{element.tag}> without a valid id")
    assert value is not None
    return value


def _number(element: Element, name: str, sid: str) -> int:
    number = parse_number(element.get(name))
    if number is None:
        raise StanzaError("bad_request", f"<{element.tag}> without a valid {name}", sid)
    return number


@dataclass(frozen=True)
class FileOffer:
    """
    C{<file id name size sha256 [mime] [from] [to]/>}: the sender's offer. C{sha256} is the
    raw digest. C{origin} (C{from}) and C{recipient} (C{to}) are the own-device sync
    extension (docs/protocol.md 8.6): a node of ours handing on a file it received from that
    peer, or the bytes of a file our identity sends to that peer (so that another node of
    ours can deliver it); they mean something only on a session between two nodes of one
    identity (the receiver checks that).
    """

    id: str
    name: str
    size: int
    sha256: bytes
    mime: str | None = None
    origin: str | None = None
    recipient: str | None = None

    def to_element(self) -> Element:
        attrs = {
            "id": self.id,
            "name": self.name,
            "size": str(self.size),
            "sha256": b64encode(self.sha256),
        }
        if self.mime is not None:
            attrs["mime"] = self.mime
        if self.origin is not None:
            attrs["from"] = self.origin
        if self.recipient is not None:
            attrs["to"] = self.recipient
        return Element("file", attrs)

    @classmethod
    def from_element(cls, element: Element) -> FileOffer:
        sid = _id(element)
        name = element.get("name")
        if name is None:
            raise StanzaError("bad_request", "<file> without name", sid)
        size = _number(element, "size", sid)
        text = element.get("sha256")
        if text is None:
            raise StanzaError("bad_request", "<file> without sha256", sid)
        try:
            digest = b64decode(text)
        except ValueError:
            raise StanzaError("bad_request", "invalid base64 in sha256", sid) from None
        if len(digest) != 32:
            raise StanzaError("bad_request", "sha256 is not 32 bytes", sid)
        # C{from} and C{to} are checked by the receiver, which knows identities and its
        # own nodes.
        return cls(
            sid, name, size, digest, element.get("mime"), element.get("from"), element.get("to")
        )


@dataclass(frozen=True)
class Accept:
    """C{<accept id offset/>}: the receiver takes the file from C{offset} (its durable prefix)."""

    id: str
    offset: int

    def to_element(self) -> Element:
        return Element("accept", {"id": self.id, "offset": str(self.offset)})

    @classmethod
    def from_element(cls, element: Element) -> Accept:
        sid = _id(element)
        return cls(sid, _number(element, "offset", sid))


@dataclass(frozen=True)
class Chunk:
    """C{<chunk id offset>B64</chunk>}: at most L{MAX_CHUNK} bytes of the file at C{offset}."""

    id: str
    offset: int
    data: bytes

    def to_element(self) -> Element:
        attrs = {"id": self.id, "offset": str(self.offset)}
        return Element("chunk", attrs, text=b64encode(self.data))

    def serialized(self) -> bytes:
        """
        C{serialize(self.to_element())} without the tree and the escaping pass over 43 KB
        of base64 (which needs none): the same bytes (property-tested).
        """
        if _PLAIN_ID(self.id) is None or self.offset < 0 or not self.data:
            return serialize(self.to_element())
        return b'<chunk id="%s" offset="%d">%s</chunk>' % (
            self.id.encode("ascii"),
            self.offset,
            b64encode_bytes(self.data),
        )

    @classmethod
    def from_element(cls, element: Element) -> Chunk:
        sid = _id(element)
        offset = _number(element, "offset", sid)
        text = element.text
        if len(text) > MAX_CHUNK_B64:
            raise StanzaError("too_large", f"chunk over {MAX_CHUNK} bytes", sid)
        try:
            data = b64decode(text)
        except ValueError:
            raise StanzaError("bad_request", "invalid base64 in chunk", sid) from None
        if len(data) > MAX_CHUNK:  # cannot happen below MAX_CHUNK_B64, kept as the rule
            raise StanzaError("too_large", f"chunk over {MAX_CHUNK} bytes", sid)
        return cls(sid, offset, data)


@dataclass(frozen=True)
class Done:
    """C{<done id/>}: the sender has sent every byte."""

    id: str

    def to_element(self) -> Element:
        return Element("done", {"id": self.id})

    @classmethod
    def from_element(cls, element: Element) -> Done:
        return cls(_id(element))


@dataclass(frozen=True)
class Reject:
    """C{<reject id reason/>}: the receiver declines, or refuses the file at C{done}."""

    id: str
    reason: str

    def to_element(self) -> Element:
        return Element("reject", {"id": self.id, "reason": self.reason})

    @classmethod
    def from_element(cls, element: Element) -> Reject:
        sid = _id(element)
        reason = element.get("reason")
        if reason is None:
            raise StanzaError("bad_request", "<reject> without reason", sid)
        return cls(sid, reason)


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+").fullmatch
#: A chunk as we write it, up to its data.
_CHUNK_HEAD = re.compile(rb'<chunk id="([A-Za-z0-9_-]{1,64})" offset="([0-9]{1,19})">')
_CHUNK_END = b"</chunk>"


def parse_chunk(data: bytes) -> Chunk | None:
    """
    The C{chunk} in C{data} (a SEALED plaintext, padding stripped) when it is written exactly
    as we write it, with valid data — else None, and the caller takes the generic path
    (hardened parser, then L{Chunk.from_element}), which returns the same chunk for every
    input this accepts and handles everything else, errors included. Canonical base64 holds
    no character XML would read differently, so its text is the data as it stands.
    """
    head = _CHUNK_HEAD.match(data)
    if head is None or not data.endswith(_CHUNK_END):
        return None
    start, end = head.end(), len(data) - len(_CHUNK_END)
    if end < start or end - start > MAX_CHUNK_B64:
        return None
    offset = parse_number(head.group(2).decode("ascii"))
    if offset is None:
        return None
    try:
        payload = b64decode_bytes(memoryview(data)[start:end])  # no 43 KB copy
    except ValueError:
        return None
    if len(payload) > MAX_CHUNK:
        return None
    return Chunk(head.group(1).decode("ascii"), offset, payload)


#: File-transfer stanza classes by tag (a connection with file transfer parses these).
FILE_STANZAS: dict[str, Any] = {
    "file": FileOffer,
    "accept": Accept,
    "chunk": Chunk,
    "done": Done,
    "reject": Reject,
}

FileStanza = FileOffer | Accept | Chunk | Done | Reject
