"""
The user agent's durable state (see L{database}, moved here from C{sixchat/agent/store.py}
as the first step of splitting it into the modules of this package).
"""

from sixchat.agent.store.database import (
    DEFAULT_FILENAME,
    DELIVERED,
    EXPIRED,
    FAILED,
    INCOMING,
    MESSAGE_STATES,
    NODE_STATES,
    OUTGOING,
    QUEUED,
    RECEIVED,
    SCHEMA_VERSION,
    SENT,
    SNIPPET_CHARS,
    Contact,
    ConversationSummary,
    HistoryEntry,
    KeyChange,
    MessageDatabase,
    MessageIdConflict,
    MessageStatus,
    MessageStore,
    NodeDelivery,
    OutgoingMessage,
    SchemaTooNewError,
    SQLitePinStore,
    StoreClosedError,
    StoreError,
)
from sixchat.agent.store.database import (
    _Batch as _Batch,  # the tests patch it here
)

__all__ = [
    "Contact",
    "ConversationSummary",
    "DEFAULT_FILENAME",
    "DELIVERED",
    "EXPIRED",
    "FAILED",
    "HistoryEntry",
    "INCOMING",
    "KeyChange",
    "MESSAGE_STATES",
    "MessageDatabase",
    "MessageIdConflict",
    "MessageStatus",
    "MessageStore",
    "NODE_STATES",
    "NodeDelivery",
    "OUTGOING",
    "OutgoingMessage",
    "QUEUED",
    "RECEIVED",
    "SCHEMA_VERSION",
    "SENT",
    "SNIPPET_CHARS",
    "SQLitePinStore",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreError",
]
