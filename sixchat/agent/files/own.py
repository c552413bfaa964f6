"""
Files between the nodes of one identity (docs/protocol.md 8.6, "Files"): the received files
and the bytes of our outgoing files handed on to each linked own node (L{FileHandOn}), the
copies another node handed to this one (L{FileSpool}), and which node delivers an outgoing
file — only one that holds its bytes. L{UserAgentService} makes one when own-device sync is
on and calls it at the points below; without sync there is none and files stay on the node.
"""

from __future__ import annotations

import os
from typing import Any

from sixchat.agent.files.disk import FilesDir
from sixchat.agent.files.handon import FileHandOn
from sixchat.agent.files.receiving import FileInbox
from sixchat.agent.files.sending import FileOutbox
from sixchat.agent.files.spool import FileSpool
from sixchat.agent.outbox import OutboxScheduler
from sixchat.agent.ownnodes import OwnNodeSync
from sixchat.agent.store.files import TransferRecord, TransferStore

__all__ = ["OwnNodeFiles"]


class OwnNodeFiles:
    """The file side of own-device sync, wired between the agent's parts."""

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        own_nodes: OwnNodeSync,
        transfers: TransferStore,
        file_outbox: FileOutbox,
        file_inbox: FileInbox,
        outbox: OutboxScheduler,
    ) -> None:
        self.own_nodes = own_nodes
        self.file_outbox = file_outbox
        self.outbox = outbox
        self.handon = FileHandOn(
            transfers, file_outbox, own_nodes.file_links, own_nodes.takesOutgoingFiles
        )
        #: Copies of our outgoing files another node of ours handed to us.
        self.spool_dir = FilesDir(os.path.join(data_dir, "spool"))
        self.spool = FileSpool(reactor, self.spool_dir, transfers, file_outbox)
        own_nodes.on_linked = self.handon.kick
        file_inbox.is_own = lambda session: own_nodes.isOwn(session.peer)
        file_inbox.on_stored = lambda record: self.handon.kick()
        file_inbox.on_handed_on = self.handon.holds
        file_inbox.spool = self.spool_dir
        file_inbox.on_spooled = self.spooled

    def prepare(self) -> None:
        """Create the spool directory (with the data directory, before the store opens)."""
        self.spool_dir.prepare()

    def start(self) -> None:
        self.spool.sweep()  # copies whose file became final while we were away

    def stop(self) -> None:
        self.handon.stop()
        self.spool.stop()

    def elsewhere(self, message: Any) -> bool:
        """
        Whether another node of ours delivers C{message} now ("Delivery by any node"). A file
        only a node holding its bytes delivers: never one without them, and among those that
        hold them, the same rule as for messages.
        """
        files = self.file_outbox
        if message.id in files.ids:
            if message.id not in files.held:
                return True
            return self.own_nodes.defers(message.origin, files.holders.get(message.id, set()))
        return self.own_nodes.defers(message.origin)

    def synced(self, applied: Any) -> None:
        """
        A merged sync batch: outgoing files learnt from another node of ours are files, never
        messages, here; spooled copies whose file another node saw become final are removed.
        """
        for _, file_id in applied.files:
            self.file_outbox.ids.add(file_id)
        if applied.outgoing or applied.changed:
            self.spool.sweep()  # (a receipt or a cancel another node got)

    def spooled(self, record: TransferRecord) -> None:
        """A copy of our outgoing file is in the spool: this node may deliver it now."""
        self.file_outbox.ids.add(record.id)
        self.file_outbox.held.add(record.id)
        self.outbox.kick(record.peer_display)
        self.handon.kick()  # our other nodes learn we hold it (or get it too)
        self.spool.sweep()  # final already (a receipt came meanwhile): not kept

    def queued(self) -> None:
        """A file was queued here: its bytes go to our other nodes."""
        self.handon.kick()

    def ended(self, message_id: str) -> None:
        """A message became final or was cancelled here: a spooled copy is not needed."""
        if message_id in self.file_outbox.ids:
            self.spool.sweep()
