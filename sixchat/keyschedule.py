"""
The key schedule of spec §6: HKDF-Expand-Label with the C{"sixchat1 "} prefix, Derive-Secret,
the length-prefixed transcript hash, and the per-secret traffic keys.

Everything is SHA-256 for every suite; HKDF comes from C{cryptography}.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HASH_LEN = 32
LABEL_PREFIX = b"sixchat1 "
SALT0 = hashlib.sha256(b"sixchat1").digest()
EMPTY_HASH = hashlib.sha256(b"").digest()


def hkdf_label(label: bytes, context: bytes, length: int) -> bytes:
    """The C{HkdfLabel} structure (§6)."""
    full = LABEL_PREFIX + label
    return struct.pack(">HB", length, len(full)) + full + bytes([len(context)]) + context


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    info = hkdf_label(label, context, length)
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2) is HMAC-SHA-256 keyed with the salt."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return hkdf_expand_label(secret, label, transcript_hash, HASH_LEN)


class Transcript:
    """
    The running C{Transcript-Hash} (§6): SHA-256 over C{uint32(len(Mi)) || Mi} for each message.
    """

    __slots__ = ("_hash", "count")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, message: bytes) -> None:
        self._hash.update(struct.pack(">I", len(message)))
        self._hash.update(message)
        self.count += 1

    def digest(self) -> bytes:
        return self._hash.copy().digest()


def transcript_hash(messages: list[bytes]) -> bytes:
    transcript = Transcript()
    for message in messages:
        transcript.add(message)
    return transcript.digest()


def traffic_key_iv(secret: bytes, key_length: int) -> tuple[bytes, bytes]:
    """The AEAD key and IV of a traffic secret."""
    return (
        hkdf_expand_label(secret, b"key", b"", key_length),
        hkdf_expand_label(secret, b"iv", b"", 12),
    )


def finished_key(secret: bytes) -> bytes:
    return hkdf_expand_label(secret, b"finished", b"", HASH_LEN)


def finished_verify_data(secret: bytes, transcript_digest: bytes) -> bytes:
    """C{verify_data} of §7.6 for the sender's handshake traffic secret."""
    return hmac.new(finished_key(secret), transcript_digest, hashlib.sha256).digest()


def next_traffic_secret(secret: bytes) -> bytes:
    """S_{n+1} after a C{rekey} (§6, §8.5)."""
    return hkdf_expand_label(secret, b"traffic upd", b"", HASH_LEN)


class HandshakeSecrets:
    """Secrets derived once M1..M2 are known."""

    def __init__(self, shared_secret: bytes, transcript_m1_m2: bytes) -> None:
        self.handshake_secret = hkdf_extract(SALT0, shared_secret)
        self.r_hs_traffic = derive_secret(self.handshake_secret, b"r hs traffic", transcript_m1_m2)
        self.i_hs_traffic = derive_secret(self.handshake_secret, b"i hs traffic", transcript_m1_m2)
        derived = derive_secret(self.handshake_secret, b"derived", EMPTY_HASH)
        self.master_secret = hkdf_extract(derived, bytes(HASH_LEN))

    def application(self, transcript_m1_m5: bytes) -> tuple[bytes, bytes]:
        """(i_ap_traffic_0, r_ap_traffic_0)."""
        return (
            derive_secret(self.master_secret, b"i ap traffic", transcript_m1_m5),
            derive_secret(self.master_secret, b"r ap traffic", transcript_m1_m5),
        )

    def exporter(self, transcript_m1_m8: bytes) -> bytes:
        return derive_secret(self.master_secret, b"exporter", transcript_m1_m8)
