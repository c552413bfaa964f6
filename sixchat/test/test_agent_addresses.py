"""
Mobility, the agent's side (L{sixchat.agent.addresses}, L{sixchat.irp.contacts.host_addresses}):
the address watch on a C{task.Clock} with a fake address source, and the kernel lists it
reads, parsed from sample files.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from sixchat.agent.addresses import AddressWatch
from sixchat.irp import contacts

A = "2001:db8::1"
B = "2001:db8::2"
V4 = "192.0.2.7"


class FakeSource:
    """The host's addresses as the test sets them; C{looks} counts the looks."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: Any = frozenset(addresses)
        self.looks = 0

    def __call__(self) -> Any:
        self.looks += 1
        if isinstance(self.addresses, Exception):
            raise self.addresses
        return self.addresses


class AddressWatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.source = FakeSource(A, V4)
        self.changes: list[tuple[frozenset[str], frozenset[str]]] = []
        self.watch = AddressWatch(
            self.clock, self.source, lambda added, removed: self.changes.append((added, removed))
        )
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def test_first_look_is_the_baseline(self) -> None:
        self.assertEqual(self.source.looks, 1)  # at once, on start
        self.assertEqual(self.watch.addresses, {A, V4})
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual(self.source.looks, 6)  # every second
        self.assertEqual(self.changes, [])  # nothing changed

    def test_a_change_is_reported_once_within_the_interval(self) -> None:
        self.source.addresses = frozenset({B, V4})  # the IPv6 prefix changed
        self.clock.advance(0.99)
        self.assertEqual(self.changes, [])
        self.clock.advance(0.01)
        self.assertEqual(self.changes, [(frozenset({B}), frozenset({A}))])
        self.clock.advance(3)
        self.assertEqual(len(self.changes), 1)
        self.source.addresses = frozenset({A, B, V4})  # a new one, none gone
        self.clock.advance(1)
        self.assertEqual(self.changes[1], (frozenset({A}), frozenset()))

    def test_a_source_that_cannot_tell_leaves_it_idle(self) -> None:
        self.source.addresses = None
        self.clock.advance(1)
        self.assertIsNone(self.watch.addresses)
        self.source.addresses = frozenset({B})
        self.clock.advance(1)  # a new baseline, not a change
        self.assertEqual((self.changes, self.watch.addresses), ([], {B}))

    def test_a_failing_source_is_logged_and_the_watch_goes_on(self) -> None:
        self.source.addresses = OSError("no /proc")
        self.clock.advance(1)
        [logged] = self.flushLoggedErrors() or [None]
        self.assertIsNone(logged)  # a warning, not an error with a traceback
        self.source.addresses = frozenset({B})
        self.clock.advance(1)
        self.assertEqual(self.changes, [(frozenset({B}), frozenset({A, V4}))])

    def test_a_failing_reaction_does_not_stop_the_watch(self) -> None:
        def broken(added: frozenset[str], removed: frozenset[str]) -> None:
            self.changes.append((added, removed))
            raise RuntimeError("boom")

        self.watch.on_change = broken
        self.source.addresses = frozenset({B})
        self.clock.advance(1)
        self.source.addresses = frozenset({A})
        self.clock.advance(1)
        self.assertEqual(len(self.changes), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_deferred_source(self) -> None:
        pending: defer.Deferred[frozenset[str]] = defer.Deferred()
        self.watch.source = lambda: pending
        self.clock.advance(1)
        self.clock.advance(1)  # a look in progress: the loop waits for it
        pending.callback(frozenset({B}))
        self.assertEqual(self.changes, [(frozenset({B}), frozenset({A, V4}))])

    def test_stopped_watch_looks_no_more(self) -> None:
        self.watch.stopService()
        looks = self.source.looks
        self.source.addresses = frozenset({B})
        self.clock.advance(10)
        self.assertEqual((self.source.looks, self.changes), (looks, []))

    def test_interval_must_be_positive(self) -> None:
        for bad in (0, -1):
            with self.assertRaises(ValueError):
                AddressWatch(self.clock, self.source, lambda a, r: None, bad)


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
20010db8000000000000000000000001 02 40 00 80     eth0
20010db8000000000000000000000002 02 40 00 01     eth0
20010db8000000000000000000000003 02 40 00 40     eth0
20010db8000000000000000000000004 02 40 00 08     eth0
20010db8000000000000000000000005 02 40 00 20     eth0
fd5c6c61620000000000000000000007 02 40 00 80     eth0
garbage
"""

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.7
              /32 host LOCAL
           |-- 192.0.2.9
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 192.0.2.7
              /32 host LOCAL
"""


class HostAddressesTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_ipv6_every_scope_but_host_and_link_no_tentative_or_failed(self) -> None:
        found = contacts._proc_all_ipv6(self.write(IF_INET6))
        # temporary (0x01), deprecated (0x20) and ULA kept; tentative (0x40), failed DAD
        # (0x08), loopback and link-local not
        self.assertEqual(found, ["2001:db8::1", "2001:db8::2", "2001:db8::5", "fd5c:6c61:6200::7"])
        # what is advertised is narrower: no temporary, no deprecated
        self.assertEqual(
            contacts._proc_ipv6(self.write(IF_INET6)), ["2001:db8::1", "fd5c:6c61:6200::7"]
        )

    def test_ipv4_local_entries_secondary_too_no_loopback(self) -> None:
        self.assertEqual(
            contacts._fib_trie_ipv4(self.write(FIB_TRIE)), ["192.0.2.7", "192.0.2.9"]
        )

    def test_missing_files(self) -> None:
        self.assertEqual(contacts._proc_all_ipv6(self.mktemp()), [])
        self.assertIsNone(contacts._fib_trie_ipv4(self.mktemp()))

    def test_host_addresses_reads_the_kernel(self) -> None:
        found = contacts.host_addresses()
        if found is None:
            raise unittest.SkipTest("this system has no /proc/net address lists")
        self.assertFalse({"127.0.0.1", "::1"} & found)
        self.assertTrue(set(contacts.local_addresses()) <= found | {"127.0.0.1"})

    def test_no_kernel_lists_is_none(self) -> None:
        self.patch(contacts, "_netlink_addresses", lambda: None)
        self.patch(contacts.os.path, "exists", lambda path: False)
        self.assertIsNone(contacts.host_addresses())

    def test_netlink_and_proc_agree(self) -> None:
        listed = contacts._netlink_addresses()
        if listed is None:
            raise unittest.SkipTest("no rtnetlink here")
        by_netlink = contacts.host_addresses()
        self.patch(contacts, "_netlink_addresses", lambda: None)
        self.assertEqual(by_netlink, contacts.host_addresses())

    def test_netlink_filters(self) -> None:
        self.patch(contacts, "_netlink_addresses", lambda: [
            ("127.0.0.1", 254, 0x80), ("192.0.2.7", 0, 0x80), ("2001:db8::1", 0, 0x01),
            ("2001:db8::2", 0, 0x40), ("2001:db8::3", 0, 0x08), ("fe80::1", 253, 0x80),
            ("::1", 254, 0x80), ("fd5c:6c61:6200::7", 0, 0x20),
        ])  # fmt: skip
        self.assertEqual(
            contacts.host_addresses(), {"192.0.2.7", "2001:db8::1", "fd5c:6c61:6200::7"}
        )


def nlmsg(kind: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    padded = payload + b"\0" * (-length % 4)
    return struct.pack("=IHHII", length, kind, 2, 1, 0) + padded


def addr(family: int, scope: int, flags: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BBBBI", family, 64, flags & 0xFF, scope, 2)
    for kind, value in attrs:
        length = 4 + len(value)
        body += struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)
    return nlmsg(20, body)


class NetlinkParseTests(unittest.TestCase):
    def test_addresses_flags_and_done(self) -> None:
        v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        data = (
            addr(socket.AF_INET6, 0, 0x80, [(1, v6), (8, struct.pack("=I", 0x201))])
            + addr(socket.AF_INET, 0, 0x80, [(1, socket.inet_aton("192.0.2.99")),
                                             (2, socket.inet_aton("192.0.2.7"))])  # fmt: skip
            + nlmsg(3, struct.pack("=i", 0))
        )
        found, done = contacts.parse_addr_dump(data)
        # IFA_FLAGS (32 bits) wins over the 8-bit field; IFA_LOCAL over IFA_ADDRESS (peer)
        self.assertEqual(found, [("2001:db8::1", 0, 0x201), ("192.0.2.7", 0, 0x80)])
        self.assertTrue(done)

    def test_partial_read_is_not_done(self) -> None:
        data = addr(socket.AF_INET, 254, 0x80, [(2, socket.inet_aton("127.0.0.1"))])
        self.assertEqual(contacts.parse_addr_dump(data), ([("127.0.0.1", 254, 0x80)], False))
        self.assertEqual(contacts.parse_addr_dump(data[:10]), ([], False))  # truncated

    def test_error_raises(self) -> None:
        with self.assertRaises(OSError):
            contacts.parse_addr_dump(nlmsg(2, struct.pack("=i", -1) + b"\0" * 16))
