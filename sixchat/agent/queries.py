"""
The read side of the agent's API (L{sixchat.agent.interfaces.IUserAgent}): history,
conversations, contacts, files, a message's status, the agent's status and its devices —
what C{sixchat history}, C{contacts}, C{files}, C{status}, C{devices} and the web UI show. It
only reads the agent's parts and turns their records into the dicts of
L{sixchat.agent.views}; L{sixchat.agent.service.UserAgentService} inherits it, so that the
lifecycle and the write side stay apart from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sixchat.agent import views
from sixchat.agent.errors import AgentError
from sixchat.agent.store import MessageStatus
from sixchat.agent.views import status_dict
from sixchat.netaddr import format_hostport
from sixchat.stanzas import parse_timestamp

if TYPE_CHECKING:
    from sixchat.agent.crls import CRLUpdater
    from sixchat.agent.files.sending import FileOutbox
    from sixchat.agent.outbox import OutboxScheduler
    from sixchat.agent.ownnodes import OwnNodeSync
    from sixchat.agent.pinning import KeyChanges
    from sixchat.agent.sessions import SessionTable
    from sixchat.agent.store import MessageStore

__all__ = ["AgentQueries"]


class AgentQueries:
    """What the agent reports; the parts it reads are the service's."""

    name_: str
    node: str
    data_dir: str
    registry: str | None
    keeper: Any
    store: MessageStore
    outbox: OutboxScheduler
    sessions: SessionTable
    crls: CRLUpdater
    key_changes: KeyChanges
    file_outbox: FileOutbox
    own_nodes: OwnNodeSync | None
    _listeningAddress: Callable[[], Any]

    def files(self) -> defer.Deferred[list[dict[str, Any]]]:
        """Every file transfer, both directions (C{sixchat files})."""
        return defer.ensureDeferred(self.file_outbox.describe_all())

    def status_of(self, message_id: str) -> defer.Deferred[dict[str, Any]]:
        def convert(status: MessageStatus | None) -> dict[str, Any]:
            if status is None:
                raise AgentError(f"no message {message_id}")
            result = status_dict(status)
            result["recipient_unknown"] = self.outbox.isUnknown(status.to)
            return result

        return self.store.status(message_id).addCallback(convert)

    def history(
        self, peer: str | None, since: str | None, limit: int
    ) -> defer.Deferred[list[dict[str, Any]]]:
        when = parse_timestamp(since) if since else None
        d = self.store.history(peer, when, limit).addCallback(
            lambda entries: [views.history_dict(e) for e in entries]
        )
        if peer is not None:
            d.addCallback(lambda r: self.store.mark_read(peer).addCallback(lambda _: r))
        return d

    def conversations(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.store.conversations().addCallback(
            lambda rows: [views.conversation_dict(c) for c in rows]
        )

    @defer.inlineCallbacks
    def contacts(self) -> Any:
        rows = yield self.store.contacts()
        history = yield self.store.pins.key_events(None, None, 10_000)
        by_peer: dict[str, list[Any]] = {}
        for event in history:
            by_peer.setdefault(event.identity, []).append(event)
        pins = self.store.pins
        return [
            views.contact_dict(
                c,
                self.key_changes.keys(c.identity),
                sorted(s.hex() for s in pins.pending_changes(c.identity)),
                by_peer.get(c.identity, []),
            )
            for c in rows
        ]

    @defer.inlineCallbacks
    def status(self) -> Any:
        counts = yield self.store.outbox_counts()
        port = self._listeningAddress()
        keeper = self.keeper
        return {
            "identity": self.name_,
            "node": self.node,
            "data_dir": self.data_dir,
            "listening": None if port is None else format_hostport(port.host, port.port),
            "registry": None
            if keeper is None
            else {"registry": self.registry, **keeper.describe()},
            "advertised": []
            if keeper is None
            else [format_hostport(c.host, c.port) for c in keeper.contacts],
            "sessions": self.sessions.describe(),
            "outbox": counts,
            "revocation": self.crls.status(),
            "devices": (yield self.devices()),
        }

    def devices(self) -> defer.Deferred[dict[str, Any]]:
        """This node and the identity's other nodes, with their sync state (C{sixchat devices})."""
        if self.own_nodes is None:
            return defer.succeed({"node": self.node, "sync": False, "own_nodes": []})
        return self.own_nodes.report()
