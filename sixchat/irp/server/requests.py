"""
The request half of one registry connection (L{RequestHandler}): who is on the connection
(its validated certificate, rechecked against revocations), what it watches, and what each
irp-1 request does (§3, §4). The connection itself (framing, limits, flow control, output) is
L{sixchat.irp.server.protocol.IRPServerProtocol}, which hands every parsed request here and
sends what comes back.

  - B{Authentication}: the identity is the leaf's single rfc822Name (L{ServerTLS} refuses
    anything else at the handshake). Before every authenticated request the connection's
    certificate is checked against the store's revocations; a "not revoked" answer is
    trusted until a change notification for that identity arrives, and never longer than
    C{revocation_recheck} seconds (store notifications across processes are best effort).
    A notification also rechecks at once, so a revocation made anywhere, by the holder or
    an administrator, takes the identity (and, unless the lookup policy is public, the
    watches) away from every connection authenticated by that certificate (§7.7).
  - B{The lookup fast path} (L{RequestHandler.lookup}) answers the commonest request
    without the coroutine machinery when nothing needs awaiting before the store.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.irp.messages import (
    ANONYMOUS_REQUESTS,
    CA,
    CRL,
    MAX_CONTACTS,
    Ack,
    Certs,
    CRLData,
    Enroll,
    IRPError,
    Lookup,
    Ping,
    Record,
    Register,
    Registered,
    Renew,
    Request,
    Revoke,
    Unregister,
    Unwatch,
    Watch,
)
from sixchat.irp.server.fastpaths import _nodes, record_bytes
from sixchat.irp.server.hub import Subscription, identity_key
from sixchat.irp.store.interfaces import ConflictError, IdentityState
from sixchat.netaddr import format_hostport
from sixchat.record import MAX_PLAINTEXT
from sixchat.trust import PeerCertificate
from sixchat.xmlcodec import Element

if TYPE_CHECKING:
    from sixchat.irp.server.protocol import IRPServerFactory

__all__ = ["RequestConnection", "RequestHandler"]


class RequestConnection(TypingProtocol):
    """What a L{RequestHandler} needs of its connection (L{IRPServerProtocol} provides it)."""

    closing: bool
    transport: ITransport | None

    def answered(self, elements: list[Element], rid: str) -> None:
        """The request C{rid} is over: send its answer (none: already sent, or nothing)."""

    def answered_with(self, payload: bytes, rid: str) -> None:
        """L{answered} with an answer serialised already."""

    def push(self, state: IdentityState) -> None:
        """Send a watched identity's newer state."""


class _Ended:
    """
    A handler's connection once the connection ended: late answers (a store read still on
    its way) go nowhere, as they would on the closed connection, and the handler no longer
    refers to the connection, so that the two are freed by reference counting alone (see
    L{sixchat.irp.server.gcpolicy}).
    """

    closing = True
    transport: ITransport | None = None

    def answered(self, elements: list[Element], rid: str) -> None:
        pass

    def answered_with(self, payload: bytes, rid: str) -> None:
        pass

    def push(self, state: IdentityState) -> None:
        pass


_ENDED = _Ended()


@functools.lru_cache(maxsize=64)
def _issuer_der_of(cert: x509.Certificate) -> bytes:
    """
    DER of a connection's issuer (a CA certificate, the same few objects on every
    connection): revocation is rechecked about once a second per connection.
    """
    return cert.public_bytes(serialization.Encoding.DER)


def _joined(
    first: defer.Deferred[bool], second: defer.Deferred[IdentityState]
) -> defer.Deferred[tuple[bool, IdentityState]]:
    """
    Both results as a pair, or the first failure (the other one consumed): what
    C{gatherResults} does for two, at a third of its cost when both have fired already
    (a store's lookup cache answers both at once).
    """

    def got(value: bool) -> defer.Deferred[tuple[bool, IdentityState]]:
        return second.addCallback(lambda state: (value, state))

    def failed(failure: Failure) -> Failure:
        second.addErrback(lambda _: None)
        return failure

    return first.addCallbacks(got, failed)


class RequestHandler:
    """
    One connection's identity, watches and requests. It is what the hub knows of the
    connection (L{sixchat.irp.server.hub.HubConnection}): the hub tracks it by identity and
    offers it watched states, which it pushes through the connection.
    """

    log = Logger()

    def __init__(self, connection: RequestConnection, factory: IRPServerFactory) -> None:
        self.connection = connection
        self.factory = factory
        self.config = factory.config
        self._resolved = False
        self._peer: PeerCertificate | None = None
        self._not_after: datetime | None = None  # the peer's leaf's (a getter builds it anew)
        self._identity_key: str | None = None
        self._checked_at: float | None = None
        self.watches: dict[str, Subscription] = {}

    @property
    def peer(self) -> PeerCertificate | None:
        """The connection's validated certificate, or None (anonymous, or revoked)."""
        self.resolve()
        return self._peer

    @property
    def identity(self) -> str | None:
        peer = self.peer
        return peer.names[0] if peer is not None else None

    def resolve(self) -> None:
        """
        Read the connection's certificate once, at its first data (TLS is complete by
        then), and let the hub know which identity this connection holds.
        """
        if self._resolved:
            return
        self._resolved = True
        transport = self.connection.transport
        peer = self.factory.peer_for(transport) if transport is not None else None
        if peer is not None and peer.names:
            self._peer = peer
            self._not_after = peer.leaf.not_valid_after_utc
            self._identity_key = identity_key(peer.names[0])
            if self._identity_key is not None:
                self.factory.hub.track(self._identity_key, self)

    def lookup(self, request: Lookup) -> bool:
        """
        The registry's commonest request without the coroutine machinery of L{dispatch},
        when nothing needs awaiting before the store: the registry is ready and the
        connection's identity was checked recently (or lookups are public). Same checks and
        answers as L{dispatch} and L{_handle}, which handle every other case (errors,
        revocation rechecks). Returns False to leave the request to them. About an eighth
        of a lookup's cost (docs/benchmarks.md).
        """
        factory = self.factory
        if not factory.hub.ready or not factory.serves(request.identity):
            return False
        store = factory.store
        when = factory.now()
        if not self.config.public:
            peer = self.peer
            if peer is None or self._not_after is None or when >= self._not_after:
                return False  # unauthenticated: L{_authenticated} answers
            now = factory.clock.seconds()
            checked = self._checked_at
            if checked is None or now - checked >= self.config.revocation_recheck:
                # The revocation recheck (about once a second per connection) and the
                # lookup go to the store together: one trip instead of two in a row.
                revoked = store.is_revoked(peer.leaf.serial_number, self._issuer_der(peer))
                state = store.state(request.identity, when)
                both = _joined(revoked, state)
                if both.called:  # the store's lookup cache answered both at once
                    both.addCallbacks(
                        self._rechecked, self._lookup_failed,
                        callbackArgs=(peer, now, request.id), errbackArgs=(request,),
                    )  # fmt: skip
                else:
                    factory.backlog.enter()
                    both.addBoth(self._rechecked_waited, peer, now, request)
                return True
        d: defer.Deferred[IdentityState] = store.state(request.identity, when)
        if d.called:  # answered at once (the store's lookup cache)
            d.addCallbacks(
                self._looked_up, self._lookup_failed, callbackArgs=(request.id,),
                errbackArgs=(request,),
            )  # fmt: skip
        else:
            # One callback for both outcomes, which also leaves the backlog: each queued
            # lookup holds as few objects as it can while it waits (every full garbage
            # collection walks them; sixchat.irp.server.gcpolicy).
            factory.backlog.enter()
            d.addBoth(self._looked_up_waited, request)
        return True

    def _looked_up_waited(self, result: IdentityState | Failure, request: Lookup) -> None:
        self.factory.backlog.leave()
        if isinstance(result, Failure):
            self._lookup_failed(result, request)
        else:
            self._looked_up(result, request.id)

    def _rechecked_waited(
        self, result: tuple[bool, IdentityState] | Failure, peer: PeerCertificate, now: float,
        request: Lookup,
    ) -> None:  # fmt: skip
        self.factory.backlog.leave()
        if isinstance(result, Failure):
            self._lookup_failed(result, request)
        else:
            self._rechecked(result, peer, now, request.id)

    def _rechecked(
        self, results: tuple[bool, IdentityState], peer: PeerCertificate, now: float, rid: str
    ) -> None:
        """L{_authenticated}'s revocation outcome, then the lookup's answer."""
        revoked, state = results
        if self._peer is not peer or revoked:
            if self._peer is peer:
                self.lose_identity("its certificate was revoked")
            error = IRPError("unauthenticated", "the client certificate was revoked", rid)
            self.connection.answered([error.to_element()], rid)
            return
        self._checked_at = now
        self._looked_up(state, rid)

    def _looked_up(self, state: IdentityState, rid: str) -> None:
        connection = self.connection
        if not state.known:
            error = IRPError("not_found", "unknown identity", rid)
            connection.answered([error.to_element()], rid)
            return
        if connection.closing or connection.transport is None:
            connection.answered([], rid)
            return
        try:
            data = record_bytes(state, rid)
        except ValueError:  # a code point XML cannot carry: the generic path says so
            record = Record(state.identity, _nodes(state), state.cert, rid)
            connection.answered([record.to_element()], rid)
            return
        if len(data) > MAX_PLAINTEXT:  # the generic path logs and answers "internal"
            record = Record(state.identity, _nodes(state), state.cert, rid)
            connection.answered([record.to_element()], rid)
            return
        connection.answered_with(data, rid)

    def _lookup_failed(self, failure: Failure, request: Lookup) -> None:
        if self.factory.running:  # not the store closing under us at shutdown
            self.log.failure("registry request <{tag}> failed", failure, tag=request.tag)
        self.connection.answered([IRPError("internal", "", request.id).to_element()], request.id)

    async def dispatch(self, request: Request) -> list[Element]:
        """Answer C{request} (authenticating first where irp-1 requires it); never fails."""
        rid = request.id
        try:
            await self.factory.whenReady()
            if request.tag not in ANONYMOUS_REQUESTS and not (
                self.config.public and request.tag in ("lookup", "watch", "unwatch")
            ):
                peer = await self._authenticated()
            else:
                peer = None
            return await self._handle(request, peer)
        except IRPError as e:
            return [IRPError(e.reason, e.text, rid).to_element()]
        except Exception:
            if self.factory.running:  # not the store closing under us at shutdown
                self.log.failure("registry request <{tag}> failed", tag=request.tag)
            return [IRPError("internal", "", rid).to_element()]

    async def _authenticated(self) -> PeerCertificate:
        peer = self.peer
        if peer is None:
            raise IRPError("unauthenticated", "this request needs a client certificate")
        now = self.factory.clock.seconds()
        if self.factory.now() >= peer.leaf.not_valid_after_utc:
            raise IRPError("unauthenticated", "the client certificate has expired")
        recheck = self.config.revocation_recheck
        if self._checked_at is None or now - self._checked_at >= recheck:
            revoked = await self.factory.store.is_revoked(
                peer.leaf.serial_number, self._issuer_der(peer)
            )
            if self._peer is not peer:  # lost meanwhile
                raise IRPError("unauthenticated", "the client certificate was revoked")
            if revoked:
                self.lose_identity("its certificate was revoked")
                raise IRPError("unauthenticated", "the client certificate was revoked")
            self._checked_at = now
        return peer

    @staticmethod
    def _issuer_der(peer: PeerCertificate) -> bytes:
        return _issuer_der_of(peer.chain[1]) if len(peer.chain) > 1 else peer.leaf_der

    def identity_changed(self) -> None:
        """
        A change notification for our identity: forget the cached revocation answer and
        check at once, so a revocation anywhere takes effect on this connection now.
        """
        self._checked_at = None
        if self._peer is None or self.connection.closing:
            return
        peer = self._peer

        def checked(revoked: bool) -> None:
            if revoked and self._peer is peer:
                self.lose_identity("its certificate was revoked")
                self.factory.hub.revocation_seen()

        def failed(failure: Failure) -> None:
            if self.factory.running:
                self.log.failure("revocation check failed", failure)

        d = defer.maybeDeferred(
            self.factory.store.is_revoked, peer.leaf.serial_number, self._issuer_der(peer)
        )
        d.addCallbacks(checked, failed)

    def lose_identity(self, why: str) -> None:
        """irp-1 §4.4, §7.7: later authenticated requests get C{unauthenticated}."""
        peer = self._peer
        if peer is None:
            return
        self.log.info(
            "connection of {identity} lost its identity: {why}", identity=peer.names[0], why=why
        )
        self._peer = None
        if self._identity_key is not None:
            self.factory.hub.untrack(self._identity_key, self)
        self._identity_key = None
        if not self.config.public:
            for key in list(self.watches):
                self.unwatch(key)

    def unwatch(self, key: str) -> None:
        self.watches.pop(key, None)
        self.factory.hub.remove_watch(self, key)

    async def _handle(self, request: Request, peer: PeerCertificate | None) -> list[Element]:
        rid = request.id
        factory = self.factory
        store = factory.store
        if isinstance(request, Ping):
            return [Ack("pong", rid).to_element()]
        if isinstance(request, CA):
            return [Certs(rid, factory.authority.anchors_der, "ca-certs").to_element()]
        if isinstance(request, CRL):
            crls = await factory.authority.crls()
            return [CRLData(rid, crls).to_element()]
        if isinstance(request, Enroll):
            chain = await factory.authority.enroll(request.token, request.csr, request.identity)
            return [Certs(rid, chain, "issued").to_element()]
        if isinstance(request, Lookup):
            if not factory.serves(request.identity):
                raise IRPError("not_found", "this registry does not serve that domain")
            state: IdentityState = await store.state(request.identity, factory.now())
            if not state.known:
                raise IRPError("not_found", "unknown identity")
            return [Record(state.identity, _nodes(state), state.cert, rid).to_element()]
        if isinstance(request, Watch):
            return await self._watch(request)
        if isinstance(request, Unwatch):
            key = identity_key(request.identity)
            if key is not None:
                self.unwatch(key)
            return [Ack("unwatched", rid).to_element()]
        assert peer is not None  # every other request is authenticated
        identity = peer.names[0]
        if isinstance(request, Register):
            return await self._register(request, peer)
        if isinstance(request, Unregister):
            removed = await store.unregister(identity, request.node)
            if removed:
                self.log.info("unregistered {identity} node {node}", identity=identity,
                              node=request.node)  # fmt: skip
            return [Ack("unregistered", rid).to_element()]
        if isinstance(request, Renew):
            chain = await factory.authority.renew(identity, request.csr)
            return [Certs(rid, chain, "issued").to_element()]
        if isinstance(request, Revoke):
            serial = peer.leaf.serial_number
            await factory.authority.revoke(serial, self._issuer_der(peer))
            self.log.info(
                "certificate serial {serial} of {identity} revoked by its holder",
                serial=format(serial, "x"),
                identity=identity,
            )
            self.lose_identity("it revoked its certificate")
            return [Ack("revoked", rid).to_element()]
        raise IRPError("unsupported", f"<{request.tag}> is not supported")  # pragma: no cover

    async def _register(self, request: Register, peer: PeerCertificate) -> list[Element]:
        factory = self.factory
        identity = peer.names[0]
        if not factory.serves(identity):
            raise IRPError("forbidden", "this registry does not serve that domain")
        contacts = list(dict.fromkeys(request.contacts))[:MAX_CONTACTS]
        now = factory.now()
        until = now + timedelta(seconds=request.expires)
        try:
            await factory.store.register(
                identity, request.node, contacts, peer.leaf_der, peer.leaf.serial_number,
                peer.leaf.not_valid_after_utc, now, until, self.config.max_nodes,
            )  # fmt: skip
        except ConflictError:
            raise IRPError(
                "conflict", f"an identity may have at most {self.config.max_nodes} nodes"
            ) from None
        factory.hub.binding_added(until)
        self.log.info(
            "registered {identity} node {node}: {contacts} for {expires} s",
            identity=identity,
            node=request.node,
            contacts=" ".join(format_hostport(c.host, c.port) for c in contacts),
            expires=request.expires,
        )
        return [Registered(request.id, request.expires).to_element()]

    async def _watch(self, request: Watch) -> list[Element]:
        factory = self.factory
        rid = request.id
        if not factory.serves(request.identity):
            raise IRPError("not_found", "this registry does not serve that domain")
        key = identity_key(request.identity)
        assert key is not None  # parse_request checked the identity
        watch = self.watches.get(key)
        if watch is None:
            if len(self.watches) >= self.config.max_watches:
                raise IRPError("rate_limited", f"at most {self.config.max_watches} watches")
            watch = factory.hub.add_watch(self, key)
            self.watches[key] = watch
            seq, state = await factory.hub.fetch(request.identity)
            watch.offer(seq, state)
            state = watch.pending or state
            self.connection.answered([Ack("watching", rid).to_element()], rid)
            self.connection.push(state)
            watch.pending = None
            watch.active = True
            return []
        # A second watch of the same identity answers the same way and adds nothing (§7.5).
        seq, state = await factory.hub.fetch(request.identity)
        watch.last_seq = max(watch.last_seq, seq)
        self.connection.answered([Ack("watching", rid).to_element()], rid)
        self.connection.push(state)
        return []

    def forget(self) -> None:
        """The connection ended: its identity and its watches end with it."""
        if self._identity_key is not None:
            self.factory.hub.untrack(self._identity_key, self)
        for key in list(self.watches):
            self.unwatch(key)
        self.connection = _ENDED

    def push(self, state: IdentityState) -> None:
        """L{sixchat.irp.server.hub.HubConnection}: a watched identity's newer state."""
        self.connection.push(state)
