"""
Finding the registry of a domain (irp-1 §1 "Discovery", §7.9).

Three ways, in this order of precedence:

  1. explicit addresses, C{HOST[:PORT]} / C{[v6]:PORT} (private networks, tests), or a comma
     list of them (C{a.example:4604,b.example:4604}: registries sharing one database, tried in
     the order given): connect there and check each server certificate against its C{HOST};
  2. the DNS SRV records C{_irp._tcp.D} for the identity's domain C{D}, ordered by RFC 2782
     (lowest priority first, weighted random choice within a priority): connect to each
     target in turn, and check the certificate against C{D} itself, not the target — the
     SRV answer is not DNSSEC-checked here, so only the domain the user asked for is a name
     we may trust (the RFC 6125 "source domain", as XMPP does);
  3. without SRV records (or when the lookup fails), C{D} port 4604, checked against C{D}.

An SRV answer whose only target is C{.} means "no registry here" (RFC 2782) and is an error.
The resolver is a parameter (an C{IResolver}), so tests never touch real DNS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from sixchat.errors import SixchatError
from sixchat.identity import is_valid_identity
from sixchat.irp.messages import DEFAULT_PORT
from sixchat.netaddr import format_hostport, parse_hostport

__all__ = [
    "RegistryNotFound",
    "RegistryTarget",
    "SRVEntry",
    "findRegistry",
    "order_srv",
    "parse_registry_address",
    "parse_registry_list",
]

log = Logger()


class RegistryNotFound(SixchatError):
    """The domain says it runs no registry (SRV target C{.})."""


@dataclass(frozen=True)
class RegistryTarget:
    """
    One address to try: connect to C{host}:C{port}, check the certificate against
    C{tls_name}. C{via} says how it was found (C{explicit}, C{srv}, C{fallback}).
    """

    host: str
    port: int
    tls_name: str
    via: str = "explicit"

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass(frozen=True)
class SRVEntry:
    priority: int
    weight: int
    port: int
    target: str


class _Random(Protocol):
    def randint(self, a: int, b: int) -> int: ...


def parse_registry_address(text: str) -> tuple[str, int]:
    """
    A registry's C{HOST[:PORT]} (port 4604 unless given), by the one host:port rule of
    L{sixchat.netaddr.parse_hostport}.

    @raise ValueError: with a one-line reason.
    """
    return parse_hostport(text, DEFAULT_PORT)


def parse_registry_list(text: str) -> list[tuple[str, int]]:
    """
    One registry address or a comma list of them (C{a:4604,[2001:db8::1]:4604}), each by
    L{parse_registry_address}, in the order given, duplicates dropped. A comma never occurs
    in a host or port, so the list is unambiguous; C{auto} is not an address.

    @raise ValueError: with a one-line reason naming the bad entry.
    """
    out: list[tuple[str, int]] = []
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not item:
            raise ValueError(f"{text!r}: an empty entry in the list of registries")
        if item == "auto" and len(items) > 1:
            raise ValueError("'auto' (DNS SRV discovery) cannot be combined with addresses")
        address = parse_registry_address(item)
        if address not in out:
            out.append(address)
    return out


def order_srv(entries: Sequence[SRVEntry], rng: _Random | None = None) -> list[SRVEntry]:
    """
    RFC 2782 order: ascending priority; within one priority, repeatedly pick at random with
    probability proportional to weight (weight-0 entries first in the running sum, so they
    are chosen only when the draw is 0).
    """
    rng = rng or random.SystemRandom()
    ordered: list[SRVEntry] = []
    for priority in sorted({e.priority for e in entries}):
        remaining = [e for e in entries if e.priority == priority]
        remaining.sort(key=lambda e: e.weight != 0)  # stable: zero weights first
        while remaining:
            total = sum(e.weight for e in remaining)
            draw = rng.randint(0, total)
            running = 0
            for i, entry in enumerate(remaining):
                running += entry.weight
                if running >= draw:
                    ordered.append(remaining.pop(i))
                    break
    return ordered


def _srv_entries(answers: Sequence[Any]) -> list[SRVEntry]:
    from twisted.names import dns

    entries = []
    for rr in answers:
        if getattr(rr, "type", None) != dns.SRV:
            continue
        payload = rr.payload
        target = payload.target.name
        target = target.decode("ascii", "replace") if isinstance(target, bytes) else str(target)
        entries.append(SRVEntry(payload.priority, payload.weight, payload.port, target.rstrip(".")))
    return entries


def domain_of(identity: str) -> str:
    """The (lowercased) domain of an identity; C{ValueError} for a malformed one."""
    if not is_valid_identity(identity):
        raise ValueError(f"{identity!r} is not an identity (local@domain)")
    return identity.rpartition("@")[2].lower()


async def _find(
    registry: str | None, identity: str | None, resolver: Any, rng: _Random | None
) -> list[RegistryTarget]:
    if registry is not None and registry != "auto":
        return [RegistryTarget(h, p, h, "explicit") for h, p in parse_registry_list(registry)]
    if identity is None:
        raise ValueError("give a registry (HOST[:PORT]) or an identity to find its registry")
    domain = domain_of(identity)
    name = f"_irp._tcp.{domain}"
    if resolver is None:
        from twisted.names import client

        resolver = client.getResolver()
    try:
        answers, _authority, _additional = await resolver.lookupService(name)
    except Exception as e:
        log.info("no SRV record {name} ({why}); using {domain}:{port}",
                 name=name, why=type(e).__name__, domain=domain, port=DEFAULT_PORT)  # fmt: skip
        return [RegistryTarget(domain, DEFAULT_PORT, domain, "fallback")]
    entries = _srv_entries(answers)
    if not entries:
        return [RegistryTarget(domain, DEFAULT_PORT, domain, "fallback")]
    if all(e.target in ("", ".") for e in entries):
        raise RegistryNotFound(f"{domain} runs no registry (its {name} record is '.')")
    ordered = order_srv([e for e in entries if e.target not in ("", ".")], rng)
    return [RegistryTarget(e.target, e.port, domain, "srv") for e in ordered]


def findRegistry(
    registry: str | None,
    identity: str | None = None,
    *,
    resolver: Any = None,
    rng: _Random | None = None,
) -> defer.Deferred[list[RegistryTarget]]:
    """
    The addresses to try, in order, for C{registry} (explicit C{HOST[:PORT]} or a comma list
    of them, or C{None} / C{"auto"} for discovery from C{identity}'s domain).

    Fails with C{ValueError} for a malformed address or identity, L{RegistryNotFound} when
    the domain's SRV record says it has no registry.
    """
    return defer.ensureDeferred(_find(registry, identity, resolver, rng))
