"""
L{sixchat.agent.directory.RegistryDirectory} on a C{task.Clock} with a fake registry client:
an unknown identity (C{not_found}) is not an offline one (a C{record} without nodes), and a
watch's presence without nodes does not hide that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from sixchat.agent.directory import RECORD_TTL, RegistryDirectory, unknown_reason
from sixchat.agent.errors import UnknownIdentity
from sixchat.irp.client import IRPConnectionLost
from sixchat.irp.messages import Contact, IRPError, NodeBinding, Record

CAROL = "carol@example.com"


def node(name: str = "laptop") -> NodeBinding:
    return NodeBinding(name, (Contact("192.0.2.7", 4605),), b"cert", "", "")


class FakeClient:
    """The registry client's lookup/watch: answers from C{answers} (a Record or an error)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.lookups: list[str] = []
        self.watches: dict[str, Callable[[Record], Any]] = {}
        self.lost: defer.Deferred[None] = defer.Deferred()

    def whenLost(self) -> defer.Deferred[None]:
        return self.lost

    def lookup(self, identity: str) -> defer.Deferred[Record]:
        self.lookups.append(identity)
        answer = self.answers.get(identity, IRPError("not_found", "unknown identity", "1"))
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def watch(self, identity: str, callback: Callable[[Record], Any]) -> defer.Deferred[None]:
        self.watches[identity] = callback
        return defer.succeed(None)

    def unwatch(self, identity: str) -> defer.Deferred[None]:
        self.watches.pop(identity, None)
        return defer.succeed(None)

    def push(self, identity: str, nodes: list[NodeBinding]) -> None:
        self.watches[identity](Record(identity, nodes))


class UnknownIsNotOfflineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.client = FakeClient()
        self.pushed: list[tuple[str, int]] = []
        self.directory = RegistryDirectory(
            self.clock,
            lambda: defer.succeed(self.client),  # type: ignore[arg-type]
            lambda who, record: self.pushed.append((who, len(record.nodes))),
            "registry irp.example.com",
        )

    def test_not_found_is_unknown_identity(self) -> None:
        failure = self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)
        self.assertEqual(
            failure.getErrorMessage(), f"{CAROL} is not known to registry irp.example.com"
        )
        self.assertEqual(self.directory.unknown, {CAROL})
        # Not cached: the next lookup asks the registry again (the caller spaces them out).
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)
        self.assertEqual(len(self.client.lookups), 2)

    def test_the_registrys_reason_is_kept_when_it_says_more(self) -> None:
        other = "carol@other.example"
        refusal = IRPError("not_found", "this registry does not serve that domain")
        self.client.answers[other] = refusal
        failure = self.failureResultOf(self.directory.lookup(other), UnknownIdentity)
        self.assertEqual(
            failure.getErrorMessage(),
            f"{other} is not known to registry irp.example.com; this registry does not serve "
            "that domain",
        )

    def test_record_without_nodes_is_offline_not_unknown(self) -> None:
        self.client.answers[CAROL] = Record(CAROL, [], b"cert", "1")
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual(record.nodes, [])
        self.assertEqual(self.directory.unknown, set())

    def test_other_failures_pass_through(self) -> None:
        self.client.answers[CAROL] = IRPConnectionLost("gone")
        self.failureResultOf(self.directory.lookup(CAROL), IRPConnectionLost)
        self.client.answers[CAROL] = IRPError("rate_limited", "slow down", "1")
        self.failureResultOf(self.directory.lookup(CAROL), IRPError)
        self.assertEqual(self.directory.unknown, set())

    def test_watched_unknown_stays_unknown_until_a_presence_with_nodes(self) -> None:
        self.directory.watch(CAROL)
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)
        self.client.push(CAROL, [])  # the watch's initial presence: no node
        self.assertEqual(self.pushed, [(CAROL, 0)])
        self.clock.advance(RECORD_TTL * 10)
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)  # not "offline"
        self.client.push(CAROL, [node()])  # carol registers
        self.assertEqual(self.directory.unknown, set())
        lookups = len(self.client.lookups)
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual([n.name for n in record.nodes], ["laptop"])
        self.assertEqual(len(self.client.lookups), lookups)  # from the watched cache
        self.client.push(CAROL, [])  # and goes offline: known, offline
        self.assertEqual(self.successResultOf(self.directory.lookup(CAROL)).nodes, [])

    def test_a_known_identity_found_unknown_later(self) -> None:
        self.client.answers[CAROL] = Record(CAROL, [node()], b"cert", "1")
        self.successResultOf(self.directory.lookup(CAROL))
        del self.client.answers[CAROL]  # e.g. its certificate was revoked
        self.clock.advance(RECORD_TTL)
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)

    def test_a_refused_watch_is_not_trusted(self) -> None:
        # A watch the registry refused (rate_limited) pushes nothing: the cached record must
        # not be trusted as if it were kept current, and a later watch asks again.
        refused: list[str] = []

        def watch(identity: str, callback: Any) -> defer.Deferred[None]:
            refused.append(identity)
            return defer.fail(IRPError("rate_limited", "too many requests", "3"))

        self.patch(self.client, "watch", watch)
        self.client.answers[CAROL] = Record(CAROL, [])  # offline when looked up
        self.successResultOf(self.directory.lookup(CAROL))
        self.successResultOf(self.directory.lookup(CAROL))  # cached: one lookup
        self.directory.watch(CAROL)
        self.assertEqual(refused, [CAROL])
        self.assertNotIn(CAROL, self.directory.watched)
        self.client.answers[CAROL] = Record(CAROL, [node()])  # online now; no push came
        self.clock.advance(RECORD_TTL)
        self.assertEqual(len(self.successResultOf(self.directory.lookup(CAROL)).nodes), 1)
        self.directory.watch(CAROL)
        self.assertEqual(refused, [CAROL, CAROL])

    def test_connection_loss_forgets(self) -> None:
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)
        self.client.lost.callback(None)
        self.assertEqual(self.directory.unknown, set())


class UnknownReasonTests(unittest.TestCase):
    """L{unknown_reason}: what C{send} asks before queueing, bounded in time."""

    def test_answers(self) -> None:
        from sixchat.testing.directory import MemoryDirectory

        clock = task.Clock()
        strict = MemoryDirectory(unknown_unregistered=True)
        self.assertEqual(
            self.successResultOf(unknown_reason(clock, strict, CAROL, 5)),
            f"{CAROL} is not known to the directory",
        )
        strict.register(CAROL, node())
        self.assertIsNone(self.successResultOf(unknown_reason(clock, strict, CAROL, 5)))
        self.assertEqual(clock.getDelayedCalls(), [])  # the timer went with the answer

    def test_cannot_tell_and_too_slow_are_not_unknown(self) -> None:
        from sixchat.testing.directory import MemoryDirectory

        clock = task.Clock()
        broken = MemoryDirectory()
        broken.lookup = lambda identity: defer.fail(IRPConnectionLost("down"))  # type: ignore[method-assign]
        self.assertIsNone(self.successResultOf(unknown_reason(clock, broken, CAROL, 5)))
        slow = MemoryDirectory()
        pending: defer.Deferred[Record] = defer.Deferred()
        slow.lookup = lambda identity: pending  # type: ignore[method-assign]
        d = unknown_reason(clock, slow, CAROL, 5)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        pending.errback(UnknownIdentity("late"))  # too late: ignored
