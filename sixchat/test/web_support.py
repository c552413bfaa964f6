"""
Shared by the web UI's tests: one raw HTTP/1.1 exchange over a real loopback socket, with
any C{Host} and headers (a browser or C{twisted.web.client} would set some of them itself).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor

__all__ = ["raw_http", "request"]


class _Raw(protocol.Protocol):
    """One raw HTTP/1.1 exchange (any Host header), the whole answer once closed."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        # A complete answer with a length: close our side too (over TLS the server's
        # close_notify alone leaves the socket open until its abort timeout).
        head, sep, body = self.data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:] if sep else []:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and len(body) >= int(value):
                self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.data)


@defer.inlineCallbacks
def raw_http(port: int, request: bytes, tls: Any = None) -> Any:
    """
    C{(status, headers dict, body)} of a request sent byte for byte to 127.0.0.1:C{port}
    (over TLS with the client options C{tls}).
    """
    endpoint: Any = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = endpoints.wrapClientTLS(tls, endpoint)
    proto = yield endpoints.connectProtocol(endpoint, _Raw(request))
    data = yield proto.done
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return int(lines[0].split()[1]), headers, body


def request(
    method: str, path: str, host: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
