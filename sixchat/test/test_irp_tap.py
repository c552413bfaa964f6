"""
Tests of L{sixchat.irp.tap} and the edges: the C{sixchat-irp} plugin and its options, the
C{sixchat pki} commands, and a real C{twistd -n sixchat-irp}.
"""

from __future__ import annotations

import base64
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.application.service import IServiceMaker
from twisted.internet import reactor, task
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

from sixchat import pki
from sixchat.identity import Identity, load_identity
from sixchat.irp import tap as irp_tap
from sixchat.irp.messages import (
    CA,
    CRL,
    Contact,
    Enroll,
    Lookup,
    Ping,
    Register,
    Unregister,
)
from sixchat.irp.server import IRPServerService
from sixchat.irp.server.backlog import BUSY_TEXT
from sixchat.irp.server.gcpolicy import CollectorPolicy
from sixchat.irp.store.sqlite import SQLiteStore
from sixchat.test import certs, pg
from sixchat.test.irp_harness import (
    CONTACT,
    make_csr,
    tls_connect,
)
from sixchat.test.processes import Registry, run_cli, run_twistd
from sixchat.test.test_irp_store import wait_for


class PluginTests(TestCase):
    def test_plugin_is_discovered(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("sixchat-irp", makers)
        self.assertIs(makers["sixchat-irp"].options, irp_tap.Options)

    def write_files(self) -> dict[str, str]:
        tmp = os.path.abspath(self.mktemp())
        ca_dir = os.path.join(tmp, "ca")
        pki.init_ca(ca_dir, "plugin test CA")
        key, cert = pki.load_ca(ca_dir)
        skey = certs.key_for("p256", "irp-server")
        server = pki.issue_server(key, cert, ["127.0.0.1"], skey.public_key())
        p12 = os.path.join(tmp, "irp.p12")
        pki.write_p12(p12, skey, server, [cert], b"secret")
        with open(os.path.join(tmp, "pw"), "w") as f:
            f.write("secret\n")
        return {"tmp": tmp, "ca": ca_dir, "p12": p12, "pw": os.path.join(tmp, "pw")}

    def assertUsage(self, args: list[str], *fragments: str) -> None:
        options = irp_tap.Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, args)
        self.assertNotIn("\n", str(error))
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_one_line_errors(self) -> None:
        f = self.write_files()
        base = ["--ca-dir", f["ca"], "--password-file", f["pw"]]
        self.assertUsage(["--ca-dir", f["ca"]], "--cert is required")
        self.assertUsage(["--cert", f["p12"]], "--ca-dir is required")
        self.assertUsage(["--cert", "missing.p12", *base], "missing.p12 does not exist")
        self.assertUsage(["--cert", f["p12"], "--ca-dir", f["ca"]], "password")
        wrong = os.path.join(f["tmp"], "wrong")
        with open(wrong, "w") as fh:
            fh.write("nope\n")
        self.assertUsage(
            ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", wrong], "wrong password"
        )
        self.assertUsage(
            ["--cert", f["p12"], "--ca-dir", "nowhere", "--password-file", f["pw"]],
            "CA directory nowhere does not exist",
        )
        self.assertUsage(["--cert", f["p12"], *base, "--lookup-policy", "open"], "lookup-policy")
        self.assertUsage(
            ["--cert", f["p12"], *base, "--db", "/nonexistent/dir/x.sqlite"], "does not exist"
        )
        self.assertUsage(["--cert", f["p12"], *base, "--max-requests", "0"], "positive")

    def test_options_build_service(self) -> None:
        f = self.write_files()
        options = irp_tap.Options()
        db = os.path.join(f["tmp"], "r.sqlite")
        options.parseOptions(
            [
                "--cert",
                f["p12"],
                "--ca-dir",
                f["ca"],
                "--password-file",
                f["pw"],
                "--db",
                db,
                "--lookup-policy",
                "public",
                "--domain",
                "Example.com",
                "--allow-private-addresses",
                "--max-watches",
                "7",
            ]
        )
        service = irp_tap.makeService(options)
        assert isinstance(service, IRPServerService)
        assert isinstance(service.collector, CollectorPolicy)  # the default policy
        self.assertEqual(service.collector.interval, 1.0)
        self.assertFalse(service.collector.running)  # nothing changes before twistd starts it
        config = service.factory.config
        self.assertEqual(config.lookup_policy, "public")
        self.assertEqual(config.domains, frozenset({"example.com"}))
        self.assertTrue(config.allow_private_addresses)
        self.assertEqual(config.max_watches, 7)
        self.assertEqual(service.store.path, db)  # type: ignore[attr-defined]


    def test_gc_interval_option(self) -> None:
        f = self.write_files()
        base = ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", f["pw"]]
        base += ["--db", os.path.join(f["tmp"], "r.sqlite")]
        for value, expected in (("2.5", 2.5), ("0", None)):
            options = irp_tap.Options()
            options.parseOptions([*base, "--gc-interval", value])
            service = irp_tap.makeService(options)
            assert isinstance(service, IRPServerService)
            interval = service.collector.interval if service.collector is not None else None
            self.assertEqual(interval, expected)
        for value in ("-1", "soon", "nan", "inf"):
            self.assertUsage([*base, "--gc-interval", value], "--gc-interval")


    def test_max_queued_option(self) -> None:
        f = self.write_files()
        base = ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", f["pw"]]
        base += ["--db", os.path.join(f["tmp"], "r.sqlite")]
        for args, expected in (([], 1000), (["--max-queued", "17"], 17)):
            options = irp_tap.Options()
            options.parseOptions([*base, *args])
            service = irp_tap.makeService(options)
            assert isinstance(service, IRPServerService)
            self.assertEqual(service.factory.config.max_queued_requests, expected)
            self.assertEqual(service.factory.backlog.limit, expected)
        for value in ("0", "-3", "many", "2.5"):
            self.assertUsage([*base, "--max-queued", value], "--max-queued")

    def assertLookupCacheOption(self, db: str, size: str) -> None:
        """C{--lookup-cache}: default 20,000 identities, C{size} as given, 0 for none."""
        f = self.write_files()
        base = ["--cert", f["p12"], "--ca-dir", f["ca"], "--password-file", f["pw"]]
        base += ["--db", db]  # not opened here
        for value, expected in ((None, 20_000), (size, int(size)), ("0", None)):
            options = irp_tap.Options()
            options.parseOptions([*base, "--lookup-cache", value] if value else base)
            service = irp_tap.makeService(options)
            assert isinstance(service, IRPServerService)
            cache = service.store.cache  # type: ignore[attr-defined]
            self.assertEqual(cache.max_states if cache is not None else None, expected)
        for value in ("-1", "many", "2.5"):
            self.assertUsage([*base, "--lookup-cache", value], "--lookup-cache")

    def test_lookup_cache_option(self) -> None:
        if pg.psycopg_missing() is not None:
            raise SkipTest(pg.psycopg_missing())
        self.assertLookupCacheOption("postgresql:///sixchat?host=/nonexistent", "5")

    def test_lookup_cache_option_sqlite(self) -> None:
        """The SQLite store takes the same option (docs/admin.md)."""
        self.assertLookupCacheOption(self.mktemp(), "7")

A_NAME = "alice@example.com"


class RealProcessTests(TestCase):
    """C{sixchat pki} and C{twistd -n sixchat-irp} as an administrator runs them."""

    timeout = 120

    async def cli(self, *args: str, ok: bool = True) -> tuple[str, str, int]:
        out, err, code = await run_cli(list(args), cwd=self.tmp)
        if ok:
            self.assertEqual(code, 0, err)
        return out, err, code

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)

    async def test_registry_process(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        out, _err, _code = await self.cli(
            "pki", "issue-server", "127.0.0.1", "::1", "localhost", "--ca", "ca", "--out", "irp.p12"
        )
        self.assertIn("127.0.0.1, ::1, localhost", out)
        server = load_identity(os.path.join(self.tmp, "irp.p12"), server=True)
        eku = server.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        san = server.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"]
        )

        registry = Registry(
            self.tmp,
            [
                "--cert",
                "irp.p12",
                "--ca-dir",
                "ca",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--db",
                "irp.sqlite",
            ],
        )
        self.addCleanup(registry.stop)
        port = await registry.start()
        with open(os.path.join(self.tmp, "ca", "ca.pem"), "rb") as f:
            anchor = x509.load_pem_x509_certificate(f.read())
        client = await tls_connect(self, port, anchor)
        self.assertEqual((await client.request(Ping("1"))).tag, "pong")
        answer = await client.request(CA("2"))
        self.assertEqual(
            [base64.b64decode(c.text) for c in answer.findall("cert")],
            [anchor.public_bytes(serialization.Encoding.DER)],
        )

        # An invitation made by the CLI while the registry runs, used over the network.
        out, err, _code = await self.cli("pki", "invite", "alice@example.com", "--db", "irp.sqlite")
        token = out.strip()
        self.assertRegex(out, r"\A[A-Za-z0-9_-]{43}\n\Z")
        self.assertEqual(err, "")
        key = ed25519.Ed25519PrivateKey.generate()
        issued = await client.request(Enroll("3", token, make_csr(key)))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        alice = Identity(key, leaf, [anchor])
        a = await tls_connect(self, port, anchor, alice)
        self.assertEqual((await a.request(Register("4", "n", CONTACT))).tag, "registered")
        loopback = await a.request(Register("5", "n", [Contact("127.0.0.1", 4605)]))
        self.assertEqual(loopback.get("reason"), "bad_request")  # not allowed by default
        pem = os.path.join(self.tmp, "alice.pem")
        with open(pem, "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))

        # An administrator's revocation from another process reaches the connection.
        out, _err, _code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--cert", pem
        )
        self.assertIn(f"revoked certificate serial {leaf.serial_number:x} (alice@example.com)", out)
        for _ in range(100):
            answer = await a.request(Unregister(f"u{_}", "n"))
            if answer.get("reason") == "unauthenticated":
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("revocation did not reach the connection:\n" + registry.log)
        # and the CRL the registry then publishes lists it
        for _ in range(50):
            crl = x509.load_der_x509_crl(
                base64.b64decode((await client.request(CRL(f"c{_}"))).findall("crl")[0].text)
            )
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("CRL does not list the revoked certificate")
        self.assertIn("registered alice@example.com node n", registry.log)
        self.assertIn("revoked", registry.log)
        self.assertNotIn(token, registry.log)
        await registry.stop()

    async def test_registry_process_sheds_overload(self) -> None:
        """
        C{twistd sixchat-irp --max-queued 1}: of a burst of lookups read at once, those
        that find the store busy are answered C{rate_limited} at once, the others
        normally; the connection is kept and serves again once the store caught up.
        """
        await self.cli("pki", "init-ca", "ca")
        await self.cli("pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12")
        registry = Registry(
            self.tmp,
            ["--cert", "irp.p12", "--ca-dir", "ca", "--listen", "tcp:0:interface=127.0.0.1",
             "--db", "irp.sqlite", "--lookup-policy", "public", "--max-queued", "1"],
        )  # fmt: skip
        self.addCleanup(registry.stop)
        port = await registry.start()
        with open(os.path.join(self.tmp, "ca", "ca.pem"), "rb") as f:
            anchor = x509.load_pem_x509_certificate(f.read())
        client = await tls_connect(self, port, anchor)
        lookups = [Lookup(f"l{i}", f"nobody{i}@example.com") for i in range(20)]
        for lookup in lookups:  # one burst: read in one reactor turn
            client.send(lookup)
        ids = {lookup.id for lookup in lookups}
        await wait_for(lambda: {e.get("id") for e in client.elements} >= ids, 30)
        answers = [e for e in client.elements if e.get("id") in ids]
        client.elements.clear()
        self.assertEqual(len(answers), 20)
        reasons = [(a.get("reason"), a.text) for a in answers]
        self.assertIn(("rate_limited", BUSY_TEXT), reasons)
        self.assertIn(("not_found", "unknown identity"), reasons)
        self.assertEqual(
            set(reasons), {("rate_limited", BUSY_TEXT), ("not_found", "unknown identity")}
        )
        # Kept, and recovered: requests one at a time pass.
        for i in range(3):
            answer = await client.request(Lookup(f"again{i}", "nobody@example.com"))
            self.assertEqual(answer.get("reason"), "not_found")
        self.assertEqual((await client.request(Ping("p"))).tag, "pong")
        await registry.stop()

    async def test_registry_cache_sees_an_admin_revocation_within_the_bound(self) -> None:
        """
        C{twistd sixchat-irp} on SQLite answers lookups from its cache (the default
        C{--lookup-cache}); C{sixchat pki revoke}, another process on the same file, removes
        the binding from the answers within C{SQLiteStore.cache_fresh} seconds (docs/irp.md).
        """
        await self.cli("pki", "init-ca", "ca")
        await self.cli("pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12")
        registry = Registry(
            self.tmp,
            ["--cert", "irp.p12", "--ca-dir", "ca", "--listen", "tcp:0:interface=127.0.0.1",
             "--db", "irp.sqlite", "--lookup-policy", "public"],
        )  # fmt: skip
        self.addCleanup(registry.stop)
        port = await registry.start()
        with open(os.path.join(self.tmp, "ca", "ca.pem"), "rb") as f:
            anchor = x509.load_pem_x509_certificate(f.read())
        client = await tls_connect(self, port, anchor)
        out, _err, _code = await self.cli("pki", "invite", A_NAME, "--db", "irp.sqlite")
        key = ed25519.Ed25519PrivateKey.generate()
        issued = await client.request(Enroll("e", out.strip(), make_csr(key)))
        leaf = x509.load_der_x509_certificate(base64.b64decode(issued.find("cert").text))  # type: ignore[union-attr]
        a = await tls_connect(self, port, anchor, Identity(key, leaf, [anchor]))
        self.assertEqual((await a.request(Register("r", "n", CONTACT))).tag, "registered")
        for i in range(3):  # the first reads the file, the others are answered from the cache
            self.assertEqual((await client.request(Lookup(f"l{i}", A_NAME))).tag, "record")
        pem = os.path.join(self.tmp, "alice.pem")
        with open(pem, "wb") as f:
            f.write(leaf.public_bytes(serialization.Encoding.PEM))
        await self.cli("pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--cert", pem)
        revoked_at = reactor.seconds()
        for i in range(200):
            answer = await client.request(Lookup(f"after{i}", A_NAME))
            if answer.get("reason") == "not_found":
                break
            self.assertEqual(answer.tag, "record")
            await task.deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the revoked binding was still answered:\n" + registry.log)
        # Within the bound (plus the lookup's own round trip on a loaded machine).
        self.assertLess(reactor.seconds() - revoked_at, SQLiteStore.cache_fresh + 2.0)
        await registry.stop()

    async def test_startup_errors_are_one_line(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        await self.cli("pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12")
        _out, err, code = await run_twistd(
            ["sixchat-irp", "--cert", "missing.p12", "--ca-dir", "ca"], self.tmp
        )
        self.assertNotEqual(code, 0)
        self.assertIn("missing.p12 does not exist", _out + err)
        self.assertNotIn("Traceback", _out + err)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        self.addCleanup(sock.close)
        busy = sock.getsockname()[1]
        out, err, code = await run_twistd(
            [
                "sixchat-irp",
                "--cert",
                "irp.p12",
                "--ca-dir",
                "ca",
                "--listen",
                f"tcp:{busy}:interface=127.0.0.1",
                "--db",
                "irp.sqlite",
            ],
            self.tmp,
        )
        self.assertNotEqual(code, 0)
        self.assertIn("cannot listen on", out + err)
        self.assertNotIn("Traceback", out + err)

    async def test_cli_errors(self) -> None:
        await self.cli("pki", "init-ca", "ca")
        _out, err, code = await self.cli(
            "pki", "invite", "alice@example.com", "--db", "missing.sqlite", ok=False
        )
        self.assertEqual(code, 1)
        self.assertIn("no registry database at missing.sqlite", err)
        _out, err, code = await self.cli("pki", "invite", "not-an-identity", "--db", "x", ok=False)
        self.assertEqual(code, 2)
        _out, err, code = await self.cli("pki", "revoke", "--db", "x", "--ca", "ca", ok=False)
        self.assertEqual(code, 2)
        _out, err, code = await self.cli(
            "pki", "issue-server", "not a name!", "--ca", "ca", "--out", "s.p12", ok=False
        )
        self.assertEqual(code, 2)
        # a certificate from another CA
        other = certs.make_identity("eve@example.com", certs.make_ca(name="other"))
        path = os.path.join(self.tmp, "eve.pem")
        with open(path, "wb") as f:
            f.write(other.leaf.public_bytes(serialization.Encoding.PEM))
        store = SQLiteStore(os.path.join(self.tmp, "irp.sqlite"), reactor)
        await store.open()
        await store.close()
        _out, err, code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--cert", path, ok=False
        )
        self.assertEqual(code, 1)
        self.assertIn("was not issued by the CA", err)
        out, err, _code = await self.cli(
            "pki", "revoke", "--db", "irp.sqlite", "--ca", "ca", "--serial", "0A:1b"
        )
        self.assertIn("revoked certificate serial a1b", out)
        store = SQLiteStore(os.path.join(self.tmp, "irp.sqlite"), reactor)
        await store.open()
        self.addCleanup(store.close)
        ca_cert = pki.load_ca_cert(os.path.join(self.tmp, "ca"))
        self.assertTrue(
            await store.is_revoked(0xA1B, ca_cert.public_bytes(serialization.Encoding.DER))
        )
