"""
Every test vector of the spec (copied from shared/spec/vectors into sixchat/test/vectors/),
produced and accepted byte for byte.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
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
    StanzaReceived,
)
from sixchat.handshake import AccessPolicy, PeerConfig
from sixchat.identity import Identity
from sixchat.keyschedule import (
    HandshakeSecrets,
    finished_key,
    finished_verify_data,
    hkdf_expand_label,
    hkdf_label,
    next_traffic_secret,
    traffic_key_iv,
    transcript_hash,
)
from sixchat.record import SUITES, CipherState, RecordReader, plain_record, strip_padding
from sixchat.stanzas import Message, Receipt
from sixchat.trust import TrustStore
from sixchat.xmlcodec import parse

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> Any:
    with open(VECTORS / name, encoding="utf-8") as f:
        return json.load(f)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


class KeyScheduleVectorTests(unittest.SynchronousTestCase):
    vectors = load("key-schedule.json")

    def test_hkdf_expand_label(self) -> None:
        for v in self.vectors["hkdf_expand_label"]:
            label, context = v["label"].encode(), h(v["context"])
            self.assertEqual(hkdf_label(label, context, v["length"]).hex(), v["hkdf_label"])
            self.assertEqual(
                hkdf_expand_label(h(v["secret"]), label, context, v["length"]).hex(), v["output"]
            )

    def test_cases(self) -> None:
        for case in self.vectors["cases"]:
            messages = [m.encode() for m in case["messages"]]
            key_len = SUITES[case["suite"]][0]
            th12 = transcript_hash(messages[:2])
            self.assertEqual(th12.hex(), case["transcript_hash_M1_M2"])
            self.assertEqual(transcript_hash(messages).hex(), case["transcript_hash_M1_M8"])
            s = HandshakeSecrets(h(case["ikm"]), th12)
            got = {
                "handshake_secret": s.handshake_secret,
                "r_hs_traffic": s.r_hs_traffic,
                "i_hs_traffic": s.i_hs_traffic,
                "master_secret": s.master_secret,
                "r_finished_key": finished_key(s.r_hs_traffic),
                "i_finished_key": finished_key(s.i_hs_traffic),
                "r_finished_verify_data_over_M1_M4": finished_verify_data(
                    s.r_hs_traffic, transcript_hash(messages[:4])
                ),
                "i_finished_verify_data_over_M1_M7": finished_verify_data(
                    s.i_hs_traffic, transcript_hash(messages[:7])
                ),
                "exporter_secret": s.exporter(transcript_hash(messages)),
            }
            got["r_hs_key"], got["r_hs_iv"] = traffic_key_iv(s.r_hs_traffic, key_len)
            got["i_hs_key"], got["i_hs_iv"] = traffic_key_iv(s.i_hs_traffic, key_len)
            i_ap, r_ap = s.application(transcript_hash(messages[:5]))
            got["i_ap_traffic_0"], got["r_ap_traffic_0"] = i_ap, r_ap
            got["i_ap_key_0"], got["i_ap_iv_0"] = traffic_key_iv(i_ap, key_len)
            got["r_ap_key_0"], got["r_ap_iv_0"] = traffic_key_iv(r_ap, key_len)
            got["i_ap_traffic_1"] = next_traffic_secret(i_ap)
            for name, value in got.items():
                self.assertEqual(value.hex(), case[name], f"{case['name']}: {name}")


class RecordVectorTests(unittest.SynchronousTestCase):
    vectors = load("records.json")

    def test_plain_example(self) -> None:
        example = self.vectors["plain_example"]
        self.assertEqual(plain_record(h(example["payload"])).hex(), example["record"])

    def test_sealed_records_produced(self) -> None:
        for case in self.vectors["cases"]:
            state = CipherState.from_key_iv(
                case["suite"], h(case["key"]), h(case["iv"]), case["seq"]
            )
            self.assertEqual(state._nonce().hex(), case["nonce"])
            self.assertEqual(state.seal(h(case["plaintext"])).hex(), case["record"])

    def test_sealed_records_accepted(self) -> None:
        for case in self.vectors["cases"]:
            state = CipherState.from_key_iv(
                case["suite"], h(case["key"]), h(case["iv"]), case["seq"]
            )
            reader = RecordReader()
            reader.feed(h(case["record"]))
            record = reader.next_record(sealed_allowed=True)
            assert record is not None
            _, head, payload = record
            self.assertEqual(state.open(head, payload), h(case["plaintext"]))

    def test_last_sequence_number_carries_padded_rekey(self) -> None:
        """seq 2^24-1 is the last a key may seal: the vectors put a padded <rekey/> there."""
        for case in self.vectors["cases"]:
            if case["seq"] == 2**24 - 1:
                plaintext = h(case["plaintext"])
                self.assertEqual(parse(strip_padding(plaintext)).tag, "rekey")
                state = CipherState.from_key_iv(
                    case["suite"], h(case["key"]), h(case["iv"]), case["seq"]
                )
                state.seal(plaintext)
                self.assertRaises(ValueError, state.seal, plaintext)


class RekeyVectorTests(unittest.SynchronousTestCase):
    vectors = load("rekey.json")

    def test_secret_chain(self) -> None:
        steps = self.vectors["steps"]
        for step, following in zip(steps, steps[1:], strict=False):
            self.assertEqual(next_traffic_secret(h(step["secret"])).hex(), following["secret"])
        for step in steps:
            key, iv = traffic_key_iv(h(step["secret"]), 32)
            self.assertEqual((key.hex(), iv.hex()), (step["key"], step["iv"]))

    def test_stream_opens_and_reseals(self) -> None:
        """Receive the stream switching keys at each <rekey/>, then reproduce it sending."""
        suite = self.vectors["suite"]
        reader = RecordReader()
        reader.feed(h(self.vectors["stream"]))
        receiver = CipherState(suite, h(self.vectors["steps"][0]["secret"]))
        sender = CipherState(suite, h(self.vectors["steps"][0]["secret"]))
        resealed = b""
        tags = []
        while (record := reader.next_record(sealed_allowed=True)) is not None:
            plaintext = receiver.open(record[1], record[2])
            tag = parse(strip_padding(plaintext)).tag
            tags.append(tag)
            resealed += sender.seal(plaintext)
            if tag == "rekey":
                receiver.rekey()
                sender.rekey()
        self.assertEqual(tags, ["message", "rekey"] * 3)
        self.assertEqual(resealed.hex(), self.vectors["stream"])
        for i, step in enumerate(self.vectors["steps"]):
            self.assertEqual(resealed.hex().count(step["records"]), 1, f"step {i}")


class KeyExchangeVectorTests(unittest.SynchronousTestCase):
    vectors = load("key-exchange.json")

    def test_x25519_mlkem768_decapsulation(self) -> None:
        v = self.vectors["x25519-mlkem768"]
        entropy = G.FixedEntropy(
            x25519_keys=[h(v["initiator_x25519_private"])],
            mlkem_seeds=[h(v["initiator_mlkem768_seed"])],
        )
        pending = G.start_share(G.X25519_MLKEM768, entropy)
        self.assertEqual(pending.share.hex(), v["initiator_share"])
        self.assertEqual(len(pending.share), 1216)
        self.assertEqual(len(h(v["responder_share"])), 1120)
        self.assertEqual(pending.finish(h(v["responder_share"])).hex(), v["shared_secret"])

    def test_x25519_mlkem768_corrupted_ciphertext_is_implicit_rejection(self) -> None:
        v = self.vectors["x25519-mlkem768"]
        entropy = G.FixedEntropy(
            x25519_keys=[h(v["initiator_x25519_private"])],
            mlkem_seeds=[h(v["initiator_mlkem768_seed"])],
        )
        pending = G.start_share(G.X25519_MLKEM768, entropy)
        corrupted = bytearray(h(v["responder_share"]))
        corrupted[10] ^= 1
        secret = pending.finish(bytes(corrupted))  # no error: shows later as bad_record_mac
        self.assertEqual(len(secret), 64)
        self.assertNotEqual(secret.hex(), v["shared_secret"])

    def test_x25519(self) -> None:
        v = self.vectors["x25519"]
        entropy = G.FixedEntropy(x25519_keys=[h(v["initiator_private"])])
        pending = G.start_share(G.X25519, entropy)
        self.assertEqual(pending.finish(h(v["responder_public"])).hex(), v["shared_secret"])

    def test_rsa_oaep_decryption(self) -> None:
        v = self.vectors["rsa-oaep"]
        key = serialization.load_pem_private_key(v["responder_key_pem"].encode(), None)
        share, secret = G.respond(G.RSA_OAEP, h(v["ciphertext"]), G.Entropy(), key)  # type: ignore[arg-type]
        self.assertEqual(share, b"")
        self.assertEqual(secret.hex(), v["shared_secret"])

    def test_rsa_oaep_failure_is_silent(self) -> None:
        v = self.vectors["rsa-oaep"]
        key = serialization.load_pem_private_key(v["responder_key_pem"].encode(), None)
        bad = bytearray(h(v["ciphertext"]))
        bad[-1] ^= 0xFF
        entropy = G.FixedEntropy(randoms=[b"R" * 32])
        _, secret = G.respond(G.RSA_OAEP, bytes(bad), entropy, key)  # type: ignore[arg-type]
        self.assertEqual(secret, b"R" * 32)

    def test_share_lengths_refused(self) -> None:
        from sixchat.errors import IllegalParameter

        self.assertRaises(IllegalParameter, G.respond, G.X25519, b"\x01" * 31, G.Entropy())
        self.assertRaises(IllegalParameter, G.respond, G.X25519, b"\x00" * 32, G.Entropy())
        self.assertRaises(
            IllegalParameter, G.respond, G.X25519_MLKEM768, b"\x00" * 1215, G.Entropy()
        )
        self.assertRaises(
            IllegalParameter, G.respond, G.X25519_MLKEM768, b"\xff" * 1216, G.Entropy()
        )
        point = G._p256_bytes(G.Entropy().p256())
        compressed = bytes([2 + (point[-1] & 1)]) + point[1:33]
        self.assertRaises(IllegalParameter, G.respond, G.SECP256R1, compressed, G.Entropy())
        off_curve = point[:-1] + bytes([point[-1] ^ 1])
        self.assertRaises(IllegalParameter, G.respond, G.SECP256R1, off_curve, G.Entropy())
        key = serialization.load_pem_private_key(
            self.vectors["rsa-oaep"]["responder_key_pem"].encode(), None
        )
        self.assertRaises(IllegalParameter, G.respond, G.RSA_OAEP, b"\x00" * 255, G.Entropy(), key)
        pending = G.start_share(G.X25519, G.Entropy())
        self.assertRaises(IllegalParameter, pending.finish, b"\x00" * 32)


def _identity(side: dict[str, str]) -> Identity:
    cert = x509.load_pem_x509_certificate(side["cert_pem"].encode())
    key = serialization.load_pem_private_key(side["key_pem"].encode(), None)
    return Identity(key, cert, (), source="vector")  # type: ignore[arg-type]


def _config(vector: dict[str, Any], side: str, **kw: Any) -> PeerConfig:
    s = vector[side]
    anchor = x509.load_pem_x509_certificate(vector["trust_anchor_pem"].encode())
    at = datetime.strptime(vector["validation_time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return PeerConfig(
        [_identity(s)],
        TrustStore([anchor]),
        groups=("x25519",),
        now=lambda: at,
        entropy=G.FixedEntropy([h(s["random"])], [h(s["x25519_private"])]),
        **kw,
    )


class HandshakeVectorTests(unittest.SynchronousTestCase):
    """handshake-ed25519-x25519.json: a whole session, both directions, both roles."""

    vector = load("handshake-ed25519-x25519.json")

    def initiator(self) -> Connection:
        config = _config(self.vector, "initiator", suites=("chacha20-poly1305", "aes-256-gcm"))
        return Connection(config, INITIATOR, to="bob@example.com")

    def responder(self) -> Connection:
        return Connection(_config(self.vector, "responder"), RESPONDER)

    def message(self) -> Message:
        app = self.vector["application"]
        element = parse(app["initiator_sends"].encode())
        return Message.from_element(element)

    def test_produced_byte_for_byte(self) -> None:
        v = self.vector
        alice, bob = self.initiator(), self.responder()
        alice.start()
        i2r = alice.data_to_send()
        events = bob.receive_data(i2r)
        self.assertEqual(events, [])
        r2i = bob.data_to_send()
        alice_events = alice.receive_data(r2i)
        self.assertEqual([type(e) for e in alice_events], [HandshakeComplete])
        tail = alice.data_to_send()
        alice.send(self.message())
        tail += alice.data_to_send()
        i2r += tail
        self.assertEqual(i2r.hex(), v["initiator_to_responder"])
        bob_events = bob.receive_data(tail)
        self.assertEqual([type(e) for e in bob_events], [HandshakeComplete, StanzaReceived])
        bob.send(Receipt(self.message().id))
        r2i += bob.data_to_send()
        self.assertEqual(r2i.hex(), v["responder_to_initiator"])
        for conn in (alice, bob):
            assert conn.result is not None
        assert alice.result is not None and bob.result is not None
        self.assertEqual(alice.result.exporter_secret, bob.result.exporter_secret)
        self.assertEqual(alice.result.peer_name, "bob@example.com")
        self.assertEqual(bob.result.peer_name, "alice@example.com")
        self.assertEqual(alice.handshake.secrets.handshake_secret.hex(), v["handshake_secret"])
        self.assertEqual(alice.handshake.secrets.master_secret.hex(), v["master_secret"])

    def test_messages_match(self) -> None:
        v = self.vector
        alice, bob = self.initiator(), self.responder()
        alice.start()
        bob.receive_data(alice.data_to_send())
        alice.receive_data(bob.data_to_send())
        ours = [v["messages"][f"M{i}"].encode() for i in range(1, 9)]
        self.assertEqual(alice.handshake.transcript.digest(), transcript_hash(ours))

    def test_initiator_accepts_stream(self) -> None:
        """Our initiator, fed the responder's bytes one at a time, accepts and gets the receipt."""
        v = self.vector
        alice = self.initiator()
        alice.start()
        events: list[Any] = []
        for byte in h(v["responder_to_initiator"]):
            events += alice.receive_data(bytes([byte]))
        self.assertEqual([type(e) for e in events], [HandshakeComplete, StanzaReceived])
        self.assertEqual(events[1].stanza, Receipt(self.message().id))
        assert alice.result is not None
        self.assertEqual(alice.result.peer.names, ("bob@example.com",))
        self.assertEqual(alice._read.secret.hex() if alice._read else "", v["r_ap_traffic_0"])
        self.assertEqual(alice._write.secret.hex() if alice._write else "", v["i_ap_traffic_0"])

    def test_responder_accepts_stream(self) -> None:
        v = self.vector
        bob = self.responder()
        events = bob.receive_data(h(v["initiator_to_responder"]))
        self.assertEqual([type(e) for e in events], [HandshakeComplete, StanzaReceived])
        self.assertEqual(events[1].stanza, self.message())
        self.assertEqual(
            bob.data_to_send().hex(), v["responder_to_initiator"][: len(bob_out_hex(v))]
        )


def bob_out_hex(v: dict[str, Any]) -> str:
    """The responder's stream before its receipt (its handshake flight)."""
    stream = h(v["responder_to_initiator"])
    reader = RecordReader()
    reader.feed(stream)
    length = 0
    for _ in range(4):  # M2 + M3 + M4 + M5
        record = reader.next_record(sealed_allowed=True)
        assert record is not None
        length += 4 + len(record[2])
    return stream[:length].hex()


class PaddedAccessDeniedVectorTests(unittest.SynchronousTestCase):
    vector = load("handshake-padded-access-denied.json")

    def pair(self) -> tuple[Connection, Connection]:
        v = self.vector
        carol = Connection(
            _config(v, "initiator", suites=("aes-256-gcm", "chacha20-poly1305"), padding=256),
            INITIATOR,
        )
        bob = Connection(
            _config(
                v, "responder", padding=256, access=AccessPolicy(v["responder"]["allowed_peers"])
            ),
            RESPONDER,
        )
        return carol, bob

    def test_produced_and_accepted(self) -> None:
        v = self.vector
        carol, bob = self.pair()
        carol.start()
        i2r = carol.data_to_send()
        bob.receive_data(i2r)
        r2i = bob.data_to_send()
        carol_events = carol.receive_data(r2i)
        self.assertEqual([type(e) for e in carol_events], [HandshakeComplete])
        flight = carol.data_to_send()
        i2r += flight
        self.assertEqual(i2r.hex(), v["initiator_to_responder"])
        bob_events = bob.receive_data(flight)
        self.assertEqual([type(e) for e in bob_events], [ConnectionFailed])
        self.assertEqual(bob_events[0].error.reason, "access_denied")
        alert = bob.data_to_send()
        self.assertEqual(alert[:1], b"\x02")  # SEALED(r_ap)
        r2i += alert
        self.assertEqual(r2i.hex(), v["responder_to_initiator"])
        events = carol.receive_data(alert)
        self.assertEqual([type(e) for e in events], [AlertReceived])
        self.assertEqual(events[0].alert.reason, "access_denied")
        assert carol.result is not None
        self.assertEqual(carol.result.exporter_secret.hex(), v["exporter_secret"])

    def test_transcript_includes_padding(self) -> None:
        v = self.vector
        messages = [h(v["messages_hex"][f"M{i}"]) for i in range(1, 9)]
        for m in messages[2:]:
            self.assertEqual(len(m) % 256, 0)
        carol, bob = self.pair()
        carol.start()
        bob.receive_data(carol.data_to_send())
        carol.receive_data(bob.data_to_send())
        self.assertEqual(carol.handshake.transcript.digest(), transcript_hash(messages))
        assert carol._write is not None and carol._read is not None
        self.assertEqual(carol._write.secret.hex(), v["i_ap_traffic_0"])
        self.assertEqual(carol._read.secret.hex(), v["r_ap_traffic_0"])

    def test_responder_accepts_stream_and_refuses(self) -> None:
        v = self.vector
        _, bob = self.pair()
        events = bob.receive_data(h(v["initiator_to_responder"]))
        self.assertEqual(
            [e.error.reason for e in events if isinstance(e, ConnectionFailed)], ["access_denied"]
        )
        self.assertEqual(bob.data_to_send().hex(), v["responder_to_initiator"])

    def test_initiator_accepts_stream(self) -> None:
        v = self.vector
        carol, _ = self.pair()
        carol.start()
        events = carol.receive_data(h(v["responder_to_initiator"]))
        self.assertEqual([type(e) for e in events], [HandshakeComplete, AlertReceived])
        self.assertEqual(events[1].alert.reason, "access_denied")
