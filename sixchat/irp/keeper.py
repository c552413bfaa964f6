"""
Keeping a user agent registered (irp-1 §3.1): L{RegistrationKeeper}, and finding the
addresses to advertise (L{local_addresses}, L{AutoContacts}).

The keeper is a C{twisted.application} service with one loop:

    connect → register → (refresh at 2/3 of the granted expiry)* → connection lost
            → wait (exponential backoff with jitter) → connect → …

and C{stopService} unregisters (bounded by a timeout, so a dead registry never holds up a
shutdown). Why these choices:

  - B{Refresh at 2/3} of the I{granted} expiry (the server clamps the request to [30, 3600]):
    one refresh can be lost or slow (a request times out after 30 s) and the binding still
    does not lapse.
  - B{Backoff}: the n-th consecutive failure waits a uniformly random time in
    [b/2, b] with b = min(max_backoff, 2·min_backoff·2^n), i.e. between C{min_backoff} and
    C{max_backoff} (default 1 s … 5 min) at every level. The random half ("equal jitter")
    spreads the reconnects of many agents after a registry restart even once they all reach
    the cap; the floor keeps a flapping registry from being hammered. A successful register
    resets the count.
  - B{Contacts are recomputed at every register}, so a refresh picks up a changed address
    (DHCP lease, new IPv6 prefix) within 2/3 of the expiry.
  - B{Refusals} (C{bad_request}, C{unauthenticated}, …) are logged as errors and retried with
    the same backoff on a fresh connection: an administrator may fix the cause (e.g. allow
    the address) without restarting the agent.

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
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.irp import messages as m
from sixchat.irp.client import IRPConnectionError
from sixchat.netaddr import format_hostport, parse_hostport

__all__ = [
    "AutoContacts",
    "RegistrationKeeper",
    "local_addresses",
    "parse_advertise",
]

log = Logger()

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


def _proc_ipv6(path: str = "/proc/net/if_inet6") -> list[str]:
    found = []
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
        if scope != 0:  # 0x00 global; 0x10 host, 0x20 link, 0x40 site (deprecated)
            continue
        if flags & (_IFA_F_TEMPORARY | _IFA_F_DADFAILED | _IFA_F_DEPRECATED | _IFA_F_TENTATIVE):
            continue
        found.append(str(addr))
    return found


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


class RegistrationKeeper(service.Service):
    """
    Keeps C{node} registered with contacts from C{contacts_provider} (see the module
    docstring for the loop and its timing).

    @param connect: opens a registry connection: fires with an object with the
        L{IRPClientProtocol} methods C{register}, C{unregister}, C{whenLost} and C{close}.
    @param contacts_provider: returns the contacts (a list or a Deferred of one).
    @param rand: a C{random()} in [0, 1) for the jitter (tests pin it).

    @ivar state: C{stopped}, C{connecting}, C{registering}, C{registered}, C{waiting}.
    @ivar granted: the expiry the registry granted last (seconds), or None.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        connect: Callable[[], defer.Deferred[Any]],
        node: str,
        contacts_provider: Callable[[], Any],
        *,
        expires: int = m.DEFAULT_EXPIRES,
        min_backoff: float = 1.0,
        max_backoff: float = 300.0,
        stop_timeout: float = 5.0,
        rand: Callable[[], float] = random.random,
        registry_name: str = "registry",
    ) -> None:
        if not m.is_valid_node(node):
            raise ValueError(
                f"invalid node name {node!r}: 1-64 characters of letters, digits, '_', '.', '-'"
            )
        self.reactor = reactor
        self.connect = connect
        self.node = node
        self.contacts_provider = contacts_provider
        self.expires = expires
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.rand = rand
        self.registry_name = registry_name
        self.state = "stopped"
        self.granted: int | None = None
        self.contacts: list[m.Contact] = []
        self.failures = 0
        self.protocol: Any = None
        self._timer: IDelayedCall | None = None
        self._pending: defer.Deferred[Any] | None = None
        #: Called with the new state on each change (tests, status displays).
        self.on_state: Callable[[str], None] | None = None

    # the loop ---------------------------------------------------------------------------------

    def _setState(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_state is not None:
                self.on_state(state)

    def startService(self) -> None:
        super().startService()
        self.failures = 0
        self._connect()

    def _connect(self) -> None:
        self._timer = None
        if not self.running:
            return
        self._setState("connecting")
        self.log.debug("connecting to {registry}", registry=self.registry_name)
        d = defer.maybeDeferred(self.connect)
        self._pending = d
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, proto: Any) -> None:
        self._pending = None
        if not self.running:
            proto.close()
            return
        self.protocol = proto
        proto.whenLost().addCallback(self._lost, proto)
        self._register()

    def _connectFailed(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(defer.CancelledError) or not self.running:
            return
        self.log.warn(
            "cannot connect to {registry}: {why}",
            registry=self.registry_name,
            why=failure.getErrorMessage(),
        )
        self._retry()

    def _register(self) -> None:
        self._timer = None
        proto = self.protocol
        if proto is None or not self.running:
            return
        self._setState("registering")
        d = defer.maybeDeferred(self.contacts_provider)
        self._pending = d

        def send(contacts: list[m.Contact]) -> Any:
            if proto is not self.protocol:
                return None
            if not contacts:
                raise ValueError("no address to advertise (give one with --advertise)")
            self.contacts = list(contacts)
            return proto.register(self.node, contacts, self.expires)

        d.addCallback(send)
        d.addCallbacks(self._registered, self._registerFailed, callbackArgs=(proto,),
                       errbackArgs=(proto,))  # fmt: skip

    def _registered(self, granted: int | None, proto: Any) -> None:
        self._pending = None
        if proto is not self.protocol or granted is None or not self.running:
            return
        first = self.state != "registered" or self.granted != granted
        self.granted = granted
        self.failures = 0
        self._setState("registered")
        contacts = ", ".join(format_hostport(c.host, c.port) for c in self.contacts)
        (self.log.info if first else self.log.debug)(
            "registered node {node} at {contacts} with {registry} for {granted} s",
            node=self.node,
            contacts=contacts,
            registry=self.registry_name,
            granted=granted,
        )
        self._timer = self.reactor.callLater(granted * 2 / 3, self._register)

    def _registerFailed(self, failure: Failure, proto: Any) -> None:
        self._pending = None
        if proto is not self.protocol or not self.running:
            return
        if failure.check(IRPConnectionError):
            return  # _lost handles it (the connection is gone)
        refusal = failure.value
        if isinstance(refusal, m.IRPError):
            why = f"{refusal.reason}" + (f" ({refusal.text})" if refusal.text else "")
            self.log.error("{registry} refused to register node {node}: {why}",
                           registry=self.registry_name, node=self.node, why=why)  # fmt: skip
        else:
            self.log.error("cannot register node {node}: {why}",
                           node=self.node, why=failure.getErrorMessage())  # fmt: skip
        # Start over on a fresh connection after the backoff.
        self.protocol = None
        proto.close()
        self._retry()

    def _lost(self, why: Exception, proto: Any) -> None:
        if proto is not self.protocol:
            return
        self.protocol = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.running:
            return
        self.log.warn("connection to {registry} lost: {why}", registry=self.registry_name,
                      why=str(why))  # fmt: skip
        self._retry()

    def backoff(self, failures: int) -> float:
        """The wait before reconnecting after C{failures} consecutive failures (≥ 1)."""
        base = min(self.max_backoff, 2 * self.min_backoff * 2 ** min(failures - 1, 64))
        return base / 2 + self.rand() * base / 2

    def _retry(self) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.failures += 1
        delay = self.backoff(self.failures)
        self._setState("waiting")
        self.log.info("retrying {registry} in {delay:.1f} s", registry=self.registry_name,
                      delay=delay)  # fmt: skip
        self._timer = self.reactor.callLater(delay, self._connect)

    # stopping ---------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """Unregister (bounded by C{stop_timeout}) and close; never fails."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._pending is not None and self.protocol is None:
            self._pending.cancel()  # a connect in progress
        self._pending = None
        proto, self.protocol = self.protocol, None
        # "registering" included: a register may be on its way; unregister is idempotent.
        was_registered = self.state in ("registered", "registering")
        self._setState("stopped")
        self.granted = None
        if proto is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()

        def unregistered(_: object) -> None:
            self.log.info("unregistered node {node} from {registry}", node=self.node,
                          registry=self.registry_name)  # fmt: skip

        def failed(f: Failure) -> None:
            if f.check(defer.CancelledError):
                return  # too_slow said it
            self.log.warn("could not unregister node {node}: {why}", node=self.node,
                          why=f.getErrorMessage())  # fmt: skip

        def finish(_: object) -> None:
            if timer.active():
                timer.cancel()
            closed = proto.close()
            closed.addBoth(lambda _: None if done.called else done.callback(None))

        def too_slow() -> None:
            self.log.warn("registry did not confirm unregistering within {t:g} s",
                          t=self.stop_timeout)  # fmt: skip
            d.cancel()  # runs finish(), which closes the connection
            if not done.called:
                done.callback(None)

        if was_registered:
            d: defer.Deferred[Any] = defer.maybeDeferred(proto.unregister, self.node)
            d.addCallbacks(unregistered, failed)
        else:
            d = defer.succeed(None)
        timer = self.reactor.callLater(self.stop_timeout, too_slow)
        d.addBoth(finish)
        return done
