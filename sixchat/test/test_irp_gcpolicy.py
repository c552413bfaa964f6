"""
Tests of L{sixchat.irp.server.gcpolicy.CollectorPolicy}, the registry process's garbage-collection
policy: on a L{task.Clock} and a fake C{gc} module, so that no test changes the collector of
the process running the tests (and nothing depends on how long anything takes).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import TestCase

from sixchat.irp.server.gcpolicy import (
    DEFAULT_GROWTH,
    DEFAULT_INTERVAL,
    MIN_GROWTH_OBJECTS,
    NEVER,
    CollectorPolicy,
)


class FakeGC:
    """The part of the C{gc} module the policy uses, recording what it is asked."""

    def __init__(self, threshold: tuple[int, int, int] = (700, 10, 10)) -> None:
        self.threshold = threshold
        self.calls: list[str] = []
        self.frozen = 0
        self.found = 3

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append("set_threshold")
        self.threshold = (threshold[0], threshold[1], threshold[2])

    def collect(self, generation: int = 2) -> int:
        self.calls.append(f"collect {generation}")
        return self.found

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen = 1234

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen


class WithoutFreeze:
    """An interpreter without CPython's generational collector (PyPy's gc has no freeze)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


class CollectorPolicyTests(TestCase):
    def policy(self, gc: Any = None, interval: float = 10.0, **kwargs: Any) -> CollectorPolicy:
        self.clock = task.Clock()
        self.gc = gc if gc is not None else FakeGC()
        return CollectorPolicy(self.clock, interval, gc_module=self.gc, **kwargs)

    def test_defaults(self) -> None:
        policy = CollectorPolicy(task.Clock())
        self.assertEqual(policy.interval, DEFAULT_INTERVAL)
        self.assertTrue(policy.supported)  # the interpreter running the tests is CPython

    def test_interval_must_be_positive(self) -> None:
        for interval in (0, -1.0):
            self.assertRaises(ValueError, CollectorPolicy, task.Clock(), interval)

    def test_start_turns_automatic_full_collections_off(self) -> None:
        policy = self.policy(FakeGC((900, 12, 10)))
        policy.startService()
        # The young generations keep the thresholds they had; the oldest is out of reach.
        self.assertEqual(self.gc.threshold, (900, 12, NEVER))
        self.assertEqual(self.gc.calls, ["set_threshold"])  # nothing collected or frozen yet

    def test_full_collection_every_interval(self) -> None:
        policy = self.policy(interval=10.0)
        policy.startService()
        self.clock.advance(9.5)
        self.assertNotIn("collect 2", self.gc.calls)
        self.clock.advance(0.5)
        self.assertEqual(self.gc.calls.count("collect 2"), 1)
        self.clock.pump([5.0] * 5)
        self.assertEqual(self.gc.calls.count("collect 2"), 3)
        self.assertEqual(policy.collections, 3)
        self.assertEqual(policy.collected, 9)

    def test_pause_statistics(self) -> None:
        ticks = iter([1.0, 1.004, 5.0, 5.025, 9.0, 9.001])
        policy = self.policy(timer=lambda: next(ticks))
        policy.startService()
        self.clock.pump([10.0] * 3)
        self.assertEqual(policy.collections, 3)
        self.assertAlmostEqual(policy.longest, 0.025)

    def test_freeze_collects_first(self) -> None:
        policy = self.policy()
        policy.startService()
        policy.freeze()
        self.assertEqual(self.gc.calls, ["set_threshold", "collect 2", "freeze"])
        self.assertEqual(policy.collections, 1)

    def test_survivors_frozen_after_each_collection(self) -> None:
        """Once start-up is frozen, every periodic collection freezes what survived it."""
        gc = FakeGC()
        policy = self.policy(gc)
        policy.startService()
        policy.freeze()
        gc.calls.clear()
        gc.frozen = 1500  # grown, but not to twice the 1,234 frozen at start-up
        self.clock.advance(10)
        self.assertEqual(gc.calls, ["collect 2", "freeze"])
        self.assertEqual((policy.collections, policy.complete), (2, 0))

    def test_complete_collection_when_the_frozen_set_doubled(self) -> None:
        ticks = iter([0.0, 0.001, 1.0, 1.003, 2.0, 2.040, 3.0, 3.002, 4.0, 4.030])
        gc = FakeGC()
        policy = self.policy(gc, timer=lambda: next(ticks), min_growth=0)
        policy.startService()
        policy.freeze()  # 1,234 frozen
        gc.calls.clear()
        gc.frozen = 2468  # exactly twice: not yet
        self.clock.advance(10)
        self.assertEqual(gc.calls, ["collect 2", "freeze"])
        gc.calls.clear()
        gc.frozen = 2469
        self.clock.advance(10)
        # Everything walked once: unfrozen, collected, frozen again.
        self.assertEqual(gc.calls, ["unfreeze", "collect 2", "freeze"])
        self.assertEqual(policy.complete, 1)
        self.assertAlmostEqual(policy.longest_complete, 0.040)
        # The new base is what was frozen after it (the fake freezes 1,234 again): the
        # next complete collection waits for twice that.
        gc.calls.clear()
        gc.frozen = 2000
        self.clock.advance(10)
        self.assertEqual(gc.calls, ["collect 2", "freeze"])
        gc.frozen = 2469
        self.clock.advance(10)
        self.assertEqual(gc.calls[-3:], ["unfreeze", "collect 2", "freeze"])
        self.assertEqual((policy.collections, policy.complete), (5, 2))
        self.assertAlmostEqual(policy.longest, 0.040)
        self.assertAlmostEqual(policy.longest_complete, 0.040)

    def test_complete_collection_waits_for_the_minimum_growth(self) -> None:
        """A small registry (1,234 objects frozen at start-up) doubling is not enough: the
        frozen set must also have grown by C{min_growth} objects."""
        gc = FakeGC()
        policy = self.policy(gc, min_growth=5000)
        policy.startService()
        policy.freeze()
        gc.calls.clear()
        gc.frozen = 1234 + 5000
        self.clock.advance(10)
        self.assertEqual(gc.calls, ["collect 2", "freeze"])
        gc.frozen = 1234 + 5001
        self.clock.advance(10)
        self.assertEqual(gc.calls[-3:], ["unfreeze", "collect 2", "freeze"])
        self.assertEqual(policy.complete, 1)
        self.assertEqual(CollectorPolicy(task.Clock()).min_growth, MIN_GROWTH_OBJECTS)

    def test_growth_must_exceed_one(self) -> None:
        for growth in (1.0, 0.5, -2.0):
            self.assertRaises(ValueError, CollectorPolicy, task.Clock(), 10.0, growth=growth)
        self.assertEqual(CollectorPolicy(task.Clock()).growth, DEFAULT_GROWTH)

    def test_freeze_needs_a_running_policy(self) -> None:
        policy = self.policy()
        policy.freeze()
        self.assertEqual(self.gc.calls, [])

    def test_stop_restores_the_collector(self) -> None:
        policy = self.policy(FakeGC((700, 10, 10)))
        policy.startService()
        policy.freeze()
        policy.stopService()
        self.assertEqual(self.gc.threshold, (700, 10, 10))
        self.assertEqual(self.gc.calls[-2:], ["set_threshold", "unfreeze"])
        self.assertEqual(self.gc.frozen, 0)
        before = list(self.gc.calls)
        self.clock.advance(100)  # the periodic collection ended with the service
        self.assertEqual(self.gc.calls, before)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_without_freeze_does_not_unfreeze(self) -> None:
        policy = self.policy()
        policy.startService()
        policy.stopService()
        self.assertNotIn("unfreeze", self.gc.calls)

    def test_restart(self) -> None:
        policy = self.policy(FakeGC((700, 10, 10)))
        policy.startService()
        policy.stopService()
        policy.startService()
        self.assertEqual(self.gc.threshold, (700, 10, NEVER))
        self.clock.advance(10)
        self.assertEqual(self.gc.calls.count("collect 2"), 1)
        policy.stopService()
        self.assertEqual(self.gc.threshold, (700, 10, 10))

    def test_unsupported_interpreter(self) -> None:
        gc = WithoutFreeze()
        policy = self.policy(gc)
        self.assertFalse(policy.supported)
        policy.startService()
        policy.freeze()
        self.clock.advance(100)
        policy.stopService()
        self.assertEqual(gc.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
