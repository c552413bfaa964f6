"""
The control interface's wire contract: the AMP argument types and one AMP command per
L{IUserAgent} method, with the bounds every argument is checked against before the agent sees
it. Server and client both import it; neither side's code is needed to read the contract.

Wire conventions:

  - one AMP command per L{IUserAgent} method; arguments with a natural AMP type use it
    (C{amp.Unicode}, C{amp.Integer}, C{amp.Float}, C{amp.Boolean});
  - structured values (the agent's dicts and lists) travel as JSON text (L{JSON}), because
    AMP has no map type and C{AmpList} would freeze the agent's evolving dicts into a schema;
  - AMP limits every value to 65,535 bytes, which a message body (32,768 characters, up to
    four UTF-8 bytes each) or a page of history easily exceeds, so L{JSON} and L{BigUnicode}
    split their encoded bytes over several keys (C{name}, C{name.1}, C{name.2}, ...);
  - expected failures are AMP errors with a code (L{ERRORS}) and a one-line description; an
    unexpected exception in the agent is logged there and reaches the client as
    C{AGENT_FAILURE} without its text (it could hold anything), never as a traceback, and the
    connection stays open (AMP would otherwise close it).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from twisted.protocols import amp

from sixchat.agent.errors import ERRORS, BadArgument
from sixchat.identity import is_valid_identity
from sixchat.stanzas import TYPING_STATES, format_timestamp

__all__ = [
    "JSON",
    "MAX_HISTORY",
    "MAX_TEXT",
    "MAX_WAIT",
    "TYPING_STATES",
    "BigUnicode",
    "Cancel",
    "Contacts",
    "Conversations",
    "Event",
    "Files",
    "History",
    "MessageStatus",
    "Send",
    "SendFile",
    "Status",
    "Subscribe",
    "Trust",
    "Typing",
    "Unsubscribe",
    "WaitDelivered",
    "check_identity",
    "normalize_timestamp",
]

#: Largest text C{Send} accepts (the agent splits anything over 32,768 characters); a bound
#: against piping a disk image into C{sixchat send}, not a protocol limit.
MAX_TEXT = 1_000_000

#: Largest C{History} page and longest C{WaitDelivered}.
MAX_HISTORY = 10_000
MAX_WAIT = 86_400.0


# -- argument types ------------------------------------------------------------------------


class _Chunked(amp.Argument):
    """
    A value whose encoding may exceed AMP's 65,535-byte value limit: the bytes are split over
    the keys C{name}, C{name.1}, C{name.2}, ... and joined again on receipt.
    """

    #: 1,024 chunks of 64 KiB: 64 MiB, far beyond anything legitimate.
    max_chunks = 1024

    def encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        obj = self.retrieve(objects, name.decode("ascii"), proto)
        if self.optional and obj is None:
            return
        data = self.encode(obj)
        size = amp.MAX_VALUE_LENGTH
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        if len(chunks) > self.max_chunks:
            raise ValueError(f"{name.decode()} is too large for the control protocol")
        strings[name] = chunks[0]
        for i, chunk in enumerate(chunks[1:], 1):
            strings[name + b"." + str(i).encode()] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        key = name.decode("ascii")
        first = self.retrieve(strings, name, proto)
        if first is None:
            objects[key] = None
            return
        parts = [first]
        for i in range(1, self.max_chunks + 1):
            part = strings.pop(name + b"." + str(i).encode(), None)
            if part is None:
                break
            parts.append(part)
        objects[key] = self.decode(b"".join(parts))


class BigUnicode(_Chunked):
    """Text of any length (a message body), UTF-8 on the wire."""

    def encode(self, obj: Any) -> bytes:
        return str(obj).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class JSON(_Chunked):
    """
    Any JSON-able value. Values the agent hands over that JSON cannot represent (a datetime,
    bytes) are sent as their C{str()}, so one odd field never breaks a command.
    """

    def encode(self, obj: Any) -> bytes:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


# -- commands ------------------------------------------------------------------------------


class _AgentCommand(amp.Command):
    errors = ERRORS


class Send(_AgentCommand):
    """L{IUserAgent.send}: response C{result} is C{{id, peer, state[, ids]}}."""

    arguments = [
        (b"to", amp.Unicode()),
        (b"text", BigUnicode()),
        (b"thread", amp.Unicode(optional=True)),
        (b"reply_to", amp.Unicode(optional=True)),
        (b"queue_unknown", amp.Boolean(optional=True)),
    ]
    response = [(b"result", JSON())]


class Cancel(_AgentCommand):
    """
    L{IUserAgent.cancel}: the cancelled message's status dict; C{UNKNOWN_MESSAGE} or
    C{MESSAGE_FINAL} when there is nothing to cancel.
    """

    arguments = [(b"message_id", amp.Unicode())]
    response = [(b"result", JSON())]


class SendFile(_AgentCommand):
    """L{IUserAgent.sendFile}: C{path} is absolute; response C{result} is the transfer's dict."""

    arguments = [(b"to", amp.Unicode()), (b"path", BigUnicode())]
    response = [(b"result", JSON())]


class Files(_AgentCommand):
    """L{IUserAgent.files}: a JSON list of transfer dicts."""

    response = [(b"files", JSON())]


class WaitDelivered(_AgentCommand):
    """L{IUserAgent.waitDelivered}: the status dict once delivered or after C{timeout}."""

    arguments = [(b"message_id", amp.Unicode()), (b"timeout", amp.Float())]
    response = [(b"result", JSON())]


class MessageStatus(_AgentCommand):
    """L{IUserAgent.status_of}: the message's status dict."""

    arguments = [(b"message_id", amp.Unicode())]
    response = [(b"result", JSON())]


class History(_AgentCommand):
    """
    L{IUserAgent.history}: C{since} is RFC 3339 and reaches the agent normalised to UTC
    C{YYYY-MM-DDTHH:MM:SS.mmmZ} (the spec's C{ts} form); C{messages} is a JSON list.
    """

    arguments = [
        (b"peer", amp.Unicode(optional=True)),
        (b"since", amp.Unicode(optional=True)),
        (b"limit", amp.Integer()),
    ]
    response = [(b"messages", JSON())]


class Conversations(_AgentCommand):
    """L{IUserAgent.conversations}: a JSON list of C{{peer, last_ts, last_body, unread}}."""

    response = [(b"conversations", JSON())]


class Contacts(_AgentCommand):
    """L{IUserAgent.contacts}: a JSON list of contact dicts."""

    response = [(b"contacts", JSON())]


class Status(_AgentCommand):
    """L{IUserAgent.status}: registration, addresses, sessions, outbox, as one JSON dict."""

    response = [(b"status", JSON())]


class Trust(_AgentCommand):
    """L{IUserAgent.trust}: C{result} is C{{identity, keys, accepted, forgotten}}."""

    arguments = [
        (b"identity", amp.Unicode()),
        (b"accept_new_key", amp.Boolean()),
        (b"forget_old", amp.Boolean(optional=True)),
    ]
    response = [(b"result", JSON())]


class Typing(_AgentCommand):
    """L{IUserAgent.typing}; C{NOT_CONNECTED} when no session is open (typing is never queued)."""

    arguments = [(b"to", amp.Unicode()), (b"state", amp.Unicode())]


class Subscribe(_AgentCommand):
    """
    Start receiving L{Event} calls, optionally only of some C{types} and about one C{peer}.
    Subscribing again replaces the filter.
    """

    arguments = [
        (b"types", amp.ListOf(amp.Unicode(), optional=True)),
        (b"peer", amp.Unicode(optional=True)),
    ]


class Unsubscribe(_AgentCommand):
    """Stop receiving events; events still queued for this client are dropped."""


class Event(amp.Command):
    """
    Server to client: one agent event (L{IAgentEvents.agentEvent}), as JSON. The (empty)
    answer is the acknowledgement that drives flow control, so clients must answer it.
    """

    arguments = [(b"event", JSON())]


# -- validation ----------------------------------------------------------------------------


def check_identity(value: str, what: str = "identity") -> str:
    """
    C{value} if it is an identity; checked here so a malformed one is a L{BadArgument} naming
    the argument (C{what}) rather than whatever the agent would make of it.
    """
    if not is_valid_identity(value):
        raise BadArgument(f"{what} {value!r} is not an identity (local@domain)")
    return value


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)")


def normalize_timestamp(text: str) -> str:
    """
    An RFC 3339 date-time with a zone (C{Z} or C{+hh:mm}) as UTC C{YYYY-MM-DDTHH:MM:SS.mmmZ},
    the spec's C{ts} grammar with a fixed precision, so the agent can compare it as text.

    @raise BadArgument: for anything else (a missing zone included: guessing one would move
        the window by hours).
    """
    candidate = text.strip()
    if not _RFC3339.fullmatch(candidate):
        raise BadArgument(f"not an RFC 3339 date-time with a zone: {text!r}")
    # fromisoformat takes at most 6 fractional digits.
    candidate = re.sub(r"(\.\d{6})\d+", r"\1", candidate)
    if candidate[-1] in "zZ":
        candidate = candidate[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(candidate)
    except ValueError:
        raise BadArgument(f"not a valid date-time: {text!r}") from None
    return format_timestamp(when)
