"""
How a registry store answers through its L{LookupCache}, written once for both stores
(L{sixchat.irp.store.postgres}, L{sixchat.irp.store.sqlite}): a lookup from the cache or
read with a ticket, a revocation answer the same way, and this process's own writes
invalidating before and after. The rules that keep the cache exact are the cache's
(L{sixchat.irp.store.lookup_cache}); each store says only when its cache may answer
(C{live}: its change feed proved itself alive recently) and how to read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from sixchat.identity import normalize_identity
from sixchat.irp.store.interfaces import IdentityState
from sixchat.irp.store.lookup_cache import LookupCache, valid_until

__all__ = ["cached_is_revoked", "cached_state", "changing", "revoking"]

_R = TypeVar("_R")

#: The cache if it may answer now, else None.
Live = Callable[[], "LookupCache | None"]


def cached_state(
    live: Live,
    identity: str,
    now: datetime,
    read: Callable[[str], defer.Deferred[tuple[IdentityState, list[datetime]]]],
    plain: Callable[[], defer.Deferred[IdentityState]],
) -> defer.Deferred[IdentityState]:
    """
    C{identity}'s state at C{now}: from the cache when it holds it at C{now}; else
    C{read(normalized identity)} (the state and the expiry of every certificate in it),
    cached if nothing invalidated
    the identity meanwhile and the cache may still answer. Without a live cache, or for an
    identity that does not normalize, C{plain()} (which fails as it always did).
    """
    cache = live()
    if cache is None:
        return plain()
    try:
        key = normalize_identity(identity)
    except ValueError:
        return plain()
    hit = cache.get(key, now)
    if hit is not None:
        return defer.succeed(hit)
    ticket = cache.ticket()

    def got(result: tuple[IdentityState, list[datetime]]) -> IdentityState:
        state, not_afters = result
        # Unknown identities are not kept: their answer is spelled as asked.
        if state.known and live() is cache:
            cache.put(key, ticket, now, state, valid_until(state, not_afters))
        return state

    return read(key).addCallback(got)


def cached_is_revoked(
    live: Live, serial: int, issuer_key: bytes, asked: float,
    read: Callable[[], defer.Deferred[bool]],
) -> defer.Deferred[bool]:  # fmt: skip
    """
    Whether the certificate (C{serial}, issuer key) is revoked: from the cache when it may
    answer, else C{read}, cached unless a revocation was heard of meanwhile. C{asked} is
    the store's monotonic clock now (a "not revoked" answer is kept a minute at most).
    """
    cache = live()
    if cache is None:
        return read()
    hit = cache.revoked(serial, issuer_key, asked)
    if hit is not None:
        return defer.succeed(hit)
    ticket = cache.ticket()

    def got(revoked: bool) -> bool:
        if live() is cache:
            cache.put_revoked(serial, issuer_key, ticket, revoked, asked)
        return revoked

    return read().addCallback(got)


def changing(
    cache: LookupCache | None, identity: str, d: defer.Deferred[_R]
) -> defer.Deferred[_R]:
    """
    A write of this process to C{identity}, started as C{d}: its cached state goes now
    (reads in flight are not cached) and again once the write is over, so that a lookup
    made after the write's answer reads it even before the change feed reports it.
    """
    if cache is None:
        return d
    try:
        key = normalize_identity(identity)
    except ValueError:
        return d
    cache.invalidate(key)

    def over(result: _R | Failure) -> _R | Failure:
        cache.invalidate(key)
        return result

    return d.addBoth(over)


def revoking(
    cache: LookupCache | None, write: Callable[[], defer.Deferred[_R]]
) -> defer.Deferred[_R]:
    """
    A revocation by this process (rare): every cached state and "not revoked" answer goes,
    before the write starts and again once it is over.
    """
    if cache is None:
        return write()
    cache.clear()

    def over(result: Any) -> Any:
        cache.clear()
        return result

    return write().addBoth(over)
