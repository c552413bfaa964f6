"""
The own-device sync stanzas (docs/protocol.md, "Extension: own-device sync"): allowed only on
a session whose two ends prove the same identity. C{sync-hello} announces a node (its name,
its store's id and the top of its change feed), C{sync-pull} asks for the feed after a
cursor, and C{sync-batch} answers with items: outgoing messages with their delivery entries
(C{out}), received messages (C{in}), cancelled outgoing messages (C{cancelled}), contacts
(C{contact}) and pin decisions (C{pin}).

Like L{sixchat.stanzas}, each class turns itself into an L{Element} and back; parsing raises
L{StanzaError} (C{bad_request}, answered with C{<error/>}, never fatal). Times are integer
microseconds since the Unix epoch, in ASCII decimal digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sixchat.errors import StanzaError
from sixchat.identity import is_valid_identity
from sixchat.stanzas import MAX_BODY_CHARS, is_valid_id, parse_timestamp
from sixchat.xmlcodec import Element, b64decode, b64encode

__all__ = [
    "DELIVERY_STATES",
    "MAX_ITEMS",
    "SYNC_STANZAS",
    "CancelledItem",
    "ContactItem",
    "FileMeta",
    "InItem",
    "NodeEntry",
    "OutItem",
    "PinItem",
    "SyncBatch",
    "SyncHello",
    "SyncItem",
    "SyncPull",
    "parse_item",
]

#: At most this many items in one batch (and the largest C{max} a pull may ask for).
MAX_ITEMS = 256
#: The node states an C{out} item's C{node} entries carry.
DELIVERY_STATES = ("queued", "sent", "delivered", "failed", "expired")
OUTCOMES = ("expired", "failed")
#: A node name (irp-1 §3.1): 1-64 of these characters.
_NODE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z", re.ASCII)
_STORE = re.compile(r"[0-9a-f]{32}\Z", re.ASCII)
_UINT = re.compile(r"[0-9]{1,19}\Z", re.ASCII)
_SPKI = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_MAX_UINT = 2**63 - 1
_MAX_TOKEN = 64
#: The longest file name and MIME type an C{out} item's C{file} may carry.
MAX_FILE_NAME = 1024
MAX_MIME = 255


def is_valid_node(value: str | None) -> bool:
    return value is not None and _NODE.match(value) is not None


def _bad(text: str, ref: str | None = None) -> StanzaError:
    return StanzaError("bad_request", text, ref)


def _uint(element: Element, name: str, ref: str | None, *, optional: bool = False) -> Any:
    value = element.get(name)
    if value is None and optional:
        return None
    if value is None or _UINT.match(value) is None or int(value) > _MAX_UINT:
        raise _bad(f"<{element.tag}> without a valid {name}", ref)
    return int(value)


def _required(element: Element, name: str, ref: str | None) -> str:
    value = element.get(name)
    if value is None:
        raise _bad(f"<{element.tag}> without {name}", ref)
    return value


def _identity(element: Element, name: str, ref: str | None) -> str:
    value = _required(element, name, ref)
    if not is_valid_identity(value):
        raise _bad(f"<{element.tag}> {name} is not an identity", ref)
    return value


def _item_id(element: Element, name: str, ref: str | None) -> str:
    value = element.get(name)
    if not is_valid_id(value):
        raise _bad(f"<{element.tag}> without a valid {name}", ref)
    assert value is not None
    return value


def _node(element: Element, name: str, ref: str | None, *, optional: bool = False) -> Any:
    value = element.get(name)
    if value is None and optional:
        return None
    if not is_valid_node(value):
        raise _bad(f"<{element.tag}> without a valid {name}", ref)
    return value


def _ts(element: Element, ref: str | None) -> str:
    ts = _required(element, "ts", ref)
    try:
        parse_timestamp(ts)
    except ValueError:
        raise _bad(f"<{element.tag}> with an invalid ts", ref) from None
    return ts


def _token(element: Element, name: str, ref: str | None) -> str | None:
    value = element.get(name)
    if value is not None and not (0 < len(value) <= _MAX_TOKEN):
        raise _bad(f"<{element.tag}> with an invalid {name}", ref)
    return value


def _body(element: Element, ref: str | None) -> str:
    bodies = element.findall("body")
    if len(bodies) != 1 or bodies[0].children:
        raise _bad(f"<{element.tag}> needs exactly one body of character data", ref)
    if len(bodies[0].text) > MAX_BODY_CHARS:
        raise StanzaError("too_large", f"body over {MAX_BODY_CHARS} characters", ref)
    return bodies[0].text


def _message_children(body: str, thread: str | None) -> list[Element]:
    children = [Element("body", text=body)]
    if thread is not None:
        children.append(Element("thread", text=thread))
    return children


def _thread(element: Element, ref: str | None) -> str | None:
    threads = element.findall("thread")
    if len(threads) > 1:
        raise _bad(f"<{element.tag}> with more than one thread", ref)
    return threads[0].text if threads else None


# -- items --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeEntry:
    """One recipient node's delivery entry of an outgoing message (§11.16)."""

    node: str
    state: str
    at: int | None = None
    reason: str | None = None

    def to_element(self) -> Element:
        attrs = {"name": self.node, "state": self.state}
        if self.at is not None:
            attrs["at"] = str(self.at)
        if self.reason is not None:
            attrs["reason"] = self.reason
        return Element("node", attrs)

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> NodeEntry:
        state = element.get("state")
        if state not in DELIVERY_STATES:
            raise _bad("<node> without a valid state", ref)
        assert state is not None
        return cls(
            _node(element, "name", ref),
            state,
            _uint(element, "at", ref, optional=True),
            _token(element, "reason", ref),
        )


@dataclass(frozen=True)
class FileMeta:
    """
    C{<file name size sha256 [mime]/>} inside an C{out} item: the outgoing message is a file
    (§8.7), with what its offer carries (C{sha256} the raw digest). A node that gets it knows
    the id names a file, never a text message, and delivers it only once it holds the bytes.
    """

    name: str
    size: int
    sha256: bytes
    mime: str | None = None

    def to_element(self) -> Element:
        attrs = {"name": self.name, "size": str(self.size), "sha256": b64encode(self.sha256)}
        if self.mime is not None:
            attrs["mime"] = self.mime
        return Element("file", attrs)

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> FileMeta:
        name = element.get("name")
        if not name or len(name) > MAX_FILE_NAME:
            raise _bad("<file> in <out> without a valid name", ref)
        mime = element.get("mime")
        if mime is not None and not (0 < len(mime) <= MAX_MIME):
            raise _bad("<file> in <out> with an invalid mime", ref)
        try:
            digest = b64decode(element.get("sha256") or "")
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise _bad("<file> in <out> without a valid sha256", ref)
        return cls(name, _uint(element, "size", ref), digest, mime)


@dataclass(frozen=True)
class OutItem:
    """
    An outgoing message of this identity, as queued by C{origin} (the node that queued it),
    with its outcome and every recipient node's entry.
    """

    id: str
    to: str
    ts: str
    at: int
    body: str
    thread: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    outcome: str | None = None
    reason: str | None = None
    outcome_at: int | None = None
    nodes: tuple[NodeEntry, ...] = ()
    #: The file this message is, if it is one (a C{file} child after C{body}/C{thread}).
    file: FileMeta | None = None

    def to_element(self) -> Element:
        attrs = {"id": self.id, "to": self.to, "ts": self.ts, "at": str(self.at)}
        if self.reply_to is not None:
            attrs["reply"] = self.reply_to
        if self.origin is not None:
            attrs["origin"] = self.origin
        if self.outcome is not None:
            attrs["outcome"] = self.outcome
            if self.reason is not None:
                attrs["reason"] = self.reason
            if self.outcome_at is not None:
                attrs["outcome-at"] = str(self.outcome_at)
        children = _message_children(self.body, self.thread)
        if self.file is not None:
            children.append(self.file.to_element())
        children += [n.to_element() for n in self.nodes]
        return Element("out", attrs, children)

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> OutItem:
        outcome = element.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise _bad("<out> with an invalid outcome", ref)
        reply = element.get("reply")
        if reply is not None and not is_valid_id(reply):
            raise _bad("<out> with an invalid reply", ref)
        nodes = tuple(NodeEntry.from_element(n, ref) for n in element.findall("node"))
        if len({n.node for n in nodes}) != len(nodes):
            raise _bad("<out> names a node twice", ref)
        files = element.findall("file")
        if len(files) > 1:
            raise _bad("<out> with more than one file", ref)
        return cls(
            _item_id(element, "id", ref),
            _identity(element, "to", ref),
            _ts(element, ref),
            _uint(element, "at", ref),
            _body(element, ref),
            _thread(element, ref),
            reply,
            _node(element, "origin", ref, optional=True),
            outcome,
            _token(element, "reason", ref) if outcome else None,
            _uint(element, "outcome-at", ref, optional=True) if outcome else None,
            nodes,
            FileMeta.from_element(files[0], ref) if files else None,
        )


@dataclass(frozen=True)
class InItem:
    """A message this identity received from C{sender} (exactly once per (sender, id))."""

    sender: str
    id: str
    ts: str
    at: int
    body: str
    thread: str | None = None
    reply_to: str | None = None
    read: bool = False

    def to_element(self) -> Element:
        attrs = {
            "from": self.sender,
            "id": self.id,
            "ts": self.ts,
            "at": str(self.at),
            "read": "1" if self.read else "0",
        }
        if self.reply_to is not None:
            attrs["reply"] = self.reply_to
        return Element("in", attrs, _message_children(self.body, self.thread))

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> InItem:
        read = element.get("read")
        if read not in ("0", "1"):
            raise _bad("<in> without a valid read", ref)
        reply = element.get("reply")
        if reply is not None and not is_valid_id(reply):
            raise _bad("<in> with an invalid reply", ref)
        return cls(
            _identity(element, "from", ref),
            _item_id(element, "id", ref),
            _ts(element, ref),
            _uint(element, "at", ref),
            _body(element, ref),
            _thread(element, ref),
            reply,
            read == "1",
        )


@dataclass(frozen=True)
class CancelledItem:
    """An outgoing message cancelled before any node received it."""

    id: str

    def to_element(self) -> Element:
        return Element("cancelled", {"id": self.id})

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> CancelledItem:
        return cls(_item_id(element, "id", ref))


@dataclass(frozen=True)
class ContactItem:
    """A contact: C{identity} as displayed, first dealing, last time the peer showed up."""

    identity: str
    first: int
    last: int | None = None

    def to_element(self) -> Element:
        attrs = {"identity": self.identity, "first": str(self.first)}
        if self.last is not None:
            attrs["last"] = str(self.last)
        return Element("contact", attrs)

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> ContactItem:
        return cls(
            _identity(element, "identity", ref),
            _uint(element, "first", ref),
            _uint(element, "last", ref, optional=True),
        )


@dataclass(frozen=True)
class PinItem:
    """
    The last decision on one key of a contact: pinned or not, at decision C{version} (the
    higher version wins; at equal versions, not pinned wins).
    """

    identity: str
    spki: bytes
    pinned: bool
    version: int

    def to_element(self) -> Element:
        return Element(
            "pin",
            {
                "identity": self.identity,
                "spki": self.spki.hex(),
                "pinned": "1" if self.pinned else "0",
                "version": str(self.version),
            },
        )

    @classmethod
    def from_element(cls, element: Element, ref: str | None) -> PinItem:
        spki = element.get("spki")
        if spki is None or _SPKI.match(spki) is None:
            raise _bad("<pin> without a valid spki (64 lowercase hex digits)", ref)
        pinned = element.get("pinned")
        if pinned not in ("0", "1"):
            raise _bad("<pin> without a valid pinned", ref)
        return cls(
            _identity(element, "identity", ref),
            bytes.fromhex(spki),
            pinned == "1",
            _uint(element, "version", ref),
        )


SyncItem = OutItem | InItem | CancelledItem | ContactItem | PinItem

_ITEMS: dict[str, Any] = {
    "out": OutItem,
    "in": InItem,
    "cancelled": CancelledItem,
    "contact": ContactItem,
    "pin": PinItem,
}


def parse_item(element: Element, ref: str | None) -> SyncItem:
    cls = _ITEMS.get(element.tag)
    if cls is None:
        raise _bad(f"<{element.tag}> is not a sync item", ref)
    item: SyncItem = cls.from_element(element, ref)
    return item


# -- stanzas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncHello:
    """
    C{<sync-hello id node store top [out-files]/>}: the sender's node name, its store's id
    (32 hex digits; a new id means a new feed, so cursors into the old one are void) and the
    seq of its newest feed entry. Sent when a session starts and whenever the feed grows.
    C{out_files} (C{out-files="1"}): the sender takes our outgoing files (an C{out} item with
    C{file}, the bytes by C{<file to>}); a node that does not say so never gets them, so
    that a node of an earlier version never takes a file for a text message.
    """

    id: str
    node: str
    store: str
    top: int
    out_files: bool = False

    def to_element(self) -> Element:
        attributes = {"id": self.id, "node": self.node, "store": self.store, "top": str(self.top)}
        if self.out_files:
            attributes["out-files"] = "1"
        return Element("sync-hello", attributes)

    @classmethod
    def from_element(cls, element: Element) -> SyncHello:
        sid = _item_id(element, "id", None)
        store = element.get("store")
        if store is None or _STORE.match(store) is None:
            raise _bad("<sync-hello> without a valid store", sid)
        return cls(
            sid, _node(element, "node", sid), store, _uint(element, "top", sid),
            element.get("out-files") == "1",
        )  # fmt: skip


@dataclass(frozen=True)
class SyncPull:
    """C{<sync-pull id store after max/>}: the feed of store C{store} after seq C{after}."""

    id: str
    store: str
    after: int
    max: int = MAX_ITEMS

    def to_element(self) -> Element:
        return Element(
            "sync-pull",
            {"id": self.id, "store": self.store, "after": str(self.after), "max": str(self.max)},
        )

    @classmethod
    def from_element(cls, element: Element) -> SyncPull:
        sid = _item_id(element, "id", None)
        store = element.get("store")
        if store is None or _STORE.match(store) is None:
            raise _bad("<sync-pull> without a valid store", sid)
        most = _uint(element, "max", sid)
        if not 1 <= most <= MAX_ITEMS:
            raise _bad(f"<sync-pull> max must be 1-{MAX_ITEMS}", sid)
        return cls(sid, store, _uint(element, "after", sid), most)


@dataclass(frozen=True)
class SyncBatch:
    """
    C{<sync-batch ref store next more>items</sync-batch>}: the answer to pull C{ref}.
    C{next} is the cursor to pull after next time (the seq of the last feed entry this
    batch covers), C{more} whether the feed holds more after it.
    """

    ref: str
    store: str
    next: int
    more: bool
    items: tuple[SyncItem, ...] = field(default=())

    def to_element(self) -> Element:
        attrs = {
            "ref": self.ref,
            "store": self.store,
            "next": str(self.next),
            "more": "1" if self.more else "0",
        }
        return Element("sync-batch", attrs, [i.to_element() for i in self.items])

    @classmethod
    def from_element(cls, element: Element) -> SyncBatch:
        ref = _item_id(element, "ref", None)
        store = element.get("store")
        if store is None or _STORE.match(store) is None:
            raise _bad("<sync-batch> without a valid store", ref)
        more = element.get("more")
        if more not in ("0", "1"):
            raise _bad("<sync-batch> without a valid more", ref)
        if len(element.children) > MAX_ITEMS:
            raise StanzaError("too_large", f"<sync-batch> over {MAX_ITEMS} items", ref)
        items = tuple(parse_item(child, ref) for child in element.children)
        return cls(ref, store, _uint(element, "next", ref), more == "1", items)


#: tag -> class, for the connection (only on a session between nodes of one identity).
SYNC_STANZAS: dict[str, Any] = {
    "sync-hello": SyncHello,
    "sync-pull": SyncPull,
    "sync-batch": SyncBatch,
}
