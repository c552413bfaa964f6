"""
How long to wait before trying a registry again (L{backoff_delay}): exponential backoff with
"equal jitter", written once for everything that reconnects to a registry (the registration
keeper, the agent's directory of peers and its watches).

The n-th consecutive failure waits a uniformly random time in [b/2, b] with
b = min(max_backoff, 2·min_backoff·2^(n-1)): never less than C{min_backoff} (given a cap of
at least twice it), never more than C{max_backoff}, doubling in between. The random half
spreads the reconnects of many agents after a registry dies or restarts (they all lost it at
the same instant), even once they all reach the cap; the floor keeps a flapping registry from
being hammered.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["backoff_delay"]


def backoff_delay(
    failures: int, min_backoff: float, max_backoff: float, rand: Callable[[], float]
) -> float:
    """
    The wait (seconds) after C{failures} (≥ 1) consecutive failures; C{rand} is a
    C{random()} in [0, 1) (tests pin it).
    """
    base = min(max_backoff, 2 * min_backoff * 2 ** min(max(failures, 1) - 1, 64))
    return base / 2 + rand() * base / 2
