# temporary: removed when the irp server split is merged
"""Moved to L{sixchat.irp.store.interfaces}; this module only re-exports it."""

from sixchat.irp.store.interfaces import Binding, ConflictError, IdentityState, IRegistryStore

__all__ = ["Binding", "ConflictError", "IRegistryStore", "IdentityState"]
