"""
The web UI's server: C{twistd sixchat … --web ENDPOINT} adds a L{WebService} to the agent. It
listens once the agent is ready, writes the link with this start's token to
C{<data-dir>/web-url} (mode 600; removed at a clean stop) and serves:

  - C{/}: the page (C{static/index.html}), C{/static/…}: its script, style and icon, all from
    the package (no CDN, nothing inline);
  - C{/api/…}: the JSON API (L{sixchat.web.api}), C{/api/events}: the live events
    (L{sixchat.web.stream}).

Every request passes L{sixchat.web.security.Guard} first (Host, credential, Origin and CSRF)
— a body is refused before it is read when the request has no valid credential — and every
response carries L{sixchat.web.security.SECURITY_HEADERS}. The access log is off: request
lines would carry the token of a first visit.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server, static

from sixchat.netaddr import format_hostport
from sixchat.web.api import ApiResource, set_code, write_json
from sixchat.web.security import SECURITY_HEADERS, Denied, Guard, Secrets, check_bind
from sixchat.web.stream import EventStream
from sixchat.web.uploads import Uploads

__all__ = ["URL_FILE", "WebService", "parse_web_endpoint", "web_url"]

log = Logger()

#: The link's file inside the data directory.
URL_FILE = "web-url"

#: Endpoint types, with the interface they bind when none is given (every address).
_ANY4, _ANY6 = "0.0.0.0", "::"  # noqa: S104 - named to be refused without TLS (check_bind)
_KINDS = {"tcp": (_ANY4, False), "tcp6": (_ANY6, False), "ssl": (_ANY4, True)}
_SEPARATOR = re.compile(r"(?<!\\):")


def parse_web_endpoint(text: str) -> tuple[str, bool]:
    """
    C{--web}'s endpoint (C{tcp:}, C{tcp6:} or C{ssl:}) as (interface, TLS?), after checking
    Twisted can parse it and the bind rule (L{check_bind}); nothing is bound here.

    @raise ValueError: with the one line to show.
    """
    from twisted.internet import task

    parts = _SEPARATOR.split(text.strip())
    kind = parts[0].lower()
    if kind not in _KINDS:
        raise ValueError("use a tcp:, tcp6: or ssl: endpoint, e.g. tcp:8605:interface=127.0.0.1")
    try:
        endpoints.serverFromString(task.Clock(), text)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None
    except OSError as e:  # ssl: the key or certificate file
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    interface, tls = _KINDS[kind]
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq and key == "interface":
            interface = value.replace("\\:", ":")
    check_bind(interface, tls)
    return interface, tls


def web_url(host: str, port: int, tls: bool, token: str | None = None) -> str:
    """The page's address (with the token's query when given)."""
    if host in (_ANY4, _ANY6, ""):
        host = "localhost"
    scheme = "https" if tls else "http"
    base = f"{scheme}://{format_hostport(host, port)}/"
    return base if token is None else f"{base}?token={token}"


def _static_dir() -> str:
    return str(resources.files("sixchat.web") / "static")


class _GuardedRequest(server.Request):
    """Refuses a request with a body before reading it, unless its credential is valid."""

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        guard: Guard | None = getattr(channel.site, "guard", None)
        has_body = length or self.requestHeaders.hasHeader(b"transfer-encoding")
        if guard is not None and has_body:
            refusal: tuple[int, bytes] | None = None
            try:
                guard.check(self, changes_state=True)  # the method is not parsed yet
            except Denied as e:
                refusal = (e.code, e.reason.encode())
            if refusal is None and length is None:
                refusal = (411, b"a request body needs a Content-Length")
            if refusal is None and length is not None and length > channel.site.max_body:
                refusal = (413, b"request body too large")
            if refusal is not None:
                self._refuse(*refusal)
        super().gotLength(length)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "_refused", False):
            return  # answered in gotLength; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self, code: int, reason: bytes) -> None:
        transport: Any = self.channel.transport
        self._refused = True
        phrase = http.RESPONSES.get(code, b"Misdirected Request" if code == 421 else b"Refused")
        head = [b"HTTP/1.1 %d %s" % (code, phrase), b"content-type: text/plain; charset=utf-8"]
        head += [name + b": " + value for name, value in SECURITY_HEADERS]
        head += [b"content-length: %d" % (len(reason) + 1), b"connection: close"]
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + reason + b"\n")
        transport.loseConnection()


class _Refusal(resource.Resource):
    isLeaf = True

    def __init__(self, code: int, reason: str) -> None:
        super().__init__()
        self.code = code
        self.reason = reason

    def render(self, request: Any) -> Any:
        if request.path.startswith(b"/api/"):
            write_json(request, self.code, {"error": self.reason})
            return server.NOT_DONE_YET
        set_code(request, self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.reason.encode() + b"\n"


class _Assets(static.File):
    """The page's files; no directory listings or indexes."""

    indexNames: list[str] = []

    def directoryListing(self) -> resource.Resource:
        return _Refusal(404, "not found")


class _Redirected(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b""


class _Root(resource.Resource):
    """Applies the guard to every request, then dispatches to the page, assets and API."""

    def __init__(self, guard: Guard, api: ApiResource, events: EventStream) -> None:
        super().__init__()
        self.guard = guard
        static_dir = _static_dir()
        self.page = static.File(os.path.join(static_dir, "index.html"))
        self.putChild(b"static", _Assets(static_dir))
        self.api = api
        self.events = events

    def getChildWithDefault(self, name: bytes, request: Any) -> resource.IResource:
        for header, value in SECURITY_HEADERS:
            request.setHeader(header, value)
        try:
            if request.postpath == [] and name == b"" and self.guard.token_visit(request):
                return _Redirected()
            self.guard.check(request)
        except Denied as e:
            return _Refusal(e.code, e.reason)
        if name == b"" and not request.postpath:
            if request.method not in (b"GET", b"HEAD"):
                return _Refusal(405, "method not allowed")
            return self.page
        if name == b"api":
            if request.postpath[:1] == [b"events"] and len(request.postpath) == 1:
                return self.events
            return self.api
        return super().getChildWithDefault(name, request)


class _Site(server.Site):
    requestFactory = _GuardedRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, root: _Root, guard: Guard, max_upload: int) -> None:
        super().__init__(root)
        self.guard = guard
        #: The largest body: a file upload (the agent's --max-file-size) and a little.
        self.max_body = max_upload + (1 << 20)

    def log(self, request: Any) -> None:
        """No access log: a first visit's request line carries the token."""


class WebService(service.Service):
    """
    The web UI of C{agent} on C{endpoint} (a Twisted server endpoint string that
    L{parse_web_endpoint} accepts). Listens once the agent is ready; a bind that fails is
    fatal for the agent (one line, like its other start-up failures).
    """

    name = "web"

    def __init__(
        self, reactor: Any, agent: Any, endpoint: str, *, max_upload: int = 4 << 30
    ) -> None:
        self.reactor = reactor
        self.agent = agent
        self.endpoint = endpoint
        self.interface, self.tls = parse_web_endpoint(endpoint)
        self.max_upload = max_upload
        self.secrets = Secrets()
        self.port: Any = None
        self.url: str | None = None
        self.site: _Site | None = None
        self.guard: Guard | None = None
        self.uploads: Uploads | None = None
        self.stream: EventStream | None = None

    @property
    def url_path(self) -> str:
        return os.path.join(self.agent.data_dir, URL_FILE)

    def startService(self) -> None:
        super().startService()

        def ready(result: object) -> object:
            if self.running:
                try:
                    self._listen()
                except Exception:
                    self._bindFailed(Failure())
            return result

        self.agent.ready.addCallback(ready)

    def _listen(self) -> None:
        # The guard learns the port once bound (tcp:0 in tests); nothing is served before.
        self.guard = Guard(self.secrets, self.interface, 0, self.tls)
        self.uploads = Uploads(
            self.reactor, self.agent, os.path.join(self.agent.data_dir, "web-uploads")
        )
        self.agent.addObserver(self.uploads)
        api = ApiResource(self.agent, self.reactor, self.uploads, self.secrets.csrf)
        self.stream = EventStream(self.agent, self.agent.clock)
        self.site = _Site(_Root(self.guard, api, self.stream), self.guard, self.max_upload)
        endpoint = endpoints.serverFromString(self.reactor, self.endpoint)
        d = endpoint.listen(self.site)
        d.addCallbacks(self._listening, self._bindFailed)

    def _bindFailed(self, failure: Failure) -> None:
        line = f"--web {self.endpoint}: cannot listen: {failure.getErrorMessage()}"
        if self.agent.on_fatal is not None:
            self.agent.on_fatal(line)
        else:
            log.critical("{line}", line=line)

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        assert self.guard is not None
        self.guard.port = address.port
        self.url = web_url(self.interface, address.port, self.tls, self.secrets.token)
        _write_private(self.url_path, self.url + "\n")
        log.info(
            "web UI on {url} (the link with its token: `sixchat web`, or {file})",
            url=web_url(self.interface, address.port, self.tls),
            file=self.url_path,
        )

    def stopService(self) -> Any:
        super().stopService()
        try:
            os.unlink(self.url_path)
        except FileNotFoundError:
            pass
        if self.stream is not None:
            self.stream.closeAll()
        if self.uploads is not None:
            self.agent.removeObserver(self.uploads)
            self.uploads = None
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def _write_private(path: str, text: str) -> None:
    """C{text} to C{path}, mode 600 from the start, replacing it atomically."""
    temp = path + ".tmp"
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temp, path)
