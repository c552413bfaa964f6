"""
Tests for L{sixchat.agent.store.database}, the agent store's synchronous core: group commit
batches, and a property test of the outbox rules (driven with hypothesis, since the rules
live there).
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from sixchat.agent.store import (
    DELIVERED,
    EXPIRED,
    FAILED,
    INCOMING,
    MESSAGE_STATES,
    QUEUED,
    SENT,
    MessageDatabase,
)
from sixchat.test.test_agent_store import SEC, T0, msg


class DatabaseBatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = MessageDatabase(":memory:")
        self.addCleanup(self.db.close)

    def test_savepoints_and_durability(self) -> None:
        queued = self.db.queue_outgoing("bob@example.com", "hi", T0)
        results = self.db.batch(
            [
                (MessageDatabase.store_incoming, ("bob@example.com", msg("b1"), T0), {}),
                (MessageDatabase.store_incoming, ("bad", msg("b2"), T0), {}),
                (MessageDatabase.mark_delivered, (queued.id, "n1", T0), {}),
            ]
        )
        self.assertEqual(results[0], (True, True))
        self.assertFalse(results[1][0])
        self.assertIsInstance(results[1][1], ValueError)
        self.assertEqual(results[2][1].state, DELIVERED)
        self.assertEqual([e.id for e in self.db.history() if e.direction == INCOMING], ["b1"])
        self.db.batch([(MessageDatabase.mark_attempt, (queued.id, "n1", T0, None), {})], False)
        self.assertEqual(self.db.pragma("synchronous"), 1)  # NORMAL: bookkeeping only
        self.db.batch([(MessageDatabase.store_incoming, ("bob@example.com", msg("b3"), T0), {})])
        self.assertEqual(self.db.pragma("synchronous"), 2)  # FULL


    def test_targets_and_attempts_are_bookkeeping_a_receipt_is_durable(self) -> None:
        # add_targets and mark_attempt commit with NORMAL (a later FULL commit's fsync of the
        # WAL covers them); a batch holding anything else commits with FULL.
        from sixchat.agent.store.store import _Batch

        queued = self.db.queue_outgoing("bob@example.com", "hi", T0)
        later = T0 + 2 * SEC
        self.assertEqual(self.db.add_targets(queued.id, ["n1"]), ["n1"])
        self.assertEqual(self.db.pragma("synchronous"), 1)  # NORMAL
        batch = _Batch((MessageDatabase.add_targets, (queued.id, ["n2"]), {}, None))
        self.assertTrue(batch.join((MessageDatabase.mark_attempt, (queued.id, "n1", T0, later),
                                    {}, None)))  # fmt: skip
        self.assertEqual(batch.run(self.db)[0], (True, ["n2"]))
        self.assertEqual(self.db.pragma("synchronous"), 1)
        batch = _Batch((MessageDatabase.add_targets, (queued.id, ["n3"]), {}, None))
        self.assertTrue(batch.join((MessageDatabase.mark_delivered, (queued.id, "n1", T0), {},
                                    None)))  # fmt: skip
        batch.run(self.db)
        self.assertEqual(self.db.pragma("synchronous"), 2)  # FULL: the receipt
        status = self.db.status(queued.id)
        assert status is not None
        self.assertEqual(
            [(n.node, n.state) for n in status.nodes],
            [("n1", "delivered"), ("n2", "queued"), ("n3", "queued")],
        )

    def test_written_between_commit_and_sync(self) -> None:
        import os
        import tempfile

        directory = tempfile.mkdtemp()
        db = MessageDatabase(os.path.join(directory, "m.sqlite"))
        self.addCleanup(db.close)
        events: list[Any] = []
        self.patch(db, "sync", lambda: events.append("sync"))
        results = db.batch(
            [(MessageDatabase.store_incoming, ("bob@example.com", msg("w1"), T0), {})],
            True,
            lambda res: events.append(("written", res, db.pragma("synchronous"))),
        )
        self.assertEqual(results, [(True, True)])
        self.assertEqual(events, [("written", [(True, True)], 1), "sync"])  # NORMAL, synced
        del events[:]
        db.batch([(MessageDatabase.mark_read, ("bob@example.com",), {})], False,
                 lambda res: events.append("written"))  # fmt: skip
        self.assertEqual(events, ["written"])  # bookkeeping: no fsync
        self.patch(db, "sync", MessageDatabase.sync.__get__(db))
        db.sync()  # the real one: fdatasync of the write-ahead log
        MessageDatabase(":memory:").sync()  # nothing to sync

# -- property test ---------------------------------------------------------------------------

NODES = ("n1", "n2", "n3")
PEERS = ("bob@example.com", "carol@example.com")


class OutboxMachine(RuleBasedStateMachine):
    """
    Any sequence of queue / add_targets / mark_attempt / mark_delivered / mark_failed /
    expire keeps the outbox invariants; checked against a model of what was done.
    """

    messages = Bundle("messages")

    def __init__(self) -> None:
        super().__init__()
        self.db = MessageDatabase(":memory:")
        self.now = T0
        self.counter = 0
        self.ids: list[str] = []
        self.delivered: dict[str, set[str]] = {}  # receipts given, per message
        self.targets: dict[str, set[str]] = {}  # nodes the message must have entries for
        # Messages that became expired or failed: the outbox gave up on them for good.
        self.closed: dict[str, str] = {}

    def teardown(self) -> None:
        self.db.close()

    @rule(target=messages, peer=st.sampled_from(PEERS), body=st.text(max_size=20))
    def queue(self, peer: str, body: str) -> str:
        self.counter += 1
        mid = f"m{self.counter}"
        out = self.db.queue_outgoing(peer, body, self.now, id=mid)
        assert (out.id, out.state, out.nodes, out.body) == (mid, QUEUED, (), body)
        self.ids.append(mid)
        self.delivered[mid] = set()
        self.targets[mid] = set()
        return mid

    @rule(mid=messages, nodes=st.lists(st.sampled_from(NODES), max_size=4))
    def add_targets(self, mid: str, nodes: list[str]) -> None:
        before = {n.node for n in self.status(mid).nodes}
        added = self.db.add_targets(mid, nodes)
        if mid in self.closed:
            assert added == []
        else:
            assert set(added) == set(nodes) - before
            assert len(added) == len(set(added))
            self.targets[mid] |= set(added)

    @rule(mid=messages, node=st.sampled_from(NODES), sent=st.booleans(), wait=st.integers(0, 5))
    def mark_attempt(self, mid: str, node: str, sent: bool, wait: int) -> None:
        before = self.status(mid)
        status = self.db.mark_attempt(mid, node, self.now, self.now + wait * SEC, sent=sent)
        assert status is not None
        if before.state in (EXPIRED, FAILED):
            assert status == before

    @rule(mid=messages, node=st.sampled_from(NODES))
    def mark_delivered(self, mid: str, node: str) -> None:
        status = self.db.mark_delivered(mid, node, self.now)
        assert status is not None and status.state == DELIVERED
        self.delivered[mid].add(node)

    @rule(mid=messages, node=st.one_of(st.none(), st.sampled_from(NODES)))
    def mark_failed(self, mid: str, node: str | None) -> None:
        status = self.db.mark_failed(mid, node, "bad_request", self.now)
        assert status is not None
        if status.state == FAILED:
            self.closed[mid] = FAILED

    @rule(seconds=st.integers(0, 100))
    def tick(self, seconds: int) -> None:
        self.now += seconds * SEC

    @rule(ttl=st.integers(0, 60))
    def expire(self, ttl: int) -> None:
        changed = self.db.expire(self.now, ttl * SEC)
        for status in changed:
            assert status.created_at < self.now - ttl * SEC
            assert status.state in (EXPIRED, DELIVERED)
            assert not status.owed_nodes
            if status.state == EXPIRED:
                self.closed[status.id] = EXPIRED
        for message in self.db.pending():
            assert message.created_at >= self.now - ttl * SEC

    @rule()
    def unknown_ids_are_ignored(self) -> None:
        assert self.db.mark_delivered("unknown", "n1", self.now) is None
        assert self.db.mark_failed("unknown", None, "x", self.now) is None
        assert self.db.add_targets("unknown", ["n1"]) == []
        assert self.db.status("unknown") is None

    def status(self, mid: str) -> Any:
        status = self.db.status(mid)
        assert status is not None
        return status

    @invariant()
    def states_are_consistent(self) -> None:
        pending = {m.id: m for m in self.db.pending()}
        due = {m.id for m in self.db.pending(self.now)}
        history = {e.id: e for e in self.db.history(limit=10_000)}
        for mid in self.ids:
            s = self.status(mid)
            assert s.state in MESSAGE_STATES
            states = [n.state for n in s.nodes]
            assert [n.node for n in s.nodes] == sorted(n.node for n in s.nodes)
            assert s.total_nodes == len(s.nodes)
            assert s.delivered_nodes == states.count(DELIVERED)
            assert 0 <= s.delivered_nodes <= s.total_nodes
            # Receipts are never lost, and "delivered" means a node receipted it.
            assert {n.node for n in s.nodes if n.state == DELIVERED} == self.delivered[mid]
            assert (s.state == DELIVERED) == bool(self.delivered[mid])
            assert self.targets[mid] <= {n.node for n in s.nodes}
            if s.state == QUEUED:
                assert SENT not in states and DELIVERED not in states
            if s.state == SENT:
                assert SENT in states
            if s.state in (EXPIRED, FAILED):
                assert not s.owed_nodes and s.closed_at is not None
                assert self.closed.get(mid) == s.state
            if s.state == FAILED:
                assert s.reason == "bad_request"
            for n in s.nodes:
                if not n.owed:
                    assert n.next_attempt is None
                if n.state == FAILED:
                    assert n.reason == "bad_request"
            # The outbox's work list matches the entries.
            owes = bool(s.owed_nodes) or (not s.nodes and s.state not in (EXPIRED, FAILED))
            assert (mid in pending) == owes, (mid, s)
            if mid in pending:
                assert pending[mid].status == s
                assert (mid in due) == pending[mid].is_due(self.now)
            assert history[mid].state == s.state
            assert (history[mid].delivered_nodes, history[mid].total_nodes) == (
                s.delivered_nodes,
                s.total_nodes,
            )


class OutboxPropertyTests(SynchronousTestCase):
    def test_random_operation_sequences(self) -> None:
        run_state_machine_as_test(
            OutboxMachine,
            settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
        )

    def test_machine_catches_a_lost_receipt(self) -> None:
        """The invariants are not vacuous: a receipt missing from the file is noticed."""
        machine = OutboxMachine()
        try:
            mid = machine.queue("bob@example.com", "x")
            machine.add_targets(mid, ["n1"])
            machine.mark_delivered(mid, "n1")
            machine.states_are_consistent()
            machine.db._conn.execute("UPDATE deliveries SET state = 'sent'")
            self.assertRaises(AssertionError, machine.states_are_consistent)
        finally:
            machine.teardown()

    def test_machine_catches_a_stale_work_list(self) -> None:
        machine = OutboxMachine()
        try:
            mid = machine.queue("bob@example.com", "x")
            machine.add_targets(mid, ["n1"])
            machine.db._conn.execute("UPDATE messages SET owed = 0")
            self.assertRaises(AssertionError, machine.states_are_consistent)
        finally:
            machine.teardown()
