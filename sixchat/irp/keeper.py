"""
Keeping a user agent registered (irp-1 §3.1): L{RegistrationKeeper}. The addresses it
registers come from L{sixchat.irp.contacts} (re-exported here).

The keeper is a C{twisted.application} service with one loop:

    connect → register → (refresh at 2/3 of the granted expiry)* → connection lost
            → wait (exponential backoff with jitter) → connect → …

and C{stopService} unregisters (bounded by a timeout, so a dead registry never holds up a
shutdown). Given the agent's C{identity}, the keeper also guards the node's binding against a
second agent of the same identity and node name (docs/irp.md, "One node, one agent"):

  - B{Before the first register} it looks its identity up. A live binding of our node with
    other contacts is probed (a TCP connect to each, C{probe}); if one answers, another agent
    holds the node: state C{conflict}, C{on_conflict(line)} (the agent refuses to start), and
    no register. A binding nobody answers at is a stale one (a crash) and is replaced.
  - B{While registered} it watches its identity (irp-1 §3.4). A push showing our node with
    other contacts means another agent took the binding over: state C{taken-over}, no more
    refreshes. A push without our node (unregistered elsewhere, expired) re-registers at once:
    the keeper restores its registration.
  - B{Stopping}, it unregisters only a binding it verified is still its own (a lookup right
    before: our contacts), never one another agent has taken over: irp-1's C{unregister}
    carries only the node name.

Why these choices:

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
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.irp import messages as m
from sixchat.irp.backoff import backoff_delay
from sixchat.irp.client import IRPConnectionError
from sixchat.irp.contacts import AutoContacts, local_addresses, parse_advertise
from sixchat.netaddr import format_hostport

__all__ = [
    "AutoContacts",
    "RegistrationKeeper",
    "local_addresses",
    "parse_advertise",
    "tcp_probe",
]

log = Logger()

#: Keeper states in which another agent holds our node (kept while we retry).
_HELD = ("taken-over", "conflict")


class RegistrationKeeper(service.Service):
    """
    Keeps C{node} registered with contacts from C{contacts_provider} (see the module
    docstring for the loop and its timing).

    @param connect: opens a registry connection: fires with an object with the
        L{IRPClientProtocol} methods C{register}, C{unregister}, C{whenLost} and C{close}.
    @param contacts_provider: returns the contacts (a list or a Deferred of one).
    @param rand: a C{random()} in [0, 1) for the jitter (tests pin it).

    @param identity: our identity; given, the binding is guarded (module docstring).
    @param probe: fires with the first of the given contacts that accepts a connection, or
        None (L{tcp_probe}); without one, a foreign live binding counts as held.

    @ivar state: C{stopped}, C{connecting}, C{registering}, C{registered}, C{waiting},
        C{taken-over} (another agent holds our node), C{conflict} (it did at start-up).
    @ivar granted: the expiry the registry granted last (seconds), or None.
    @ivar holder: the contacts of the other agent in C{taken-over} and C{conflict}.
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
        identity: str | None = None,
        probe: Callable[[list[m.Contact]], defer.Deferred[m.Contact | None]] | None = None,
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
        self.identity = identity
        self.probe = probe
        self.holder: list[m.Contact] = []
        #: Whether this run has checked the node is free (once, before its first register).
        self.checked = False
        self.registered_once = False
        #: When and how our binding was last lost in this run (for status), or None.
        self.last_lost: str | None = None
        self._watched: Any = None
        self.state = "stopped"
        self.granted: int | None = None
        self.contacts: list[m.Contact] = []
        self.failures = 0
        self.protocol: Any = None
        self._timer: IDelayedCall | None = None
        self._pending: defer.Deferred[Any] | None = None
        #: Called with the new state on each change (tests, status displays).
        self.on_state: Callable[[str], None] | None = None
        #: Called with a one-line explanation when another agent holds our node at start-up.
        self.on_conflict: Callable[[str], None] | None = None

    # the loop ---------------------------------------------------------------------------------

    def _setState(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_state is not None:
                self.on_state(state)

    def startService(self) -> None:
        super().startService()
        self.failures = 0
        self.checked = self.registered_once = False
        self._connect()

    def _connect(self) -> None:
        self._timer = None
        if not self.running:
            return
        if self.state not in _HELD:
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
        if self.identity is not None and not self.checked:
            self._check(proto)
        else:
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
        self.holder = []
        self.checked = True
        self.registered_once = True
        if self.identity is not None and self._watched is not proto:
            self._watched = proto
            w = defer.maybeDeferred(proto.watch, self.identity, self._presence)
            w.addErrback(lambda f: self.log.debug("cannot watch our own bindings: {why}",
                                                  why=f.getErrorMessage()))  # fmt: skip
        self._setState("registered")
        contacts = ", ".join(format_hostport(c.host, c.port) for c in self.contacts)
        (self.log.info if first else self.log.debug)(
            "registered node {node} at {contacts} with {registry} for {granted} s",
            node=self.node,
            contacts=contacts,
            registry=self._where(proto),
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
        self._retry(state=self.state if self.state in _HELD else "waiting")

    def addressesChanged(self) -> None:
        """
        Our addresses changed (L{sixchat.agent.addresses}): register the new contacts now,
        on a fresh connection (the old one may be bound to an address that is gone), without
        waiting for the next refresh or a backoff.
        """
        if not self.running or self.state in _HELD:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._pending is not None and self.protocol is None:
            self._pending.cancel()  # a connect in progress, maybe from the old address
        proto, self.protocol = self.protocol, None
        if proto is not None:
            transport = getattr(proto, "transport", None)
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()  # no goodbye over a path that may be gone
            else:
                proto.close()
        self.failures = 0
        self._connect()

    # one node, one agent -------------------------------------------------------------------

    def _ours(self, binding: m.NodeBinding) -> bool:
        return set(binding.contacts) == set(self.contacts)

    def _mine(self, record: m.Record) -> m.NodeBinding | None:
        return next((n for n in record.nodes if n.name == self.node), None)

    def _describe(self, contacts: Sequence[m.Contact]) -> str:
        return ", ".join(format_hostport(c.host, c.port) for c in contacts)

    def _check(self, proto: Any) -> None:
        """Before the first register: is our node held by another running agent?"""
        if self.state not in _HELD:
            self._setState("registering")
        d = defer.maybeDeferred(self.contacts_provider)
        self._pending = d

        def lookup(contacts: list[m.Contact]) -> Any:
            self.contacts = list(contacts)
            return proto.lookup(self.identity)

        def found(record: m.Record) -> Any:
            binding = self._mine(record)
            if binding is None or self._ours(binding):
                return None
            others = [c for c in binding.contacts if c not in self.contacts]
            if self.probe is None:
                return others[0] if others else None
            return self.probe(others) if others else None

        def unknown(f: Failure) -> Failure | None:
            if f.check(m.IRPError):  # not_found: never registered; anything else: try anyway
                return None
            return f

        d.addCallback(lookup)
        d.addCallbacks(found, unknown)
        d.addCallbacks(self._checked, self._registerFailed, callbackArgs=(proto,),
                       errbackArgs=(proto,))  # fmt: skip

    def _checked(self, live: m.Contact | None, proto: Any) -> None:
        self._pending = None
        if proto is not self.protocol or not self.running:
            return
        if live is None:
            self._register()
            return
        self.holder = [live]
        if self.registered_once:  # it took our node over while we were away: wait for it
            self.log.warn("node {node} is still held by another agent at {holder}",
                          node=self.node, holder=self._describe(self.holder))  # fmt: skip
            self.protocol = None
            proto.close()
            self._retry(state="taken-over")
            return
        line = (
            f"node {self.node} of {self.identity} is already registered by a running agent "
            f"at {self._describe(self.holder)} (a second agent of this identity, e.g. on "
            "another data directory?): stop it, or give this one another --node"
        )
        self.log.error("{line}", line=line)
        self._setState("conflict")
        if self.on_conflict is not None:
            self.on_conflict(line)
        self.protocol = None
        proto.close()
        self._retry(state="conflict")

    def _presence(self, record: m.Record) -> None:
        """A push about our identity's bindings (irp-1 §3.4)."""
        if self.state not in ("registered", "taken-over") or not self.running:
            return  # a register of ours is on its way, or we are not registered
        binding = self._mine(record)
        if binding is not None and self._ours(binding):
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if binding is None:
            self._lost_at("removed at the registry (unregistered elsewhere, or expired)")
            self.log.warn(
                "the registration of node {node} was removed from {registry} (unregistered "
                "by another agent, or expired); registering again",
                node=self.node, registry=self.registry_name,
            )  # fmt: skip
            self._register()
            return
        first = self.state != "taken-over"
        self.holder = list(binding.contacts)
        if first:
            self._lost_at(f"taken over by another agent at {self._describe(self.holder)}")
        self.checked = False  # after a reconnect, look before registering again
        self._setState("taken-over")
        if first:
            self.log.warn(
                "node {node} was taken over at {registry} by another agent at {holder} (same "
                "identity and node name: give one of them another --node); not refreshing or "
                "unregistering it, registering again once it is gone",
                node=self.node, registry=self.registry_name,
                holder=self._describe(self.holder),
            )  # fmt: skip

    def _where(self, proto: Any) -> str:
        """The registry as logs name it, with the address connected to when it was one of
        several (a list of registries, SRV records)."""
        target = getattr(proto, "target", None)
        if target is None or self.registry_name.endswith(" " + target.address):
            return self.registry_name
        return f"{self.registry_name} at {target.address}"

    def _lost_at(self, what: str) -> None:
        when = datetime.fromtimestamp(self.reactor.seconds(), UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.last_lost = f"{when} UTC: {what}"

    def describe(self) -> dict[str, Any]:
        """
        The registration for C{status}: state, granted expiry, the other agent if any, and
        when our binding was last lost (taken over or removed) in this run.
        """
        out: dict[str, Any] = {"state": self.state, "expires": self.granted}
        target = getattr(self.protocol, "target", None)
        if target is not None:  # which registry, when there are several
            out["connected"] = target.address
        if self.last_lost is not None:
            out["last_lost"] = self.last_lost
        if self.state in _HELD and self.holder:
            out["held_by"] = self._describe(self.holder)
            out["note"] = (
                "another agent of this identity holds this node name; give one of them "
                "another --node"
            )
        return out

    def backoff(self, failures: int) -> float:
        """The wait before reconnecting after C{failures} consecutive failures (≥ 1)."""
        return backoff_delay(failures, self.min_backoff, self.max_backoff, self.rand)

    def _retry(self, state: str = "waiting") -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.failures += 1
        delay = self.backoff(self.failures)
        self._setState(state)
        self.log.info("retrying {registry} in {delay:.1f} s", registry=self.registry_name,
                      delay=delay)  # fmt: skip
        self._timer = self.reactor.callLater(delay, self._connect)

    # stopping ---------------------------------------------------------------------------------

    def _unregisterIfOurs(self, record: m.Record, proto: Any) -> Any:
        """irp-1 §3.2 removes whatever the node is bound to: only ever remove our binding."""
        binding = self._mine(record)
        if binding is None:
            return None  # gone already (expired, or unregistered elsewhere)
        if not self._ours(binding):
            self.log.warn(
                "not unregistering node {node}: another agent at {holder} registered it since",
                node=self.node, holder=self._describe(binding.contacts),
            )  # fmt: skip
            return None

        def unregistered(_: object) -> None:
            self.log.info("unregistered node {node} from {registry}", node=self.node,
                          registry=self.registry_name)  # fmt: skip

        return proto.unregister(self.node).addCallback(unregistered)

    def stopService(self) -> defer.Deferred[None]:
        """
        Unregister (bounded by C{stop_timeout}) and close; never fails. Given our
        C{identity}, only a binding a lookup shows is still ours (module docstring).
        """
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

        if was_registered and self.identity is not None:
            d: defer.Deferred[Any] = defer.maybeDeferred(proto.lookup, self.identity)
            d.addCallback(self._unregisterIfOurs, proto)
            d.addErrback(failed)
        elif was_registered:
            d = defer.maybeDeferred(proto.unregister, self.node)
            d.addCallbacks(unregistered, failed)
        else:
            d = defer.succeed(None)
        timer = self.reactor.callLater(self.stop_timeout, too_slow)
        d.addBoth(finish)
        return done


def tcp_probe(
    reactor: Any, timeout: float = 3.0
) -> Callable[[list[m.Contact]], defer.Deferred[m.Contact | None]]:
    """
    For L{RegistrationKeeper}'s C{probe}: connect to each contact at once (TCP only, closed
    as soon as it is open) and fire with the first that accepts, or None when none does
    within C{timeout} seconds.
    """
    from twisted.internet.protocol import Factory, Protocol

    from sixchat.netaddr import client_endpoint

    def probe(contacts: list[m.Contact]) -> defer.Deferred[m.Contact | None]:
        def one(contact: m.Contact) -> defer.Deferred[m.Contact | None]:
            endpoint = client_endpoint(reactor, contact.host, contact.port, timeout)
            d = endpoint.connect(Factory.forProtocol(Protocol))

            def opened(proto: Protocol) -> m.Contact:
                assert proto.transport is not None
                proto.transport.loseConnection()
                return contact

            return d.addCallbacks(opened, lambda _: None)

        found = defer.gatherResults([one(c) for c in contacts])
        return found.addCallback(lambda r: next((c for c in r if c is not None), None))

    return probe
