"""
Connecting to a registry (L{connectRegistry}): find it (L{sixchat.irp.discovery}), open TLS,
and prove the connection usable with a C{ping} before handing it over, so a refused client
certificate fails the connect itself rather than the first real request. Also
L{load_certificates}, for the registry's CA given on the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from twisted.internet import defer, endpoints, error
from twisted.python.failure import Failure

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

__all__ = ["STAGGER", "connectRegistry", "load_certificates"]


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
    proto.target = target
    try:
        # The first answer proves TLS completed and the server accepted our certificate
        # (with TLS 1.3 its refusal arrives only now, §7.1).
        await proto.ping()
    except IRPConnectionError:
        lost = await proto.whenLost()
        raise lost from None
    except defer.CancelledError:  # another address won, or the caller gave up: at once
        transport: Any = proto.transport
        proto.close()
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()  # a silent server would hold a TLS close forever
        raise
    except BaseException:  # refused ping (rate_limited, …): do not leak it
        proto.close()
        raise
    return proto


#: Seconds one registry address has to connect before the next one is tried alongside it
#: (RFC 8305's idea applied to a list of registries: a dead or black-holed first address
#: costs this long, not a whole connect timeout). A refusal starts the next one at once.
STAGGER = 2.0


def _first_of(
    reactor: Any,
    targets: Sequence[RegistryTarget],
    attempt: Callable[[RegistryTarget], defer.Deferred[IRPClientProtocol]],
    stagger: float,
) -> defer.Deferred[IRPClientProtocol]:
    """
    Try C{targets} in order, starting the next one when the current one fails or has not
    connected within C{stagger} seconds; fire with the first connection (any later ones are
    closed, the attempts still running cancelled). A registry that refuses our certificate
    (L{TLSAlertError}) ends it all: another instance would refuse us too.
    """
    if not targets:
        return defer.fail(IRPConnectionLost("cannot reach the registry: no address to try"))
    pending: dict[int, defer.Deferred[IRPClientProtocol]] = {}
    failures: list[tuple[RegistryTarget, BaseException]] = []
    state: dict[str, Any] = {"next": 0, "timer": None, "ended": False}
    log = IRPClientProtocol.log

    def cancel_all(_: Any) -> None:
        state["ended"] = True
        stop_timer()
        for d in list(pending.values()):
            d.cancel()

    result: defer.Deferred[IRPClientProtocol] = defer.Deferred(cancel_all)

    def stop_timer() -> None:
        timer, state["timer"] = state["timer"], None
        if timer is not None and timer.active():
            timer.cancel()

    def start_next() -> None:
        state["timer"] = None
        if result.called or state["next"] >= len(targets):
            return
        index = state["next"]
        state["next"] += 1
        d = attempt(targets[index])
        pending[index] = d
        d.addBoth(done, index)
        if index in pending and not result.called and state["next"] < len(targets):
            stop_timer()
            state["timer"] = reactor.callLater(stagger, start_next)

    def done(outcome: Any, index: int) -> None:
        pending.pop(index, None)
        target = targets[index]
        if not isinstance(outcome, Failure):
            if result.called or state["ended"]:
                outcome.close()  # a slower one we no longer need
                return
            log.debug("connected to registry {target}", target=target.address)
            cancel_all(None)
            result.callback(outcome)
            return
        if result.called or state["ended"]:
            return
        if outcome.check(TLSAlertError):
            cancel_all(None)
            result.errback(outcome)
            return
        e = outcome.value
        assert e is not None
        why = describe_tls_failure(e) if not isinstance(e, error.ConnectError) else e
        log.info("registry {target} unreachable: {why}", target=target.address, why=why)
        failures.append((target, why))
        if state["next"] < len(targets):
            stop_timer()
            start_next()
        elif not pending:
            stop_timer()
            result.errback(_unreachable(targets, failures))

    start_next()
    return result


def _unreachable(
    targets: Sequence[RegistryTarget], failures: list[tuple[RegistryTarget, BaseException]]
) -> Exception:
    """One error for every address failing: the one address's own, or all of them in one."""
    if len(targets) == 1:
        last = failures[-1][1]
        if isinstance(last, IRPConnectionError):
            return last
        return IRPConnectionLost(f"cannot reach the registry ({targets[0].address}): {last}")
    text = "; ".join(f"{t.address}: {why}" for t, why in failures)
    kinds = {type(why) for _, why in failures}
    kind = kinds.pop() if len(kinds) == 1 else IRPConnectionLost
    if not issubclass(kind, IRPConnectionError) or kind is TLSAlertError:
        kind = IRPConnectionLost
    return kind(f"cannot reach any registry ({text})")


async def _connect(
    reactor: Any,
    registry: str | None,
    identity: str | None,
    anchors: Sequence[x509.Certificate] | None,
    client_identity: Identity | None,
    timeout: float,
    keepalive: float | None,
    resolver: Any,
    stagger: float,
) -> IRPClientProtocol:
    targets = await findRegistry(registry, identity, resolver=resolver)

    def attempt(target: RegistryTarget) -> defer.Deferred[IRPClientProtocol]:
        return defer.ensureDeferred(
            _connect_target(reactor, target, anchors, client_identity, timeout, keepalive)
        )

    return await _first_of(reactor, targets, attempt, stagger)


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
    stagger: float = STAGGER,
) -> defer.Deferred[IRPClientProtocol]:
    """
    Connect to a registry and fire with a ready L{IRPClientProtocol}.

    @param registry: C{HOST[:PORT]} / C{[v6]:PORT} to use that registry (the server
        certificate must then name C{HOST}), or a comma list of them (registries on one
        database: the first that answers, L{STAGGER}); C{None} or C{"auto"} to find it from
        C{identity}'s domain (irp-1 §1 discovery, certificate checked against the domain).
    @param identity: the identity whose domain discovery starts from.
    @param anchors: the registry's server CA certificates; C{None} trusts the system store.
    @param client_identity: present this certificate (authenticated requests); C{None} for
        an anonymous connection (C{ca}, C{enroll}, C{crl}, C{ping}).
    @param timeout: seconds for each TCP connect and each request.
    @param resolver: an C{IResolver} for the SRV lookup (default: the system's DNS).
    @param stagger: with several addresses (a comma list, or SRV records), seconds each has
        to connect before the next is tried alongside it (L{STAGGER}).

    Fails with L{TLSAlertError} if the registry refuses the certificate,
    L{RegistryCertificateError} if its certificate fails our check, L{IRPConnectionLost} if
    no registry address answered, C{ValueError} for a malformed C{registry} or C{identity}.
    """
    return defer.ensureDeferred(
        _connect(reactor, registry, identity, anchors, client_identity, timeout, keepalive,
                 resolver, stagger)
    )  # fmt: skip
