"""
Tests for L{sixchat.trust.der}: the issuer field finder and the policyMappings parser
(property tests: what an encoder writes comes back, and any bytes give pairs or ValueError).
"""

from __future__ import annotations

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.test import certs
from sixchat.trust.der import issuer_field, policy_mappings


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return b"\x06" + _len(len(body)) + bytes(body)


def encode_mappings(pairs: list[tuple[str, str]]) -> bytes:
    inner = b"".join(
        b"\x30" + _len(len(_oid(a) + _oid(b))) + _oid(a) + _oid(b) for a, b in pairs
    )
    return b"\x30" + _len(len(inner)) + inner


oids = st.builds(
    lambda first, second, rest: ".".join(map(str, [first, second, *rest])),
    st.integers(0, 2),
    st.integers(0, 39),
    st.lists(st.integers(0, 2**40), max_size=6),
)


class PolicyMappingsTests(SynchronousTestCase):
    def test_pkits_style_mapping(self):
        pairs = [("2.16.840.1.101.3.2.1.48.1", "2.16.840.1.101.3.2.1.48.2")]
        self.assertEqual(policy_mappings(encode_mappings(pairs)), pairs)

    @given(st.lists(st.tuples(oids, oids), max_size=5))
    def test_round_trip(self, pairs):
        self.assertEqual(policy_mappings(encode_mappings(pairs)), pairs)
        # and cryptography reads the same OIDs
        for a, b in pairs:
            x509.ObjectIdentifier(a), x509.ObjectIdentifier(b)

    @given(st.binary(max_size=64))
    def test_any_bytes_pairs_or_value_error(self, data):
        try:
            pairs = policy_mappings(data)
        except ValueError:
            return
        for a, b in pairs:
            self.assertRegex(a, r"\A\d+(\.\d+)+\Z")
            self.assertRegex(b, r"\A\d+(\.\d+)+\Z")

    def test_malformed(self):
        good = encode_mappings([("1.2.3", "1.2.4")])
        for bad in (b"", good[:-1], good + b"\x00", b"\x31" + good[1:],
                    encode_mappings([("1.2.3", "1.2.4")]).replace(b"\x06", b"\x04", 1)):
            self.assertRaises(ValueError, policy_mappings, bad)  # fmt: skip


class IssuerFieldTests(SynchronousTestCase):
    def test_issuer_field(self):
        ca = certs.make_ca()
        alice = certs.make_identity("alice@example.com", ca)
        self.assertEqual(issuer_field(alice.chain_der[0]), alice.leaf.issuer.public_bytes())
        self.assertIsNone(issuer_field(b"\x30\x03\x02\x01"))
