"""
Tests for L{sixchat.stanzas}: the typed handshake (§7) and application (§8) stanzas.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import (
    AlertError,
    BadCertificate,
    ProtocolError,
    StanzaError,
)
from sixchat.stanzas import (
    APPLICATION_STANZAS,
    HANDSHAKE_TAGS,
    MAX_BODY_CHARS,
    Alert,
    ClientHello,
    Close,
    ErrorStanza,
    Finished,
    IdentityStanza,
    Message,
    Ping,
    Pong,
    Receipt,
    Rekey,
    ServerHello,
    Share,
    Typing,
    Verify,
    format_timestamp,
    is_valid_id,
    parse_timestamp,
)
from sixchat.xmlcodec import Element, b64encode, is_xml_text, parse, serialize

VECTORS = Path(__file__).parent / "vectors"
HANDSHAKE = json.loads((VECTORS / "handshake-ed25519-x25519.json").read_text())

HYPOTHESIS = settings(max_examples=100, deadline=None)

TS = "2026-11-26T00:25:21.123Z"


def wire(stanza) -> object:  # type: ignore[no-untyped-def]
    """to_element -> serialize -> parse -> from_element."""
    return type(stanza).from_element(parse(serialize(stanza.to_element())))


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def _records(stream: bytes) -> list[tuple[int, bytes]]:
    out = []
    while stream:
        length = int.from_bytes(stream[1:4], "big")
        out.append((stream[0], stream[4 : 4 + length]))
        stream = stream[4 + length :]
    return out


class RoundTripTests(SynchronousTestCase):
    """Every stanza survives to_element -> serialize -> parse -> from_element unchanged."""

    def assertRoundTrip(self, stanza: object) -> None:
        self.assertEqual(wire(stanza), stanza)

    def test_client_hello(self) -> None:
        self.assertRoundTrip(
            ClientHello(
                ["1", "2"],
                bytes(range(32)),
                ["chacha20-poly1305", "aes-256-gcm"],
                [Share("x25519-mlkem768", b64encode(b"\x01" * 1216)),
                 Share("x25519", b64encode(b"\x02" * 32)),
                 Share("rsa-oaep", b64encode(b"\x03" * 256), b64encode(b"\x04" * 32))],
                "bob@example.com",
            )
        )
        self.assertRoundTrip(ClientHello(["1"], b"\xff" * 32, [], [], None))

    def test_server_hello(self) -> None:
        self.assertRoundTrip(
            ServerHello("1", b"\x00" * 32, "aes-128-gcm", [Share("x25519", b64encode(b"k" * 32))])
        )
        self.assertRoundTrip(ServerHello("1", b"\x00" * 32, "aes-128-gcm", [Share("rsa-oaep", "")]))

    def test_identity(self) -> None:
        self.assertRoundTrip(IdentityStanza("bob@example.com", [b"leaf", b"intermediate"]))
        self.assertRoundTrip(IdentityStanza("a@b", [b"\x30" * n for n in range(1, 9)]))

    def test_verify(self) -> None:
        self.assertRoundTrip(Verify("ecdsa-secp256r1-sha256", b"\x30\x45" + b"\x01" * 69))

    def test_finished(self) -> None:
        self.assertRoundTrip(Finished(bytes(range(32))))

    def test_alert(self) -> None:
        self.assertRoundTrip(Alert("unknown_ca"))
        self.assertRoundTrip(Alert("no_common_suite", "none", {"suites": "aes-256-gcm x"}))
        self.assertRoundTrip(Alert("protocol_error", "line\r\nbreak & <tag>"))

    def test_message(self) -> None:
        self.assertRoundTrip(Message("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", TS, "Hello, Bob"))
        self.assertRoundTrip(Message("a", "2026-01-01T00:00:00Z", "", "thread-1", "b_2"))
        self.assertRoundTrip(Message("x" * 64, TS, "a\r\nb\tc ]]> & <", None, "r"))

    def test_receipt_ping_pong(self) -> None:
        for cls in (Receipt, Ping, Pong):
            self.assertRoundTrip(cls("id-1_Z"))

    def test_typing(self) -> None:
        self.assertRoundTrip(Typing("composing"))
        self.assertRoundTrip(Typing("paused"))

    def test_rekey_close(self) -> None:
        self.assertRoundTrip(Rekey())
        self.assertRoundTrip(Close())
        self.assertEqual(serialize(Rekey().to_element()), b"<rekey/>")
        self.assertEqual(serialize(Close().to_element()), b"<close/>")

    def test_error(self) -> None:
        self.assertRoundTrip(ErrorStanza("too_large", "m1", "too long"))
        self.assertRoundTrip(ErrorStanza("unsupported"))
        self.assertRoundTrip(ErrorStanza("bad_request", None, "no id"))

    def test_registry(self) -> None:
        self.assertEqual(
            set(APPLICATION_STANZAS),
            {"message", "receipt", "ping", "pong", "typing", "rekey", "close", "error"},
        )
        for tag, cls in APPLICATION_STANZAS.items():
            self.assertNotIn(tag, HANDSHAKE_TAGS)
            self.assertTrue(hasattr(cls, "from_element"))
        self.assertEqual(HANDSHAKE_TAGS, {"hello", "identity", "verify", "finished"})


class ExactBytesTests(SynchronousTestCase):
    """The stanzas of the handshake vector, rebuilt from their values, give its exact bytes."""

    messages = HANDSHAKE["messages"]

    def test_m1(self) -> None:
        m1 = ClientHello(
            ["1"],
            bytes.fromhex(HANDSHAKE["initiator"]["random"]),
            ["chacha20-poly1305", "aes-256-gcm"],
            [Share("x25519", "GfnosSik07zbQK9/n1uFXYktTAkEHvhixgkNrOCysTo=")],
            "bob@example.com",
        )
        self.assertEqual(serialize(m1.to_element()), self.messages["M1"].encode())
        self.assertEqual(ClientHello.from_element(parse(self.messages["M1"].encode())), m1)

    def test_m1_share_is_initiator_public_key(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import x25519

        private = x25519.X25519PrivateKey.from_private_bytes(
            bytes.fromhex(HANDSHAKE["initiator"]["x25519_private"])
        )
        m1 = ClientHello.from_element(parse(self.messages["M1"].encode()))
        self.assertEqual(m1.shares[0].value(), private.public_key().public_bytes_raw())

    def test_m2(self) -> None:
        m2 = ServerHello(
            "1",
            bytes.fromhex(HANDSHAKE["responder"]["random"]),
            "chacha20-poly1305",
            [Share("x25519", "AlpSvZXkuvxGBvA37hX5QeChE+Yf/uOsyBoIu7paRg8=")],
        )
        self.assertEqual(serialize(m2.to_element()), self.messages["M2"].encode())
        self.assertEqual(ServerHello.from_element(parse(self.messages["M2"].encode())), m2)

    def test_m1_m2_are_the_plain_records(self) -> None:
        first = _records(bytes.fromhex(HANDSHAKE["initiator_to_responder"]))[0]
        self.assertEqual(first, (1, self.messages["M1"].encode()))
        first = _records(bytes.fromhex(HANDSHAKE["responder_to_initiator"]))[0]
        self.assertEqual(first, (1, self.messages["M2"].encode()))

    def test_identities(self) -> None:
        for message, side in (("M3", "responder"), ("M6", "initiator")):
            stanza = IdentityStanza(
                HANDSHAKE[side]["identity"], [_der(HANDSHAKE[side]["cert_pem"])]
            )
            self.assertEqual(serialize(stanza.to_element()), self.messages[message].encode())
            parsed = IdentityStanza.from_element(parse(self.messages[message].encode()))
            self.assertEqual(parsed, stanza)

    def test_verify_and_finished(self) -> None:
        for name in ("M4", "M7"):
            parsed = Verify.from_element(parse(self.messages[name].encode()))
            self.assertEqual(parsed.alg, "ed25519")
            self.assertEqual(len(parsed.signature), 64)
            self.assertEqual(serialize(parsed.to_element()), self.messages[name].encode())
        for name in ("M5", "M8"):
            parsed = Finished.from_element(parse(self.messages[name].encode()))
            self.assertEqual(len(parsed.verify_data), 32)
            self.assertEqual(serialize(parsed.to_element()), self.messages[name].encode())

    def test_application(self) -> None:
        app = HANDSHAKE["application"]
        message = Message("01JD3Q2V9XJ2H6Z7T8K4M5N6P7", TS, "Hello, Bob")
        self.assertEqual(serialize(message.to_element()), app["initiator_sends"].encode())
        receipt = Receipt("01JD3Q2V9XJ2H6Z7T8K4M5N6P7")
        self.assertEqual(serialize(receipt.to_element()), app["responder_sends"].encode())

    def test_error_attribute_order(self) -> None:
        self.assertEqual(
            serialize(ErrorStanza("too_large", "m1", "x").to_element()),
            b'<error ref="m1" reason="too_large">x</error>',
        )
        self.assertEqual(
            serialize(ErrorStanza("unsupported").to_element()), b'<error reason="unsupported"/>'
        )

    def test_alert_bytes(self) -> None:
        self.assertEqual(
            serialize(Alert("no_common_group", "", {"groups": "x25519 secp256r1"}).to_element()),
            b'<alert reason="no_common_group" groups="x25519 secp256r1"/>',
        )
        records = json.loads((VECTORS / "records.json").read_text())
        self.assertEqual(
            serialize(Alert("protocol_error").to_element()),
            bytes.fromhex(records["plain_example"]["payload"]),
        )


class HandshakeParsingTests(SynchronousTestCase):
    def hello(self, data: bytes) -> ClientHello:
        return ClientHello.from_element(parse(data))

    def test_hello_without_random(self) -> None:
        self.assertRaises(ProtocolError, self.hello, b'<hello versions="1"/>')

    def test_hello_without_versions(self) -> None:
        self.assertRaises(ProtocolError, self.hello, b'<hello random="AA=="/>')

    def test_hello_random_invalid_base64(self) -> None:
        for random in ("AA", "A A=", "-_==", "!!!!", "AA==\n"):
            data = b'<hello versions="1" random="' + random.encode() + b'"/>'
            self.assertRaises(ProtocolError, self.hello, data)

    def test_hello_random_wrong_length_parses(self) -> None:
        """Length is a parameter check of the handshake (illegal_parameter), not parsing."""
        self.assertEqual(self.hello(b'<hello versions="1" random="AA=="/>').random, b"\x00")

    def test_hello_wrong_element(self) -> None:
        for cls in (ClientHello, ServerHello):
            self.assertRaises(ProtocolError, cls.from_element, parse(b'<message id="a"/>'))

    def test_share_without_group(self) -> None:
        data = b'<hello versions="1" random="AA=="><share>AA==</share></hello>'
        self.assertRaises(ProtocolError, self.hello, data)
        data = b'<hello version="1" random="AA==" suite="s"><share>AA==</share></hello>'
        self.assertRaises(ProtocolError, ServerHello.from_element, parse(data))

    def test_hello_fields(self) -> None:
        hello = self.hello(
            b'<hello versions="2 1" random="AAAA" to="bob@example.com" new="x">'
            b"<suite>aes-256-gcm</suite><unknown/><suite> aes-128-gcm</suite>"
            b'<share group="x25519" key="k">QUJD</share><share group="g2"><!--c-->AA==</share>'
            b"</hello>"
        )
        self.assertEqual(hello.versions, ["2", "1"])
        self.assertEqual(hello.random, b"\x00\x00\x00")
        self.assertEqual(hello.to, "bob@example.com")
        # Tokens compare exactly, without trimming (§3).
        self.assertEqual(hello.suites, ["aes-256-gcm", " aes-128-gcm"])
        self.assertEqual(hello.shares, [Share("x25519", "QUJD", "k"), Share("g2", "AA==")])

    def test_share_value(self) -> None:
        self.assertEqual(Share("x25519", "QUJD").value(), b"ABC")
        # §3: invalid base64 in the handshake is a protocol_error, the chosen share included.
        error = self.assertRaises(ProtocolError, Share("x25519", "QUJ").value)
        self.assertIsInstance(error, AlertError)

    def test_share_not_decoded_while_parsing(self) -> None:
        """§11.3: shares not chosen are not decoded, so bad base64 in one is no parse error."""
        hello = self.hello(
            b'<hello versions="1" random="AA=="><share group="x">not base64</share></hello>'
        )
        self.assertEqual(hello.shares[0].text, "not base64")

    def test_server_hello_missing(self) -> None:
        for data in (
            b'<hello random="AA==" suite="s"/>',
            b'<hello version="1" suite="s"/>',
            b'<hello version="1" random="AA=="/>',
        ):
            self.assertRaises(ProtocolError, ServerHello.from_element, parse(data))
        self.assertRaises(
            ProtocolError,
            ServerHello.from_element,
            parse(b'<hello version="1" random="A" suite="s"/>'),
        )

    def test_identity_without_cert(self) -> None:
        error = self.assertRaises(
            BadCertificate, IdentityStanza.from_element, parse(b'<identity name="a@b"/>')
        )
        self.assertEqual(error.reason, "bad_certificate")

    def test_identity_nine_certs(self) -> None:
        certs = b"<cert>AA==</cert>" * 9
        data = b'<identity name="a@b">' + certs + b"</identity>"
        self.assertRaises(BadCertificate, IdentityStanza.from_element, parse(data))

    def test_identity_eight_certs(self) -> None:
        certs = b"<cert>AA==</cert>" * 8
        data = b'<identity name="a@b">' + certs + b"</identity>"
        self.assertEqual(IdentityStanza.from_element(parse(data)).certs, [b"\x00"] * 8)

    def test_identity_without_name(self) -> None:
        data = b"<identity><cert>AA==</cert></identity>"
        self.assertRaises(ProtocolError, IdentityStanza.from_element, parse(data))

    def test_identity_cert_invalid_base64(self) -> None:
        data = b'<identity name="a@b"><cert>AA= =</cert></identity>'
        self.assertRaises(ProtocolError, IdentityStanza.from_element, parse(data))

    def test_identity_wrong_element(self) -> None:
        self.assertRaises(ProtocolError, IdentityStanza.from_element, parse(b"<verify/>"))

    def test_verify_without_alg(self) -> None:
        self.assertRaises(ProtocolError, Verify.from_element, parse(b"<verify>AA==</verify>"))

    def test_verify_invalid_base64(self) -> None:
        data = b'<verify alg="ed25519">AA</verify>'
        self.assertRaises(ProtocolError, Verify.from_element, parse(data))

    def test_verify_wrong_element(self) -> None:
        self.assertRaises(
            ProtocolError, Verify.from_element, parse(b'<finished alg="ed25519">AA==</finished>')
        )

    def test_finished_wrong_element(self) -> None:
        self.assertRaises(ProtocolError, Finished.from_element, parse(b"<verify>AA==</verify>"))

    def test_finished_invalid_base64(self) -> None:
        self.assertRaises(
            ProtocolError, Finished.from_element, parse(b"<finished>AA AA</finished>")
        )

    def test_finished_cdata_and_comment(self) -> None:
        """§11.10: base64 is read from the character data, comments removed, CDATA unwrapped."""
        data = b"<finished><![CDATA[QU]]><!-- x -->JD</finished>"
        self.assertEqual(Finished.from_element(parse(data)).verify_data, b"ABC")

    def test_alert_without_reason(self) -> None:
        self.assertRaises(ProtocolError, Alert.from_element, parse(b"<alert>text</alert>"))

    def test_alert_extra(self) -> None:
        alert = Alert.from_element(parse(b'<alert reason="unsupported_version" versions="1"/>'))
        self.assertEqual(alert, Alert("unsupported_version", "", {"versions": "1"}))


class IdTests(SynchronousTestCase):
    INVALID = ["", "x" * 65, "a b", "é", "a.b", "a/b", "a\n", " a", "a+b"]

    def test_is_valid_id(self) -> None:
        for value in ("a", "x" * 64, "AZaz09_-", "01JD3Q2V9XJ2H6Z7T8K4M5N6P7", "-", "_"):
            self.assertTrue(is_valid_id(value), value)
        for value in self.INVALID + ["\u0661", "ａ"]:
            self.assertFalse(is_valid_id(value), value)
        self.assertFalse(is_valid_id(None))

    def assertBadRequest(self, cls: type, element: Element, ref: str | None = None) -> StanzaError:
        error = self.assertRaises(StanzaError, cls.from_element, element)  # type: ignore[attr-defined]
        self.assertEqual(error.reason, "bad_request")
        self.assertEqual(error.ref, ref)
        self.assertNotIsInstance(error, AlertError)
        return error

    def test_missing_id(self) -> None:
        for cls, tag in ((Message, "message"), (Receipt, "receipt"), (Ping, "ping"),
                         (Pong, "pong")):
            self.assertBadRequest(cls, Element(tag, {"ts": TS}, [Element("body", text="x")]))

    def test_invalid_id(self) -> None:
        for value in self.INVALID:
            for cls, tag in ((Message, "message"), (Receipt, "receipt"), (Ping, "ping"),
                             (Pong, "pong")):
                element = Element(tag, {"id": value, "ts": TS}, [Element("body", text="x")])
                self.assertBadRequest(cls, element)

    def test_invalid_id_over_the_wire(self) -> None:
        self.assertBadRequest(Ping, parse('<ping id="é"/>'.encode()))
        self.assertBadRequest(Receipt, parse(b'<receipt id="a&#10;"/>'))


class MessageTests(SynchronousTestCase):
    def message(self, ts: str | None = TS, body: str | None = "hi", **extra: str) -> Element:
        attrs = {"id": "m1"}
        if ts is not None:
            attrs["ts"] = ts
        attrs.update(extra)
        children = [] if body is None else [Element("body", text=body)]
        return Element("message", attrs, children)

    def assertStanzaError(self, element: Element, reason: str) -> StanzaError:
        error = self.assertRaises(StanzaError, Message.from_element, element)
        self.assertEqual(error.reason, reason)
        self.assertEqual(error.ref, "m1")
        return error

    def test_valid(self) -> None:
        message = Message.from_element(self.message())
        self.assertEqual(message, Message("m1", TS, "hi"))

    def test_missing_ts(self) -> None:
        self.assertStanzaError(self.message(ts=None), "bad_request")

    def test_invalid_ts(self) -> None:
        for ts in [
            "",
            "2026-11-26t00:25:21Z",
            "2026-11-26T00:25:21z",
            "2026-11-26T00:25:21",
            "2026-11-26T00:25:21.123",
            "2026-11-26T00:25:21+00:00",
            "2026-11-26T00:25:21.123+00:00",
            "2026-11-26T00:25:21-05:00",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T23:60:00Z",
            "2026-11-26T23:59:61Z",
            "2026-11-26T00:25:21.1234567890Z",
            "2026-11-26T00:25:21.Z",
            "2026-11-26 00:25:21Z",
            "2026-11-26_00:25:21Z",
            "26-11-26T00:25:21Z",
            "+2026-11-26T00:25:21Z",
            "2026-1-26T00:25:21Z",
            "2026-11-26T0:25:21Z",
            " 2026-11-26T00:25:21Z",
            "2026-11-26T00:25:21Z ",
            "2026-11-26T00:25:21ZZ",
            "2026-11-26T00:25:21,123Z",
            "\u0662026-11-26T00:25:21Z",
            "2026-11-26",
            "0000-01-01T00:00:00Z",
        ]:
            self.assertStanzaError(self.message(ts=ts), "bad_request")

    def test_valid_ts(self) -> None:
        for ts in [
            "2026-11-26T00:25:21Z",
            "2026-11-26T00:25:21.1Z",
            "2026-11-26T00:25:21.12Z",
            "2026-11-26T00:25:21.123Z",
            "2026-11-26T00:25:21.1234Z",
            "2026-11-26T00:25:21.12345Z",
            "2026-11-26T00:25:21.123456Z",
            "2026-11-26T00:25:21.1234567Z",
            "2026-11-26T00:25:21.12345678Z",
            "2026-11-26T00:25:21.123456789Z",
            "2016-12-31T23:59:60Z",
            "2026-11-26T12:00:60.5Z",
            "2024-02-29T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ]:
            self.assertEqual(Message.from_element(self.message(ts=ts)).ts, ts)

    def test_parse_timestamp(self) -> None:
        self.assertEqual(
            parse_timestamp("2026-11-26T00:25:21.123456789Z"),
            datetime(2026, 11, 26, 0, 25, 21, 123456, tzinfo=UTC),
        )
        self.assertEqual(
            parse_timestamp("2026-11-26T00:25:21.5Z"),
            datetime(2026, 11, 26, 0, 25, 21, 500000, tzinfo=UTC),
        )
        # A leap second reads as second 59.
        self.assertEqual(
            parse_timestamp("2016-12-31T23:59:60Z"), datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)
        )
        self.assertRaises(ValueError, parse_timestamp, "2026-02-30T00:00:00Z")

    def test_body_limit(self) -> None:
        body = "a" * MAX_BODY_CHARS
        self.assertEqual(Message.from_element(self.message(body=body)).body, body)
        error = self.assertStanzaError(self.message(body=body + "a"), "too_large")
        self.assertNotIsInstance(error, AlertError)

    def test_body_limit_counts_scalar_values(self) -> None:
        """A non-BMP character is one scalar value (4 UTF-8 bytes, 2 UTF-16 units)."""
        body = "\U0001f600" * MAX_BODY_CHARS
        element = parse(serialize(self.message(body=body)))
        self.assertEqual(Message.from_element(element).body, body)
        element = parse(serialize(self.message(body=body + "\U0001f600")))
        self.assertStanzaError(element, "too_large")
        body = "é" * (MAX_BODY_CHARS - 1) + "\U0001f600"
        self.assertEqual(Message.from_element(self.message(body=body)).body, body)

    def test_body_limit_after_escapes(self) -> None:
        """The limit counts the body's characters, not its escaped serialisation."""
        body = "&\r" * (MAX_BODY_CHARS // 2)
        element = parse(serialize(self.message(body=body)))
        self.assertEqual(Message.from_element(element).body, body)

    def test_missing_body(self) -> None:
        self.assertStanzaError(self.message(body=None), "bad_request")

    def test_two_bodies(self) -> None:
        element = parse(b'<message id="m1" ts="2026-11-26T00:25:21Z"><body>a</body><body>b</body>'
                        b"</message>")
        self.assertStanzaError(element, "bad_request")

    def test_body_with_child(self) -> None:
        element = parse(b'<message id="m1" ts="2026-11-26T00:25:21Z"><body>a<b>x</b></body>'
                        b"</message>")
        self.assertStanzaError(element, "bad_request")

    def test_body_cdata_and_comments(self) -> None:
        element = parse(
            b'<message id="m1" ts="2026-11-26T00:25:21Z"><body>a<![CDATA[<&>]]><!--x-->b</body>'
            b"</message>"
        )
        self.assertEqual(Message.from_element(element).body, "a<&>b")

    def test_unknown_attributes_and_children_ignored(self) -> None:
        element = parse(
            b'<message id="m1" ts="2026-11-26T00:25:21Z" future="x"><subject>s</subject>'
            b'<body>hi</body><thread>t1</thread><reply to="m0"/><extra><body>no</body></extra>'
            b"</message>"
        )
        self.assertEqual(
            Message.from_element(element), Message("m1", "2026-11-26T00:25:21Z", "hi", "t1", "m0")
        )

    def test_check_order_id_first(self) -> None:
        """Without a valid id nothing else is checked, and the error has no ref."""
        element = Element("message", {"id": "bad id"})
        error = self.assertRaises(StanzaError, Message.from_element, element)
        self.assertEqual((error.reason, error.ref), ("bad_request", None))


class OtherApplicationTests(SynchronousTestCase):
    def test_error_unknown_reason(self) -> None:
        for reason in ("internal", "", "Too_Large", "too_large "):
            element = Element("error", {"ref": "m1", "reason": reason})
            self.assertEqual(ErrorStanza.from_element(element).reason, "bad_request")

    def test_error_missing_reason(self) -> None:
        self.assertEqual(ErrorStanza.from_element(Element("error")).reason, "bad_request")

    def test_error_known_reasons(self) -> None:
        for reason in ("too_large", "bad_request", "unsupported"):
            stanza = ErrorStanza.from_element(Element("error", {"reason": reason}, text="t"))
            self.assertEqual(stanza, ErrorStanza(reason, None, "t"))

    def test_error_invalid_ref(self) -> None:
        """§11.1: an invalid ref reads as none, and no StanzaError is raised."""
        for ref in ("", "x" * 65, "a b", "é"):
            stanza = ErrorStanza.from_element(Element("error", {"ref": ref, "reason": "too_large"}))
            self.assertEqual(stanza, ErrorStanza("too_large", None))
        self.assertEqual(
            ErrorStanza.from_element(Element("error", {"ref": "x" * 64})).ref, "x" * 64
        )

    def test_typing_state(self) -> None:
        for state in ("composing", "paused"):
            self.assertEqual(Typing.from_element(Element("typing", {"state": state})).state, state)
        for attrs in ({"state": "active"}, {"state": "Composing"}, {"state": ""},
                      {"state": " paused"}, {}):
            error = self.assertRaises(StanzaError, Typing.from_element, Element("typing", attrs))
            self.assertEqual(error.reason, "bad_request")

    def test_rekey_close_ignore_content(self) -> None:
        self.assertEqual(Rekey.from_element(parse(b'<rekey x="1"><y/></rekey>')), Rekey())
        self.assertEqual(Close.from_element(parse(b"<close>bye</close>")), Close())

    def test_stanza_error_reason_normalised(self) -> None:
        self.assertEqual(StanzaError("whatever").reason, "bad_request")
        self.assertEqual(StanzaError("too_large", ref="a").ref, "a")


class FormatTimestampTests(SynchronousTestCase):
    def test_milliseconds(self) -> None:
        when = datetime(2026, 11, 26, 0, 25, 21, 123999, tzinfo=UTC)
        self.assertEqual(format_timestamp(when), "2026-11-26T00:25:21.123Z")

    def test_zero_milliseconds(self) -> None:
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        self.assertEqual(format_timestamp(when), "2026-01-02T03:04:05.000Z")

    def test_converts_to_utc(self) -> None:
        when = datetime(2026, 11, 26, 1, 25, 21, 5000, tzinfo=timezone(timedelta(hours=1)))
        self.assertEqual(format_timestamp(when), "2026-11-26T00:25:21.005Z")
        when = datetime(2026, 12, 31, 20, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
        self.assertEqual(format_timestamp(when), "2027-01-01T01:00:00.000Z")

    @HYPOTHESIS
    @given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                        timezones=st.just(UTC)))
    def test_round_trip(self, when: datetime) -> None:
        text = format_timestamp(when)
        self.assertRegex(text, r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
        self.assertEqual(
            parse_timestamp(text), when.replace(microsecond=when.microsecond // 1000 * 1000)
        )


# ---------------------------------------------------------------------------------------------

_XML_CHAR = st.characters().filter(is_xml_text)
_FRAGMENTS = st.one_of(
    st.sampled_from(["\r", "\t", "\n", "\r\n", "]]>", "&", "<", ">", '"', "'", " ", "&amp;"]),
    st.text(_XML_CHAR, max_size=5),
)
_BODIES = st.lists(_FRAGMENTS, max_size=60).map("".join).map(lambda s: s[:200])
_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
_TIMESTAMPS = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)
).map(format_timestamp)


class MessagePropertyTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(
        _IDS,
        _TIMESTAMPS,
        _BODIES,
        st.none() | st.text(_XML_CHAR, max_size=20),
        st.none() | _IDS,
    )
    def test_round_trip(
        self, sid: str, ts: str, body: str, thread: str | None, reply_to: str | None
    ) -> None:
        message = Message(sid, ts, body, thread, reply_to)
        self.assertLessEqual(len(body), 200)
        data = serialize(message.to_element())
        self.assertNotIn(b"\r", data)  # CR always travels as &#13;
        self.assertEqual(Message.from_element(parse(data)), message)

    @HYPOTHESIS
    @given(_IDS)
    def test_id_stanzas(self, sid: str) -> None:
        for cls in (Receipt, Ping, Pong):
            self.assertEqual(wire(cls(sid)), cls(sid))
