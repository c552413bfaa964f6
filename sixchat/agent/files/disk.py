"""
The files directory, blocking: the agent runs every function here in a thread.

Incoming files are written to a partial file, C{<files-dir>/.partial/<hash>.part} (the name
is a hash of sender and id, never the offered name), fsynced, and on success hard-linked
under their sanitised name (L{sixchat.filetransfer.names}): C{os.link} fails rather than
replace an existing name or follow a planted symlink, so the next free C{name (n).ext} is
taken and nothing is ever written outside the directory or over another file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence

from sixchat.filetransfer.machine import Hasher
from sixchat.filetransfer.names import candidate_names, sanitize_name

__all__ = ["BLOCK", "FilesDir", "PartialWriter", "file_digest"]

#: Read size when hashing.
BLOCK = 1024 * 1024
#: At most this many buffers per C{writev} (POSIX guarantees 16; Linux takes 1,024).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16
_FADVISE: Callable[[int, int, int, int], None] | None = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)
_MAX_CANDIDATES = 10_000


def file_digest(path: str) -> tuple[int, bytes]:
    """The size and SHA-256 of a regular file (what an offer announces)."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        while block := f.read(BLOCK):
            hasher.update(block)
            size += len(block)
    return size, hasher.digest()


class PartialWriter:
    """Appends to one partial file; L{sync} makes what was written durable."""

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        flags = (
            os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        self._fd = os.open(path, flags, 0o600)
        try:
            os.ftruncate(self._fd, offset)
            os.lseek(self._fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise
        self.written = offset
        self.synced = offset

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(data)

    def write_all(self, pieces: Sequence[bytes]) -> None:
        """Append C{pieces} in order, with C{writev}: a batch of chunks is never joined."""
        for start in range(0, len(pieces), _IOV_MAX):
            group = pieces[start : start + _IOV_MAX]
            size = sum(map(len, group))
            n = os.writev(self._fd, group)
            if n < size:  # a short write (a full disk, a signal): the rest one by one
                rest = memoryview(b"".join(group))[n:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
            self.written += size

    def write_hashed(self, pieces: Sequence[bytes], hasher: Hasher, sync: bool) -> int:
        """
        Hash and append C{pieces} (a batch of chunks, in the disk thread: the reactor never
        hashes 32 KiB per chunk), then fsync if asked; returns the durable length.
        """
        if pieces:
            for piece in pieces:
                hasher.update(piece)
            self.write_all(pieces)
        return self.sync() if sync else self.synced

    def sync(self) -> int:
        """
        fsync; returns the durable length. The bytes now durable leave the page cache
        (C{POSIX_FADV_DONTNEED}, where there is one): a received file is not read back here
        (its SHA-256 is computed as it is written), and without this a large file filled
        the cache with pages the kernel then had to reclaim, which on the benchmark's
        machine cost the disk thread more CPU than writing them (docs/benchmarks.md).
        """
        if self._fd >= 0:
            os.fsync(self._fd)
            if _FADVISE is not None and self.written > self.synced:
                _FADVISE(self._fd, self.synced, self.written - self.synced, _DONTNEED)
            self.synced = self.written
        return self.synced

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FilesDir:
    """Where incoming files land (C{--files-dir}, default C{<data-dir>/files})."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.partial_dir = os.path.join(self.root, ".partial")

    def prepare(self) -> None:
        for path in (self.root, self.partial_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def partial_path(self, peer: str, file_id: str) -> str:
        key = hashlib.sha256(f"{peer}\0{file_id}".encode()).hexdigest()[:40]
        return os.path.join(self.partial_dir, key + ".part")

    def free_space(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def load_prefix(self, partial: str, durable: int) -> tuple[int, hashlib._Hash]:
        """
        The prefix to resume from: at most C{durable} bytes (what was fsynced and recorded)
        of the partial file, and the SHA-256 state rebuilt from them.
        """
        hasher = hashlib.sha256()
        if durable <= 0:
            return 0, hasher
        try:
            f = open(partial, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return 0, hasher
        held = 0
        with f:
            while held < durable:
                block = f.read(min(BLOCK, durable - held))
                if not block:
                    break
                hasher.update(block)
                held += len(block)
        return held, hasher

    def open_partial(self, partial: str, offset: int) -> PartialWriter:
        return PartialWriter(partial, offset)

    def discard(self, partial: str) -> None:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass

    def finish(self, writer: PartialWriter, name: str) -> str:
        """Sync and close the partial file, give it its final name; returns the path."""
        writer.sync()
        writer.close()
        for n, candidate in enumerate(candidate_names(sanitize_name(name))):
            if n >= _MAX_CANDIDATES:
                raise OSError("no free name for the file")
            final = os.path.join(self.root, candidate)
            try:
                os.link(writer.path, final, follow_symlinks=False)
            except FileExistsError:
                continue
            break
        os.unlink(writer.path)
        self._sync_dir(self.root)
        return final

    @staticmethod
    def _sync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
