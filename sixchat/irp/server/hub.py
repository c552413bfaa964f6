"""
What the registry's connections share, apart from the transport: which connection holds which
identity, who watches whom, the expiry timer and the CRL loop, all on the injected clock.

The hub never looks inside a connection. A connection tells it which identity it holds
(L{RegistryHub.track}, L{RegistryHub.untrack}) and which identities it watches
(L{RegistryHub.add_watch}, L{RegistryHub.remove_watch}); the hub calls back only the two
methods of L{HubConnection}: C{identity_changed} when a store notification names the
connection's identity, and C{push} with a watched identity's newest state.

  - B{Watches} (irp-1 §3.4): every store notification refreshes the identity's state once and
    offers it to all its watches; refreshes are numbered (L{RegistryHub.fetch}) so that an
    older state never overtakes a newer one, and a new watch answers C{watching} followed by
    the newest state known (L{Subscription}).
  - B{Expiry}: a timer calls C{store.expire} at the next expiry and at least every
    C{expiry_interval} seconds (bindings written by other instances expire too); the store
    notifies.
  - B{CRLs}: the authority's CRLs are refreshed every C{crl_check_interval} seconds, and soon
    after a connection learns that another process revoked its certificate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sixchat.identity import normalize_identity
from sixchat.irp.server.authority import Authority
from sixchat.irp.server.config import RegistryConfig
from sixchat.irp.store.interfaces import IdentityState, IRegistryStore

__all__ = ["HubConnection", "RegistryHub", "Subscription", "identity_key"]


def identity_key(identity: str) -> str | None:
    """The form identities are tracked and watched by; None for an invalid identity."""
    try:
        return normalize_identity(identity)
    except ValueError:
        return None


class HubConnection(Protocol):
    """What the hub needs of a connection: the only calls it makes into one."""

    def identity_changed(self) -> None:
        """A store notification named the identity this connection holds."""

    def push(self, state: IdentityState) -> None:
        """Send a watched identity's newer state (a C{presence})."""


class Subscription:
    """One connection's watch of one identity; see the module docstring on ordering."""

    __slots__ = ("connection", "key", "last_seq", "active", "pending")

    def __init__(self, connection: HubConnection, key: str) -> None:
        self.connection = connection
        self.key = key
        self.last_seq = -1
        self.active = False
        self.pending: IdentityState | None = None

    def offer(self, seq: int, state: IdentityState) -> None:
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if self.active:
            self.connection.push(state)
        else:
            self.pending = state


class RegistryHub:
    """
    Identity tracking, watch fan-out, expiry and the CRL loop of one registry.

    @param store: an opened L{IRegistryStore}.
    @param authority: the registry's CA over the same store.
    @param clock: C{IReactorTime}; the registry's notion of now.
    """

    log = Logger()

    def __init__(
        self,
        store: IRegistryStore,
        authority: Authority,
        clock: IReactorTime,
        config: RegistryConfig,
    ) -> None:
        self.store = store
        self.authority = authority
        self.clock = clock
        self.config = config
        self._by_identity: dict[str, set[HubConnection]] = {}
        self._watchers: dict[str, dict[HubConnection, Subscription]] = {}
        self._fetch_seq = 0
        self._fetching: set[str] = set()
        self._dirty: set[str] = set()
        self._ready = False
        self._waiting: list[defer.Deferred[None]] = []
        self._running = False
        self._expiry_call: IDelayedCall | None = None
        self._expiring = False
        self._expiry_job: defer.Deferred[float] | None = None
        self._crl_loop: task.LoopingCall | None = None
        self._crl_check: IDelayedCall | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def serves(self, identity: str) -> bool:
        """L{RegistryConfig.domains}: whether this registry answers for C{identity}."""
        if self.config.domains is None:
            return True
        return identity.rpartition("@")[2].lower() in self.config.domains

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Subscribe to the store, make the first CRL, start the timers; the store is open."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self._running = True
        self.store.subscribe(self._changed)
        await self.authority.refresh_crls(force=True)
        self._schedule_expiry(0)
        self._crl_loop = task.LoopingCall(self._refresh_crls)
        self._crl_loop.clock = self.clock
        self._crl_loop.start(self.config.crl_check_interval, now=False)
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        """Stop the timers; fires once work they started (an expiry pass) is over."""
        self._running = False
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if self._crl_check is not None and self._crl_check.active():
            self._crl_check.cancel()
        self._crl_check = None
        if self._crl_loop is not None and self._crl_loop.running:
            self._crl_loop.stop()
        self._crl_loop = None
        job = self._expiry_job
        if job is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        job.addBoth(lambda _: done.callback(None))
        return done

    @property
    def running(self) -> bool:
        """Between L{start} and L{stop}."""
        return self._running

    def whenReady(self) -> defer.Deferred[None]:
        if self._ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    @property
    def ready(self) -> bool:
        """L{start} has finished: the first CRL exists and requests may be answered."""
        return self._ready

    # --- identities and watches ---------------------------------------------------------------

    def track(self, key: str, connection: HubConnection) -> None:
        """C{connection} holds the identity C{key}: tell it of notifications for that."""
        self._by_identity.setdefault(key, set()).add(connection)

    def untrack(self, key: str, connection: HubConnection) -> None:
        holders = self._by_identity.get(key)
        if holders is not None:
            holders.discard(connection)
            if not holders:
                del self._by_identity[key]

    def add_watch(self, connection: HubConnection, key: str) -> Subscription:
        watch = Subscription(connection, key)
        self._watchers.setdefault(key, {})[connection] = watch
        return watch

    def remove_watch(self, connection: HubConnection, key: str) -> None:
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.pop(connection, None)
            if not watchers:
                del self._watchers[key]

    def fetch(self, identity: str) -> defer.Deferred[tuple[int, IdentityState]]:
        """The identity's state, numbered so later fetches win over earlier ones."""
        self._fetch_seq += 1
        seq = self._fetch_seq
        d: defer.Deferred[IdentityState] = self.store.state(identity, self.now())
        return d.addCallback(lambda state: (seq, state))

    def _changed(self, identity: str) -> None:
        """Store notification: some process changed this identity's bindings or revoked."""
        if not self._running:
            return
        key = identity_key(identity)
        if key is None:
            return
        for connection in list(self._by_identity.get(key, ())):
            connection.identity_changed()
        if key in self._watchers:
            self._refresh(key)

    def _refresh(self, key: str) -> None:
        if key in self._fetching:
            self._dirty.add(key)
            return
        self._fetching.add(key)

        def fetched(result: tuple[int, IdentityState]) -> None:
            seq, state = result
            for watch in list(self._watchers.get(key, {}).values()):
                watch.offer(seq, state)

        def failed(failure: Failure) -> None:
            if not self._running:
                # The registry is stopping and its store may be closed already: nobody is
                # left to tell, and a traceback would only alarm the operator.
                self.log.debug("refreshing watchers of {key} cut short by the stop", key=key)
                return
            self.log.failure("refreshing watchers of {key} failed", failure, key=key)

        def done(_: Any) -> None:
            self._fetching.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if self._running and key in self._watchers:
                    self._refresh(key)

        self.fetch(key).addCallbacks(fetched, failed).addBoth(done)

    # --- expiry -----------------------------------------------------------------------------

    def binding_added(self, until: datetime) -> None:
        """A binding expiring at C{until} was written: make sure the timer fires by then."""
        self._schedule_expiry(max(0.0, (until - self.now()).total_seconds()))

    def _schedule_expiry(self, delay: float) -> None:
        if not self._running:
            return
        call = self._expiry_call
        if call is not None and call.active():
            if call.getTime() <= self.clock.seconds() + delay:
                return
            call.cancel()
        self._expiry_call = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        if self._expiring:
            return
        self._expiring = True
        job = defer.ensureDeferred(self._expire_once())
        self._expiry_job = job
        job.addBoth(self._expired)

    async def _expire_once(self) -> float:
        delay = self.config.expiry_interval
        try:
            await self.store.expire(self.now())
            if not self._running:
                return delay
            nxt: datetime | None = await self.store.next_expiry()
        except Exception:
            if self._running:
                self.log.failure("expiring registry bindings failed")
            return delay
        if nxt is not None:
            delay = min(delay, max(0.0, (nxt - self.now()).total_seconds()))
        return delay

    def _expired(self, delay: Any) -> None:
        self._expiring = False
        self._expiry_job = None
        self._schedule_expiry(delay if isinstance(delay, float) else self.config.expiry_interval)

    # --- CRLs -------------------------------------------------------------------------------

    def _refresh_crls(self) -> defer.Deferred[Any]:
        return self.authority.refresh_crls().addErrback(
            lambda f: self.log.failure("refreshing the CRL failed", f)
        )

    def revocation_seen(self) -> None:
        """Another process revoked a certificate we hold a connection of: new CRL soon."""
        if self._crl_check is None or not self._crl_check.active():
            self._crl_check = self.clock.callLater(0, self._refresh_crls)


