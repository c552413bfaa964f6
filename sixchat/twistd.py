"""
How the twistd plugins (C{twistd sixchat}, C{twistd sixchat-irp}) report a person's mistake:
one line on stderr and exit status 1, never twistd's usage text or a traceback
(docs/admin.md, "Start-up errors").

  - B{Option errors} (C{usage.UsageError} from a plugin's C{Options}: a missing C{.p12}, a
    wrong password, an unknown option, …) become C{twistd: error: MESSAGE}. twistd itself
    prints its whole usage before the message (C{twisted.application.app.run} catches
    C{usage.error}); L{OneLineOptions} raises C{SystemExit} instead when it is parsed as a
    twistd sub-command, which passes that handler by, and Python prints its text on stderr
    and exits 1 (twistd has not started logging yet). Parsed on their own (tests, embedders)
    the options still raise C{UsageError}.
  - B{Start-up failures} (a L{SixchatError} from C{makeService}, C{privilegedStartService} or
    C{startService}: the data directory locked by a running agent, the port in use, …)
    become C{PROGRAM: error: MESSAGE} on the real stderr (twistd has redirected
    C{sys.stderr} into its log by then) and exit status 1 (L{guarded}). Daemonised (without
    C{-n}) stderr is C{/dev/null}: the line goes to the log, and the exception to twistd's
    start-up pipe, which the parent process prints as one line.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from sixchat.cli import did_you_mean
from sixchat.errors import SixchatError

__all__ = ["OneLineOptions", "StartupGuard", "check_listen", "guarded"]

log = Logger(namespace="sixchat")


class OneLineOptions(usage.Options):
    """
    Base of the plugins' C{Options}: under twistd (a C{parent} is set), a C{UsageError}
    becomes C{SystemExit("twistd: error: …")}.

    @cvar tapname: the plugin's name, for the C{--help} hint after an unknown option.
    """

    tapname = ""

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            text = str(e)
            unknown = re.fullmatch(r"option (--[^\s=]+) not recognized", text)
            if unknown is not None:
                known = ["--" + name.rstrip("=") for name in self.longOpt]
                text += did_you_mean(unknown[1], known)
            if "not recognized" in text or "requires argument" in text:
                text += f" (twistd {self.tapname} --help lists the options)"
            raise SystemExit(f"twistd: error: {text}") from None


def _exit_failed() -> None:
    """At interpreter exit (after twistd has stopped and removed its PID file): status 1."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(1)


def fail(program: str, error: Exception, nodaemon: bool) -> NoReturn:
    """Report a start-up failure in one line and end the process (see the module docstring)."""
    line = f"{program}: error: {error}"
    if not nodaemon:
        log.critical("{line}", line=line)
        raise error
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(line + "\n")
    stderr.flush()
    raise SystemExit(1)


class StartupGuard(MultiService):
    """A plugin's service, with a L{SixchatError} at start-up reported by L{fail}."""

    def __init__(self, child: IService, program: str, nodaemon: bool, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.program = program
        self.nodaemon = nodaemon
        child.setServiceParent(self)
        if hasattr(child, "on_fatal"):
            child.on_fatal = self.fatal

    def fatal(self, line: str) -> None:
        """
        The running service cannot go on (e.g. another agent holds our node): say so in one
        line, stop the reactor, and make the process exit 1 once twistd is done.
        """
        log.critical("{program}: error: {line}", program=self.program, line=line)
        if self.nodaemon:
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"{self.program}: error: {line}\n")
            stderr.flush()
        atexit.register(_exit_failed)
        self.reactor.stop()

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except SixchatError as e:
            fail(self.program, e, self.nodaemon)

    def startService(self) -> None:
        try:
            super().startService()
        except SixchatError as e:
            fail(self.program, e, self.nodaemon)


def guarded(
    make: Callable[[Any], IService], program: str, options: Any, reactor: Any
) -> IService:
    """
    C{make(options)} under a L{StartupGuard} that stops C{reactor} on a fatal error;
    C{options.parent} is twistd's config.
    """
    parent = getattr(options, "parent", None)
    nodaemon = bool(parent["nodaemon"]) if parent is not None else True
    try:
        child = make(options)
    except SixchatError as e:
        fail(program, e, nodaemon)
    return StartupGuard(child, program, nodaemon, reactor)


def check_listen(text: str) -> None:
    """
    C{--listen}: a server endpoint string Twisted can parse (nothing is bound here).

    @raise usage.UsageError: with Twisted's reason (unknown endpoint type, bad port, …).
    """
    from twisted.internet import endpoints, task

    try:
        endpoints.serverFromString(task.Clock(), text)
    except (ValueError, TypeError) as e:
        raise usage.UsageError(f"--listen {text!r}: {e}") from None
