"""
The registry's storage: what the server needs (L{interfaces.IRegistryStore}, typed), the
rules both backends share (L{common}: one L{issuer_key}), and the two backends: SQLite
(L{sqlite}, the embedded default) and PostgreSQL (L{postgres}, shared by several registry
processes; its modules import psycopg, so its names here are loaded on first use and the
SQLite store works without psycopg installed).
"""

from __future__ import annotations

from typing import Any

from sixchat.irp.store.common import issuer_key
from sixchat.irp.store.interfaces import Binding, ConflictError, IdentityState, IRegistryStore
from sixchat.irp.store.sqlite import SQLiteStore, StoreError

__all__ = [
    "Binding",
    "ConflictError",
    "IRegistryStore",
    "IdentityState",
    "PostgresStore",
    "PostgresStoreError",
    "SQLiteStore",
    "StoreError",
    "issuer_key",
    "mask_dsn",
]

_POSTGRES_NAMES = frozenset({"PostgresStore", "PostgresStoreError", "mask_dsn"})


def __getattr__(name: str) -> Any:
    if name in _POSTGRES_NAMES:
        from sixchat.irp.store import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
