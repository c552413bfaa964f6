"""
Real processes for integration tests: C{twistd -n sixchat …} and the C{sixchat} CLI, driven
through the reactor (never blocking it), on loopback with ephemeral ports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial import unittest

REPO = Path(__file__).resolve().parents[2]


def child_env(cwd: str | None = None, **extra: str) -> dict[str, str]:
    """
    The environment for children: this interpreter's, with the source tree importable and,
    given the child's working directory, C{XDG_DATA_HOME} inside it (so default data
    directories never land in the real home).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIXCHAT_")}
    if cwd is not None:
        env["XDG_DATA_HOME"] = os.path.join(os.path.abspath(cwd), "xdg-data")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def twistd_argv() -> list[str]:
    """Run twistd with the same interpreter (works in a venv and from a source tree)."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


#: Bounds for waits (seconds). Generous for a loaded 2-core CI machine; a healthy run takes
#: a fraction of each.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def short_tempdir(case: unittest.TestCase, prefix: str = "sc-") -> str:
    """A fresh directory directly under /tmp (short enough for UNIX socket paths), removed
    when the test ends."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def bounded(d: defer.Deferred[Any], seconds: float, what: str, context: Callable[[], str]) -> Any:
    """
    C{d}, failing with an C{AssertionError} naming C{what} (and the output C{context} gives)
    if it has not fired within C{seconds}. C{d} must be the caller's own Deferred: it is
    cancelled on timeout.
    """

    def timed_out(failure: Failure) -> None:
        failure.trap(defer.TimeoutError, defer.CancelledError)
        raise AssertionError(f"{what}: nothing within {seconds:g} s\n{context()}")

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


@defer.inlineCallbacks
def eventually(probe: Callable[[], Any], seconds: float, what: str, interval: float = 0.25) -> Any:
    """
    Call C{probe} (which may return a Deferred) until it returns something true, at most
    C{seconds}; returns that value. The last value is shown on failure.
    """
    deadline = reactor.seconds() + seconds
    last: Any = None
    while True:
        last = yield defer.maybeDeferred(probe)
        if last:
            return last
        if reactor.seconds() >= deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s; last: {last!r:.2000}")
        yield task.deferLater(reactor, interval, lambda: None)


class ProcessGone(Exception):
    """The process ended while something was still waiting for its output."""


class ChildProcess(protocol.ProcessProtocol):
    """
    A child process whose output (stdout and stderr together) is kept line by line and can
    be waited on: L{wait} fires as soon as a pattern has appeared C{count} times, from the
    very chunk of output that completes it (no polling), so a test can act at a precise
    moment, e.g. SIGKILL a receiver after its 30th message.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._partial = b""
        self._waits: list[list[Any]] = []  # [regex, count, seen, deferred]
        self._enders: list[defer.Deferred[Any]] = []
        self.transport: Any = None
        self.pid: int | None = None
        self.exit: Any = None  # ("exit", code) or ("signal", number) once ended
        self.running = False

    # output ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.running = True
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._line(raw.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        self.lines.append(line)
        for wait in list(self._waits):
            match = wait[0].search(line)
            if match:
                wait[2] += 1
                if wait[2] >= wait[1]:
                    self._waits.remove(wait)
                    wait[3].callback(match)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 60) -> str:
        return f"--- last lines of {self.name} ---\n" + "\n".join(self.lines[-n:])

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    def wait(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> Any:
        """Fires with the match once C{pattern} has been seen C{count} times in all."""
        regex = re.compile(pattern)
        seen = self.count(pattern)
        d: defer.Deferred[Any] = defer.Deferred()
        if seen >= count:
            match = [m for m in map(regex.search, self.lines) if m][count - 1]
            d.callback(match)
            return d
        if not self.running and self.exit is not None:
            d.errback(ProcessGone(f"{self.name} ended ({self.exit})\n{self.tail()}"))
            return d
        self._waits.append([regex, count, seen, d])
        return bounded(d, timeout, f"{self.name}: {pattern!r} x{count}", self.tail)

    # the end -----------------------------------------------------------------------------

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        value = reason.value
        if isinstance(value, ProcessTerminated) and value.signal is not None:
            self.exit = ("signal", value.signal)
        elif isinstance(value, ProcessDone | ProcessTerminated):
            self.exit = ("exit", value.exitCode)
        else:
            self.exit = ("unknown", repr(value))
        self.running = False
        waits, self._waits = self._waits, []
        for wait in waits:
            wait[3].errback(ProcessGone(f"{self.name} ended ({self.exit})\n{self.tail()}"))
        enders, self._enders = self._enders, []
        for d in enders:
            d.callback(self.exit)

    def ended(self, timeout: float = STOP_TIMEOUT) -> Any:
        """Fires with C{("exit", code)} or C{("signal", n)} once the process is gone."""
        d: defer.Deferred[Any] = defer.Deferred()
        if not self.running:
            d.callback(self.exit)
            return d
        self._enders.append(d)
        return bounded(d, timeout, f"{self.name} to end", self.tail)

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"STOP"}, C{"CONT"}, …). By number: Twisted's
        C{signalProcess} knows only a few names and refuses the others.
        """
        number = int(signal.Signals["SIG" + name])
        if self.running:
            try:
                self.transport.signalProcess(number)
            except ProcessExitedAlready:  # already gone
                pass

    @defer.inlineCallbacks
    def terminate(self, grace: float = STOP_TIMEOUT) -> Any:
        """SIGTERM; SIGKILL if still there after C{grace} seconds. Never fails."""
        if not self.running:
            return self.exit
        self.signal("TERM")
        try:
            result = yield self.ended(grace)
        except AssertionError:
            self.signal("KILL")
            result = yield self.ended(grace).addErrback(lambda _: None)
        return result


def spawn(
    name: str, argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None
) -> ChildProcess:
    """
    The one way tests start a process: C{argv} (C{argv[0]} is ignored: this interpreter runs
    it) in C{cwd} with L{child_env}, as a L{ChildProcess} named C{name} in failure messages.
    """
    proc = ChildProcess(name)
    reactor.spawnProcess(proc, sys.executable, argv, env=child_env(cwd, **(env or {})), path=cwd)
    return proc


class TwistdProcess:
    """
    A C{twistd -n PLUGIN …} in its own process (a L{ChildProcess}), ready once its log
    shows C{READY}; for tests that need one run of a process and its port.
    """

    plugin = ""
    READY = r"listening on (\S+) port (\d+)"

    def __init__(self, workdir: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.args = args
        self.env = env or {}
        self.proc: ChildProcess | None = None
        self.port = 0

    def argv(self) -> list[str]:
        return list(self.args)

    @defer.inlineCallbacks
    def start(self, timeout: float = START_TIMEOUT) -> Any:
        argv = [*twistd_argv(), "-n", "--pidfile=", self.plugin, *self.argv()]
        self.proc = spawn(f"twistd {self.plugin}", argv, self.workdir, self.env)
        match = yield self.proc.wait(self.READY, timeout=timeout)
        self.port = int(match.group(2))
        return self.port

    @property
    def log(self) -> str:
        return self.proc.log if self.proc is not None else ""

    def stop(self) -> Any:
        """SIGTERM (SIGKILL if stuck); fires once the process is gone."""
        return self.proc.terminate() if self.proc is not None else defer.succeed(None)


class Agent(TwistdProcess):
    """A C{twistd -n sixchat} user agent."""

    plugin = "sixchat"

    def argv(self) -> list[str]:
        args = list(self.args)
        if "--data-dir" not in args:
            # Never the real ~/.local/share; and short, since the control socket lives in it
            # and UNIX socket paths are limited to 107 bytes (trial's temp paths are long).
            import tempfile

            args += ["--data-dir", tempfile.mkdtemp(prefix="sixchat-agent-")]
        self.data_dir = args[args.index("--data-dir") + 1]
        return args

    @defer.inlineCallbacks
    def start(self, timeout: float = START_TIMEOUT) -> Any:
        """
        Ready once it also logged "ready": it listens before its store is open and accepts
        nothing until then (connections wait in the listen queue), so a test's timings
        start from an agent that serves.
        """
        port = yield super().start(timeout)
        assert self.proc is not None
        yield self.proc.wait(r"user agent \S+ \(node \S+\) ready", timeout=timeout)
        return port


class Registry(TwistdProcess):
    """A C{twistd -n sixchat-irp} registry."""

    plugin = "sixchat-irp"
    READY = r"IRP registry for .* listening on (\S+) port (\d+)"


def run_cli(
    args: list[str], cwd: str | None = None, env: dict[str, str] | None = None
) -> defer.Deferred[tuple[str, str, int]]:
    """Run C{python -m sixchat.cli ARGS}; fires with (stdout, stderr, exit code)."""
    from twisted.internet.utils import getProcessOutputAndValue

    d = getProcessOutputAndValue(
        sys.executable, ["-m", "sixchat.cli", *args], env=child_env(cwd, **(env or {})), path=cwd
    )
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


def run_twistd(
    args: list[str], cwd: str, env: dict[str, str] | None = None
) -> defer.Deferred[tuple[str, str, int]]:
    """Run twistd to completion (for start-up errors); fires with (stdout, stderr, code)."""
    from twisted.internet.utils import getProcessOutputAndValue

    argv = twistd_argv()
    d = getProcessOutputAndValue(
        argv[0], [*argv[1:], "-n", "--pidfile=", *args], env=child_env(cwd, **(env or {})), path=cwd
    )
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))
