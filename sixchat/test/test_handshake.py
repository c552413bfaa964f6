"""
Every alert reason a peer can trigger, in both roles, with the alert's form (PLAIN or SEALED)
checked against the §7.1 table; plus pins and rsa-oaep.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from sixchat import groups as G
from sixchat.connection import (
    INITIATOR,
    RESPONDER,
    AlertReceived,
    Connection,
    ConnectionFailed,
    HandshakeComplete,
)
from sixchat.handshake import PeerConfig
from sixchat.pki import issue_crl
from sixchat.record import PLAIN, SEALED, RecordReader, header, plain_record
from sixchat.test import certs
from sixchat.trust import InMemoryPinStore, PinPolicy
from sixchat.xmlcodec import b64encode

CA = certs.make_ca()
OTHER_CA = certs.make_ca(name="some other CA")


def config(name: str, ca: certs.TestCA = CA, key_type: str = "ed25519", **kw: Any) -> PeerConfig:
    identity = kw.pop("identity", None) or certs.make_identity(name, ca, key_type=key_type)
    trust = kw.pop("trust", None) or certs.trust_for(CA)
    return PeerConfig([identity], trust, **kw)


def records(data: bytes) -> list[tuple[int, bytes]]:
    reader = RecordReader()
    reader.feed(data)
    out = []
    while (record := reader.next_record(sealed_allowed=True)) is not None:
        out.append((record[0], record[2]))
    return out


class Exchange:
    """Run a handshake between two Connections, with hooks to corrupt what one side sends."""

    def __init__(
        self,
        alice: PeerConfig | None = None,
        bob: PeerConfig | None = None,
        to: str | None = "bob@example.com",
        **initiator_kw: Any,
    ) -> None:
        self.alice = Connection(
            alice or config("alice@example.com"), INITIATOR, to=to, **initiator_kw
        )
        self.bob = Connection(bob or config("bob@example.com"), RESPONDER)
        self.alice_events: list[Any] = []
        self.bob_events: list[Any] = []
        self.to_bob: list[bytes] = []
        self.to_alice: list[bytes] = []

    def tamper_sealed(self, side: Connection, rewrite: Callable[[bytes], bytes]) -> None:
        """Rewrite the plaintext of every sealed handshake message C{side} sends."""
        original = side.send_sealed

        def send_sealed(payload: bytes) -> bytes:
            return original(rewrite(payload))

        side.send_sealed = send_sealed  # type: ignore[method-assign]

    def tamper_plain(self, side: Connection, rewrite: Callable[[bytes], bytes]) -> None:
        original = side.send_plain
        side.send_plain = lambda payload: original(rewrite(payload))  # type: ignore[method-assign]

    def run(self) -> Exchange:
        self.alice.start()
        for _ in range(10):
            data = self.alice.data_to_send()
            self.to_bob.append(data)
            if data:
                self.bob_events += self.bob.receive_data(data)
            back = self.bob.data_to_send()
            self.to_alice.append(back)
            if back:
                self.alice_events += self.alice.receive_data(back)
            if not data and not back:
                break
        return self

    def failure(self, who: str) -> ConnectionFailed:
        events = self.alice_events if who == "alice" else self.bob_events
        failed = [e for e in events if isinstance(e, ConnectionFailed)]
        assert failed, f"{who} did not fail: {events}"
        return failed[0]

    def peer_alert(self, who: str) -> str:
        events = self.alice_events if who == "alice" else self.bob_events
        alerts = [e for e in events if isinstance(e, AlertReceived)]
        assert alerts, f"{who} received no alert: {events}"
        return alerts[0].alert.reason

    def last_record_type(self, who: str) -> int:
        stream = b"".join(self.to_bob if who == "alice" else self.to_alice)
        return records(stream)[-1][0]


class AlertTestCase(unittest.SynchronousTestCase):
    def assertAlert(self, x: Exchange, sender: str, reason: str, form: int) -> None:
        """C{sender} detected C{reason}, sent it in C{form}, and the other side read it."""
        self.assertEqual(x.failure(sender).error.reason, reason)
        self.assertEqual(x.last_record_type(sender), form)
        receiver = "bob" if sender == "alice" else "alice"
        self.assertEqual(x.peer_alert(receiver), reason)


class ResponderChecksM1Tests(AlertTestCase):
    """The responder's checks of M1, in the §7.3 / §11.3 order, answered with PLAIN alerts."""

    def m1(self, payload: bytes) -> tuple[list[Any], bytes]:
        bob = Connection(config("bob@example.com"), RESPONDER)
        events = bob.receive_data(plain_record(payload))
        return events, bob.data_to_send()

    def hello(self, **attrs: str) -> str:
        fields = {"versions": "1", "random": b64encode(b"r" * 32)}
        fields.update(attrs)
        text = " ".join(f'{k}="{v}"' for k, v in fields.items() if v is not None)
        return f"<hello {text}>"

    X25519_SHARE = '<share group="x25519">' + b64encode(b"\x09" + b"\x00" * 31) + "</share>"

    def assertPlainAlert(self, payload: str, reason: str, **attrs: str) -> None:
        events, out = self.m1(payload.encode())
        self.assertEqual([type(e) for e in events], [ConnectionFailed])
        self.assertEqual(events[0].error.reason, reason)
        [(kind, alert)] = records(out)
        self.assertEqual(kind, PLAIN)
        self.assertIn(f'reason="{reason}"'.encode(), alert)
        for name, value in attrs.items():
            self.assertIn(f'{name}="{value}"'.encode(), alert)

    def test_unsupported_version(self) -> None:
        self.assertPlainAlert(
            self.hello(versions="2 3")
            + "<suite>aes-256-gcm</suite>"
            + self.X25519_SHARE
            + "</hello>",
            "unsupported_version",
            versions="1",
        )

    def test_no_common_suite(self) -> None:
        self.assertPlainAlert(
            self.hello() + "<suite>rot13</suite>" + self.X25519_SHARE + "</hello>",
            "no_common_suite",
            suites="aes-256-gcm chacha20-poly1305 aes-128-gcm",
        )

    def test_no_common_group(self) -> None:
        self.assertPlainAlert(
            self.hello() + '<suite>aes-256-gcm</suite><share group="x448">AAAA</share></hello>',
            "no_common_group",
            groups="x25519-mlkem768 x25519 secp256r1",
        )

    def test_no_share_at_all_is_no_common_group(self) -> None:
        self.assertPlainAlert(
            self.hello() + "<suite>aes-256-gcm</suite></hello>", "no_common_group"
        )

    def test_rsa_oaep_not_enabled_is_skipped(self) -> None:
        share = '<share group="rsa-oaep" key="AAAA">' + b64encode(b"x" * 256) + "</share>"
        self.assertPlainAlert(
            self.hello() + "<suite>aes-256-gcm</suite>" + share + "</hello>", "no_common_group"
        )

    def test_identity_not_served(self) -> None:
        self.assertPlainAlert(
            self.hello(to="carol@example.com")
            + "<suite>aes-256-gcm</suite>"
            + self.X25519_SHARE
            + "</hello>",
            "identity_mismatch",
        )

    def test_to_compares_domain_case_insensitively(self) -> None:
        events, out = self.m1(
            (
                self.hello(to="bob@EXAMPLE.com")
                + "<suite>aes-256-gcm</suite>"
                + '<share group="x25519">'
                + b64encode(G.Entropy().x25519().public_key().public_bytes_raw())
                + "</share></hello>"
            ).encode()
        )
        self.assertEqual(events, [])
        self.assertEqual([kind for kind, _ in records(out)], [PLAIN, SEALED, SEALED, SEALED])

    def test_local_part_is_case_sensitive(self) -> None:
        self.assertPlainAlert(
            self.hello(to="Bob@example.com")
            + "<suite>aes-256-gcm</suite>"
            + self.X25519_SHARE
            + "</hello>",
            "identity_mismatch",
        )

    def test_random_not_32_bytes(self) -> None:
        self.assertPlainAlert(
            self.hello(random=b64encode(b"r" * 31))
            + "<suite>aes-256-gcm</suite>"
            + self.X25519_SHARE
            + "</hello>",
            "illegal_parameter",
        )

    def test_two_shares_of_one_group(self) -> None:
        self.assertPlainAlert(
            self.hello() + "<suite>aes-256-gcm</suite>" + self.X25519_SHARE * 2 + "</hello>",
            "illegal_parameter",
        )

    def test_invalid_chosen_share(self) -> None:
        self.assertPlainAlert(
            self.hello() + '<suite>aes-256-gcm</suite><share group="x25519">AAAA</share></hello>',
            "illegal_parameter",
        )

    def test_all_zero_x25519_share(self) -> None:
        zero = '<share group="x25519">' + b64encode(bytes(32)) + "</share>"
        self.assertPlainAlert(
            self.hello() + "<suite>aes-256-gcm</suite>" + zero + "</hello>", "illegal_parameter"
        )

    def test_unchosen_share_is_not_decoded(self) -> None:
        good = G.Entropy().x25519().public_key().public_bytes_raw()
        payload = (
            self.hello()
            + "<suite>aes-256-gcm</suite>"
            + '<share group="x25519">'
            + b64encode(good)
            + '</share><share group="secp256r1">!!not base64!!</share></hello>'
        )
        events, out = self.m1(payload.encode())
        self.assertEqual(events, [])
        self.assertEqual(records(out)[0][0], PLAIN)

    def test_version_checked_before_suites(self) -> None:
        self.assertPlainAlert(
            self.hello(versions="9") + "<suite>rot13</suite></hello>", "unsupported_version"
        )

    def test_suites_checked_before_groups_and_parameters(self) -> None:
        self.assertPlainAlert(
            self.hello(random="AAAA") + "<suite>rot13</suite></hello>", "no_common_suite"
        )

    def test_parse_errors_are_protocol_errors(self) -> None:
        for payload in (
            "<hello random='" + b64encode(b"r" * 32) + "'/>",  # no versions
            "<hello versions='1'/>",  # no random
            "<hello versions='1' random='not base64!'/>",
            self.hello() + "<suite>aes-256-gcm</suite><share>AAAA</share></hello>",
            "<identity name='x'/>",
            "<!DOCTYPE hello><hello/>",
            '<?xml version="1.0"?><hello/>',
        ):
            with self.subTest(payload=payload):
                self.assertPlainAlert(payload, "protocol_error")

    def test_sealed_record_as_m1(self) -> None:
        bob = Connection(config("bob@example.com"), RESPONDER)
        events = bob.receive_data(header(SEALED, 20) + b"x" * 20)
        self.assertEqual(events[0].error.reason, "protocol_error")
        self.assertEqual(records(bob.data_to_send())[0][0], PLAIN)

    def test_record_layer_errors(self) -> None:
        cases = [
            (b"\x03\x00\x00\x01x", "protocol_error"),
            (b"\x01\x00\x00\x00", "protocol_error"),
            (b"\x01\x01\x00\x01", "record_overflow"),
        ]
        for data, reason in cases:
            bob = Connection(config("bob@example.com"), RESPONDER)
            events = bob.receive_data(data)
            self.assertEqual(events[0].error.reason, reason)

    def test_plain_alert_is_accepted_during_handshake(self) -> None:
        events, out = self.m1(b'<alert reason="internal_error"/>')
        self.assertEqual([type(e) for e in events], [AlertReceived])
        self.assertEqual(events[0].alert.reason, "internal_error")
        self.assertEqual(out, b"")

    def test_unknown_alert_reason_reads_as_protocol_error(self) -> None:
        events, _ = self.m1(b'<alert reason="cosmic_rays"/>')
        self.assertEqual(events[0].alert.reason, "protocol_error")


class InitiatorChecksM2Tests(AlertTestCase):
    """A responder that answers wrongly: the initiator refuses M2 with a PLAIN alert."""

    def rewrite_m2(self, pattern: str, replacement: str) -> Exchange:
        x = Exchange()

        def rewrite(payload: bytes) -> bytes:
            if payload.startswith(b"<hello version="):
                return re.sub(pattern.encode(), replacement.encode(), payload, count=1)
            return payload

        x.tamper_plain(x.bob, rewrite)
        return x.run()

    def test_suite_not_offered(self) -> None:
        x = self.rewrite_m2(r'suite="[^"]*"', 'suite="rot13"')
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_version_not_offered(self) -> None:
        x = self.rewrite_m2(r'version="1"', 'version="2"')
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_group_not_offered(self) -> None:
        x = self.rewrite_m2(r'group="x25519-mlkem768"', 'group="secp256r1"')
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_two_shares(self) -> None:
        x = self.rewrite_m2(r"(<share .*</share>)", r"\1\1")
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_missing_share(self) -> None:
        x = self.rewrite_m2(r"<share .*</share>", "")
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_bad_share(self) -> None:
        x = self.rewrite_m2(r">[^<]*</share>", ">AAAA</share>")
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_short_random(self) -> None:
        x = self.rewrite_m2(r'random="[^"]*"', f'random="{b64encode(b"r" * 16)}"')
        self.assertAlert(x, "alice", "illegal_parameter", PLAIN)

    def test_missing_random(self) -> None:
        x = self.rewrite_m2(r'random="[^"]*" ', "")
        self.assertAlert(x, "alice", "protocol_error", PLAIN)

    def test_no_common_suite_alert_reaches_initiator(self) -> None:
        bob = config("bob@example.com", suites=("aes-128-gcm",))
        x = Exchange(bob=bob, suites=["chacha20-poly1305"]).run()
        self.assertAlert(x, "bob", "no_common_suite", PLAIN)


class SealedHandshakeTests(AlertTestCase):
    """Corrupted M3–M5 (initiator detects, SEALED(i_hs)) and M6–M8 (responder, SEALED(r_ap))."""

    def corrupt(
        self, side: str, tag: bytes, rewrite: Callable[[bytes], bytes], **kw: Any
    ) -> Exchange:
        x = Exchange(**kw)
        conn = x.bob if side == "bob" else x.alice
        x.tamper_sealed(conn, lambda p: rewrite(p) if p.startswith(tag) else p)
        return x.run()

    def test_bad_signature_m4(self) -> None:
        x = self.corrupt(
            "bob", b"<verify", lambda p: p.replace(b">", b">AAAA", 1)[:-13] + b"</verify>"
        )
        self.assertAlert(x, "alice", "decrypt_error", SEALED)

    def test_bad_signature_m7(self) -> None:
        def flip(p: bytes) -> bytes:
            start = p.index(b">") + 1
            return p[:start] + (b"B" if p[start : start + 1] != b"B" else b"C") + p[start + 1 :]

        x = self.corrupt("alice", b"<verify", flip)
        self.assertAlert(x, "bob", "decrypt_error", SEALED)
        self.assertEqual(x.bob.result, None)

    def test_wrong_alg(self) -> None:
        x = self.corrupt(
            "bob", b"<verify", lambda p: p.replace(b"ed25519", b"ecdsa-secp256r1-sha256")
        )
        self.assertAlert(x, "alice", "decrypt_error", SEALED)

    def test_bad_finished_m5(self) -> None:
        x = self.corrupt(
            "bob",
            b"<finished",
            lambda p: b"<finished>" + b64encode(bytes(32)).encode() + b"</finished>",
        )
        self.assertAlert(x, "alice", "decrypt_error", SEALED)

    def test_bad_finished_m8(self) -> None:
        x = self.corrupt(
            "alice",
            b"<finished",
            lambda p: b"<finished>" + b64encode(bytes(31)).encode() + b"</finished>",
        )
        self.assertAlert(x, "bob", "decrypt_error", SEALED)

    def test_name_not_in_certificate(self) -> None:
        x = self.corrupt(
            "bob", b"<identity", lambda p: p.replace(b"bob@example.com", b"eve@example.com", 1)
        )
        self.assertAlert(x, "alice", "identity_mismatch", SEALED)

    def test_initiator_name_not_in_certificate(self) -> None:
        x = self.corrupt("alice", b"<identity", lambda p: p.replace(b"alice@", b"mallory@", 1))
        self.assertAlert(x, "bob", "identity_mismatch", SEALED)

    def test_to_mismatch_after_m3(self) -> None:
        """A responder that serves another identity than `to`: caught by the initiator at M3."""
        bob = config("bob@example.com")
        bob.identity_for = lambda name: (bob.identities[0], "bob@example.com")  # type: ignore[method-assign]
        x = Exchange(bob=bob, to="robert@example.com").run()
        self.assertAlert(x, "alice", "identity_mismatch", SEALED)

    def test_identity_without_cert(self) -> None:
        x = self.corrupt("bob", b"<identity", lambda p: re.sub(rb"<cert>.*</cert>", b"", p))
        self.assertAlert(x, "alice", "bad_certificate", SEALED)

    def test_nine_certs(self) -> None:
        x = self.corrupt(
            "bob", b"<identity", lambda p: re.sub(rb"(<cert>.*</cert>)", rb"\1" * 9, p)
        )
        self.assertAlert(x, "alice", "bad_certificate", SEALED)

    def test_unparsable_cert(self) -> None:
        x = self.corrupt(
            "bob", b"<identity", lambda p: re.sub(rb"<cert>.*</cert>", b"<cert>AAAA</cert>", p)
        )
        self.assertAlert(x, "alice", "bad_certificate", SEALED)

    def test_invalid_base64_in_identity(self) -> None:
        x = self.corrupt(
            "bob", b"<identity", lambda p: re.sub(rb"<cert>.*</cert>", b"<cert>A A</cert>", p)
        )
        self.assertAlert(x, "alice", "protocol_error", SEALED)

    def test_wrong_message_type(self) -> None:
        x = self.corrupt(
            "bob",
            b"<verify",
            lambda p: b'<message id="x" ts="2026-11-26T00:00:00Z"><body>hi</body></message>',
        )
        self.assertAlert(x, "alice", "protocol_error", SEALED)

    def test_finished_instead_of_verify(self) -> None:
        x = self.corrupt(
            "alice",
            b"<verify",
            lambda p: b"<finished>" + b64encode(bytes(32)).encode() + b"</finished>",
        )
        self.assertAlert(x, "bob", "protocol_error", SEALED)

    def test_close_during_handshake(self) -> None:
        x = self.corrupt("alice", b"<identity", lambda p: b"<close/>")
        self.assertAlert(x, "bob", "protocol_error", SEALED)

    def test_message_during_handshake(self) -> None:
        x = self.corrupt("alice", b"<identity", lambda p: b'<ping id="p"/>')
        self.assertAlert(x, "bob", "protocol_error", SEALED)

    def test_verify_without_alg(self) -> None:
        x = self.corrupt("bob", b"<verify", lambda p: re.sub(rb' alg="[^"]*"', b"", p))
        self.assertAlert(x, "alice", "protocol_error", SEALED)

    def test_tampered_record_is_bad_record_mac(self) -> None:
        x = Exchange()
        x.alice.start()
        x.bob.receive_data(x.alice.data_to_send())
        flight = bytearray(x.bob.data_to_send())
        flight[-1] ^= 1  # the last byte of M5's tag
        events = x.alice.receive_data(bytes(flight))
        self.assertEqual(events[-1].error.reason, "bad_record_mac")
        self.assertEqual(records(x.alice.data_to_send())[-1][0], SEALED)

    def test_short_sealed_record(self) -> None:
        x = Exchange()
        x.alice.start()
        x.bob.receive_data(x.alice.data_to_send())
        m2 = records(x.bob.data_to_send())[0][1]
        events = x.alice.receive_data(plain_record(m2) + header(SEALED, 15) + b"x" * 15)
        self.assertEqual(events[-1].error.reason, "bad_record_mac")

    def test_plain_hello_after_m2(self) -> None:
        x = Exchange()
        x.alice.start()
        x.bob.receive_data(x.alice.data_to_send())
        m2 = records(x.bob.data_to_send())[0][1]
        events = x.alice.receive_data(plain_record(m2) + plain_record(m2))
        self.assertEqual(events[-1].error.reason, "protocol_error")
        self.assertEqual(records(x.alice.data_to_send())[-1][0], SEALED)


class CertificateTests(AlertTestCase):
    """Chain failures map to their alerts in both directions."""

    def bob_with(self, **issue: Any) -> PeerConfig:
        identity = certs.make_identity("bob@example.com", CA, check=False, **issue)
        return config("bob@example.com", identity=identity)

    def test_unknown_ca(self) -> None:
        bob = config("bob@example.com", ca=OTHER_CA)
        x = Exchange(bob=bob).run()
        self.assertAlert(x, "alice", "unknown_ca", SEALED)

    def test_initiator_unknown_ca(self) -> None:
        alice = config("alice@example.com", ca=OTHER_CA)
        x = Exchange(alice=alice).run()
        self.assertAlert(x, "bob", "unknown_ca", SEALED)

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        bob = self.bob_with(
            not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
        )
        x = Exchange(bob=bob).run()
        self.assertAlert(x, "alice", "certificate_expired", SEALED)

    def test_not_yet_valid(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        bob = self.bob_with(
            not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30)
        )
        x = Exchange(bob=bob).run()
        self.assertAlert(x, "alice", "certificate_expired", SEALED)

    def test_wrong_eku(self) -> None:
        x = Exchange(bob=self.bob_with(eku=("serverAuth",))).run()
        self.assertAlert(x, "alice", "bad_certificate", SEALED)

    def test_no_rfc822_name(self) -> None:
        identity = certs.make_identity("bob@example.com", CA)
        leaf = certs.make_identity([], CA, check=False, no_san=True, key=identity.private_key).leaf
        identity.leaf = leaf
        identity.leaf_der = leaf.public_bytes(serialization.Encoding.DER)
        identity.chain_der = [identity.leaf_der]
        x = Exchange(bob=config("bob@example.com", identity=identity)).run()
        self.assertAlert(x, "alice", "bad_certificate", SEALED)

    def test_revoked(self) -> None:
        bob = config("bob@example.com")
        crl = issue_crl(CA.key, CA.cert, [bob.identities[0].leaf.serial_number])
        alice = config("alice@example.com", trust=certs.trust_for(CA, crls=[crl]))
        x = Exchange(alice=alice, bob=bob).run()
        self.assertAlert(x, "alice", "certificate_revoked", SEALED)


class PinTests(unittest.SynchronousTestCase):
    def handshake(self, policy: str, store: InMemoryPinStore, fresh_key: bool) -> Exchange:
        key = certs.new_key("ed25519") if fresh_key else None
        identity = certs.make_identity("bob@example.com", CA, key=key)
        pins = PinPolicy(store, policy)
        alice = config("alice@example.com", pins=pins)
        return Exchange(alice=alice, bob=config("bob@example.com", identity=identity)).run()

    def test_first_contact_is_new_then_known(self) -> None:
        store = InMemoryPinStore()
        x = self.handshake("warn", store, fresh_key=False)
        self.assertEqual(x.alice.result.pin_status, "new")
        x = self.handshake("warn", store, fresh_key=False)
        self.assertEqual(x.alice.result.pin_status, "known")

    def test_key_change_warn(self) -> None:
        store = InMemoryPinStore()
        self.handshake("warn", store, fresh_key=False)
        x = self.handshake("warn", store, fresh_key=True)
        self.assertEqual(x.alice.result.pin_status, "changed")
        self.assertIsInstance(x.alice_events[0], HandshakeComplete)

    def test_key_change_refuse(self) -> None:
        store = InMemoryPinStore()
        self.handshake("refuse", store, fresh_key=False)
        x = self.handshake("refuse", store, fresh_key=True)
        self.assertEqual(x.failure("alice").error.reason, "bad_certificate")
        self.assertEqual(x.peer_alert("bob"), "bad_certificate")

    def test_refused_key_is_reported_in_both_roles(self) -> None:
        """Issue 17 item 5: C{on_refused} hears of the refused key whichever side refuses,
        and only once the peer proved it holds the key (initiator: after M4)."""
        refused: list[tuple[str, bytes]] = []
        store = InMemoryPinStore()
        self.handshake("refuse", store, fresh_key=False)
        key = certs.new_key("ed25519")
        identity = certs.make_identity("bob@example.com", CA, key=key)
        pins = PinPolicy(store, "refuse", on_refused=lambda *a: refused.append(a))
        x = Exchange(
            alice=config("alice@example.com", pins=pins),
            bob=config("bob@example.com", identity=identity),
        ).run()
        self.assertEqual(x.failure("alice").error.reason, "bad_certificate")
        self.assertEqual(refused, [("bob@example.com", identity.spki_sha256)])
        self.assertEqual(store.known("bob@example.com"), pins.store.known("bob@example.com"))
        self.assertNotIn(identity.spki_sha256, store.known("bob@example.com"))
        # responder
        old = certs.make_identity("alice@example.com", CA)
        store.add("alice@example.com", old.spki_sha256)
        new = certs.make_identity("alice@example.com", CA, key=certs.new_key("ed25519"))
        bob = config("bob@example.com", pins=pins)
        x = Exchange(alice=config("alice@example.com", identity=new), bob=bob).run()
        self.assertEqual(x.failure("bob").error.reason, "bad_certificate")
        self.assertEqual(refused[1], ("alice@example.com", new.spki_sha256))
        # warn and accept never call it
        for policy in ("warn", "accept"):
            pins = PinPolicy(store, policy, on_refused=lambda *a: refused.append(a))
            other = certs.make_identity("alice@example.com", CA, key=certs.new_key("ed25519"))
            Exchange(
                alice=config("alice@example.com", identity=other),
                bob=config("bob@example.com", pins=pins),
            ).run()
        self.assertEqual(len(refused), 2)

    def test_initiator_checks_pins_after_the_responders_signature(self) -> None:
        """A responder that shows a pinned identity's other certificate but cannot sign
        with its key is not a key change: nothing is reported (bad signature instead)."""
        refused: list[tuple[str, bytes]] = []
        store = InMemoryPinStore()
        self.handshake("refuse", store, fresh_key=False)
        real = certs.make_identity("bob@example.com", CA, key=certs.new_key("ed25519"))
        impostor = certs.make_identity("bob@example.com", CA, key=certs.new_key("ed25519"))
        impostor.leaf, impostor.leaf_der = real.leaf, real.leaf_der
        impostor.chain_der = [real.leaf_der, *real.chain_der[1:]]
        pins = PinPolicy(store, "refuse", on_refused=lambda *a: refused.append(a))
        x = Exchange(
            alice=config("alice@example.com", pins=pins),
            bob=config("bob@example.com", identity=impostor),
        ).run()
        self.assertNotEqual(x.failure("alice").error.reason, "bad_certificate")
        self.assertEqual(refused, [])

    def test_responder_refuses_only_after_m8(self) -> None:
        store = InMemoryPinStore()
        pins = PinPolicy(store, "refuse")
        old = certs.make_identity("alice@example.com", CA)
        store.add("alice@example.com", old.spki_sha256)
        new = certs.make_identity("alice@example.com", CA, key=certs.new_key("ed25519"))
        bob = config("bob@example.com", pins=pins)
        x = Exchange(alice=config("alice@example.com", identity=new), bob=bob).run()
        self.assertEqual(x.failure("bob").error.reason, "bad_certificate")
        # sealed under r_ap: the initiator had completed and reads it as a sealed alert
        self.assertEqual(records(b"".join(x.to_alice))[-1][0], SEALED)
        self.assertEqual(x.peer_alert("alice"), "bad_certificate")


class RsaOaepTests(AlertTestCase):
    def rsa_pair(self, **bob_kw: Any) -> tuple[PeerConfig, PeerConfig]:
        alice = config("alice@example.com", key_type="rsa2048", key_transport=True)
        bob = config("bob@example.com", key_type="rsa2048", key_transport=True, **bob_kw)
        return alice, bob

    def test_key_transport(self) -> None:
        alice, bob = self.rsa_pair()
        x = Exchange(
            alice, bob, groups=["rsa-oaep"], responder_cert=bob.identities[0].leaf_der
        ).run()
        self.assertEqual(x.alice.result.group, "rsa-oaep")
        self.assertEqual(x.bob.result.group, "rsa-oaep")

    def test_not_enabled_by_responder(self) -> None:
        alice, bob = self.rsa_pair()
        bob.key_transport = False
        x = Exchange(
            alice, bob, groups=["rsa-oaep"], responder_cert=bob.identities[0].leaf_der
        ).run()
        self.assertAlert(x, "bob", "no_common_group", PLAIN)

    def test_falls_back_to_next_share(self) -> None:
        alice, bob = self.rsa_pair()
        other = certs.make_identity(
            "bob@example.com", CA, key_type="rsa2048", key=certs.new_key("rsa2048")
        )
        x = Exchange(alice, bob, groups=["rsa-oaep", "x25519"], responder_cert=other.leaf_der).run()
        self.assertEqual(x.bob.result.group, "x25519")

    def test_corrupted_ciphertext_shows_as_bad_record_mac(self) -> None:
        alice, bob = self.rsa_pair()
        x = Exchange(alice, bob, groups=["rsa-oaep"], responder_cert=bob.identities[0].leaf_der)
        pending = x.alice.handshake.pending["rsa-oaep"]
        ciphertext = bytearray(pending.share)
        ciphertext[-1] ^= 1  # a consistent lie: the initiator's own transcript has it too
        pending.share = bytes(ciphertext)
        x.run()
        # The responder continued with a random secret and said nothing distinguishable:
        # it sent M2-M5 as usual, and the initiator fails opening M3.
        self.assertEqual([kind for kind, _ in records(x.to_alice[0])], [PLAIN] + [SEALED] * 3)
        self.assertEqual(x.failure("alice").error.reason, "bad_record_mac")
        self.assertIsNone(x.bob.result)

    def test_not_offered_without_certificate(self) -> None:
        alice, _ = self.rsa_pair()
        self.assertRaises(ValueError, Connection, alice, INITIATOR, groups=["rsa-oaep"])
