"""
Own-device sync (docs/protocol.md, "Extension: own-device sync"), sans-IO: the stanzas that
nodes of one identity exchange to share their history and outbox.
"""

from sixchat.sync.stanzas import (
    SYNC_STANZAS,
    CancelledItem,
    ContactItem,
    InItem,
    NodeEntry,
    OutItem,
    PinItem,
    SyncBatch,
    SyncHello,
    SyncItem,
    SyncPull,
)

__all__ = [
    "SYNC_STANZAS",
    "CancelledItem",
    "ContactItem",
    "InItem",
    "NodeEntry",
    "OutItem",
    "PinItem",
    "SyncBatch",
    "SyncHello",
    "SyncItem",
    "SyncPull",
]
