"""
Real processes for integration tests: C{twistd -n sixchat …} and the C{sixchat} CLI, driven
through the reactor (never blocking it), on loopback with ephemeral ports.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

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


class _Watcher(protocol.ProcessProtocol):
    def __init__(self, ready_pattern: re.Pattern[bytes] | None) -> None:
        self.output = b""
        self.ready_pattern = ready_pattern
        self.ready: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def _check(self) -> None:
        if self.ready_pattern is not None and not self.ready.called:
            match = self.ready_pattern.search(self.output)
            if match:
                self.ready.callback(match)

    def processEnded(self, reason: Failure) -> None:
        code = (
            reason.value.exitCode
            if isinstance(reason.value, ProcessDone | ProcessTerminated)
            else None
        )
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(
                    f"process ended (exit {code}) before it was ready:\n"
                    + self.output.decode(errors="replace")
                )
            )
        self.ended.callback(code)


class TwistdProcess:
    """A C{twistd -n PLUGIN …} in its own process, ready once its log shows C{READY}."""

    plugin = ""
    READY = re.compile(rb"listening on (\S+) port (\d+)")

    def __init__(self, workdir: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.args = args
        self.env = env or {}
        self.watcher = _Watcher(self.READY)
        self.port = 0
        self.transport: Any = None

    def argv(self) -> list[str]:
        return list(self.args)

    @defer.inlineCallbacks
    def start(self, timeout: float = 30) -> Any:
        argv = [*twistd_argv(), "-n", "--pidfile=", self.plugin, *self.argv()]
        self.transport = reactor.spawnProcess(
            self.watcher,
            sys.executable,
            argv,
            env=child_env(self.workdir, **self.env),
            path=self.workdir,
        )
        timer = reactor.callLater(timeout, self.watcher.ready.cancel)
        try:
            match = yield self.watcher.ready
        finally:
            if timer.active():
                timer.cancel()
        self.port = int(match.group(2))
        return self.port

    @property
    def log(self) -> str:
        return self.watcher.output.decode(errors="replace")

    def stop(self) -> defer.Deferred[int | None]:
        if not self.watcher.ended.called:
            try:
                self.transport.signalProcess("TERM")
            except Exception:  # already gone
                pass
        return self.watcher.ended


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


class Registry(TwistdProcess):
    """A C{twistd -n sixchat-irp} registry."""

    plugin = "sixchat-irp"
    READY = re.compile(rb"IRP registry for .* listening on (\S+) port (\d+)")


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
