"""
Where an agent keeps its files: one data directory per identity under
C{$XDG_DATA_HOME/sixchat/}, mode 0700, holding the store, the CRLs and the control socket.
The one definition of that rule, for the twistd plugin, the agent and the command line alike.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Mapping

from sixchat.agent.errors import AgentError, BadArgument, DataDirError, NoAgentRunning
from sixchat.errors import StartupError
from sixchat.identity import is_valid_identity

__all__ = [
    "SOCKET_NAME",
    "DataDirInUse",
    "DataDirLock",
    "agent_dirs",
    "default_data_dir",
    "prepare_data_dir",
    "resolve_data_dir",
    "sixchat_data_home",
]

#: The control socket's name inside the data directory.
SOCKET_NAME = "control.sock"


def sixchat_data_home(environ: Mapping[str, str] | None = None) -> str:
    """C{$XDG_DATA_HOME/sixchat} (C{~/.local/share/sixchat} when the variable is unset)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "sixchat")


def default_data_dir(identity: str, environ: Mapping[str, str] | None = None) -> str:
    """
    C{$XDG_DATA_HOME/sixchat/<identity>/}: one directory per identity, so several agents of
    one user never share a database or a socket.
    """
    if not is_valid_identity(identity):
        raise BadArgument(f"{identity!r} is not an identity (local@domain)")
    return os.path.join(sixchat_data_home(environ), identity) + os.sep


def agent_dirs(environ: Mapping[str, str] | None = None) -> list[str]:
    """Directories under L{sixchat_data_home} holding a control socket, sorted."""
    home = sixchat_data_home(environ)
    try:
        names = sorted(os.listdir(home))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(home, name)
        try:
            if stat.S_ISSOCK(os.stat(os.path.join(path, SOCKET_NAME)).st_mode):
                found.append(path)
        except OSError:
            continue
    return found


def resolve_data_dir(
    data_dir: str | None, identity: str | None, environ: Mapping[str, str] | None = None
) -> str:
    """
    The data directory a CLI command talks to: C{--data-dir} if given; else
    C{--as IDENTITY}'s default directory; else the only directory under
    L{sixchat_data_home} with a control socket.

    @raise NoAgentRunning: with the candidates when there is no single answer.
    """
    if data_dir:
        return data_dir
    if identity:
        return default_data_dir(identity, environ)
    found = agent_dirs(environ)
    if len(found) == 1:
        return found[0]
    home = sixchat_data_home(environ)
    if not found:
        raise NoAgentRunning(
            f"no sixchat agent found under {home} (start one with twistd -n sixchat …, "
            "or pass --data-dir)"
        )
    names = ", ".join(os.path.basename(p) for p in found)
    raise NoAgentRunning(f"several agents under {home} ({names}): choose one with --as IDENTITY")


def prepare_data_dir(data_dir: str) -> str:
    """
    Create C{data_dir} if missing and make it mode 0700; returns its absolute path.

    @raise DataDirError: if it is not a directory, belongs to another user, or stays
        accessible to others because C{chmod} failed.
    """
    path = os.path.abspath(data_dir)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise DataDirError(f"cannot create data directory {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"data directory {path} is not a directory")
    me = os.geteuid()
    if st.st_uid != me:
        raise DataDirError(
            f"data directory {path} belongs to uid {st.st_uid}, not to this user (uid {me}); "
            "refusing to put the control socket there"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise DataDirError(
                    f"data directory {path} is accessible to other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}) and chmod 700 failed: "
                    f"{e.strerror or e}"
                ) from None
    return path


class DataDirInUse(AgentError, StartupError):
    """The data directory's lock is held by another process (C{pid}, when it wrote it)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class DataDirLock:
    """One agent per data directory: an exclusive C{flock} on C{agent.lock}, held while up."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "agent.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """
        Take the lock, writing our PID into the file.

        @raise DataDirInUse: another process holds it (its PID in the message when known).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = self.holder(fd)
            os.close(fd)
            who = "another sixchat agent" + (f" (PID {pid})" if pid else "")
            raise DataDirInUse(
                f"{who} is already running on {os.path.dirname(self.path)}: stop it, "
                "or give this one another --data-dir",
                pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @staticmethod
    def holder(fd: int) -> int | None:
        """The PID the holder wrote into the lock file, or None (not yet written, garbage)."""
        try:
            text = os.pread(fd, 32, 0).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
