"""
Whose file an offer is (docs/protocol.md 8.6, "Files"). On a session with another node of
ours an offer may name the peer the file came from (C{from}: a file that node received) or
the one it goes to (C{to}: the bytes of a file our identity sends, for our spool); from
anyone else those attributes are ignored and the file is the session peer's. The receivers
of L{sixchat.agent.files.receiving} are keyed by it, so that a copy of our outgoing file
never meets a transfer of the same id from the peer.
"""

from __future__ import annotations

import functools

from sixchat.filetransfer import FileOffer
from sixchat.identity import is_valid_identity, normalize_identity, same_identity

__all__ = ["OUT_KEY", "normalized", "provenance", "receiver_key"]

#: The receivers' key of an outgoing file's copy (direction C{out}) starts with this, which
#: no identity can (they never hold a NUL): such a copy never meets a transfer from the peer.
OUT_KEY = "\0out\0"


@functools.lru_cache(maxsize=256)
def normalized(peer: str) -> str:
    """L{normalize_identity}, remembered: it runs for every chunk, with a handful of peers."""
    return normalize_identity(peer)


def receiver_key(direction: str, peer: str) -> str:
    """The receivers' key of a transfer: the peer's, or our outgoing file's copy's."""
    key = normalized(peer)
    return OUT_KEY + key if direction == "out" else key


def provenance(
    offer: FileOffer, session_peer: str, own_node: bool, keeps_copies: bool
) -> tuple[str, str] | None:
    """
    C{(direction, peer)} when another node of ours (C{own_node}) names whose file this is:
    C{("in", from)} or C{("out", to)}; None when the file is the session peer's own. The one
    given must be a valid identity that is not ours (a file is never handed on as one from
    or to ourselves), not both may be given, and C{to} needs a node that keeps copies.

    @raise ValueError: with the text of the C{error bad_request} that answers the offer.
    """
    if (offer.origin is None and offer.recipient is None) or not own_node:
        return None
    if offer.origin is not None and offer.recipient is not None:
        raise ValueError("<file> with both from and to")
    if offer.recipient is not None and not keeps_copies:
        raise ValueError("<file> to: this node keeps no copies of outgoing files")
    direction, peer = ("in", offer.origin) if offer.origin is not None else ("out", offer.recipient)
    assert peer is not None
    if is_valid_identity(peer) and not same_identity(peer, session_peer):
        return direction, peer
    attr = "from" if direction == "in" else "to"
    raise ValueError(f"<file> {attr} is not another identity")
