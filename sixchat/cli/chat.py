"""
C{sixchat chat}: an interactive conversation with one peer on the terminal (or through pipes),
with delivery ticks and typing notifications both ways.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import functools
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sixchat.cli import UsageError, did_you_mean
from sixchat.cli.client import CALL_TIMEOUT, timed, with_agent
from sixchat.cli.terminal import (
    clean,
    devices_suffix,
    format_key_event,
    indent_body,
    is_outgoing,
    local_time,
    peer_key,
    with_key_events,
)

__all__ = ["ChatUI", "run_chat"]


#: What a line starting with / may be (the rest are refused, with the closest of these).
CHAT_COMMANDS = ("/quit", "/exit", "/help", "/file")


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
        self._online: bool | None = None  # what we last showed: None (nothing yet)
        self._sessions = 0  # open sessions with the peer, from session events

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
        if "key_event" in message:
            when = local_time(message.get("at"), "%H:%M")
            self.show(f"[{when}] {format_key_event(self.peer, message['key_event'])}")
            return
        mid = message.get("id")
        if isinstance(mid, str):
            if mid in self._shown:
                return
            self._shown.add(mid)
        # our clock (when this agent received or queued it), the order history is in
        ours = message.get("at") or message.get("received_at") or message.get("ts")
        when = local_time(ours, "%H:%M")
        if is_outgoing(message):
            who = "me"
            if isinstance(mid, str):
                self._mine[mid] = _snippet(message.get("body", ""))
        else:
            who = clean(message.get("peer") or self.peer, oneline=True)
        prefix = f"[{when}] {who}: "
        self.show(prefix + indent_body(message.get("body", ""), len(prefix)))

    # start -------------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        """Output starts with L{start}, once the history is known."""

    def start(self, history: list[dict[str, Any]], contacts: Any = ()) -> None:
        """
        Show the history, with the peer's key history (C{contacts}: the agent's answer)
        merged in by time, and a pending key change last, where it is seen.
        """
        how = "Ctrl-D" if self.tty else "end of input"
        self.show(f"--- chat with {clean(self.peer, oneline=True)} (/quit or {how} to leave) ---")
        for message in with_key_events(history, list(contacts), self.peer, None):
            self._show_message(message)
        for contact in contacts:
            if isinstance(contact, dict) and peer_key(contact.get("identity")) == peer_key(
                self.peer
            ):
                for fp in contact.get("pending_keys") or []:
                    self.show(format_key_event(self.peer, {"what": "refused", "fingerprint": fp}))
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
        if event.get("peer") is not None and peer_key(event["peer"]) != peer_key(self.peer):
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
                self.show(f"  ✓✓ delivered{devices_suffix(event)}: {snippet}")
            elif state == "sent":
                self.show(f"  ✓ sent: {snippet}")
            elif state == "cancelled":
                self.show(f"  ✗ cancelled: {snippet}")
            elif state in ("failed", "expired"):
                reason = event.get("reason")
                why = f" ({clean(reason, oneline=True)})" if reason else ""
                self.show(f"  ✗ not delivered, {clean(state)}{why}: {snippet}")
        elif kind == "unknown_recipient" and event.get("action") == "queued":
            # (a refused send is shown by _send's failure already)
            self.show(
                f"  ✗ {clean(event.get('reason'), oneline=True)}; queued until it registers "
                f"(sixchat cancel {' '.join(clean(i) for i in event.get('ids') or [])})"
            )
        elif kind == "key_change":
            self.show(format_key_event(self.peer, event))
        elif kind == "presence":
            nodes = event.get("nodes")
            self._presence(bool(nodes), len(nodes) if isinstance(nodes, list) else 0)
        elif kind == "session":
            if event.get("state") == "open":
                self._sessions += 1
                self._presence(True, None)
            elif event.get("state") == "closed":
                self._sessions = max(0, self._sessions - 1)

    def _presence(self, online: bool, nodes: int | None) -> None:
        """
        Say when the peer goes offline (the registry reports no node of it) or comes back.
        Sessions closing are not "offline": idle sessions close while the peer is there.
        """
        if online == self._online:
            return
        first = self._online is None
        self._online = online
        who = clean(self.peer, oneline=True)
        if not online:
            self.show(f"--- {who} is offline: messages wait in the outbox until they are back ---")
        elif not first:
            where = f" ({nodes} device(s))" if nodes else ""
            self.show(f"--- {who} is online again{where} ---")

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
            self._typing_activity(_is_text("".join(self._line)))
        else:
            self._pending_text += text
            *lines, self._pending_text = self._pending_text.split("\n")
            for line in lines:
                self._submit(line.rstrip("\r"))
                if self._finishing:
                    return
            self._typing_activity(_is_text(self._pending_text))

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
                    "type a line and press Enter to send it; /file PATH sends a file; "
                    "/quit leaves; start a line with // to send one beginning with /"
                )
            elif command == "/file":
                path = stripped[len("/file") :].strip()
                if not path:
                    self.show("usage: /file PATH")
                else:
                    self._sending.addBoth(lambda _: self._sendFile(path))
            else:
                guess = did_you_mean(command, CHAT_COMMANDS)
                self.show(f"unknown command {clean(command)}{guess} (/help lists them)")
            return
        if stripped.startswith("//"):
            line = line.replace("//", "/", 1)
        self._typing = "idle"  # the message itself ends "composing" at the peer
        self._cancel_idle()
        self.show(
            f"[{datetime.now().strftime('%H:%M')}] me: " + indent_body(line, len("[00:00] me: "))
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

    def _sendFile(self, path: str) -> Any:
        import os

        full = os.path.abspath(os.path.expanduser(path))

        def sent(result: dict[str, Any]) -> None:
            fid = result.get("id")
            name = clean(result.get("name"), oneline=True)
            if isinstance(fid, str):
                self._mine[fid] = f"[file] {name}"
                self._shown.add(fid)
            self.show(f"  sending file {name} ({result.get('size')} bytes)")

        def failed(failure: Any) -> None:
            self.show(f"  ✗ file not sent: {clean(failure.getErrorMessage(), oneline=True)}")

        return self.client.sendFile(self.peer, full).addCallbacks(sent, failed)

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


def _is_text(line: str) -> bool:
    """A line being typed that is a message, not a command (C{/help}): typing is shown only
    for messages; C{//...} is a message beginning with C{/}."""
    stripped = line.lstrip()
    return bool(stripped) and (not stripped.startswith("/") or stripped.startswith("//"))


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
        await timed(
            reactor,
            client.subscribe(
                [
                    "message",
                    "delivery",
                    "typing",
                    "key_change",
                    "presence",
                    "session",
                    "unknown_recipient",
                ],
                args.peer,
            ),
            CALL_TIMEOUT,
        )
        contacts = await timed(reactor, client.contacts(), CALL_TIMEOUT)
        history = await timed(reactor, client.history(args.peer, None, args.history), CALL_TIMEOUT)
        reactor.addSystemEventTrigger("before", "shutdown", restore_all)
        if tty:
            ttymod.setcbreak(0)
        StandardIO(ui, reactor=reactor)
        ui.start(history, contacts)
        client.disconnected.addCallback(ui.agent_gone)
        return await ui.done

    try:
        return with_agent(args, body, interrupted=0)
    finally:
        restore_all()
