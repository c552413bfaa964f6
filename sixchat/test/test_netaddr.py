"""sixchat.netaddr: host:port text and client endpoints, the one definition of each."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from sixchat.netaddr import (
    client_endpoint,
    encode_hostname,
    format_hostport,
    is_ip_literal,
    parse_hostport,
)

ports = st.integers(min_value=1, max_value=65535)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
)


class ParseTests(unittest.TestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_hostport("example.net", 4604), ("example.net", 4604))
        self.assertEqual(parse_hostport("example.net:99", 4604), ("example.net", 99))
        self.assertEqual(parse_hostport(" 192.0.2.1:4605 ", 1), ("192.0.2.1", 4605))
        self.assertEqual(parse_hostport("[2001:db8::1]", 4605), ("2001:db8::1", 4605))
        self.assertEqual(parse_hostport("[2001:db8::1]:7", 4605), ("2001:db8::1", 7))
        self.assertEqual(parse_hostport("2001:db8::1", 4605), ("2001:db8::1", 4605))

    def test_errors(self) -> None:
        for text, why in [
            ("", "empty address"),
            ("   ", "empty address"),
            (":4605", "missing host"),
            ("[]:4605", "unclosed"),
            ("[2001:db8::1", "unclosed"),
            ("[::1]x", "expected ':PORT'"),
            ("host:0", "invalid port"),
            ("host:65536", "invalid port"),
            ("host:00004605", "invalid port"),
            ("host:http", "invalid port"),
            ("[::1]:", "invalid port"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_hostport(text, 4605)
            self.assertIn(why, str(caught.exception), text)

    @given(hosts, ports)
    def test_format_then_parse(self, host: str, port: int) -> None:
        self.assertEqual(parse_hostport(format_hostport(host, port), 1), (host, port))

    def test_format(self) -> None:
        self.assertEqual(format_hostport("2001:db8::1", 4605), "[2001:db8::1]:4605")
        self.assertEqual(format_hostport("192.0.2.1", 4605), "192.0.2.1:4605")
        self.assertEqual(format_hostport(None, None), "None:None")  # unknown peer, logged as is


class EndpointTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_literals_connect_directly(self) -> None:
        v6 = client_endpoint(self.reactor, "2001:db8::1", 4605, 5)
        v4 = client_endpoint(self.reactor, "192.0.2.1", 4605, 5)
        self.assertIsInstance(v6, endpoints.TCP6ClientEndpoint)
        self.assertIsInstance(v4, endpoints.TCP4ClientEndpoint)
        v4.connect(endpoints.Factory())  # type: ignore[arg-type]
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("192.0.2.1", 4605, 5))

    def test_names_are_idna_encoded(self) -> None:
        endpoint = client_endpoint(self.reactor, "bücher.example", 4604, 5)
        self.assertIsInstance(endpoint, endpoints.HostnameEndpoint)
        self.assertEqual(endpoint._hostBytes, b"xn--bcher-kva.example")  # type: ignore[attr-defined]
        self.assertEqual(encode_hostname("Example.NET"), b"example.net")

    def test_bad_names_are_one_line_errors(self) -> None:
        for bad in ["a..b", "-leading.example", "x" * 64 + ".example"]:
            with self.assertRaises(ValueError, msg=bad) as caught:
                client_endpoint(self.reactor, bad, 4604, 5)
            self.assertIn("invalid host name", str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    @given(st.ip_addresses())
    def test_is_ip_literal(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.assertTrue(is_ip_literal(str(ip)))
        self.assertFalse(is_ip_literal(f"host-{ip.version}.example"))
