"""
Presentation for the commands that talk to the agent: text a peer controls made safe for a
terminal, the agent's timestamps in local time, C{--since} ages and dates, and the two ways
output leaves (a line for people, JSON for programs). Kept apart from the commands so every
command shows peer-controlled text through the same L{clean}.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sixchat.cli import UsageError

__all__ = [
    "clean",
    "devices_suffix",
    "format_key_event",
    "key_event_lines",
    "indent_body",
    "is_outgoing",
    "local_time",
    "out",
    "parse_since",
    "parse_time",
    "peer_key",
    "seconds_between",
    "with_key_events",
    "print_json",
]

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


def parse_time(ts: Any) -> datetime | None:
    """An agent timestamp (RFC 3339) as an aware datetime; C{None} if it is not one."""
    return _parse_time(ts)


def seconds_between(later: Any, earlier: Any) -> float | None:
    """C{later - earlier} in seconds, for two agent timestamps; C{None} if either is bad."""
    a, b = _parse_time(later), _parse_time(earlier)
    if a is None or b is None:
        return None
    return (a - b).total_seconds()


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
    from sixchat.stanzas import format_timestamp  # the spec's form; not needed for --help

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
    return format_timestamp(when)


def is_outgoing(message: dict[str, Any]) -> bool:
    direction = str(message.get("direction", "")).lower()
    return direction in ("out", "outgoing", "sent") or message.get("outgoing") is True


def indent_body(body: Any, indent: int) -> str:
    return clean(body).replace("\n", "\n" + " " * indent)


def devices_suffix(status: dict[str, Any]) -> str:
    total = status.get("total_nodes")
    if isinstance(total, int) and total > 1:
        return f" ({status.get('delivered_nodes', 0)}/{total} devices)"
    return ""


def out(line: str = "") -> None:
    print(line, flush=True)


def print_json(value: Any, indent: int | None = 2) -> None:
    print(
        json.dumps(
            value, indent=indent, sort_keys=indent is not None, ensure_ascii=False, default=str
        ),
        flush=True,
    )


def format_key_event(peer: Any, event: dict[str, Any]) -> str:
    """
    One line of a contact's key history (the agent's C{key_events}, or a live C{key_change}
    event, whose C{action} is the C{what}), like a messenger's "safety number changed".
    """
    who = clean(peer, oneline=True)
    what = event.get("what") or event.get("action")
    fp = clean(event.get("fingerprint"), oneline=True)
    if what == "refused":
        return (
            f"!! {who} has a NEW KEY {fp}, REFUSED (pin policy refuse): nothing is exchanged "
            f"with it until you check it with them and run 'sixchat trust {who} "
            "--accept-new-key'"
        )
    if what == "warned":
        return (
            f"!! {who} has a NEW KEY {fp} (pin policy warn: messages still flow); check it "
            f"with them, then 'sixchat trust {who} --forget-old' retires the old one"
        )
    if what == "accepted":
        return f"!! {who} has a NEW KEY {fp} (accepted: pin policy accept)"
    if what == "trusted":
        return f"-- you trusted the new key {fp} of {who}"
    if what == "forgotten":
        return f"-- you retired the old key {fp} of {who}"
    return f"!! {who}: key {fp}: {clean(what, oneline=True)}"


def peer_key(identity: Any) -> str:
    """An identity as the agent compares them (normalized), for matching answers."""
    from sixchat.identity import normalize_identity

    try:
        return normalize_identity(str(identity))
    except ValueError:
        return str(identity)


def key_event_lines(contacts: Any, peer: str | None = None) -> list[dict[str, Any]]:
    """
    Key history entries from a C{contacts} answer, as history-like dicts
    (C{{"key_event": ..., "peer": ..., "at": ...}}) for merging into a conversation by time;
    only C{peer}'s when given.
    """
    entries = []
    for contact in contacts if isinstance(contacts, list) else []:
        if not isinstance(contact, dict):
            continue
        identity = contact.get("identity")
        if peer is not None and peer_key(identity) != peer_key(peer):
            continue
        for event in contact.get("key_events") or []:
            if isinstance(event, dict):
                entries.append({"key_event": event, "peer": identity, "at": event.get("at")})
    return entries


def with_key_events(
    messages: list[dict[str, Any]], contacts: Any, peer: str | None, since: str | None
) -> list[dict[str, Any]]:
    """
    C{messages} with the key history of their peers (C{peer}'s only, when given) merged in
    by time: the lines from the first message shown on (or from C{since}, or all when no
    message is shown).
    """
    events = key_event_lines(contacts, peer)
    start = since
    if messages:
        first = messages[0].get("at") or messages[0].get("ts")
        start = max(filter(None, [start, first]), default=None, key=lambda t: _sort_key(t))
    if start is not None:
        events = [e for e in events if _sort_key(e.get("at")) >= _sort_key(start)]
    if peer is None and messages:
        peers = {peer_key(m.get("peer")) for m in messages}
        events = [e for e in events if peer_key(e.get("peer")) in peers]
    merged = [(_sort_key(m.get("at") or m.get("ts")), 0, i, m) for i, m in enumerate(messages)]
    merged += [(_sort_key(e.get("at")), 1, i, e) for i, e in enumerate(events)]
    return [m for *_, m in sorted(merged, key=lambda x: x[:3])]


def _sort_key(ts: Any) -> float:
    when = parse_time(ts)
    return when.timestamp() if when is not None else 0.0
