"""
The IRP client protocol (irp-1): L{IRPClientProtocol}, a Deferred API over one TLS connection
to a registry, and L{IRPClientFactory}, which builds them on one clock.

Why the protocol looks the way it does:

  - B{Pipelining, answers by id.} Every request gets a fresh id (a per-connection counter, so
    ids never repeat on a connection and a late answer to a timed-out request cannot be
    mistaken for another's); the server may answer out of order (irp-1 §1), so answers are
    matched by id only, and an answer of the wrong kind for its id is a broken server.
  - B{Fatal errors.} An C{error} without C{id} ends the connection (§2): every pending
    request fails with that L{IRPError}. So do malformed records and unknown responses.
  - B{Timeouts on the injected clock.} A request not answered within C{timeout} fails with
    L{IRPTimeout} and the connection is dropped: answers are matched by id on one ordered
    stream, so a registry that leaves one request unanswered is treated as gone rather than
    trusted with the others (and the keeper then reconnects).
  - B{Keepalive.} The server closes a connection idle for 600 s (§6) and only I{requests}
    reset its timer (§5), so we send a C{ping} after C{keepalive} seconds (default 240) without
    a request; that also detects a dead path for connections that only watch.
  - B{TLS refusals.} A refused client certificate shows only when we read (§7.1); the
    connection then ends with the L{TLSAlertError} that L{describe_tls_failure} makes of it.
    We never retry anonymously.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.errors import SixchatError
from sixchat.identity import is_valid_identity, normalize_identity, same_identity
from sixchat.irp import messages as m
from sixchat.irp.client.errors import (
    IRPConnectionError,
    IRPConnectionLost,
    IRPProtocolError,
    IRPTimeout,
    describe_tls_failure,
)
from sixchat.record import PLAIN, RecordReader, plain_record
from sixchat.xmlcodec import Element, is_xml_text, parse, serialize

if TYPE_CHECKING:
    from sixchat.irp.discovery import RegistryTarget

__all__ = ["DEFAULT_KEEPALIVE", "DEFAULT_TIMEOUT", "IRPClientFactory", "IRPClientProtocol"]

#: Seconds a request may wait for its answer.
DEFAULT_TIMEOUT = 30.0
#: Seconds without a request before we send a C{ping}: well inside the 600 s idle limit.
DEFAULT_KEEPALIVE = 240.0

#: Answers each request expects (its tag), by request tag.
_EXPECTED = {
    "register": "registered",
    "unregister": "unregistered",
    "lookup": "record",
    "watch": "watching",
    "unwatch": "unwatched",
    "ca": "ca-certs",
    "enroll": "issued",
    "renew": "issued",
    "revoke": "revoked",
    "crl": "crl-data",
    "ping": "pong",
}


@dataclass
class _Pending:
    tag: str
    deferred: defer.Deferred[Any]
    timer: IDelayedCall | None


def _response_tag(response: m.Response) -> str:
    if isinstance(response, m.Registered):
        return "registered"
    if isinstance(response, m.Record):
        return "record"
    if isinstance(response, m.Certs):
        return response.tag
    if isinstance(response, m.CRLData):
        return "crl-data"
    if isinstance(response, m.Ack):
        return response.tag
    return "error"


class IRPClientProtocol(Protocol):
    """
    One connection to a registry. Every method sends a request at once (pipelined) and
    returns a Deferred for its answer; a refusal fails it with L{IRPError} (C{.reason} is the
    spec's token), a broken connection with an L{IRPConnectionError}.

    @ivar clock: the injected C{IReactorTime} for timeouts, keepalive and RTTs.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float | None = DEFAULT_KEEPALIVE,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.keepalive = keepalive
        self._reader = RecordReader()
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._cancelled: set[str] = set()
        self._watches: dict[str, list[Callable[[m.Record], Any]]] = {}
        self._keepalive_timer: IDelayedCall | None = None
        self._lost_waiters: list[defer.Deferred[IRPConnectionError]] = []
        self._closing: IRPConnectionError | None = None
        self.connected = False
        self.lost: IRPConnectionError | None = None
        #: The registry address this connection went to (set by C{connectRegistry}).
        self.target: RegistryTarget | None = None

    # Twisted callbacks ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        self._resetKeepalive()

    def dataReceived(self, data: bytes) -> None:
        if self._closing is not None:
            return
        self._reader.feed(data)
        try:
            while self._closing is None:
                record = self._reader.next_record(sealed_allowed=False)
                if record is None:
                    return
                record_type, _, payload = record
                if record_type != PLAIN:  # pragma: no cover - the reader refuses SEALED
                    raise IRPProtocolError("non-PLAIN record from the registry")
                self._handle(parse(payload))
        except m.IRPError as e:
            self._fatal(e)
        except IRPConnectionError as e:
            self._fatal(e)
        except SixchatError as e:
            self._fatal(IRPProtocolError(f"malformed data from the registry: {e}"))
        except Exception:
            self.log.failure("internal error handling data from the registry")
            self._fatal(IRPProtocolError("internal error handling the registry's data"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self._keepalive_timer is not None and self._keepalive_timer.active():
            self._keepalive_timer.cancel()
        self._keepalive_timer = None
        why: IRPConnectionError = self._closing or describe_tls_failure(reason)
        self.lost = why
        self._failAll(why)
        self._watches.clear()
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(why)

    # incoming -------------------------------------------------------------------------------

    def _handle(self, element: Element) -> None:
        try:
            response = m.parse_response(element)
        except ValueError as e:
            raise IRPProtocolError(f"unexpected answer from the registry: {e}") from None
        if isinstance(response, m.IRPError):
            if response.id is None:
                raise response  # fatal for the connection (§2)
            pending = self._pending.pop(response.id, None)
            if pending is None:
                self._cancelled.discard(response.id)
                self.log.debug("error for unknown request {id}", id=response.id)
                return
            self._settle(pending)
            pending.deferred.errback(response)
            return
        if isinstance(response, m.Record) and response.id is None:
            self._presence(response)
            return
        rid = response.id
        assert rid is not None
        pending = self._pending.pop(rid, None)
        if pending is None:
            if rid in self._cancelled:
                self._cancelled.discard(rid)
                return
            # A late answer to a request that timed out cannot happen (we drop the connection
            # then); anything else is an id we never sent.
            raise IRPProtocolError(f"answer for request {rid!r}, which we never sent")
        self._settle(pending)
        tag = _response_tag(response)
        if tag != _EXPECTED[pending.tag]:
            pending.deferred.errback(
                IRPProtocolError(f"registry answered <{pending.tag}> with <{tag}>")
            )
            raise IRPProtocolError(f"registry answered <{pending.tag}> with <{tag}>")
        pending.deferred.callback(response)

    def _presence(self, record: m.Record) -> None:
        try:
            key = normalize_identity(record.identity)
        except ValueError:
            return
        for callback in list(self._watches.get(key, ())):
            try:
                callback(record)
            except Exception:
                self.log.failure("watch callback for {identity} failed", identity=key)

    # outgoing -------------------------------------------------------------------------------

    def _request(self, make: Callable[[str], Any]) -> defer.Deferred[Any]:
        if not self.connected or self._closing is not None:
            return defer.fail(self.lost or self._closing or IRPConnectionLost("not connected"))
        rid = str(next(self._ids))
        request = make(rid)
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._forget(rid))
        timer = self.clock.callLater(self.timeout, self._timedOut, rid) if self.timeout else None
        self._pending[rid] = _Pending(request.tag, d, timer)
        transport = self.transport
        assert transport is not None  # connected
        transport.write(plain_record(serialize(request.to_element())))
        self._resetKeepalive()
        return d

    def _forget(self, rid: str) -> None:
        """A caller cancelled its request: its answer, if it comes, is dropped."""
        pending = self._pending.pop(rid, None)
        if pending is not None:
            self._settle(pending)
            self._cancelled.add(rid)

    def _settle(self, pending: _Pending) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()

    def _timedOut(self, rid: str) -> None:
        pending = self._pending.pop(rid, None)
        if pending is None:
            return
        why = IRPTimeout(f"the registry did not answer <{pending.tag}> within {self.timeout:g} s")
        pending.deferred.errback(why)
        self._fatal(why, abort=True)

    def _resetKeepalive(self) -> None:
        if not self.keepalive or not self.connected:
            return
        if self._keepalive_timer is not None and self._keepalive_timer.active():
            self._keepalive_timer.reset(self.keepalive)
        else:
            self._keepalive_timer = self.clock.callLater(self.keepalive, self._keepaliveDue)

    def _keepaliveDue(self) -> None:
        self._keepalive_timer = None
        # A timeout drops the connection (see _timedOut); nothing else to do with a failure.
        self.ping().addErrback(lambda f: None)

    def _failAll(self, why: Exception) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            self._settle(p)
            p.deferred.errback(why)

    def _fatal(self, why: IRPConnectionError | m.IRPError, abort: bool = False) -> None:
        """End the connection: every pending request fails with C{why}."""
        if self._closing is not None:
            return
        if isinstance(why, m.IRPError):
            self.log.warn("registry ended the connection: {reason} {text}",
                          reason=why.reason, text=why.text)  # fmt: skip
            closing: IRPConnectionError = IRPConnectionLost(f"registry sent a fatal error: {why}")
            self._failAll(why)
        else:
            closing = why
            self._failAll(why)
        self._closing = closing
        transport: Any = self.transport
        if transport is not None:
            if abort and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                transport.loseConnection()

    # the public API ---------------------------------------------------------------------------

    def register(
        self, node: str, contacts: Sequence[m.Contact], expires: int = m.DEFAULT_EXPIRES
    ) -> defer.Deferred[int]:
        """Bind C{node} to C{contacts} (§3.1); fires with the granted expiry in seconds."""
        if not m.is_valid_node(node):
            return defer.fail(ValueError(f"invalid node name {node!r}"))
        if not 1 <= len(contacts) <= m.MAX_CONTACTS:
            return defer.fail(ValueError(f"a node has 1 to {m.MAX_CONTACTS} contacts"))
        d = self._request(lambda rid: m.Register(rid, node, list(contacts), int(expires)))
        return d.addCallback(lambda r: r.expires)

    def unregister(self, node: str) -> defer.Deferred[None]:
        """Remove C{node}'s binding (§3.2, idempotent)."""
        if not m.is_valid_node(node):
            return defer.fail(ValueError(f"invalid node name {node!r}"))
        return self._request(lambda rid: m.Unregister(rid, node)).addCallback(lambda _: None)

    def lookup(self, identity: str) -> defer.Deferred[m.Record]:
        """
        The identity's live bindings and certificates (§3.3). Fails with L{IRPError}
        C{not_found} for an unknown identity.
        """
        if not is_valid_identity(identity):
            return defer.fail(ValueError(f"invalid identity {identity!r}"))

        def check(record: m.Record) -> m.Record:
            if not same_identity(record.identity, identity):
                raise IRPProtocolError(
                    f"asked for {identity}, the registry answered for {record.identity!r}"
                )
            return record

        return self._request(lambda rid: m.Lookup(rid, identity)).addCallback(check)

    def watch(self, identity: str, callback: Callable[[m.Record], Any]) -> defer.Deferred[None]:
        """
        Watch C{identity} (§3.4): C{callback(record)} gets the initial presence (right after
        the answer) and one on every change; a presence with no C{nodes} means offline.
        Watches end with the connection (see L{whenLost}).
        """
        if not is_valid_identity(identity):
            return defer.fail(ValueError(f"invalid identity {identity!r}"))
        key = normalize_identity(identity)
        callbacks = self._watches.setdefault(key, [])
        callbacks.append(callback)

        def failed(f: Failure) -> Failure:
            if callback in self._watches.get(key, []):
                self._watches[key].remove(callback)
                if not self._watches[key]:
                    del self._watches[key]
            return f

        d = self._request(lambda rid: m.Watch(rid, identity))
        return d.addCallbacks(lambda _: None, failed)

    def unwatch(self, identity: str) -> defer.Deferred[None]:
        """Stop watching C{identity}; its callbacks get no more pushes."""
        if not is_valid_identity(identity):
            return defer.fail(ValueError(f"invalid identity {identity!r}"))
        self._watches.pop(normalize_identity(identity), None)
        return self._request(lambda rid: m.Unwatch(rid, identity)).addCallback(lambda _: None)

    def ca(self) -> defer.Deferred[list[x509.Certificate]]:
        """The trust anchors of this registry's users (§4.1, anonymous)."""
        return self._request(lambda rid: m.CA(rid)).addCallback(_certs)

    def enroll(
        self, token: str, csr_der: bytes, identity: str | None = None
    ) -> defer.Deferred[list[x509.Certificate]]:
        """
        Exchange a one-time token and a CSR for a certificate (§4.2, anonymous); fires with
        the leaf followed by its intermediates. The token is never logged. C{identity}: the
        identity we expect the invitation to be for; a sixchat registry refuses another one
        (C{forbidden}) without spending the token, older registries ignore it.
        """
        if not token or not is_xml_text(token):
            return defer.fail(ValueError("the token is empty or holds characters XML cannot carry"))
        if identity is not None and not is_valid_identity(identity):
            return defer.fail(ValueError(f"invalid identity {identity!r}"))
        return self._request(lambda rid: m.Enroll(rid, token, csr_der, identity)).addCallback(
            _certs
        )

    def renew(self, csr_der: bytes) -> defer.Deferred[list[x509.Certificate]]:
        """A new certificate for the connection's identity (§4.3): leaf, intermediates."""
        return self._request(lambda rid: m.Renew(rid, csr_der)).addCallback(_certs)

    def revoke(self) -> defer.Deferred[None]:
        """Revoke the certificate this connection authenticated with (§4.4)."""
        return self._request(lambda rid: m.Revoke(rid)).addCallback(lambda _: None)

    def crl(self) -> defer.Deferred[list[x509.CertificateRevocationList]]:
        """The registry's CRLs, one per issuing CA (§4.5, anonymous)."""

        def load(answer: m.CRLData) -> list[x509.CertificateRevocationList]:
            try:
                return [x509.load_der_x509_crl(der) for der in answer.crls]
            except ValueError:
                raise IRPProtocolError("the registry sent an unreadable CRL") from None

        return self._request(lambda rid: m.CRL(rid)).addCallback(load)

    def ping(self) -> defer.Deferred[float]:
        """Keepalive (§5); fires with the round-trip time in seconds (by the clock)."""
        sent = self.clock.seconds()
        d = self._request(lambda rid: m.Ping(rid))
        return d.addCallback(lambda _: self.clock.seconds() - sent)

    def close(self) -> defer.Deferred[IRPConnectionError]:
        """Close the connection; fires once it is closed (pending requests fail)."""
        d = self.whenLost()
        if self.connected and self._closing is None:
            self._closing = IRPConnectionLost("connection closed by us")
            self._failAll(self._closing)
            transport = self.transport
            assert transport is not None  # connected
            transport.loseConnection()
        return d

    def whenLost(self) -> defer.Deferred[IRPConnectionError]:
        """
        Fires (never fails) when the connection ends, with the L{IRPConnectionError} saying
        why: a TLS alert, a fatal error, a timeout, or just the close.
        """
        if self.lost is not None:
            return defer.succeed(self.lost)
        d: defer.Deferred[IRPConnectionError] = defer.Deferred()
        self._lost_waiters.append(d)
        return d


def _certs(answer: m.Certs) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(der) for der in answer.certs]
    except ValueError:
        raise IRPProtocolError("the registry sent an unreadable certificate") from None


class IRPClientFactory(Factory):
    """Builds L{IRPClientProtocol}s with one clock and timeouts."""

    noisy = False  # the keeper logs what matters; "Starting factory" per reconnect is noise

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float | None = DEFAULT_KEEPALIVE,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.keepalive = keepalive

    def buildProtocol(self, addr: Any) -> IRPClientProtocol:
        proto = IRPClientProtocol(self.clock, timeout=self.timeout, keepalive=self.keepalive)
        proto.factory = self
        return proto

