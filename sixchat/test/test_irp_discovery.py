"""Registry discovery (irp-1 §1, §7.9) with a fake resolver: no real DNS."""

from __future__ import annotations

import collections
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.trial import unittest

from sixchat.irp.discovery import (
    RegistryNotFound,
    RegistryTarget,
    SRVEntry,
    findRegistry,
    order_srv,
    parse_registry_address,
    parse_registry_list,
)
from sixchat.netaddr import format_hostport


class FakeResolver:
    def __init__(self, answers: list[Any] | None = None, fail: Exception | None = None) -> None:
        self.answers = answers or []
        self.fail = fail
        self.queries: list[str] = []

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.queries.append(name)
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.succeed((self.answers, [], []))


def srv(
    priority: int, weight: int, port: int, target: str, name: str = "_irp._tcp.example.com"
) -> Any:
    return dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(priority, weight, port, target))


class FixedDraws:
    """randint that returns queued values (clamped to the allowed range)."""

    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)
        self.calls: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return min(max(self.draws.pop(0), a), b) if self.draws else a


class ParseTests(unittest.SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_registry_address("reg.example.com"), ("reg.example.com", 4604))
        self.assertEqual(parse_registry_address("reg.example.com:5000"), ("reg.example.com", 5000))
        self.assertEqual(parse_registry_address("192.0.2.1:4604"), ("192.0.2.1", 4604))
        self.assertEqual(parse_registry_address("[2001:db8::1]:99"), ("2001:db8::1", 99))
        self.assertEqual(parse_registry_address("[2001:db8::1]"), ("2001:db8::1", 4604))
        self.assertEqual(parse_registry_address("2001:db8::1"), ("2001:db8::1", 4604))

    def test_errors(self) -> None:
        for bad in (
            "",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[::1]x",
            ":4604",
            "[]:1",
            "host:123456",
        ):
            self.assertRaises(ValueError, parse_registry_address, bad)


class ParseListTests(unittest.SynchronousTestCase):
    """Several registries (on one database): a comma list, in order, duplicates dropped."""

    def test_forms(self) -> None:
        self.assertEqual(parse_registry_list("reg.example.com"), [("reg.example.com", 4604)])
        self.assertEqual(
            parse_registry_list("a.example:5000, [2001:db8::1]:99 ,192.0.2.1,a.example:5000"),
            [("a.example", 5000), ("2001:db8::1", 99), ("192.0.2.1", 4604)],
        )
        self.assertEqual(parse_registry_list("2001:db8::1,b"), [("2001:db8::1", 4604), ("b", 4604)])

    def test_errors_name_the_entry(self) -> None:
        for bad, fragment in (
            ("a,,b", "empty entry"),
            ("a,", "empty entry"),
            (",a", "empty entry"),
            ("", "empty entry"),
            ("auto,a.example", "'auto'"),
            ("a.example,auto", "'auto'"),
            ("a.example,b.example:0", "b.example:0"),
            ("a.example,[::1", "[::1"),
        ):
            with self.assertRaises(ValueError) as caught:
                parse_registry_list(bad)
            self.assertIn(fragment, str(caught.exception), bad)

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.tuples(
                st.one_of(
                    st.builds(
                        lambda first, rest: first + rest,
                        st.sampled_from("abcxyz"),
                        st.text("abz09-.", max_size=10),
                    ),
                    st.ip_addresses().map(str),
                ),
                st.integers(1, 65535),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def test_round_trip(self, entries: list[tuple[str, int]]) -> None:
        text = ",".join(format_hostport(h, p) for h, p in entries)
        unique = list(dict.fromkeys(entries))
        self.assertEqual(parse_registry_list(text), unique)


class OrderTests(unittest.SynchronousTestCase):
    def test_priority_first(self) -> None:
        entries = [
            SRVEntry(20, 0, 1, "c"),
            SRVEntry(10, 5, 1, "a"),
            SRVEntry(30, 100, 1, "d"),
            SRVEntry(10, 5, 1, "b"),
        ]
        ordered = order_srv(entries, random.Random(1))
        self.assertEqual([e.target for e in ordered][2:], ["c", "d"])
        self.assertEqual({e.target for e in ordered[:2]}, {"a", "b"})

    def test_weighted_selection_follows_rfc2782(self) -> None:
        entries = [
            SRVEntry(0, 0, 1, "zero"),
            SRVEntry(0, 10, 1, "ten"),
            SRVEntry(0, 30, 1, "thirty"),
        ]
        # draw 0 picks the weight-0 entry (it comes first in the running sum)
        self.assertEqual(order_srv(entries, FixedDraws(0, 0))[0].target, "zero")
        # running sums: zero=0, ten=10, thirty=40
        draws = FixedDraws(10, 0)
        ordered = order_srv(entries, draws)
        self.assertEqual([e.target for e in ordered], ["ten", "zero", "thirty"])
        self.assertEqual(draws.calls[0], (0, 40))
        self.assertEqual([e.target for e in order_srv(entries, FixedDraws(11))][0], "thirty")
        self.assertEqual([e.target for e in order_srv(entries, FixedDraws(40))][0], "thirty")

    def test_weights_are_proportions(self) -> None:
        entries = [SRVEntry(0, 1, 1, "light"), SRVEntry(0, 3, 1, "heavy")]
        # RFC 2782 draws from 0..sum inclusive, so with weights 1 and 3 the first pick is
        # "light" for draws 0-1 and "heavy" for 2-4: 2/5 and 3/5 (Twisted's srvconnect agrees).
        rng = random.Random(42)
        firsts = collections.Counter(order_srv(entries, rng)[0].target for _ in range(4000))
        self.assertLess(abs(firsts["heavy"] / 4000 - 0.6), 0.04)

    def test_all_zero_weights_keep_every_entry(self) -> None:
        entries = [SRVEntry(0, 0, 1, t) for t in "abc"]
        self.assertEqual(
            sorted(e.target for e in order_srv(entries, random.Random(3))), ["a", "b", "c"]
        )


class FindTests(unittest.TestCase):
    def test_explicit_registry_checks_its_host(self) -> None:
        resolver = FakeResolver()
        targets = self.successResultOf(
            findRegistry("reg.example.net:5000", "alice@example.com", resolver=resolver)
        )
        self.assertEqual(
            targets, [RegistryTarget("reg.example.net", 5000, "reg.example.net", "explicit")]
        )
        self.assertEqual(resolver.queries, [])
        targets = self.successResultOf(findRegistry("[::1]:4604", None, resolver=resolver))
        self.assertEqual(targets[0].address, "[::1]:4604")

    def test_a_list_of_registries_each_checks_its_host(self) -> None:
        resolver = FakeResolver()
        targets = self.successResultOf(
            findRegistry("irp1.example.net,[2001:db8::2]:4700", "alice@example.com",
                         resolver=resolver)
        )  # fmt: skip
        self.assertEqual(
            targets,
            [
                RegistryTarget("irp1.example.net", 4604, "irp1.example.net", "explicit"),
                RegistryTarget("2001:db8::2", 4700, "2001:db8::2", "explicit"),
            ],
        )
        self.assertEqual(resolver.queries, [])
        self.failureResultOf(findRegistry("a,,b", None, resolver=resolver), ValueError)

    def test_srv_targets_checked_against_the_domain(self) -> None:
        resolver = FakeResolver(
            [
                srv(20, 0, 4700, "backup.example.net"),
                srv(10, 0, 4604, "irp1.example.com"),
                dns.RRHeader("_irp._tcp.example.com", dns.CNAME, payload=dns.Record_CNAME("x")),
            ]
        )
        targets = self.successResultOf(findRegistry(None, "alice@Example.COM", resolver=resolver))
        self.assertEqual(resolver.queries, ["_irp._tcp.example.com"])
        self.assertEqual(
            targets,
            [
                RegistryTarget("irp1.example.com", 4604, "example.com", "srv"),
                RegistryTarget("backup.example.net", 4700, "example.com", "srv"),
            ],
        )

    def test_auto_is_discovery(self) -> None:
        resolver = FakeResolver([srv(0, 0, 4604, "irp.example.com")])
        targets = self.successResultOf(findRegistry("auto", "bob@example.com", resolver=resolver))
        self.assertEqual(targets[0].host, "irp.example.com")

    def test_fallback_without_srv(self) -> None:
        expected = [RegistryTarget("example.com", 4604, "example.com", "fallback")]
        for resolver in (
            FakeResolver(fail=dns_error.DNSNameError("NXDOMAIN")),
            FakeResolver(fail=dns_error.DNSServerError("SERVFAIL")),
            FakeResolver(fail=defer.TimeoutError("no answer")),
            FakeResolver([]),
        ):
            targets = self.successResultOf(
                findRegistry(None, "alice@example.com", resolver=resolver)
            )
            self.assertEqual(targets, expected)

    def test_dot_target_means_no_registry(self) -> None:
        resolver = FakeResolver([srv(0, 0, 0, "")])  # the root name "."
        f = self.failureResultOf(
            findRegistry(None, "alice@example.com", resolver=resolver), RegistryNotFound
        )
        self.assertIn("example.com runs no registry", str(f.value))
        twice = FakeResolver([srv(0, 0, 0, ""), srv(1, 0, 0, "")])
        self.failureResultOf(
            findRegistry(None, "alice@example.com", resolver=twice), RegistryNotFound
        )

    def test_needs_registry_or_identity(self) -> None:
        self.failureResultOf(findRegistry(None, None, resolver=FakeResolver()), ValueError)
        self.failureResultOf(
            findRegistry(None, "not-an-identity", resolver=FakeResolver()), ValueError
        )
        self.failureResultOf(findRegistry("host:0", None, resolver=FakeResolver()), ValueError)
