"""
The server end of the control interface: one L{ControlProtocol} per connection forwards the
commands of L{sixchat.agent.control.commands} to the agent and the agent's events back, and
L{listen_control} serves it on C{control.sock} in the data directory (see
L{sixchat.agent.control.unixsocket} for who may connect).

Events: a client sends L{Subscribe}; the server then calls L{Event} on it for each agent event
that passes the filter. Flow control is by acknowledgement: at most C{window} events are
unanswered at a time; further ones wait in a queue of at most C{max_queued}; past that the
client is too slow and is B{disconnected} (after a final C{{"type": "overflow"}} event) rather
than silently missing events: a client that gets disconnected knows it must re-read the
history, one that silently lost events would not. The agent therefore never buffers more than
C{window + max_queued} events per client.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent.control.commands import (
    MAX_HISTORY,
    MAX_TEXT,
    MAX_WAIT,
    TYPING_STATES,
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
    check_identity,
    normalize_timestamp,
)
from sixchat.agent.control.unixsocket import (
    PeerCredentials,
    check_peer_uid,
    peer_credentials,
    socket_path,
)
from sixchat.agent.datadir import prepare_data_dir
from sixchat.agent.errors import (
    ERRORS,
    AgentAlreadyRunning,
    AgentFailure,
    BadArgument,
    ControlError,
    DataDirError,
    PeerRefused,
)
from sixchat.agent.events import EVENT_TYPES
from sixchat.agent.interfaces import IAgentEvents, IUserAgent
from sixchat.errors import SixchatError

__all__ = [
    "ControlProtocol",
    "ControlServerFactory",
    "listen_control",
]

log = Logger()

#: Descriptions are AMP values (at most 65,535 bytes); errors are one line anyway.
_MAX_ERROR_TEXT = 2000


# -- the protocol --------------------------------------------------------------------------


def _reraise_as_control_error(failure: Failure, what: str) -> Failure:
    """
    Map what the agent raised to an AMP-transportable error. Unknown exceptions are logged
    here with their traceback and become a generic C{AGENT_FAILURE}: their text may hold
    anything, and an unmapped exception would make AMP close the connection.
    """
    value: Any = failure.value
    if failure.check(ControlError):
        cls = type(value)
        if cls in ERRORS:
            return Failure(cls(str(value)[:_MAX_ERROR_TEXT]))
        return Failure(AgentFailure(str(value)[:_MAX_ERROR_TEXT]))
    if failure.check(ValueError, TypeError):
        return Failure(BadArgument(str(failure.value)[:_MAX_ERROR_TEXT] or "bad argument"))
    if failure.check(defer.CancelledError):
        return Failure(AgentFailure(f"{what} was cancelled"))
    if failure.check(SixchatError):
        return Failure(AgentFailure(str(failure.value)[:_MAX_ERROR_TEXT]))
    log.failure("control command {what} failed", failure, what=what)
    return Failure(AgentFailure(f"internal error in the agent during {what}; see the agent's log"))


@implementer(IAgentEvents)
class ControlProtocol(amp.AMP):
    """
    One control connection. Forwards commands to the agent and, once subscribed, events to
    the client, with the acknowledgement window described in the module docstring.
    """

    factory: ControlServerFactory

    def __init__(self, factory: ControlServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.agent = factory.agent
        self.subscribed = False
        self._types: frozenset[str] | None = None
        self._peer: str | None = None
        self._in_flight = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._overflowed = False
        self._abort_timer: IDelayedCall | None = None
        self._pending: set[defer.Deferred[Any]] = set()
        self.credentials: PeerCredentials | None = None
        #: Ends the presence watch a subscription for one peer's presence asked for.
        self._following: Callable[[], None] | None = None

    # connection ------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        # amp.AMP logs every connection at info level; each CLI call is one, so the agent's
        # log would be mostly those lines. The same, at debug level.
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        log.debug("control connection established")
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.credentials = creds = peer_credentials(self.transport)
        if creds is not None:
            try:
                check_peer_uid(creds.uid, self.factory.uid)
            except PeerRefused as e:
                log.warn("{message} (pid {pid})", message=str(e), pid=creds.pid)
                transport: Any = self.transport
                transport.abortConnection()
                return
        self.factory.clients.add(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.clients.discard(self)
        self._stop_events()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        # Nobody is left to answer: stop waiting for the agent (e.g. a long WaitDelivered).
        for d in list(self._pending):
            d.cancel()
        log.debug("control connection lost")
        amp.BinaryBoxProtocol.connectionLost(self, reason)  # amp.AMP's, without its info line
        self.transport = None

    # commands --------------------------------------------------------------------------

    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, wrap: Callable[[Any], Any]
    ) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(fn, *args)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        d.addBoth(done)
        d.addCallbacks(wrap, _reraise_as_control_error, errbackArgs=(what,))
        return d

    @Send.responder
    def _send(
        self,
        to: str,
        text: str,
        thread: str | None = None,
        reply_to: str | None = None,
        queue_unknown: bool | None = None,
    ) -> defer.Deferred[Any]:
        check_identity(to, "recipient")
        if not text:
            raise BadArgument("empty message")
        if len(text) > MAX_TEXT:
            raise BadArgument(f"message too long ({len(text)} characters, at most {MAX_TEXT})")
        args: tuple[Any, ...] = (to, text, thread, reply_to)
        if queue_unknown:  # only then: an IUserAgent from before the option still works
            args += (True,)
        return self._call("send", self.agent.send, *args, wrap=lambda r: {"result": r})

    @Cancel.responder
    def _cancel(self, message_id: str) -> defer.Deferred[Any]:
        if not message_id:
            raise BadArgument("empty message id")
        return self._call(
            "cancel", self.agent.cancel, message_id, wrap=lambda r: {"result": r}
        )

    @SendFile.responder
    def _send_file(self, to: str, path: str) -> defer.Deferred[Any]:
        check_identity(to, "recipient")
        if not path or not os.path.isabs(path) or "\0" in path:
            raise BadArgument("the file's path must be absolute")
        return self._call("sendFile", self.agent.sendFile, to, path, wrap=lambda r: {"result": r})

    @Files.responder
    def _files(self) -> defer.Deferred[Any]:
        return self._call("files", self.agent.files, wrap=lambda r: {"files": r})

    @WaitDelivered.responder
    def _wait_delivered(self, message_id: str, timeout: float) -> defer.Deferred[Any]:
        if not message_id:
            raise BadArgument("empty message id")
        if not 0 <= timeout <= MAX_WAIT:
            raise BadArgument(f"timeout must be between 0 and {MAX_WAIT:.0f} seconds")
        return self._call(
            "waitDelivered",
            self.agent.waitDelivered,
            message_id,
            timeout,
            wrap=lambda r: {"result": r},
        )

    @MessageStatus.responder
    def _message_status(self, message_id: str) -> defer.Deferred[Any]:
        if not message_id:
            raise BadArgument("empty message id")
        return self._call(
            "status_of", self.agent.status_of, message_id, wrap=lambda r: {"result": r}
        )

    @History.responder
    def _history(
        self, limit: int, peer: str | None = None, since: str | None = None
    ) -> defer.Deferred[Any]:
        if peer is not None:
            check_identity(peer, "peer")
        if since is not None:
            since = normalize_timestamp(since)
        if not 1 <= limit <= MAX_HISTORY:
            raise BadArgument(f"limit must be between 1 and {MAX_HISTORY}")
        return self._call(
            "history", self.agent.history, peer, since, limit, wrap=lambda r: {"messages": r}
        )

    @Conversations.responder
    def _conversations(self) -> defer.Deferred[Any]:
        return self._call(
            "conversations", self.agent.conversations, wrap=lambda r: {"conversations": r}
        )

    @Contacts.responder
    def _contacts(self) -> defer.Deferred[Any]:
        return self._call("contacts", self.agent.contacts, wrap=lambda r: {"contacts": r})

    @Status.responder
    def _status(self) -> defer.Deferred[Any]:
        return self._call("status", self.agent.status, wrap=lambda r: {"status": r})

    @Trust.responder
    def _trust(
        self, identity: str, accept_new_key: bool, forget_old: bool | None = None
    ) -> defer.Deferred[Any]:
        check_identity(identity)
        return self._call(
            "trust",
            self.agent.trust,
            identity,
            accept_new_key,
            bool(forget_old),
            wrap=lambda r: {"result": r},
        )

    @Typing.responder
    def _typing(self, to: str, state: str) -> defer.Deferred[Any]:
        check_identity(to, "recipient")
        if state not in TYPING_STATES:
            raise BadArgument(f"typing state must be one of {', '.join(TYPING_STATES)}")
        return self._call("typing", self.agent.typing, to, state, wrap=lambda r: {})

    @Subscribe.responder
    def _subscribe(self, types: list[str] | None = None, peer: str | None = None) -> dict[str, Any]:
        if types is not None:
            unknown = sorted(set(types) - set(EVENT_TYPES))
            if unknown:
                raise BadArgument(
                    f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}"
                )
        if peer is not None:
            check_identity(peer, "peer")
        self._types = frozenset(types) if types else None
        self._peer = peer
        self._stop_following()
        follow = getattr(self.agent, "followPresence", None)
        if follow is not None and peer is not None and (types is None or "presence" in types):
            # presence of one peer is wanted (chat): have the agent watch it meanwhile (an
            # agent without that method, e.g. another IUserAgent, sends what it has)
            self._following = follow(peer)
        if not self.subscribed:
            self.subscribed = True
            self.agent.addObserver(self)
        return {}

    def _stop_following(self) -> None:
        release, self._following = self._following, None
        if release is not None:
            release()

    @Unsubscribe.responder
    def _unsubscribe(self) -> dict[str, Any]:
        self._stop_events()
        return {}

    # events ----------------------------------------------------------------------------

    def _stop_events(self) -> None:
        self._stop_following()
        if self.subscribed:
            self.subscribed = False
            self.agent.removeObserver(self)
        self._queue.clear()

    def agentEvent(self, event: dict[str, Any]) -> None:
        """Called by the agent, synchronously: never raise into it, never block it."""
        if not self.subscribed or self._overflowed:
            return
        if self._types is not None and event.get("type") not in self._types:
            return
        if self._peer is not None and "peer" in event and event["peer"] != self._peer:
            return
        if self._in_flight < self.factory.window:
            self._deliver(event)
            return
        self._queue.append(event)
        if len(self._queue) > self.factory.max_queued:
            self._overflow()

    def _deliver(self, event: dict[str, Any]) -> None:
        self._in_flight += 1
        try:
            d = self.callRemote(Event, event=event)
        except Exception:  # connection already gone, or an unencodable event
            self._in_flight -= 1
            log.failure("could not forward an event to a control client")
            return
        d.addErrback(lambda _: None)  # the client's problem, or a lost connection
        d.addBoth(self._acknowledged)

    def _acknowledged(self, _: object) -> None:
        self._in_flight -= 1
        while self._queue and self._in_flight < self.factory.window and self.subscribed:
            self._deliver(self._queue.popleft())

    def _overflow(self) -> None:
        """
        The client has not acknowledged C{window} events while C{max_queued} more piled up:
        tell it (best effort), drop it, and give it a grace period to read the notice before
        the connection is aborted (a client that reads nothing would keep the socket forever).
        """
        count = len(self._queue) + self._in_flight
        log.warn("control client fell behind by {count} events; disconnecting it", count=count)
        self._overflowed = True
        self._stop_events()
        transport: Any = self.transport
        if transport is None:
            return
        try:
            d = self.callRemote(Event, event={"type": "overflow", "behind": count})
            d.addErrback(lambda _: None)
        except Exception:  # the connection is going anyway
            log.debug("could not send the overflow notice")
        transport.loseConnection()
        if self.factory.clock is not None:
            self._abort_timer = self.factory.clock.callLater(
                self.factory.abort_grace, transport.abortConnection
            )
        else:
            transport.abortConnection()


class ControlServerFactory(protocol.Factory[ControlProtocol]):
    """
    Serves one agent on any stream transport; L{listen_control} puts it on the UNIX socket.

    @param agent: the L{IUserAgent} to control.
    @param clock: schedules the abort of a client that fell behind (see
        L{ControlProtocol._overflow}); without one such a client is aborted at once.
    @param uid: the only peer uid admitted (default: our effective uid).
    @param window: events sent but not yet acknowledged, per client.
    @param max_queued: events waiting behind the window before the client is dropped.
    @param abort_grace: seconds a dropped client has to read the overflow notice.
    """

    protocol = ControlProtocol

    def __init__(
        self,
        agent: IUserAgent,
        clock: IReactorTime | None = None,
        *,
        uid: int | None = None,
        window: int = 32,
        max_queued: int = 1000,
        abort_grace: float = 10.0,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.uid = os.geteuid() if uid is None else uid
        self.window = window
        self.max_queued = max_queued
        self.abort_grace = abort_grace
        self.clients: set[ControlProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self)


async def _answers(reactor: Any, path: str) -> bool:
    """Whether something accepts connections on the socket C{path} (another agent)."""
    endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=5)
    try:
        proto = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    except error.ConnectionRefusedError:
        return False
    except error.ConnectError as e:
        if getattr(e, "osError", None) == errno.ENOENT:
            return False
        raise
    except error.TimeoutError:  # a live but wedged agent: certainly not stale
        return True
    if proto.transport is not None:
        proto.transport.loseConnection()
    return True


async def _listen(reactor: Any, data_dir: str, factory: ControlServerFactory) -> IListeningPort:
    path = socket_path(prepare_data_dir(data_dir))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise DataDirError(f"{path} exists and is not a socket; remove it yourself")
        if await _answers(reactor, path):
            raise AgentAlreadyRunning(
                f"another sixchat agent already answers on {path}; stop it first "
                "(or give this one its own data directory)"
            )
        log.info("removing stale control socket {path}", path=path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    # Equivalent to the endpoint string unix:<path>:mode=600:lockfile=0, without having to
    # escape colons in the path. Twisted binds, chmods to `mode`, and only then calls
    # listen(): a connect() before listen() is refused (ECONNREFUSED), so no connection is
    # ever accepted while the socket has the umask's wider mode; and the socket sits in our
    # 0700 directory, which other users cannot traverse at all. We do not narrow the umask
    # around bind() instead because the umask is process-wide: a thread of the store's pool
    # creating a file or directory at that moment would get the wrong mode.
    endpoint = endpoints.UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=False)
    try:
        port: IListeningPort = await endpoint.listen(factory)
    except error.CannotListenError as e:
        raise DataDirError(f"cannot listen on {path}: {e.socketError}") from None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o600:  # never expected; refuse rather than serve on a wider socket
        await defer.maybeDeferred(port.stopListening)
        raise DataDirError(f"control socket {path} has mode {mode:04o}, not 0600")
    log.info("control socket listening on {path}", path=path)
    return port


def listen_control(
    reactor: Any, data_dir: str, agent: IUserAgent, **factory_options: Any
) -> defer.Deferred[IListeningPort]:
    """
    Serve C{agent} on C{<data_dir>/control.sock} (mode 0600, directory 0700).

    A leftover socket from a crashed agent is removed when nothing answers on it; if another
    agent answers, this fails with L{AgentAlreadyRunning}. C{factory_options} go to
    L{ControlServerFactory} (C{window}, C{max_queued}, C{uid}, ...); the reactor is its clock.
    Stopping the returned port removes the socket.
    """
    factory = ControlServerFactory(agent, reactor, **factory_options)
    return defer.ensureDeferred(_listen(reactor, data_dir, factory))
