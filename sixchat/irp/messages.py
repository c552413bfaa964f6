"""
IRP messages (irp-1 §3–§5) as typed values, sans-IO: requests, responses, pushes and errors,
each serialising to and parsing from an L{Element} of the E2E §3 XML profile.

Parsing a request checks everything the spec makes a C{bad_request} (ids, node names,
contacts, C{expires}); the server adds what needs state (authentication, limits, tokens).
A malformed request raises L{IRPError}; the caller answers it (without an id, and closes the
connection, when the id itself was invalid: §7.2).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sixchat.errors import SixchatError
from sixchat.xmlcodec import Element, b64decode, b64encode

DEFAULT_PORT = 4604

ERROR_REASONS = (
    "bad_request",
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "invalid_token",
    "bad_csr",
    "unsupported",
    "internal",
)

MIN_EXPIRES = 30
MAX_EXPIRES = 3600
DEFAULT_EXPIRES = 300
MAX_CONTACTS = 8

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_NODE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_EXPIRES = re.compile(r"-?[0-9]{1,10}\Z")


class IRPError(SixchatError):
    """An IRP C{<error>}: C{reason} is one of L{ERROR_REASONS}; C{id} None means fatal."""

    def __init__(self, reason: str, text: str = "", id: str | None = None) -> None:
        super().__init__(f"{reason}: {text}" if text else reason)
        self.reason = reason if reason in ERROR_REASONS else "internal"
        self.text = text
        self.id = id

    def to_element(self) -> Element:
        attrs = {} if self.id is None else {"id": self.id}
        attrs["reason"] = self.reason
        return Element("error", attrs, text=self.text)

    @classmethod
    def from_element(cls, element: Element) -> IRPError:
        reason = element.get("reason") or "internal"
        rid = element.get("id")
        return cls(reason if reason in ERROR_REASONS else "internal", element.text,
                   rid if is_valid_id(rid) else None)  # fmt: skip


def is_valid_id(value: str | None) -> bool:
    return value is not None and _ID.match(value) is not None


def is_valid_node(value: str | None) -> bool:
    return value is not None and _NODE.match(value) is not None


def default_node() -> str:
    """The host name's first label, made a valid node name (irp-1 §3.1)."""
    import socket

    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64] or "node"


def clamp_expires(text: str | None) -> int:
    """§3.1 / §7.3: the granted expiry; a missing value is the default 300."""
    if text is None:
        return DEFAULT_EXPIRES
    if _EXPIRES.match(text) is None:
        raise ValueError("expires must be an integer")
    return max(MIN_EXPIRES, min(MAX_EXPIRES, int(text)))


def canonical_host(host: str, allow_private: bool = False) -> str:
    """
    The canonical form of a contact host (§3.1, §7.3): an IP literal, no zone id, IPv6 per
    RFC 5952, IPv4-mapped stored as plain IPv4. Loopback, link-local, unspecified, multicast
    and broadcast addresses are refused unless C{allow_private} (tests, private nets).

    @raise ValueError: with the reason, for anything else.
    """
    if "%" in host:
        raise ValueError("host must not carry a zone id")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("host must be an IP literal") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not allow_private:
        broadcast = isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(
            "255.255.255.255"
        )
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or broadcast:
            raise ValueError(f"{ip} is a loopback, link-local, unspecified or multicast address")
    return ip.compressed


@dataclass(frozen=True)
class Contact:
    host: str
    port: int

    def to_element(self) -> Element:
        return Element("contact", {"host": self.host, "port": str(self.port)})

    @classmethod
    def from_element(cls, element: Element, allow_private: bool = True) -> Contact:
        host = element.get("host")
        port = element.get("port")
        if host is None or port is None:
            raise ValueError("contact needs host and port")
        if not port.isdigit() or not 1 <= int(port) <= 65535 or len(port) > 5:
            raise ValueError("port must be 1-65535")
        return cls(canonical_host(host, allow_private), int(port))


@dataclass(frozen=True)
class NodeBinding:
    """One node's live binding as a C{record} or C{presence} carries it (§3.3)."""

    name: str
    contacts: tuple[Contact, ...]
    cert: bytes
    until: str
    updated: str

    def to_element(self) -> Element:
        children = [c.to_element() for c in self.contacts]
        children.append(Element("cert", text=b64encode(self.cert)))
        attrs = {"name": self.name, "until": self.until, "updated": self.updated}
        return Element("node", attrs, children)

    @classmethod
    def from_element(cls, element: Element) -> NodeBinding:
        cert = element.find("cert")
        name = element.get("name")
        if name is None or cert is None:
            raise ValueError("node needs a name and a cert")
        contacts = tuple(Contact.from_element(c) for c in element.findall("contact"))
        return cls(
            name,
            contacts,
            b64decode(cert.text),
            element.get("until") or "",
            element.get("updated") or "",
        )


# ---------------------------------------------------------------------------------------------
# Requests (client -> server)


@dataclass
class Register:
    id: str
    node: str
    contacts: list[Contact]
    expires: int = DEFAULT_EXPIRES
    tag = "register"

    def to_element(self) -> Element:
        return Element(
            "register",
            {"id": self.id, "node": self.node, "expires": str(self.expires)},
            [c.to_element() for c in self.contacts],
        )


@dataclass
class Unregister:
    id: str
    node: str
    tag = "unregister"

    def to_element(self) -> Element:
        return Element("unregister", {"id": self.id, "node": self.node})


@dataclass
class Lookup:
    id: str
    identity: str
    tag = "lookup"

    def to_element(self) -> Element:
        return Element("lookup", {"id": self.id, "identity": self.identity})


@dataclass
class Watch:
    id: str
    identity: str
    tag = "watch"

    def to_element(self) -> Element:
        return Element("watch", {"id": self.id, "identity": self.identity})


@dataclass
class Unwatch:
    id: str
    identity: str
    tag = "unwatch"

    def to_element(self) -> Element:
        return Element("unwatch", {"id": self.id, "identity": self.identity})


@dataclass
class CA:
    id: str
    tag = "ca"

    def to_element(self) -> Element:
        return Element("ca", {"id": self.id})


@dataclass
class Enroll:
    """
    C{identity} (optional, an extension irp-1 §1 lets old servers ignore): the identity the
    client expects the invitation to be for; a registry that knows it refuses a mismatch
    before spending the token (docs/irp.md).
    """

    id: str
    token: str
    csr: bytes
    identity: str | None = None
    tag = "enroll"

    def to_element(self) -> Element:
        csr = Element("csr", text=b64encode(self.csr))
        attrs = {"id": self.id, "token": self.token}
        if self.identity is not None:
            attrs["identity"] = self.identity
        return Element("enroll", attrs, [csr])


@dataclass
class Renew:
    id: str
    csr: bytes
    tag = "renew"

    def to_element(self) -> Element:
        return Element("renew", {"id": self.id}, [Element("csr", text=b64encode(self.csr))])


@dataclass
class Revoke:
    id: str
    tag = "revoke"

    def to_element(self) -> Element:
        return Element("revoke", {"id": self.id})


@dataclass
class CRL:
    id: str
    tag = "crl"

    def to_element(self) -> Element:
        return Element("crl", {"id": self.id})


@dataclass
class Ping:
    id: str
    tag = "ping"

    def to_element(self) -> Element:
        return Element("ping", {"id": self.id})


Request = (
    Register | Unregister | Lookup | Watch | Unwatch | CA | Enroll | Renew | Revoke | CRL | Ping
)

#: Requests allowed on a connection without a client certificate (§4, §5). C{lookup} and
#: C{watch} join them under the C{public} lookup policy (§3.3).
ANONYMOUS_REQUESTS = frozenset({"ca", "enroll", "crl", "ping"})
REQUEST_TAGS = frozenset(
    {"register", "unregister", "lookup", "watch", "unwatch", "ca", "enroll", "renew",
     "revoke", "crl", "ping"}
)  # fmt: skip


def _identity_attr(element: Element, rid: str) -> str:
    from sixchat.identity import is_valid_identity

    identity = element.get("identity")
    if identity is None or not is_valid_identity(identity):
        raise IRPError("bad_request", "missing or invalid identity", rid)
    return identity


def _csr(element: Element, rid: str) -> bytes:
    csr = element.find("csr")
    if csr is None:
        raise IRPError("bad_request", "missing csr", rid)
    try:
        return b64decode(csr.text)
    except ValueError:
        raise IRPError("bad_request", "csr is not valid base64", rid) from None


def parse_request(element: Element, allow_private: bool = False) -> Request:
    """
    A request from its element.

    @raise IRPError: C{bad_request} without id (fatal, §7.2) for a missing or invalid id;
        C{unsupported} for an unknown element; C{bad_request} with the id for the rest.
    """
    rid = element.get("id")
    if not is_valid_id(rid):
        raise IRPError("bad_request", "request without a valid id")
    assert rid is not None
    tag = element.tag
    if tag not in REQUEST_TAGS:
        raise IRPError("unsupported", f"unknown request <{tag}>", rid)
    if tag == "register":
        node = element.get("node")
        if not is_valid_node(node):
            raise IRPError("bad_request", "missing or invalid node", rid)
        assert node is not None
        try:
            expires = clamp_expires(element.get("expires"))
        except ValueError as e:
            raise IRPError("bad_request", str(e), rid) from None
        contacts_el = element.findall("contact")
        if not 1 <= len(contacts_el) <= MAX_CONTACTS:
            raise IRPError("bad_request", f"a node has 1 to {MAX_CONTACTS} contacts", rid)
        try:
            contacts = [Contact.from_element(c, allow_private) for c in contacts_el]
        except ValueError as e:
            raise IRPError("bad_request", str(e), rid) from None
        return Register(rid, node, contacts, expires)
    if tag == "unregister":
        node = element.get("node")
        if not is_valid_node(node):
            raise IRPError("bad_request", "missing or invalid node", rid)
        assert node is not None
        return Unregister(rid, node)
    if tag == "lookup":
        return Lookup(rid, _identity_attr(element, rid))
    if tag == "watch":
        return Watch(rid, _identity_attr(element, rid))
    if tag == "unwatch":
        return Unwatch(rid, _identity_attr(element, rid))
    if tag == "enroll":
        token = element.get("token")
        if not token:
            raise IRPError("bad_request", "missing token", rid)
        expected = None if element.get("identity") is None else _identity_attr(element, rid)
        return Enroll(rid, token, _csr(element, rid), expected)
    if tag == "renew":
        return Renew(rid, _csr(element, rid))
    simple: dict[str, Callable[[str], Request]] = {
        "ca": CA, "revoke": Revoke, "crl": CRL, "ping": Ping,
    }  # fmt: skip
    return simple[tag](rid)


# ---------------------------------------------------------------------------------------------
# Responses and pushes (server -> client)


@dataclass
class Registered:
    id: str
    expires: int

    def to_element(self) -> Element:
        return Element("registered", {"id": self.id, "expires": str(self.expires)})


@dataclass
class Record:
    """A C{record} (lookup answer) or, with C{id} None, a C{presence} push (§3.3, §3.4)."""

    identity: str
    nodes: list[NodeBinding] = field(default_factory=list)
    cert: bytes | None = None
    id: str | None = None

    def to_element(self) -> Element:
        children = [n.to_element() for n in self.nodes]
        if self.id is None:  # presence: node children only (§7.5)
            return Element("presence", {"identity": self.identity}, children)
        if self.cert is not None:
            children.append(Element("cert", text=b64encode(self.cert)))
        return Element("record", {"id": self.id, "identity": self.identity}, children)

    @classmethod
    def from_element(cls, element: Element) -> Record:
        nodes = [NodeBinding.from_element(n) for n in element.findall("node")]
        cert = element.find("cert")
        return cls(
            element.get("identity") or "",
            nodes,
            b64decode(cert.text) if cert is not None else None,
            element.get("id"),
        )


@dataclass
class Certs:
    """C{ca-certs} (tag C{ca-certs}) or C{issued} (tag C{issued}): a list of DER certs."""

    id: str
    certs: list[bytes]
    tag: str = "issued"

    def to_element(self) -> Element:
        children = [Element("cert", text=b64encode(c)) for c in self.certs]
        return Element(self.tag, {"id": self.id}, children)


@dataclass
class CRLData:
    id: str
    crls: list[bytes]

    def to_element(self) -> Element:
        return Element(
            "crl-data", {"id": self.id}, [Element("crl", text=b64encode(c)) for c in self.crls]
        )


@dataclass
class Ack:
    """The bodiless answers: C{unregistered}, C{watching}, C{unwatched}, C{revoked}, C{pong}."""

    tag: str
    id: str

    def to_element(self) -> Element:
        return Element(self.tag, {"id": self.id})


Response = Registered | Record | Certs | CRLData | Ack | IRPError


def parse_response(element: Element) -> Response:
    """
    A response or push from the server, for the client.

    @raise ValueError: if it is not one (the client then treats the connection as broken).
    """
    tag = element.tag
    if tag == "error":
        return IRPError.from_element(element)
    if tag in ("record", "presence"):
        record = Record.from_element(element)
        if tag == "presence":
            record.id = None
        elif record.id is None:
            raise ValueError("record without id")
        return record
    rid = element.get("id")
    if rid is None:
        raise ValueError(f"<{tag}> without id")
    if tag == "registered":
        return Registered(rid, clamp_expires(element.get("expires")))
    if tag in ("ca-certs", "issued"):
        return Certs(rid, [b64decode(c.text) for c in element.findall("cert")], tag)
    if tag == "crl-data":
        return CRLData(rid, [b64decode(c.text) for c in element.findall("crl")])
    if tag in ("unregistered", "watching", "unwatched", "revoked", "pong"):
        return Ack(tag, rid)
    raise ValueError(f"unknown response <{tag}>")
