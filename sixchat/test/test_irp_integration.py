"""
The registry client side end to end, with real processes on 127.0.0.1: a C{twistd -n
sixchat-irp} registry, C{sixchat pki invite} + C{sixchat enroll}, C{twistd -n sixchat}
agents registering, refreshing and unregistering on SIGTERM, and C{sixchat probe IDENTITY}
finding an agent by identity alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sixchat.agent import tap
from sixchat.irp.messages import default_node
from sixchat.test.processes import Agent, Registry, run_cli

READY_TIMEOUT = 30


@defer.inlineCallbacks
def wait_for(source: Any, pattern: str, timeout: float = 30, count: int = 1) -> Any:
    """Poll C{source.log} until C{pattern} occurs C{count} times (the reactor keeps running)."""
    regex = re.compile(pattern)
    waited = 0.0
    while len(regex.findall(source.log)) < count:
        if waited >= timeout:
            raise AssertionError(f"{pattern!r} not seen {count}x within {timeout} s:\n{source.log}")
        yield task.deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    return True


class RegistryFixture(unittest.TestCase):
    """A fresh CA, server certificate and registry process per test."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        yield self.cli("pki", "init-ca", "ca", "--name", "Example CA")
        yield self.cli("pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12")
        self.ca = os.path.join(self.tmp, "ca", "ca.pem")
        self.registry = Registry(
            self.tmp,
            ["--cert", "irp.p12", "--ca-dir", "ca", "--db", os.path.join(self.tmp, "irp.sqlite"),
             "--listen", "tcp:0:interface=127.0.0.1", "--allow-private-addresses"],
        )  # fmt: skip
        self.addCleanup(self.registry.stop)
        yield self.registry.start()
        self.address = f"127.0.0.1:{self.registry.port}"

    @defer.inlineCallbacks
    def cli(self, *args: str, ok: bool = True) -> Any:
        out, err, code = yield run_cli(list(args), cwd=self.tmp)
        if ok and code != 0:
            raise AssertionError(f"sixchat {' '.join(args)} exited {code}:\n{out}\n{err}")
        return out, err, code

    @defer.inlineCallbacks
    def invite(self, identity: str) -> Any:
        out, _, _ = yield self.cli("pki", "invite", identity, "--db", "irp.sqlite")
        token = out.strip()
        self.assertTrue(token)
        return token

    @defer.inlineCallbacks
    def enroll(self, identity: str, out: str, *extra: str) -> Any:
        token = yield self.invite(identity)
        path = os.path.join(self.tmp, identity.split("@")[0] + ".token")
        with open(path, "w") as f:
            f.write(token + "\n")
        result = yield self.cli(
            "enroll", identity, "--registry", self.address, "--registry-ca", self.ca,
            "--token-file", path, "--out", out, *extra,
        )  # fmt: skip
        return result


class EnrollTests(RegistryFixture):
    @defer.inlineCallbacks
    def test_enroll_writes_identity_and_anchors(self) -> Any:
        out, err, _ = yield self.enroll("alice@example.com", "alice.p12", "--key-type", "p256")
        p12 = os.path.join(self.tmp, "alice.p12")
        anchors = os.path.join(self.tmp, "alice-ca.pem")
        self.assertEqual(stat.S_IMODE(os.stat(p12).st_mode), 0o600)
        self.assertIn("wrote alice.p12", out)
        self.assertIn("wrote alice-ca.pem", out)
        self.assertRegex(out, r"SPKI SHA-256: [0-9a-f]{64}")
        self.assertIn("ECDSA P-256", out)
        self.assertIn("not password-protected", err)
        from sixchat.identity import load_identity
        from sixchat.trust import TrustStore

        identity = load_identity(p12, None)
        self.assertEqual(identity.names, ("alice@example.com",))
        self.assertIn(identity.fingerprint(), out)
        with open(anchors, "rb") as f, open(self.ca, "rb") as g:
            self.assertEqual(f.read(), g.read())
        trust = TrustStore.from_paths(anchors)
        from sixchat.test.certs import utcnow

        trust.validate(identity.chain_der, utcnow())
        # the token was printed nowhere
        token_file = os.path.join(self.tmp, "alice.token")
        with open(token_file) as f:
            self.assertNotIn(f.read().strip(), out + err + self.registry.log)

    @defer.inlineCallbacks
    def test_token_is_single_use_and_files_are_checked_first(self) -> Any:
        yield self.enroll("bob@example.com", "bob.p12")
        _, err, code = yield self.cli(
            "enroll", "bob@example.com", "--registry", self.address, "--registry-ca", self.ca,
            "--token-file", "bob.token", "--out", "bob-again.p12", ok=False,
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("refused the token", err)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bob-again.p12")))
        # an existing output file is refused before the (fresh) token is spent
        token = yield self.invite("carol@example.com")
        _, err, code = yield self.cli(
            "enroll", "carol@example.com", "--registry", self.address, "--registry-ca",
            self.ca, "--token", token, "--out", "bob.p12", ok=False,
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)
        out, _, code = yield self.cli(
            "enroll", "carol@example.com", "--registry", self.address, "--registry-ca",
            self.ca, "--token", token, "--out", "carol.p12",
        )  # fmt: skip
        self.assertIn("carol@example.com", out)

    @defer.inlineCallbacks
    def test_name_typo_does_not_spend_the_invitation(self) -> Any:
        """
        Issue 17 item 4: `sixchat enroll gina@exmaple.com --token T` (a typo) fails with one
        line naming both identities, writes nothing, and the same token then enrols
        gina@example.com.
        """
        token = yield self.invite("gina@example.com")
        common = ["--registry", self.address, "--registry-ca", self.ca, "--token", token]
        _, err, code = yield self.cli(
            "enroll", "gina@exmaple.com", *common, "--out", "gina.p12", ok=False
        )
        self.assertEqual(code, 1, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertRegex(
            err, r"^sixchat: error: this invitation is for gina@example\.com, not "
            r"gina@exmaple\.com; the token was not used"
        )  # fmt: skip
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "gina.p12")))
        out, _, _ = yield self.cli("enroll", "gina@example.com", *common, "--out", "gina.p12")
        self.assertIn("wrote gina.p12", out)
        from sixchat.identity import load_identity

        self.assertEqual(
            load_identity(os.path.join(self.tmp, "gina.p12"), None).names, ("gina@example.com",)
        )

    @defer.inlineCallbacks
    def test_untrusted_registry_is_refused(self) -> Any:
        token = yield self.invite("dave@example.com")
        _, err, code = yield self.cli(
            "enroll", "dave@example.com", "--registry", self.address, "--token", token,
            "--out", "dave.p12", ok=False,
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("does not chain to the trusted anchors", err)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "dave.p12")))

    @defer.inlineCallbacks
    def test_renew_and_revoke_self(self) -> Any:
        yield self.enroll("erin@example.com", "erin.p12")
        common = ["--registry", self.address, "--registry-ca", self.ca]
        out, _, _ = yield self.cli("renew", "--cert", "erin.p12", *common)
        self.assertIn("wrote erin.p12", out)
        out, _, _ = yield self.cli(
            "renew", "--cert", "erin.p12", "--out", "erin2.p12", "--new-key", *common
        )
        self.assertIn("the key changed", out)
        _, err, code = yield self.cli("revoke-self", "--cert", "erin2.p12", *common, ok=False)
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)
        out, _, _ = yield self.cli("revoke-self", "--cert", "erin2.p12", "--yes", *common)
        self.assertIn("revoked the certificate of erin@example.com", out)
        # the registry now refuses that certificate in TLS, and we report the alert
        _, err, code = yield self.cli("renew", "--cert", "erin2.p12", *common, ok=False)
        self.assertEqual(code, 1)
        self.assertIn("TLS alert certificate_revoked (44)", err)


class AgentRegistrationTests(RegistryFixture):
    timeout = 180

    @defer.inlineCallbacks
    def startAgent(self, p12: str, trust: str, *extra: str) -> Any:
        agent = Agent(
            self.tmp,
            ["--cert", p12, "--trust", trust, "--listen", "tcp:0:interface=127.0.0.1", *extra],
        )
        self.addCleanup(agent.stop)
        yield agent.start(timeout=READY_TIMEOUT)
        return agent

    @defer.inlineCallbacks
    def probe(self, identity: str, *extra: str) -> Any:
        out, err, code = yield run_cli(
            ["probe", identity, "--registry", self.address, "--registry-ca", self.ca,
             "--cert", "alice.p12", "--trust", "alice-ca.pem", "--json", *extra],
            cwd=self.tmp,
        )  # fmt: skip
        self.assertNotIn("Traceback", err)
        return json.loads(out), code

    @defer.inlineCallbacks
    def test_register_probe_refresh_unregister(self) -> Any:
        yield self.enroll("alice@example.com", "alice.p12")
        yield self.enroll("bob@example.com", "bob.p12")
        bob = yield self.startAgent(
            "bob.p12", "bob-ca.pem", "--registry", self.address, "--registry-ca", self.ca,
            "--node", "laptop", "--register-expires", "30",
        )  # fmt: skip
        yield wait_for(bob, r"registered node laptop at 127\.0\.0\.1:\d+ with registry")
        self.assertIn(f"127.0.0.1:{bob.port}", bob.log)

        info, code = yield self.probe("bob@example.com", "--send", "hello via the registry")
        self.assertEqual(code, 0, info)
        self.assertTrue(info["ok"])
        self.assertEqual(info["node"], "laptop")
        self.assertEqual(info["address"], f"127.0.0.1:{bob.port}")
        self.assertEqual(info["peer"], "bob@example.com")
        yield wait_for(bob, r"from alice@example\.com: hello via the registry")

        # granted 30 s, refreshed at 20 s on the same connection
        yield wait_for(
            self.registry, r"registered bob@example\.com node laptop", timeout=30, count=2
        )
        self.assertEqual(bob.log.count("connecting to registry"), 1)  # no reconnects
        self.assertNotIn("retrying", bob.log)

        yield bob.stop()  # SIGTERM (twistd re-raises it after a clean shutdown)
        self.assertIn("Server Shut Down", bob.log)
        self.assertIn("unregistered node laptop", bob.log)
        yield wait_for(self.registry, r"unregistered bob@example\.com node laptop")
        info, code = yield self.probe("bob@example.com")
        self.assertEqual(code, 1)
        self.assertEqual(info["alert"], "offline")

    @defer.inlineCallbacks
    def test_probe_refuses_peer_with_another_certificate(self) -> Any:
        yield self.enroll("alice@example.com", "alice.p12")
        yield self.enroll("bob@example.com", "bob.p12")
        # an impostor with a valid certificate for bob (same CA, other key) listens …
        yield self.cli(
            "renew", "--cert", "bob.p12", "--out", "bob-other.p12", "--new-key",
            "--registry", self.address, "--registry-ca", self.ca,
        )  # fmt: skip
        impostor = yield self.startAgent("bob-other.p12", "bob-ca.pem")
        # … and the registered node (bob.p12) points there
        bob = yield self.startAgent(
            "bob.p12", "bob-ca.pem", "--registry", self.address, "--registry-ca", self.ca,
            "--node", "desk", "--advertise", f"127.0.0.1:{impostor.port}",
        )  # fmt: skip
        yield wait_for(bob, rf"registered node desk at 127\.0\.0\.1:{impostor.port}")
        info, code = yield self.probe("bob@example.com")
        self.assertEqual(code, 1)
        self.assertEqual(info["alert"], "bad_certificate")
        self.assertEqual(info["text"], "peer certificate differs from the registry's")
        self.assertEqual(info["node"], "desk")
        out, _, code = yield run_cli(
            ["probe", "bob@example.com", "--registry", self.address, "--registry-ca", self.ca,
             "--cert", "alice.p12", "--trust", "alice-ca.pem"],
            cwd=self.tmp,
        )  # fmt: skip
        self.assertIn("FAILED: bad_certificate", out)
        self.assertIn("peer certificate differs from the registry's", out)

    @defer.inlineCallbacks
    def test_agent_reregisters_after_registry_restart(self) -> Any:
        yield self.enroll("bob@example.com", "bob.p12")
        bob = yield self.startAgent(
            "bob.p12", "bob-ca.pem", "--registry", self.address, "--registry-ca", self.ca,
            "--node", "laptop",
        )  # fmt: skip
        yield wait_for(bob, r"registered node laptop")
        yield self.registry.stop()
        yield wait_for(bob, r"connection to registry .* lost")
        # same port, same database
        self.registry = Registry(self.tmp, self.registry.args[:-3] + [
            "--listen", f"tcp:{self.registry.port}:interface=127.0.0.1",
            "--allow-private-addresses",
        ])  # fmt: skip
        self.addCleanup(self.registry.stop)
        yield self.registry.start()
        yield wait_for(bob, r"registered node laptop", count=2, timeout=30)
        yield wait_for(self.registry, r"registered bob@example\.com node laptop")


class TapRegistryOptionTests(unittest.TestCase):
    """C{twistd sixchat --registry …} option handling (no processes)."""

    def setUp(self) -> None:
        from sixchat.test.test_integration import write_people

        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        self.people = write_people(self.tmp)

    def options(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--cert", self.people["alice"], "--trust", self.people["ca"], *args])
        return options

    def assertUsage(self, args: list[str], fragment: str) -> None:
        from twisted.python import usage

        e = self.assertRaises(usage.UsageError, self.options, *args)
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))

    def test_errors(self) -> None:
        self.assertUsage(["--registry", "host:0"], "--registry")
        self.assertUsage(["--registry", "h", "--registry-ca", "/nonexistent"], "--registry-ca")
        self.assertUsage(["--registry", "h", "--node", "bad node"], "--node")
        self.assertUsage(["--registry", "h", "--advertise", "example.com"], "IP literal")
        self.assertUsage(["--registry", "h", "--register-expires", "5"], "30 to 3600")
        self.assertUsage(["--advertise", "192.0.2.1"], "needs --registry")
        self.assertUsage(["--node", "x"], "needs --registry")

    def test_service_with_registry(self) -> None:
        from sixchat.agent.service import UserAgentService
        from sixchat.irp.keeper import RegistrationKeeper
        from sixchat.listener import PeerListenerService

        options = self.options(
            "--registry", "127.0.0.1:4604", "--registry-ca", self.people["ca"],
            "--advertise", "[2001:db8::1]:4700", "--advertise", "192.0.2.1",
            "--data-dir", os.path.abspath(self.mktemp()),
        )  # fmt: skip
        self.assertEqual(options["node"], default_node())
        svc = tap.makeService(options)
        self.assertIsInstance(svc, UserAgentService)
        self.assertIsInstance(svc.listener, PeerListenerService)
        keeper = svc.keeper
        self.assertIsInstance(keeper, RegistrationKeeper)
        self.assertEqual(keeper.node, options["node"])
        self.assertEqual(
            keeper.contacts_provider.advertise, [("2001:db8::1", 4700), ("192.0.2.1", None)]
        )
        without = tap.makeService(self.options("--data-dir", os.path.abspath(self.mktemp())))
        self.assertIsNone(without.keeper)
        self.assertIsNone(without.directory)

    def test_several_registries(self) -> None:
        """Registries on one database: a comma list, the option repeated, or both."""
        for args, expected in (
            (["--registry", "127.0.0.1:4604"], "127.0.0.1:4604"),
            (["--registry", "a.example,b.example:4700"], "a.example,b.example:4700"),
            (["--registry", "a.example", "--registry", "[2001:db8::2]:4604"],
             "a.example,[2001:db8::2]:4604"),
            (["--registry", "a.example,b.example", "--registry", "c.example"],
             "a.example,b.example,c.example"),
            (["--registry", "auto"], "auto"),
        ):  # fmt: skip
            options = self.options(*args, "--data-dir", os.path.abspath(self.mktemp()))
            self.assertEqual(options["registry"], expected, args)
        svc = tap.makeService(options)
        self.assertEqual(svc.link.source, "the registry")
        options = self.options("--registry", "a.example", "--registry", "b.example:4700",
                               "--data-dir", os.path.abspath(self.mktemp()))  # fmt: skip
        svc = tap.makeService(options)
        self.assertEqual(svc.link.registry, "a.example,b.example:4700")
        self.assertEqual(svc.keeper.registry_name, "registry a.example,b.example:4700")

    def test_several_registries_errors(self) -> None:
        self.assertUsage(["--registry", "a.example,,b.example"], "empty entry")
        self.assertUsage(["--registry", "a.example,"], "empty entry")
        self.assertUsage(["--registry", "auto", "--registry", "a.example"], "'auto'")
        self.assertUsage(["--registry", "a.example", "--registry", "b.example:0"], "b.example:0")

    def test_default_node_is_valid(self) -> None:
        from sixchat.irp.messages import is_valid_node

        self.assertTrue(is_valid_node(default_node()))
