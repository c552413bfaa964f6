"""
What the agent store's callers see: message and node states, the values it answers with,
its errors, and the rules of those values that hold whatever the storage (which states are
owed, how a message's state follows from its nodes, what a pin and a node are).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sixchat._sqlite import aware
from sixchat.errors import SixchatError
from sixchat.stanzas import Message

#: The file name of the store inside the agent's data directory.
DEFAULT_FILENAME = "messages.sqlite"

# -- states ---------------------------------------------------------------------------------

QUEUED = "queued"
SENT = "sent"
DELIVERED = "delivered"
EXPIRED = "expired"
FAILED = "failed"
#: The state of every incoming message in L{HistoryEntry.state}.
RECEIVED = "received"

#: States of an outgoing message (L{MessageStatus.state}).
MESSAGE_STATES = (QUEUED, SENT, DELIVERED, EXPIRED, FAILED)
#: States of one node's delivery entry (L{NodeDelivery.state}).
NODE_STATES = (QUEUED, SENT, DELIVERED, FAILED, EXPIRED)
#: Node states in which the outbox still owes that node the message.
OWED_STATES = frozenset({QUEUED, SENT})

#: L{HistoryEntry.direction} values.
INCOMING = "in"
OUTGOING = "out"

#: How much of the last body L{ConversationSummary.last_body} keeps.
SNIPPET_CHARS = 80


# -- errors ---------------------------------------------------------------------------------


class StoreError(SixchatError):
    """The message store cannot do what was asked (beyond a plain argument error)."""


class StoreClosedError(StoreError):
    """The store is not open (never opened, still opening, or closed)."""


class SchemaTooNewError(StoreError):
    """
    The file was written by a newer sixchat (a higher schema version than this code knows).
    Refused rather than risk a downgrade corrupting data a newer version relies on.
    """


class MessageIdConflict(StoreError, ValueError):
    """
    L{MessageStore.queue_outgoing} was given an id already used for a different outgoing
    message. (Queueing the same message again with its id is idempotent, not a conflict.)
    """


# -- values returned ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeDelivery:
    """
    One node's delivery entry for an outgoing message (§11.16).

    @ivar state: one of L{NODE_STATES}.
    @ivar attempts: how many times the outbox recorded an attempt (L{MessageStore.mark_attempt}).
    @ivar next_attempt: when the outbox planned to try again; C{None} means at once (never
        tried, or no plan recorded). Always C{None} once the entry is no longer owed.
    @ivar done_at: when the entry left the owed states (receipt, failure, expiry).
    @ivar reason: the peer's reason for C{failed}.
    """

    node: str
    state: str
    attempts: int
    last_attempt: datetime | None
    next_attempt: datetime | None
    done_at: datetime | None
    reason: str | None

    @property
    def owed(self) -> bool:
        """Whether the outbox still has to deliver to this node."""
        return self.state in OWED_STATES

    def due(self, now: datetime) -> bool:
        """Whether the outbox should (re)send to this node at C{now}."""
        return self.owed and (self.next_attempt is None or self.next_attempt <= aware(now))


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """
    Where an outgoing message stands. C{delivered_nodes}/C{total_nodes} let a UI say
    "delivered (1/2 devices)" (L{describe}).

    @ivar to: the recipient identity, normalized.
    @ivar state: one of L{MESSAGE_STATES} (see the module docstring).
    @ivar nodes: every node entry, ordered by node name.
    @ivar total_nodes: C{len(nodes)}, including failed and expired entries.
    @ivar reason: why the message C{failed} (the peer's reason token), else C{None}.
    @ivar closed_at: when it became C{expired} or C{failed}, else C{None}.
    """

    id: str
    to: str
    state: str
    created_at: datetime
    nodes: tuple[NodeDelivery, ...]
    delivered_nodes: int
    total_nodes: int
    reason: str | None = None
    closed_at: datetime | None = None

    @property
    def owed_nodes(self) -> tuple[str, ...]:
        """The nodes the outbox still has to deliver to."""
        return tuple(n.node for n in self.nodes if n.owed)

    @property
    def delivered_at(self) -> datetime | None:
        """When the first receipt arrived, if any."""
        times = [n.done_at for n in self.nodes if n.state == DELIVERED and n.done_at]
        return min(times) if times else None

    def describe(self) -> str:
        """A short human text: C{"delivered (1/2 devices)"}, C{"failed: too_large"}, …"""
        if self.state == DELIVERED and self.total_nodes > 1:
            return f"{DELIVERED} ({self.delivered_nodes}/{self.total_nodes} devices)"
        if self.state == FAILED and self.reason:
            return f"{FAILED}: {self.reason}"
        return self.state


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """
    A message we queued, with its delivery status: what the outbox (re)sends.

    @ivar to: the recipient identity, normalized; C{to_display} is the spelling given.
    @ivar ts: the C{ts} attribute as sent (§8.1), fixed at queueing time.
    @ivar origin: the own node that queued it, when another node of ours did (own-device
        sync); C{None}: this node.
    """

    id: str
    to: str
    to_display: str
    ts: str
    body: str
    thread: str | None
    reply_to: str | None
    created_at: datetime
    status: MessageStatus
    origin: str | None = None

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def nodes(self) -> tuple[NodeDelivery, ...]:
        return self.status.nodes

    @property
    def stanza(self) -> Message:
        """The C{message} stanza to send, identical on every (re)transmission."""
        return Message(self.id, self.ts, self.body, self.thread, self.reply_to)

    def due_nodes(self, now: datetime) -> tuple[str, ...]:
        """The owed nodes whose next attempt is due at C{now}."""
        return tuple(n.node for n in self.status.nodes if n.due(now))

    def is_due(self, now: datetime) -> bool:
        """
        Whether the outbox has work for this message at C{now}: a due node, or no target
        yet (the peer's nodes still have to be looked up) while the message is not final.
        """
        if not self.status.nodes:
            return self.status.state in (QUEUED, SENT)
        return bool(self.due_nodes(now))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """
    One message of either direction, for C{sixchat inbox}/C{chat}.

    @ivar seq: the store's insertion number: unique, increasing, a stable tie-breaker.
    @ivar direction: L{INCOMING} or L{OUTGOING}.
    @ivar peer: the other party, normalized; C{peer_display} as spelled on this message.
    @ivar at: when we received it (incoming) or queued it (outgoing), by our clock; history
        is ordered by it. C{ts} is the sender's informational timestamp, as sent.
    @ivar read: incoming messages the user has seen (L{MessageStore.mark_read}); always
        C{True} for outgoing ones.
    @ivar state: L{RECEIVED} for incoming, one of L{MESSAGE_STATES} for outgoing.
    @ivar delivered_nodes: outgoing only (0 for incoming), as in L{MessageStatus}.
    """

    seq: int
    direction: str
    peer: str
    peer_display: str
    id: str
    ts: str
    body: str
    thread: str | None
    reply_to: str | None
    at: datetime
    read: bool
    state: str
    delivered_nodes: int = 0
    total_nodes: int = 0


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """
    One conversation (one peer identity) for the conversation list.

    @ivar last_body: the start of the last message's body (L{SNIPPET_CHARS} characters).
    @ivar unread: incoming messages not yet marked read.
    @ivar messages: how many messages, both directions.
    """

    peer: str
    display: str
    last_at: datetime
    last_direction: str
    last_body: str
    unread: int
    messages: int


@dataclass(frozen=True, slots=True)
class Contact:
    """
    A peer identity we have dealt with.

    @ivar first_seen: our first dealing with it: a message either way, a handshake or a key
        change noted.
    @ivar last_seen: the last time the peer itself showed up (a message received, a
        handshake, a key change noted); C{None} if we only ever wrote to it.
    @ivar pinned_keys: how many SPKI pins we hold for it (§11.15).
    @ivar key_change_pending: a key change awaits the user's decision (L{KeyChange}).
    """

    identity: str
    display: str
    first_seen: datetime
    last_seen: datetime | None
    pinned_keys: int
    key_change_pending: bool


@dataclass(frozen=True, slots=True)
class KeyChange:
    """
    A key that a peer presented which is not among its pins, awaiting the user (§9.3):
    C{sixchat trust <identity> --accept-new-key} turns it into a pin.

    @ivar times: how many handshakes presented it.
    """

    identity: str
    spki_sha256: bytes
    first_noted: datetime
    last_noted: datetime
    times: int

    @property
    def fingerprint(self) -> str:
        """The SPKI SHA-256 as lowercase hex (the form users compare)."""
        return self.spki_sha256.hex()


#: What a key event records (L{KeyEvent.what}): how the pin policy met a key change, or what
#: the user decided.
KEY_EVENTS = ("warned", "accepted", "refused", "trusted", "forgotten")


@dataclass(frozen=True)
class KeyEvent:
    """
    One line of a contact's key history (§9.3), for the conversation view: a key change
    and how the pin policy met it (C{warned}, C{accepted}, C{refused}), or the user's
    decision (C{trusted}: C{sixchat trust --accept-new-key}; C{forgotten}: C{--forget-old}).
    """

    identity: str
    spki_sha256: bytes
    what: str
    at: datetime

    @property
    def fingerprint(self) -> str:
        return self.spki_sha256.hex()


def check_spki(spki: bytes) -> bytes:
    if not isinstance(spki, bytes | bytearray | memoryview) or len(spki) != 32:
        raise ValueError("a pin is a 32-byte SHA-256")
    return bytes(spki)


def check_node(node: str) -> str:
    if not isinstance(node, str) or not node:
        raise ValueError("a node is a non-empty string")
    return node


def derive_state(outcome: str | None, delivered: int, sent: int) -> str:
    """
    An outgoing message's state from its stored outcome (C{None}, C{expired}, C{failed})
    and how many of its nodes are C{delivered} and C{sent}. A receipt wins over everything.
    """
    if delivered:
        return DELIVERED
    if outcome is not None:
        return outcome
    return SENT if sent else QUEUED


#: identity → set of SPKI hashes (pins, or pending key changes).
PinMaps = dict[str, set[bytes]]
