"""
First contact against a repeat handshake, in one process and without sockets, so that the
difference can be measured without the machine's load in it (docs/benchmarks.md, "First
contact and bulk").

Both peers are real L{PeerProtocol}s joined in memory (L{sixchat.testing.PeerPair}), with
Ed25519 leaves issued by the anchor and X25519MLKEM768, as in C{python -m sixchat.bench
--only handshake}. I{warm}: the trust stores keep validated chains (the default); I{cold}: they
keep none (C{chain_cache=0}, the benchmark's C{ourscold}), so every handshake validates both
chains in full.

    python scripts/handshake_profile.py time [N [KEY]]     CPU per handshake (both sides),
                                                           warm and cold alternated, 3 rounds
    python scripts/handshake_profile.py profile [N [KEY]]  cProfile, cold minus warm, per function
    python scripts/handshake_profile.py run warm|cold N [KEY]  just N handshakes (for valgrind)

KEY is the key type of the CA and both leaves: ed25519 (the default) or p256.

Instruction counts, which do not depend on the load: run C{run warm} and C{run cold} with two
values of N under C{valgrind --tool=callgrind} and subtract (the difference of the totals over
the difference of N is the count per handshake, start-up cancelled out); C{callgrind_annotate}
of the same four files gives the same difference per C function.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from typing import Any

from sixchat.handshake import PeerConfig
from sixchat.testing.peers import PeerPair, ThrowawayCA
from sixchat.trust import TrustStore

GROUPS = ["x25519-mlkem768"]


class Peers:
    """One CA and two identities under it, made once."""

    def __init__(self, key_type: str = "ed25519") -> None:
        self.ca = ThrowawayCA(key_type=key_type)
        self.alice = self.ca.identity("alice@example.com", key_type=key_type)
        self.bob = self.ca.identity("bob@example.com", key_type=key_type)

    def configs(self, cold: bool) -> tuple[PeerConfig, PeerConfig]:
        options: dict[str, Any] = {"chain_cache": 0} if cold else {}
        return (
            PeerConfig([self.alice], TrustStore([self.ca.cert], **options), groups=GROUPS),
            PeerConfig([self.bob], TrustStore([self.ca.cert], **options), groups=GROUPS),
        )

    def run(self, cold: bool, n: int) -> None:
        """C{n} handshakes between fresh protocols of one pair of configurations."""
        initiator, responder = self.configs(cold)
        for _ in range(n):
            pair = PeerPair(initiator, responder)
            pair.flush()
            pair.sessions  # noqa: B018 - a RuntimeError if either side has no session


def per_handshake_ms(peers: Peers, cold: bool, n: int) -> float:
    peers.run(cold, 5)
    start = time.process_time()
    peers.run(cold, n)
    return (time.process_time() - start) / n * 1e3


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("time", "profile", "run"):
        print(__doc__.strip().split("\n\n")[2], file=sys.stderr)
        return 2
    if argv[0] == "run":
        if len(argv) not in (3, 4) or argv[1] not in ("warm", "cold"):
            print("usage: handshake_profile.py run warm|cold N [KEY]", file=sys.stderr)
            return 2
        peers = Peers(*argv[3:])
        peers.run(argv[1] == "cold", 5)
        peers.run(argv[1] == "cold", int(argv[2]))
        return 0
    n = int(argv[1]) if len(argv) > 1 else 200
    peers = Peers(*argv[2:3])
    if argv[0] == "time":
        for rnd in range(3):
            warm = per_handshake_ms(peers, False, n)
            cold = per_handshake_ms(peers, True, n)
            print(f"round {rnd + 1}: warm {warm:.3f} ms, cold {cold:.3f} ms, "
                  f"cold - warm {cold - warm:.3f} ms per handshake (both sides)")  # fmt: skip
        return 0
    stats = {}
    for cold in (False, True):
        peers.run(cold, 5)
        profiler = cProfile.Profile()
        profiler.enable()
        peers.run(cold, n)
        profiler.disable()
        stats[cold] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for key in set(stats[False]) | set(stats[True]):
        w = stats[False].get(key, (0, 0, 0.0, 0.0))
        c = stats[True].get(key, (0, 0, 0.0, 0.0))
        rows.append(((c[2] - w[2]) / n * 1e6, (c[3] - w[3]) / n * 1e6, (c[0] - w[0]) / n, key))
    rows.sort(key=lambda r: -r[0])
    print("cold - warm per handshake (both sides), under cProfile: own us, cumulative us, calls")
    for own, cumulative, calls, (filename, line, name) in rows[:40]:
        print(f"{own:8.1f} {cumulative:9.1f} {calls:6.1f}  {filename}:{line} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
