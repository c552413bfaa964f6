"""
C{GET /api/events}: the agent's events (L{sixchat.agent.events}) to the page as server-sent
events, one C{data:} line of JSON each: new messages, typing, delivery states, key changes,
files, sessions, presence. Server-sent events rather than a WebSocket: the page only listens
on this channel (everything it does is a POST that goes through the CSRF checks), the
browser's C{EventSource} reconnects by itself and sends the session cookie like any request,
and Twisted 26.10's C{twisted.web.websocket} needs C{wsproto}, a dependency this does not.

A page that cannot keep up (the socket's buffer full: the transport pauses us) misses events
rather than growing the agent's memory; it gets one C{{"type": "overflow"}} once it catches up,
and reloads what it shows. A comment line every L{HEARTBEAT} seconds keeps proxies and dead
connections honest.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.web import resource, server
from zope.interface import implementer

from sixchat.agent.interfaces import IAgentEvents

__all__ = ["HEARTBEAT", "PAGE_EVENTS", "EventStream"]

#: Seconds between keep-alive comments.
HEARTBEAT = 15.0

#: What the page is told about (the agent's event types it shows).
PAGE_EVENTS = frozenset(
    {"message", "delivery", "typing", "key_change", "file", "session", "presence",
     "unknown_recipient", "revoked"}
)  # fmt: skip


@implementer(IAgentEvents)
class _Listener:
    """One open C{EventSource}: an agent observer and the request's streaming producer."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.paused = False
        self.missed = False

    # IAgentEvents
    def agentEvent(self, event: dict[str, Any]) -> None:
        if event.get("type") not in PAGE_EVENTS:
            return
        if self.paused:
            self.missed = True
            return
        self.send(event)

    def send(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, ensure_ascii=True, separators=(",", ":"), default=str)
        self.request.write(b"data: " + data.encode() + b"\n\n")

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.missed:
            self.missed = False
            self.send({"type": "overflow"})

    def stopProducing(self) -> None:
        self.paused = True


class EventStream(resource.Resource):
    """The C{text/event-stream} resource; C{clock} drives the heartbeat."""

    isLeaf = True

    def __init__(self, agent: Any, clock: Any, heartbeat: float = HEARTBEAT) -> None:
        super().__init__()
        self.agent = agent
        self.clock = clock
        self.heartbeat = heartbeat
        #: The open streams (tests look; the service closes them at stop).
        self.listeners: list[_Listener] = []

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        listener = _Listener(request)
        request.registerProducer(listener, True)
        request.write(b"retry: 2000\n: sixchat events\n\n")
        self.agent.addObserver(listener)
        self.listeners.append(listener)
        beat = task.LoopingCall(lambda: listener.paused or request.write(b": keep-alive\n\n"))
        beat.clock = self.clock
        beat.start(self.heartbeat, now=False)

        def gone(_: object) -> None:
            beat.stop()
            self.agent.removeObserver(listener)
            if listener in self.listeners:
                self.listeners.remove(listener)

        request.notifyFinish().addBoth(gone)
        return server.NOT_DONE_YET

    def closeAll(self) -> None:
        """End every open stream (the agent is stopping)."""
        for listener in list(self.listeners):
            request = listener.request
            if not request.finished and not getattr(request, "_disconnected", False):
                request.unregisterProducer()
                request.finish()
