"""
A fake L{IUserAgent}: answers like L{sixchat.agent.service.UserAgentService} without a network,
a store or a registry, and records every call, so control clients, the command line and
applications embedding sixchat can be tested against a real control socket and asserted on.

What a call does is steered by the recipient's local part (see L{FakeAgent}), so a test can
reach every outcome a real agent has (queued, delivered, expired, unknown, crashing) by
choosing an address rather than by configuring the fake.

C{python -m sixchat.testing.agent DATA_DIR} serves one on C{DATA_DIR/control.sock} until killed,
for trying the command line by hand.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from sixchat.agent.errors import (
    AgentError,
    MessageFinal,
    NotConnected,
    UnknownIdentity,
    UnknownMessage,
)
from sixchat.agent.interfaces import IAgentEvents, IUserAgent

__all__ = ["ALICE", "BOB", "FakeAgent", "sample_history", "serve_fake_agent"]

#: The fake agent's own identity, and the contact its history and status talk about.
ALICE = "alice@example.com"
BOB = "bob@example.com"


def sample_history() -> list[dict[str, Any]]:
    """
    A fresh L{FakeAgent}'s history: both directions, a multi-line body, and one body a hostile
    peer crafted (a terminal escape, a bidirectional override) for presentation tests.
    """
    return [
        {
            "id": "h1",
            "peer": BOB,
            "direction": "in",
            "body": "Hello, Alice",
            "ts": "2026-11-26T08:00:00.000Z",
            "at": "2026-11-26T08:00:01.000Z",
        },
        {
            "id": "h2",
            "peer": BOB,
            "direction": "out",
            "body": "Hi Bob\nsecond line",
            "ts": "2026-11-26T08:01:00.000Z",
            "at": "2026-11-26T08:01:00.000Z",
            "state": "delivered",
        },
        {
            "id": "h3",
            "peer": "carol@example.com",
            "direction": "in",
            "body": "evil \x1b[2J\u202egnp.exe",
            "ts": "2026-11-26T09:00:00.000Z",
            "at": "2026-11-26T09:00:02.000Z",
        },
    ]


@implementer(IUserAgent)
class FakeAgent:
    """
    Answers like the real agent, records every call. Recipients steer the outcome: C{nobody@}
    is unknown to the registry (refused, or queued with C{queue_unknown}), C{boom@} crashes,
    C{bad@} rejects the text, C{slow@} is never delivered in
    time, C{fail@} expires, C{offline@} has no session (typing), C{multi@} has two devices.

    Every call is appended to L{calls} as C{(method name, *arguments)} (C{send} adds
    C{"queue_unknown"} only when that is set); L{sends} and
    L{typings} pick out two kinds. L{emit} plays an agent event to the observers. L{messages}
    (the history) and L{contact_list} may be replaced by a test.

    @param clock: what C{waitDelivered} of a C{slow@} message waits on (a C{task.Clock} in
        unit tests, the reactor when a real client talks to it).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.calls: list[tuple[Any, ...]] = []
        self.observers: list[IAgentEvents] = []
        self.counter = 0
        self.statuses: dict[str, dict[str, Any]] = {}
        self.messages = sample_history()
        #: File transfers, both directions (L{files}); L{sendFile} appends.
        self.transfers: list[dict[str, Any]] = [
            {
                "id": "in1",
                "peer": BOB,
                "direction": "in",
                "name": "photo.jpg",
                "size": 2048,
                "received": 2048,
                "sha256": "ab" * 32,
                "state": "received",
                "path": "/data/files/photo.jpg",
                "resumed_from": 1024,
            }
        ]
        self.contact_list: list[dict[str, Any]] = [
            {
                "identity": BOB,
                "first_seen": "2026-11-01T10:00:00.000Z",
                "last_seen": "2026-11-26T08:00:00.000Z",
                "keys": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
                "key_change_pending": False,
                "pending_keys": [],
                "key_events": [],
            },
            {
                "identity": "carol@example.com",
                "first_seen": "2026-11-02T10:00:00.000Z",
                "last_seen": None,
                "keys": ["aa" * 32],
                "key_change_pending": True,
                "pending_keys": ["bb" * 32],
                "key_events": [
                    {"what": "refused", "fingerprint": "bb" * 32, "at": "2026-11-26T08:02:00.000Z"}
                ],
            },
        ]

    def send(
        self,
        to: str,
        text: str,
        thread: str | None = None,
        reply_to: str | None = None,
        queue_unknown: bool = False,
    ) -> defer.Deferred[dict[str, Any]]:
        call: tuple[Any, ...] = ("send", to, text, thread, reply_to)
        # queue_unknown is recorded only when set, as a last "queue_unknown".
        self.calls.append((*call, "queue_unknown") if queue_unknown else call)
        if to.startswith("nobody@") and not queue_unknown:
            reason = f"{to} is not known to registry irp.example.com"
            self.emit({"type": "unknown_recipient", "peer": to, "reason": reason, "ids": [],
                       "action": "refused"})  # fmt: skip
            raise UnknownIdentity(f"{reason} (never registered there)")
        if to.startswith("boom@"):
            raise RuntimeError("secret internals")
        if to.startswith("bad@"):
            raise ValueError("text contains a character XML cannot carry")
        ids = []
        for _ in range(0, len(text), 32768):
            self.counter += 1
            mid = f"m{self.counter}"
            ids.append(mid)
            self.statuses[mid] = {
                "id": mid,
                "peer": to,
                "state": "queued",
                "delivered_nodes": 0,
                "total_nodes": 2 if to.startswith("multi@") else 1,
            }
        result: dict[str, Any] = {"id": ids[0], "peer": to, "state": "queued"}
        if len(ids) > 1:
            result["ids"] = ids
        return defer.succeed(result)

    def cancel(self, message_id: str) -> defer.Deferred[dict[str, Any]]:
        """Cancels a message not yet delivered (not after C{waitDelivered} delivered it)."""
        self.calls.append(("cancel", message_id))
        status = self.statuses.get(message_id)
        if status is None:
            return defer.fail(UnknownMessage(f"no outgoing message {message_id}"))
        if status["state"] not in ("queued", "sent"):
            state = status["state"]
            return defer.fail(
                MessageFinal(f"message {message_id} is already {state}; nothing to cancel")
            )
        del self.statuses[message_id]
        cancelled = dict(status, state="cancelled", description="cancelled")
        self.emit(dict(cancelled, type="delivery"))
        return defer.succeed(cancelled)

    def waitDelivered(self, message_id: str, timeout: float) -> defer.Deferred[dict[str, Any]]:
        self.calls.append(("waitDelivered", message_id, timeout))
        status = self.statuses.get(message_id)
        if status is None:
            return defer.fail(UnknownMessage(f"no message {message_id}"))
        if status["peer"].startswith("nobody@"):  # queued with queue_unknown: never delivered
            return deferLater(
                self.clock, timeout, lambda: dict(status, state="queued", recipient_unknown=True)
            )
        if status["peer"].startswith("slow@"):
            return deferLater(self.clock, timeout, lambda: dict(status, state="sent"))
        if status["peer"].startswith("fail@"):
            status.update(state="expired", reason="no receipt within 7 days")
            return defer.succeed(dict(status))
        status.update(state="delivered", delivered_nodes=status["total_nodes"])
        return defer.succeed(dict(status))

    def status_of(self, message_id: str) -> defer.Deferred[dict[str, Any]]:
        self.calls.append(("status_of", message_id))
        if message_id not in self.statuses:
            raise KeyError(message_id)
        return defer.succeed(dict(self.statuses[message_id]))

    def history(
        self, peer: str | None, since: str | None, limit: int
    ) -> defer.Deferred[list[dict[str, Any]]]:
        self.calls.append(("history", peer, since, limit))
        found = [
            m
            for m in self.messages
            if (peer is None or m["peer"] == peer) and (since is None or m["ts"] >= since)
        ]
        return defer.succeed(found[-limit:])

    def conversations(self) -> defer.Deferred[list[dict[str, Any]]]:
        self.calls.append(("conversations",))
        return defer.succeed(
            [{"peer": BOB, "last_ts": "2026-11-26T08:01:00.000Z", "last_body": "Hi", "unread": 1}]
        )

    def contacts(self) -> defer.Deferred[list[dict[str, Any]]]:
        self.calls.append(("contacts",))
        return defer.succeed(self.contact_list)

    def status(self) -> defer.Deferred[dict[str, Any]]:
        self.calls.append(("status",))
        return defer.succeed(
            {
                "identity": ALICE,
                "node": "n-01",
                "listening": ["tcp6:4605"],
                "registry": {
                    "state": "registered",
                    "registry": "irp.example.com",
                    "expires": "2026-11-26T10:00:00.000Z",
                },
                "advertised": ["[2001:db8::1]:4605", "192.0.2.1:4605"],
                "sessions": [
                    {
                        "peer": BOB,
                        "node": "n-b",
                        "suite": "chacha20-poly1305",
                        "group": "x25519-mlkem768",
                        "since": "2026-11-26T07:00:00.000Z",
                    }
                ],
                "outbox": {"queued": 2, "sent": 1},
            }
        )

    def trust(
        self, identity: str, accept_new_key: bool, forget_old: bool = False
    ) -> defer.Deferred[dict[str, Any]]:
        self.calls.append(("trust", identity, accept_new_key, forget_old))
        for contact in self.contact_list:
            if contact["identity"] == identity:
                accepted = contact["pending_keys"] if accept_new_key else []
                if accepted:
                    contact["key_change_pending"] = False
                    contact["pending_keys"] = []
                    contact["keys"] = sorted(set(contact["keys"]) | set(accepted))
                forgotten: list[str] = []
                if forget_old:
                    keep = set(accepted or contact["keys"][-1:])
                    forgotten = [k for k in contact["keys"] if k not in keep]
                    contact["keys"] = [k for k in contact["keys"] if k in keep]
                return defer.succeed(
                    {
                        "identity": identity,
                        "keys": contact["keys"],
                        "accepted": accepted,
                        "forgotten": forgotten,
                    }
                )
        raise UnknownIdentity(f"{identity} is not a contact")

    def followPresence(self, peer: str) -> Callable[[], None]:
        self.calls.append(("followPresence", peer))
        return lambda: self.calls.append(("unfollowPresence", peer))

    def typing(self, to: str, state: str) -> defer.Deferred[None]:
        self.calls.append(("typing", to, state))
        if to.startswith("offline@"):
            raise NotConnected(f"no session with {to}")
        return defer.succeed(None)

    def sendFile(self, to: str, path: str) -> defer.Deferred[dict[str, Any]]:
        """Like L{send}, for files: C{nobody@} is unknown; a missing file is an error."""
        self.calls.append(("sendFile", to, path))
        if to.startswith("nobody@"):
            raise UnknownIdentity(f"{to} is not a contact and the registry does not know it")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AgentError(f"cannot read {path}: {e.strerror}") from None
        self.counter += 1
        fid = f"f{self.counter}"
        self.statuses[fid] = {
            "id": fid,
            "peer": to,
            "state": "queued",
            "delivered_nodes": 0,
            "total_nodes": 1,
        }
        transfer = {
            "id": fid,
            "peer": to,
            "direction": "out",
            "name": os.path.basename(path),
            "size": len(data),
            "received": 0,
            "sha256": hashlib.sha256(data).hexdigest(),
            "state": "queued",
            "path": path,
            "resumed_from": 0,
        }
        self.transfers.append(transfer)
        return defer.succeed(dict(transfer))

    def files(self) -> defer.Deferred[list[dict[str, Any]]]:
        self.calls.append(("files",))
        return defer.succeed([dict(t) for t in self.transfers])

    def addObserver(self, observer: IAgentEvents) -> None:
        self.observers.append(observer)

    def removeObserver(self, observer: IAgentEvents) -> None:
        self.observers.remove(observer)

    def emit(self, event: dict[str, Any]) -> None:
        """Hand C{event} to every observer, synchronously, as the agent does."""
        for observer in list(self.observers):
            observer.agentEvent(event)

    def sends(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "send"]

    def typings(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "typing"]


def serve_fake_agent(data_dir: str) -> None:
    """C{python -m sixchat.testing.agent DATA_DIR}: a fake agent for manual CLI trials."""
    from twisted.internet import task

    from sixchat.agent.control.server import listen_control

    async def main(reactor: Any) -> None:
        await listen_control(reactor, data_dir, FakeAgent(reactor))
        print("ready", flush=True)
        await defer.Deferred()  # until killed

    task.react(lambda r: defer.ensureDeferred(main(r)))


if __name__ == "__main__":
    serve_fake_agent(sys.argv[1])
