"""
What the local control interface (AMP over a UNIX socket) and applications embedding sixchat
need of a running user agent. L{sixchat.agent.service.UserAgentService} provides it.

Values crossing this boundary are plain: strings, numbers, lists and dicts of them (JSON-able),
so the CLI's C{--json} output is the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from sixchat.irp.messages import Record

__all__ = ["IAgentEvents", "IDirectory", "IUserAgent", "PresenceCallback"]

#: What a directory calls when a watched peer's nodes change: (identity as watched, record).
PresenceCallback = Callable[[str, "Record"], None]


class IDirectory(Interface):
    """
    Where the agent finds a peer's nodes (their contacts and certificates). The registry is
    one (L{sixchat.agent.directory.RegistryDirectory}); a fixed table (benchmarks, static
    deployments) or memory (L{sixchat.testing.MemoryDirectory}: tests) are
    others. The outbox only needs these four calls and the presence callback.
    """

    on_presence = Attribute(
        "A L{PresenceCallback} or None; the agent sets it to be told at once when a watched "
        "peer's nodes change, so delivery does not wait for its next retry."
    )

    def lookup(identity: str) -> Deferred[Record]:
        """
        Fires with the peer's record (no nodes: offline), or fails with
        L{sixchat.agent.errors.UnknownIdentity} when the directory knows there is no such
        peer (the registry's C{not_found}); any other failure means it cannot tell now.
        """

    def watch(identity: str) -> None:
        """Push changes of C{identity}'s record to C{on_presence} from now on."""

    def unwatch(identity: str) -> None:
        """Stop pushing C{identity}'s changes (nothing is owed to it any more)."""

    def close() -> Deferred[None]:
        """Let go of any connection; fires when done. The agent calls it when stopping."""


class IAgentEvents(Interface):
    """Receives what happens in the agent (for `sixchat watch`, `chat`, applications)."""

    def agentEvent(event: dict[str, Any]) -> None:
        """
        One event. C{event["type"]} is one of:
          - C{message}: an incoming message stored (keys: id, peer, body, ts, thread, reply_to,
            received_at);
          - C{delivery}: an outgoing message changed state (id, peer, state: queued|sent|
            delivered|expired|failed|cancelled, description, delivered_nodes, total_nodes, reason,
            nodes: the per-node entries);
          - C{typing}: the peer is composing or paused (peer, state);
          - C{key_change}: a known contact presented a new key (peer, fingerprint, policy,
            action: accepted|warned|refused);
          - C{presence}: a peer's registry presence changed (peer, nodes);
          - C{unknown_recipient}: the registry does not know a peer we send to (peer,
            reason, ids, action: C{refused}, a send not stored, ids empty; or C{queued},
            messages queued earlier or with C{queue_unknown} stay, ids listed);
          - C{session}: a session opened or closed (peer, state; when opened also role,
            suite, group).
        """


class IUserAgent(Interface):
    """The agent's small API; every method returns a Deferred firing with plain data."""

    def send(
        to: str,
        text: str,
        thread: str | None = None,
        reply_to: str | None = None,
        queue_unknown: bool = False,
    ) -> Any:
        """
        Queue a message (stored before this fires) and start delivering it. Fires with a dict
        {id, peer, state}; texts over 32,768 characters are split, and the dict then carries
        the ids of all parts in C{ids}.

        Fails with L{sixchat.agent.errors.UnknownIdentity}, storing nothing, when the
        registry answers that C{to} does not exist (never registered, or its certificate
        expired or was revoked), unless C{queue_unknown}: then the message is queued and
        waits for C{to} to register. An offline peer (known, no node now) is queued.
        """

    def cancel(message_id: str) -> Any:
        """
        Take a message out of the outbox before any device received it (C{queued} or
        C{sent}: a device that got it without our receipt may keep it). Fires with its
        status dict, C{state} C{cancelled}; fails with
        L{sixchat.agent.errors.UnknownMessage} (no such outgoing message) or
        L{sixchat.agent.errors.MessageFinal} (delivered, expired or failed already).
        """

    def waitDelivered(message_id: str, timeout: float) -> Any:
        """Fires with the message's status dict once delivered, or when C{timeout} expires."""

    def status_of(message_id: str) -> Any:
        """Fires with the message's status dict (state, delivered_nodes, total_nodes, …)."""

    def history(peer: str | None, since: str | None, limit: int) -> Any:
        """Fires with a list of message dicts (both directions, oldest first)."""

    def conversations() -> Any:
        """Fires with a list of {peer, last_ts, last_body, unread}."""

    def contacts() -> Any:
        """
        Fires with a list of {identity, first_seen, last_seen, keys, key_change_pending,
        pending_keys, key_events: [{what, fingerprint, at}]} (key history oldest first).
        """

    def status() -> Any:
        """
        Fires with {identity, node, listening, registry: {state, registry, expires, …},
        advertised: [...], sessions: [{peer, node, suite, group, since}], outbox: {queued,…}}.
        """

    def trust(identity: str, accept_new_key: bool, forget_old: bool = False) -> Any:
        """
        Accept a pending key change for C{identity} (C{accept_new_key}) and/or unpin its
        older keys (C{forget_old}: all but the key just accepted, or else the newest key a
        key change brought); fires with {identity, keys, accepted, forgotten}.
        """

    def typing(to: str, state: str) -> Any:
        """Tell a peer with an open session that we are composing/paused (never queued)."""

    def sendFile(to: str, path: str) -> Any:
        """
        Queue the file at C{path} (absolute) for C{to}, like a message (§8.7): fires once
        queued with the transfer's dict {id, peer, direction, name, size, received, sha256,
        state, path, resumed_from}; C{waitDelivered} works on its id.
        """

    def files() -> Any:
        """Fires with a list of transfer dicts, both directions (docs/files.md)."""

    def addObserver(observer: IAgentEvents) -> None:
        """Start sending events to C{observer}."""

    def removeObserver(observer: IAgentEvents) -> None:
        """Stop sending events to C{observer}."""
