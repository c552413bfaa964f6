"""
The spool: copies of this identity's outgoing files that another node of ours handed to
this one (docs/protocol.md 8.6, "Files"), so that this node can deliver them too. They live
in C{<data-dir>/spool/} (mode 0700, never the user's files directory), under the file's
sanitised name (L{sixchat.agent.files.disk.FilesDir}: nothing is ever written outside it),
with partial copies in C{spool/.partial/}.

A copy is removed once its file is final — owed to no recipient node (delivered to every
node it was owed to, failed or expired) or cancelled —: L{FileSpool.sweep} looks when the
agent starts, when a delivery state becomes final here or the file is cancelled here, and
after each merged sync batch that changed something (a receipt or a cancel another node
got). The transfer row stays, without a path, so C{sixchat files} still lists the file with
its state. The file a user queued (its source) is never touched.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from sixchat.agent.files.disk import FilesDir
from sixchat.agent.files.sending import FileOutbox
from sixchat.agent.store.files import TransferStore

__all__ = ["FileSpool"]

log = Logger(namespace="sixchat.agent.service")


def _inside(root: str, path: str) -> bool:
    """Whether C{path} is in the directory C{root} (symbolic links resolved)."""
    real = os.path.realpath(path)
    return os.path.commonpath([root, real]) == root and real != root


def _remove(root: str, paths: list[str]) -> None:
    """In a thread: unlink each path that is inside the spool."""
    real_root = os.path.realpath(root)
    for path in paths:
        if not _inside(real_root, path):
            log.warn("not removing {path}: outside the spool", path=path)
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class FileSpool:
    """Removes spooled copies whose file is final (one sweep at a time, coalesced)."""

    def __init__(
        self, reactor: Any, files: FilesDir, transfers: TransferStore, outbox: FileOutbox
    ) -> None:
        self.reactor = reactor
        self.files = files
        self.transfers = transfers
        self.outbox = outbox
        self.running = True
        self._sweeping = False
        self._again = False
        #: Ids whose copy was removed (tests, logs).
        self.swept: list[str] = []

    def stop(self) -> None:
        self.running = False

    def sweep(self) -> None:
        if not self.running:
            return
        if self._sweeping:
            self._again = True
            return
        self._sweeping = True
        d = defer.ensureDeferred(self._sweep())
        d.addErrback(
            lambda f: None if not self.running else log.failure("cleaning the spool failed", f)
        )

        def done(_: object) -> None:
            self._sweeping = False
            if self._again:
                self._again = False
                self.sweep()

        d.addBoth(done)

    async def _sweep(self) -> None:
        for record in await self.transfers.spool_final():
            if not self.running:
                return
            paths = [p for p in (record.path, record.partial) if p is not None]
            await threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), _remove, self.files.root, paths
            )
            await self.transfers.spool_removed(record.peer, record.id)
            self.outbox.held.discard(record.id)
            self.swept.append(record.id)
            log.info(
                "removed the spooled copy of our file {id} to {peer}: it is {state}",
                id=record.id, peer=record.peer_display, state="final",
            )  # fmt: skip
