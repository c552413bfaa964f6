"""
Files uploaded from the page (C{POST /api/files}). The agent sends a file from disk when it
is delivered, and again from an offset when a transfer resumes, so an upload is kept under
C{<data-dir>/web-uploads/<random>/<name>} until the agent is done with it: removed once the
transfer is delivered, rejected, failed, expired or cancelled (the agent's events say so), or
at once when the agent refuses to queue it. Disk work runs in the reactor's thread pool.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from sixchat.agent.interfaces import IAgentEvents

__all__ = ["FINAL_STATES", "Uploads"]

log = Logger()

#: An outgoing transfer in one of these states no longer reads its source.
FINAL_STATES = frozenset({"delivered", "rejected", "failed", "expired", "cancelled"})


@implementer(IAgentEvents)
class Uploads:
    """The upload folder of one agent; an agent observer that cleans up after transfers."""

    def __init__(self, reactor: Any, agent: Any, folder: str) -> None:
        self.reactor = reactor
        self.agent = agent
        self.folder = os.path.abspath(folder)

    def _thread(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    def store(self, content: Any, name: str) -> defer.Deferred[str]:
        """Copy a request body (a file object) to a new private folder; fires with the path."""
        path = os.path.join(self.folder, secrets.token_hex(8), name)
        return self._thread(_copy, content, path).addCallback(lambda _: path)

    def owns(self, path: str | None) -> bool:
        return bool(path) and os.path.dirname(os.path.dirname(str(path))) == self.folder

    def discard(self, path: str) -> defer.Deferred[None]:
        """Remove an upload (its folder); nothing outside the upload folder."""
        if not self.owns(path):
            return defer.succeed(None)
        return self._thread(shutil.rmtree, os.path.dirname(path), True)

    # IAgentEvents ------------------------------------------------------------------------

    def agentEvent(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind not in ("file", "delivery") or event.get("state") not in FINAL_STATES:
            return
        if kind == "file" and event.get("direction") != "out":
            return
        transfer_id = event.get("id")
        d = defer.maybeDeferred(self.agent.files)

        def found(transfers: list[dict[str, Any]]) -> Any:
            for t in transfers:
                if t["id"] == transfer_id and t["direction"] == "out" and self.owns(t["path"]):
                    return self.discard(t["path"])
            return None

        d.addCallback(found)
        d.addErrback(lambda f: log.failure("removing a delivered upload failed", f))


def _copy(content: Any, path: str) -> None:
    """The body to C{path}, in a new folder only we can read."""
    os.makedirs(os.path.dirname(path), mode=0o700)
    content.seek(0)
    with open(path, "xb") as out:
        shutil.copyfileobj(content, out, 1 << 20)
