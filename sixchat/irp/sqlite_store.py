# temporary: removed when the irp server split is merged
"""Moved to L{sixchat.irp.store.sqlite}; this module only re-exports it."""

from sixchat.irp.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, StoreError, issuer_key

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "StoreError", "issuer_key"]
