"""
The record layer of spec §2: framing, header checks and AEAD sealing.

A L{RecordReader} turns a byte stream into records and enforces the header checks of §11.6
*before* buffering any payload, so a hostile length costs us nothing. L{CipherState} seals and
opens one direction under one traffic secret.
"""

from __future__ import annotations

import weakref
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


class _AeadRing:
    """
    Who holds an AEAD object: at most C{capacity} L{CipherState}s at a time.

    A C{cryptography} AEAD object holds a ready encryption and decryption context, about
    2.6 KiB for AES-GCM: two per session, most of an idle session's memory. So only the
    states that carry traffic hold one (in C{_aead}, one attribute read per record); an
    idle state keeps only its key (32 bytes) and gets its object back, rebuilt in a few
    microseconds, with its next record. Which state gives its object up when a new one is
    needed is decided by the CLOCK algorithm (an approximation of least recently used that
    costs a record one flag, C{_used}, instead of reordering a shared LRU): the hand sweeps
    the holders, sparing (and unmarking) those used since it last passed, and takes the
    object of the first one not used since. The ring holds weak references: a state that
    is gone frees its slot (and its object and key go with it).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots: list[weakref.ref[CipherState]] = []
        self._hand = 0

    def acquire(self, state: CipherState) -> AESGCM | ChaCha20Poly1305:
        """Make C{state}'s object (it holds none) and give it a slot, evicting if full."""
        aead = SUITES[state.suite][1](state._key)
        slots = self._slots
        if len(slots) < self.capacity:
            slots.append(weakref.ref(state))
        else:
            hand = self._hand
            while True:
                holder = slots[hand]()
                if holder is None or holder._aead is None:
                    break  # a free slot
                if not holder._used:
                    holder._aead = None  # evicted: rebuilt on its next record
                    break
                holder._used = False
                hand = (hand + 1) % len(slots)
            slots[hand] = weakref.ref(state)
            self._hand = (hand + 1) % len(slots)
        state._aead = aead
        state._used = True
        return aead

    def __len__(self) -> int:
        """States holding an object now."""
        return sum(1 for ref in self._slots if (s := ref()) is not None and s._aead is not None)


#: 512 objects: 256 sessions with traffic in both directions at any moment, 1.3 MiB.
_AEADS = _AeadRing(512)


class CipherState:
    """One direction's AEAD state: traffic secret, key, IV, sequence number."""

    __slots__ = ("suite", "secret", "_key", "_iv", "seq", "bytes_sealed", "_aead", "_used",
                 "__weakref__")  # fmt: skip

    def __init__(self, suite: str, secret: bytes) -> None:
        self.suite = suite
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._install(secret)

    @classmethod
    def from_key_iv(cls, suite: str, key: bytes, iv: bytes, seq: int = 0) -> CipherState:
        """A state from raw key material (test vectors); it cannot rekey."""
        state = cls.__new__(cls)
        state.suite = suite
        state.secret = b""
        state._aead = None
        state._set_key(key, iv)
        state.seq = seq
        return state

    def _install(self, secret: bytes) -> None:
        key, iv = traffic_key_iv(secret, SUITES[self.suite][0])
        self.secret = secret
        self._set_key(key, iv)

    def _set_key(self, key: bytes, iv: bytes) -> None:
        self._key = key
        if self._aead is None:
            _AEADS.acquire(self)  # made now: a bad key length fails here, not at first use
        else:  # a rekey of a state holding a slot: the new key's object takes it over
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
        head, ciphertext = self.seal_parts(plaintext)
        return head + ciphertext

    def seal_parts(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """
        The SEALED record for C{plaintext} as its header and its ciphertext: for a large
        record, what the transport joins anyway (L{sixchat.flow}), without a copy here.
        """
        size = len(plaintext)
        if not 0 < size <= MAX_PLAINTEXT:
            raise ValueError("SEALED plaintext must be 1 to 65,536 bytes")
        seq = self.seq
        if seq > MAX_SEQ:
            raise ValueError("sequence numbers exhausted: rekey first")
        # header(SEALED, size + TAG_LEN) and _nonce(), inlined: this runs once per record.
        head = (_SEALED_HEADER_BASE | (size + TAG_LEN)).to_bytes(HEADER_LEN, "big")
        aead = self._aead
        if aead is None:
            aead = _AEADS.acquire(self)
        else:
            self._used = True
        ciphertext = aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), plaintext, head)
        self.seq = seq + 1
        self.bytes_sealed += size
        return head, ciphertext

    def open(self, head: bytes, ciphertext: bytes) -> bytes:
        seq = self.seq
        if seq > MAX_SEQ:
            raise ProtocolError("peer did not rekey before sequence 2^24")
        aead = self._aead
        if aead is None:
            aead = _AEADS.acquire(self)
        else:
            self._used = True
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
    kept between chunks. When the next chunk completes it, just that record is assembled
    (the tail and the bytes it lacks), and framing goes on in the new chunk where the record
    ended: joining the tail with the whole chunk (64 KiB per read of a bulk transfer) would
    copy every byte once more.
    """

    __slots__ = ("_data", "_pos", "_next", "_next_pos")

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0
        #: The chunk to go on with once C{_data}, an assembled record, is used up.
        self._next: bytes | None = None
        self._next_pos = 0

    @property
    def buffered(self) -> int:
        rest = len(self._data) - self._pos
        if self._next is not None:
            rest += len(self._next) - self._next_pos
        return rest

    def feed(self, data: bytes) -> None:
        if self._next is not None:  # not framed to the end (cannot happen when drained)
            self._data = self._data[self._pos :] + self._next[self._next_pos :]
            self._pos = 0
            self._next = None
        if self._pos >= len(self._data):
            self._data = bytes(data)  # no copy for bytes, which is what transports give
            self._pos = 0
            return
        tail = self._data[self._pos :]
        self._pos = 0
        if len(tail) >= HEADER_LEN:
            # The header was checked when the tail was kept: how much of data completes it?
            need = HEADER_LEN + int.from_bytes(tail[1:HEADER_LEN], "big") - len(tail)
            if 0 < need < len(data):
                self._data = b"".join((tail, memoryview(data)[:need]))  # one copy, not two
                self._next = bytes(data)
                self._next_pos = need
                return
        self._data = tail + data

    def _go_on(self) -> bool:
        """Switch to the chunk after an assembled record once that is used up."""
        if self._next is not None and self._pos >= len(self._data):
            self._data, self._pos, self._next = self._next, self._next_pos, None
            return True
        return False

    def next_record(self, sealed_allowed: bool) -> tuple[int, bytes, bytes] | None:
        if self._next is not None:
            self._go_on()
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

    def sealed_records(self) -> list[tuple[bytes, bytes]]:
        """
        Every complete SEALED record buffered, in order, as C{(header, payload)}: the
        per-chunk form of L{next_record} for a session whose read key is installed. It stops
        before anything else — a PLAIN record, a header that L{next_record} refuses, an
        unfinished record — which L{next_record} then returns, raises or keeps as usual,
        after the records before it have been handled.
        """
        out: list[tuple[bytes, bytes]] = []
        while True:
            data = self._data
            pos = self._pos
            size = len(data)
            view = None
            while size - pos >= HEADER_LEN:
                start = pos + HEADER_LEN
                head = data[pos:start]
                word = int.from_bytes(head, "big")
                length = word & 0xFFFFFF
                if word >> 24 != SEALED or length < TAG_LEN or length > MAX_SEALED:
                    break
                end = start + length
                if end > size:
                    break
                if length >= _VIEW_FROM:
                    if view is None:
                        view = memoryview(data)
                    out.append((head, view[start:end]))  # type: ignore[arg-type]
                else:
                    out.append((head, data[start:end]))
                pos = end
            self._pos = pos
            if self._next is None or not self._go_on():
                return out

    def _keep_tail(self) -> None:
        """Between chunks, hold only the unfinished record, not the whole chunk."""
        if self._pos:
            self._data = self._data[self._pos :]
            self._pos = 0
