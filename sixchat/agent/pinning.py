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

from sixchat.agent.events import key_change_event
from sixchat.identity import spki_sha256
from sixchat.trust import PinPolicy

if TYPE_CHECKING:
    from sixchat.agent.store import SQLitePinStore
    from sixchat.irp.messages import NodeBinding

__all__ = ["RegistryKeyPins"]

log = Logger(namespace="sixchat.agent.service")


class RegistryKeyPins:
    """
    Decides which registry-listed nodes of a peer may be dialled, recording keys as it goes.

    @param pins: the policy the handshakes use too (so a key accepted here is known there).
    @param store: the durable pin store, for pending key changes.
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
        action = {"accept": "accepted", "warn": "warned", "refuse": "refused"}[pins.policy]
        if pins.policy != "refuse":
            pins.add(peer, spki)
        if spki not in self.store.pending_changes(peer):
            self.store.note_key_change(peer, spki, self.now()).addErrback(lambda f: None)
            self.emit(key_change_event(peer, spki.hex(), pins.policy, action))
            (log.warn if pins.policy != "accept" else log.info)(
                "KEY CHANGE: the registry returned a new key for {peer} ({fp}); {action}",
                peer=peer,
                fp=spki.hex(),
                action=action,
            )
        return pins.policy != "refuse"
