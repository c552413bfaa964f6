"""
Handshake messages without the tree (docs/benchmarks.md): serialisers for M1-M8 and a parser
for them in the form we write them.

Each is an exact shortcut of the generic path (C{serialize(stanza.to_element())} and the
hardened L{sixchat.xmlcodec.parse}), which stays the definition: property tests
(test_handshake_fastpaths) check that every serialiser returns the generic bytes byte for byte
(raising where it raises) and that L{parse_handshake} returns nothing or exactly what L{parse}
returns. Kept apart from the state machines (L{sixchat.handshake}) because they are a
performance layer with rules of their own, not part of the protocol's logic.
"""

from __future__ import annotations

import binascii
import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sixchat.stanzas import ClientHello, ServerHello, Share
from sixchat.xmlcodec import Element, encode_checked, escape_attribute, escape_text

if TYPE_CHECKING:
    from sixchat.identity import Identity

__all__ = [
    "parse_handshake",
    "serialize_client_hello",
    "serialize_finished",
    "serialize_identity",
    "serialize_identity_stanza",
    "serialize_server_hello",
    "serialize_verify",
]


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def _attr(value: str) -> bytes:
    """An attribute value as L{serialize} writes it: escaped, UTF-8, refused outside Char."""
    return encode_checked(escape_attribute(value))


def _share_bytes(share: Share) -> bytes:
    head = b'<share group="' + _attr(share.group) + b'"'
    if share.key is not None:
        head += b' key="' + _attr(share.key) + b'"'
    if not share.text:
        return head + b"/>"
    return head + b">" + encode_checked(escape_text(share.text)) + b"</share>"


def serialize_client_hello(hello: ClientHello) -> bytes:
    """C{serialize(hello.to_element())}: M1."""
    out = [b'<hello versions="', _attr(" ".join(hello.versions)), b'" random="', _b64(hello.random)]
    if hello.to is not None:
        out += [b'" to="', _attr(hello.to)]
    if not hello.suites and not hello.shares:
        out.append(b'"/>')
        return b"".join(out)
    out.append(b'">')
    for suite in hello.suites:
        out.append(b"<suite>" + encode_checked(escape_text(suite)) + b"</suite>" if suite
                   else b"<suite/>")  # fmt: skip
    out += [_share_bytes(share) for share in hello.shares]
    out.append(b"</hello>")
    return b"".join(out)


def serialize_server_hello(hello: ServerHello) -> bytes:
    """C{serialize(hello.to_element())}: M2."""
    head = (
        b'<hello version="' + _attr(hello.version) + b'" random="' + _b64(hello.random)
        + b'" suite="' + _attr(hello.suite)
    )  # fmt: skip
    if not hello.shares:
        return head + b'"/>'
    return head + b'">' + b"".join(_share_bytes(s) for s in hello.shares) + b"</hello>"


#: Our chains as written in C{identity}: the C{<cert>} elements of each identity's chain,
#: made once (the base64 of a chain is about a kilobyte) and remade if its chain changes.
_chain_xml: weakref.WeakKeyDictionary[Identity, tuple[tuple[bytes, ...], bytes]] = (
    weakref.WeakKeyDictionary()
)


def _certs_bytes(certs: Sequence[bytes]) -> bytes:
    return b"".join(b"<cert>" + _b64(der) + b"</cert>" if der else b"<cert/>" for der in certs)


def serialize_identity(name: str, identity: Identity) -> bytes:
    """C{serialize(IdentityStanza(name, identity.chain_der).to_element())}: M3 / M6."""
    chain = tuple(identity.chain_der)
    try:
        cached = _chain_xml.get(identity)
        if cached is None or cached[0] != chain:
            cached = _chain_xml[identity] = (chain, _certs_bytes(chain))
    except TypeError:  # an identity-like object that cannot be weakly referenced
        return serialize_identity_stanza(name, chain)
    return serialize_identity_stanza(name, chain, cached[1])


def serialize_identity_stanza(
    name: str, certs: Sequence[bytes], certs_xml: bytes | None = None
) -> bytes:
    """C{serialize(IdentityStanza(name, certs).to_element())}."""
    head = b'<identity name="' + _attr(name) + b'"'
    if not certs:
        return head + b"/>"
    if certs_xml is None:
        certs_xml = _certs_bytes(certs)
    return head + b">" + certs_xml + b"</identity>"


def serialize_verify(alg: str, signature: bytes) -> bytes:
    """C{serialize(Verify(alg, signature).to_element())}: M4 / M7."""
    head = b'<verify alg="' + _attr(alg) + b'"'
    if not signature:
        return head + b"/>"
    return head + b">" + _b64(signature) + b"</verify>"


def serialize_finished(verify_data: bytes) -> bytes:
    """C{serialize(Finished(verify_data).to_element())}: M5 / M8."""
    if not verify_data:
        return b"<finished/>"
    return b"<finished>" + _b64(verify_data) + b"</finished>"


# Parsing: the messages in the form L{serialize} writes them, with attribute values and texts
# restricted to characters that mean themselves to an XML parser (printable ASCII but for
# C{" & < >}; base64; tokens), so the tree is exactly the one expat would build. Anything
# else (other spellings, entities, comments, whitespace, CDATA, other characters) is left to
# the hardened parser.
_B64 = rb"[A-Za-z0-9+/=]+"
_VALUE = rb"[ !#-%'-;=?-~]*"
_TOKEN = rb"[A-Za-z0-9._-]+"
_SHARE = rb'<share group="' + _VALUE + rb'"(?: key="' + _VALUE + rb'")?>' + _B64 + rb"</share>"
_SHARE_PARTS = re.compile(
    rb'<share group="(' + _VALUE + rb')"(?: key="(' + _VALUE + rb')")?>(' + _B64 + rb")</share>"
)
_FINISHED = re.compile(rb"<finished>(" + _B64 + rb")</finished>").fullmatch
_VERIFY = re.compile(rb'<verify alg="(' + _VALUE + rb')">(' + _B64 + rb")</verify>").fullmatch
_IDENTITY = re.compile(
    rb'<identity name="(' + _VALUE + rb')">((?:<cert>' + _B64 + rb"</cert>)+)</identity>"
).fullmatch
_CLIENT_HELLO = re.compile(
    rb'<hello versions="(' + _VALUE + rb')" random="(' + _VALUE + rb')"(?: to="(' + _VALUE
    + rb')")?>((?:<suite>' + _TOKEN + rb"</suite>)*)((?:" + _SHARE + rb")*)</hello>"
).fullmatch  # fmt: skip
_SERVER_HELLO = re.compile(
    rb'<hello version="(' + _VALUE + rb')" random="(' + _VALUE + rb')" suite="(' + _VALUE
    + rb')">((?:' + _SHARE + rb")*)</hello>"
).fullmatch  # fmt: skip


def parse_handshake(data: bytes) -> Element | None:
    """
    The tree L{parse} would return for C{data}, if C{data} is a handshake message written
    the way we write them; C{None} for anything else (then use L{parse}).
    """
    if data.startswith(b"<finished>"):
        m = _FINISHED(data)
        if m is None:
            return None
        return Element("finished", {}, [], m[1].decode("ascii"))
    if data.startswith(b"<verify "):
        m = _VERIFY(data)
        if m is None:
            return None
        return Element("verify", {"alg": m[1].decode("ascii")}, [], m[2].decode("ascii"))
    if data.startswith(b"<identity "):
        m = _IDENTITY(data)
        if m is None:
            return None
        certs = m[2][6:-7].split(b"</cert><cert>")
        return Element(
            "identity",
            {"name": m[1].decode("ascii")},
            [Element("cert", {}, [], c.decode("ascii")) for c in certs],
        )
    if data.startswith(b"<hello versions="):
        m = _CLIENT_HELLO(data)
        if m is None:
            return None
        attrs = {"versions": m[1].decode("ascii"), "random": m[2].decode("ascii")}
        if m[3] is not None:
            attrs["to"] = m[3].decode("ascii")
        children = []
        if m[4]:
            suites = m[4][7:-8].split(b"</suite><suite>")
            children = [Element("suite", {}, [], s.decode("ascii")) for s in suites]
        children += _share_list(m[5])
        return Element("hello", attrs, children)
    if data.startswith(b"<hello version="):
        m = _SERVER_HELLO(data)
        if m is None:
            return None
        attrs = {
            "version": m[1].decode("ascii"),
            "random": m[2].decode("ascii"),
            "suite": m[3].decode("ascii"),
        }
        return Element("hello", attrs, _share_list(m[4]))
    return None


def _share_list(data: bytes) -> list[Element]:
    out = []
    for m in _SHARE_PARTS.finditer(data):
        attrs = {"group": m[1].decode("ascii")}
        if m[2] is not None:
            attrs["key"] = m[2].decode("ascii")
        out.append(Element("share", attrs, [], m[3].decode("ascii")))
    return out
