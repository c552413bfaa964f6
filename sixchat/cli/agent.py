"""
The commands that talk to a running user agent over its control socket
(L{sixchat.agent.control}): C{send}, C{cancel}, C{inbox}, C{watch}, C{chat}, C{contacts},
C{status}, C{trust}. This module registers them all and holds the one-shot commands; C{inbox},
C{status}, C{watch} and C{chat} live in L{sixchat.cli.inbox}, L{sixchat.cli.status},
L{sixchat.cli.watch} and L{sixchat.cli.chat}, the presentation helpers in
L{sixchat.cli.terminal}, the connection to the agent in L{sixchat.cli.client}.

Output is for people by default and JSON with C{--json} (the agent's own data, unchanged).
Everything a peer controls (bodies, identities, reasons) is passed through L{clean} before it
reaches a terminal, so a message cannot carry escape sequences that rewrite the screen or
bidirectional overrides that reorder what is shown.

Exit statuses: 0 success; 1 an error (no agent, the agent refused, a message failed, the
recipient is unknown to the registry, nothing to cancel); 2 a
usage error; 3 C{send --wait} timed out with the message still on its way; 130 C{send --wait}
interrupted. C{watch} and C{chat} end with 0 on Ctrl-C, C{/quit} or end of input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sixchat.agent.events import EVENT_TYPES
from sixchat.cli import CommandError, UsageError
from sixchat.cli.chat import run_chat
from sixchat.cli.client import (
    CALL_TIMEOUT,
    add_connection_options,
    add_json_option,
    message_limit,
    positive_float,
    timed,
    with_agent,
)
from sixchat.cli.inbox import run_inbox
from sixchat.cli.status import run_devices, run_status
from sixchat.cli.terminal import (
    clean,
    devices_suffix,
    format_key_event,
    local_time,
    out,
    print_json,
)
from sixchat.cli.watch import run_watch

__all__ = [
    "register",
    "run_cancel",
    "run_contacts",
    "run_send",
    "run_trust",
]

# -- send --------------------------------------------------------------------------------


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

        from sixchat.agent.errors import UnknownIdentity

        try:
            if args.queue_unknown:
                sent = client.send(args.to, text, args.thread, args.reply_to, True)
            else:
                sent = client.send(args.to, text, args.thread, args.reply_to)
            result = await timed(reactor, sent, CALL_TIMEOUT)
        except UnknownIdentity as e:
            raise UnknownIdentity(
                f"{e}; nothing was queued: check the address, or use --queue-unknown to "
                "queue it until it registers"
            ) from None
        ids = result.get("ids") or [result.get("id")]
        if args.wait is None:
            if args.json:
                print_json(result)
            elif len(ids) == 1:
                out(f"queued {ids[0]} to {clean(result.get('peer', args.to))}")
            else:
                out(
                    f"queued {len(ids)} parts to {clean(result.get('peer', args.to))}: "
                    + " ".join(map(str, ids))
                )
            return 0
        waits = [client.waitDelivered(i, args.wait) for i in ids]
        statuses = await timed(
            reactor, defer.gatherResults(waits, consumeErrors=True), args.wait + CALL_TIMEOUT
        )
        states = [s.get("state") for s in statuses]
        if all(state == "delivered" for state in states):
            outcome, code = "delivered", 0
        elif any(state in ("failed", "expired", "cancelled") for state in states):
            outcome, code = "failed", 1
        else:
            outcome, code = "pending", 3
        if args.json:
            print_json({"message": result, "statuses": statuses, "outcome": outcome})
            return code
        for mid, status in zip(ids, statuses, strict=True):
            state = status.get("state")
            peer = clean(status.get("peer") or result.get("peer") or args.to)
            if state == "delivered":
                out(f"delivered {mid} to {peer}{devices_suffix(status)}")
            elif state in ("failed", "expired", "cancelled"):
                reason = status.get("reason")
                why = f": {clean(reason, oneline=True)}" if reason else ""
                out(f"FAILED {mid} to {peer}: {state}{why}")
            else:
                unknown = (
                    f"; {peer} is not known to the registry yet (sixchat cancel {mid} drops it)"
                    if status.get("recipient_unknown")
                    else ""
                )
                out(
                    f"not delivered after {args.wait:g} s: {mid} to {peer} is {state}"
                    f"{devices_suffix(status)}{unknown}"
                )
        return code

    return with_agent(args, body)


# -- cancel --------------------------------------------------------------------------------


def run_cancel(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        results = []
        for mid in args.ids:
            results.append(await timed(reactor, client.cancel(mid), CALL_TIMEOUT))
        if args.json:
            print_json(results)
            return 0
        for result in results:
            nodes = result.get("nodes") or []
            was_sent = any(isinstance(n, dict) and n.get("state") == "sent" for n in nodes)
            note = " (it had been sent: a device may have it without our receipt)"
            out(
                f"cancelled {clean(result.get('id'))} to "
                f"{clean(result.get('peer'), oneline=True)}{note if was_sent else ''}"
            )
        return 0

    return with_agent(args, body)


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
        contacts = await timed(reactor, client.contacts(), CALL_TIMEOUT)
        if args.json:
            print_json(contacts)
            return 0
        if not contacts:
            print("no contacts yet", file=sys.stderr)
            return 0
        rows = []
        for c in contacts:
            keys = c.get("keys") or []
            note = ""
            ident = clean(c.get("identity"), oneline=True)
            changes = [
                e
                for e in c.get("key_events") or []
                if isinstance(e, dict) and e.get("what") in ("warned", "accepted", "refused")
            ]
            if c.get("key_change_pending"):
                note = f"KEY CHANGE PENDING: sixchat trust {ident} --accept-new-key"
            elif changes:
                last = changes[-1]
                note = (
                    f"key changed {local_time(last.get('at'), '%Y-%m-%d %H:%M')} "
                    f"({clean(last.get('what'), oneline=True)}): sixchat trust {ident}"
                )
            rows.append(
                (
                    clean(c.get("identity"), oneline=True),
                    local_time(c.get("last_seen"), "%Y-%m-%d %H:%M") if c.get("last_seen") else "-",
                    str(len(keys) if isinstance(keys, list) else keys),
                    note,
                )
            )
        width = max(len("IDENTITY"), *(len(r[0]) for r in rows))
        out(f"{'IDENTITY':<{width}}  {'LAST SEEN':<16}  KEYS")
        for ident, seen, nkeys, note in rows:
            out(f"{ident:<{width}}  {seen:<16}  {nkeys:<4}  {note}".rstrip())
        return 0

    return with_agent(args, body)


def run_trust(args: argparse.Namespace) -> int:
    from sixchat.identity import is_valid_identity

    if not is_valid_identity(args.peer):
        raise UsageError(f"{args.peer!r} is not an identity (local@domain)")

    async def body(reactor: Any, client: Any) -> int:
        from sixchat.agent.errors import UnknownIdentity

        if args.accept_new_key or args.forget_old:
            result = await timed(
                reactor,
                client.trust(args.peer, args.accept_new_key, args.forget_old),
                CALL_TIMEOUT,
            )
            if args.json:
                print_json(result)
                return 0
            who = clean(result.get("identity") or args.peer, oneline=True)
            accepted = result.get("accepted") or []
            if args.accept_new_key:
                if accepted:
                    out(f"accepted the new key of {who}")
                else:
                    out(f"no pending key change for {who}; nothing changed")
            forgotten = result.get("forgotten") or []
            if args.forget_old:
                if forgotten:
                    out(f"forgot {len(forgotten)} old key(s) of {who}:")
                    for key in forgotten:
                        out(f"  forgotten {_fingerprint(key)}")
                else:
                    out(f"no old key of {who} to forget")
            new = accepted if isinstance(accepted, list) else []
            for key in result.get("keys") or []:
                mark = "  (new)" if key in new else ""
                out(f"  key {_fingerprint(key)}{mark}")
            return 0
        contacts = await timed(reactor, client.contacts(), CALL_TIMEOUT)
        contact = next((c for c in contacts if c.get("identity") == args.peer), None)
        if contact is None:
            raise UnknownIdentity(f"{args.peer} is not a contact of this agent")
        if args.json:
            print_json(contact)
            return 0
        out(f"{clean(args.peer, oneline=True)}")
        for key in contact.get("keys") or []:
            out(f"  key {_fingerprint(key)}")
        for key in contact.get("pending_keys") or []:
            out(f"  new key {_fingerprint(key)}  (refused, pending)")
        if contact.get("key_change_pending"):
            out(
                f"a key change is pending: accept it with 'sixchat trust "
                f"{clean(args.peer, oneline=True)} --accept-new-key' (add --forget-old to "
                "retire the old key) once you have checked the new key with them"
            )
        else:
            out("no key change pending")
        for event in contact.get("key_events") or []:
            out(format_key_event(args.peer, event))
        return 0

    return with_agent(args, body)


# -- registration --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "send",
        help="send a message through the running agent",
        description="Queue a message in the running agent, which delivers it (and retries "
        "until the peer's receipt arrives). Without --wait: exit 0 once queued. With --wait S: "
        "exit 0 when delivered, 3 when still queued or sent after S seconds (the peer is "
        "offline), 1 when it failed or expired. A recipient the registry does not know (never "
        "registered, or its certificate expired or was revoked) is refused with exit 1 and "
        "nothing is queued, unless --queue-unknown.",
    )
    p.add_argument("to", metavar="IDENTITY", help="the recipient, e.g. bob@example.com")
    p.add_argument("text", metavar="TEXT", help="the message; '-' reads it from standard input")
    p.add_argument(
        "--wait", type=positive_float, metavar="S", help="wait up to S seconds for the receipt"
    )
    p.add_argument("--thread", help="conversation thread id")
    p.add_argument("--reply-to", metavar="ID", help="the id of the message this answers")
    p.add_argument(
        "--queue-unknown",
        action="store_true",
        help="queue the message even if the registry does not know IDENTITY (yet), for "
        "someone who has enrolled but never started an agent; it waits (7 days by default) "
        "for them to register",
    )
    add_json_option(p, "print the agent's answer as JSON")
    add_connection_options(p)
    p.set_defaults(handler=run_send)

    p = subparsers.add_parser(
        "cancel",
        help="take queued messages out of the outbox",
        description="Remove outgoing messages no device has received yet (queued, or sent "
        "without a receipt) from the outbox and the history. Exit 1 for an unknown id or a "
        "message already delivered, expired or failed.",
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="the message id send printed")
    add_json_option(p, "print the cancelled messages' status objects")
    add_connection_options(p)
    p.set_defaults(handler=run_cancel)

    p = subparsers.add_parser(
        "inbox",
        help="show stored messages (both directions)",
        description="Print stored messages, both directions, oldest first in the order this "
        "agent received or queued them, with this agent's time ('<-' received, '->' sent with "
        "its delivery state; a sender's clock far from ours is shown too), and the contacts' "
        "key changes ('!!' lines) among them. Works with the agent stopped too: the store is "
        "then read directly, read-only.",
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
        type=message_limit,
        default=50,
        metavar="N",
        help="at most the N most recent messages (default 50)",
    )
    add_json_option(p, "print a JSON list of message objects")
    add_connection_options(p)
    p.set_defaults(handler=run_inbox)

    p = subparsers.add_parser(
        "watch",
        help="stream incoming messages and delivery events until Ctrl-C",
        description="Print one line per agent event until Ctrl-C (exit 0). By default "
        "incoming messages, delivery changes, key changes, unknown recipients and file "
        "transfers; --type chooses (repeatable, or 'all').",
    )
    p.add_argument("--peer", metavar="IDENTITY", help="only events about IDENTITY")
    p.add_argument(
        "--type",
        action="append",
        choices=(*EVENT_TYPES, "all"),
        help="event type to show (repeatable; default: message, delivery, key_change, "
        "unknown_recipient and file)",
    )
    add_json_option(p, "one JSON object per line")
    add_connection_options(p)
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
        type=message_limit,
        default=20,
        metavar="N",
        help="messages of history to show first (default 20)",
    )
    p.add_argument(
        "--typing-idle",
        type=positive_float,
        default=5.0,
        metavar="S",
        help="send 'paused' after S seconds without typing (default 5)",
    )
    add_connection_options(p)
    p.set_defaults(handler=run_chat)

    p = subparsers.add_parser("contacts", help="list known contacts and their keys")
    add_json_option(p, "print a JSON list of contact objects")
    add_connection_options(p)
    p.set_defaults(handler=run_contacts)

    p = subparsers.add_parser(
        "status", help="the agent's registration, addresses, sessions and outbox"
    )
    add_json_option(p, "print the agent's status object")
    add_connection_options(p)
    p.set_defaults(handler=run_status)

    p = subparsers.add_parser(
        "devices",
        help="this identity's other nodes (devices) and own-device sync with each",
        description="List the other nodes of this identity: registered at the registry, "
        "linked to this agent (a session that syncs), when their changes were last merged "
        "and how many of their changes are still to merge.",
    )
    add_json_option(p, "print the devices object")
    add_connection_options(p)
    p.set_defaults(handler=run_devices)

    p = subparsers.add_parser(
        "trust",
        help="show a contact's keys or accept its new key",
        description="Without options, show IDENTITY's known keys, whether a key change is "
        "pending and the key history. With --accept-new-key, accept the pending key change "
        "(exit 0 also when none is pending); with --forget-old, retire the older keys.",
    )
    p.add_argument("peer", metavar="IDENTITY")
    p.add_argument(
        "--accept-new-key", action="store_true", help="trust the new key IDENTITY presented"
    )
    p.add_argument(
        "--forget-old",
        action="store_true",
        help="unpin IDENTITY's older keys: all but the key just accepted (with "
        "--accept-new-key) or the newest key a key change brought; presenting one of them "
        "again is then a key change",
    )
    add_json_option(p, "print JSON")
    add_connection_options(p)
    p.set_defaults(handler=run_trust)
