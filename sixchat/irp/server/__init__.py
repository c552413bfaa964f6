"""
The IRP registry server (irp-1), one concept per module:

  - L{config}: L{RegistryConfig}, the registry's policies and limits (irp-1 §3.3, §6).
  - L{protocol}: L{IRPServerProtocol}, one connection (framing, pipelining, rate limit,
    idle timeout, flow control); L{IRPServerFactory} builds them.
  - L{requests}: what each request does on a connection, and its authentication.
  - L{backlog}: L{Backlog}, the bound on requests of all connections waiting for the store.
  - L{hub}: what connections share: identity tracking, watch fan-out, expiry, the CRL loop.
  - L{fastpaths}: the commonest request and answer at the byte level.
  - L{tls}: the registry's TLS context and the guard on connections in their handshake.
  - L{service}: L{IRPServerService} runs it all on an endpoint inside TLS.
  - L{authority}: the registry's CA (enrolment, renewal, revocation, CRLs).
  - L{gcpolicy}: the registry process's garbage-collection policy.

The names other code imports from C{sixchat.irp.server} stay importable from here.
"""

from sixchat.irp.server.config import (
    DEFAULT_LISTEN,
    LOOKUP_POLICIES,
    MAX_PUSH_BACKLOG,
    RegistryConfig,
)
from sixchat.irp.server.fastpaths import fast_lookup, record_bytes
from sixchat.irp.server.protocol import IRPServerFactory, IRPServerProtocol
from sixchat.irp.server.service import IRPServerService, make_store

__all__ = [
    "DEFAULT_LISTEN",
    "LOOKUP_POLICIES",
    "MAX_PUSH_BACKLOG",
    "IRPServerFactory",
    "IRPServerProtocol",
    "IRPServerService",
    "RegistryConfig",
    "fast_lookup",
    "make_store",
    "record_bytes",
]
