"""
Remembering which keys we have seen for each identity (spec §9.3, §11.15), and what to do
when an identity shows another one.

The store is an interface (L{IPinStore}) because the agent keeps pins in its database while
tests and one-off tools keep them in memory; the policy (L{PinPolicy}) only classifies, so
that recording stays the caller's decision, made once a handshake is accepted.
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import Interface, implementer

from sixchat.errors import BadCertificate
from sixchat.identity import normalize_identity

__all__ = ["PIN_POLICIES", "IPinStore", "InMemoryPinStore", "PinPolicy"]

#: The configurable reactions to a key change (§9.3).
PIN_POLICIES = ("accept", "warn", "refuse")


class IPinStore(Interface):
    """
    Per identity, the set of SPKI SHA-256 hashes accepted so far (§11.15). Identities are
    given normalized (L{normalize_identity}); implementations need not normalize again.
    """

    def known(identity: str) -> frozenset[bytes]:
        """The SPKI hashes accepted for C{identity}; empty if none."""

    def add(identity: str, spki_sha256: bytes) -> None:
        """Remember one more accepted SPKI hash for C{identity}."""


@implementer(IPinStore)
class InMemoryPinStore:
    """Pins for one process lifetime (tests, and UAs configured not to persist pins)."""

    def __init__(self) -> None:
        self._pins: dict[str, set[bytes]] = {}

    def known(self, identity: str) -> frozenset[bytes]:
        return frozenset(self._pins.get(normalize_identity(identity), ()))

    def add(self, identity: str, spki_sha256: bytes) -> None:
        self._pins.setdefault(normalize_identity(identity), set()).add(bytes(spki_sha256))


class PinPolicy:
    """
    What to do when an identity shows a key we have never accepted for it (§9.3).

    L{check} only classifies; recording is the caller's decision, made after the handshake
    is accepted (§11.15: the set holds keys "seen in an accepted handshake"), with L{add}.
    L{enforce} is L{check} plus the C{refuse} policy; a responder calls it only after M7 and
    M8 verified (§11.15), an initiator after M4 (the responder's signature) verified.

    @ivar on_refused: called with (identity, SPKI hash) when L{enforce} refuses a key, before
        it raises, so the refused key can be kept for the user to decide on (a user agent
        records it as a pending key change).
    """

    def __init__(
        self,
        store: IPinStore | None = None,
        policy: str = "warn",
        on_refused: Callable[[str, bytes], None] | None = None,
        own: str | None = None,
    ) -> None:
        if policy not in PIN_POLICIES:
            raise ValueError(f"pin policy must be one of {', '.join(PIN_POLICIES)}, not {policy!r}")
        self.store: IPinStore = store if store is not None else InMemoryPinStore()
        self.policy = policy
        self.on_refused = on_refused
        #: Our own identity: its nodes are trusted through the CA and the CRL alone, never
        #: pinned (each node may have its own key; docs/security.md, own devices).
        self.own = normalize_identity(own) if own is not None else None

    def check(self, identity: str, spki_sha256: bytes) -> str:
        """C{'new'} (first contact), C{'known'} (in the set) or C{'changed'} (another key)."""
        if len(spki_sha256) != 32:
            raise ValueError("a pin is a 32-byte SHA-256")
        key = normalize_identity(identity)
        if key == self.own:
            return "known"
        known = self.store.known(key)
        if not known:
            return "new"
        return "known" if bytes(spki_sha256) in known else "changed"

    def enforce(self, identity: str, spki_sha256: bytes) -> str:
        """
        L{check}, raising for a changed key under policy C{refuse}.

        @raise BadCertificate: the key changed and the policy is C{refuse} (§9.3).
        """
        result = self.check(identity, spki_sha256)
        if result == "changed" and self.policy == "refuse":
            if self.on_refused is not None:
                self.on_refused(identity, bytes(spki_sha256))
            raise BadCertificate(f"the key of {identity} changed and pin policy is refuse")
        return result

    def add(self, identity: str, spki_sha256: bytes) -> None:
        """Accept a key for C{identity} (an accepted handshake, or a certificate from IRP)."""
        if len(spki_sha256) != 32:
            raise ValueError("a pin is a 32-byte SHA-256")
        if normalize_identity(identity) == self.own:
            return
        self.store.add(normalize_identity(identity), bytes(spki_sha256))
