"""
The agent's records as the plain dicts of its API (L{IUserAgent}): what the control interface
sends and C{--json} prints, so every field name is part of that contract and lives here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sixchat.netaddr import format_hostport
from sixchat.stanzas import format_timestamp

if TYPE_CHECKING:
    from sixchat.agent.store import (
        Contact,
        ConversationSummary,
        HistoryEntry,
        KeyEvent,
        MessageStatus,
    )
    from sixchat.protocol import Session

__all__ = [
    "contact_dict",
    "conversation_dict",
    "history_dict",
    "iso",
    "key_event_dict",
    "session_dict",
    "status_dict",
]


def iso(when: datetime | None) -> str | None:
    return None if when is None else format_timestamp(when)


def status_dict(status: MessageStatus) -> dict[str, Any]:
    return {
        "id": status.id,
        "peer": status.to,
        "state": status.state,
        "description": status.describe(),
        "delivered_nodes": status.delivered_nodes,
        "total_nodes": status.total_nodes,
        "reason": status.reason,
        "created_at": iso(status.created_at),
        "nodes": [
            {"node": n.node, "state": n.state, "attempts": n.attempts, "reason": n.reason}
            for n in status.nodes
        ],
    }


def history_dict(e: HistoryEntry) -> dict[str, Any]:
    return {
        "direction": e.direction,
        "peer": e.peer_display or e.peer,
        "id": e.id,
        "ts": e.ts,
        "body": e.body,
        "thread": e.thread,
        "reply_to": e.reply_to,
        "at": iso(e.at),
        "read": e.read,
        "state": e.state,
        "delivered_nodes": e.delivered_nodes,
        "total_nodes": e.total_nodes,
    }


def conversation_dict(c: ConversationSummary) -> dict[str, Any]:
    return {
        "peer": c.display or c.peer,
        "last_ts": iso(c.last_at),
        "last_body": c.last_body,
        "unread": c.unread,
        "messages": c.messages,
    }


def contact_dict(
    c: Contact,
    keys: list[str],
    pending: Sequence[str] = (),
    key_events: Sequence[KeyEvent] = (),
) -> dict[str, Any]:
    """
    C{keys}: the contact's pinned keys, SPKI SHA-256 fingerprints in hex, sorted;
    C{pending}: the keys awaiting C{sixchat trust --accept-new-key}; C{key_events}: the
    contact's key history (§9.3), oldest first.
    """
    return {
        "identity": c.display or c.identity,
        "first_seen": iso(c.first_seen),
        "last_seen": iso(c.last_seen),
        "keys": keys,
        "key_change_pending": c.key_change_pending or bool(pending),
        "pending_keys": list(pending),
        "key_events": [key_event_dict(e) for e in key_events],
    }


def key_event_dict(e: KeyEvent) -> dict[str, Any]:
    """One line of a contact's key history: C{what} is warned, accepted, refused (how the
    pin policy met a key change), trusted or forgotten (the user's decisions)."""
    return {"what": e.what, "fingerprint": e.fingerprint, "at": iso(e.at)}


def session_dict(session: Session, node: str | None) -> dict[str, Any]:
    """An outgoing session to C{node}, or (C{node} None) an incoming one."""
    return {
        "peer": session.result.peer_name,
        "node": node,
        "direction": "incoming" if node is None else "outgoing",
        "suite": session.result.suite,
        "group": session.result.group,
        "address": _address(session),
    }


def _address(session: Session) -> str | None:
    """The peer's address and port (which of its contacts the session runs over)."""
    try:
        peer = session.address()
    except AttributeError:  # no transport any more
        return None
    host = getattr(peer, "host", None)
    return format_hostport(host, getattr(peer, "port", None)) if host else None


def transfer_dict(
    record: Any, state: str, received: int, resumed_from: int | None = None
) -> dict[str, Any]:
    """One file transfer for C{sixchat files} (docs/cli.md lists the fields)."""
    return {
        "id": record.id,
        "peer": record.peer_display,
        "direction": record.direction,
        "name": record.name,
        "size": record.size,
        "received": received,
        "sha256": record.sha256.hex(),
        "state": state,
        "path": record.path,
        "resumed_from": record.resumed_from if resumed_from is None else resumed_from,
    }
