"""
The key schedule of spec §6: HKDF-Expand-Label with the C{"sixchat1 "} prefix, Derive-Secret,
the length-prefixed transcript hash, and the per-secret traffic keys.

Everything is SHA-256 for every suite. HKDF-Expand with an output of at most one hash
length is a single HMAC (RFC 5869 §2.3: T(1) = HMAC(PRK, info || 0x01)), which is every
derivation the protocol makes: the handshake computes it with the standard library's one-shot
C{hmac.digest} over precomputed C{HkdfLabel} prefixes (16 derivations per side per handshake).
L{hkdf_expand_label_generic}, C{cryptography}'s C{HKDFExpand}, stays the definition: property
tests check the two agree for every label, context and length.
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
_U32 = struct.Struct(">I").pack


def hkdf_label(label: bytes, context: bytes, length: int) -> bytes:
    """The C{HkdfLabel} structure (§6)."""
    full = LABEL_PREFIX + label
    return struct.pack(">HB", length, len(full)) + full + bytes([len(context)]) + context


def hkdf_expand_label_generic(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label through C{cryptography}'s C{HKDFExpand}: the definition."""
    info = hkdf_label(label, context, length)
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


try:
    # What hmac.new(key, msg, "sha256") runs, without its Python wrapper: OpenSSL's HMAC
    # context. Faster than hmac.digest's one-shot, which fetches the algorithm on every call
    # under OpenSSL 3 (0.9 against 1.3 µs here).
    from _hashlib import hmac_new as _openssl_hmac_new
except ImportError:  # pragma: no cover - a CPython without its OpenSSL hashlib

    def _hmac_digest(key: bytes, msg: bytes, digest: str) -> bytes:
        """C{hmac.digest(key, msg, digest)}."""
        return hmac.digest(key, msg, digest)

else:

    def _hmac_digest(key: bytes, msg: bytes, digest: str) -> bytes:
        """C{hmac.digest(key, msg, digest)}."""
        return _openssl_hmac_new(key, msg, digest).digest()


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    if 0 < length <= HASH_LEN:
        # One output block: T(1) = HMAC(PRK, info || 0x01), truncated (RFC 5869 §2.3).
        info = hkdf_label(label, context, length)
        return _hmac_digest(secret, info + b"\x01", "sha256")[:length]
    return hkdf_expand_label_generic(secret, label, context, length)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2) is HMAC-SHA-256 keyed with the salt."""
    return _hmac_digest(salt, ikm, "sha256")


def _info(label: bytes, length: int, context: bytes = b"") -> bytes:
    """C{HkdfLabel || 0x01}: the whole HMAC input of a one-block expansion."""
    return hkdf_label(label, context, length) + b"\x01"


#: Derive-Secret's HMAC input up to the transcript hash, for the labels of §6 (the hash is
#: always 32 bytes, so the prefix, context length included, is a constant per label).
_DERIVE_HEADS = {
    label: hkdf_label(label, bytes(HASH_LEN), HASH_LEN)[:-HASH_LEN]
    for label in (
        b"r hs traffic",
        b"i hs traffic",
        b"derived",
        b"i ap traffic",
        b"r ap traffic",
        b"exporter",
    )
}
_KEY_INFO = {n: _info(b"key", n) for n in (16, 32)}
_IV_INFO = _info(b"iv", 12)
_FINISHED_INFO = _info(b"finished", HASH_LEN)
_TRAFFIC_UPD_INFO = _info(b"traffic upd", HASH_LEN)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    head = _DERIVE_HEADS.get(label)
    if head is not None and len(transcript_hash) == HASH_LEN:
        return _hmac_digest(secret, head + transcript_hash + b"\x01", "sha256")
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
        update = self._hash.update
        update(_U32(len(message)))
        update(message)
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
    key_info = _KEY_INFO.get(key_length)
    key = (
        _hmac_digest(secret, key_info, "sha256")[:key_length]
        if key_info is not None
        else hkdf_expand_label(secret, b"key", b"", key_length)
    )
    return key, _hmac_digest(secret, _IV_INFO, "sha256")[:12]


def finished_key(secret: bytes) -> bytes:
    return _hmac_digest(secret, _FINISHED_INFO, "sha256")


def finished_verify_data(secret: bytes, transcript_digest: bytes) -> bytes:
    """C{verify_data} of §7.6 for the sender's handshake traffic secret."""
    return _hmac_digest(finished_key(secret), transcript_digest, "sha256")


def next_traffic_secret(secret: bytes) -> bytes:
    """S_{n+1} after a C{rekey} (§6, §8.5)."""
    return _hmac_digest(secret, _TRAFFIC_UPD_INFO, "sha256")


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
