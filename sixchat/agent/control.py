"""
The agent's local control interface: AMP (L{twisted.protocols.amp}) over a UNIX socket in the
data directory. The C{sixchat} command line is a client of it; so can be any local program
running as the same user.

Authorisation is the file system: the data directory is mode 0700 and the socket
C{control.sock} mode 0600, both owned by the agent's user, so only that user (and root) can
reach it. As defence in depth the server also asks the kernel who connected (C{SO_PEERCRED},
Linux) and drops every connection whose effective uid is not the agent's own, root included:
root can read the agent's files anyway, but a root-owned process talking to a user's agent is
far more likely a mistake than an intention, and one rule is easier to reason about.

Wire conventions:

  - one AMP command per L{IUserAgent} method; arguments with a natural AMP type use it
    (C{amp.Unicode}, C{amp.Integer}, C{amp.Float}, C{amp.Boolean});
  - structured values (the agent's dicts and lists) travel as JSON text (L{JSON}), because
    AMP has no map type and C{AmpList} would freeze the agent's evolving dicts into a schema;
  - AMP limits every value to 65,535 bytes, which a message body (32,768 characters, up to
    four UTF-8 bytes each) or a page of history easily exceeds, so L{JSON} and L{BigUnicode}
    split their encoded bytes over several keys (C{name}, C{name.1}, C{name.2}, ...);
  - expected failures are AMP errors with a code (L{ERRORS}) and a one-line description; an
    unexpected exception in the agent is logged there and reaches the client as
    C{AGENT_FAILURE} without its text (it could hold anything), never as a traceback, and the
    connection stays open (AMP would otherwise close it).

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
import json
import os
import re
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.agent.datadir import (
    SOCKET_NAME,
    agent_dirs,
    default_data_dir,
    prepare_data_dir,
    resolve_data_dir,
    sixchat_data_home,
)
from sixchat.agent.errors import (
    ERRORS,
    AgentAlreadyRunning,
    AgentDisconnected,
    AgentFailure,
    BadArgument,
    ControlError,
    DataDirError,
    NoAgentRunning,
    NotConnected,
    PeerRefused,
    UnknownIdentity,
    UnknownMessage,
)
from sixchat.agent.events import EVENT_TYPES
from sixchat.agent.interfaces import IAgentEvents, IUserAgent
from sixchat.errors import SixchatError
from sixchat.identity import is_valid_identity

__all__ = [
    "ERRORS",
    "EVENT_TYPES",
    "SOCKET_NAME",
    "AgentAlreadyRunning",
    "AgentDisconnected",
    "AgentFailure",
    "BadArgument",
    "BigUnicode",
    "Contacts",
    "ControlClient",
    "ControlError",
    "ControlProtocol",
    "ControlServerFactory",
    "Conversations",
    "DataDirError",
    "Event",
    "History",
    "JSON",
    "MessageStatus",
    "NoAgentRunning",
    "NotConnected",
    "PeerCredentials",
    "PeerRefused",
    "Send",
    "Status",
    "Subscribe",
    "Trust",
    "Typing",
    "UnknownIdentity",
    "UnknownMessage",
    "Unsubscribe",
    "WaitDelivered",
    "agent_dirs",
    "check_peer_uid",
    "connect_control",
    "default_data_dir",
    "listen_control",
    "normalize_timestamp",
    "peer_credentials",
    "prepare_data_dir",
    "resolve_data_dir",
    "sixchat_data_home",
]

log = Logger()

#: Typing states a peer understands (spec §8.4).
TYPING_STATES = ("composing", "paused")

#: Largest text C{Send} accepts (the agent splits anything over 32,768 characters); a bound
#: against piping a disk image into C{sixchat send}, not a protocol limit.
MAX_TEXT = 1_000_000

#: Largest C{History} page and longest C{WaitDelivered}.
MAX_HISTORY = 10_000
MAX_WAIT = 86_400.0

#: Linux's C{sun_path} is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


#: Descriptions are AMP values (at most 65,535 bytes); errors are one line anyway.
_MAX_ERROR_TEXT = 2000


# -- argument types ------------------------------------------------------------------------


class _Chunked(amp.Argument):
    """
    A value whose encoding may exceed AMP's 65,535-byte value limit: the bytes are split over
    the keys C{name}, C{name.1}, C{name.2}, ... and joined again on receipt.
    """

    #: 1,024 chunks of 64 KiB: 64 MiB, far beyond anything legitimate.
    max_chunks = 1024

    def encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        obj = self.retrieve(objects, name.decode("ascii"), proto)
        if self.optional and obj is None:
            return
        data = self.encode(obj)
        size = amp.MAX_VALUE_LENGTH
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        if len(chunks) > self.max_chunks:
            raise ValueError(f"{name.decode()} is too large for the control protocol")
        strings[name] = chunks[0]
        for i, chunk in enumerate(chunks[1:], 1):
            strings[name + b"." + str(i).encode()] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        key = name.decode("ascii")
        first = self.retrieve(strings, name, proto)
        if first is None:
            objects[key] = None
            return
        parts = [first]
        for i in range(1, self.max_chunks + 1):
            part = strings.pop(name + b"." + str(i).encode(), None)
            if part is None:
                break
            parts.append(part)
        objects[key] = self.decode(b"".join(parts))


class BigUnicode(_Chunked):
    """Text of any length (a message body), UTF-8 on the wire."""

    def encode(self, obj: Any) -> bytes:
        return str(obj).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class JSON(_Chunked):
    """
    Any JSON-able value. Values the agent hands over that JSON cannot represent (a datetime,
    bytes) are sent as their C{str()}, so one odd field never breaks a command.
    """

    def encode(self, obj: Any) -> bytes:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


# -- commands ------------------------------------------------------------------------------


class _AgentCommand(amp.Command):
    errors = ERRORS


class Send(_AgentCommand):
    """L{IUserAgent.send}: response C{result} is C{{id, peer, state[, ids]}}."""

    arguments = [
        (b"to", amp.Unicode()),
        (b"text", BigUnicode()),
        (b"thread", amp.Unicode(optional=True)),
        (b"reply_to", amp.Unicode(optional=True)),
    ]
    response = [(b"result", JSON())]


class WaitDelivered(_AgentCommand):
    """L{IUserAgent.waitDelivered}: the status dict once delivered or after C{timeout}."""

    arguments = [(b"message_id", amp.Unicode()), (b"timeout", amp.Float())]
    response = [(b"result", JSON())]


class MessageStatus(_AgentCommand):
    """L{IUserAgent.status_of}: the message's status dict."""

    arguments = [(b"message_id", amp.Unicode())]
    response = [(b"result", JSON())]


class History(_AgentCommand):
    """
    L{IUserAgent.history}: C{since} is RFC 3339 and reaches the agent normalised to UTC
    C{YYYY-MM-DDTHH:MM:SS.mmmZ} (the spec's C{ts} form); C{messages} is a JSON list.
    """

    arguments = [
        (b"peer", amp.Unicode(optional=True)),
        (b"since", amp.Unicode(optional=True)),
        (b"limit", amp.Integer()),
    ]
    response = [(b"messages", JSON())]


class Conversations(_AgentCommand):
    """L{IUserAgent.conversations}: a JSON list of C{{peer, last_ts, last_body, unread}}."""

    response = [(b"conversations", JSON())]


class Contacts(_AgentCommand):
    """L{IUserAgent.contacts}: a JSON list of contact dicts."""

    response = [(b"contacts", JSON())]


class Status(_AgentCommand):
    """L{IUserAgent.status}: registration, addresses, sessions, outbox, as one JSON dict."""

    response = [(b"status", JSON())]


class Trust(_AgentCommand):
    """L{IUserAgent.trust}: C{result} is C{{identity, keys, accepted}}."""

    arguments = [(b"identity", amp.Unicode()), (b"accept_new_key", amp.Boolean())]
    response = [(b"result", JSON())]


class Typing(_AgentCommand):
    """L{IUserAgent.typing}; C{NOT_CONNECTED} when no session is open (typing is never queued)."""

    arguments = [(b"to", amp.Unicode()), (b"state", amp.Unicode())]


class Subscribe(_AgentCommand):
    """
    Start receiving L{Event} calls, optionally only of some C{types} and about one C{peer}.
    Subscribing again replaces the filter.
    """

    arguments = [
        (b"types", amp.ListOf(amp.Unicode(), optional=True)),
        (b"peer", amp.Unicode(optional=True)),
    ]


class Unsubscribe(_AgentCommand):
    """Stop receiving events; events still queued for this client are dropped."""


class Event(amp.Command):
    """
    Server to client: one agent event (L{IAgentEvents.agentEvent}), as JSON. The (empty)
    answer is the acknowledgement that drives flow control, so clients must answer it.
    """

    arguments = [(b"event", JSON())]


# -- validation ----------------------------------------------------------------------------


def _identity(value: str, what: str = "identity") -> str:
    if not is_valid_identity(value):
        raise BadArgument(f"{what} {value!r} is not an identity (local@domain)")
    return value


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


def normalize_timestamp(text: str) -> str:
    """
    An RFC 3339 date-time with a zone (C{Z} or C{+hh:mm}) as UTC C{YYYY-MM-DDTHH:MM:SS.mmmZ},
    the spec's C{ts} grammar with a fixed precision, so the agent can compare it as text.

    @raise BadArgument: for anything else (a missing zone included: guessing one would move
        the window by hours).
    """
    candidate = text.strip()
    if not _RFC3339.fullmatch(candidate):
        raise BadArgument(f"not an RFC 3339 date-time with a zone: {text!r}")
    # fromisoformat takes at most 6 fractional digits.
    candidate = re.sub(r"(\.\d{6})\d+", r"\1", candidate)
    if candidate[-1] in "zZ":
        candidate = candidate[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(candidate)
    except ValueError:
        raise BadArgument(f"not a valid date-time: {text!r}") from None
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


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


# -- server --------------------------------------------------------------------------------


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

    # connection ------------------------------------------------------------------------

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
        super().connectionLost(reason)

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
        self, to: str, text: str, thread: str | None = None, reply_to: str | None = None
    ) -> defer.Deferred[Any]:
        _identity(to, "recipient")
        if not text:
            raise BadArgument("empty message")
        if len(text) > MAX_TEXT:
            raise BadArgument(f"message too long ({len(text)} characters, at most {MAX_TEXT})")
        return self._call(
            "send", self.agent.send, to, text, thread, reply_to, wrap=lambda r: {"result": r}
        )

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
            _identity(peer, "peer")
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
    def _trust(self, identity: str, accept_new_key: bool) -> defer.Deferred[Any]:
        _identity(identity)
        return self._call(
            "trust", self.agent.trust, identity, accept_new_key, wrap=lambda r: {"result": r}
        )

    @Typing.responder
    def _typing(self, to: str, state: str) -> defer.Deferred[Any]:
        _identity(to, "recipient")
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
            _identity(peer, "peer")
        self._types = frozenset(types) if types else None
        self._peer = peer
        if not self.subscribed:
            self.subscribed = True
            self.agent.addObserver(self)
        return {}

    @Unsubscribe.responder
    def _unsubscribe(self) -> dict[str, Any]:
        self._stop_events()
        return {}

    # events ----------------------------------------------------------------------------

    def _stop_events(self) -> None:
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


def _socket_path(data_dir: str) -> str:
    path = os.path.join(os.path.abspath(data_dir), SOCKET_NAME)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DataDirError(
            f"data directory path too long for a UNIX socket ({len(os.fsencode(path))} bytes "
            f"with /{SOCKET_NAME}, at most {MAX_SOCKET_PATH}); choose a shorter --data-dir"
        )
    return path


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
    path = _socket_path(prepare_data_dir(data_dir))
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


# -- client --------------------------------------------------------------------------------


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
        self, to: str, text: str, thread: str | None = None, reply_to: str | None = None
    ) -> defer.Deferred[Any]:
        d = self._remote(Send, "send", to=to, text=text, thread=thread, reply_to=reply_to)
        return d.addCallback(lambda r: r["result"])

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

    def trust(self, identity: str, accept_new_key: bool) -> defer.Deferred[Any]:
        d = self._remote(Trust, "trust", identity=identity, accept_new_key=accept_new_key)
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
    path = _socket_path(data_dir)
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
