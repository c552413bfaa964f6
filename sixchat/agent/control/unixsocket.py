"""
The control socket itself: where it lives in the data directory and who is on the other end.

Authorisation is the file system: the data directory is mode 0700 and the socket
C{control.sock} mode 0600, both owned by the agent's user, so only that user (and root) can
reach it. As defence in depth both ends also ask the kernel who is on the other end
(C{SO_PEERCRED}, Linux): the server drops every connection whose effective uid is not the
agent's own, root included (root can read the agent's files anyway, but a root-owned process
talking to a user's agent is far more likely a mistake than an intention, and one rule is
easier to reason about); the client refuses a server of another uid, so a socket planted in a
directory it was pointed at never receives its messages. Both ends share this module so the
rule is written once.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from sixchat.agent.datadir import SOCKET_NAME
from sixchat.agent.errors import DataDirError, PeerRefused

__all__ = [
    "MAX_SOCKET_PATH",
    "PeerCredentials",
    "check_peer_uid",
    "peer_credentials",
    "socket_path",
]

#: Linux's C{sun_path} is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_path(data_dir: str) -> str:
    """
    The control socket of C{data_dir}. A path longer than a UNIX socket address can hold is
    refused here, with advice, rather than left to fail later with the kernel's terse error.
    """
    path = os.path.join(os.path.abspath(data_dir), SOCKET_NAME)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DataDirError(
            f"data directory path too long for a UNIX socket ({len(os.fsencode(path))} bytes "
            f"with /{SOCKET_NAME}, at most {MAX_SOCKET_PATH}); choose a shorter --data-dir"
        )
    return path


# -- peer credentials ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCredentials:
    """What the kernel says about the other end of a UNIX socket."""

    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("3i")


def peer_credentials(transport: Any) -> PeerCredentials | None:
    """
    The peer's credentials from C{SO_PEERCRED}, or C{None} where the platform has no such
    option (then the socket's file permissions remain the only check) or the transport has no
    real socket (in-memory tests).
    """
    sock = getattr(transport, "socket", None)
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None or not isinstance(sock, socket.socket):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def check_peer_uid(peer_uid: int, own_uid: int) -> None:
    """
    Refuse any uid but our own (root included; see the module docstring).

    @raise PeerRefused: with a message naming both uids.
    """
    if peer_uid != own_uid:
        raise PeerRefused(
            f"control connection from uid {peer_uid} refused: only uid {own_uid} may control "
            "this agent"
        )
