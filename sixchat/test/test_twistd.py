"""
L{sixchat.twistd}: a person's mistake when starting C{twistd -n sixchat} or C{twistd -n
sixchat-irp} is one line on stderr and exit status 1 — no usage text, no traceback. Real
processes for each mistake (the exact stderr is asserted), and the option half in process.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.app import ServerOptions
from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from sixchat.agent import tap as agent_tap
from sixchat.test.processes import START_TIMEOUT, run_twistd, short_tempdir, spawn, twistd_argv
from sixchat.test.test_agent_e2e import E2ECase

#: twistd's usage text starts with "Usage: PROGRAM [options]"; never printed for a mistake.
USAGE = "Usage:"


class OptionsUnderTwistdTests(unittest.TestCase):
    """In process: a plugin's options raise C{UsageError} alone, C{SystemExit} under twistd."""

    def test_alone_usage_error(self) -> None:
        self.assertRaises(
            usage.UsageError, agent_tap.Options().parseOptions, ["--cert", "nowhere.p12"]
        )

    def test_under_twistd_one_line(self) -> None:
        config = ServerOptions()
        with self.assertRaises(SystemExit) as caught:
            config.parseOptions(["sixchat", "--cert", "nowhere.p12", "--trust", "x.pem"])
        self.assertEqual(str(caught.exception.code), "twistd: error: nowhere.p12 does not exist")

    def test_unknown_option_points_to_help(self) -> None:
        config = ServerOptions()
        with self.assertRaises(SystemExit) as caught:
            config.parseOptions(["sixchat", "--bogus"])
        self.assertEqual(
            str(caught.exception.code),
            "twistd: error: option --bogus not recognized (twistd sixchat --help lists the "
            "options)",
        )


    def test_mistyped_option_gets_the_closest_one(self) -> None:
        for argv, expected in [
            (["sixchat", "--cret", "me.p12"], "--cret not recognized; did you mean --cert?"),
            (["sixchat", "--lisen=tcp:4605"], "--lisen not recognized; did you mean --listen?"),
            (["sixchat-irp", "--ca-dri", "ca"], "--ca-dri not recognized; did you mean --ca-dir?"),
        ]:
            config = ServerOptions()
            with self.assertRaises(SystemExit) as caught:
                config.parseOptions(argv)
            text = str(caught.exception.code)
            self.assertTrue(text.startswith("twistd: error: option --"), text)
            self.assertTrue(text.endswith(f"(twistd {argv[0]} --help lists the options)"), text)
            if expected is not None:
                self.assertIn(expected, text)
        config = ServerOptions()
        with self.assertRaises(SystemExit) as caught:
            config.parseOptions(["sixchat", "--frobnicate"])
        self.assertNotIn("did you mean", str(caught.exception.code))


class StartupErrorProcessTests(E2ECase):
    """C{twistd -n sixchat} and C{twistd -n sixchat-irp} as a user runs them, mistakes each."""

    def assertOneLine(self, result: tuple[str, str, int], expected: str) -> None:
        out, err, code = result
        self.assertEqual(err, expected + "\n", f"stdout:\n{out}")
        self.assertEqual(code, 1)
        self.assertNotIn("Traceback", out + err)
        self.assertNotIn(USAGE, out + err)

    def agentArgs(self, *extra: str) -> list[str]:
        return ["sixchat", "--trust", self.ca, "--listen", "tcp:0:interface=127.0.0.1", *extra]

    @defer.inlineCallbacks
    def test_missing_cert(self) -> Any:
        result = yield run_twistd(self.agentArgs("--cert", "missing.p12"), self.base)
        self.assertOneLine(result, "twistd: error: missing.p12 does not exist")

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        from sixchat import pki

        key = pki.generate_key("ed25519")
        cert = pki.issue_leaf(self.ca_key, self.ca_cert, ["alice@example.com"], key.public_key())
        p12 = os.path.join(self.base, "locked.p12")
        pki.write_p12(p12, key, cert, [], b"right")
        wrong = os.path.join(self.base, "wrong")
        with open(wrong, "w") as f:
            f.write("wrong\n")
        result = yield run_twistd(
            self.agentArgs("--cert", p12, "--password-file", wrong), self.base
        )
        self.assertOneLine(
            result,
            f"twistd: error: wrong password for {p12} "
            "(use --password-file or SIXCHAT_P12_PASSWORD)",
        )

    @defer.inlineCallbacks
    def test_unreadable_trust_file(self) -> Any:
        cert = self.issue("alice@example.com")
        junk = os.path.join(self.base, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        args = ["sixchat", "--cert", cert, "--trust", junk]
        result = yield run_twistd(args, self.base)
        self.assertOneLine(
            result, f"twistd: error: no certificate found in trust anchor file {junk}"
        )
        if os.geteuid() != 0:  # root reads a mode-000 file anyway
            os.chmod(junk, 0)
            out, err, code = yield run_twistd(args, self.base)
            self.assertEqual(code, 1)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith("twistd: error: "), err)

    @defer.inlineCallbacks
    def test_bad_listen_endpoint(self) -> Any:
        cert = self.issue("alice@example.com")
        args = ["sixchat", "--cert", cert, "--trust", self.ca, "--listen", "bogus:1"]
        result = yield run_twistd(args, self.base)
        self.assertOneLine(
            result, "twistd: error: --listen 'bogus:1': Unknown endpoint type: 'bogus'"
        )
        irp = ["sixchat-irp", "--cert", self.server_p12, "--ca-dir", self.ca_dir,
               "--listen", "tcp:notaport"]  # fmt: skip
        out, err, code = yield run_twistd(irp, self.base)
        self.assertEqual(code, 1)
        self.assertRegex(err, r"^twistd: error: --listen 'tcp:notaport': [^\n]+\n$")

    @defer.inlineCallbacks
    def test_port_in_use(self) -> Any:
        cert = self.issue("alice@example.com")
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        listen = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        data = os.path.join(self.base, "data")
        result = yield run_twistd(
            ["sixchat", "--cert", cert, "--trust", self.ca, "--listen", listen, "--data-dir", data],
            self.base,
        )
        self.assertOneLine(
            result,
            f"sixchat: error: cannot listen on {listen}: Address already in use "
            "(is another agent running? choose another --listen)",
        )
        irp = ["sixchat-irp", "--cert", self.server_p12, "--ca-dir", self.ca_dir,
               "--db", os.path.join(self.base, "irp.sqlite"), "--listen", listen]  # fmt: skip
        result = yield run_twistd(irp, self.base)
        self.assertOneLine(
            result,
            f"sixchat-irp: error: cannot listen on {listen}: Address already in use "
            "(is another registry running? choose another --listen)",
        )

    @defer.inlineCallbacks
    def test_data_dir_locked_by_running_agent(self) -> Any:
        cert = self.issue("alice@example.com")
        data = os.path.join(short_tempdir(self), "data")
        args = ["sixchat", "--cert", cert, "--trust", self.ca, "--data-dir", data,
                "--listen", "tcp:0:interface=127.0.0.1"]  # fmt: skip
        first = spawn("first", [*twistd_argv(), "-n", "--pidfile=", *args], self.base)
        self.addCleanup(first.terminate)
        yield first.wait(r"user agent \S+ \(node \S+\) ready", timeout=START_TIMEOUT)
        result = yield run_twistd(args, self.base)
        self.assertOneLine(
            result,
            f"sixchat: error: another sixchat agent (PID {first.pid}) is already running on "
            f"{data}: stop it, or give this one another --data-dir",
        )
        self.assertTrue(first.running)
        yield first.terminate()

    @defer.inlineCallbacks
    def test_registry_missing_cert(self) -> Any:
        result = yield run_twistd(
            ["sixchat-irp", "--cert", "missing.p12", "--ca-dir", self.ca_dir], self.base
        )
        self.assertOneLine(result, "twistd: error: missing.p12 does not exist")

    @defer.inlineCallbacks
    def test_damaged_message_store(self) -> Any:
        """A setup error found once the reactor runs: still one line and exit 1."""
        cert = self.issue("alice@example.com")
        data = os.path.join(short_tempdir(self), "data")
        os.mkdir(data, 0o700)
        argv = ["sixchat", "--cert", cert, "--trust", self.ca, "--data-dir", data,
                "--listen", "tcp:0:interface=127.0.0.1"]  # fmt: skip
        # a SQLite header, then damage: found when the store opens, with the reactor running
        with open(os.path.join(data, "messages.sqlite"), "wb") as f:
            f.write(b"SQLite format 3\x00" + b"these are not my messages\n" * 200)
        result = yield run_twistd(argv, self.base)
        self.assertOneLine(
            result, f"sixchat: error: cannot start on data directory {data}: file is not a database"
        )
        # no SQLite header and no store.key: damaged, or encrypted with its key file lost
        with open(os.path.join(data, "messages.sqlite"), "w") as f:
            f.write("these are not my messages\n")
        result = yield run_twistd(argv, self.base)
        self.assertOneLine(
            result,
            f"twistd: error: the message store in {data} is not a plain SQLite database and "
            "there is no store.key beside it: it is damaged, or encrypted and its key file is "
            "lost (restore both from a backup, or move the store away to start afresh)",
        )

    @defer.inlineCallbacks
    def test_registry_database_not_a_database(self) -> Any:
        db = os.path.join(self.base, "notes.sqlite")
        with open(db, "w") as f:
            f.write("shopping list\n")
        result = yield run_twistd(
            ["sixchat-irp", "--cert", self.server_p12, "--ca-dir", self.ca_dir, "--db", db,
             "--listen", "tcp:0:interface=127.0.0.1"],
            self.base,
        )  # fmt: skip
        self.assertOneLine(
            result, f"sixchat-irp: error: cannot use registry database {db}: file is not a database"
        )
