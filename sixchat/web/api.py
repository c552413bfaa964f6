"""
The JSON API the page uses (and scripts, with C{Authorization: Bearer TOKEN}): a thin face of
the agent's own API (L{sixchat.agent.interfaces.IUserAgent}: C{send}, C{history},
C{conversations}, C{contacts}, C{trust}, C{typing}, C{status}, C{sendFile}, C{files}) with
the control interface's argument bounds (L{sixchat.agent.control.commands}); no business
rule lives here. docs/web.md lists every endpoint and its fields.

Errors are C{{"error": LINE}} with a status: 400 a bad argument (or what the agent refused),
404 an unknown identity, message or file, 409 a message already final or no session (typing),
413 too large, 500 anything else (logged, its text not sent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server, static

from sixchat.agent.control.commands import MAX_HISTORY, MAX_TEXT, check_identity
from sixchat.agent.errors import (
    AgentError,
    BadArgument,
    MessageFinal,
    NotConnected,
    UnknownIdentity,
    UnknownMessage,
)
from sixchat.errors import SixchatError
from sixchat.filetransfer.names import sanitize_name
from sixchat.stanzas import TYPING_STATES
from sixchat.web.uploads import Uploads

__all__ = ["DEFAULT_HISTORY", "MAX_JSON_BODY", "ApiResource", "set_code", "write_json"]

log = Logger()

#: The page shows the last 50 messages of a conversation.
DEFAULT_HISTORY = 50

#: A JSON request body (a message of MAX_TEXT characters, escaped, fits).
MAX_JSON_BODY = 8 * MAX_TEXT + 4096

_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (UnknownIdentity, 404),
    (UnknownMessage, 404),
    (MessageFinal, 409),
    (NotConnected, 409),
    (BadArgument, 400),
    (AgentError, 400),
    (SixchatError, 400),
)


class NotFound(Exception):
    """An endpoint or file that does not exist (404)."""


class TooLarge(Exception):
    """A request body over the bound (413)."""


#: Reason phrases Twisted does not know.
_PHRASES = {421: b"Misdirected Request"}


def set_code(request: Any, code: int) -> None:
    """The response status, with a reason phrase even for 421."""
    request.setResponseCode(code, _PHRASES.get(code))


def write_json(request: Any, code: int, value: Any) -> None:
    """Answer C{request} with C{value} as JSON (if the client is still there)."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    body = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str).encode()
    set_code(request, code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"content-length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _error(request: Any, failure: Failure) -> None:
    for kind, code in _STATUS_OF:
        if failure.check(kind):
            write_json(request, code, {"error": failure.getErrorMessage()})
            return
    if failure.check(NotFound):
        write_json(request, 404, {"error": failure.getErrorMessage() or "not found"})
    elif failure.check(TooLarge):
        write_json(request, 413, {"error": failure.getErrorMessage()})
    elif failure.check(defer.CancelledError):
        return
    else:
        log.failure("web API request failed", failure)
        write_json(request, 500, {"error": "the agent failed; see its log"})


def _json_body(request: Any) -> dict[str, Any]:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        raise BadArgument("send the request body as application/json")
    content = request.content
    content.seek(0, os.SEEK_END)
    if content.tell() > MAX_JSON_BODY:
        raise TooLarge("request body too large")
    content.seek(0)
    try:
        value = json.loads(content.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadArgument("the request body is not JSON") from None
    if not isinstance(value, dict):
        raise BadArgument("the request body must be a JSON object")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise BadArgument(f"{key!r} must be a string")
    return value


def _arg(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return str(values[0].decode("utf-8"))
    except UnicodeDecodeError:
        raise BadArgument(f"{name.decode()} is not UTF-8") from None


class ApiResource(resource.Resource):
    """C{/api/NAME[/ID]}: dispatched on the method and NAME (docs/web.md)."""

    isLeaf = True

    def __init__(self, agent: Any, reactor: Any, uploads: Uploads, csrf: str) -> None:
        super().__init__()
        self.agent = agent
        self.reactor = reactor
        self.uploads = uploads
        self.csrf = csrf
        self.routes: dict[tuple[bytes, str], Callable[[Any], Any]] = {
            (b"GET", "session"): self.session,
            (b"GET", "conversations"): lambda _: self.agent.conversations(),
            (b"GET", "history"): self.history,
            (b"POST", "send"): self.send,
            (b"POST", "typing"): self.typing,
            (b"GET", "contacts"): lambda _: self.agent.contacts(),
            (b"POST", "trust"): self.trust,
            (b"GET", "status"): self.status,
            (b"GET", "files"): lambda _: self.agent.files(),
            (b"POST", "files"): self.upload,
        }

    def render(self, request: Any) -> Any:
        path = [p.decode("utf-8", "replace") for p in request.postpath]
        if not path or not path[0]:
            write_json(request, 404, {"error": "no such endpoint"})
            return server.NOT_DONE_YET
        name, rest = path[0], path[1:]
        if name == "files" and rest and request.method in (b"GET", b"HEAD"):
            return self.download(request, rest[0])
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = self.routes.get((method, name))
        if handler is None or rest:
            known = any(n == name for _, n in self.routes)
            code = 405 if known and not rest else 404
            write_json(
                request,
                code,
                {"error": "no such endpoint" if code == 404 else "method not allowed"},
            )
            return server.NOT_DONE_YET
        d = defer.maybeDeferred(handler, request)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallback(lambda value: write_json(request, 200, value))
        d.addErrback(lambda f: _error(request, f))
        return server.NOT_DONE_YET

    # the endpoints -----------------------------------------------------------------------

    def session(self, request: Any) -> dict[str, Any]:
        """Who we are, and the CSRF token for this start (readable same-origin only)."""
        return {"identity": self.agent.name_, "csrf": self.csrf}

    def history(self, request: Any) -> Any:
        peer = _arg(request, b"peer")
        if peer is not None:
            check_identity(peer, "peer")
        limit_text = _arg(request, b"limit") or str(DEFAULT_HISTORY)
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_HISTORY:
            raise BadArgument(f"limit must be 1 to {MAX_HISTORY}")
        return self.agent.history(peer, None, int(limit_text))

    def send(self, request: Any) -> Any:
        body = _json_body(request)
        to = check_identity(_text(body, "to"), "to")
        text = _text(body, "body")
        if not text:
            raise BadArgument("empty message")
        if len(text) > MAX_TEXT:
            raise BadArgument(f"message longer than {MAX_TEXT} characters")
        return self.agent.send(to, text)

    def typing(self, request: Any) -> Any:
        body = _json_body(request)
        to = check_identity(_text(body, "to"), "to")
        state = _text(body, "state")
        if state not in TYPING_STATES:
            raise BadArgument("state is composing or paused")
        return self.agent.typing(to, state)

    def trust(self, request: Any) -> Any:
        body = _json_body(request)
        identity = check_identity(_text(body, "identity"))
        accept = body.get("accept")
        if not isinstance(accept, bool):
            raise BadArgument("'accept' must be true or false")
        return self.agent.trust(identity, accept, bool(body.get("forget_old", False)))

    @defer.inlineCallbacks
    def status(self, request: Any) -> Any:
        """The agent's status, with its own certificate and the nodes the registry knows."""
        status = yield self.agent.status()
        leaf = self.agent.identity.leaf
        status["certificate"] = {
            "subject": ", ".join(self.agent.identity.names),
            "issuer": leaf.issuer.rfc4514_string(),
            "not_after": leaf.not_valid_after_utc.astimezone(UTC).isoformat(),
            "spki_sha256": self.agent.identity.spki_sha256.hex(),
        }
        status["own_nodes"] = None
        directory = self.agent.directory
        if directory is not None:
            try:
                lookup = directory.lookup(self.agent.name_)
                record = yield lookup.addTimeout(5, self.reactor)
                status["own_nodes"] = [n.name for n in record.nodes]
            except Exception as e:  # unreachable registry: say so, the rest still shows
                status["own_nodes_error"] = str(e) or type(e).__name__
        return status

    # files ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def upload(self, request: Any) -> Any:
        """
        C{POST /api/files?to=ID&name=NAME} with the file as the raw body: kept by
        L{Uploads} (the agent sends files from disk), then queued with the agent's
        C{sendFile}.
        """
        to = check_identity(_arg(request, b"to") or "", "to")
        name = sanitize_name(_arg(request, b"name") or "")
        path = yield self.uploads.store(request.content, name)
        try:
            result = yield self.agent.sendFile(to, path)
        except BaseException:
            self.uploads.discard(path)  # not queued: not kept
            raise
        return result

    def download(self, request: Any, transfer_id: str) -> Any:
        d = defer.maybeDeferred(self.agent.files)

        def found(transfers: list[dict[str, Any]]) -> None:
            for t in transfers:
                if t["id"] == transfer_id and t["direction"] == "in" and t["path"]:
                    if t["state"] != "received":
                        raise NotFound(f"file {transfer_id} is not complete ({t['state']})")
                    _serve_file(request, t["path"], t["name"])
                    return
            raise NotFound(f"no received file {transfer_id}")

        d.addCallback(found)
        d.addErrback(lambda f: _error(request, f))
        return server.NOT_DONE_YET


def _serve_file(request: Any, path: str, name: str) -> None:
    """A received file as a download: never rendered by the browser, whatever its name."""
    if not os.path.isfile(path):
        raise NotFound("the file is no longer in the files directory")
    request.setHeader(
        b"content-disposition", f"attachment; filename*=UTF-8''{quote(name, safe='')}".encode()
    )
    file = static.File(path, defaultType="application/octet-stream")
    file.contentTypes = {}
    file.contentEncodings = {}
    result = file.render(request)
    if result != server.NOT_DONE_YET and not request.finished:  # HEAD
        request.write(result)
        request.finish()
