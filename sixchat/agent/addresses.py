"""
Mobility: the agent noticing that its own addresses changed (a new IPv6 prefix, a DHCP lease,
a laptop moving between networks) — L{AddressWatch}.

Every C{interval} seconds (on the injected clock) the watch asks an I{address source} for the
host's current addresses (by default L{sixchat.irp.contacts.host_addresses}, read from the
kernel in a thread) and compares them with the previous look. When they differ it calls
C{on_change(added, removed)} once; the agent then (L{sixchat.agent.service}):

  - ends at once every session bound to an address that vanished (its peer can no longer
    answer it: waiting for the keep-alive bound would only delay the redial);
  - has the registration keeper register the new addresses now, on a fresh registry
    connection (the old one may be bound to the vanished address);
  - re-opens the directory's registry connection (and its watches) for the same reason.

Why polling rather than netlink notifications: one rtnetlink address dump (or, without
it, two C{/proc/net} files) a second costs little, needs the standard library only, no
privileges and no new dependency, and its latency is bounded by C{interval} (1 s by
default, C{twistd sixchat --address-poll}); subscribing to the kernel's notifications would
save at most that second. The first look only records the baseline; a source that cannot
list addresses (None) leaves the watch idle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ADDRESS_POLL", "AddressSource", "AddressWatch", "thread_source"]

log = Logger(namespace="sixchat.agent.service")

#: Default seconds between two looks at the host's addresses.
ADDRESS_POLL = 1.0

#: An address source: the host's addresses now (a set, or a Deferred of one), or None when
#: it cannot tell.
AddressSource = Callable[[], Any]


def thread_source(reactor: Any) -> AddressSource:
    """The kernel's address list (L{sixchat.irp.contacts.host_addresses}), read in a thread."""
    from twisted.internet import threads

    from sixchat.irp.contacts import host_addresses

    def source() -> defer.Deferred[frozenset[str] | None]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), host_addresses)

    return source


class AddressWatch(service.Service):
    """
    Looks at the host's addresses every C{interval} seconds and calls
    C{on_change(added, removed)} (two frozensets) when they changed since the last look.

    @ivar addresses: what the last look found (None before the first, or when the source
        cannot tell).
    """

    def __init__(
        self,
        clock: IReactorTime,
        source: AddressSource,
        on_change: Callable[[frozenset[str], frozenset[str]], None],
        interval: float = ADDRESS_POLL,
    ) -> None:
        if interval <= 0:
            raise ValueError("the address watch needs an interval above 0 seconds")
        self.clock = clock
        self.source = source
        self.on_change = on_change
        self.interval = interval
        self.addresses: frozenset[str] | None = None
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.look)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("the address watch stopped", f)
        )

    def stopService(self) -> Any:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def look(self) -> defer.Deferred[None]:
        """One look at the addresses (the loop's step; never fails)."""
        d = defer.maybeDeferred(self.source)
        d.addCallbacks(self._seen, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        log.warn("cannot list this host's addresses: {why}", why=failure.getErrorMessage())

    def _seen(self, found: Any) -> None:
        if found is None:
            self.addresses = None
            return
        now = frozenset(found)
        before, self.addresses = self.addresses, now
        if before is None or before == now or not self.running:
            return
        added, removed = now - before, before - now
        log.info(
            "this host's addresses changed (new: {added}; gone: {removed})",
            added=", ".join(sorted(added)) or "none",
            removed=", ".join(sorted(removed)) or "none",
        )
        try:
            self.on_change(added, removed)
        except Exception:
            log.failure("reacting to the address change failed")
