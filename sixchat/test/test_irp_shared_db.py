"""
Two real C{twistd -n sixchat-irp} processes on one PostgreSQL database (a throwaway cluster,
see L{sixchat.test.pg}): what is registered through one is visible to lookups through the
other at once, and a watch on the other sees the change (LISTEN/NOTIFY across processes).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sixchat import pki
from sixchat.identity import Identity
from sixchat.irp.messages import Contact, Record
from sixchat.test import pg
from sixchat.test.processes import Registry

TIMEOUT = 10.0


def url_for(dsn: str) -> str:
    """The C{postgresql://} URL C{--db} takes, for the test helper's key=value DSN."""
    from psycopg.conninfo import conninfo_to_dict

    parts = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    dbname = parts.pop("dbname")
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in sorted(parts.items()))
    return f"postgresql:///{quote(dbname)}?{query}"


async def within(d: Any, seconds: float, what: str) -> Any:
    timer = reactor.callLater(seconds, d.cancel)
    try:
        return await d
    except defer.CancelledError:
        raise AssertionError(f"{what}: nothing within {seconds} s") from None
    finally:
        if timer.active():
            timer.cancel()


class SharedDatabaseTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = pg.skip_reason()
        if reason:
            raise unittest.SkipTest(reason)
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        ca_dir = os.path.join(self.tmp, "ca")
        self.ca_key, self.ca_cert = pki.init_ca(ca_dir, "shared-db test CA")
        server_key = pki.generate_key("ed25519")
        server_cert = pki.issue_server(
            self.ca_key, self.ca_cert, ["127.0.0.1"], server_key.public_key()
        )
        pki.write_p12(os.path.join(self.tmp, "irp.p12"), server_key, server_cert, [], None)

    def person(self, name: str) -> Identity:
        key = pki.generate_key("ed25519")
        leaf = pki.issue_leaf(self.ca_key, self.ca_cert, [name], key.public_key())
        return Identity(key, leaf)

    async def registry(self, db: str) -> Registry:
        args = ["--cert", "irp.p12", "--ca-dir", "ca", "--db", db,
                "--listen", "tcp:0:interface=127.0.0.1", "--allow-private-addresses"]  # fmt: skip
        registry = Registry(self.tmp, args)
        self.addCleanup(registry.stop)
        await registry.start()
        return registry

    async def client(self, registry: Registry, identity: Identity) -> Any:
        from sixchat.irp.client import connectRegistry

        client = await within(
            connectRegistry(
                reactor,
                f"127.0.0.1:{registry.port}",
                identity.names[0],
                anchors=[self.ca_cert],
                client_identity=identity,
            ),
            TIMEOUT,
            "connect",
        )
        self.addCleanup(client.close)
        return client

    async def test_register_through_a_seen_through_b(self) -> None:
        db = url_for(await pg.database_for(self))
        a = await self.registry(db)
        b = await self.registry(db)
        alice, bob = self.person("alice@example.com"), self.person("bob@example.com")
        alice_on_a = await self.client(a, alice)
        bob_on_b = await self.client(b, bob)

        presences: list[Record] = []
        changed: defer.Deferred[None] = defer.Deferred()

        def presence(record: Record) -> None:
            presences.append(record)
            if record.nodes and not changed.called:
                changed.callback(None)

        await within(bob_on_b.watch("alice@example.com", presence), TIMEOUT, "watch")
        for _ in range(100):  # the initial presence follows <watching/>
            if presences:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual([p.nodes for p in presences], [[]])  # offline

        granted = await within(
            alice_on_a.register("laptop", [Contact("127.0.0.1", 4605)], 120), TIMEOUT, "register"
        )
        self.assertEqual(granted, 120)
        record = await within(bob_on_b.lookup("alice@example.com"), TIMEOUT, "lookup via B")
        self.assertEqual([n.name for n in record.nodes], ["laptop"])
        self.assertEqual(record.nodes[0].contacts, (Contact("127.0.0.1", 4605),))
        self.assertEqual(record.nodes[0].cert, alice.leaf_der)

        await within(changed, 5.0, "presence on B after a register through A")
        self.assertEqual([n.name for n in presences[-1].nodes], ["laptop"])

        gone: defer.Deferred[None] = defer.Deferred()
        presences.clear()
        bob_watch_done = lambda record: (  # noqa: E731
            gone.callback(None) if not record.nodes and not gone.called else None
        )
        await within(bob_on_b.unwatch("alice@example.com"), TIMEOUT, "unwatch")
        await within(bob_on_b.watch("alice@example.com", bob_watch_done), TIMEOUT, "watch")
        await within(alice_on_a.unregister("laptop"), TIMEOUT, "unregister through A")
        await within(gone, 5.0, "presence on B after an unregister through A")
        # a known, unrevoked certificate but no live binding: a record without node (§3.3)
        record = await within(bob_on_b.lookup("alice@example.com"), TIMEOUT, "lookup via B")
        self.assertEqual(record.nodes, [])
        self.assertEqual(record.cert, alice.leaf_der)

    async def test_removed_through_a_gone_from_lookups_through_b(self) -> None:
        """
        Registry B answers lookups from its cache (docs/irp.md): once alice's node is
        removed through A, B's lookups stop answering it within the documented bound
        (3 s; in practice the notification's milliseconds), with no watch involved.
        """
        db = url_for(await pg.database_for(self))
        a = await self.registry(db)
        b = await self.registry(db)
        alice, bob = self.person("alice@example.com"), self.person("bob@example.com")
        alice_on_a = await self.client(a, alice)
        bob_on_b = await self.client(b, bob)
        await within(
            alice_on_a.register("laptop", [Contact("127.0.0.1", 4605)], 120), TIMEOUT, "register"
        )
        # Looked up through B until it answers the node (it may not have heard of it at
        # first if it answered an earlier lookup), then again: B's cache holds it now.
        for _ in range(3):
            record = await within(bob_on_b.lookup("alice@example.com"), TIMEOUT, "lookup")
            if record.nodes:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([n.name for n in record.nodes], ["laptop"])
        await within(alice_on_a.unregister("laptop"), TIMEOUT, "unregister through A")
        removed = reactor.seconds()
        while True:  # inside the 50 requests/s of a connection
            record = await within(bob_on_b.lookup("alice@example.com"), TIMEOUT, "lookup")
            if not record.nodes:
                break
            self.assertLess(reactor.seconds() - removed, 3.0, "B still answers the node")
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(record.cert, alice.leaf_der)
