"""
Time C{TrustStore.validate} on a P-256 leaf + intermediate + root chain with both CAs' CRLs:
in full, without either cache (a new peer under a CA never seen), with the known-issuer cache
only (a new peer under an intermediate seen before), from the validated-chain cache (a peer
reconnecting), and in full under three OpenSSL flag sets (ours with X509_STRICT, ours without it,
the former PARTIAL_CHAIN alone), alternated in one process so that load affects each alike.

    python scripts/validation_timing.py [ROUNDS]

To compare with an older version of the code, run it with that version first on PYTHONPATH
(for instance C{git archive <commit> sixchat | tar -x -C /tmp/old}; the flag rows need this
version). docs/security.md ("X509_STRICT") has the figures.
"""

from __future__ import annotations

import sys
import time

from OpenSSL import crypto

from sixchat import pki
from sixchat.test import certs
from sixchat.trust import TrustStore
from sixchat.trust import chain as chain_module


def per_call(store: TrustStore, chain: list[bytes], now, n: int) -> float:
    store.validate(chain, now)
    start = time.perf_counter()
    for _ in range(n):
        store.validate(chain, now)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    ca = certs.make_ca("p256")
    inter = certs.make_intermediate(ca, key_type="p256")
    alice = certs.make_identity("alice@example.com", inter, key_type="p256")
    crls = [pki.issue_crl(ca.key, ca.cert, []), pki.issue_crl(inter.key, inter.cert, [])]
    now = certs.utcnow()
    chain = list(alice.chain_der)
    full = {"chain_cache": 0, "issuer_cache": 0}
    known = {"chain_cache": 0}
    times0: dict[str, list[float]] = {"in full": [], "known issuer": [], "cached chain": []}
    for _ in range(rounds):
        times0["in full"].append(per_call(TrustStore([ca.anchor], crls, **full), chain, now, 300))
        times0["known issuer"].append(
            per_call(TrustStore([ca.anchor], crls, **known), chain, now, 300)
        )
        times0["cached chain"].append(per_call(TrustStore([ca.anchor], crls), chain, now, 3000))
    for name, values in times0.items():
        values.sort()
        print(f"{name:26} median {values[len(values) // 2]:.0f} us, best {values[0]:.0f} us")
    flags = getattr(chain_module, "_VERIFY_FLAGS", None)
    if flags is None:
        return
    f = crypto.X509StoreFlags
    sets = {
        "ours (strict)": flags,
        "ours without X509_STRICT": f.PARTIAL_CHAIN | f.POLICY_CHECK,
        "PARTIAL_CHAIN only": f.PARTIAL_CHAIN,
    }
    times: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(rounds):
        for name, value in sets.items():
            chain_module._VERIFY_FLAGS = value  # type: ignore[attr-defined]
            times[name].append(per_call(TrustStore([ca.anchor], crls, **full), chain, now, 300))
    chain_module._VERIFY_FLAGS = flags  # type: ignore[attr-defined]
    for name, values in times.items():
        values.sort()
        print(f"{name:26} median {values[len(values) // 2]:.0f} us, best {values[0]:.0f} us")


if __name__ == "__main__":
    main()
