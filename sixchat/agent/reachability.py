"""
What the user agent does when its own side of the network changes (docs/networks.md,
"Mobility" and "Our network coming back"), in one place: L{Reachability} is told of address
changes (L{sixchat.agent.addresses}) and of the registration keeper's states, and moves the
sessions, the registry connections, the CRL fetcher and the outbox accordingly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Reachability"]


class Reachability:
    """
    @param sessions: the session table (L{sixchat.agent.sessions.SessionTable}).
    @param directory: the directory; its C{reconnect}, when it has one, re-opens its registry
        connection.
    @param keeper: the registration keeper, or None without a registry.
    @param outbox: the L{sixchat.agent.outbox.OutboxScheduler}.
    @param registry_reachable: told each time the keeper registers (the CRL fetcher retries
        what failed while no registry answered).
    """

    def __init__(
        self,
        sessions: Any,
        directory: Any,
        keeper: Any,
        outbox: Any,
        registry_reachable: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.directory = directory
        self.keeper = keeper
        self.outbox = outbox
        self.registry_reachable = registry_reachable
        #: The keeper could not reach any registry since it last registered.
        self.outage = False

    def addressesChanged(self, added: frozenset[str], removed: frozenset[str]) -> None:
        """Our addresses changed: the mobility steps."""
        if removed:
            self.sessions.abandonBoundTo(removed)
            reconnect = getattr(self.directory, "reconnect", None)
            if reconnect is not None:
                reconnect()  # its connection may be bound to a vanished address
        if self.keeper is not None:
            self.keeper.addressesChanged()
        # What failed while the old addresses were useless waits for a backoff that grew
        # meanwhile: try everything owed now.
        self.outbox.retryAllNow()

    def keeperState(self, state: str) -> None:
        """The registration keeper's new state (L{sixchat.irp.keeper.RegistrationKeeper})."""
        if state == "waiting":
            self.outage = True  # no registry could be reached
        elif state == "registered":
            self.registry_reachable()
            if self.outage:
                self.outage = False
                self.outbox.retryAllNow()  # our network is back
