"""
C{sixchat demo}: the whole system in one process, on loopback, in a temporary directory.

A CA, a SQLite registry, two people enrolled by invitation (keys made locally, CSRs sent over
the registry's TLS), two user agents that register themselves; alice writes while bob is
offline, bob comes online, the registry pushes his presence, the message is delivered and
receipted, and a short conversation follows. Every step is printed; exit status 0 means the
whole path worked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from zope.interface import implementer

STEP_TIMEOUT = 30.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a CA, a registry and two agents on loopback and chat between them",
        description="Runs the whole system in one process on 127.0.0.1 with the embedded "
        "defaults (SQLite, Ed25519, x25519-mlkem768): a CA, a registry, alice and bob "
        "enrolled by invitation, a message sent while bob is offline and delivered when he "
        "comes online, then a short conversation. Prints each step; exit status 0 on success.",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--dir", help="use this (empty or new) directory instead of a temporary one")
    p.set_defaults(handler=run)


class Printer:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, who: str, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.2f}s] {who:<9} {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    base = args.dir or tempfile.mkdtemp(prefix="sixchat-demo-")
    os.makedirs(base, exist_ok=True)
    say = Printer()
    outcome: dict[str, Any] = {"status": 1}

    def main(reactor: Any) -> defer.Deferred[None]:
        d = defer.ensureDeferred(_demo(reactor, base, say))

        def done(status: int) -> None:
            outcome["status"] = status

        def failed(f: Any) -> None:
            say("demo", f"FAILED: {f.getErrorMessage()}")
            outcome["status"] = 1

        return d.addCallbacks(done, failed)

    try:
        task.react(main)
    except SystemExit:
        pass
    if args.keep or args.dir:
        print(f"files kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return int(outcome["status"])


async def _within(d: Any, what: str, reactor: Any) -> Any:
    """Await C{d}, failing with a clear message after L{STEP_TIMEOUT}."""
    from twisted.internet import defer

    d = defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else d
    timer = reactor.callLater(STEP_TIMEOUT, d.cancel)
    try:
        return await d
    except defer.CancelledError:
        raise TimeoutError(f"{what}: no result within {STEP_TIMEOUT:.0f} s") from None
    finally:
        if timer.active():
            timer.cancel()


async def _demo(reactor: Any, base: str, say: Printer) -> int:
    from twisted.internet import defer

    from sixchat import pki
    from sixchat.agent.interfaces import IAgentEvents
    from sixchat.agent.service import UserAgentService
    from sixchat.cli.enroll import make_csr
    from sixchat.handshake import PeerConfig
    from sixchat.identity import Identity
    from sixchat.irp.client import connectRegistry
    from sixchat.irp.server import IRPServerService, RegistryConfig
    from sixchat.irp.server.authority import Authority
    from sixchat.irp.store.sqlite import SQLiteStore
    from sixchat.trust import TrustStore

    # 1. The CA --------------------------------------------------------------------------
    ca_dir = os.path.join(base, "ca")
    ca_key, ca_cert = pki.init_ca(ca_dir, "sixchat demo CA")
    say("ca", f"created CA '{ca_cert.subject.rfc4514_string()}' in {ca_dir}")

    # 2. The registry ------------------------------------------------------------------------
    store = SQLiteStore(os.path.join(base, "registry.sqlite"), reactor)
    await store.open()
    authority = Authority(ca_key, ca_cert, store)
    server_key = pki.generate_key("ed25519")
    server_cert = pki.issue_server(ca_key, ca_cert, ["127.0.0.1"], server_key.public_key())
    credentials = Identity(server_key, server_cert, (), server=True)
    registry = IRPServerService(
        reactor,
        store,
        authority,
        credentials,
        listen="tcp:0:interface=127.0.0.1",
        config=RegistryConfig(allow_private_addresses=True),
    )
    registry.privilegedStartService()
    registry.startService()
    await _within(_until(reactor, lambda: registry.port is not None), "registry start", reactor)
    assert registry.port is not None
    registry_addr = f"127.0.0.1:{registry.port.getHost().port}"  # type: ignore[attr-defined]
    say("registry", f"listening on {registry_addr} (TLS 1.3, SQLite {store!r})")

    async def registry_view(identity: str) -> None:
        from datetime import UTC, datetime

        state = await store.state(identity, datetime.now(UTC))
        nodes = ", ".join(
            f"{b.node} at " + " ".join(f"{c.host}:{c.port}" for c in b.contacts)
            for b in state.bindings
        )
        say("registry", f"{identity}: {nodes or 'offline (no live binding)'}")

    def changed(identity: str) -> None:
        defer.ensureDeferred(registry_view(identity))

    store.subscribe(changed)

    # 3. Enrolment by invitation -------------------------------------------------------------
    people = {}
    for name in ("alice@example.com", "bob@example.com"):
        token = await authority.invite(name)
        say("admin", f"invited {name} (one-time token, {len(token)} characters)")
        key = pki.generate_key("ed25519")
        client = await _within(
            connectRegistry(reactor, registry_addr, name, anchors=[ca_cert]), "connect", reactor
        )
        issued = await _within(client.enroll(token, make_csr(key, name)), "enroll", reactor)
        await client.close()
        people[name] = Identity(key, issued[0], issued[1:])
        say(
            name.split("@")[0],
            f"enrolled: key made locally, certificate {people[name].fingerprint()[:16]}…",
        )
    trust = TrustStore([ca_cert])

    # 4. The agents ------------------------------------------------------------------------
    @implementer(IAgentEvents)
    class Narrator:
        def __init__(self, who: str) -> None:
            self.who = who
            self.presence: dict[str, str] = {}

        def agentEvent(self, event: dict[str, Any]) -> None:
            kind = event["type"]
            if kind == "session" and event["state"] == "open":
                say(self.who, f"session with {event['peer']} ({event['role']}): "
                    f"suite {event['suite']}, group {event['group']}")  # fmt: skip
            elif kind == "message":
                say(self.who, f"<- {event['peer']}: {event['body']}")
            elif kind == "delivery":
                say(
                    self.who,
                    f"message {event['id'][:8]} to {event['peer']}: {event['description']}",
                )
            elif kind == "presence":
                nodes = ", ".join(event["nodes"]) or "offline"
                if self.presence.get(event["peer"]) != nodes:  # changes only
                    self.presence[event["peer"]] = nodes
                    say(self.who, f"registry says {event['peer']} is {nodes}")

    agents: dict[str, UserAgentService] = {}

    async def start_agent(name: str, node: str) -> UserAgentService:
        who = name.split("@")[0]
        agent = UserAgentService(
            reactor,
            PeerConfig([people[name]], trust),
            os.path.join(base, who),
            listen="tcp:0:interface=127.0.0.1",
            registry=registry_addr,
            registry_anchors=[ca_cert],
            node=node,
            register_expires=60,
        )
        agent.addObserver(Narrator(who))
        agent.privilegedStartService()
        agent.startService()
        await _within(agent.ready, f"{who}'s agent start", reactor)
        await _within(
            _until(reactor, lambda: agent.keeper.state == "registered"), "registration", reactor
        )
        port = agent.listener.port.getHost().port  # type: ignore[union-attr]
        say(who, f"agent up on 127.0.0.1:{port}, registered as node {node}")
        agents[name] = agent
        return agent

    alice = await start_agent("alice@example.com", "laptop")

    # 5. Alice writes while bob is offline ---------------------------------------------------
    # Bob has never run his agent, so the registry does not know him yet: a plain send would
    # be refused as an unknown recipient (a typo, most often); this one asks to queue anyway.
    first = await alice.send("bob@example.com", "Hi Bob! Are you there?", queue_unknown=True)
    say("alice", f"-> bob@example.com: 'Hi Bob! Are you there?' ({first['state']}: bob is offline)")
    say("alice", "bob has never registered, so this send asked to queue anyway "
        "(sixchat send --queue-unknown); to an unknown address it would be refused")  # fmt: skip
    await _until(reactor, lambda: True, delay=0.5)
    status = await alice.status_of(first["id"])
    say("alice", f"message {first['id'][:8]} is still {status['state']}, waiting in the outbox")

    # 6. Bob comes online; the registry pushes his presence; delivery and receipt -------------
    bob = await start_agent("bob@example.com", "phone")
    delivered = await _within(alice.waitDelivered(first["id"], STEP_TIMEOUT), "delivery", reactor)
    if delivered["state"] != "delivered":
        say("alice", f"message not delivered: {delivered['state']}")
        return 1
    say("alice", f"receipt from bob: message {first['id'][:8]} delivered")

    # 7. A short conversation ----------------------------------------------------------------
    lines = [
        (bob, "alice@example.com", "Yes, just got online. Got your message!"),
        (alice, "bob@example.com", "Great. Lunch at noon?"),
        (bob, "alice@example.com", "See you there."),
    ]
    for sender, to, text in lines:
        sent = await sender.send(to, text)
        result = await _within(sender.waitDelivered(sent["id"], STEP_TIMEOUT), "reply", reactor)
        if result["state"] != "delivered":
            return 1
    history = await alice.history("bob@example.com", None, 10)
    say("alice", f"conversation with bob has {len(history)} messages, all receipted")

    # 8. Shut down (agents unregister) ---------------------------------------------------------
    for name in ("bob@example.com", "alice@example.com"):
        await agents[name].stopService()
        say(name.split("@")[0], "agent stopped (unregistered)")
    await registry.stopService()
    await store.close()
    say("demo", "done: every message stored once and receipted")
    return 0


async def _until(reactor: Any, predicate: Any, delay: float = 0.05) -> None:
    from twisted.internet import task

    while True:
        await task.deferLater(reactor, delay, lambda: None)
        if predicate():
            return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace(keep=False, dir=None)))
