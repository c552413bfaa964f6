"""
The client end of the control interface: L{ControlClient} is an L{IUserAgent} whose methods run
in the agent, and L{connect_control} finds the agent of a data directory and checks that the
process answering there is ours before anything is sent to it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent.control.commands import (
    Cancel,
    Contacts,
    Conversations,
    Event,
    Files,
    History,
    MessageStatus,
    Send,
    SendFile,
    Status,
    Subscribe,
    Trust,
    Typing,
    Unsubscribe,
    WaitDelivered,
)
from sixchat.agent.control.unixsocket import check_peer_uid, peer_credentials, socket_path
from sixchat.agent.errors import (
    AgentDisconnected,
    AgentFailure,
    ControlError,
    NoAgentRunning,
    PeerRefused,
)
from sixchat.agent.interfaces import IAgentEvents, IUserAgent

__all__ = ["ControlClient", "connect_control"]

log = Logger()


def _client_error(failure: Failure, what: str) -> Failure:
    """The client side's view of a failed call, as a one-line L{ControlError}."""
    if failure.check(ControlError):
        return failure
    if failure.check(error.ConnectionLost, error.ConnectionDone, amp.ProtocolSwitched):
        return Failure(AgentDisconnected("the connection to the agent was lost"))
    if failure.check(amp.UnhandledCommand):
        return Failure(
            AgentFailure(f"the agent does not understand {what}; is it an older sixchat?")
        )
    if failure.check(amp.UnknownRemoteError, amp.RemoteAmpError):
        return Failure(AgentFailure(f"the agent failed during {what}; see its log"))
    return failure


@implementer(IUserAgent)
class ControlClient(amp.AMP):
    """
    The client end: an L{IUserAgent} whose methods run in the agent. Events arrive at the
    observers added with L{addObserver} once L{subscribe} (or the first L{addObserver}) has
    asked for them. L{disconnected} fires (with the reason's exception) when the connection
    ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._observers: list[IAgentEvents] = []
        self.subscribed = False
        #: True once the agent dropped us for falling behind (an C{overflow} event arrived).
        self.overflowed = False
        #: Fires with the exception that ended the connection (never errbacks).
        self.disconnected: defer.Deferred[BaseException] = defer.Deferred()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if not self.disconnected.called:
            self.disconnected.callback(reason.value or error.ConnectionDone())

    def _remote(self, command: type[amp.Command], what: str, **kw: Any) -> defer.Deferred[Any]:
        try:
            d = self.callRemote(command, **kw)
        except Exception:
            return defer.fail(Failure()).addErrback(_client_error, what)
        return d.addErrback(_client_error, what)

    # IUserAgent --------------------------------------------------------------------------

    def send(
        self,
        to: str,
        text: str,
        thread: str | None = None,
        reply_to: str | None = None,
        queue_unknown: bool = False,
    ) -> defer.Deferred[Any]:
        extra = {"queue_unknown": True} if queue_unknown else {}
        d = self._remote(
            Send, "send", to=to, text=text, thread=thread, reply_to=reply_to, **extra
        )
        return d.addCallback(lambda r: r["result"])

    def cancel(self, message_id: str) -> defer.Deferred[Any]:
        d = self._remote(Cancel, "cancel", message_id=message_id)
        return d.addCallback(lambda r: r["result"])

    def sendFile(self, to: str, path: str) -> defer.Deferred[Any]:
        d = self._remote(SendFile, "sendFile", to=to, path=path)
        return d.addCallback(lambda r: r["result"])

    def files(self) -> defer.Deferred[Any]:
        return self._remote(Files, "files").addCallback(lambda r: r["files"])

    def waitDelivered(self, message_id: str, timeout: float) -> defer.Deferred[Any]:
        d = self._remote(
            WaitDelivered, "waitDelivered", message_id=message_id, timeout=float(timeout)
        )
        return d.addCallback(lambda r: r["result"])

    def status_of(self, message_id: str) -> defer.Deferred[Any]:
        d = self._remote(MessageStatus, "status_of", message_id=message_id)
        return d.addCallback(lambda r: r["result"])

    def history(self, peer: str | None, since: str | None, limit: int) -> defer.Deferred[Any]:
        d = self._remote(History, "history", peer=peer, since=since, limit=limit)
        return d.addCallback(lambda r: r["messages"])

    def conversations(self) -> defer.Deferred[Any]:
        return self._remote(Conversations, "conversations").addCallback(
            lambda r: r["conversations"]
        )

    def contacts(self) -> defer.Deferred[Any]:
        return self._remote(Contacts, "contacts").addCallback(lambda r: r["contacts"])

    def status(self) -> defer.Deferred[Any]:
        return self._remote(Status, "status").addCallback(lambda r: r["status"])

    def trust(
        self, identity: str, accept_new_key: bool, forget_old: bool = False
    ) -> defer.Deferred[Any]:
        d = self._remote(
            Trust,
            "trust",
            identity=identity,
            accept_new_key=accept_new_key,
            forget_old=forget_old,
        )
        return d.addCallback(lambda r: r["result"])

    def typing(self, to: str, state: str) -> defer.Deferred[None]:
        return self._remote(Typing, "typing", to=to, state=state).addCallback(lambda _: None)

    def addObserver(self, observer: IAgentEvents) -> None:
        """Add an observer; the first one subscribes to every event if not subscribed yet."""
        self._observers.append(observer)
        if not self.subscribed:
            self.subscribe().addErrback(
                lambda f: log.failure("could not subscribe to agent events", f)
            )

    def removeObserver(self, observer: IAgentEvents) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    # events ------------------------------------------------------------------------------

    def subscribe(
        self, types: Iterable[str] | None = None, peer: str | None = None
    ) -> defer.Deferred[None]:
        """Ask for events (all, or only C{types} / about C{peer}); fires once in effect."""
        self.subscribed = True
        d = self._remote(
            Subscribe, "subscribe", types=list(types) if types is not None else None, peer=peer
        )
        return d.addCallback(lambda _: None)

    def unsubscribe(self) -> defer.Deferred[None]:
        self.subscribed = False
        return self._remote(Unsubscribe, "unsubscribe").addCallback(lambda _: None)

    @Event.responder
    def _event(self, event: Any) -> dict[str, Any]:
        if isinstance(event, dict):
            if event.get("type") == "overflow":
                self.overflowed = True
            for observer in list(self._observers):
                try:
                    observer.agentEvent(event)
                except Exception:
                    log.failure("event observer failed")
        return {}


async def _connect(reactor: Any, data_dir: str, timeout: float) -> ControlClient:
    path = socket_path(data_dir)
    no_agent = NoAgentRunning(
        f"no sixchat agent is running for {data_dir} (start one with twistd -n sixchat …)"
    )
    endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=timeout)
    try:
        client: ControlClient = await endpoint.connect(protocol.Factory.forProtocol(ControlClient))
    except error.ConnectionRefusedError:
        raise no_agent from None
    except error.ConnectError as e:
        code = getattr(e, "osError", None)
        if code in (errno.ENOENT, errno.ENOTDIR):
            raise no_agent from None
        if code == errno.EACCES:
            raise PeerRefused(
                f"permission denied on {path}: the agent there belongs to another user"
            ) from None
        raise AgentDisconnected(f"cannot connect to the agent on {path}: {e}") from None
    except error.TimeoutError:
        raise AgentDisconnected(f"the agent on {path} does not accept connections") from None
    creds = peer_credentials(client.transport)
    if creds is not None:
        try:
            check_peer_uid(creds.uid, os.geteuid())
        except PeerRefused:
            transport: Any = client.transport
            transport.abortConnection()
            raise PeerRefused(
                f"the process answering on {path} runs as uid {creds.uid}, not as you"
            ) from None
    return client


def connect_control(
    reactor: Any, data_dir: str, timeout: float = 10
) -> defer.Deferred[ControlClient]:
    """
    Connect to the agent serving C{data_dir}. Fails with L{NoAgentRunning} (a message saying
    how to start one) when nothing listens there, and with L{PeerRefused} when the socket is
    another user's. The server's uid is checked too (C{SO_PEERCRED}): a socket planted in a
    directory we were pointed at must not receive our messages.
    """
    return defer.ensureDeferred(_connect(reactor, data_dir, timeout))
