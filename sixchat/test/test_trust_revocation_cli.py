"""
The revocation modes (L{sixchat.trust.crl}, C{TrustStore(revocation=...)}) from the command
line: C{twistd sixchat --revocation}, C{sixchat probe --revocation} and C{twistd sixchat-irp
--revocation}, with real processes on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from sixchat import pki
from sixchat.agent import tap
from sixchat.identity import Identity
from sixchat.irp import tap as irp_tap
from sixchat.irp.messages import Enroll, Register
from sixchat.test import certs
from sixchat.test.irp_harness import CONTACT, make_csr, tls_connect
from sixchat.test.processes import Agent, Registry, run_cli, run_twistd
from sixchat.test.test_integration import deferLater, write_people


class OptionTests(unittest.TestCase):
    def test_agent_option(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        p = write_people(tmp)
        options = tap.Options()
        options.parseOptions(["--cert", p["alice"], "--trust", p["ca"]])
        self.assertEqual(options["config"].trust.revocation, "soft")
        options = tap.Options()
        options.parseOptions(["--cert", p["alice"], "--trust", p["ca"], "--revocation", "hard"])
        self.assertEqual(options["config"].trust.revocation, "hard")
        error = self.assertRaises(
            usage.UsageError,
            tap.Options().parseOptions,
            ["--cert", p["alice"], "--trust", p["ca"], "--revocation", "strict"],
        )
        self.assertEqual(str(error), "--revocation must be soft or hard, not 'strict'")

    def test_registry_option(self) -> None:
        tmp = os.path.abspath(self.mktemp())
        ca_dir = os.path.join(tmp, "ca")
        os.makedirs(tmp)
        pki.init_ca(ca_dir, "revocation test CA")
        key, cert = pki.load_ca(ca_dir)
        skey = certs.key_for("p256", "irp-server")
        p12 = os.path.join(tmp, "irp.p12")
        pki.write_p12(p12, skey, pki.issue_server(key, cert, ["127.0.0.1"], skey.public_key()),
                      [cert], b"secret")  # fmt: skip
        with open(os.path.join(tmp, "pw"), "w") as f:
            f.write("secret\n")
        base = ["--cert", p12, "--ca-dir", ca_dir, "--password-file", os.path.join(tmp, "pw"),
                "--db", os.path.join(tmp, "r.sqlite")]  # fmt: skip
        error = self.assertRaises(
            usage.UsageError, irp_tap.Options().parseOptions, [*base, "--revocation", "x"]
        )
        self.assertIn("--revocation must be soft or hard", str(error))
        for mode in ("soft", "hard"):
            options = irp_tap.Options()
            options.parseOptions([*base, "--revocation", mode])
            service = irp_tap.makeService(options)
            self.assertEqual(service.authority.trust.revocation, mode)  # type: ignore[attr-defined]


class ProcessTests(unittest.TestCase):
    """A real agent and the real probe CLI in each mode."""

    timeout = 120

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.paths = write_people(self.tmp)
        ca = certs.make_ca()
        self.crl = os.path.join(self.tmp, "ca.crl")
        with open(self.crl, "wb") as f:
            f.write(pki.issue_crl(ca.key, ca.cert, []).public_bytes(serialization.Encoding.PEM))

    @defer.inlineCallbacks
    def start_bob(self, *args: str) -> Any:
        p = self.paths
        agent = Agent(self.tmp, ["--cert", p["bob"], "--password-file", p["pw"],
                                 "--trust", p["ca"], *args,
                                 "--listen", "tcp:0:interface=127.0.0.1"])  # fmt: skip
        self.addCleanup(agent.stop)
        yield agent.start()
        return agent

    def probe(self, port: int, *args: str) -> Any:
        p = self.paths
        return run_cli(["probe", f"127.0.0.1:{port}", "--cert", p["alice"], "--trust", p["ca"],
                        "--json", *args], cwd=self.tmp)  # fmt: skip

    @defer.inlineCallbacks
    def test_hard_agent_without_crl_refuses(self) -> Any:
        bob = yield self.start_bob("--revocation", "hard")
        out, err, code = yield self.probe(bob.port)
        self.assertEqual(code, 1, err + out)
        info = json.loads(out)
        self.assertEqual((info["alert"], info["by_peer"]), ("bad_certificate", True))
        for _ in range(50):
            if "sent alert bad_certificate" in bob.log:
                break
            yield deferLater(0.1)
        self.assertIn("sent alert bad_certificate", bob.log)

    @defer.inlineCallbacks
    def test_hard_agent_with_crl_accepts_and_probe_modes(self) -> Any:
        bob = yield self.start_bob("--revocation", "hard", "--crl", self.crl)
        out, err, code = yield self.probe(bob.port)
        self.assertEqual(code, 0, err + out)
        self.assertEqual(json.loads(out)["peer"], "bob@example.com")
        self.assertIn("no CRL for issuer", err)  # the soft probe says it did not check
        # the probe in hard mode: refuses bob's chain itself without a CRL ...
        out, err, code = yield self.probe(bob.port, "--revocation", "hard")
        self.assertEqual(code, 1, err + out)
        info = json.loads(out)
        self.assertEqual((info["alert"], info["by_peer"]), ("bad_certificate", False))
        # ... and accepts it with one
        out, err, code = yield self.probe(bob.port, "--revocation", "hard", "--crl", self.crl)
        self.assertEqual(code, 0, err + out)
        self.assertNotIn("no CRL", err)

    @defer.inlineCallbacks
    def test_bad_values_are_one_line(self) -> Any:
        p = self.paths
        out, err, code = yield run_twistd(
            ["sixchat", "--cert", p["alice"], "--trust", p["ca"], "--revocation", "maybe"],
            cwd=self.tmp,
        )
        self.assertNotEqual(code, 0)
        self.assertIn("--revocation must be soft or hard, not 'maybe'", out + err)
        self.assertNotIn("Traceback", out + err)
        out, err, code = yield run_cli(
            ["probe", "127.0.0.1:1", "--cert", p["alice"], "--trust", p["ca"],
             "--revocation", "maybe"], cwd=self.tmp)  # fmt: skip
        self.assertEqual(code, 2)
        self.assertIn("--revocation", err)
        self.assertNotIn("Traceback", err)



class RegistryProcessTests(unittest.TestCase):
    """A real C{twistd -n sixchat-irp --revocation hard} with a root CA directory."""

    timeout = 120

    async def test_hard_registry_accepts_its_own_users(self) -> None:
        """The registry's own CRL (made at start-up) covers its users: hard mode works."""
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        for args in (["pki", "init-ca", "ca"],
                     ["pki", "issue-server", "127.0.0.1", "--ca", "ca", "--out", "irp.p12"]):
            out, err, code = await run_cli(args, cwd=tmp)
            self.assertEqual(code, 0, err)  # fmt: skip
        registry = Registry(tmp, ["--cert", "irp.p12", "--ca-dir", "ca", "--db", "irp.sqlite",
                                  "--listen", "tcp:0:interface=127.0.0.1",
                                  "--revocation", "hard"])  # fmt: skip
        self.addCleanup(registry.stop)
        port = await registry.start()
        with open(os.path.join(tmp, "ca", "ca.pem"), "rb") as f:
            anchor = x509.load_pem_x509_certificate(f.read())
        out, err, code = await run_cli(
            ["pki", "invite", "alice@example.com", "--db", "irp.sqlite"], cwd=tmp
        )
        self.assertEqual(code, 0, err)
        client = await tls_connect(self, port, anchor)
        key = ed25519.Ed25519PrivateKey.generate()
        issued = await client.request(Enroll("1", out.strip(), make_csr(key)))
        cert = issued.find("cert")
        assert cert is not None, issued
        leaf = x509.load_der_x509_certificate(base64.b64decode(cert.text or ""))
        alice = await tls_connect(self, port, anchor, Identity(key, leaf, [anchor]))
        self.assertEqual((await alice.request(Register("2", "n", CONTACT))).tag, "registered")
        self.assertNotIn("no CRL for issuer", registry.log)
