"""
Network addresses as people type them and as we print them: C{host[:port]} text, and the
client endpoint for a host. One definition each, for the agent, the registry client, the
command line and the logs alike, so that an address accepted in one place is accepted (and
written, and connected to) the same way everywhere.

Host names are IDNA-encoded here (IDNA 2008 with UTS #46 mapping, through the C{idna} package
that Twisted's TLS extra installs) rather than left to whichever endpoint happens to be used:
C{bücher.example} and C{xn--bcher-kva.example} must reach the same host, and a name that
cannot be encoded must be a one-line error before any connection is tried.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint

__all__ = [
    "client_endpoint",
    "encode_hostname",
    "format_hostport",
    "is_ip_literal",
    "parse_hostport",
]


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """
    C{host}, C{host:port}, C{[v6]}, C{[v6]:port} or a bare IPv6 literal.

    @raise ValueError: with a one-line reason (empty text, empty host, an unclosed bracket,
        a port that is not 1-65535).
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"unclosed '[' in {text!r}")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"expected ':PORT' after ']' in {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not host:
            raise ValueError(f"missing host in {text!r}")
    else:
        return text, default_port
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port_text)


def format_hostport(host: str | None, port: int | None) -> str:
    """C{host:port}, with an IPv6 literal in brackets (C{[2001:db8::1]:4605})."""
    return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


def is_ip_literal(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def encode_hostname(host: str) -> bytes:
    """
    The ASCII form of a host name for DNS.

    @raise ValueError: the name is not a valid IDNA host name.
    """
    import idna

    try:
        return bytes(idna.encode(host, uts46=True))
    except idna.IDNAError as e:
        raise ValueError(f"invalid host name {host!r}: {e}") from None


def client_endpoint(
    reactor: IReactorTCP | IReactorTime, host: str, port: int, timeout: float
) -> IStreamClientEndpoint:
    """
    A literal address connects directly (TCP4 or TCP6); a name goes through Twisted's
    Happy Eyeballs C{HostnameEndpoint}, IDNA-encoded by L{encode_hostname}.

    @raise ValueError: C{host} is neither an address nor a valid host name.
    """
    from twisted.internet import endpoints

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, encode_hostname(host), port, timeout=timeout)
    if ip.version == 6:
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
