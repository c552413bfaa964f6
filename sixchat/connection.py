"""
One End2End Direct connection, sans-IO: bytes in, events and bytes out (in the style of h11).

L{Connection} owns the record layer, runs the handshake machine of its role, then carries
application stanzas (§8): it answers C{ping}, switches keys on C{rekey}, rekeys its own
direction before the limits of §8.5, answers bad stanzas with C{<error/>}, and turns every
fatal failure into an alert in the form of the §7.1 table. It never reads a clock or a socket;
the Twisted adapter (L{sixchat.protocol}) supplies bytes and timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sixchat.errors import AlertError, PeerAlert, ProtocolError, StanzaError
from sixchat.filetransfer.stanzas import FILE_STANZAS, FileStanza, parse_chunk
from sixchat.handshake import (
    HandshakeResult,
    InitiatorHandshake,
    PeerConfig,
    ResponderHandshake,
)
from sixchat.handshake_fastpaths import parse_handshake
from sixchat.identity import same_identity
from sixchat.record import (
    MAX_PLAINTEXT,
    MAX_SEQ,
    PLAIN,
    CipherState,
    RecordReader,
    plain_record,
    strip_padding,
)
from sixchat.stanza_fastpaths import (
    parse_application,
    serialize_stanza,
)
from sixchat.stanzas import (
    APPLICATION_STANZAS,
    HANDSHAKE_TAGS,
    Alert,
    ApplicationStanza,
    Close,
    ErrorStanza,
    Ping,
    Pong,
    Receipt,
    Rekey,
    is_valid_id,
)
from sixchat.sync.stanzas import SYNC_STANZAS
from sixchat.xmlcodec import Element, parse, serialize

INITIATOR = "initiator"
RESPONDER = "responder"

#: §8.5: a UA SHOULD rekey after this many bytes under one key.
REKEY_BYTES = 2**30
#: From this plaintext size on, a record is queued as header and ciphertext (two pieces)
#: rather than joined (see L{Connection.pieces_to_send}).
_SEAL_APART = 4096
#: Stanzas L{Connection.send} refuses (they have methods of their own).
_NOT_SENDABLE = (Close, Rekey)


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class HandshakeComplete:
    result: HandshakeResult


@dataclass(frozen=True)
class StanzaReceived:
    """An application stanza for the user: C{Message}, C{Receipt}, C{Pong}, C{Typing},
    C{ErrorStanza}, and with C{PeerConfig.file_transfer} the §8.7 stanzas (L{sixchat.
    filetransfer.stanzas}). (Pings, rekeys and closes are handled here.)"""

    stanza: ApplicationStanza | FileStanza


@dataclass(frozen=True)
class CloseReceived:
    """
    The peer announced a graceful end. If C{answered} is false we still owe our own
    C{close}: send pending receipts, then call L{Connection.close}, then drop the transport.
    """

    answered: bool


@dataclass(frozen=True)
class AlertReceived:
    """The peer sent a fatal alert; the connection is over."""

    alert: PeerAlert


@dataclass(frozen=True)
class ConnectionFailed:
    """
    We detected a fatal error and queued an alert; send what is queued, then close.
    C{truncated} is true when the failure means "treat as truncation" (§7.1, §11.4).
    """

    error: AlertError
    truncated: bool = False


Event = HandshakeComplete | StanzaReceived | CloseReceived | AlertReceived | ConnectionFailed


class ConnectionClosedError(Exception):
    """Raised when sending on a connection that can no longer send that stanza."""


# ---------------------------------------------------------------------------------------------


class Connection:
    """
    @ivar state: C{handshaking}, C{open}, C{closing} (we sent C{close}) or C{closed}.
    @ivar result: the L{HandshakeResult} once the handshake is complete.
    """

    def __init__(
        self,
        config: PeerConfig,
        role: str,
        *,
        to: str | None = None,
        responder_cert: bytes | None = None,
        groups: Sequence[str] | None = None,
        suites: Sequence[str] | None = None,
        rekey_bytes: int = REKEY_BYTES,
    ) -> None:
        self.config = config
        self.role = role
        self.rekey_bytes = rekey_bytes
        self._reader = RecordReader()
        self._read: CipherState | None = None
        self._write: CipherState | None = None
        self._out: list[bytes] = []
        self.state = "handshaking"
        self.result: HandshakeResult | None = None
        self.close_sent = False
        self.peer_closed = False
        #: Records received so far (the adapter's idle timer counts records, §11.13).
        self.records_received = 0
        self.handshake: InitiatorHandshake | ResponderHandshake
        if role == INITIATOR:
            self.handshake = InitiatorHandshake(
                config, self, to=to, responder_cert=responder_cert, groups=groups, suites=suites
            )
        elif role == RESPONDER:
            self.handshake = ResponderHandshake(config, self)
        else:
            raise ValueError(f"unknown role {role!r}")

    # RecordIO, for the handshake machine ---------------------------------------------------

    def send_plain(self, payload: bytes) -> None:
        self._out.append(plain_record(payload))

    def send_sealed(self, payload: bytes) -> bytes:
        assert self._write is not None
        plaintext = self._pad(payload)
        self._out.append(self._write.seal(plaintext))
        return plaintext

    def install_read(self, state: CipherState) -> None:
        self._read = state

    def install_write(self, state: CipherState) -> None:
        self._write = state

    def release_handshake(self) -> None:
        """
        Forget the handshake machine once the handshake is complete: its transcript hash,
        handshake secrets and ephemeral state would otherwise live as long as the session
        (about 1 KiB of an idle session's memory). Nothing here needs it after completion;
        the Twisted adapter calls this, while sans-IO users and tests may keep inspecting it.
        """
        if self.result is not None:
            self.handshake = None  # type: ignore[assignment]

    # outgoing -----------------------------------------------------------------------------

    def _pad(self, payload: bytes) -> bytes:
        block = self.config.padding
        if block <= 1:
            return payload
        padded = -(-len(payload) // block) * block
        return payload + b" " * (min(padded, MAX_PLAINTEXT) - len(payload))

    def start(self) -> None:
        """The initiator sends M1; a responder waits for it."""
        if isinstance(self.handshake, InitiatorHandshake) and self.handshake.state == "start":
            self.handshake.start()

    def data_to_send(self) -> bytes:
        """Everything queued for the transport, in order; empties the queue."""
        out, self._out = self._out, []
        return b"".join(out)

    def pieces_to_send(self) -> list[bytes]:
        """
        L{data_to_send} as the pieces queued (whole records, or a large record's header and
        ciphertext apart), for a transport that joins its writes anyway; empties the queue.
        """
        out, self._out = self._out, []
        return out

    def send(self, stanza: ApplicationStanza | FileStanza) -> None:
        """
        Seal one application stanza.

        @raise ConnectionClosedError: before the handshake, after a failure, or (for anything
            but a receipt) after we sent C{close} (§11.12).
        @raise ValueError: if the stanza does not fit in one record; split the text.
        """
        if self.state != "open" and not (self.state == "closing" and isinstance(stanza, Receipt)):
            raise ConnectionClosedError(f"cannot send {type(stanza).__name__} while {self.state}")
        if isinstance(stanza, _NOT_SENDABLE):
            raise ValueError("use close() or rekey()")
        self._send_bytes(serialize_stanza(stanza))

    def prepare(self, stanza: ApplicationStanza | FileStanza) -> bytes:
        """
        Check and serialise an application stanza to be sealed later by L{send_prepared}: the
        adapter queues stanzas this way while its transport is full, so that the errors of
        L{send} still reach the caller at once and the sealing order is the sending order.
        """
        if self.state != "open":
            raise ConnectionClosedError(f"cannot send {type(stanza).__name__} while {self.state}")
        if isinstance(stanza, Close | Rekey):
            raise ValueError("use close() or rekey()")
        serialized = serialize_stanza(stanza)
        if len(serialized) > MAX_PLAINTEXT:  # padding never grows past it
            raise ValueError("stanza does not fit in one record (65,536 bytes)")
        return serialized

    def send_prepared(self, serialized: bytes) -> None:
        """Seal a stanza L{prepare}d while the session was open."""
        if self.state != "open":
            raise ConnectionClosedError(f"cannot send while {self.state}")
        self._send_bytes(serialized)

    def _send_element(self, element: Element) -> None:
        self._send_bytes(serialize(element))

    def _send_bytes(self, serialized: bytes) -> None:
        plaintext = self._pad(serialized) if self.config.padding > 1 else serialized
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError("stanza does not fit in one record (65,536 bytes)")
        write = self._write
        assert write is not None
        if write.seq >= MAX_SEQ or write.bytes_sealed >= self.rekey_bytes:
            self._rekey()
        if len(plaintext) < _SEAL_APART:
            self._out.append(write.seal(plaintext))
        else:  # header and ciphertext apart: joining them here would copy the record
            self._out += write.seal_parts(plaintext)

    def rekey(self) -> None:
        """Send C{<rekey/>} and switch our write key now (§8.5), on demand."""
        if self.state != "open":
            raise ConnectionClosedError("rekey needs an open session (none after our close)")
        self._rekey()

    def _rekey(self) -> None:
        # Also used after our close when a receipt would otherwise exceed the §2.1 limit: the
        # record layer's MUST outranks §11.12's "only receipts" (docs/protocol.md).
        write = self._write
        assert write is not None
        self._out.append(write.seal(self._pad(serialize(Rekey().to_element()))))
        write.rekey()

    def close(self) -> None:
        """Announce a graceful end (§8.8); afterwards only receipts may be sent."""
        if self.state != "open":
            return
        self._send_element(Close().to_element())
        self.close_sent = True
        self.state = "closing"

    def fail(self, error: AlertError) -> list[Event]:
        """Abort with C{error} (e.g. a timeout noticed by the adapter): queue the alert."""
        if self.state == "closed":
            return []
        return [self._fatal(error)]

    def _fatal(self, error: AlertError, truncated: bool = False) -> ConnectionFailed:
        # The reason token (and the §7.3 hints) only: our diagnostic text stays in our log,
        # so an alert never tells a peer more than the spec requires.
        alert = Alert(error.reason, "", error.extra).to_element()
        payload = serialize(alert)
        if self._write is None:
            self._out.append(plain_record(payload))
        else:
            try:
                # Alerts are never padded (the padded-access-denied vector): they end the
                # connection, so their length hides nothing worth the bytes.
                self._out.append(self._write.seal(payload))
            except ValueError:  # sequence numbers exhausted: nothing more can be sealed
                pass
        self.state = "closed"
        return ConnectionFailed(error, truncated or self.result is not None)

    # incoming -----------------------------------------------------------------------------

    @property
    def closed_cleanly(self) -> bool:
        """Both sides sent C{close} (§8.8); anything else is a truncation."""
        return self.close_sent and self.peer_closed

    @property
    def buffered(self) -> int:
        """Received bytes not yet processed (at most one partial record)."""
        return self._reader.buffered

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state == "closed":
            return []
        reader = self._reader
        reader.feed(data)
        events: list[Event] = []
        try:
            while self.state != "closed":
                if self.result is not None:
                    # An established session: the SEALED records of the chunk in one go.
                    self._receive_sealed(reader.sealed_records(), events)
                    if self.state == "closed":
                        break
                record = reader.next_record(self._read is not None)
                if record is None:
                    break
                self.records_received += 1
                self._receive_record(*record, events)
        except AlertError as error:
            events.append(self._fatal(error))
        if self.state == "closed":
            self._reader = RecordReader()  # nothing more will be read: hold no bytes
        return events

    def _receive_sealed(self, records: list[tuple[bytes, bytes]], events: list[Event]) -> None:
        """
        SEALED records of an established session: what L{_receive_record} does with each,
        with the commonest stanzas handled inline (one call per chunk, not several per record).
        """
        for head, payload in records:
            if self.state == "closed":
                return
            self.records_received += 1
            assert self._read is not None
            plaintext = self._read.open(head, payload)
            data = plaintext.rstrip(b" ")  # strip_padding
            if not data:
                raise ProtocolError("empty SEALED plaintext")
            stanza: ApplicationStanza | FileStanza | None = parse_application(data)
            if stanza is None and self.config.file_transfer and data.startswith(b"<chunk "):
                stanza = parse_chunk(data)  # a file's chunks, as we write them (§8.7)
            if stanza is None:
                self._sealed_element(data, plaintext, events)
            elif type(stanza) is Ping:
                if self.state == "open":
                    self._send_bytes(serialize_stanza(Pong(stanza.id)))
            else:
                events.append(StanzaReceived(stanza))

    def _receive_record(
        self, record_type: int, head: bytes, payload: bytes, events: list[Event]
    ) -> None:
        if record_type == PLAIN:
            # Our hellos, as we write them, skip expat: the same tree (handshake_fastpaths).
            element = parse_handshake(payload) or parse(payload)
            if self.result is not None:
                # §11.4: unauthenticated; answer with a sealed protocol_error, truncate.
                events.append(self._fatal(ProtocolError("PLAIN record after the handshake"), True))
                return
            if element.tag == "alert":
                self._peer_alert(element, events)
                return
            if element.tag != "hello" or self.handshake.state not in ("wait_m1", "wait_m2"):
                raise ProtocolError(f"PLAIN <{element.tag}> not allowed here")
            self._handshake(element, payload, events)
            return
        assert self._read is not None
        plaintext = self._read.open(head, payload)
        data = strip_padding(plaintext)
        if self.result is not None:
            # The commonest stanzas, in the form we send them, skip the tree: same result as
            # the generic path below (see stanza_fastpaths.parse_application).
            stanza = parse_application(data)
            if stanza is not None:
                self._application_stanza(stanza, events)
                return
        else:
            fast = parse_handshake(data)  # M3-M8 as we write them: the tree parse would give
            if fast is not None:
                self._handshake(fast, plaintext, events)
                return
        self._sealed_element(data, plaintext, events)

    def _sealed_element(self, data: bytes, plaintext: bytes, events: list[Event]) -> None:
        """A SEALED payload (padding stripped: C{data}) through the hardened parser."""
        element = parse(data)
        if element.tag == "alert":
            self._peer_alert(element, events)
        elif self.result is None:
            self._handshake(element, plaintext, events)
        else:
            self._application(element, events)

    def _peer_alert(self, element: Element, events: list[Event]) -> None:
        alert = Alert.from_element(element) if element.get("reason") else Alert("protocol_error")
        self.state = "closed"
        events.append(AlertReceived(PeerAlert(alert.reason, alert.text)))

    def _handshake(self, element: Element, payload: bytes, events: list[Event]) -> None:
        self.handshake.receive(element, payload)
        if self.handshake.complete:
            self.result = self.handshake.result
            self.state = "open"
            assert self.result is not None
            events.append(HandshakeComplete(self.result))

    def _application(self, element: Element, events: list[Event]) -> None:
        tag = element.tag
        if tag in HANDSHAKE_TAGS:
            raise ProtocolError(f"<{tag}> after the handshake")
        if tag == "rekey":
            assert self._read is not None
            self._read.rekey()
            return
        if tag == "close":
            self.peer_closed = True
            if self.close_sent:
                self.state = "closed"  # both closes exchanged (§11.12: we do not answer)
                events.append(CloseReceived(answered=True))
            else:
                events.append(CloseReceived(answered=False))
            return
        cls = APPLICATION_STANZAS.get(tag)
        if cls is None and self.config.file_transfer:
            cls = FILE_STANZAS.get(tag)  # §8.7, when the application takes files
        if cls is None and self.config.own_sync and self._own_node():
            cls = SYNC_STANZAS.get(tag)  # own-device sync: only between nodes of one identity
        if cls is None:
            ref = element.get("id")
            error = StanzaError(
                "unsupported", f"<{tag}> is not supported", ref if is_valid_id(ref) else None
            )
            self._stanza_error(error, events)
            return
        try:
            stanza = cls.from_element(element)
        except StanzaError as error:
            if tag != "error":
                self._stanza_error(error, events)
            return
        self._application_stanza(stanza, events)

    def _own_node(self) -> bool:
        """Whether the peer proved the identity we proved: another node of ours."""
        result = self.result
        return result is not None and same_identity(result.local_name, result.peer_name)

    def _application_stanza(
        self, stanza: ApplicationStanza | FileStanza, events: list[Event]
    ) -> None:
        if isinstance(stanza, Ping):
            if self.state == "open":
                self._send_bytes(serialize_stanza(Pong(stanza.id)))
            return
        events.append(StanzaReceived(stanza))

    def _stanza_error(self, error: StanzaError, events: list[Event]) -> None:
        """§8.6: answer with an error, never to an error (§11.1), never after our close."""
        if self.state == "open":
            self._send_element(ErrorStanza(error.reason, error.ref, error.text).to_element())
