"""
The events an agent emits to its observers (L{sixchat.agent.interfaces.IAgentEvents}) and
through the control interface: one list of their types, so the agent, the control server's
filter and the command line's C{watch --type} agree.
"""

from __future__ import annotations

__all__ = ["EVENT_TYPES"]

#: Event types the agent emits; the control layer adds C{overflow} for a client that fell behind.
EVENT_TYPES = ("message", "delivery", "typing", "key_change", "presence", "session", "revoked")
