"""
The registry's policies and limits (irp-1 §3.3, §6), in one frozen value that the hub, the
connections and the TLS guard all read: C{twistd sixchat-irp}'s options become one of these.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_QUEUED",
    "LOOKUP_POLICIES",
    "MAX_PUSH_BACKLOG",
    "RegistryConfig",
]

DEFAULT_LISTEN = "tcp6:4604"
LOOKUP_POLICIES = ("authenticated", "public")
#: A client that does not read its pushes is disconnected once this many bytes of
#: C{presence} were written while its write buffer was full. (Answers need no such bound:
#: while the buffer is full we stop reading, so no new requests arrive.)
MAX_PUSH_BACKLOG = 1024 * 1024
#: Requests that may wait for the store at once, across all connections
#: (L{sixchat.irp.server.backlog}): what 1,000 clients keeping one request each in flight
#: need, a fifth of a second of the store's work at 5,000/s. Under an overload the queue
#: stays full, so this is also what each full collection walks (about 15-20 objects per
#: queued request) and the wait of an answered request (the bound over the store's rate).
DEFAULT_MAX_QUEUED = 1000


@dataclass(frozen=True)
class RegistryConfig:
    """
    The registry's policies and limits (irp-1 §3.3, §6).

    @ivar lookup_policy: C{authenticated} (default) or C{public} (C{lookup} and C{watch}
        become anonymous, for federation).
    @ivar allow_private_addresses: accept loopback, link-local, unspecified, multicast and
        broadcast contacts (tests, private networks).
    @ivar domains: the domains this registry serves, lowercase. C{None} (default) serves every
        domain the registry's CA has issued for: every identity that can register here holds
        a certificate from the registry's anchors, so nothing needs filtering, and an identity
        the registry has never seen is C{not_found} anyway. Given explicitly, a C{lookup} or
        C{watch} of any other domain is C{not_found} (§7.4) and a C{register} by a
        certificate of another domain is C{forbidden}.
    @ivar revocation_recheck: seconds a connection trusts a "not revoked" answer without a
        change notification.
    @ivar tls_handshake_timeout: seconds a new connection has to complete its TLS handshake.
    @ivar max_tls_handshakes_per_source: connections from one source (IPv4 address, IPv6
        /64) that may be in their TLS handshake at once; past it (or past
        C{max_tls_handshakes} in all) a new TCP connection is closed at once. irp-1 sets no
        such limits; these have the shape of E2E §9.2, sized for many clients behind one
        address. Connections that completed TLS are not counted.
    @ivar max_queued_requests: requests that may wait for the store at once, across all
        connections; past it a request that needs the store is answered C{rate_limited}
        at once (L{sixchat.irp.server.backlog}).
    """

    lookup_policy: str = "authenticated"
    allow_private_addresses: bool = False
    domains: frozenset[str] | None = None
    max_requests_per_second: int = 50
    max_watches: int = 1000
    max_nodes: int = 16
    idle_timeout: float = 600.0
    expiry_interval: float = 1.0
    crl_check_interval: float = 60.0
    revocation_recheck: float = 1.0
    tls_handshake_timeout: float = 15.0
    max_tls_handshakes: int = 1024
    max_tls_handshakes_per_source: int = 64
    max_queued_requests: int = DEFAULT_MAX_QUEUED

    def __post_init__(self) -> None:
        if self.lookup_policy not in LOOKUP_POLICIES:
            raise ValueError(f"lookup policy must be one of {', '.join(LOOKUP_POLICIES)}")
        if self.domains is not None:
            object.__setattr__(self, "domains", frozenset(d.lower() for d in self.domains))
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be at least 1")

    @property
    def public(self) -> bool:
        return self.lookup_policy == "public"

