"""
The baselines the benchmarks compare against, built the way a Twisted user would build them.

  - B{TLS 1.3}: C{twisted.internet.ssl.CertificateOptions} (pyOpenSSL) on both sides with
    mutual certificate authentication: the responder requires a client certificate, both
    verify the peer's chain against the bench CA (OpenSSL's verifier, in C), with the same
    keys and certificates our protocol uses. Twisted's defaults otherwise (TLS 1.3 only via
    C{raiseMinimumTo}, no session cache, no session tickets, C{MODE_RELEASE_BUFFERS}); the key
    exchange group is set to the one being compared (C{X25519MLKEM768} or C{X25519}) with
    C{SSL_CTX_set1_curves_list}, the only group the client offers, so neither side pays for
    a key share it does not use. Carried by C{TLSMemoryBIOProtocol}, Twisted's TLS transport.
  - B{XMPP-style stanzas}: C{<message>} stanzas built and serialised with
    C{twisted.words.xish.domish} and parsed with C{domish.elementStream()} (expat), inside an
    XMPP stream header, as Twisted Words' XmlStream does, over the TLS above. Each stanza is
    its own C{transport.write}; Twisted's TLS transport gathers the writes of a reactor turn
    into full TLS records (see L{wrap_tls}), so many stanzas share one record and one AEAD
    call, which our protocol forbids (one element per record, §2).
  - B{Plain TCP}: the ceiling; the same application loop without any protection.
"""

from __future__ import annotations

import struct
from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib
from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

#: Our group names and OpenSSL's.
TLS_GROUPS = {"x25519mlkem768": b"X25519MLKEM768", "x25519": b"X25519"}
OUR_GROUPS = {"x25519mlkem768": "x25519-mlkem768", "x25519": "x25519"}

STREAM_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='bench.example' version='1.0'>"
)


def tls_options(identity: Any, ca_cert: Any, groups: bytes) -> ssl.CertificateOptions:
    """TLS 1.3 options presenting C{identity} and requiring a peer chaining to C{ca_cert}."""
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(identity.private_key),
        certificate=crypto.X509.from_cryptography(identity.leaf),
        trustRoot=ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(ca_cert))]
        ),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )
    ctx = options.getContext()
    if _lib.SSL_CTX_set1_curves_list(ctx._context, groups) != 1:
        raise ValueError(f"OpenSSL refused the group list {groups!r}")
    return options


def tls_group(protocol: Any) -> str:
    """The group a finished TLS connection negotiated (for checking the setup)."""
    connection: SSL.Connection = protocol._tlsConnection
    name = connection.get_group_name()
    return name or "?"


def wrap_tls(
    options: Any, is_client: bool, factory: Any, aggregate: bool = True
) -> TLSMemoryBIOFactory:
    """
    Twisted's TLS transport as C{TLSMemoryBIOFactory} makes it: its protocol is
    C{BufferingTLSTransport} (Twisted issue #11989, "lots of small writes to the TLS
    transport use a lot of CPU"), which gathers the writes of one reactor turn (up to
    64,000 bytes) into one C{SSL_write}, so many small writes leave in few full records.
    C{aggregate=False} (informational measurements only) uses the plain
    C{TLSMemoryBIOProtocol}: one C{SSL_write}, hence at least one TLS record, per write.
    """
    wrapped = TLSMemoryBIOFactory(options, is_client, factory)
    if not aggregate:
        wrapped.protocol = TLSMemoryBIOProtocol
    return wrapped


# -- application protocols of the baselines --------------------------------------------------


class Echo(Protocol):
    """Handshake baseline, responder side: answer the initiator's probe byte."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Sink(Protocol):
    """
    Bulk baseline, receiving side: the first 8 bytes announce the total; count the rest and
    answer C{b"D"} when all of it arrived.
    """

    def __init__(self) -> None:
        self.expected: int | None = None
        self.received = 0
        self._head = b""

    def dataReceived(self, data: bytes) -> None:
        if self.expected is None:
            data = self._head + data
            if len(data) < 8:
                self._head = data
                return
            (self.expected,) = struct.unpack(">Q", data[:8])
            data = data[8:]
        self.received += len(data)
        if self.received >= self.expected:
            self.transport.write(b"D")  # type: ignore[union-attr]
            self.expected = None
            self.received = 0


class XmppReceiver(Protocol):
    """
    Stanza baseline, receiving side: parse the stream with domish, count C{message} stanzas
    (reading each body, as an application would), answer the closing C{iq} with a result.
    """

    def connectionMade(self) -> None:
        from twisted.words.xish import domish

        self.count = 0
        self.stream = domish.elementStream()
        self.stream.DocumentStartEvent = self._start
        self.stream.ElementEvent = self._element
        self.stream.DocumentEndEvent = lambda: None

    def _start(self, root: Any) -> None:
        self.transport.write(  # type: ignore[union-attr]
            STREAM_HEADER.replace(b"to='bench.example'", b"from='bench.example'")
        )

    def _element(self, element: Any) -> None:
        if element.name == "message":
            body = element.body
            if body is not None and str(body):
                self.count += 1
        elif element.name == "iq":
            self.transport.write(  # type: ignore[union-attr]
                f"<iq type='result' id='{element['id']}' count='{self.count}'/>".encode()
            )
            self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.stream.parse(data)


class XmppReceiptingReceiver(XmppReceiver):
    """
    The same, answering every message with an XEP-0184 delivery receipt (built and
    serialised with domish), as our protocol answers every message with a C{receipt}.
    """

    def _element(self, element: Any) -> None:
        if element.name == "message":
            from twisted.words.xish import domish

            body = element.body
            if body is not None and str(body):
                self.count += 1
            receipt = domish.Element((None, "message"))
            receipt["to"] = element["from"]
            receipt["from"] = element["to"]
            receipt["id"] = "r" + element["id"]
            receipt.addElement(("urn:xmpp:receipts", "received"))["id"] = element["id"]
            self.transport.write(receipt.toXml().encode("utf-8"))  # type: ignore[union-attr]
        else:
            super()._element(element)


class XmppReceiptCounter:
    """
    Sending side of the receipted XMPP baseline: parses what comes back with domish and
    counts delivery receipts; C{done(count)} tells whether the run is complete.
    """

    def __init__(self, expected: int) -> None:
        from twisted.words.xish import domish

        self.expected = expected
        self.receipts = 0
        self.stream = domish.elementStream()
        self.stream.DocumentStartEvent = lambda root: None
        self.stream.ElementEvent = self._element
        self.stream.DocumentEndEvent = lambda: None

    def _element(self, element: Any) -> None:
        if element.name == "message" and element.received is not None:
            self.receipts += 1

    def feed(self, data: bytes) -> bool:
        self.stream.parse(data)
        return self.receipts >= self.expected


def xmpp_message(body: str, stanza_id: str) -> bytes:
    """One XMPP chat message as Twisted Words would write it."""
    from twisted.words.xish import domish

    message = domish.Element((None, "message"))
    message["to"] = "bob@bench.example/laptop"
    message["from"] = "alice@bench.example/phone"
    message["id"] = stanza_id
    message["type"] = "chat"
    message.addElement("body", content=body)
    return message.toXml().encode("utf-8")


def server_factory(protocol: type[Protocol]) -> Factory:
    return Factory.forProtocol(protocol)
