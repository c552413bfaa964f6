"""
Path building that does not depend on the order a peer sends its intermediates in: OpenSSL
takes the first presented certificate that can be an issuer and never backtracks, so the
trust store retries with each alternative issuer first (bounded in work).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from OpenSSL import crypto

__all__ = ["MAX_PATH_ATTEMPTS", "orderings"]

#: Orderings of the intermediates tried after the first (L{orderings}).
MAX_PATH_ATTEMPTS = 8


def orderings(
    untrusted: list[crypto.X509], ours: dict[Any, x509.Certificate]
) -> Iterator[list[crypto.X509]]:
    """
    The presented intermediates as given, then, if two or more share a subject (alternative
    issuers: cross-certificates, a re-issued CA), orderings that put each alternative first
    in its group, at most L{MAX_PATH_ATTEMPTS} more. OpenSSL takes the first presented
    certificate that can be an issuer and never backtracks: these retries make the result
    independent of the order the peer chose.
    """
    yield untrusted
    if len(untrusted) < 2:
        return
    groups: dict[Any, list[int]] = {}
    for i, cert in enumerate(untrusted):
        groups.setdefault(ours[cert._x509].subject, []).append(i)
    shared = [members for members in groups.values() if len(members) > 1]
    if not shared:
        return
    tried = {tuple(range(len(untrusted)))}
    attempts = 0
    choices = [[m[k:] + m[:k] for k in range(len(m))] for m in shared]
    for combination in itertools.product(*choices):
        order = list(range(len(untrusted)))
        for members, rotated in zip(shared, combination, strict=True):
            positions = sorted(members)
            for position, index in zip(positions, rotated, strict=True):
                order[position] = index
        key = tuple(order)
        if key in tried:
            continue
        tried.add(key)
        attempts += 1
        if attempts > MAX_PATH_ATTEMPTS:
            return
        yield [untrusted[i] for i in order]
