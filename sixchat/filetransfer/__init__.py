"""
File transfer (spec §8.7, §11.9), sans-IO: the stanzas (L{stanzas}), the transfer state
machines of both roles (L{machine}) and the receiver's name rules (L{names}). No Twisted
import: the agent drives these with its own disk and network I/O.
"""

from sixchat.filetransfer.machine import (
    Check,
    FileLimits,
    FileReceiver,
    FileSender,
    IncomingFile,
    OutgoingFile,
    Verified,
)
from sixchat.filetransfer.names import sanitize_name
from sixchat.filetransfer.stanzas import (
    FILE_STANZAS,
    MAX_CHUNK,
    Accept,
    Chunk,
    Done,
    FileOffer,
    Reject,
)

__all__ = [
    "FILE_STANZAS",
    "MAX_CHUNK",
    "Accept",
    "Check",
    "Chunk",
    "Done",
    "FileLimits",
    "FileOffer",
    "FileReceiver",
    "FileSender",
    "IncomingFile",
    "OutgoingFile",
    "Reject",
    "Verified",
    "sanitize_name",
]
