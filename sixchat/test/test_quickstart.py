"""
docs/quickstart.md runs end to end, as written: every C{sh} block of the page, in order, each
command through C{/bin/sh} in one directory (so pipes, C{$(...)}, C{>} and C{&&} work as for a
reader), with C{sixchat} and C{twistd} on the C{PATH} running this source tree.

The commands are read from the page itself, so the page and this test cannot drift apart.
What the test changes, and only that:

  - the ports 4604, 4605, 4606 and 4607 become free ephemeral ports (several test runs, or a real
    agent on the machine, must not collide); everything else stays loopback as written;
  - C{twistd -n …} stays in the foreground, as in the reader's extra shell: it runs in the
    background until it logs that it is ready (and registered, with C{--registry});
  - C{sixchat watch} runs until the end of its block, then gets Ctrl-C (SIGINT) and must
    exit 0; every other command gets an empty standard input (C{chat} leaves at its end)
    and must exit 0 within its time;
  - HTML comments steer the rest: C{<!-- quickstart-test: skip … -->} skips the next block
    (the install), C{<!-- quickstart-test: stop-agents -->} stops the running agents, as the
    text asks the reader to.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sixchat.test.processes import REPO, START_TIMEOUT, ChildProcess, child_env, short_tempdir

QUICKSTART = os.path.join(REPO, "docs", "quickstart.md")

#: How long one foreground command may take (a loaded 2-core machine).
COMMAND_TIMEOUT = 90.0

_DIRECTIVE = re.compile(r"<!--\s*quickstart-test:\s*([\w-]+)")


@dataclass
class Step:
    """A block of commands (C{kind} "block") or a directive (C{kind} "stop-agents")."""

    kind: str
    commands: list[str] = field(default_factory=list)
    line: int = 0


def read_steps(path: str) -> list[Step]:
    """The page's C{sh} blocks as commands (continuation lines joined), and directives."""
    steps: list[Step] = []
    skip_next = False
    block: list[str] | None = None
    start = 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if block is None:
            match = _DIRECTIVE.search(line)
            if match:
                if match.group(1) == "skip":
                    skip_next = True
                else:
                    steps.append(Step(match.group(1), line=number))
            elif line.strip() == "```sh":
                block, start = [], number
            continue
        if line.strip() == "```":
            if not skip_next:
                steps.append(Step("block", _commands(block), start))
            skip_next = False
            block = None
            continue
        block.append(line)
    return steps


def _commands(lines: list[str]) -> list[str]:
    commands, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReadStepsTests(unittest.TestCase):
    def test_the_page_has_what_the_test_relies_on(self) -> None:
        steps = read_steps(QUICKSTART)
        commands = [c for s in steps if s.kind == "block" for c in s.commands]
        self.assertIn("stop-agents", [s.kind for s in steps])
        self.assertFalse(any("pip install" in c for c in commands))  # skipped
        self.assertIn("sixchat pki show bob.p12 --password-file bob.pw", commands)
        # continuation lines are joined into one command
        registry = [c for c in commands if "sixchat-irp" in c]
        self.assertEqual(len(registry), 1)
        self.assertIn("--allow-private-addresses", registry[0])
        self.assertGreaterEqual(sum(c.startswith("twistd -n") for c in commands), 5)


class ReadmeTests(unittest.TestCase):
    def test_invitation_tokens_stay_off_command_lines(self) -> None:
        """Issue 17 item 6: the README's commands pass tokens in files (--token-file), as
        the quickstart advises, never as an argument other users can see in ps."""
        steps = read_steps(os.path.join(REPO, "README.md"))
        commands = [c for s in steps if s.kind == "block" for c in s.commands]
        enrol = [c for c in commands if c.startswith("sixchat enroll")]
        self.assertEqual(len(enrol), 2)
        for command in enrol:
            self.assertIn("--token-file ", command)
            self.assertNotRegex(command, r"--token(?!-file)")
        self.assertIn("sixchat pki invite alice@example.com --db irp.sqlite > alice.token",
                      commands)  # fmt: skip


class QuickstartTests(unittest.TestCase):
    timeout = 900

    def setUp(self) -> None:
        self.base = short_tempdir(self, "qs-")
        self.ports = {p: str(free_port()) for p in ("4604", "4605", "4606", "4607")}
        bindir = os.path.join(self.base, ".bin")
        os.mkdir(bindir)
        for name, code in (
            ("sixchat", "-m sixchat.cli"),
            ("twistd", "-c 'from twisted.scripts.twistd import run; run()'"),
        ):
            path = os.path.join(bindir, name)
            with open(path, "w") as f:
                f.write(f'#!/bin/sh\nexec {sys.executable} {code} "$@"\n')
            os.chmod(path, stat.S_IRWXU)
        self.env = child_env(self.base, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
        self.agents: list[ChildProcess] = []
        self.transcript: list[str] = []

    def spawn(self, command: str, exec_: bool = False) -> ChildProcess:
        """C{command} through /bin/sh; C{exec_}: the shell becomes the command (one process,
        so that signals reach it, as Ctrl-C would)."""
        proc = ChildProcess(command[:60])
        script = "exec " + command if exec_ else command
        reactor.spawnProcess(
            proc, "/bin/sh", ["/bin/sh", "-c", script], env=self.env, path=self.base
        )
        self.addCleanup(proc.terminate)
        return proc

    def substitute(self, command: str) -> str:
        return re.sub(r"\b(4604|4605|4606|4607)\b", lambda m: self.ports[m.group(1)], command)

    def context(self) -> str:
        return "\n".join(self.transcript[-40:]) + "\n" + "\n".join(p.tail(15) for p in self.agents)

    @defer.inlineCallbacks
    def background(self, command: str) -> Any:
        proc = self.spawn(command, exec_=True)
        self.agents.append(proc)
        if "sixchat-irp" in command:
            yield proc.wait(r"IRP registry for .* listening on", timeout=START_TIMEOUT)
            return
        yield proc.wait(r"user agent \S+ \(node \S+\) ready", timeout=START_TIMEOUT)
        if "--registry" in command:
            yield proc.wait(r"registered node \S+ at ", timeout=START_TIMEOUT)

    @defer.inlineCallbacks
    def foreground(self, command: str) -> Any:
        proc = self.spawn(command)
        proc.transport.closeStdin()  # an empty standard input: `chat` leaves at its end
        result = yield proc.ended(COMMAND_TIMEOUT)
        self.transcript.append(f"$ {command}\n{proc.log}")
        if result != ("exit", 0):
            raise AssertionError(f"{command!r} ended with {result}:\n{self.context()}")
        return proc

    @defer.inlineCallbacks
    def stop_agents(self) -> Any:
        for proc in self.agents:
            if proc.running and "sixchat-irp" not in proc.name:
                proc.signal("INT")  # Ctrl-C in its shell
                yield proc.ended()
                # twistd ends by SIGINT again once it has shut down (as a shell expects)
                self.assertIn("Server Shut Down.", proc.log, proc.tail())
                self.assertNotIn("Traceback", proc.log, proc.tail())

    @defer.inlineCallbacks
    def test_quickstart_as_written(self) -> Any:
        outputs: dict[str, str] = {}
        for step in read_steps(QUICKSTART):
            if step.kind == "stop-agents":
                yield self.stop_agents()
                continue
            self.assertEqual(step.kind, "block", f"unknown directive at line {step.line}")
            watchers = []
            for written in step.commands:
                command = self.substitute(written)
                if command.startswith("twistd -n"):
                    yield self.background(command)
                elif command.startswith("sixchat watch"):
                    watchers.append(self.spawn(command, exec_=True))
                else:
                    proc = yield self.foreground(command)
                    outputs[written] = proc.log
            for watch in watchers:
                watch.signal("INT")
                result = yield watch.ended()
                self.assertEqual(result, ("exit", 0), watch.tail())
                self.assertNotIn("Traceback", watch.log)
        # What the page says the commands print, checked where it matters:
        self.assertIn("SPKI SHA-256", outputs["sixchat pki show bob.p12 --password-file bob.pw"])
        probe = next(v for k, v in outputs.items() if k.startswith("sixchat probe '[::1]"))
        self.assertIn("peer identity:  bob@example.com", probe)
        self.assertRegex(probe, r"sent message [0-9a-f]+: receipt after")
        send = next(v for k, v in outputs.items() if k.startswith("sixchat send"))
        self.assertIn("delivered", send)
        inbox = next(v for k, v in outputs.items() if k.startswith("sixchat inbox"))
        self.assertIn("-> bob@example.com  Lunch at noon?  [delivered]", inbox)
        for output in outputs.values():
            self.assertNotIn("Traceback", output)
        for proc in self.agents:
            self.assertNotIn("Traceback", proc.log, proc.tail())
            proc.signal("INT")
        for proc in self.agents:
            yield proc.ended()
