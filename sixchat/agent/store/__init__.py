"""
The user agent's durable state: messages both ways, the outbox with its per-node delivery
entries (spec §11.16), contacts, and pins (§9.3, §11.15) — one SQLite file in the data
directory (conventionally C{<data-dir>/messages.sqlite}, L{DEFAULT_FILENAME}).

Modules: L{records} (states, values, errors), L{schema} (migrations), L{reads} and L{database} (the
synchronous core), L{store} (the Deferred face with group commit), L{pins} (the pin store).
Everything public is importable from C{sixchat.agent.store} itself.

Two layers:

  - L{MessageDatabase}: the synchronous core, one C{sqlite3} connection, every rule of the
    data model. It blocks, so the reactor thread never calls it; tests and offline tools may.
  - L{MessageStore}: the Twisted face. Every call runs the matching L{MessageDatabase}
    method on a private thread pool with exactly one thread, so database calls never block
    the reactor, the one connection is never shared between threads, and calls run (and
    their Deferreds fire) in the order they were made. Its L{MessageStore.pins}
    (L{SQLitePinStore}) provides L{sixchat.trust.IPinStore} synchronously from a cache.

Durability ("chat that loses nothing"). The file is in WAL mode. A transaction that a
receipt or the outbox depends on (L{MessageStore.store_incoming},
L{MessageStore.queue_outgoing}, L{MessageStore.mark_delivered},
L{MessageStore.mark_failed}, L{MessageStore.expire}, pins and key acceptance) commits with
C{synchronous=FULL}: SQLite fsyncs the WAL before C{COMMIT} returns, and the Deferred fires
only after that, so a caller may send the receipt (§8.2) as soon as it fires. Bookkeeping
whose loss costs nothing but a retry, a lookup or a repeated "unread"
(L{MessageStore.mark_attempt}, L{MessageStore.add_targets}, L{MessageStore.mark_read},
L{MessageStore.touch_contact}, L{SQLitePinStore.note_key_change}) commits with
C{synchronous=NORMAL}, which survives a process crash (SIGKILL) but not necessarily a power
cut. The WAL is one file written in order, so the fsync of a later C{FULL} commit makes every
earlier commit durable too: a receipt recorded durably never outlives the targets and
attempts recorded before it, and after a power cut only bookkeeping newer than the last
C{FULL} commit can be missing (a message without targets is looked up and targeted again).
Each call is applied wholly or not at all: a crash never leaves half of one.

Sending while the sender's fsync runs. L{MessageStore.queue_outgoing}'s C{on_written} hands
the outbox what the recipient is owed as soon as the message is committed (it survives a
crash of the process from then on), and the fsync of the write-ahead log
(L{MessageDatabase.sync}) follows in the same job: the message travels to the peer while the
disk syncs, and C{send} still fires only once it is durable. A power cut in that window (a
few milliseconds, before C{send} returned) can leave the peer holding a message our history
lacks; never the reverse, and never a receipt or "delivered" recorded for a message that is
not durably stored on both sides.

Group commit. The frequent writes of a busy conversation (L{MessageStore.store_incoming},
L{MessageStore.queue_outgoing}, L{MessageStore.add_targets}, L{MessageStore.mark_attempt},
L{MessageStore.mark_delivered}) made while an earlier one is still on the store's thread are
gathered and committed together: one transaction (one fsync) for the batch, one savepoint
per call, so a call that fails is rolled back alone and the others still commit. No Deferred
fires before the batch's COMMIT has returned, so "durable when it fires" holds for each call,
and calls still run and fire in the order they were made.

Outgoing message states (L{MessageStatus.state}), derived from the per-node entries:

  - C{queued}: not yet written to any node's session (no targets known yet, or none tried);
  - C{sent}: written to at least one node's session, no receipt yet;
  - C{delivered}: at least one node sent a receipt — the person has it. Other nodes may
    still be owed the message (L{MessageStatus.delivered_nodes} / C{total_nodes} say how
    many), and it stays in L{MessageStore.pending} until they are served or given up;
  - C{expired}: no node receipted it within the TTL (L{MessageStore.expire}); final;
  - C{failed}: no node receipted it and the peer answered C{error}/C{reject} (§8.6, §11.9)
    for every node it was sent to, or for the whole message; final, with a C{reason}.

C{delivered} wins over the final states: a receipt that arrives after the message expired
or failed is still proof of delivery and is recorded; the outbox still gives no new node
and no new attempt to a message it gave up on. A node entry (L{NodeDelivery.state})
is C{queued}, C{sent}, C{delivered}, C{failed} or C{expired}; C{queued} and C{sent} are
"owed" (the outbox still has to deliver to that node).

Incoming messages are keyed by (normalized sender identity, id): a duplicate is stored once
and L{MessageStore.store_incoming} says C{False}, so the caller sends the receipt again
(§8.2). Identities are compared in their normalized form
(L{sixchat.identity.normalize_identity}); the spelling given is kept for display.

All times are timezone-aware C{datetime}s in UTC when returned; naive ones given are read as
UTC. They are stored as integer microseconds since the epoch so that ordering and range
queries are exact and cheap.
"""

from __future__ import annotations

from sixchat.agent.store.database import MessageDatabase
from sixchat.agent.store.pins import SQLitePinStore
from sixchat.agent.store.reads import ReadOnlyDatabase
from sixchat.agent.store.records import (
    DEFAULT_FILENAME,
    DELIVERED,
    EXPIRED,
    FAILED,
    INCOMING,
    KEY_EVENTS,
    MESSAGE_STATES,
    NODE_STATES,
    OUTGOING,
    OWED_STATES,
    QUEUED,
    RECEIVED,
    SENT,
    SNIPPET_CHARS,
    Contact,
    ConversationSummary,
    HistoryEntry,
    KeyChange,
    KeyEvent,
    MessageIdConflict,
    MessageStatus,
    NodeDelivery,
    OutgoingMessage,
    SchemaTooNewError,
    StoreClosedError,
    StoreError,
    derive_state,
)
from sixchat.agent.store.schema import SCHEMA_VERSION
from sixchat.agent.store.store import MessageStore

__all__ = [
    "Contact",
    "ConversationSummary",
    "DEFAULT_FILENAME",
    "DELIVERED",
    "EXPIRED",
    "FAILED",
    "HistoryEntry",
    "INCOMING",
    "KEY_EVENTS",
    "KeyChange",
    "KeyEvent",
    "MESSAGE_STATES",
    "MessageDatabase",
    "MessageIdConflict",
    "MessageStatus",
    "MessageStore",
    "NODE_STATES",
    "NodeDelivery",
    "OUTGOING",
    "OWED_STATES",
    "OutgoingMessage",
    "QUEUED",
    "RECEIVED",
    "ReadOnlyDatabase",
    "SCHEMA_VERSION",
    "SENT",
    "SNIPPET_CHARS",
    "SQLitePinStore",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreError",
    "derive_state",
]
