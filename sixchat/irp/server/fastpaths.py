"""
The byte-level fast paths of the registry's commonest request and answer: a C{lookup}
recognised without the XML parser (L{fast_lookup}) and a C{record} written with format strings
(L{record_bytes}). Each is property-tested against the generic path (C{test_fastpaths}), which
stays the definition: anything these do not recognise goes the long way.
"""

from __future__ import annotations

import functools
import re

from sixchat.identity import is_valid_identity
from sixchat.irp.messages import Lookup, NodeBinding
from sixchat.irp.store.interfaces import IdentityState
from sixchat.stanzas import format_timestamp
from sixchat.xmlcodec import b64encode, encode_checked, escape_attribute

__all__ = ["fast_lookup", "record_bytes"]


#: What L{fast_lookup} takes without the parser: ids as irp-1 §1 allows them, identities
#: of characters that need no escaping in an attribute (anything else goes the long way).
_LOOKUP_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_LOOKUP_IDENTITY = re.compile(rb"[A-Za-z0-9.@_+-]{3,320}")

#: L{is_valid_identity} remembered for the identities asked about most (a pure function of
#: the text): a lookup of a known name costs a dictionary probe instead of the label checks.
_valid_identity = functools.lru_cache(maxsize=4096)(is_valid_identity)


def fast_lookup(payload: bytes) -> Lookup | None:
    """
    The request in C{payload} when it is a C{lookup} written exactly as
    C{<lookup id="ID" identity="IDENTITY"/>} (what clients send, sixchat's included) with a
    valid id and identity; else None, and the caller parses it. For every payload it
    accepts, the hardened parser and L{parse_request} give the same request (a property
    test checks it); it saves them on the registry's commonest request.
    """
    if not payload.startswith(b'<lookup id="') or not payload.endswith(b'"/>'):
        return None
    id_end = payload.find(b'"', 12)
    if id_end < 0 or _LOOKUP_ID.fullmatch(payload, 12, id_end) is None:
        return None
    if not payload.startswith(b'" identity="', id_end):
        return None
    start = id_end + 12
    if _LOOKUP_IDENTITY.fullmatch(payload, start, len(payload) - 3) is None:
        return None
    identity = payload[start:-3].decode("ascii")
    if not _valid_identity(identity):
        return None
    return Lookup(payload[12:id_end].decode("ascii"), identity)


def record_bytes(state: IdentityState, rid: str) -> bytes:
    """
    C{serialize(Record(state.identity, _nodes(state), state.cert, rid).to_element())}, byte
    for byte (a property test checks it), without building the tree: the answer to
    every lookup. Everything after the id depends on the state alone and is cached by it
    (L{_record_tail}).

    @raise ValueError: where that raises (a code point outside XML C{Char}).
    """
    tails = _TAILS
    hit = tails.get(id(state))
    if hit is not None and hit[0] is state:
        tail = hit[1]
    else:
        tail = _record_tail(state)
        if len(tails) >= _TAILS_KEPT:
            del tails[next(iter(tails))]  # the oldest
        tails[id(state)] = (state, tail)
    return b'<record id="' + encode_checked(escape_attribute(rid)) + tail


#: L{_record_tail} by the state I{object}: the stores' lookup caches hand out the same state
#: object for every lookup of an unchanged identity, and an object's id costs nothing, where
#: the memo by value must hash the whole state (its bindings, contacts and certificates) on
#: every call. Each entry holds its state, so an id is never reused while it is kept.
_TAILS: dict[int, tuple[IdentityState, bytes]] = {}
_TAILS_KEPT = 4096


@functools.lru_cache(maxsize=1024)
def _record_tail(state: IdentityState) -> bytes:
    """
    The part of L{record_bytes} after the id, from its closing quote on. Memoised by the
    state's value (states are immutable): the timestamps, base64 and escaping of an
    identity's record are computed once while its bindings stay the same. The SQLite
    store hands out the very same state objects for unchanged rows, so a hit costs a hash.
    """
    esc = escape_attribute
    parts = ['" identity="', esc(state.identity), '"']
    children: list[str] = []
    for b in state.bindings:
        children.append(
            f'<node name="{esc(b.node)}" until="{esc(format_timestamp(b.until))}" '
            f'updated="{esc(format_timestamp(b.updated))}">'
        )
        for c in b.contacts:
            children.append(f'<contact host="{esc(c.host)}" port="{esc(str(c.port))}"/>')
        cert = b64encode(b.cert)  # the base64 alphabet needs no escaping
        children.append(f"<cert>{cert}</cert></node>" if cert else "<cert/></node>")
    if state.cert is not None:
        cert = b64encode(state.cert)
        children.append(f"<cert>{cert}</cert>" if cert else "<cert/>")
    if children:
        parts.append(">")
        parts.extend(children)
        parts.append("</record>")
    else:
        parts.append("/>")
    return encode_checked("".join(parts))


def _nodes(state: IdentityState) -> list[NodeBinding]:
    return [
        NodeBinding(b.node, b.contacts, b.cert, format_timestamp(b.until),
                    format_timestamp(b.updated))
        for b in state.bindings
    ]  # fmt: skip

