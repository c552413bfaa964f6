"""
C{sixchat watch}: one line (or one JSON object) per agent event until Ctrl-C, end of the
reader (C{| head}) or the agent going away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from sixchat.cli import CommandError
from sixchat.cli.client import CALL_TIMEOUT, timed, with_agent
from sixchat.cli.terminal import (
    clean,
    devices_suffix,
    format_key_event,
    local_time,
    out,
    print_json,
)

__all__ = ["WATCH_DEFAULT_TYPES", "format_event", "run_watch"]

#: Event types C{watch} shows unless told otherwise (C{--type}).
WATCH_DEFAULT_TYPES = ("message", "delivery", "key_change", "unknown_recipient", "file")


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
            f"{clean(event.get('state'))}{devices_suffix(event)}{why}"
        )
    if kind == "typing":
        state = event.get("state")
        doing = "is typing…" if state == "composing" else "stopped typing"
        return f"{stamp}  {peer} {doing}"
    if kind == "key_change":
        return f"{stamp}  {format_key_event(event.get('peer'), event)}"
    if kind == "unknown_recipient":
        ids = [clean(i) for i in event.get("ids") or []]
        what = (
            f"message(s) {' '.join(ids)} stay queued (sixchat cancel ID)"
            if event.get("action") == "queued"
            else "message not sent"
        )
        return f"{stamp}  !! {clean(event.get('reason'), oneline=True)}: {what}"
    if kind == "presence":
        nodes = event.get("nodes")
        count = len(nodes) if isinstance(nodes, list) else nodes
        return f"{stamp}  {peer} presence: {clean(count)} node(s)"
    if kind == "revoked":
        return (
            f"{stamp}  !! session with {peer} ended: certificate serial "
            f"{clean(event.get('serial'))} revoked by {clean(event.get('issuer'), oneline=True)}"
        )
    if kind == "file":
        arrow = "<-" if event.get("direction") == "in" else "->"
        done = event.get("received", event.get("sent"))
        size = event.get("size")
        progress = f" {done}/{size} bytes" if done is not None else f" {size} bytes"
        reason = event.get("reason")
        why = f": {clean(reason, oneline=True)}" if reason else ""
        where = f" -> {clean(event.get('path'), oneline=True)}" if event.get("path") else ""
        return (
            f"{stamp}  {arrow} {peer}  file {clean(event.get('name'), oneline=True)} "
            f"{clean(event.get('state'))}{progress}{why}{where}"
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

        from sixchat.agent.errors import AgentDisconnected
        from sixchat.agent.interfaces import IAgentEvents

        done: defer.Deferred[int] = defer.Deferred()

        @implementer(IAgentEvents)
        class Printer:
            def agentEvent(self, event: dict[str, Any]) -> None:
                if done.called or event.get("type") == "overflow":
                    return
                try:
                    if args.json:
                        print_json(event, indent=None)
                    else:
                        out(format_event(event))
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
        await timed(reactor, client.subscribe(subscribe_types, args.peer), CALL_TIMEOUT)
        client.disconnected.addCallback(lost)
        if sys.stderr.isatty():
            print("watching; Ctrl-C to stop", file=sys.stderr)
        return await done

    return with_agent(args, body, interrupted=0)
