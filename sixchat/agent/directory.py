"""
Where peers are: the registry as the agent's L{IDirectory}. A looked-up record is trusted for
L{RECORD_TTL} seconds, or for as long as a C{watch} keeps it current; one registry connection
carries every lookup and watch, re-opened on demand and re-watching what it watched before.

Unknown is not offline: a lookup the registry answers C{not_found} (irp-1 §3.3: no live node
and no valid certificate ever registered) fails with L{UnknownIdentity}, while a C{record}
without nodes is an offline peer. A watch's C{presence} cannot tell the two apart (it has
nodes or not), so an identity last found unknown is asked again on every lookup (the outbox
spaces those out) until a presence with nodes shows it registered.

Watches survive the registry: when the connection is lost while peers are watched, the
directory reconnects by itself (not only on the next lookup), at once-ish and then with the
registry's exponential backoff with jitter (L{sixchat.irp.backoff}, on the injected clock),
and watches them again — on whichever registry of a list (or of the SRV records) answers, so
a registry that dies moves the watches to another within seconds. And while no registry
answers, a lookup falls back on the last record it got for that peer (L{lookup}): the
sessions the agent has keep carrying messages, and a peer's last known address is still
dialled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent._shared import Shared
from sixchat.agent.errors import UnknownIdentity
from sixchat.agent.interfaces import IDirectory, PresenceCallback
from sixchat.identity import normalize_identity
from sixchat.irp.backoff import backoff_delay

if TYPE_CHECKING:
    from sixchat.irp.client import IRPClientProtocol as RegistryClient
    from sixchat.irp.messages import Record

__all__ = ["RECORD_TTL", "RegistryDirectory", "unknown_reason"]

log = Logger()

#: How long a looked-up registry record is trusted without a watch.
RECORD_TTL = 30.0
#: The reconnect backoff of the watches (seconds): the first retry after a loss within
#: [1, 2] s, doubling up to [30, 60] s (L{sixchat.irp.backoff}).
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


@implementer(IDirectory)
class RegistryDirectory:
    """
    Finds peers through the registry (lookup, cached briefly) and keeps C{watch}es on peers
    the outbox waits for, over one registry connection re-opened on demand.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[], defer.Deferred[RegistryClient]],
        on_presence: PresenceCallback | None = None,
        name: str = "the registry",
        *,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.connect = connect
        self.on_presence = on_presence
        #: The registry as messages name it ("registry irp.example.com").
        self.name = name
        #: Identities the registry last answered C{not_found} for (normalized).
        self.unknown: set[str] = set()
        self._client: RegistryClient | None = None
        self._connecting: Shared | None = None
        self._cache: dict[str, tuple[float, Record]] = {}
        self.watched: set[str] = set()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.rand = rand
        #: Consecutive failed connects since the connection was last up (for the backoff).
        self.failures = 0
        self._retry: Any = None
        #: The last record the registry gave for each identity (lookups and pushes), kept
        #: across connection losses: the answer when no registry can be asked.
        self._known: dict[str, Record] = {}
        self._stale: set[str] = set()
        self._closed = False
        self._was_lost = False

    def _connection(self) -> defer.Deferred[RegistryClient]:
        if self._client is not None:
            return defer.succeed(self._client)
        if self._connecting is None:
            d = self.connect()

            def connected(client: RegistryClient) -> RegistryClient:
                self._connecting = None
                if self._closed:
                    client.close()
                    return client
                self._client = client
                self.failures = 0
                client.whenLost().addBoth(lambda _: self._lost(client))
                if self._was_lost and self.watched:
                    target = getattr(client, "target", None)
                    log.info(
                        "watching {n} peer(s) again through {registry}{at}",
                        n=len(self.watched), registry=self.name,
                        at=f" at {target.address}" if target is not None else "",
                    )  # fmt: skip
                self._was_lost = False
                for identity in sorted(self.watched):  # a new connection has no watches
                    self._startWatch(client, identity)
                return client

            def failed(f: Failure) -> Failure:
                self._connecting = None
                self.failures += 1
                self._scheduleReconnect()
                return f

            shared = Shared(d.addCallbacks(connected, failed))
            if not d.called:  # a connect that fired at once has settled everything already
                self._connecting = shared
            return shared.wait()
        return self._connecting.wait()

    def _startWatch(self, client: RegistryClient, identity: str) -> None:
        def refused(f: Failure) -> None:
            # No pushes will come (e.g. rate_limited): not watched, so a lookup does not
            # trust its cached record beyond RECORD_TTL and the next watch() asks again.
            log.debug("watch {peer}: {f}", peer=identity, f=f.getErrorMessage())
            if self._client is client:
                self.watched.discard(normalize_identity(identity))

        client.watch(identity, lambda record: self._presence(identity, record)).addErrback(
            refused
        )

    def _lost(self, client: RegistryClient) -> None:
        if self._client is client:
            self._client = None
            self._cache.clear()
            self.unknown.clear()
            self._was_lost = True
            self.failures = max(self.failures, 1)
            self._scheduleReconnect()

    def _scheduleReconnect(self) -> None:
        """With peers watched, connect again after the backoff (unless something else does
        first: a lookup connects on demand)."""
        if self._closed or not self.watched or self._client is not None:
            return
        if self._retry is not None and self._retry.active():
            return
        delay = backoff_delay(max(self.failures, 1), self.min_backoff, self.max_backoff,
                              self.rand)  # fmt: skip
        log.info("reconnecting to {registry} in {delay:.1f} s to keep {n} watch(es)",
                 registry=self.name, delay=delay, n=len(self.watched))  # fmt: skip
        self._retry = self.clock.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        if self._closed or not self.watched or self._client is not None:
            return
        self._connection().addErrback(
            lambda f: log.info("{registry} unreachable: {why}", registry=self.name,
                               why=f.getErrorMessage())  # fmt: skip
        )

    def _presence(self, identity: str, record: Record) -> None:
        key = normalize_identity(identity)
        if record.nodes:
            self.unknown.discard(key)
        if key not in self.unknown:  # a presence without nodes does not make it known
            self._cache[key] = (self.clock.seconds(), record)
            self._known[key] = record
        if self.on_presence is not None:
            self.on_presence(identity, record)

    def lookup(self, identity: str) -> defer.Deferred[Record]:
        """
        The peer's record (no nodes: offline), or L{UnknownIdentity} when the registry
        answers C{not_found}; any other failure means the registry could not tell. When the
        registry cannot be asked (every address unreachable, or an error other than
        C{not_found}), the last record it gave for the peer is the answer, if there is one.
        """
        key = normalize_identity(identity)
        cached = self._cache.get(key)
        if cached is not None and (
            key in self.watched or self.clock.seconds() - cached[0] < RECORD_TTL
        ):
            return defer.succeed(cached[1])

        def remember(record: Record) -> Record:
            self.unknown.discard(key)
            self._cache[key] = (self.clock.seconds(), record)
            self._known[key] = record
            self._stale.discard(key)
            return record

        def not_found(failure: Failure) -> Failure | Record:
            from sixchat.irp.messages import IRPError

            error = failure.value
            if not isinstance(error, IRPError) or error.reason != "not_found":
                known = self._known.get(key)
                if known is None or failure.check(defer.CancelledError):
                    return failure
                if key not in self._stale:  # once until the registry answers again
                    self._stale.add(key)
                    log.info("{registry} cannot be asked about {peer} ({why}): using the nodes "
                             "it gave last", registry=self.name, peer=identity,
                             why=failure.getErrorMessage())  # fmt: skip
                return known
            self.unknown.add(key)
            self._cache.pop(key, None)
            self._known.pop(key, None)
            why = "" if error.text in ("", "unknown identity") else f"; {error.text}"
            raise UnknownIdentity(f"{identity} is not known to {self.name}{why}")

        d = self._connection().addCallback(lambda c: c.lookup(identity))
        return d.addCallbacks(remember, not_found)

    def watch(self, identity: str) -> None:
        key = normalize_identity(identity)
        if key in self.watched:
            return
        self.watched.add(key)
        if self._client is not None:
            self._startWatch(self._client, identity)
        else:  # the new connection starts a watch for everything in self.watched
            self._connection().addErrback(
                lambda f: log.debug("registry unreachable: {f}", f=f.getErrorMessage())
            )

    def unwatch(self, identity: str) -> None:
        key = normalize_identity(identity)
        if key not in self.watched:
            return
        self.watched.discard(key)
        self._cache.pop(key, None)
        if self._client is not None:
            self._client.unwatch(identity).addErrback(lambda f: None)

    def invalidate(self, identity: str) -> None:
        """
        The record held for C{identity} proved stale (a dial to its node failed): the next
        L{lookup} asks the registry, even while watched.
        """
        self._cache.pop(normalize_identity(identity), None)

    def reconnect(self) -> None:
        """
        Drop the registry connection at once (our address it is bound to may be gone) and,
        when something is watched, open a new one now: its watches start again and their
        first presence refreshes what is held.
        """
        client, self._client = self._client, None
        if client is not None:
            transport = getattr(client, "transport", None)
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                client.close()
        if self.watched:
            self._connection().addErrback(
                lambda f: log.debug("registry unreachable: {f}", f=f.getErrorMessage())
            )

    def close(self) -> defer.Deferred[Any]:
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        client, self._client = self._client, None
        if client is not None:
            return defer.maybeDeferred(client.close).addErrback(lambda f: None)
        return defer.succeed(None)


def unknown_reason(
    clock: IReactorTime, directory: IDirectory, identity: str, timeout: float
) -> defer.Deferred[str | None]:
    """
    Whether C{directory} says C{identity} does not exist: fires with its reason (one line)
    if so, and with None when it knows the identity, cannot tell (registry unreachable), or
    has not answered within C{timeout} seconds (then whoever asked goes on without it; the
    lookup still finishes and its answer is cached as usual).
    """
    result: defer.Deferred[str | None] = defer.Deferred()
    timer = clock.callLater(timeout, lambda: result.callback(None))

    def answered(outcome: object) -> None:
        if result.called:
            return
        timer.cancel()
        if isinstance(outcome, Failure) and outcome.check(UnknownIdentity):
            result.callback(outcome.getErrorMessage())
        else:
            result.callback(None)

    defer.maybeDeferred(directory.lookup, identity).addBoth(answered)
    return result
