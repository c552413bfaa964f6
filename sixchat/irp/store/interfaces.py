"""
What the IRP server needs of its storage, as a zope.interface with two implementations:
SQLite (L{sixchat.irp.store.sqlite}, the embedded default, one file) and PostgreSQL
(L{sixchat.irp.store.postgres}, shared by several registry processes), and the values it
answers with.

Every method returns a Deferred of the type it names (so callers need no casts) and never
blocks the reactor. Identities are passed as given;
implementations key them by L{sixchat.identity.normalize_identity} (domain lowercased) and
keep the certificate's spelling for answers (irp-1 §3.3). Times are timezone-aware UTC
datetimes supplied by the caller (the server's injected clock), never read by the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from twisted.internet.defer import Deferred
from zope.interface import Interface

from sixchat.irp.messages import Contact


@dataclass(frozen=True)
class Binding:
    """One node's live binding."""

    node: str
    contacts: tuple[Contact, ...]
    cert: bytes  # DER of the leaf this node registered with
    serial: int
    until: datetime
    updated: datetime


@dataclass(frozen=True)
class IdentityState:
    """
    What C{lookup}, C{watch} and pushes need: the identity as its certificate spells it, its
    live bindings (expired and revoked ones excluded), and the identity-level certificate of
    irp-1 §7.4 (the unrevoked, unexpired leaf most recently presented in a register).
    """

    identity: str
    bindings: tuple[Binding, ...] = field(default=())
    cert: bytes | None = None

    @property
    def known(self) -> bool:
        """False means C{not_found} (§7.4)."""
        return bool(self.bindings) or self.cert is not None


class ConflictError(Exception):
    """A register would give the identity more nodes than allowed (irp-1 §6: C{conflict})."""


class IRegistryStore(Interface):
    """Persistent registry state: bindings, certificates, revocations, enrolment tokens."""

    def open() -> Deferred[None]:
        """Connect and apply pending schema migrations; fires with None."""

    def close() -> Deferred[None]:
        """Release connections; fires with None."""

    # --- bindings (irp-1 §3) --------------------------------------------------------------

    def register(
        identity: str,
        node: str,
        contacts: list[Contact],
        cert: bytes,
        serial: int,
        cert_not_after: datetime,
        now: datetime,
        until: datetime,
        max_nodes: int,
    ) -> Deferred[None]:
        """
        Replace C{node}'s binding (atomically); the certificate becomes the node's published
        one and the identity's most recently presented. Fails with L{ConflictError} if the
        node is new and the identity already has C{max_nodes} live bindings. Fires with None.
        """

    def unregister(identity: str, node: str) -> Deferred[bool]:
        """Remove the node's binding (idempotent); fires with True if one was removed."""

    def state(identity: str, now: datetime) -> Deferred[IdentityState]:
        """Fires with the L{IdentityState} at C{now}."""

    def expire(now: datetime) -> Deferred[set[str]]:
        """Delete bindings whose C{until} <= now; fires with the set of identities touched."""

    def next_expiry() -> Deferred[datetime | None]:
        """Fires with the earliest C{until} of any binding, or None."""

    # --- certificates and revocation (irp-1 §4) ---------------------------------------------

    def record_issued(identity: str, serial: int, issuer: bytes, cert: bytes) -> Deferred[None]:
        """Remember a certificate this registry issued (C{issuer}: DER of the issuing CA)."""

    def revoke(serial: int, issuer: bytes, now: datetime) -> Deferred[set[str]]:
        """
        Revoke a certificate (idempotent); remove every binding registered with it. Fires
        with the set of identities whose bindings changed.
        """

    def revoked(issuer: bytes) -> Deferred[list[tuple[int, datetime]]]:
        """Fires with a list of (serial, revocation time) for that issuer, for its CRL."""

    def is_revoked(serial: int, issuer: bytes) -> Deferred[bool]:
        """Fires with a bool."""

    # --- enrolment tokens (irp-1 §4.2) ------------------------------------------------------

    def add_token(token_hash: bytes, identity: str, expires: datetime) -> Deferred[None]:
        """Store an invitation (only its hash) for one identity; fires with None."""

    def token_identity(token_hash: bytes, now: datetime) -> Deferred[str | None]:
        """
        The identity of an unexpired, unused token, without using it (or None): the
        enrolment checks the name the client expects before spending the token.
        """

    def consume_token(token_hash: bytes, now: datetime) -> Deferred[str | None]:
        """
        Atomically use an unexpired, unused token: fires with its identity, or None if it is
        unknown, used or expired. Two concurrent consumers never both succeed.
        """

    # --- change notification (irp-1 §3.4: watchers on every instance) -----------------------

    def subscribe(callback: Callable[[str], None]) -> None:
        """
        Call C{callback(identity)} (in the reactor thread) whenever the identity's bindings
        change through I{any} process sharing this store: register, unregister, expiry,
        revocation. In-process for SQLite; LISTEN/NOTIFY for PostgreSQL.
        """

    def notify(identity: str) -> Deferred[None]:
        """Announce a change made by this process (the mutating methods call it too)."""
