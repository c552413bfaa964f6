"""
The receiving side of every session, ours or the peer's (L{ISessionObserver}): sessions
enter and leave the session table, a message is committed to the store before its receipt
is sent, and duplicates are receipted again without being stored twice (§8.2). A session a
CRL revoked stores nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent import events
from sixchat.filetransfer import Accept, Chunk, Done, FileOffer, Reject
from sixchat.protocol import ISessionObserver, Session
from sixchat.stanzas import Message, Typing, format_timestamp

if TYPE_CHECKING:
    from sixchat.agent.crls import CRLUpdater
    from sixchat.agent.pinning import KeyChanges
    from sixchat.agent.sessions import SessionTable
    from sixchat.agent.store import MessageStore

__all__ = ["Inbox"]

log = Logger(namespace="sixchat.agent.service")


@implementer(ISessionObserver)
class Inbox:
    """
    @param kick: told the peer of every new session (we may owe it messages).
    @param key_changes: told of a session whose peer presented a new key (the policy let it
        through: C{accept} or C{warn}; a refused one never becomes a session).
    """

    def __init__(
        self,
        sessions: SessionTable,
        crls: CRLUpdater,
        store: MessageStore,
        emit: Callable[[dict[str, Any]], None],
        kick: Callable[[str], None],
        now: Callable[[], datetime],
        key_changes: KeyChanges,
        files: tuple[Any, Any] | None = None,
        sync: Any = None,
    ) -> None:
        self.sessions = sessions
        self.crls = crls
        self.store = store
        self.emit = emit
        self.kick = kick
        self.now = now
        self.key_changes = key_changes
        #: (L{FileInbox}, L{FileOutbox}) when the agent takes files (§8.7).
        self.files = files
        #: The L{OwnNodeSync} (sessions with our own other nodes), when the agent syncs.
        self.sync = sync

    def sessionStarted(self, session: Session) -> None:
        if self.sessions.endIfRevokedSince(session, self.crls):
            return
        self.sessions.add(session)
        result = session.result
        if self.sync is not None and self.sync.isOwn(result.peer_name):
            # Another node of ours: not a contact, nothing owed to it; it syncs.
            self.emit(events.session_opened_event(session))
            self.sync.sessionStarted(session)
            return
        self.store.touch_contact(result.peer_name, self.now()).addErrback(lambda f: None)
        if result.pin_status == "changed":
            role = "incoming" if session.connection.role == "responder" else "outgoing"
            self.key_changes.changed(
                result.peer_name, result.peer.spki_sha256, f"in an {role} handshake"
            )
        self.emit(events.session_opened_event(session))
        # A peer that reaches us may be one we owe messages: try now.
        self.kick(result.peer_name)

    def messageReceived(self, session: Session, message: Message) -> defer.Deferred[None]:
        sender = session.result.peer_name
        if session in self.sessions.revoked:
            # Arrived with the records that completed the handshake: not stored, and no
            # receipt (the connection is failed), so the sender keeps it as undelivered.
            log.info("dropped message {id} from {peer}: revoked", id=message.id, peer=sender)
            return defer.succeed(None)
        d = self.store.store_incoming(sender, message, self.now())

        def stored(new: bool) -> None:
            if new:
                received_at = format_timestamp(self.now())
                self.emit(events.message_event(sender, message, received_at))
            # The receipt goes out when this returns: the row is committed (§8.2).

        return d.addCallback(stored)

    def stanzaReceived(self, session: Session, stanza: object) -> None:
        if self.sync is not None and session not in self.sessions.revoked:
            if self.sync.stanza(session, stanza):
                return
        if isinstance(stanza, Typing):
            self.emit(events.typing_event(session.peer, stanza.state))
        elif self.files is not None and session not in self.sessions.revoked:
            incoming, outgoing = self.files
            if isinstance(stanza, FileOffer | Chunk | Done):
                incoming.stanza(session, stanza)
            elif isinstance(stanza, Accept | Reject):
                outgoing.stanza(session, stanza)

    def sessionEnded(self, session: Session, reason: Failure) -> None:
        self.sessions.remove(session)
        if self.sync is not None:
            self.sync.sessionEnded(session)
        if self.files is not None:
            for side in self.files:
                side.sessionEnded(session)
        self.emit(events.session_closed_event(session))
