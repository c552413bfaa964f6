"""
Tests of L{sixchat.irp.server.hub}: watch fan-out, expiry on the clock and revocations
reaching every connection of an identity, driven through connections over a string
transport (L{sixchat.test.irp_harness.Harness}).
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from sixchat.irp.messages import (
    Lookup,
    Ping,
    Register,
    Revoke,
    Unregister,
    Unwatch,
    Watch,
)
from sixchat.irp.store.sqlite import SQLiteStore, StoreError
from sixchat.test import certs
from sixchat.test.irp_harness import (
    CONTACT,
    RequestTestCase,
)
from sixchat.test.test_irp_store import wait_for
from sixchat.xmlcodec import serialize


class HubTests(RequestTestCase):
    """Watches (irp-1 §3.4), expiry and revocation fan-out."""

    # watches (§3.4, §7.5) ------------------------------------------------------------------

    async def test_watch_pushes(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        b = h.connect(h.identity("bob@example.com"))
        b.send(Watch("w", "alice@example.com"))
        await wait_for(lambda: len(b.read()) >= 2)
        watching, presence = b.take()
        self.assertEqual(serialize(watching), b'<watching id="w"/>')
        self.assertEqual(serialize(presence), b'<presence identity="alice@example.com"/>')

        await a.request(Register("1", "laptop", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual([n.get("name") for n in pushed.children], ["laptop"])
        self.assertEqual([c.tag for c in pushed.children[0].children], ["contact", "cert"])

        await a.request(Register("2", "phone", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual(sorted(n.get("name") or "" for n in pushed.children), ["laptop", "phone"])

        await a.request(Unregister("3", "laptop"))
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual([n.get("name") for n in pushed.children], ["phone"])

        self.assertEqual(
            serialize(await b.request(Unwatch("u", "alice@example.com"))), b'<unwatched id="u"/>'
        )
        await a.request(Unregister("4", "phone"))
        await h.settle()
        self.assertEqual(b.take(), [])

    async def _refresh_failing(self, stop_first: bool) -> None:
        """A watchers' refresh whose store read fails, with the hub stopped before or not."""
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("w", "alice@example.com"))
        hub = h.factory.hub
        pending: defer.Deferred[object] = defer.Deferred()
        self.patch(hub.store, "state", lambda identity, now: pending)
        hub._changed("alice@example.com")  # a change: the watchers' state is read again
        if stop_first:
            await hub.stop()
        pending.errback(StoreError("registry database x is closed"))

    async def test_a_refresh_cut_short_by_the_stop_is_not_an_error(self) -> None:
        # The demo's registry logged a traceback when its store closed under a refresh.
        await self._refresh_failing(stop_first=True)
        self.assertEqual(self.flushLoggedErrors(StoreError), [])

    async def test_a_refresh_failing_while_running_is_logged(self) -> None:
        await self._refresh_failing(stop_first=False)
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)

    async def test_watch_expiry_on_the_clock(self) -> None:
        h = await self.harness()
        a = h.connect(h.identity("alice@example.com"))
        b = h.connect(h.identity("bob@example.com"))
        await a.request(Register("1", "laptop", CONTACT, expires=30))
        await b.request(Watch("w", "alice@example.com"))
        await wait_for(lambda: len(b.pushes()) == 1)
        h.clock.advance(29)
        await h.settle()
        self.assertEqual(b.pushes(), [])
        for _ in range(3):  # the timer runs at least every second
            h.clock.advance(1)
            await h.settle()
        await wait_for(lambda: len(b.read()) >= 1)
        (pushed,) = b.pushes()
        self.assertEqual(pushed.children, [])
        self.assertEqual((await b.request(Lookup("l", "alice@example.com"))).findall("node"), [])

    async def test_watch_unknown_identity_then_registration(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("w", "carol@example.com"))
        self.assertEqual(b.pushes()[0].children, [])
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("1", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        self.assertEqual(len(b.pushes()[0].children), 1)

    async def test_second_watch_adds_nothing(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        for rid in ("w1", "w2"):
            self.assertEqual((await b.request(Watch(rid, "alice@example.com"))).tag, "watching")
            self.assertEqual(len(b.pushes()), 1)
        self.assertEqual(len(b.protocol.watches), 1)
        a = h.connect(h.identity("alice@example.com"))
        await a.request(Register("1", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        await h.settle()
        self.assertEqual(len(b.pushes()), 1)
        self.assertEqual((await b.request(Unwatch("u", "nobody@example.com"))).tag, "unwatched")

    async def test_watch_limit(self) -> None:
        h = await self.harness(max_watches=2)
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("1", "a@example.com"))
        await b.request(Watch("2", "c@example.com"))
        answer = await b.request(Watch("3", "d@example.com"))
        self.assertEqual(answer.get("reason"), "rate_limited")
        self.assertEqual((await b.request(Watch("4", "a@example.com"))).tag, "watching")
        await b.request(Unwatch("5", "a@example.com"))
        self.assertEqual((await b.request(Watch("6", "d@example.com"))).tag, "watching")

    async def test_watches_end_with_connection(self) -> None:
        h = await self.harness()
        b = h.connect(h.identity("bob@example.com"))
        await b.request(Watch("1", "alice@example.com"))
        b.protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(h.factory.hub._watchers, {})

    async def test_revocation_elsewhere_reaches_connections(self) -> None:
        """An administrator's revocation: identity and watches go at once (§7.7)."""
        h = await self.harness()
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        b2 = h.connect(bob)  # a second connection with the same certificate
        await b2.request(Ping("hello"))
        await b.request(Register("1", "laptop", CONTACT))
        await b.request(Watch("w", "carol@example.com"))
        b.pushes()
        await h.authority.revoke(bob.leaf.serial_number)
        await wait_for(lambda: b.protocol.peer is None and b2.protocol.peer is None)
        self.assertEqual(b.protocol.watches, {})
        self.assertEqual(
            (await b2.request(Lookup("l", "carol@example.com"))).get("reason"), "unauthenticated"
        )
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("2", "n", CONTACT))
        await h.settle()
        self.assertEqual(b.pushes(), [])

    async def test_revocation_keeps_watches_under_public_policy(self) -> None:
        h = await self.harness(lookup_policy="public")
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        await b.request(Watch("w", "carol@example.com"))
        b.pushes()
        await b.request(Revoke("r"))
        c = h.connect(h.identity("carol@example.com"))
        await c.request(Register("2", "n", CONTACT))
        await wait_for(lambda: len(b.read()) >= 1)
        self.assertEqual(len(b.pushes()), 1)

    async def test_revocation_from_another_process(self) -> None:
        """A second store on the same file stands in for C{sixchat pki revoke}."""
        h = await self.harness()
        bob = h.identity("bob@example.com", key=certs.new_key("ed25519"))
        b = h.connect(bob)
        await b.request(Register("1", "laptop", CONTACT))
        admin = SQLiteStore(h.path, reactor)
        await admin.open()
        self.addCleanup(admin.close)
        await admin.revoke(bob.leaf.serial_number, h.ca.cert_der, h.now())
        # The change poll is on the real reactor (1 s); the connection then rechecks.
        await wait_for(lambda: b.protocol.peer is None, timeout=5)
        h.clock.advance(0)  # the registry then reissues its CRL
        await wait_for(
            lambda: (
                h.authority.crl is not None
                and h.authority.crl.get_revoked_certificate_by_serial_number(bob.leaf.serial_number)
                is not None
            )
        )
