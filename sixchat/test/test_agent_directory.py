"""
L{sixchat.agent.directory.RegistryDirectory} on a C{task.Clock} with a fake registry client:
an unknown identity (C{not_found}) is not an offline one (a C{record} without nodes), and a
watch's presence without nodes does not hide that.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
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
        self.closed = False

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

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


class MobilityTests(unittest.TestCase):
    """A stale record is dropped on demand; a connection bound to a gone address re-opened."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clients: list[FakeClient] = []
        self.directory = RegistryDirectory(self.clock, self.connect)  # type: ignore[arg-type]

    def connect(self) -> defer.Deferred[FakeClient]:
        client = FakeClient()
        client.answers[CAROL] = Record(CAROL, [node()], b"cert", "1")
        client.transport = SimpleNamespace(aborted=False)  # type: ignore[attr-defined]
        client.transport.abortConnection = lambda: setattr(client.transport, "aborted", True)  # type: ignore[attr-defined]
        self.clients.append(client)
        return defer.succeed(client)

    def test_invalidate_makes_the_next_lookup_ask_even_while_watched(self) -> None:
        self.directory.watch(CAROL)
        self.successResultOf(self.directory.lookup(CAROL))
        self.successResultOf(self.directory.lookup(CAROL))
        [client] = self.clients
        self.assertEqual(client.lookups, [CAROL])  # held while watched
        self.directory.invalidate("carol@EXAMPLE.com")
        self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual(client.lookups, [CAROL, CAROL])

    def test_reconnect_aborts_and_rewatches_at_once(self) -> None:
        self.directory.watch(CAROL)
        self.successResultOf(self.directory.lookup(CAROL))
        [old] = self.clients
        self.directory.reconnect()
        self.assertTrue(old.transport.aborted)  # type: ignore[attr-defined]
        self.assertEqual(len(self.clients), 2)  # a new connection now, not on demand
        self.assertEqual(list(self.clients[1].watches), [CAROL])
        old.lost.callback(None)  # the old one's end changes nothing
        self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual(self.clients[1].lookups, [])  # the watched record is held

    def test_reconnect_without_watches_opens_on_demand(self) -> None:
        self.successResultOf(self.directory.lookup(CAROL))
        self.directory.reconnect()
        self.assertEqual(len(self.clients), 1)
        self.clock.advance(RECORD_TTL)
        self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual(len(self.clients), 2)
        self.directory.reconnect()
        self.directory.reconnect()  # nothing open: nothing to do
        self.assertEqual(len(self.clients), 2)


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


class WatchesSurviveTests(unittest.TestCase):
    """
    Registry fail-over: a lost connection with peers watched is re-opened by the directory
    itself (not only at the next lookup), after the backoff with jitter on the clock, and
    every watch is started again on the new connection (another registry of a list).
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.connects: list[defer.Deferred[Any]] = []
        self.clients: list[FakeClient] = []
        self.pushed: list[tuple[str, int]] = []
        self.directory = RegistryDirectory(
            self.clock,
            self.connect,
            lambda who, record: self.pushed.append((who, len(record.nodes))),
            "registry a,b",
            rand=lambda: 0.5,
        )

    def connect(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.connects.append(d)
        return d

    def succeed(self) -> FakeClient:
        client = FakeClient()
        self.clients.append(client)
        self.connects[-1].callback(client)
        return client

    def refuse(self) -> None:
        self.connects[-1].errback(IRPConnectionLost("cannot reach any registry"))

    def retry_in(self) -> float:
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def test_watches_move_to_the_next_connection(self) -> None:
        self.directory.watch(CAROL)
        self.directory.watch("dave@example.com")
        first = self.succeed()
        self.assertEqual(set(first.watches), {CAROL, "dave@example.com"})
        first.lost.callback(None)  # the registry died
        self.assertEqual(len(self.connects), 1)  # not at once: after the backoff
        self.assertEqual(self.retry_in(), 1.5)  # [1, 2] s with the jitter pinned at 0.5
        self.clock.advance(1.5)
        self.assertEqual(len(self.connects), 2)
        second = self.succeed()
        self.assertEqual(set(second.watches), {CAROL, "dave@example.com"})
        second.push(CAROL, [node()])
        self.assertEqual(self.pushed, [(CAROL, 1)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backoff_doubles_while_every_registry_is_down_and_resets(self) -> None:
        self.directory.watch(CAROL)
        self.succeed().lost.callback(None)
        waits = []
        for _ in range(8):
            waits.append(self.retry_in())
            self.clock.advance(waits[-1])
            self.refuse()
        self.assertEqual(waits, [1.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0, 45.0])  # cap 60 s
        self.clock.advance(self.retry_in())
        client = self.succeed()
        self.assertEqual(list(client.watches), [CAROL])
        self.assertEqual(self.directory.failures, 0)
        client.lost.callback(None)
        self.assertEqual(self.retry_in(), 1.5)  # back to the first step

    def test_a_lookup_in_between_connects_on_demand(self) -> None:
        self.directory.watch(CAROL)
        self.succeed().lost.callback(None)
        d = self.directory.lookup("dave@example.com")
        self.assertEqual(len(self.connects), 2)  # at once, not after the backoff
        client = FakeClient()
        client.answers["dave@example.com"] = Record("dave@example.com", [node()])
        self.connects[-1].callback(client)
        self.clock.advance(10)
        self.assertEqual(len(self.connects), 2)  # the timed reconnect found it connected
        self.assertEqual(list(client.watches), [CAROL])
        self.assertEqual(len(self.successResultOf(d).nodes), 1)

    def test_nothing_watched_nothing_reconnects(self) -> None:
        d = self.directory.lookup(CAROL)
        self.succeed().lost.callback(None)
        self.failureResultOf(d, UnknownIdentity)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(len(self.connects), 1)

    def test_a_failed_first_watch_connect_is_retried(self) -> None:
        self.directory.watch(CAROL)
        self.refuse()  # the registry is down when the agent starts watching
        self.assertEqual(self.retry_in(), 1.5)
        self.clock.advance(1.5)
        self.assertEqual(list(self.succeed().watches), [CAROL])

    def test_close_stops_reconnecting(self) -> None:
        self.directory.watch(CAROL)
        self.succeed().lost.callback(None)
        self.successResultOf(self.directory.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(len(self.connects), 1)

    def test_a_connection_arriving_after_close_is_closed(self) -> None:
        self.directory.watch(CAROL)
        self.successResultOf(self.directory.close())
        client = self.succeed()
        self.assertTrue(client.closed)
        self.assertEqual(client.watches, {})


class NoRegistryTests(unittest.TestCase):
    """While no registry answers, a lookup gives the last record the registry gave."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.client = FakeClient()
        self.up = True
        self.directory = RegistryDirectory(
            self.clock,
            lambda: (
                defer.succeed(self.client)  # type: ignore[arg-type]
                if self.up
                else defer.fail(IRPConnectionLost("cannot reach any registry"))
            ),
        )

    def registryDies(self) -> None:
        self.up = False
        lost, self.client.lost = self.client.lost, defer.Deferred()
        lost.callback(None)

    def test_the_last_record_when_the_registry_is_unreachable(self) -> None:
        self.client.answers[CAROL] = Record(CAROL, [node("phone")], b"cert", "1")
        self.successResultOf(self.directory.lookup(CAROL))
        self.registryDies()
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual([n.name for n in record.nodes], ["phone"])
        self.clock.advance(3600)  # however long it lasts
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual([n.name for n in record.nodes], ["phone"])

    def test_a_pushed_record_counts(self) -> None:
        self.directory.watch(CAROL)
        self.client.push(CAROL, [node("desk")])
        self.registryDies()
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual([n.name for n in record.nodes], ["desk"])

    def test_never_looked_up_still_fails(self) -> None:
        self.registryDies()
        self.failureResultOf(self.directory.lookup(CAROL), IRPConnectionLost)

    def test_an_unknown_identity_is_forgotten(self) -> None:
        self.client.answers[CAROL] = Record(CAROL, [node()], b"cert", "1")
        self.successResultOf(self.directory.lookup(CAROL))
        del self.client.answers[CAROL]  # revoked, say
        self.clock.advance(RECORD_TTL)
        self.failureResultOf(self.directory.lookup(CAROL), UnknownIdentity)
        self.registryDies()
        self.failureResultOf(self.directory.lookup(CAROL), IRPConnectionLost)

    def test_other_refusals_fall_back_too_but_answers_win(self) -> None:
        self.client.answers[CAROL] = Record(CAROL, [node("phone")], b"cert", "1")
        self.successResultOf(self.directory.lookup(CAROL))
        self.client.answers[CAROL] = IRPError("internal_error", "database down", "2")
        self.clock.advance(RECORD_TTL)
        record = self.successResultOf(self.directory.lookup(CAROL))
        self.assertEqual([n.name for n in record.nodes], ["phone"])
        self.client.answers[CAROL] = Record(CAROL, [], b"cert", "3")  # offline now
        self.clock.advance(RECORD_TTL)
        self.assertEqual(self.successResultOf(self.directory.lookup(CAROL)).nodes, [])
