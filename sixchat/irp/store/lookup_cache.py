"""
The registry stores' per-instance answer cache (L{LookupCache}): identity states and
revocation answers, so that a busy registry answers most lookups without a database read.
Both stores use it (L{sixchat.irp.store.postgres}, L{sixchat.irp.store.sqlite}); each feeds
it the changes it hears of (PostgreSQL: LISTEN/NOTIFY; SQLite: its own writes and the poll
of the C{changes} table, L{sixchat.irp.store.sqlite_changes}).

No I/O and no threads: the store calls it from the reactor thread only. What keeps it exact:

  - B{Invalidation by change.} Every change to an identity, through any instance, reaches
    the store (its own writes at once, before and after the write; others' through the
    store's change feed), which drops the identity's entry before anything else hears of
    the change. A revocation drops every cached "not revoked" answer
    (L{LookupCache.revocations_changed}; PostgreSQL sends L{REVOCATION} for it).
  - B{No stale fill.} A read that was in flight when its identity was invalidated may
    have seen the state before the change; its answer is returned but not cached. Every
    read takes a ticket (L{LookupCache.ticket}) when it starts and L{LookupCache.put}
    refuses it if an invalidation of that identity, a L{LookupCache.clear}, or a change of
    the feed's epoch (L{LookupCache.sync}) came after the ticket.
  - B{Time.} A state holds at the C{now} it was read for until its first binding or
    certificate runs out (L{valid_until}); a later C{now} past that reads the database
    again, and an earlier C{now} than the read's is never answered from the cache. So the
    expiry timer is not needed for correctness.
  - B{A live change feed.} Entries are answered only while the store's feed proved itself
    alive within the store's C{cache_fresh} seconds (PostgreSQL: a round trip on the
    listener's connection; SQLite: a poll of the C{changes} table that succeeded), and
    everything is dropped when the feed starts a new epoch (a reconnection, a poll after a
    stall: changes may have been missed in between): L{LookupCache.sync}. A feed that stops
    silently therefore stops the cache within that bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sixchat.irp.store.interfaces import IdentityState

__all__ = ["FOREVER", "REVOCATION", "LookupCache", "valid_until"]

#: The notification payload a revocation sends besides the identities it touches: not an
#: identity (it has no C{@}), so subscribers that key by identity ignore it.
REVOCATION = "*revocation"

#: A state with nothing that runs out holds until it changes.
FOREVER = datetime.max.replace(tzinfo=UTC)


def valid_until(state: IdentityState, not_afters: Iterable[datetime]) -> datetime:
    """
    The first moment C{state} may stop being the answer without a change being written:
    the earliest C{until} of its bindings and C{not_afters}, the expiry of every certificate
    it holds (the bindings' and the identity-level one). Revocations are written changes.
    """
    times = [b.until for b in state.bindings]
    times.extend(not_afters)
    return min(times, default=FOREVER)


class _Entry:
    __slots__ = ("read_at", "state", "until")

    def __init__(self, state: IdentityState, read_at: datetime, until: datetime) -> None:
        self.state = state
        self.read_at = read_at
        self.until = until


class LookupCache:
    """
    Identity states by normalized identity and revocation answers by (serial, issuer key),
    bounded in size (the oldest entries go first). See the module docstring.

    @ivar hits: answers given from the cache.
    @ivar misses: answers that had to be read.
    """

    #: Seconds a "not revoked" answer is kept at most, whatever the notifications say: a
    #: revocation written by a sixchat that does not send L{REVOCATION} (an older version
    #: still running beside this one) is seen within this (as CRLs are, within a minute).
    not_revoked_ttl = 60.0

    def __init__(self, max_states: int = 20_000, max_revocations: int = 100_000) -> None:
        self.max_states = max_states
        self.max_revocations = max_revocations
        self._states: dict[str, _Entry] = {}
        #: (serial, issuer key) -> (revoked, when it was read: the caller's monotonic clock)
        self._revoked: dict[tuple[int, bytes], tuple[bool, float]] = {}
        #: A counter of invalidations; tickets are its values.
        self._clock = 0
        #: Identity -> the counter at its last invalidation (only while reads may be in
        #: flight that started before it: pruned by L{_forget_old}).
        self._invalidated: dict[str, int] = {}
        self._cleared = 0  # the counter at the last clear: older tickets are refused
        self._revocations_changed = 0
        self._epoch: object = None
        self.hits = 0
        self.misses = 0

    # --- life of the listener ----------------------------------------------------------------

    def sync(self, epoch: object) -> None:
        """
        The listener's current connection (any value that changes when it reconnects):
        on a change everything cached is dropped, since notifications may have been lost.
        """
        if epoch != self._epoch:
            self._epoch = epoch
            self.clear()

    # --- tickets ---------------------------------------------------------------------------

    def ticket(self) -> int:
        """Taken when a read starts; hand it back to L{put} or L{put_revoked}."""
        return self._clock

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # --- identity states -------------------------------------------------------------------

    def get(self, key: str, now: datetime) -> IdentityState | None:
        """The cached state of C{key} at C{now}, or None (then read it and L{put} it)."""
        entry = self._states.get(key)
        if entry is None or not (entry.read_at <= now < entry.until):
            self.misses += 1
            return None
        self.hits += 1
        return entry.state

    def put(
        self, key: str, ticket: int, read_at: datetime, state: IdentityState, until: datetime
    ) -> bool:
        """
        Remember C{state}, read at C{read_at} by a read that took C{ticket}, unless
        something invalidated C{key} since; returns whether it was kept.
        """
        if ticket < self._cleared or self._invalidated.get(key, -1) > ticket:
            return False
        if until <= read_at:
            return False
        states = self._states
        if key not in states and len(states) >= self.max_states:
            del states[next(iter(states))]
        states[key] = _Entry(state, read_at, until)
        return True

    def invalidate(self, key: str) -> None:
        """C{key} changed (or is changing): drop it, and refuse reads in flight."""
        self._states.pop(key, None)
        self._invalidated[key] = self._tick()
        if len(self._invalidated) > 4 * self.max_states:
            self._forget_old()

    def invalidate_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.invalidate(key)

    def clear(self) -> None:
        """Drop everything and refuse every read in flight."""
        self._states.clear()
        self._revoked.clear()
        self._invalidated.clear()
        self._cleared = self._tick()
        self._revocations_changed = self._clock

    def _forget_old(self) -> None:
        # Bounded bookkeeping: forgetting per-key marks is safe once every older ticket is
        # refused wholesale.
        self._invalidated.clear()
        self._cleared = self._tick()

    # --- revocations -----------------------------------------------------------------------

    def revoked(self, serial: int, issuer: bytes, now: float) -> bool | None:
        """The cached answer of C{is_revoked} at C{now} (a monotonic clock), or None."""
        found = self._revoked.get((serial, issuer))
        if found is None:
            return None
        revoked, read_at = found
        if not revoked and not 0 <= now - read_at < self.not_revoked_ttl:
            return None  # kept too long, or a clock that went back
        return revoked

    def put_revoked(
        self, serial: int, issuer: bytes, ticket: int, revoked: bool, now: float
    ) -> bool:
        """
        Remember an C{is_revoked} answer read at C{now} unless a revocation was heard of
        since C{ticket}. A revocation is never undone, so C{True} answers stay valid;
        C{False} answers are dropped by L{revocations_changed}, and after
        L{not_revoked_ttl} seconds in any case.
        """
        if ticket < self._cleared or (not revoked and ticket < self._revocations_changed):
            return False
        if len(self._revoked) >= self.max_revocations:
            self._revoked.clear()
        self._revoked[(serial, issuer)] = (revoked, now)
        return True

    def revocations_changed(self) -> None:
        """Some certificate was (or is being) revoked: forget every "not revoked"."""
        self._revoked = {k: v for k, v in self._revoked.items() if v[0]}
        self._revocations_changed = self._tick()

    @property
    def size(self) -> int:
        return len(self._states)
