# temporary: removed when the irp server split is merged
"""Moved to L{sixchat.irp.store.postgres}; this module only re-exports it."""

from sixchat.irp.store.postgres import (
    CHANNEL,
    MIGRATIONS,
    PostgresStore,
    PostgresStoreError,
    issuer_key,
    mask_dsn,
)

__all__ = ["CHANNEL", "MIGRATIONS", "PostgresStore", "PostgresStoreError", "issuer_key", "mask_dsn"]
