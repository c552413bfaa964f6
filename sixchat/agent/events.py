"""
The events an agent emits to its observers (L{sixchat.agent.interfaces.IAgentEvents}) and
through the control interface: one list of their types, so the agent, the control server's
filter and the command line's C{watch --type} agree — and one builder per type, so each
type's keys (documented on L{IAgentEvents.agentEvent}) are written down once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from sixchat.agent.interfaces import IAgentEvents
from sixchat.agent.views import status_dict

if TYPE_CHECKING:
    from sixchat.agent.store import MessageStatus
    from sixchat.agent.store.files import TransferRecord
    from sixchat.irp.messages import Record
    from sixchat.protocol import Session
    from sixchat.stanzas import Message

__all__ = [
    "EVENT_TYPES",
    "EventFanout",
    "LogEvents",
    "cancelled_event",
    "delivery_event",
    "file_event",
    "key_change_event",
    "message_event",
    "presence_event",
    "revoked_event",
    "session_closed_event",
    "session_opened_event",
    "typing_event",
    "unknown_recipient_event",
]

log = Logger(namespace="sixchat.agent.service")

#: Event types the agent emits; the control layer adds C{overflow} for a client that fell behind.
EVENT_TYPES = (
    "message",
    "delivery",
    "typing",
    "key_change",
    "presence",
    "session",
    "revoked",
    "unknown_recipient",
    "file",
)

Event = dict[str, Any]


def message_event(sender: str, message: Message, received_at: str) -> Event:
    return {
        "type": "message",
        "id": message.id,
        "peer": sender,
        "body": message.body,
        "ts": message.ts,
        "thread": message.thread,
        "reply_to": message.reply_to,
        "received_at": received_at,
    }


def file_event(record: TransferRecord, state: str, **extra: Any) -> Event:
    """A file transfer's progress or end, either direction (C{sixchat watch}, the web UI)."""
    event = {
        "type": "file",
        "id": record.id,
        "peer": record.peer_display,
        "direction": record.direction,
        "name": record.name,
        "size": record.size,
        "state": state,
    }
    event.update(extra)
    return event


def delivery_event(status: MessageStatus) -> Event:
    event = status_dict(status)
    event["type"] = "delivery"
    return event


def cancelled_event(status: MessageStatus) -> Event:
    """A C{delivery} event for a message taken out of the outbox (C{sixchat cancel})."""
    event = delivery_event(status)
    event.update(state="cancelled", description="cancelled", reason=None)
    return event


def unknown_recipient_event(peer: str, reason: str, ids: list[str], action: str) -> Event:
    """
    The registry does not know C{peer}: C{action} C{refused} (a C{send} that was not
    stored, C{ids} empty) or C{queued} (messages already queued stay: C{ids}).
    """
    return {
        "type": "unknown_recipient",
        "peer": peer,
        "reason": reason,
        "ids": ids,
        "action": action,
    }


def typing_event(peer: str, state: str) -> Event:
    return {"type": "typing", "peer": peer, "state": state}


def key_change_event(peer: str, fingerprint: str, policy: str, action: str) -> Event:
    return {
        "type": "key_change",
        "peer": peer,
        "fingerprint": fingerprint,
        "policy": policy,
        "action": action,
    }


def presence_event(peer: str, record: Record | None) -> Event:
    nodes = [n.name for n in getattr(record, "nodes", [])]
    return {"type": "presence", "peer": peer, "nodes": nodes}


def session_opened_event(session: Session) -> Event:
    result = session.result
    return {
        "type": "session",
        "peer": result.peer_name,
        "state": "open",
        "role": session.connection.role,
        "suite": result.suite,
        "group": result.group,
    }


def session_closed_event(session: Session) -> Event:
    return {"type": "session", "peer": session.result.peer_name, "state": "closed"}


def revoked_event(peer: str, serial: str, depth: int, issuer: str) -> Event:
    return {"type": "revoked", "peer": peer, "serial": serial, "depth": depth, "issuer": issuer}


class EventFanout:
    """The agent's observers: every event goes to each; one failing observer stops none."""

    def __init__(self, *observers: IAgentEvents) -> None:
        self._observers: list[IAgentEvents] = list(observers)

    def add(self, observer: IAgentEvents) -> None:
        self._observers.append(observer)

    def remove(self, observer: IAgentEvents) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def emit(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer.agentEvent(event)
            except Exception:
                log.failure("event observer failed")


@implementer(IAgentEvents)
class LogEvents:
    """The agent's log: sessions are logged by the protocol; messages and deliveries here."""

    def agentEvent(self, event: Event) -> None:
        kind = event["type"]
        if kind == "message":
            log.info(
                "message {id} from {peer}: {body}",
                id=event["id"],
                peer=event["peer"],
                body=event["body"],
            )
        elif kind == "unknown_recipient":
            log.warn(
                "{peer} is unknown to the registry: {action} {ids}",
                peer=event["peer"],
                action="refused a message" if event["action"] == "refused" else "still queued",
                ids=" ".join(event["ids"]),
            )
        elif kind == "delivery" and event["state"] != "queued":
            log.info(
                "message {id} to {peer}: {state}",
                id=event["id"],
                peer=event["peer"],
                state=event["description"],
            )
