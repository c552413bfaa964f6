"""
The agent's errors as its API and the control interface report them: one class per failure a
caller can act on, and the AMP error codes (L{ERRORS}) that are the contract with other
control clients. Raised by the agent (or the control layer) on the server side and re-created
from the AMP error code on the client side.
"""

from __future__ import annotations

from sixchat.errors import SixchatError

__all__ = [
    "ERRORS",
    "AgentError",
    "AgentAlreadyRunning",
    "AgentDisconnected",
    "AgentFailure",
    "BadArgument",
    "ControlError",
    "DataDirError",
    "MessageFinal",
    "NoAgentRunning",
    "NotConnected",
    "PeerRefused",
    "UnknownIdentity",
    "UnknownMessage",
]


class ControlError(SixchatError):
    """
    A failure reported through the control interface. Raised by the agent (or this layer) on
    the server side and re-created from the AMP error code on the client side, so the CLI
    prints C{sixchat: error: <message>} and exits 1 (L{sixchat.cli.main}).
    """

    def __init__(self, message: str | bytes = "") -> None:
        if isinstance(message, bytes):  # AMP hands descriptions over as bytes
            message = message.decode("utf-8", "replace")
        super().__init__(message)


class UnknownIdentity(ControlError):
    """
    No contact, session or registry entry for that identity (or it is not one). The
    directory (L{sixchat.agent.interfaces.IDirectory}) fails a lookup with it when the
    registry answers C{not_found}; C{send} then refuses the message.
    """


class UnknownMessage(ControlError):
    """No message with that id in the store."""


class MessageFinal(ControlError):
    """The message is past the outbox (delivered to some device, expired or failed)."""


class BadArgument(ControlError):
    """An argument is malformed or out of range."""


class NotConnected(ControlError):
    """The operation needs an open session with the peer (C{typing})."""


class AgentFailure(ControlError):
    """Anything else that went wrong in the agent; details are in the agent's log."""


class PeerRefused(ControlError):
    """A control connection came from (or went to) another user."""


class NoAgentRunning(ControlError):
    """Nothing answers on the data directory's control socket."""


class AgentAlreadyRunning(ControlError):
    """Another agent already answers on the control socket we were to listen on."""


class AgentDisconnected(ControlError):
    """The connection to the agent was lost."""


class DataDirError(ControlError):
    """The data directory is unusable or unsafe."""


#: Every AMP command carries these; the codes are the contract with other clients.
ERRORS: dict[type[Exception], bytes] = {
    UnknownIdentity: b"UNKNOWN_IDENTITY",
    UnknownMessage: b"UNKNOWN_MESSAGE",
    MessageFinal: b"MESSAGE_FINAL",
    BadArgument: b"BAD_ARGUMENT",
    NotConnected: b"NOT_CONNECTED",
    AgentFailure: b"AGENT_FAILURE",
}


class AgentError(SixchatError):
    """A request to the agent that cannot be done (unknown identity, bad argument, …)."""
