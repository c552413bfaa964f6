"""
An in-memory L{IDirectory}: the registry as an agent sees it, for tests, benchmarks and
applications embedding agents that already know where their peers are. Records change only
when the caller says so, and a change is pushed to the agent at once if it watches the peer,
as the registry's presence push would be.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from sixchat.agent.interfaces import IDirectory, PresenceCallback
from sixchat.identity import normalize_identity
from sixchat.irp.messages import NodeBinding, Record

__all__ = ["MemoryDirectory"]


@implementer(IDirectory)
class MemoryDirectory:
    """
    Records by identity, kept in memory. C{register}/C{withdraw} change a peer's nodes;
    C{lookups} counts lookups and C{watched} holds the watched identities, for assertions.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, NodeBinding]] = {}
        self.watched: set[str] = set()
        self.on_presence: PresenceCallback | None = None
        self.lookups = 0
        self.closed = False

    def record(self, identity: str) -> Record:
        """The record a lookup of C{identity} answers now (no nodes: offline)."""
        nodes = self.nodes.get(normalize_identity(identity), {})
        return Record(identity, list(nodes.values()))

    def register(self, identity: str, binding: NodeBinding) -> None:
        """Add or replace one of C{identity}'s nodes, and push the change."""
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
        return defer.succeed(self.record(identity))

    def watch(self, identity: str) -> None:
        self.watched.add(normalize_identity(identity))

    def unwatch(self, identity: str) -> None:
        self.watched.discard(normalize_identity(identity))

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)
