"""
Connecting to a registry (L{connectRegistry}): find it (L{sixchat.irp.discovery}), open TLS,
and prove the connection usable with a C{ping} before handing it over, so a refused client
certificate fails the connect itself rather than the first real request. Also
L{load_certificates}, for the registry's CA given on the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet import defer, endpoints, error

from sixchat.errors import SixchatError
from sixchat.identity import Identity
from sixchat.irp.client.errors import (
    IRPConnectionError,
    IRPConnectionLost,
    TLSAlertError,
    describe_tls_failure,
)
from sixchat.irp.client.protocol import (
    DEFAULT_KEEPALIVE,
    DEFAULT_TIMEOUT,
    IRPClientFactory,
    IRPClientProtocol,
)
from sixchat.irp.discovery import RegistryTarget, findRegistry
from sixchat.netaddr import client_endpoint

__all__ = ["connectRegistry", "load_certificates"]


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """
    Certificates from a PEM bundle (or one DER certificate): the registry's server CA for
    C{--registry-ca}.

    @raise SixchatError: one line naming the file, if it is missing or holds none.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SixchatError(f"cannot read {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise SixchatError(f"{path} holds no readable certificate (PEM or DER)") from None
    return certs


async def _connect_target(
    reactor: Any,
    target: RegistryTarget,
    anchors: Sequence[x509.Certificate] | None,
    client_identity: Identity | None,
    timeout: float,
    keepalive: float | None,
) -> IRPClientProtocol:
    from sixchat.irp.tls import client_options

    options = client_options(target.tls_name, anchors, client_identity)
    endpoint = endpoints.wrapClientTLS(
        options, client_endpoint(reactor, target.host, target.port, timeout)
    )
    factory = IRPClientFactory(reactor, timeout=timeout, keepalive=keepalive)
    proto = cast(IRPClientProtocol, await endpoint.connect(factory))
    try:
        # The first answer proves TLS completed and the server accepted our certificate
        # (with TLS 1.3 its refusal arrives only now, §7.1).
        await proto.ping()
    except IRPConnectionError:
        lost = await proto.whenLost()
        raise lost from None
    except BaseException:  # refused ping (rate_limited, …) or cancelled: do not leak it
        proto.close()
        raise
    return proto


async def _connect(
    reactor: Any,
    registry: str | None,
    identity: str | None,
    anchors: Sequence[x509.Certificate] | None,
    client_identity: Identity | None,
    timeout: float,
    keepalive: float | None,
    resolver: Any,
) -> IRPClientProtocol:
    targets = await findRegistry(registry, identity, resolver=resolver)
    last: Exception | None = None
    log = IRPClientProtocol.log
    for target in targets:
        try:
            proto = await _connect_target(
                reactor, target, anchors, client_identity, timeout, keepalive
            )
        except TLSAlertError:
            raise  # the registry refused us: another instance would too, and no anonymous retry
        except defer.CancelledError:
            raise
        except Exception as e:
            why = describe_tls_failure(e) if not isinstance(e, error.ConnectError) else e
            log.info("registry {target} unreachable: {why}", target=target.address, why=why)
            last = why
            continue
        log.debug("connected to registry {target}", target=target.address)
        return proto
    if isinstance(last, IRPConnectionError):
        raise last
    where = ", ".join(t.address for t in targets)
    raise IRPConnectionLost(f"cannot reach the registry ({where}): {last}")


def connectRegistry(
    reactor: Any,
    registry: str | None,
    identity: str | None = None,
    *,
    anchors: Sequence[x509.Certificate] | None = None,
    client_identity: Identity | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keepalive: float | None = DEFAULT_KEEPALIVE,
    resolver: Any = None,
) -> defer.Deferred[IRPClientProtocol]:
    """
    Connect to a registry and fire with a ready L{IRPClientProtocol}.

    @param registry: C{HOST[:PORT]} / C{[v6]:PORT} to use that registry (the server
        certificate must then name C{HOST}); C{None} or C{"auto"} to find it from
        C{identity}'s domain (irp-1 §1 discovery, certificate checked against the domain).
    @param identity: the identity whose domain discovery starts from.
    @param anchors: the registry's server CA certificates; C{None} trusts the system store.
    @param client_identity: present this certificate (authenticated requests); C{None} for
        an anonymous connection (C{ca}, C{enroll}, C{crl}, C{ping}).
    @param timeout: seconds for each TCP connect and each request.
    @param resolver: an C{IResolver} for the SRV lookup (default: the system's DNS).

    Fails with L{TLSAlertError} if the registry refuses the certificate,
    L{RegistryCertificateError} if its certificate fails our check, L{IRPConnectionLost} if
    no registry address answered, C{ValueError} for a malformed C{registry} or C{identity}.
    """
    return defer.ensureDeferred(
        _connect(reactor, registry, identity, anchors, client_identity, timeout, keepalive,
                 resolver)
    )  # fmt: skip
