# temporary: removed when the irp server split is merged
"""Moved to L{sixchat.irp.store.sqlite}; this module only re-exports it."""

from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "StoreError", "issuer_key"]
