"""
An in-memory L{IDirectory}: the registry as an agent sees it, for tests, benchmarks and
applications embedding agents that already know where their peers are. Records change only
when the caller says so, and a change is pushed to the agent at once if it watches the peer,
as the registry's presence push would be.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from sixchat.agent.errors import UnknownIdentity
from sixchat.agent.interfaces import IDirectory, PresenceCallback
from sixchat.identity import normalize_identity
from sixchat.irp.messages import NodeBinding, Record

__all__ = ["MemoryDirectory"]


@implementer(IDirectory)
class MemoryDirectory:
    """
    Records by identity, kept in memory. C{register}/C{withdraw} change a peer's nodes;
    C{lookups} counts lookups and C{watched} holds the watched identities, for assertions.

    Every identity is known (offline until registered) unless C{unknown_unregistered} is
    true: then an identity never given a node is unknown, as a registry answers
    C{not_found} for it, and L{lookup} fails with L{UnknownIdentity}. L{forget} makes one
    identity unknown (a registry that forgot it: its certificate expired or was revoked).
    """

    def __init__(self, unknown_unregistered: bool = False) -> None:
        self.unknown_unregistered = unknown_unregistered
        self.forgotten: set[str] = set()
        self.nodes: dict[str, dict[str, NodeBinding]] = {}
        self.watched: set[str] = set()
        self.on_presence: PresenceCallback | None = None
        self.lookups = 0
        self.closed = False

    def record(self, identity: str) -> Record:
        """The record a lookup of C{identity} answers now (no nodes: offline)."""
        nodes = self.nodes.get(normalize_identity(identity), {})
        return Record(identity, list(nodes.values()))

    def known(self, identity: str) -> bool:
        """Whether a lookup of C{identity} answers a record (else L{UnknownIdentity})."""
        key = normalize_identity(identity)
        if key in self.forgotten:
            return False
        return key in self.nodes or not self.unknown_unregistered

    def forget(self, identity: str) -> None:
        """Make C{identity} unknown (its nodes go too), and push the change."""
        key = normalize_identity(identity)
        self.nodes.pop(key, None)
        self.forgotten.add(key)
        self.push(identity)

    def register(self, identity: str, binding: NodeBinding) -> None:
        """Add or replace one of C{identity}'s nodes, and push the change."""
        self.forgotten.discard(normalize_identity(identity))
        self.nodes.setdefault(normalize_identity(identity), {})[binding.name] = binding
        self.push(identity)

    def withdraw(self, identity: str, node: str) -> None:
        """Remove one of C{identity}'s nodes (if there), and push the change."""
        self.nodes.get(normalize_identity(identity), {}).pop(node, None)
        self.push(identity)

    def push(self, identity: str) -> None:
        """Tell the agent about C{identity}'s current record, if it watches it."""
        if normalize_identity(identity) in self.watched and self.on_presence is not None:
            self.on_presence(identity, self.record(identity))

    # IDirectory

    def lookup(self, identity: str) -> defer.Deferred[Record]:
        self.lookups += 1
        if not self.known(identity):
            return defer.fail(UnknownIdentity(f"{identity} is not known to the directory"))
        return defer.succeed(self.record(identity))

    def watch(self, identity: str) -> None:
        self.watched.add(normalize_identity(identity))

    def unwatch(self, identity: str) -> None:
        self.watched.discard(normalize_identity(identity))

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)
