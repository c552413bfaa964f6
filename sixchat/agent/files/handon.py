"""
Received files handed on to this identity's other nodes (docs/protocol.md 8.6, "Files"): a
file one node received from a peer (stored, SHA-256 checked) is offered to each other node
of ours linked to it, through the file transfer of §8.7 on the own-node session, the offer
naming the peer (C{<file … from="bob@example.com"/>}). The other node stores it under that
peer with the same record fields, so C{sixchat files} lists it on every node.

Exactly once per node and file: the store remembers which own node holds which received file
(C{sync_files}, keyed by node and (peer, id)), written when that node receipts our offer or
when it handed the file to us; a file is offered to a node only while no row says the node
has it, so a node never offers a file back to the node it got it from. A node that already
holds the file answers the offer with a receipt (§11.9), no bytes sent. A cut transfer
resumes from the receiver's durable prefix on the next link, like any file.

Outgoing files too (the bytes of a file our identity sends, C{<file … to="PEER"/>}): each
node that holds them (it queued the file, or holds a copy in its spool) hands them to each
own node not known to hold them while the file is still owed to some recipient node, so
that another node of ours can deliver it (docs/protocol.md 8.6, "Delivery by any node").
Which own node holds which is in C{sync_out_files} and in the file outbox's C{holders}, the
delivery rule's input; the two ends of a hand-on each record the other as a holder.

One file at a time per node (two nodes that dialled each other at once have two links: one
of them carries the files; when it ends, another takes over), oldest first, looked up again
after each run (what arrived meanwhile is offered too). A file the other node refuses
(C{reject}, C{error}: its size limit, its disk, C{busy} while the peer itself is sending it
the same file) is not offered again on that link; the next link tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sixchat.agent.files.sending import FileOutbox
from sixchat.agent.store.files import TransferStore
from sixchat.session import Session, SessionLost, StanzaRefused

__all__ = ["FileHandOn"]

log = Logger(namespace="sixchat.agent.service")


class FileHandOn:
    """
    @param links: the sessions with our other nodes that sync, each with the node's name.
    """

    def __init__(
        self,
        transfers: TransferStore,
        outbox: FileOutbox,
        links: Callable[[], list[tuple[Session, str]]],
        takes_outgoing: Callable[[Session], bool] = lambda session: True,
    ) -> None:
        self.transfers = transfers
        self.outbox = outbox
        self.links = links
        #: Whether the node on a session takes our outgoing files (its hello said so).
        self.takes_outgoing = takes_outgoing
        self.running = True
        #: Nodes being handed files (one run per node), and those to look at again after it.
        self._busy: set[str] = set()
        self._again: set[str] = set()
        #: Files the node on a session refused: (direction, peer, id) per session, not
        #: offered again.
        self._refused: dict[Session, set[tuple[str, str, str]]] = {}

    def kick(self) -> None:
        """A link came up or a file was stored: offer what each linked node lacks."""
        if not self.running:
            return
        for gone in [s for s in self._refused if s.ended]:
            del self._refused[gone]
        for session, node in self.links():
            if node in self._busy:
                self._again.add(node)
                continue
            self._busy.add(node)
            d = defer.ensureDeferred(self._run(session, node))
            d.addErrback(self._failed, session, node)

    def stop(self) -> None:
        self.running = False

    def holds(self, session: Session, direction: str, peer: str, file_id: str) -> None:
        """
        The node on C{session} handed us this file or already had it: never offered to it
        (and, for our outgoing file, a node that can deliver it).
        """
        for linked, node in self.links():
            if linked is session:
                self._noted(node, direction, peer, file_id).addErrback(
                    lambda f: log.debug("sync_files: {e}", e=f.getErrorMessage())
                )

    def _noted(self, node: str, direction: str, peer: str, file_id: str) -> defer.Deferred[None]:
        if direction == "in":
            return self.transfers.node_holds(node, peer, file_id)
        self.outbox.holders.setdefault(file_id, set()).add(node)
        return self.transfers.out_node_holds(node, peer, file_id)

    async def _run(self, session: Session, node: str) -> None:
        try:
            while self.running and not session.ended:
                self._again.discard(node)
                refused = self._refused.setdefault(session, set())
                # Outgoing files first: another node may have to deliver them.
                records = []
                if self.takes_outgoing(session):
                    records = await self.transfers.out_files_for_node(node)
                records += await self.transfers.files_for_node(node)
                todo = [r for r in records if (r.direction, r.peer, r.id) not in refused]
                if not todo and node not in self._again:
                    return
                for record in todo:
                    if not self.running or session.ended:
                        return
                    out = record.direction == "out"
                    what = "our file {id} to {peer}" if out else "file {id} from {peer}"
                    try:
                        if out:
                            await self.outbox.offer(session, record, to=record.peer_display)
                        else:
                            await self.outbox.offer(session, record, origin=record.peer_display)
                    except StanzaRefused as e:
                        refused.add((record.direction, record.peer, record.id))
                        log.info(
                            "our node {node} refused " + what + ": {reason}",
                            node=node, id=record.id, peer=record.peer_display,
                            reason=getattr(e, "reason", e),
                        )  # fmt: skip
                        continue
                    await self._noted(node, record.direction, record.peer, record.id)
                    log.info(
                        "handed " + what + " on to our node {node}",
                        id=record.id, peer=record.peer_display, node=node,
                    )  # fmt: skip
        finally:
            self._busy.discard(node)
            if session.ended and self.running:
                self.kick()  # another link with that node (if any) goes on

    def _failed(self, failure: Any, session: Session, node: str) -> None:
        if failure.check(SessionLost) or session.ended or not self.running:
            return  # the next link resumes
        log.failure("handing files on to our node {node} failed", failure, node=node)
