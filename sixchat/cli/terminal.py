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
    "indent_body",
    "is_outgoing",
    "local_time",
    "out",
    "parse_since",
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
