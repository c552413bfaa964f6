"""
The edges as a user meets them: the twistd plugin, its one-line errors, and real
C{twistd -n sixchat} processes probed by the real C{sixchat probe} CLI on 127.0.0.1 and ::1.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet import defer
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from sixchat.agent import tap
from sixchat.test import certs
from sixchat.test.processes import Agent, run_cli, run_twistd
from sixchat.test.test_protocol import HAS_IPV6


def write_people(tmp: str) -> dict[str, str]:
    """A CA file and p12 files for alice (no password) and bob (password in a file)."""
    ca = certs.make_ca()
    paths = {"ca": os.path.join(tmp, "ca.pem"), "pw": os.path.join(tmp, "pw")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.anchor_pem)
    with open(paths["pw"], "w") as f:
        f.write("correct horse\n")
    paths["alice"] = certs.write_identity_p12(tmp, certs.make_identity("alice@example.com", ca))
    paths["bob"] = certs.write_identity_p12(
        tmp, certs.make_identity("bob@example.com", ca, key_type="p256"), b"correct horse"
    )
    return paths


def alice_options(tmp: str, *args: str) -> tap.Options:
    """C{twistd sixchat} options for alice (fresh people in C{tmp}), plus C{args}."""
    os.makedirs(tmp)
    people = write_people(tmp)
    options = tap.Options()
    options.parseOptions(
        ["--cert", people["alice"], "--trust", people["ca"],
         "--data-dir", os.path.abspath(os.path.join(tmp, "data")), *args]
    )  # fmt: skip
    return options


class PluginTests(unittest.TestCase):
    def test_plugin_is_discovered(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("sixchat", makers)
        self.assertIs(makers["sixchat"].options, tap.Options)

    def options(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def assertUsage(self, args: list[str], *fragments: str) -> str:
        error = self.assertRaises(usage.UsageError, self.options, *args)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_errors_are_one_actionable_line(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        p = write_people(tmp)
        not_p12 = os.path.join(tmp, "notes.txt")
        with open(not_p12, "w") as f:
            f.write("hello\n")
        bad_pw = os.path.join(tmp, "badpw")
        with open(bad_pw, "w") as f:
            f.write("wrong\n")
        self.assertUsage(["--trust", p["ca"]], "--cert")
        self.assertUsage(["--cert", p["alice"]], "--trust")
        self.assertUsage(
            ["--cert", os.path.join(tmp, "missing.p12"), "--trust", p["ca"]], "missing.p12"
        )
        self.assertUsage(["--cert", p["bob"], "--trust", p["ca"]], "password")
        self.assertUsage(
            ["--cert", p["bob"], "--password-file", bad_pw, "--trust", p["ca"]], "password"
        )
        self.assertUsage(["--cert", not_p12, "--trust", p["ca"]], "notes.txt")
        self.assertUsage(
            ["--cert", p["alice"], "--trust", os.path.join(tmp, "nope.pem")], "nope.pem"
        )
        self.assertUsage(["--cert", p["alice"], "--trust", not_p12], "notes.txt")
        self.assertUsage(
            ["--cert", p["alice"], "--trust", p["ca"], "--pin-policy", "maybe"], "pin-policy"
        )
        self.assertUsage(["--cert", p["alice"], "--trust", p["ca"], "--allow", "nobody"], "--allow")

    def test_certificate_without_identity(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        p = write_people(tmp)
        ca = certs.make_ca()
        nameless = certs.make_identity([], ca, check=False, no_san=True)
        path = certs.write_identity_p12(tmp, nameless, filename="nameless.p12")
        self.assertUsage(["--cert", path, "--trust", p["ca"]], "rfc822Name")

    def test_options_build_config(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        p = write_people(tmp)
        options = self.options(
            "--cert", p["bob"], "--password-file", p["pw"], "--trust", p["ca"],
            "--allow", "alice@example.com", "--allow", "@example.org",
            "--pin-policy", "refuse", "--key-transport", "--listen", "tcp:0",
        )  # fmt: skip
        config = options["config"]
        self.assertEqual(config.identities[0].names, ("bob@example.com",))
        self.assertTrue(config.key_transport)
        self.assertTrue(config.access.allows("alice@example.com"))
        self.assertTrue(config.access.allows("x@EXAMPLE.org"))
        self.assertFalse(config.access.allows("mallory@example.com"))
        self.assertEqual(config.pins.policy, "refuse")

    def test_password_from_environment(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        p = write_people(tmp)
        os.environ["SIXCHAT_P12_PASSWORD"] = "correct horse"
        self.addCleanup(os.environ.pop, "SIXCHAT_P12_PASSWORD", None)
        options = self.options("--cert", p["bob"], "--trust", p["ca"])
        self.assertEqual(options["config"].identities[0].names, ("bob@example.com",))


class TwoAgentsTests(unittest.TestCase):
    """Two real twistd agents and the real probe CLI."""

    timeout = 120

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.paths = write_people(self.tmp)

    @defer.inlineCallbacks
    def start_agent(self, *args: str, listen: str) -> Any:
        agent = Agent(self.tmp, [*args, "--listen", listen])
        self.addCleanup(agent.stop)
        yield agent.start()
        return agent

    @defer.inlineCallbacks
    def _probe_send(self, host: str, listen: str) -> Any:
        p = self.paths
        bob = yield self.start_agent(
            "--cert", p["bob"], "--password-file", p["pw"], "--trust", p["ca"], listen=listen
        )
        target = f"[{host}]:{bob.port}" if ":" in host else f"{host}:{bob.port}"
        out, err, code = yield run_cli(
            ["probe", target, "--cert", p["alice"], "--trust", p["ca"],
             "--to", "bob@example.com", "--send", "hi bob", "--json"],
            cwd=self.tmp,
        )  # fmt: skip
        self.assertEqual(code, 0, err + out)
        info = json.loads(out)
        self.assertEqual(info["peer"], "bob@example.com")
        self.assertEqual(info["version"], "1")
        self.assertEqual(info["group"], "x25519-mlkem768")
        self.assertEqual(info["alg"], "ecdsa-secp256r1-sha256")
        self.assertEqual(len(info["chain"]), 2)
        self.assertIn("receipt_ms", info)
        # the agent logged the session and the message
        for _ in range(50):
            if "hi bob" in bob.log:
                break
            yield deferLater(0.1)
        self.assertIn("from alice@example.com: hi bob", bob.log)
        self.assertIn("group x25519-mlkem768", bob.log)
        # human-readable output too
        out, err, code = yield run_cli(
            ["probe", target, "--cert", p["alice"], "--trust", p["ca"], "--send", "again"],
            cwd=self.tmp,
        )
        self.assertEqual(code, 0, err)
        self.assertIn("peer identity:  bob@example.com", out)
        self.assertIn("receipt after", out)

    def test_probe_send_ipv4(self) -> Any:
        return self._probe_send("127.0.0.1", "tcp:0:interface=127.0.0.1")

    def test_probe_send_ipv6(self) -> Any:
        if not HAS_IPV6:
            raise unittest.SkipTest("no IPv6 loopback")
        return self._probe_send("::1", "tcp6:0:interface=\\:\\:1")

    @defer.inlineCallbacks
    def test_two_agents_probe_each_other(self) -> Any:
        p = self.paths
        alice = yield self.start_agent(
            "--cert", p["alice"], "--trust", p["ca"], listen="tcp:0:interface=127.0.0.1"
        )
        bob = yield self.start_agent(
            "--cert", p["bob"], "--password-file", p["pw"], "--trust", p["ca"],
            "--allow", "alice@example.com", listen="tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{alice.port}", "--cert", p["bob"], "--password-file", p["pw"],
             "--trust", p["ca"], "--send", "hello alice"],
            cwd=self.tmp,
        )  # fmt: skip
        self.assertEqual(code, 0, err + out)
        # bob admits only alice: carol (unknown to its access list) is refused after M8
        carol = certs.make_identity("carol@example.com", certs.make_ca())
        carol_p12 = certs.write_identity_p12(self.tmp, carol)
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{bob.port}", "--cert", carol_p12, "--trust", p["ca"], "--json"],
            cwd=self.tmp,
        )
        self.assertEqual(code, 1)
        info = json.loads(out)
        self.assertEqual((info["alert"], info["by_peer"]), ("access_denied", True))

    @defer.inlineCallbacks
    def test_probe_unknown_ca_and_refused_port(self) -> Any:
        p = self.paths
        bob = yield self.start_agent(
            "--cert", p["bob"], "--password-file", p["pw"], "--trust", p["ca"],
            listen="tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        stranger_ca = certs.make_ca(name="stranger CA")
        other = os.path.join(self.tmp, "other-ca.pem")
        with open(other, "wb") as f:
            f.write(stranger_ca.anchor_pem)
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{bob.port}", "--cert", p["alice"], "--trust", other],
            cwd=self.tmp,
        )
        self.assertEqual(code, 1)
        self.assertIn("FAILED: unknown_ca", out)
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        out, err, code = yield run_cli(
            ["probe", f"127.0.0.1:{port}", "--cert", p["alice"], "--trust", p["ca"]], cwd=self.tmp
        )
        self.assertEqual(code, 1)
        self.assertIn("FAILED", out)

    @defer.inlineCallbacks
    def test_port_in_use_is_one_line(self) -> Any:
        p = self.paths
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        out, err, code = yield run_twistd(
            ["sixchat", "--cert", p["alice"], "--trust", p["ca"],
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=self.tmp,
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("cannot listen on", out + err)
        self.assertNotIn("Traceback", out + err)

    @defer.inlineCallbacks
    def test_wrong_password_is_one_line(self) -> Any:
        p = self.paths
        out, err, code = yield run_twistd(
            ["sixchat", "--cert", p["bob"], "--trust", p["ca"]], cwd=self.tmp
        )
        self.assertNotEqual(code, 0)
        self.assertIn("password", out + err)
        self.assertNotIn("Traceback", out + err)


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)
