"""
The agent's local control interface: AMP (L{twisted.protocols.amp}) over a UNIX socket in the
data directory. The C{sixchat} command line is a client of it; so can be any local program
running as the same user.

The usual AMP split: L{commands} is the wire contract (argument types, commands, argument
bounds), L{server} serves an agent on the socket, L{client} is the other end, and
L{unixsocket} holds what both ends share about the socket (its path, who is on the other end).
Errors, data directories and event types live in L{sixchat.agent.errors},
L{sixchat.agent.datadir} and L{sixchat.agent.events}, because the agent and the command line
use them without the control interface.

Everything that used to be importable from C{sixchat.agent.control} still is, from here; code
inside the package and the command line import from the defining modules.
"""

from __future__ import annotations

from sixchat.agent.control.client import ControlClient, connect_control
from sixchat.agent.control.commands import (
    JSON,
    BigUnicode,
    Contacts,
    Conversations,
    Event,
    History,
    MessageStatus,
    Send,
    Status,
    Subscribe,
    Trust,
    Typing,
    Unsubscribe,
    WaitDelivered,
    normalize_timestamp,
)
from sixchat.agent.control.server import ControlProtocol, ControlServerFactory, listen_control
from sixchat.agent.control.unixsocket import PeerCredentials, check_peer_uid, peer_credentials
from sixchat.agent.datadir import (
    SOCKET_NAME,
    agent_dirs,
    default_data_dir,
    prepare_data_dir,
    resolve_data_dir,
    sixchat_data_home,
)
from sixchat.agent.errors import (
    ERRORS,
    AgentAlreadyRunning,
    AgentDisconnected,
    AgentFailure,
    BadArgument,
    ControlError,
    DataDirError,
    NoAgentRunning,
    NotConnected,
    PeerRefused,
    UnknownIdentity,
    UnknownMessage,
)
from sixchat.agent.events import EVENT_TYPES

__all__ = [
    "ERRORS",
    "EVENT_TYPES",
    "SOCKET_NAME",
    "AgentAlreadyRunning",
    "AgentDisconnected",
    "AgentFailure",
    "BadArgument",
    "BigUnicode",
    "Contacts",
    "ControlClient",
    "ControlError",
    "ControlProtocol",
    "ControlServerFactory",
    "Conversations",
    "DataDirError",
    "Event",
    "History",
    "JSON",
    "MessageStatus",
    "NoAgentRunning",
    "NotConnected",
    "PeerCredentials",
    "PeerRefused",
    "Send",
    "Status",
    "Subscribe",
    "Trust",
    "Typing",
    "UnknownIdentity",
    "UnknownMessage",
    "Unsubscribe",
    "WaitDelivered",
    "agent_dirs",
    "check_peer_uid",
    "connect_control",
    "default_data_dir",
    "listen_control",
    "normalize_timestamp",
    "peer_credentials",
    "prepare_data_dir",
    "resolve_data_dir",
    "sixchat_data_home",
]
