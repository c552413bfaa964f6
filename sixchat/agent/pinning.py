"""
Registry-key pinning (§9.3, §11.15): the keys in the certificates a registry returns join the
contact's pin set, except a new key of a known contact, which is a key change that the pin
policy decides on. Kept apart from the outbox so the outbox only asks "which of this peer's
nodes may I use?" and the pinning rule lives in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sixchat.agent.errors import AgentError
from sixchat.agent.events import key_change_event
from sixchat.identity import spki_sha256
from sixchat.trust import PinPolicy

if TYPE_CHECKING:
    from sixchat.agent.store import SQLitePinStore
    from sixchat.irp.messages import NodeBinding

__all__ = ["KeyChanges", "RegistryKeyPins"]

log = Logger(namespace="sixchat.agent.service")

#: How each pin policy meets a key change (the C{action} of a C{key_change} event).
ACTIONS = {"accept": "accepted", "warn": "warned", "refuse": "refused"}


class KeyChanges:
    """
    Every key change the agent meets (§9.3), whether the registry returned the key or a peer
    presented it in a handshake of either role, handled in one place: a refused key is
    recorded as pending (for C{sixchat trust --accept-new-key}), every change becomes a line
    of the contact's key history (shown in C{inbox} and C{chat}), a C{key_change} event (for
    C{watch} and C{chat}) and a log line naming the peer. The user's decisions on them
    (C{sixchat trust}: L{decide}) are made here too.
    """

    def __init__(
        self,
        pins: PinPolicy,
        store: SQLitePinStore,
        now: Callable[[], datetime],
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self.pins = pins
        self.store = store
        self.now = now
        self.emit = emit

    def refused(self, peer: str, spki: bytes) -> None:
        """The handshake's pin hook (L{PinPolicy.on_refused}): a peer's key was refused."""
        try:
            self.changed(peer, spki, "in a handshake")
        except Exception:  # the handshake fails with bad_certificate all the same
            log.failure("could not record the key change of {peer}", peer=peer)

    def changed(self, peer: str, spki: bytes, where: str) -> None:
        """
        C{peer} showed C{spki}, which is not among its pins, and the pin policy met it.
        C{where}: how we came to see it, for the log. A refused key already pending is only
        logged again (quietly): retries do not repeat the notice.
        """
        policy = self.pins.policy
        action = ACTIONS[policy]
        if action == "refused":
            if spki in self.store.pending_changes(peer):
                log.info(
                    "key change of {peer} still refused ({fp}): "
                    "sixchat trust {peer} --accept-new-key",
                    peer=peer,
                    fp=spki.hex(),
                )
                return
            self.store.note_key_change(peer, spki, self.now()).addErrback(self._failed, peer)
        self.store.note_key_event(peer, spki, action, self.now()).addErrback(self._failed, peer)
        self.emit(key_change_event(peer, spki.hex(), policy, action))
        advice = {
            "refused": f"not used until you run 'sixchat trust {peer} --accept-new-key'",
            "warned": "used (pin policy warn); check it with them",
            "accepted": "used (pin policy accept)",
        }[action]
        (log.warn if action != "accepted" else log.info)(
            "KEY CHANGE: {where}, a new key for {peer} ({fp}); {action}: {advice}",
            peer=peer,
            fp=spki.hex(),
            where=where,
            action=action,
            advice=advice,
        )

    def _failed(self, failure: Any, peer: str) -> None:
        log.failure("could not record the key change of {peer}", failure, peer=peer)

    async def decide(
        self, identity: str, accept_new_key: bool, forget_old: bool, kick: Callable[[str], None]
    ) -> dict[str, Any]:
        """
        The user's decision on a contact's keys (C{sixchat trust}): pin every pending key
        (and retry the outbox for it through C{kick}), and/or retire the older keys.
        """
        pins = self.store
        accepted: list[bytes] = []
        if accept_new_key:
            accepted = await pins.accept_key(identity)
            for spki in accepted:
                await pins.note_key_event(identity, spki, "trusted", self.now())
            if accepted:
                kick(identity)
        forgotten: list[bytes] = []
        if forget_old:
            keep = frozenset(accepted) or await self._current_keys(identity)
            forgotten = await pins.forget(identity, keep, self.now())
        return {
            "identity": identity,
            "keys": self.keys(identity),
            "accepted": [s.hex() for s in accepted],
            "forgotten": [s.hex() for s in forgotten],
        }

    async def _current_keys(self, identity: str) -> frozenset[bytes]:
        """
        The key C{--forget-old} keeps: the newest key that came with a key change (warned,
        accepted or trusted) and is still pinned.

        @raise AgentError: no key change is known, so there is no "old" key to tell apart
            (one pinned key, or several devices' keys from the first contact).
        """
        pinned = self.store.known(identity)
        if self.store.pending_changes(identity):
            raise AgentError(
                f"a key change of {identity} is pending: decide on it first "
                f"(sixchat trust {identity} --accept-new-key --forget-old)"
            )
        history = await self.store.key_events(identity, None, 1000)
        for event in reversed(history):
            if event.what in ("warned", "accepted", "trusted") and event.spki_sha256 in pinned:
                return frozenset([event.spki_sha256])
        raise AgentError(
            f"no key change of {identity} is recorded, so no key is older than another; "
            "nothing forgotten"
        )

    def keys(self, identity: str) -> list[str]:
        """The contact's pinned keys: SPKI SHA-256 fingerprints in hex, sorted."""
        return sorted(spki.hex() for spki in self.store.known(identity))


class RegistryKeyPins:
    """
    Decides which registry-listed nodes of a peer may be dialled, recording keys as it goes.

    @param pins: the policy the handshakes use too (so a key accepted here is known there).
    @param store: the durable pin store.
    @param changes: where key changes go.
    """

    def __init__(self, pins: PinPolicy, store: SQLitePinStore, changes: KeyChanges) -> None:
        self.pins = pins
        self.store = store
        self.changes = changes

    def usable_nodes(self, peer: str, nodes: Sequence[NodeBinding]) -> list[NodeBinding]:
        # First contact: every node's key in this record is the contact's (one key per
        # device), not a key change of the node looked at before it.
        first_contact = not self.store.known(peer)
        return [n for n in nodes if self.usable(peer, n.cert, first_contact)]

    def usable(self, peer: str, cert_der: bytes, first_contact: bool = False) -> bool:
        """
        §9.3/§11.15: keys of certificates the registry returns join the contact's pin set —
        unless the contact is known and the key is new, which is a key change handled by the
        pin policy (with C{refuse}, that node is not used until the user trusts the key).
        C{first_contact}: the contact had no pins before this registry record, so all of its
        nodes' keys are accepted as new.
        """
        from cryptography import x509

        try:
            spki = spki_sha256(x509.load_der_x509_certificate(cert_der).public_key())
        except ValueError:
            return False
        pins = self.pins
        status = pins.check(peer, spki)
        if status == "known":
            return True
        if status == "new" or first_contact:
            pins.add(peer, spki)
            return True
        if pins.policy != "refuse":
            pins.add(peer, spki)
        self.changes.changed(peer, spki, "in the registry's record")
        return pins.policy != "refuse"
