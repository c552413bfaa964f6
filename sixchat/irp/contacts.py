"""
Finding the addresses a user agent advertises to its registry (irp-1 §3.1): L{AutoContacts}
(what the registration keeper registers), L{local_addresses}, and C{--advertise}
(L{parse_advertise}).

Address discovery (L{local_addresses}) uses the standard library only (psutil is not a
dependency):

  - IPv6: C{/proc/net/if_inet6} (Linux), keeping scope-global addresses that are usable for
    incoming connections: not temporary (RFC 8981 privacy addresses are for outgoing
    connections; publishing them would defeat their purpose), not deprecated, tentative or
    failed duplicate-address detection;
  - IPv4: the C{SIOCGIFADDR} ioctl for each interface of C{socket.if_nameindex()} (Linux; it
    yields each interface's primary address, not secondary aliases);
  - fallbacks when those give nothing (other systems): the source address the kernel
    would use towards a documentation address (a UDP C{connect}, which sends no packet),
    then C{getaddrinfo(gethostname())}.

Loopback, link-local, unspecified, multicast and broadcast addresses are dropped (the
registry refuses them, irp-1 §3.1); private (RFC 1918, ULA) ones are kept, for flat private
networks. C{getaddrinfo} may block on DNS, so L{AutoContacts} runs the scan in a thread.
C{--advertise} replaces all of this.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, threads

from sixchat.irp import messages as m
from sixchat.netaddr import parse_hostport

__all__ = ["AutoContacts", "host_addresses", "local_addresses", "parse_advertise"]

# /proc/net/if_inet6 flags (linux/if_addr.h)
_IFA_F_TEMPORARY = 0x01
_IFA_F_DADFAILED = 0x08
_IFA_F_DEPRECATED = 0x20
_IFA_F_TENTATIVE = 0x40
_SIOCGIFADDR = 0x8915


def _usable(host: str) -> str | None:
    try:
        return m.canonical_host(host)
    except ValueError:
        return None


def _proc_ipv6_entries(path: str) -> list[tuple[str, int, int]]:
    """(address, scope, flags) of each line of C{/proc/net/if_inet6}; [] when unreadable."""
    entries = []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            scope, flags = int(fields[3], 16), int(fields[4], 16)
            addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        except ValueError:
            continue
        entries.append((str(addr), scope, flags))
    return entries


def _proc_ipv6(path: str = "/proc/net/if_inet6") -> list[str]:
    # scope 0x00 is global; 0x10 host, 0x20 link, 0x40 site (deprecated)
    unusable = _IFA_F_TEMPORARY | _IFA_F_DADFAILED | _IFA_F_DEPRECATED | _IFA_F_TENTATIVE
    entries = _proc_ipv6_entries(path)
    return [a for a, scope, flags in entries if scope == 0 and not flags & unusable]


def _proc_all_ipv6(path: str = "/proc/net/if_inet6") -> list[str]:
    """Every IPv6 address of this host (any scope but host and link, any flags but tentative
    or failed duplicate-address detection)."""
    unusable = _IFA_F_DADFAILED | _IFA_F_TENTATIVE
    return [
        a
        for a, scope, flags in _proc_ipv6_entries(path)
        if scope not in (0x10, 0x20) and not flags & unusable
    ]


def _fib_trie_ipv4(path: str = "/proc/net/fib_trie") -> list[str] | None:
    """
    Every local IPv4 address (secondary ones too: the C{/32 host LOCAL} entries of the
    kernel's routing tables), loopback aside; None where the file does not exist.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[str] = []
    for previous, line in zip(lines, lines[1:], strict=False):
        if line.strip() != "/32 host LOCAL" or "|--" not in previous:
            continue
        addr = previous.split("|--", 1)[1].strip()
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            continue
        if not ip.is_loopback and addr not in found:
            found.append(addr)
    return found


# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_RT_SCOPE_LINK, _RT_SCOPE_HOST = 253, 254


def parse_addr_dump(data: bytes) -> tuple[list[tuple[str, int, int]], bool]:
    """
    The C{RTM_NEWADDR} messages in one read of an rtnetlink address dump: (address, scope,
    flags) each, and whether the dump ended (C{NLMSG_DONE}).

    @raise OSError: the kernel answered the dump with an error.
    """
    import struct

    found: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            break
        if kind == _NLMSG_DONE:
            return found, True
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + 16)
            raise OSError(-code, "rtnetlink address dump failed")
        if kind == _RTM_NEWADDR and length >= 24:
            family, _, flags, scope, _ = struct.unpack_from("=BBBBI", data, offset + 16)
            attrs: dict[int, bytes] = {}
            at = offset + 24
            while at + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                attrs[atype] = data[at + 4 : at + alen]
                at += (alen + 3) & ~3
            if _IFA_FLAGS in attrs and len(attrs[_IFA_FLAGS]) == 4:
                (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS])
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                found.append((str(ipaddress.ip_address(raw)), scope, flags))
        offset += (length + 3) & ~3
    return found, False


def _netlink_addresses() -> list[tuple[str, int, int]] | None:
    """Every address of this host's interfaces, by rtnetlink (Linux); None without it."""
    import struct

    if not hasattr(socket, "AF_NETLINK"):
        return None
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.settimeout(2)
            s.bind((0, 0))
            header = struct.pack("=IHHII", 24, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
            s.send(header + struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0))
            found: list[tuple[str, int, int]] = []
            while True:
                more, done = parse_addr_dump(s.recv(65536))
                found += more
                if done:
                    return found
    except (OSError, ValueError):
        return None


def host_addresses() -> frozenset[str] | None:
    """
    Every address this host has now, whatever its use (temporary ones too; not loopback,
    link-local, tentative or failed duplicate-address detection): the set the agent's
    address watch compares from one look to the next (L{sixchat.agent.addresses}). From
    rtnetlink (Linux: one dump, both families, secondary addresses too); without it from
    C{/proc/net/if_inet6} and C{/proc/net/fib_trie}. None when this system offers no way
    to list them. No DNS; cheap, but run it in a thread from the reactor like
    L{local_addresses}.
    """
    listed = _netlink_addresses()
    if listed is not None:
        return frozenset(
            address
            for address, scope, flags in listed
            if scope not in (_RT_SCOPE_LINK, _RT_SCOPE_HOST)
            and not flags & (_IFA_F_DADFAILED | _IFA_F_TENTATIVE)
            and not ipaddress.ip_address(address).is_loopback
        )
    if not os.path.exists("/proc/net/if_inet6") and not os.path.exists("/proc/net/fib_trie"):
        return None
    v4 = _fib_trie_ipv4()
    if v4 is None:
        v4 = [a for a in _ioctl_ipv4() if not a.startswith("127.")]
    return frozenset(_proc_all_ipv6() + v4)


def _ioctl_ipv4() -> list[str]:
    try:
        import fcntl
        import struct

        names = [name for _, name in socket.if_nameindex()]
    except (ImportError, OSError, AttributeError):
        return []
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:  # no IPv4 address on this interface
                continue
            found.append(socket.inet_ntoa(res[20:24]))
    return found


def _route_source(family: int, probe: str) -> list[str]:
    """The address the kernel would send from towards C{probe}; UDP connect sends nothing."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return [s.getsockname()[0]]
    except OSError:
        return []


def _hostname_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [str(info[4][0]).split("%")[0] for info in infos]


def local_addresses(family: int | None = None) -> list[str]:
    """
    This machine's addresses worth advertising, IPv6 first (see the module docstring for
    the sources). C{family} limits to C{AF_INET} or C{AF_INET6}. May block (C{getaddrinfo}
    fallback): call it in a thread from the reactor.
    """
    v6: list[str] = []
    v4: list[str] = []
    if family in (None, socket.AF_INET6):
        v6 = _proc_ipv6() or _route_source(socket.AF_INET6, "2001:db8::1")
    if family in (None, socket.AF_INET):
        v4 = _ioctl_ipv4() or _route_source(socket.AF_INET, "192.0.2.1")
    if not [a for a in v6 + v4 if _usable(a)]:
        extra = _hostname_addresses()
        v6 += [a for a in extra if ":" in a and family in (None, socket.AF_INET6)]
        v4 += [a for a in extra if ":" not in a and family in (None, socket.AF_INET)]
    seen: set[str] = set()
    out = []
    for addr in v6 + v4:
        canon = _usable(addr)
        if canon is not None and canon not in seen:
            seen.add(canon)
            out.append(canon)
    return out


def parse_advertise(text: str) -> tuple[str, int | None]:
    """
    C{IP}, C{IP:PORT}, C{[v6]} or C{[v6]:PORT} for C{--advertise}; the port is None when not
    given (the listening port is used). The host must be an IP literal (irp-1 §3.1).

    @raise ValueError: with a one-line reason.
    """
    host, port = parse_hostport(text, 0)
    try:
        host = m.canonical_host(host, allow_private=True)
    except ValueError as e:
        raise ValueError(f"--advertise {text!r}: {e}") from None
    return host, (port or None)


class AutoContacts:
    """
    The contacts of a listening agent, computed when asked (the keeper asks at every
    register): the C{advertise} list if given, else the listener's own address when it is
    bound to a specific one, else every usable local address (L{local_addresses}, in a
    thread), each with the listening port.

    @param port: returns the listener's bound address (C{IPv4Address}/C{IPv6Address}) or
        None while it is not listening; read at each call, so C{--listen} port 0 works.
    """

    def __init__(
        self,
        reactor: Any,
        port: Callable[[], Any],
        advertise: Sequence[tuple[str, int | None]] = (),
        scan: Callable[[int | None], list[str]] = local_addresses,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.advertise = list(advertise)
        self.scan = scan

    def __call__(self) -> defer.Deferred[list[m.Contact]]:
        address = self.port()
        if address is None:
            return defer.fail(RuntimeError("the peer listener is not listening yet"))
        port = int(address.port)
        if self.advertise:
            return defer.succeed(
                [m.Contact(host, p or port) for host, p in self.advertise][: m.MAX_CONTACTS]
            )
        bound = str(getattr(address, "host", "")).split("%")[0]
        try:
            ip = ipaddress.ip_address(bound)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_unspecified:
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            return defer.succeed([m.Contact(str(mapped or ip), port)])
        family = socket.AF_INET if isinstance(ip, ipaddress.IPv4Address) else None
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.scan, family)
        return d.addCallback(lambda hosts: [m.Contact(h, port) for h in hosts][: m.MAX_CONTACTS])
