"""
The commands that talk to a running user agent over its control socket
(L{sixchat.agent.control}): C{send}, C{inbox}, C{watch}, C{chat}, C{contacts}, C{status},
C{trust}.

Output is for people by default and JSON with C{--json} (the agent's own data, unchanged).
Everything a peer controls (bodies, identities, reasons) is passed through L{clean} before it
reaches a terminal, so a message cannot carry escape sequences that rewrite the screen or
bidirectional overrides that reorder what is shown.

Exit statuses: 0 success; 1 an error (no agent, the agent refused, a message failed); 2 a
usage error; 3 C{send --wait} timed out with the message still on its way; 130 C{send --wait}
interrupted. C{watch} and C{chat} end with 0 on Ctrl-C, C{/quit} or end of input.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sixchat.agent.events import EVENT_TYPES
from sixchat.cli import CommandError, UsageError

#: Event types C{watch} shows unless told otherwise (C{--type}).
WATCH_DEFAULT_TYPES = ("message", "delivery")

#: How long a one-shot command waits for the agent's answer.
CALL_TIMEOUT = 60.0


# -- presentation helpers --------------------------------------------------------------------

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: Any, oneline: bool = False) -> str:
    """
    Text from a peer made safe for a terminal: control characters (escape sequences),
    C1 controls and bidirectional overrides are shown as C{\\xNN} / C{\\uNNNN}; line breaks
    are kept, or shown as C{⏎} when C{oneline}.
    """
    text = "" if text is None else str(text)
    for br in ("\r\n", "\r", "\u2028", "\u2029", "\x85"):
        text = text.replace(br, "\n")
    text = _UNSAFE.sub(_escape, text)
    if oneline:
        text = text.replace("\n", " ⏎ ")
    return text


def _parse_time(ts: Any) -> datetime | None:
    if not isinstance(ts, str) or not ts:
        return None
    text = ts.strip()
    if text[-1:] in "zZ":
        text = text[:-1] + "+00:00"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def local_time(ts: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A timestamp from the agent (RFC 3339) in local time; anything else shown as is."""
    when = _parse_time(ts)
    if when is None:
        return clean(ts or "-", oneline=True)
    return when.astimezone().strftime(fmt)


_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> str:
    """
    C{--since}: a relative age (C{90s}, C{30m}, C{2h}, C{3d}, C{1w}, or combined like
    C{1d12h}), an RFC 3339 date-time (a zone-less one is local time), or a date (local
    midnight). Returns UTC C{YYYY-MM-DDTHH:MM:SS.mmmZ}.
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    if value and _RELATIVE.sub("", value) == "" and _RELATIVE.match(value):
        delta = timedelta()
        for amount, unit in _RELATIVE.findall(value):
            delta += timedelta(**{_UNITS[unit]: int(amount)})
        when = now - delta
    else:
        candidate = value[:-1] + "+00:00" if value[-1:] in "zZ" else value
        candidate = re.sub(r"(\.\d{6})\d+", r"\1", candidate)
        try:
            when = datetime.fromisoformat(candidate)
        except ValueError:
            raise UsageError(
                f"--since {text!r}: expected an age like 2h or 3d, or a date-time like "
                "2026-11-26T08:00:00Z"
            ) from None
        if when.tzinfo is None:
            when = when.astimezone()  # local time, as a person typing a date means it
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _is_outgoing(message: dict[str, Any]) -> bool:
    direction = str(message.get("direction", "")).lower()
    return direction in ("out", "outgoing", "sent") or message.get("outgoing") is True


def _indent_body(body: Any, indent: int) -> str:
    return clean(body).replace("\n", "\n" + " " * indent)


def _devices(status: dict[str, Any]) -> str:
    total = status.get("total_nodes")
    if isinstance(total, int) and total > 1:
        return f" ({status.get('delivered_nodes', 0)}/{total} devices)"
    return ""


def _out(line: str = "") -> None:
    print(line, flush=True)


def _json(value: Any, indent: int | None = 2) -> None:
    print(
        json.dumps(
            value, indent=indent, sort_keys=indent is not None, ensure_ascii=False, default=str
        ),
        flush=True,
    )


# -- running against the agent -----------------------------------------------------------


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the agent's data directory (default: the only agent under "
        "$XDG_DATA_HOME/sixchat/, or the one chosen with --as)",
    )
    p.add_argument(
        "--as",
        dest="identity",
        metavar="IDENTITY",
        help="use the agent of this identity ($XDG_DATA_HOME/sixchat/IDENTITY/)",
    )


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def _with_agent(
    args: argparse.Namespace,
    body: Callable[[Any, Any], Awaitable[int | None]],
    interrupted: int = 130,
) -> int:
    """
    Connect to the agent, run C{body(reactor, client)} under C{task.react}, and return its
    status. Errors raised inside the reactor are re-raised here, so L{sixchat.cli.main} prints
    them as one line. C{interrupted} is the status when Ctrl-C stops the reactor first.
    """
    from twisted.internet import defer, task

    from sixchat.agent.control import connect_control, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir, args.identity)
    outcome: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        # Ctrl-C stops the reactor, which closes the connection to the agent: that is the
        # user leaving, not the agent going away, so an error raised after it is not shown.
        stopping: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        try:
            client = await connect_control(reactor, data_dir)
            try:
                status = await body(reactor, client)
                outcome["status"] = 0 if status is None else status
            finally:
                if client.transport is not None:
                    client.transport.loseConnection()
        except Exception as e:
            if not stopping:
                outcome["error"] = e

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome.get("status", interrupted))


def _timed(reactor: Any, d: Any, seconds: float) -> Any:
    """Give up on the agent after C{seconds}, with a clear message."""
    from twisted.internet import defer

    def timed_out(failure: Any) -> None:
        failure.trap(defer.TimeoutError)
        raise CommandError(f"the agent did not answer within {seconds:.0f} s")

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


# -- send --------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def _read_text(text: str) -> str:
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("standard input is not UTF-8 text") from None
    if decoded.endswith("\r\n"):
        decoded = decoded[:-2]
    elif decoded.endswith("\n"):
        decoded = decoded[:-1]
    return decoded


def run_send(args: argparse.Namespace) -> int:
    text = _read_text(args.text)
    if not text:
        raise UsageError("empty message")

    async def body(reactor: Any, client: Any) -> int:
        from twisted.internet import defer

        result = await _timed(
            reactor, client.send(args.to, text, args.thread, args.reply_to), CALL_TIMEOUT
        )
        ids = result.get("ids") or [result.get("id")]
        if args.wait is None:
            if args.json:
                _json(result)
            elif len(ids) == 1:
                _out(f"queued {ids[0]} to {clean(result.get('peer', args.to))}")
            else:
                _out(
                    f"queued {len(ids)} parts to {clean(result.get('peer', args.to))}: "
                    + " ".join(map(str, ids))
                )
            return 0
        waits = [client.waitDelivered(i, args.wait) for i in ids]
        statuses = await _timed(
            reactor, defer.gatherResults(waits, consumeErrors=True), args.wait + CALL_TIMEOUT
        )
        states = [s.get("state") for s in statuses]
        if all(state == "delivered" for state in states):
            outcome, code = "delivered", 0
        elif any(state in ("failed", "expired") for state in states):
            outcome, code = "failed", 1
        else:
            outcome, code = "pending", 3
        if args.json:
            _json({"message": result, "statuses": statuses, "outcome": outcome})
            return code
        for mid, status in zip(ids, statuses, strict=True):
            state = status.get("state")
            peer = clean(status.get("peer") or result.get("peer") or args.to)
            if state == "delivered":
                _out(f"delivered {mid} to {peer}{_devices(status)}")
            elif state in ("failed", "expired"):
                reason = status.get("reason")
                why = f": {clean(reason, oneline=True)}" if reason else ""
                _out(f"FAILED {mid} to {peer}: {state}{why}")
            else:
                _out(
                    f"not delivered after {args.wait:g} s: {mid} to {peer} is {state}"
                    f"{_devices(status)}"
                )
        return code

    return _with_agent(args, body)


# -- inbox ---------------------------------------------------------------------------------


def format_message(message: dict[str, Any], fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """One history entry: time, direction arrow, peer, body (continuation lines indented)."""
    when = local_time(message.get("ts") or message.get("received_at"), fmt)
    arrow = "->" if _is_outgoing(message) else "<-"
    peer = clean(message.get("peer"), oneline=True)
    prefix = f"{when}  {arrow} {peer}  "
    line = prefix + _indent_body(message.get("body", ""), len(prefix))
    if _is_outgoing(message) and message.get("state"):
        line += f"  [{clean(message['state'], oneline=True)}]"
    return line


def run_inbox(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None

    async def body(reactor: Any, client: Any) -> int:
        messages = await _timed(reactor, client.history(args.peer, since, args.limit), CALL_TIMEOUT)
        if args.json:
            _json(messages)
        elif not messages:
            print("no messages", file=sys.stderr)
        else:
            for message in messages:
                _out(format_message(message))
        return 0

    return _with_agent(args, body)


# -- watch ---------------------------------------------------------------------------------


def format_event(event: dict[str, Any], now: datetime | None = None) -> str:
    """One line for one event (C{watch}); peer-controlled text is L{clean}ed, on one line."""
    kind = event.get("type")
    peer = clean(event.get("peer"), oneline=True)
    stamp = (now or datetime.now(UTC)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if kind == "message":
        when = local_time(event.get("ts"), "%Y-%m-%d %H:%M:%S")
        return f"{when}  <- {peer}  {clean(event.get('body', ''), oneline=True)}"
    if kind == "delivery":
        reason = event.get("reason")
        why = f": {clean(reason, oneline=True)}" if reason else ""
        return (
            f"{stamp}  -> {peer}  {clean(event.get('id'))} "
            f"{clean(event.get('state'))}{_devices(event)}{why}"
        )
    if kind == "typing":
        state = event.get("state")
        doing = "is typing…" if state == "composing" else "stopped typing"
        return f"{stamp}  {peer} {doing}"
    if kind == "key_change":
        return (
            f"{stamp}  !! {peer} presented a new key {clean(event.get('fingerprint'))} "
            f"(policy {clean(event.get('policy'))}: {clean(event.get('action'))})"
        )
    if kind == "presence":
        nodes = event.get("nodes")
        count = len(nodes) if isinstance(nodes, list) else nodes
        return f"{stamp}  {peer} presence: {clean(count)} node(s)"
    if kind == "revoked":
        return (
            f"{stamp}  !! session with {peer} ended: certificate serial "
            f"{clean(event.get('serial'))} revoked by {clean(event.get('issuer'), oneline=True)}"
        )
    if kind == "session":
        return (
            f"{stamp}  session {clean(event.get('state'))} with {peer} node "
            f"{clean(event.get('node'))} ({clean(event.get('suite'))}, "
            f"{clean(event.get('group'))})"
        )
    return f"{stamp}  {clean(kind)}: {clean(json.dumps(event, default=str), oneline=True)}"


def run_watch(args: argparse.Namespace) -> int:
    types = list(args.type or WATCH_DEFAULT_TYPES)
    subscribe_types: list[str] | None = None if "all" in types else sorted(set(types))

    async def body(reactor: Any, client: Any) -> int:
        from twisted.internet import defer
        from zope.interface import implementer

        from sixchat.agent.control import AgentDisconnected
        from sixchat.agent.interfaces import IAgentEvents

        done: defer.Deferred[int] = defer.Deferred()

        @implementer(IAgentEvents)
        class Printer:
            def agentEvent(self, event: dict[str, Any]) -> None:
                if done.called or event.get("type") == "overflow":
                    return
                try:
                    if args.json:
                        _json(event, indent=None)
                    else:
                        _out(format_event(event))
                except BrokenPipeError:  # `sixchat watch | head`: the reader is done
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    done.callback(141)

        def lost(_: object) -> None:
            if done.called:
                return
            if client.overflowed:
                done.errback(
                    CommandError(
                        "the agent dropped this watch because it fell behind; events were lost "
                        "(catch up with 'sixchat inbox')"
                    )
                )
            else:
                done.errback(AgentDisconnected("the agent closed the connection"))

        client.addObserver(Printer())  # before the first event can arrive
        await _timed(reactor, client.subscribe(subscribe_types, args.peer), CALL_TIMEOUT)
        client.disconnected.addCallback(lost)
        if sys.stderr.isatty():
            print("watching; Ctrl-C to stop", file=sys.stderr)
        return await done

    return _with_agent(args, body, interrupted=0)


# -- chat ----------------------------------------------------------------------------------


class ChatUI:
    """
    The terminal side of C{sixchat chat}: a protocol for L{StandardIO} that reads the user's
    lines and shows the conversation.

    With a terminal on standard input it switches it to cbreak mode and edits the line itself
    (so it sees keystrokes and can send C{composing}, and can redraw the line being typed
    when a message arrives). Otherwise (a pipe) it reads lines as they come and treats any
    unfinished line as typing. Either way the input is one message per line; C{/quit}, end of
    input (Ctrl-D) or Ctrl-C end the chat.
    """

    PROMPT = "> "

    def __init__(
        self, reactor: Any, client: Any, peer: str, tty: bool, typing_idle: float = 5.0
    ) -> None:
        from twisted.internet import defer

        self.reactor = reactor
        self.client = client
        self.peer = peer
        self.tty = tty
        self.typing_idle = typing_idle
        self.transport: Any = None
        self.done: defer.Deferred[int] = defer.Deferred()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._line: list[str] = []
        self._pending_text = ""  # pipe mode: the unfinished line
        self._escape: str | None = None  # tty mode: an escape sequence being skipped
        self._last_cr = False
        self._typing = "idle"  # what we last told the peer: idle | composing | paused
        self._idle_timer: Any = None
        self._peer_typing = False
        self._shown: set[str] = set()  # message ids already printed
        self._mine: dict[str, str] = {}  # our message ids -> snippet, for delivery ticks
        self._sending: defer.Deferred[None] = defer.succeed(None)
        self._started = False
        self._early: list[dict[str, Any]] = []
        self._finishing = False
        self._status = 0

    # output --------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("utf-8"))

    def show(self, line: str) -> None:
        """Print a line above the input line (redrawing what the user has typed so far)."""
        if self.tty:
            self._write("\r\x1b[K" + line + "\n" + self.PROMPT + "".join(self._line))
        else:
            self._write(line + "\n")

    def _redraw(self) -> None:
        if self.tty:
            self._write("\r\x1b[K" + self.PROMPT + "".join(self._line))

    def _show_message(self, message: dict[str, Any]) -> None:
        mid = message.get("id")
        if isinstance(mid, str):
            if mid in self._shown:
                return
            self._shown.add(mid)
        when = local_time(message.get("ts") or message.get("received_at"), "%H:%M")
        if _is_outgoing(message):
            who = "me"
            if isinstance(mid, str):
                self._mine[mid] = _snippet(message.get("body", ""))
        else:
            who = clean(message.get("peer") or self.peer, oneline=True)
        prefix = f"[{when}] {who}: "
        self.show(prefix + _indent_body(message.get("body", ""), len(prefix)))

    # start -------------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """Output starts with L{start}, once the history is known."""

    def start(self, history: list[dict[str, Any]]) -> None:
        how = "Ctrl-D" if self.tty else "end of input"
        self.show(f"--- chat with {clean(self.peer, oneline=True)} (/quit or {how} to leave) ---")
        for message in history:
            self._show_message(message)
        self._started = True
        for event in self._early:
            self.agentEvent(event)
        self._early.clear()
        self._redraw()

    # events from the agent ---------------------------------------------------------------

    def agentEvent(self, event: dict[str, Any]) -> None:
        if not self._started:
            self._early.append(event)
            return
        kind = event.get("type")
        if event.get("peer") not in (None, self.peer):
            return
        if kind == "message":
            self._peer_typing = False
            self._show_message(event)
        elif kind == "typing":
            composing = event.get("state") == "composing"
            if composing and not self._peer_typing:
                self.show(f"{clean(self.peer, oneline=True)} is typing…")
            self._peer_typing = composing
        elif kind == "delivery":
            mid = event.get("id")
            state = event.get("state")
            snippet = self._mine.get(mid) if isinstance(mid, str) else None
            if snippet is None:
                return
            if state == "delivered":
                self.show(f"  ✓✓ delivered{_devices(event)}: {snippet}")
            elif state == "sent":
                self.show(f"  ✓ sent: {snippet}")
            elif state in ("failed", "expired"):
                reason = event.get("reason")
                why = f" ({clean(reason, oneline=True)})" if reason else ""
                self.show(f"  ✗ not delivered, {clean(state)}{why}: {snippet}")
        elif kind == "key_change":
            self.show(
                f"!! {clean(self.peer, oneline=True)} presented a new key "
                f"{clean(event.get('fingerprint'))} ({clean(event.get('action'))}); see "
                f"'sixchat trust {clean(self.peer, oneline=True)}'"
            )

    def agent_gone(self, _: object) -> None:
        if not self._finishing:
            self.show("--- the connection to the agent was lost ---")
            self._status = 1
            self.finish()

    # input -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._finishing:
            return
        text = self._decoder.decode(data)
        if self.tty:
            for ch in text:
                self._key(ch)
                if self._finishing:
                    return
            self._typing_activity(bool(self._line))
        else:
            self._pending_text += text
            *lines, self._pending_text = self._pending_text.split("\n")
            for line in lines:
                self._submit(line.rstrip("\r"))
                if self._finishing:
                    return
            self._typing_activity(bool(self._pending_text))

    def _key(self, ch: str) -> None:
        if self._escape is not None:  # skip ESC [ params final / ESC O x / ESC x
            self._escape += ch
            if len(self._escape) == 1 and ch not in "[O":
                self._escape = None
            elif len(self._escape) > 1 and ("@" <= ch <= "~"):
                self._escape = None
            return
        cr, self._last_cr = self._last_cr, ch == "\r"
        if ch == "\n" and cr:
            return
        if ch in "\r\n":
            line = "".join(self._line)
            self._line.clear()
            self._write("\r\x1b[K")
            self._submit(line)
            if not self._finishing:
                self._redraw()
        elif ch in "\x7f\x08":
            if self._line:
                self._line.pop()
                self._write("\b \b")
        elif ch == "\x15":  # Ctrl-U
            self._line.clear()
            self._redraw()
        elif ch == "\x17":  # Ctrl-W
            while self._line and self._line[-1] == " ":
                self._line.pop()
            while self._line and self._line[-1] != " ":
                self._line.pop()
            self._redraw()
        elif ch == "\x0c":  # Ctrl-L
            self._redraw()
        elif ch == "\x04":  # Ctrl-D: end of input on an empty line
            if not self._line:
                self.finish()
        elif ch == "\x1b":
            self._escape = ""
        elif ch == "\t":
            self._line.append(" ")
            self._write(" ")
        elif ch.isprintable():
            self._line.append(ch)
            self._write(ch)

    def _submit(self, line: str) -> None:
        stripped = line.strip()
        if not stripped:
            return
        if stripped.startswith("/") and not stripped.startswith("//"):
            command = stripped.split()[0].lower()
            if command in ("/quit", "/exit", "/q"):
                self.finish()
            elif command == "/help":
                self.show(
                    "type a line and press Enter to send it; /quit leaves; "
                    "start a line with // to send one beginning with /"
                )
            else:
                self.show(f"unknown command {clean(command)} (/help lists them)")
            return
        if stripped.startswith("//"):
            line = line.replace("//", "/", 1)
        self._typing = "idle"  # the message itself ends "composing" at the peer
        self._cancel_idle()
        self.show(
            f"[{datetime.now().strftime('%H:%M')}] me: " + _indent_body(line, len("[00:00] me: "))
        )
        self._sending.addBoth(lambda _: self._send(line))

    def _send(self, text: str) -> Any:
        def sent(result: dict[str, Any]) -> None:
            for mid in result.get("ids") or [result.get("id")]:
                if isinstance(mid, str):
                    self._mine[mid] = _snippet(text)
                    self._shown.add(mid)

        def failed(failure: Any) -> None:
            self.show(f"  ✗ not sent: {clean(failure.getErrorMessage(), oneline=True)}")

        return self.client.send(self.peer, text).addCallbacks(sent, failed)

    # typing notifications ------------------------------------------------------------

    def _typing_activity(self, has_text: bool) -> None:
        if has_text:
            if self._typing != "composing":
                self._set_typing("composing")
            self._cancel_idle()
            self._idle_timer = self.reactor.callLater(self.typing_idle, self._idle)
        elif self._typing == "composing":
            self._cancel_idle()
            self._set_typing("paused")

    def _idle(self) -> None:
        self._idle_timer = None
        if self._typing == "composing":
            self._set_typing("paused")

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _set_typing(self, state: str) -> None:
        self._typing = state
        # Typing is best effort: no session (NOT_CONNECTED) or an old agent are not errors.
        self._sending.addBoth(
            lambda _: self.client.typing(self.peer, state).addErrback(lambda _: None)
        )

    # the end -----------------------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """End of standard input: leave once what was typed has reached the agent."""
        if not self.tty and self._pending_text.strip():
            self._submit(self._pending_text.rstrip("\r"))
            self._pending_text = ""
        self.finish()

    def writeConnectionLost(self) -> None:
        self.finish()

    def finish(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        self._cancel_idle()
        if self._typing == "composing":
            self._set_typing("paused")
        if self.tty:
            self._write("\r\x1b[K")

        def close(_: object) -> None:
            if self.transport is not None:
                self.transport.loseConnection()  # fires connectionLost once output is out
            else:
                self.connectionLost(None)

        self._sending.addBoth(close)

    def connectionLost(self, reason: Any) -> None:
        self.transport = None
        if not self.done.called:
            self.done.callback(self._status)


def _snippet(body: Any, size: int = 40) -> str:
    text = clean(body, oneline=True)
    return text if len(text) <= size else text[: size - 1] + "…"


def run_chat(args: argparse.Namespace) -> int:
    from sixchat.identity import is_valid_identity

    if not is_valid_identity(args.peer):
        raise UsageError(f"{args.peer!r} is not an identity (local@domain)")
    import fcntl
    import termios
    import tty as ttymod

    from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
    from zope.interface import classImplements

    from sixchat.agent.interfaces import IAgentEvents

    classImplements(ChatUI, IProtocol, IHalfCloseableProtocol, IAgentEvents)
    tty = os.isatty(0)
    restore: list[Callable[[], object]] = []
    if tty:
        saved = termios.tcgetattr(0)
        restore.append(lambda: termios.tcsetattr(0, termios.TCSADRAIN, saved))
    # StandardIO makes stdin/stdout non-blocking; a shell sharing them would then see EAGAIN.
    for fd in (0, 1):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        restore.append(functools.partial(fcntl.fcntl, fd, fcntl.F_SETFL, flags))

    def restore_all() -> None:
        while restore:
            with contextlib.suppress(Exception):  # the terminal went away: nothing to restore
                restore.pop()()

    async def body(reactor: Any, client: Any) -> int:
        from twisted.internet.stdio import StandardIO

        ui = ChatUI(reactor, client, args.peer, tty=tty, typing_idle=args.typing_idle)
        client.addObserver(ui)  # events are held until the history is shown
        await _timed(
            reactor,
            client.subscribe(["message", "delivery", "typing", "key_change"], args.peer),
            CALL_TIMEOUT,
        )
        history = await _timed(reactor, client.history(args.peer, None, args.history), CALL_TIMEOUT)
        reactor.addSystemEventTrigger("before", "shutdown", restore_all)
        if tty:
            ttymod.setcbreak(0)
        StandardIO(ui, reactor=reactor)
        ui.start(history)
        client.disconnected.addCallback(ui.agent_gone)
        return await ui.done

    try:
        return _with_agent(args, body, interrupted=0)
    finally:
        restore_all()


# -- contacts, status, trust ---------------------------------------------------------------


def _fingerprint(key: Any) -> str:
    if isinstance(key, dict):
        for name in ("spki_sha256", "fingerprint", "sha256"):
            if key.get(name):
                return clean(key[name], oneline=True)
        return clean(json.dumps(key, default=str), oneline=True)
    return clean(key, oneline=True)


def run_contacts(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        contacts = await _timed(reactor, client.contacts(), CALL_TIMEOUT)
        if args.json:
            _json(contacts)
            return 0
        if not contacts:
            print("no contacts yet", file=sys.stderr)
            return 0
        rows = []
        for c in contacts:
            keys = c.get("keys") or []
            note = ""
            if c.get("key_change_pending"):
                ident = clean(c.get("identity"), oneline=True)
                note = f"KEY CHANGE PENDING: sixchat trust {ident} --accept-new-key"
            rows.append(
                (
                    clean(c.get("identity"), oneline=True),
                    local_time(c.get("last_seen"), "%Y-%m-%d %H:%M") if c.get("last_seen") else "-",
                    str(len(keys) if isinstance(keys, list) else keys),
                    note,
                )
            )
        width = max(len("IDENTITY"), *(len(r[0]) for r in rows))
        _out(f"{'IDENTITY':<{width}}  {'LAST SEEN':<16}  KEYS")
        for ident, seen, nkeys, note in rows:
            _out(f"{ident:<{width}}  {seen:<16}  {nkeys:<4}  {note}".rstrip())
        return 0

    return _with_agent(args, body)


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_scalar(v)}" for k, v in value.items()) or "-"
    return clean("-" if value is None else value, oneline=True)


def format_status(status: dict[str, Any]) -> list[str]:
    """The human form of L{IUserAgent.status}; unknown keys are shown too, generically."""
    lines = []
    shown = {
        "identity",
        "node",
        "listening",
        "registry",
        "advertised",
        "sessions",
        "outbox",
        "revocation",
    }
    lines.append(f"identity:    {_scalar(status.get('identity'))}")
    if "node" in status:
        lines.append(f"node:        {_scalar(status.get('node'))}")
    lines.append(f"listening:   {_scalar(status.get('listening'))}")
    registry = status.get("registry")
    if isinstance(registry, dict):
        extra = {k: v for k, v in registry.items() if k not in ("state", "registry", "expires")}
        text = f"{_scalar(registry.get('state'))}"
        if registry.get("registry"):
            text += f" with {_scalar(registry['registry'])}"
        expires = registry.get("expires")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            # the agent reports the expiry the registry granted, in seconds (refreshed at 2/3)
            text += f" for {int(expires)} s at a time"
        elif expires:
            text += f", expires {local_time(expires)}"
        if extra:
            text += f" ({_scalar(extra)})"
        lines.append(f"registry:    {text}")
    elif registry is not None:
        lines.append(f"registry:    {_scalar(registry)}")
    lines.append(f"advertised:  {_scalar(status.get('advertised') or [])}")
    sessions = status.get("sessions") or []
    lines.append(f"sessions:    {len(sessions)}")
    for s in sessions:
        if isinstance(s, dict):
            since = f", since {local_time(s['since'])}" if s.get("since") else ""
            lines.append(
                f"  {_scalar(s.get('peer'))}  node {_scalar(s.get('node'))}  "
                f"{_scalar(s.get('suite'))}  {_scalar(s.get('group'))}{since}"
            )
    outbox = status.get("outbox")
    if isinstance(outbox, dict):
        lines.append(
            "outbox:      " + (", ".join(f"{_scalar(v)} {k}" for k, v in outbox.items()) or "empty")
        )
    elif outbox is not None:
        lines.append(f"outbox:      {_scalar(outbox)}")
    revocation = status.get("revocation")
    if isinstance(revocation, dict):
        lines += _format_revocation(revocation)
    elif revocation is not None:
        lines.append(f"revocation:  {_scalar(revocation)}")
    for key in sorted(set(status) - shown):
        lines.append(f"{key + ':':<13}{_scalar(status[key])}")
    return lines


def _format_revocation(revocation: dict[str, Any]) -> list[str]:
    """The C{revocation} part of the status: where CRLs come from, and each CRL held."""
    lines = []
    if revocation.get("own_certificate_revoked"):
        lines.append(f"REVOKED:     {_scalar(revocation['own_certificate_revoked'])}")
    source = revocation.get("fetch")
    if source:
        refresh = revocation.get("refresh")
        every = f"{refresh:g}" if isinstance(refresh, int | float) else _scalar(refresh)
        text = f"CRLs fetched from {_scalar(source)} every {every} s"
        if revocation.get("last_fetch"):
            text += f"; last {local_time(revocation['last_fetch'])}"
        if revocation.get("next_fetch"):
            text += f"; next {local_time(revocation['next_fetch'])}"
    else:
        text = "CRLs not fetched"
    lines.append(f"revocation:  {text}")
    if revocation.get("last_error"):
        lines.append(f"  last error: {_scalar(revocation['last_error'])}")
    crls = revocation.get("crls") or []
    if isinstance(crls, list):
        if not crls:
            lines.append("  no CRL held: revocation is not checked")
        for crl in crls:
            if not isinstance(crl, dict):
                continue
            stale = "  STALE" if crl.get("stale") else ""
            lines.append(
                f"  {_scalar(crl.get('issuer'))}  number {_scalar(crl.get('number'))}  "
                f"{_scalar(crl.get('revoked'))} revoked  updated "
                f"{local_time(crl.get('this_update'))}, next {local_time(crl.get('next_update'))}"
                f"{stale}"
            )
    return lines


def run_status(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        status = await _timed(reactor, client.status(), CALL_TIMEOUT)
        if args.json:
            _json(status)
        else:
            for line in format_status(status):
                _out(line)
        return 0

    return _with_agent(args, body)


def run_trust(args: argparse.Namespace) -> int:
    from sixchat.identity import is_valid_identity

    if not is_valid_identity(args.peer):
        raise UsageError(f"{args.peer!r} is not an identity (local@domain)")

    async def body(reactor: Any, client: Any) -> int:
        from sixchat.agent.control import UnknownIdentity

        if args.accept_new_key:
            result = await _timed(reactor, client.trust(args.peer, True), CALL_TIMEOUT)
            if args.json:
                _json(result)
                return 0
            who = clean(result.get("identity") or args.peer, oneline=True)
            if result.get("accepted"):
                _out(f"accepted the new key of {who}")
            else:
                _out(f"no pending key change for {who}; nothing changed")
            for key in result.get("keys") or []:
                _out(f"  key {_fingerprint(key)}")
            return 0
        contacts = await _timed(reactor, client.contacts(), CALL_TIMEOUT)
        contact = next((c for c in contacts if c.get("identity") == args.peer), None)
        if contact is None:
            raise UnknownIdentity(f"{args.peer} is not a contact of this agent")
        if args.json:
            _json(contact)
            return 0
        _out(f"{clean(args.peer, oneline=True)}")
        for key in contact.get("keys") or []:
            _out(f"  key {_fingerprint(key)}")
        if contact.get("key_change_pending"):
            _out(
                f"a key change is pending: accept it with 'sixchat trust "
                f"{clean(args.peer, oneline=True)} --accept-new-key'"
            )
        else:
            _out("no key change pending")
        return 0

    return _with_agent(args, body)


# -- registration --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "send",
        help="send a message through the running agent",
        description="Queue a message in the running agent, which delivers it (and retries "
        "until the peer's receipt arrives). Without --wait: exit 0 once queued. With --wait S: "
        "exit 0 when delivered, 3 when still queued or sent after S seconds, 1 when it failed "
        "or expired.",
    )
    p.add_argument("to", metavar="IDENTITY", help="the recipient, e.g. bob@example.com")
    p.add_argument("text", metavar="TEXT", help="the message; '-' reads it from standard input")
    p.add_argument(
        "--wait", type=_positive_float, metavar="S", help="wait up to S seconds for the receipt"
    )
    p.add_argument("--thread", help="conversation thread id")
    p.add_argument("--reply-to", metavar="ID", help="the id of the message this answers")
    _add_json(p, "print the agent's answer as JSON")
    _add_connection_options(p)
    p.set_defaults(handler=run_send)

    p = subparsers.add_parser(
        "inbox",
        help="show stored messages (both directions)",
        description="Print stored messages, oldest first, both directions: '<-' received, "
        "'->' sent (with its delivery state).",
    )
    p.add_argument("--peer", metavar="IDENTITY", help="only the conversation with IDENTITY")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only messages since WHEN: an age (2h, 3d, 1w, 1d12h) or an RFC 3339 "
        "date-time (2026-11-26T08:00:00Z; without a zone: local time)",
    )
    p.add_argument(
        "--limit",
        type=_limit,
        default=50,
        metavar="N",
        help="at most the N most recent messages (default 50)",
    )
    _add_json(p, "print a JSON list of message objects")
    _add_connection_options(p)
    p.set_defaults(handler=run_inbox)

    p = subparsers.add_parser(
        "watch",
        help="stream incoming messages and delivery events until Ctrl-C",
        description="Print one line per agent event until Ctrl-C (exit 0). By default "
        "incoming messages and delivery changes; --type chooses (repeatable, or 'all').",
    )
    p.add_argument("--peer", metavar="IDENTITY", help="only events about IDENTITY")
    p.add_argument(
        "--type",
        action="append",
        choices=(*EVENT_TYPES, "all"),
        help="event type to show (repeatable; default: message and delivery)",
    )
    _add_json(p, "one JSON object per line")
    _add_connection_options(p)
    p.set_defaults(handler=run_watch)

    p = subparsers.add_parser(
        "chat",
        help="interactive chat with one peer",
        description="Show recent history with IDENTITY, then incoming messages, delivery "
        "ticks and typing as they happen; each line you type is sent. /quit or Ctrl-D "
        "(end of input) leaves.",
    )
    p.add_argument("peer", metavar="IDENTITY", help="who to chat with")
    p.add_argument(
        "--history",
        type=_limit,
        default=20,
        metavar="N",
        help="messages of history to show first (default 20)",
    )
    p.add_argument(
        "--typing-idle",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="send 'paused' after S seconds without typing (default 5)",
    )
    _add_connection_options(p)
    p.set_defaults(handler=run_chat)

    p = subparsers.add_parser("contacts", help="list known contacts and their keys")
    _add_json(p, "print a JSON list of contact objects")
    _add_connection_options(p)
    p.set_defaults(handler=run_contacts)

    p = subparsers.add_parser(
        "status", help="the agent's registration, addresses, sessions and outbox"
    )
    _add_json(p, "print the agent's status object")
    _add_connection_options(p)
    p.set_defaults(handler=run_status)

    p = subparsers.add_parser(
        "trust",
        help="show a contact's keys or accept its new key",
        description="Without options, show IDENTITY's known keys and whether a key change is "
        "pending. With --accept-new-key, accept the pending key change (exit 0 also when "
        "none is pending).",
    )
    p.add_argument("peer", metavar="IDENTITY")
    p.add_argument(
        "--accept-new-key", action="store_true", help="trust the new key IDENTITY presented"
    )
    _add_json(p, "print JSON")
    _add_connection_options(p)
    p.set_defaults(handler=run_trust)


def _limit(text: str) -> int:
    from sixchat.cli import positive_int

    value = positive_int(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError("at most 10000")
    return value
