"""L{sixchat.irp.backoff}: the reconnect delay's growth, bounds and jitter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from sixchat.irp.backoff import backoff_delay


class BackoffTests(unittest.SynchronousTestCase):
    def test_doubles_from_the_floor_to_the_cap(self) -> None:
        low = [backoff_delay(n, 1.0, 60.0, lambda: 0.0) for n in range(1, 9)]
        high = [backoff_delay(n, 1.0, 60.0, lambda: 0.999999) for n in range(1, 9)]
        self.assertEqual(low, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual([round(h) for h in high], [2, 4, 8, 16, 32, 60, 60, 60])

    def test_zero_or_huge_failure_counts(self) -> None:
        self.assertEqual(backoff_delay(0, 1.0, 60.0, lambda: 0.0), 1.0)  # as the first
        self.assertEqual(backoff_delay(10**6, 1.0, 300.0, lambda: 0.5), 225.0)

    @given(
        st.integers(1, 200),
        st.floats(0.01, 10.0),
        st.floats(20.0, 1000.0),  # the floor holds for caps of at least twice it
        st.floats(0.0, 1.0, exclude_max=True),
    )
    def test_always_between_floor_and_cap(
        self, failures: int, floor: float, cap: float, draw: float
    ) -> None:
        delay = backoff_delay(failures, floor, cap, lambda: draw)
        self.assertGreaterEqual(delay, floor - 1e-9)
        self.assertLessEqual(delay, cap + 1e-9)
        # equal jitter: at least half of the un-jittered delay
        base = min(cap, 2 * floor * 2 ** (failures - 1))
        self.assertGreaterEqual(delay, base / 2 - 1e-9)
