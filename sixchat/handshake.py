"""
The handshake of spec §7 as two sans-IO state machines, one per role.

Each machine is fed parsed handshake elements together with the exact payload bytes that
carried them (the transcript hashes payloads, padding included) and drives a L{RecordIO}:
it queues outgoing payloads and installs read and write keys at exactly the points §7.1 names.
Failures are raised as L{AlertError}; the connection turns them into an alert in the form the
§7.1 table gives, which is simply "sealed with the current write key, or PLAIN if none".
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sixchat import groups as G
from sixchat import sigalgs
from sixchat.errors import (
    AccessDenied,
    BadCertificate,
    DecryptError,
    IdentityMismatch,
    IllegalParameter,
    NoCommonGroup,
    NoCommonSuite,
    ProtocolError,
    UnsupportedVersion,
)
from sixchat.handshake_fastpaths import (
    serialize_client_hello,
    serialize_finished,
    serialize_identity,
    serialize_server_hello,
    serialize_verify,
)
from sixchat.identity import normalize_identity, same_identity
from sixchat.keyschedule import HandshakeSecrets, Transcript, finished_verify_data
from sixchat.record import SUITES, CipherState
from sixchat.stanzas import ClientHello, Finished, IdentityStanza, ServerHello, Share, Verify
from sixchat.xmlcodec import Element, b64decode, b64encode

if TYPE_CHECKING:
    from sixchat.identity import Identity
    from sixchat.trust import PeerCertificate, TrustStore

VERSION = "1"
RANDOM_LEN = 32
DEFAULT_SUITES = ("aes-256-gcm", "chacha20-poly1305", "aes-128-gcm")
RESPONDER_CONTEXT = b"sixchat1 responder verify"
INITIATOR_CONTEXT = b"sixchat1 initiator verify"


def signed_content(context: bytes, transcript_digest: bytes) -> bytes:
    """§7.5: 64 spaces, the context, a zero byte, the transcript hash."""
    return b" " * 64 + context + b"\x00" + transcript_digest


def allows_key_encipherment(cert: x509.Certificate) -> bool:
    """keyUsage absent, or present with keyEncipherment (§4, responder leaf under rsa-oaep)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_encipherment


class AccessPolicy:
    """
    Who may open a session with us: identities (C{alice@example.com}) and whole domains
    (C{@example.com}). Applied by the responder only after M7 and M8 verified (§7.4).
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.identities = {normalize_identity(e) for e in entries if not e.startswith("@")}
        self.domains = {normalize_identity(e).lstrip("@") for e in entries if e.startswith("@")}

    def allows(self, identity: str) -> bool:
        try:
            key = normalize_identity(identity)
        except ValueError:
            return False
        return key in self.identities or key.rpartition("@")[2] in self.domains


class PinChecker(Protocol):
    """What the handshake needs of the pin policy (§9.3, §11.15)."""

    policy: str

    def enforce(self, identity: str, spki_sha256: bytes) -> str:
        """'new', 'known' or 'changed'; raises C{BadCertificate} for a refused change."""

    def add(self, identity: str, spki_sha256: bytes) -> None:
        """Remember a key seen in an accepted handshake."""


@dataclass
class PeerConfig:
    """Everything a UA brings to a handshake, in either role."""

    identities: Sequence[Identity]
    trust: TrustStore
    suites: Sequence[str] = DEFAULT_SUITES
    groups: Sequence[str] = G.DEFAULT_GROUPS
    #: Enables C{rsa-oaep} key transport (not forward secret; off by default, §5.2).
    key_transport: bool = False
    access: AccessPolicy | None = None
    pins: PinChecker | None = None
    #: Pad sealed plaintexts with spaces to a multiple of this many bytes (0: no padding).
    padding: int = 0
    #: Parse the §8.7 file-transfer stanzas and hand them to the application (which must
    #: then answer them); off: they get C{error unsupported}, as a UA without file transfer.
    file_transfer: bool = False
    #: Parse the own-device sync stanzas (docs/protocol.md) on sessions whose two ends prove
    #: the same identity; off, or with any other peer: C{error unsupported}.
    own_sync: bool = False
    #: The time chains are validated at.
    now: Callable[[], datetime] = field(default_factory=lambda: _utcnow)
    entropy: G.Entropy = field(default_factory=G.Entropy)

    def __post_init__(self) -> None:
        if not self.identities:
            raise ValueError("a UA needs at least one identity")
        for suite in self.suites:
            if suite not in SUITES:
                raise ValueError(f"unknown suite {suite!r}")
        for group in self.groups:
            if group not in G.GROUPS:
                raise ValueError(f"unknown group {group!r}")

    @property
    def accepted_groups(self) -> list[str]:
        groups = [g for g in self.groups if g != G.RSA_OAEP]
        if self.key_transport:
            groups.append(G.RSA_OAEP)
        return groups

    def identity_for(self, name: str | None) -> tuple[Identity, str] | None:
        """The identity serving C{name} (default: the first) and the name as it spells it."""
        if name is None:
            first = self.identities[0]
            return first, first.names[0]
        for identity in self.identities:
            for served in identity.names:
                if same_identity(served, name):
                    return identity, served
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HandshakeResult:
    """What both sides agreed and who the peer is."""

    version: str
    suite: str
    group: str
    local_name: str
    peer_name: str
    peer: PeerCertificate
    pin_status: str | None
    exporter_secret: bytes = field(repr=False)


class RecordIO(Protocol):
    """What a handshake machine drives: outgoing payloads and key installation."""

    def send_plain(self, payload: bytes) -> None: ...

    def send_sealed(self, payload: bytes) -> bytes:
        """Pad and seal with the write key; returns the exact plaintext (for the transcript)."""

    def install_read(self, state: CipherState) -> None: ...

    def install_write(self, state: CipherState) -> None: ...


class _Machine:
    """What both roles share: transcript, secrets, identity checks."""

    complete = False
    result: HandshakeResult | None = None

    def __init__(self, config: PeerConfig, io: RecordIO) -> None:
        self.config = config
        self.io = io
        self.transcript = Transcript()
        self.suite = ""
        self.group = ""
        self.secrets: HandshakeSecrets | None = None
        self.peer: PeerCertificate | None = None
        self.peer_name = ""
        self.local_name = ""
        self.pin_status: str | None = None

    # outgoing ------------------------------------------------------------------------------

    def _send_plain(self, payload: bytes) -> None:
        self.transcript.add(payload)
        self.io.send_plain(payload)

    def _send_sealed(self, payload: bytes) -> None:
        self.transcript.add(self.io.send_sealed(payload))

    def _send_identity_verify_finished(
        self, identity: Identity, context: bytes, hs_secret: bytes
    ) -> None:
        transcript = self.transcript
        self._send_sealed(serialize_identity(self.local_name, identity))
        signature = identity.sign(signed_content(context, transcript.digest()))
        self._send_sealed(serialize_verify(identity.alg, signature))
        self._send_sealed(serialize_finished(finished_verify_data(hs_secret, transcript.digest())))

    # incoming checks -------------------------------------------------------------------------

    def _check_identity(self, element: Element, payload: bytes, key_encipherment: bool) -> None:
        stanza = IdentityStanza.from_element(element)
        peer = self.config.trust.validate(
            stanza.certs, self.config.now(), require_key_encipherment=key_encipherment
        )
        if not any(same_identity(stanza.name, n) for n in peer.names):
            raise IdentityMismatch(f"{stanza.name!r} is not a name of the peer's certificate")
        self.peer = peer
        self.peer_name = stanza.name
        self.transcript.add(payload)

    def _check_pin(self) -> None:
        """§9.3 / §11.15: 'refuse' fails a key change with bad_certificate."""
        pins = self.config.pins
        assert self.peer is not None
        if pins is None:
            return
        self.pin_status = pins.enforce(self.peer_name, self.peer.spki_sha256)

    def _check_verify(self, element: Element, payload: bytes, context: bytes) -> None:
        stanza = Verify.from_element(element)
        assert self.peer is not None
        content = signed_content(context, self.transcript.digest())
        sigalgs.verify(self.peer.public_key, stanza.alg, content, stanza.signature)
        self.transcript.add(payload)

    def _check_finished(self, element: Element, payload: bytes, hs_secret: bytes) -> None:
        stanza = Finished.from_element(element)
        expected = finished_verify_data(hs_secret, self.transcript.digest())
        if not hmac.compare_digest(expected, stanza.verify_data):
            raise DecryptError("finished does not verify")
        self.transcript.add(payload)

    def _finish(self) -> None:
        assert self.secrets is not None and self.peer is not None
        if self.config.pins is not None and self.pin_status != "known":
            # §11.15: every key seen in an accepted handshake joins the identity's set.
            self.config.pins.add(self.peer_name, self.peer.spki_sha256)
        self.complete = True
        self.result = HandshakeResult(
            version=VERSION,
            suite=self.suite,
            group=self.group,
            local_name=self.local_name,
            peer_name=self.peer_name,
            peer=self.peer,
            pin_status=self.pin_status,
            exporter_secret=self.secrets.exporter(self.transcript.digest()),
        )


class InitiatorHandshake(_Machine):
    """The UA that opened the TCP connection (§7.1, left column)."""

    def __init__(
        self,
        config: PeerConfig,
        io: RecordIO,
        to: str | None = None,
        responder_cert: bytes | None = None,
        groups: Sequence[str] | None = None,
        suites: Sequence[str] | None = None,
    ) -> None:
        """
        @param to: the identity we want to reach (sent, and checked against M3).
        @param responder_cert: the responder's leaf DER, already known (IRP or a pin); needed
            for C{rsa-oaep}, which is offered only if enabled and this is an RSA certificate.
        @param groups: override the offered groups (e.g. a retry after C{no_common_group}).
        """
        super().__init__(config, io)
        self.to = to
        self.responder_cert = responder_cert
        self.offered_suites = list(suites if suites is not None else config.suites)
        offered = list(groups if groups is not None else config.accepted_groups)
        self.pending: dict[str, G.PendingShare] = {}
        entropy = config.entropy
        for group in offered:
            if group == G.RSA_OAEP:
                if not config.key_transport or responder_cert is None:
                    continue
                try:
                    self.pending[group] = G.start_share(group, entropy, responder_cert)
                except ValueError:
                    continue  # not an RSA certificate: rsa-oaep cannot be offered
            else:
                self.pending[group] = G.start_share(group, entropy)
        if not self.pending:
            raise ValueError("no key-exchange group to offer")
        self.identity = config.identities[0]
        self.local_name = self.identity.names[0]
        self.state = "start"

    def start(self) -> None:
        """Send M1."""
        shares = []
        for group, pending in self.pending.items():
            key = None
            if isinstance(pending, G._RsaOaepPending):
                key = b64encode(pending.key_id)
            shares.append(Share(group, b64encode(pending.share), key))
        hello = ClientHello(
            [VERSION], self.config.entropy.random(RANDOM_LEN), self.offered_suites, shares, self.to
        )
        self._send_plain(serialize_client_hello(hello))
        self.state = "wait_m2"

    def receive(self, element: Element, payload: bytes) -> None:
        if self.state == "wait_m2":
            self._receive_m2(element, payload)
        elif self.state == "wait_m3":
            key_enc = self.group == G.RSA_OAEP
            self._check_identity(element, payload, key_enc)
            self._check_m3()
            self.state = "wait_m4"
        elif self.state == "wait_m4":
            self._check_verify(element, payload, RESPONDER_CONTEXT)
            # Pins once the responder proved it holds the key (M4), so that a key recorded
            # as a pending change (§9.3) is one the peer really has.
            self._check_pin()
            self.state = "wait_m5"
        elif self.state == "wait_m5":
            assert self.secrets is not None
            self._check_finished(element, payload, self.secrets.r_hs_traffic)
            self._send_m6_m8()
        else:  # pragma: no cover - the connection stops feeding us once complete
            raise ProtocolError("handshake message after the handshake")

    def _receive_m2(self, element: Element, payload: bytes) -> None:
        hello = ServerHello.from_element(element)
        if hello.version != VERSION:
            raise IllegalParameter(f"M2 names version {hello.version!r}, which M1 did not offer")
        if hello.suite not in self.offered_suites:
            raise IllegalParameter(f"M2 names suite {hello.suite!r}, which M1 did not offer")
        if len(hello.shares) != 1:
            raise IllegalParameter("M2 must carry exactly one share")
        share = hello.shares[0]
        pending = self.pending.get(share.group)
        if pending is None:
            raise IllegalParameter(f"M2 names group {share.group!r}, which M1 did not offer")
        if len(hello.random) != RANDOM_LEN:
            raise IllegalParameter("random must be 32 bytes")
        secret = pending.finish(share.value())
        self.suite, self.group = hello.suite, share.group
        self.pending.clear()  # ephemeral private keys are not needed any more
        self.transcript.add(payload)
        self.secrets = HandshakeSecrets(secret, self.transcript.digest())
        self.io.install_read(CipherState(self.suite, self.secrets.r_hs_traffic))
        self.io.install_write(CipherState(self.suite, self.secrets.i_hs_traffic))
        self.state = "wait_m3"

    def _check_m3(self) -> None:
        assert self.peer is not None
        if self.to is not None and not same_identity(self.peer_name, self.to):
            raise IdentityMismatch(f"reached {self.peer_name}, not {self.to}")
        if self.group == G.RSA_OAEP and self.peer.leaf_der != self.responder_cert:
            raise BadCertificate("the responder's leaf is not the certificate we encrypted to")

    def _send_m6_m8(self) -> None:
        assert self.secrets is not None
        i_ap, r_ap = self.secrets.application(self.transcript.digest())
        self.io.install_read(CipherState(self.suite, r_ap))
        self._send_identity_verify_finished(
            self.identity, INITIATOR_CONTEXT, self.secrets.i_hs_traffic
        )
        self.io.install_write(CipherState(self.suite, i_ap))
        self.state = "complete"
        self._finish()


class ResponderHandshake(_Machine):
    """The UA that accepted the TCP connection (§7.1, right column)."""

    def __init__(self, config: PeerConfig, io: RecordIO) -> None:
        super().__init__(config, io)
        self.state = "wait_m1"
        self.i_ap: bytes = b""

    def receive(self, element: Element, payload: bytes) -> None:
        if self.state == "wait_m1":
            self._receive_m1(element, payload)
        elif self.state == "wait_m6":
            self._check_identity(element, payload, False)
            self.state = "wait_m7"
        elif self.state == "wait_m7":
            self._check_verify(element, payload, INITIATOR_CONTEXT)
            self.state = "wait_m8"
        elif self.state == "wait_m8":
            assert self.secrets is not None
            self._check_finished(element, payload, self.secrets.i_hs_traffic)
            self.io.install_read(CipherState(self.suite, self.i_ap))
            self.state = "complete"
            # Policy only now, so it leaks nothing to someone holding a public cert (§7.4).
            self._check_access()
            self._check_pin()
            self._finish()
        else:  # pragma: no cover
            raise ProtocolError("handshake message after the handshake")

    def _check_access(self) -> None:
        access = self.config.access
        if access is not None and not access.allows(self.peer_name):
            raise AccessDenied("not admitted by this user agent's access policy")

    def _choose_share(
        self, hello: ClientHello, served: tuple[Identity, str] | None
    ) -> tuple[Share, rsa.RSAPrivateKey | None]:
        accepted = self.config.accepted_groups
        for share in hello.shares:
            if share.group not in accepted:
                continue
            if share.group != G.RSA_OAEP:
                return share, None
            key = self._rsa_key_for(share, served)
            if key is not None:
                return share, key
        raise NoCommonGroup("no offered group is acceptable", extra={"groups": " ".join(accepted)})

    @staticmethod
    def _rsa_key_for(share: Share, served: tuple[Identity, str] | None) -> rsa.RSAPrivateKey | None:
        """§11.3: usable only if C{key} names a served leaf with an RSA key-encipherment key."""
        if served is None or share.key is None:
            return None
        identity = served[0]
        try:
            key_id = b64decode(share.key)
        except ValueError:
            return None
        if key_id != G.rsa_key_id(identity.leaf_der):
            return None
        if not isinstance(identity.private_key, rsa.RSAPrivateKey):
            return None
        if not allows_key_encipherment(identity.leaf):
            return None
        return identity.private_key

    def _receive_m1(self, element: Element, payload: bytes) -> None:
        hello = ClientHello.from_element(element)
        # §7.3 / §11.3 order: version -> suites -> groups -> to -> parameters.
        if VERSION not in hello.versions:
            raise UnsupportedVersion("version 1 not offered", extra={"versions": VERSION})
        suite = next((s for s in hello.suites if s in self.config.suites), None)
        if suite is None:
            raise NoCommonSuite(
                "no offered suite is acceptable", extra={"suites": " ".join(self.config.suites)}
            )
        served = self.config.identity_for(hello.to)
        share, rsa_key = self._choose_share(hello, served)
        if served is None:
            raise IdentityMismatch("this user agent does not serve that identity")
        if len(hello.random) != RANDOM_LEN:
            raise IllegalParameter("random must be 32 bytes")
        seen = [s.group for s in hello.shares]
        if len(seen) != len(set(seen)):
            raise IllegalParameter("two shares of one group")
        identity, self.local_name = served
        entropy = self.config.entropy
        random = entropy.random(RANDOM_LEN)
        our_share, secret = G.respond(share.group, share.value(), entropy, rsa_key)
        self.suite, self.group = suite, share.group
        self.transcript.add(payload)
        m2 = ServerHello(VERSION, random, suite, [Share(share.group, b64encode(our_share))])
        self._send_plain(serialize_server_hello(m2))
        self.secrets = HandshakeSecrets(secret, self.transcript.digest())
        self.io.install_write(CipherState(suite, self.secrets.r_hs_traffic))
        self.io.install_read(CipherState(suite, self.secrets.i_hs_traffic))
        self._send_identity_verify_finished(identity, RESPONDER_CONTEXT, self.secrets.r_hs_traffic)
        self.i_ap, r_ap = self.secrets.application(self.transcript.digest())
        self.io.install_write(CipherState(suite, r_ap))
        self.state = "wait_m6"
