"""
The peer listener as a Twisted service: accept End2End Direct sessions on an endpoint.

L{PeerListenerService} binds in C{privilegedStartService} (before twistd drops privileges)
and turns "address in use" into one actionable line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, error
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sixchat.errors import StartupError
from sixchat.handshake import PeerConfig
from sixchat.protocol import ISessionObserver, PeerFactory, Session
from sixchat.stanzas import ErrorStanza, Message, Typing

DEFAULT_LISTEN = "tcp6:4605"


@implementer(ISessionObserver)
class LoggingObserver:
    """
    Logs sessions and incoming messages (twisted.logger). Without a message store it
    receipts each message once it is logged; the user agent's store replaces this.
    """

    log = Logger()

    def sessionStarted(self, session: Session) -> None:
        pass  # PeerProtocol already logs the negotiated parameters

    def messageReceived(self, session: Session, message: Message) -> Any:
        self.log.info(
            "message {id} from {peer}: {body}",
            id=message.id,
            peer=session.peer,
            body=message.body,
        )
        return None

    def stanzaReceived(self, session: Session, stanza: Any) -> None:
        if isinstance(stanza, ErrorStanza):
            self.log.info(
                "error from {peer}: {reason} (ref {ref})",
                peer=session.peer,
                reason=stanza.reason,
                ref=stanza.ref,
            )
        elif isinstance(stanza, Typing):
            self.log.debug("{peer} is {state}", peer=session.peer, state=stanza.state)

    def sessionEnded(self, session: Session, reason: Failure) -> None:
        self.log.info(
            "session with {peer} ended: {why}", peer=session.peer, why=reason.getErrorMessage()
        )


class EndpointService(service.Service):
    """
    Listens with C{factory} on a Twisted endpoint string. It binds in
    C{privilegedStartService} (before twistd drops privileges or daemonises) and turns a
    failure such as "address in use" or a bad endpoint string into a one-line L{StartupError}
    (which the twistd plugins print as one line with exit status 1, never a traceback); if
    the bind only fails later (an asynchronous endpoint), it logs that line and stops the
    reactor.

    @cvar program: the command name starting the error line.
    @cvar what: what else might hold the port, for the hint.
    """

    log = Logger()
    program = "sixchat"
    what = "agent"
    #: Called with one line when the service cannot go on once running (the twistd plugins
    #: print it and exit 1); None: log it and stop the reactor.
    on_fatal: Callable[[str], None] | None = None

    def __init__(self, reactor: Any, listen: str, factory: Any) -> None:
        self.reactor = reactor
        self.listen = listen
        self.listening_factory = factory
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.listen)
        except ValueError as e:  # an unknown endpoint type, a bad port, …
            raise StartupError(f"--listen {self.listen!r}: {e}") from None
        outcome: list[Any] = []
        self._listening = endpoint.listen(self.listening_factory)
        self._listening.addBoth(outcome.append)
        if outcome:  # TCP endpoints bind synchronously: fail before the reactor runs
            self._outcome(outcome[0])
        else:
            self._listening.addCallback(lambda _: self._outcome(outcome[0]))
        super().privilegedStartService()

    def _outcome(self, result: IListeningPort | Failure) -> None:
        if isinstance(result, Failure):
            self._cannotListen(result)
        else:
            self.port = result
            self.listened(result)

    def listened(self, port: IListeningPort) -> None:
        """Called once bound (override to log)."""

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()

    def _cannotListen(self, failure: Failure) -> None:
        why = failure.getErrorMessage()
        if failure.check(error.CannotListenError):
            err = getattr(failure.value, "socketError", None)
            why = getattr(err, "strerror", None) or str(err)
        line = (
            f"cannot listen on {self.listen}: {why} "
            f"(is another {self.what} running? choose another --listen)"
        )
        if self.running:
            if self.on_fatal is not None:
                self.on_fatal(line)
                return
            self.log.critical("{program}: error: {line}", program=self.program, line=line)
            self.reactor.stop()
            return
        raise StartupError(line)

    def stopListening(self) -> defer.Deferred[None]:
        self._listening = None
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        stopped = port.stopListening()
        return stopped if isinstance(stopped, defer.Deferred) else defer.succeed(None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.stopListening()


class PeerListenerService(EndpointService):
    """Listens on a Twisted endpoint string and accepts peer sessions with one config."""

    def __init__(
        self,
        reactor: Any,
        config: PeerConfig,
        listen: str = DEFAULT_LISTEN,
        observer: ISessionObserver | None = None,
        **factory_options: Any,
    ) -> None:
        self.config = config
        self.factory = PeerFactory(
            config, reactor, observer or LoggingObserver(), **factory_options
        )
        super().__init__(reactor, listen, self.factory)

    #: Whether accepting is held (L{hold}).
    held = False

    def hold(self) -> None:
        """
        Accept nothing for now (the agent's store is not open yet: pins, messages), without
        refusing anyone: the port stops calling C{accept}, so connections wait in the
        kernel's listen queue (their first bytes with them) and are taken once L{release}
        is called, within the initiator's handshake timeout. A port that cannot stop
        accepting (not a file descriptor) closes new connections at once instead.
        """
        self.held = True
        self._holdPort()

    def release(self) -> None:
        """Accept again, beginning with the connections that waited (L{hold})."""
        self.held = False
        self.factory.paused = False
        start_reading = getattr(self.port, "startReading", None)
        if callable(start_reading) and getattr(self.port, "connected", False):
            start_reading()

    def _holdPort(self) -> None:
        port = self.port
        if port is None:
            return  # not bound yet: L{listened} holds it
        if callable(getattr(port, "stopReading", None)) and getattr(port, "connected", False):
            port.stopReading()  # type: ignore[attr-defined]
        else:
            self.factory.paused = True

    def listened(self, port: IListeningPort) -> None:
        if self.held:
            self._holdPort()
        host = port.getHost()
        self.log.info(
            "user agent {names} listening on {host} port {port}",
            names=", ".join(n for i in self.config.identities for n in i.names),
            host=getattr(host, "host", host),
            port=getattr(host, "port", ""),
        )
