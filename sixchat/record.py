"""
The record layer of spec §2: framing, header checks and AEAD sealing.

A L{RecordReader} turns a byte stream into records and enforces the header checks of §11.6
*before* buffering any payload, so a hostile length costs us nothing. L{CipherState} seals and
opens one direction under one traffic secret.
"""

from __future__ import annotations

from collections import OrderedDict
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
_SEALED_HEADER_BASE = SEALED << 24
#: SEALED payloads at least this long are handed out as memoryviews (below, copying is
#: cheaper than making the view).
_VIEW_FROM = 2048

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


class _AeadCache:
    """
    The AEAD objects of the keys in use, least recently used evicted past C{capacity}.

    A C{cryptography} AEAD object holds a ready encryption and decryption context, about
    2.6 KiB for AES-GCM: two per session, most of an idle session's memory. Held here
    instead of by each L{CipherState}, they belong to the sessions that carry traffic; an
    idle session keeps only its key (32 bytes) and gets its object back, rebuilt in a few
    microseconds, with its next record. Objects are stateless between calls (the nonce is
    an argument), so two states with the same key (both ends of an in-process pair) can
    share one.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, bytes], AESGCM | ChaCha20Poly1305] = OrderedDict()

    def get(self, suite: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
        entries = self._entries
        cache_key = (suite, key)
        aead = entries.get(cache_key)
        if aead is None:
            aead = SUITES[suite][1](key)
            entries[cache_key] = aead
            if len(entries) > self.capacity:
                entries.popitem(last=False)
        else:
            entries.move_to_end(cache_key)
        return aead

    def discard(self, suite: str, key: bytes) -> None:
        self._entries.pop((suite, key), None)


#: 512 entries: 256 sessions with traffic in both directions at any moment, 1.3 MiB.
_AEADS = _AeadCache(512)


class CipherState:
    """One direction's AEAD state: traffic secret, key, IV, sequence number."""

    __slots__ = ("suite", "secret", "_key", "_iv", "seq", "bytes_sealed")

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
        _AEADS.get(self.suite, key)  # made now: a bad key length fails here, not at first use
        self._key = key
        self._iv = int.from_bytes(iv, "big")
        self.seq = 0
        self.bytes_sealed = 0

    def rekey(self) -> None:
        """Switch to the next application traffic secret (§8.5); seq restarts at 0."""
        if not self.secret:
            raise ValueError("a state made from raw key material cannot rekey")
        _AEADS.discard(self.suite, self._key)  # the old key is done with
        self._install(next_traffic_secret(self.secret))

    def _nonce(self) -> bytes:
        return (self._iv ^ self.seq).to_bytes(12, "big")

    def seal(self, plaintext: bytes) -> bytes:
        """The whole SEALED record for C{plaintext} (padding already added)."""
        size = len(plaintext)
        if not 0 < size <= MAX_PLAINTEXT:
            raise ValueError("SEALED plaintext must be 1 to 65,536 bytes")
        seq = self.seq
        if seq > MAX_SEQ:
            raise ValueError("sequence numbers exhausted: rekey first")
        # header(SEALED, size + TAG_LEN) and _nonce(), inlined: this runs once per record.
        head = (_SEALED_HEADER_BASE | (size + TAG_LEN)).to_bytes(HEADER_LEN, "big")
        aead = _AEADS.get(self.suite, self._key)
        ciphertext = aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), plaintext, head)
        self.seq = seq + 1
        self.bytes_sealed += size
        return head + ciphertext

    def open(self, head: bytes, ciphertext: bytes) -> bytes:
        seq = self.seq
        if seq > MAX_SEQ:
            raise ProtocolError("peer did not rekey before sequence 2^24")
        aead = _AEADS.get(self.suite, self._key)
        try:
            plaintext = aead.decrypt((self._iv ^ seq).to_bytes(12, "big"), ciphertext, head)
        except InvalidTag:
            raise BadRecordMac("record failed to open") from None
        self.seq = seq + 1
        return plaintext


class RecordReader:
    """
    Frames a byte stream into C{(type, header, payload)} records.

    Holds at most one partial record: a header announcing more than the limit fails before its
    payload is buffered. C{sealed_allowed} tells whether a read key is installed (§11.6 check 4).

    Records are sliced out of the received chunk at a moving offset instead of being cut off
    the front of a buffer one by one: with many small records in one chunk, deleting each
    from a bytearray moved the rest of the chunk every time. Only the unfinished tail is
    kept between chunks (copied once, joined with the next chunk).
    """

    __slots__ = ("_data", "_pos")

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._data) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._data):
            self._data = bytes(data)  # no copy for bytes, which is what transports give
        else:
            self._data = self._data[self._pos :] + data
        self._pos = 0

    def next_record(self, sealed_allowed: bool) -> tuple[int, bytes, bytes] | None:
        data = self._data
        pos = self._pos
        if len(data) - pos < HEADER_LEN:
            self._keep_tail()
            return None
        record_type = data[pos]
        length = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
        if record_type == SEALED:
            if length == 0:
                raise ProtocolError("zero-length record")
            if length > MAX_SEALED:
                raise RecordOverflow("SEALED record over 65,552 bytes")
            if not sealed_allowed:
                raise ProtocolError("SEALED record before any key is installed")
            if length < TAG_LEN:
                raise BadRecordMac("SEALED payload shorter than its tag")
        elif record_type == PLAIN:
            if length == 0:
                raise ProtocolError("zero-length record")
            if length > MAX_PLAINTEXT:
                raise RecordOverflow("PLAIN record over 65,536 bytes")
        else:
            raise ProtocolError(f"unknown record type {record_type:#04x}")
        start = pos + HEADER_LEN
        end = start + length
        if len(data) < end:
            self._keep_tail()
            return None
        self._pos = end
        if length >= _VIEW_FROM and record_type == SEALED:
            # A large ciphertext goes to the AEAD as a view of the received bytes (which are
            # immutable), not as a copy; PLAIN payloads are always bytes for the parser.
            return record_type, data[pos:start], memoryview(data)[start:end]  # type: ignore[return-value]
        return record_type, data[pos:start], data[start:end]

    def _keep_tail(self) -> None:
        """Between chunks, hold only the unfinished record, not the whole chunk."""
        if self._pos:
            self._data = self._data[self._pos :]
            self._pos = 0
