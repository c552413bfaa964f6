"""
The record layer of spec §2: framing, header checks and AEAD sealing.

A L{RecordReader} turns a byte stream into records and enforces the header checks of §11.6
*before* buffering any payload, so a hostile length costs us nothing. L{CipherState} seals and
opens one direction under one traffic secret.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sixchat.errors import BadRecordMac, ProtocolError, RecordOverflow
from sixchat.keyschedule import next_traffic_secret, traffic_key_iv

PLAIN = 0x01
SEALED = 0x02
HEADER_LEN = 4
TAG_LEN = 16
MAX_PLAINTEXT = 65_536
MAX_SEALED = MAX_PLAINTEXT + TAG_LEN
#: The largest sequence number a key may seal (§2.1).
MAX_SEQ = 2**24 - 1
PADDING = 0x20

#: suite name -> (key bytes, AEAD class)
SUITES: dict[str, tuple[int, Callable[[bytes], AESGCM | ChaCha20Poly1305]]] = {
    "chacha20-poly1305": (32, ChaCha20Poly1305),
    "aes-256-gcm": (32, AESGCM),
    "aes-128-gcm": (16, AESGCM),
}


def header(record_type: int, length: int) -> bytes:
    return bytes((record_type, length >> 16, (length >> 8) & 0xFF, length & 0xFF))


def plain_record(payload: bytes) -> bytes:
    if not 0 < len(payload) <= MAX_PLAINTEXT:
        raise ValueError("PLAIN payload must be 1 to 65,536 bytes")
    return header(PLAIN, len(payload)) + payload


def strip_padding(plaintext: bytes) -> bytes:
    """Remove trailing 0x20 padding; an empty remainder is a C{protocol_error} (§2)."""
    element = plaintext.rstrip(b" ")
    if not element:
        raise ProtocolError("empty SEALED plaintext")
    return element


class CipherState:
    """One direction's AEAD state: traffic secret, key, IV, sequence number."""

    __slots__ = ("suite", "secret", "_aead", "_iv", "seq", "bytes_sealed")

    def __init__(self, suite: str, secret: bytes) -> None:
        self.suite = suite
        self._install(secret)

    @classmethod
    def from_key_iv(cls, suite: str, key: bytes, iv: bytes, seq: int = 0) -> CipherState:
        """A state from raw key material (test vectors); it cannot rekey."""
        state = cls.__new__(cls)
        state.suite = suite
        state.secret = b""
        state._set_key(key, iv)
        state.seq = seq
        return state

    def _install(self, secret: bytes) -> None:
        key, iv = traffic_key_iv(secret, SUITES[self.suite][0])
        self.secret = secret
        self._set_key(key, iv)

    def _set_key(self, key: bytes, iv: bytes) -> None:
        self._aead = SUITES[self.suite][1](key)
        self._iv = int.from_bytes(iv, "big")
        self.seq = 0
        self.bytes_sealed = 0

    def rekey(self) -> None:
        """Switch to the next application traffic secret (§8.5); seq restarts at 0."""
        if not self.secret:
            raise ValueError("a state made from raw key material cannot rekey")
        self._install(next_traffic_secret(self.secret))

    def _nonce(self) -> bytes:
        return (self._iv ^ self.seq).to_bytes(12, "big")

    def seal(self, plaintext: bytes) -> bytes:
        """The whole SEALED record for C{plaintext} (padding already added)."""
        if not 0 < len(plaintext) <= MAX_PLAINTEXT:
            raise ValueError("SEALED plaintext must be 1 to 65,536 bytes")
        if self.seq > MAX_SEQ:
            raise ValueError("sequence numbers exhausted: rekey first")
        head = header(SEALED, len(plaintext) + TAG_LEN)
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, head)
        self.seq += 1
        self.bytes_sealed += len(plaintext)
        return head + ciphertext

    def open(self, head: bytes, ciphertext: bytes) -> bytes:
        if self.seq > MAX_SEQ:
            raise ProtocolError("peer did not rekey before sequence 2^24")
        try:
            plaintext = self._aead.decrypt(self._nonce(), ciphertext, head)
        except InvalidTag:
            raise BadRecordMac("record failed to open") from None
        self.seq += 1
        return plaintext


class RecordReader:
    """
    Frames a byte stream into C{(type, header, payload)} records.

    Holds at most one partial record: a header announcing more than the limit fails before its
    payload is buffered. C{sealed_allowed} tells whether a read key is installed (§11.6 check 4).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_record(self, sealed_allowed: bool) -> tuple[int, bytes, bytes] | None:
        buffer = self._buffer
        if len(buffer) < HEADER_LEN:
            return None
        record_type = buffer[0]
        length = (buffer[1] << 16) | (buffer[2] << 8) | buffer[3]
        if record_type == PLAIN:
            if length == 0:
                raise ProtocolError("zero-length record")
            if length > MAX_PLAINTEXT:
                raise RecordOverflow("PLAIN record over 65,536 bytes")
        elif record_type == SEALED:
            if length == 0:
                raise ProtocolError("zero-length record")
            if length > MAX_SEALED:
                raise RecordOverflow("SEALED record over 65,552 bytes")
            if not sealed_allowed:
                raise ProtocolError("SEALED record before any key is installed")
            if length < TAG_LEN:
                raise BadRecordMac("SEALED payload shorter than its tag")
        else:
            raise ProtocolError(f"unknown record type {record_type:#04x}")
        end = HEADER_LEN + length
        if len(buffer) < end:
            return None
        head = bytes(buffer[:HEADER_LEN])
        payload = bytes(buffer[HEADER_LEN:end])
        del buffer[:end]
        return record_type, head, payload
