"""
C{sixchat inbox}: the conversation history, read from the running agent or, when it is
stopped, from its store read-only; every line a peer controls goes through L{clean}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sixchat.cli import CommandError
from sixchat.cli.client import (
    CALL_TIMEOUT,
    timed,
    with_agent,
)
from sixchat.cli.terminal import (
    clean,
    format_key_event,
    indent_body,
    is_outgoing,
    local_time,
    out,
    parse_since,
    print_json,
    seconds_between,
    with_key_events,
)

__all__ = ["format_message", "run_inbox"]


#: A sender's clock further than this from ours is shown next to our time (seconds).
CLOCK_SKEW_SHOWN = 120.0


def format_message(message: dict[str, Any], fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """
    One history entry: time, direction arrow, peer, body (continuation lines indented).
    The time is this agent's (C{at}: when it received or queued the message), the order
    the history is in; the sender's own clock (C{ts}) is added when it differs by more
    than L{CLOCK_SKEW_SHOWN}. A key history entry (C{key_event}) is one C{!!} line.
    """
    if "key_event" in message:
        when = local_time(message.get("at"), fmt)
        return f"{when}  {format_key_event(message.get('peer'), message['key_event'])}"
    ours = message.get("at") or message.get("received_at")
    when = local_time(ours or message.get("ts"), fmt)
    arrow = "->" if is_outgoing(message) else "<-"
    peer = clean(message.get("peer"), oneline=True)
    prefix = f"{when}  {arrow} {peer}  "
    line = prefix + indent_body(message.get("body", ""), len(prefix))
    if is_outgoing(message) and message.get("state"):
        line += f"  [{clean(message['state'], oneline=True)}]"
    skew = seconds_between(ours, message.get("ts"))
    if not is_outgoing(message) and skew is not None and abs(skew) > CLOCK_SKEW_SHOWN:
        line += f"  (sent {local_time(message.get('ts'), fmt)} by their clock)"
    return line


def run_inbox(args: argparse.Namespace) -> int:
    from sixchat.agent.errors import NoAgentRunning

    since = parse_since(args.since) if args.since else None

    async def body(reactor: Any, client: Any) -> int:
        contacts = [] if args.json else await timed(reactor, client.contacts(), CALL_TIMEOUT)
        messages = await timed(reactor, client.history(args.peer, since, args.limit), CALL_TIMEOUT)
        _print_inbox(args, messages, contacts, since)
        return 0

    try:
        return with_agent(args, body)
    except NoAgentRunning:
        stored = _read_stopped_store(args, since)
        if stored is None:
            raise
        return _print_inbox(args, *stored, since)


def _print_inbox(
    args: argparse.Namespace, messages: list[dict[str, Any]], contacts: Any, since: str | None
) -> int:
    if args.json:
        print_json(messages)
        return 0
    shown = with_key_events(messages, contacts, args.peer, since)
    if not shown:
        print("no messages", file=sys.stderr)
    for entry in shown:
        out(format_message(entry))
    return 0


def _read_stopped_store(
    args: argparse.Namespace, since: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """
    With no agent running: the history (and key history) read from the agent's store
    itself, read-only; C{None} when there is no store to read (the error stands).
    """
    import os

    from sixchat.agent import views
    from sixchat.agent.datadir import resolve_data_dir
    from sixchat.agent.errors import NoAgentRunning
    from sixchat.agent.store import DEFAULT_FILENAME, ReadOnlyDatabase, StoreError
    from sixchat.stanzas import parse_timestamp

    try:
        data_dir = resolve_data_dir(args.data_dir, args.identity)
    except NoAgentRunning:
        return None
    path = os.path.join(data_dir, DEFAULT_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        db = ReadOnlyDatabase(path)
    except StoreError as e:
        raise CommandError(f"the agent is not running and its store cannot be read: {e}") from None
    try:
        when = parse_timestamp(since) if since else None
        entries = db.history(args.peer, when, args.limit)
        events = db.key_events(args.peer, None, 10_000)
    finally:
        db.close()
    print(
        f"(the agent is not running: read from {path}, read-only)",
        file=sys.stderr,
    )
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_peer.setdefault(event.identity, []).append(views.key_event_dict(event))
    contacts = [{"identity": p, "key_events": e} for p, e in by_peer.items()]
    return [views.history_dict(e) for e in entries], contacts


