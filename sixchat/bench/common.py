"""
What every worker process shares: reporting to the parent, commands from it, resource
readings, and small Twisted helpers.

A worker talks to the parent over its standard streams, one JSON object per line: it writes
C{{"event": ...}} lines to stdout and reads command lines from stdin. Standard input reaching
EOF (the parent ended or died) stops the worker, and every worker also has a hard deadline,
so no benchmark process can outlive its run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ReactorNotRunning

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

#: Loopback source addresses initiators spread their connections over, so that many
#: handshakes in flight stay inside the responder's per-source limit (§9.2: 16 per IPv4
#: address) without changing its configuration. Linux routes all of 127/8 to lo.
SOURCE_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 18))


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def rss_kib() -> float:
    """Resident set size of this process, KiB, after a full garbage collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (default: this one)."""
    user, system = cpu_times(pid)
    return user + system


def cpu_times(pid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (default: this one); NaNs if it is gone."""
    if pid is None or pid == os.getpid():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class Commands:
    """
    Reads command lines from stdin through the reactor and hands them to C{handler}; EOF
    (the parent ended, or died) stops the reactor. C{wait(name)} returns a Deferred for the
    next command of that name. One per process: L{run_main} makes it, L{commands} returns it.
    """

    def __init__(self, reactor: Any, handler: Callable[[dict[str, Any]], Any] | None = None):
        from twisted.internet import stdio
        from twisted.protocols.basic import LineOnlyReceiver

        self.reactor = reactor
        self.handler = handler
        self._waiting: dict[str, list[defer.Deferred[dict[str, Any]]]] = {}
        commands = self

        class _Lines(LineOnlyReceiver):
            delimiter = b"\n"

            def lineReceived(self, line: bytes) -> None:
                commands._line(line)

            def connectionLost(self, reason: Any = None) -> None:
                # The parent closed our stdin: stop, unless the worker is stopping already
                # (reactor.running stays true during shutdown, when stop() raises).
                with contextlib.suppress(ReactorNotRunning):
                    reactor.stop()

        self._stdio = stdio.StandardIO(_Lines(), reactor=reactor)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        command = json.loads(line)
        waiting = self._waiting.pop(command.get("cmd", ""), [])
        for d in waiting:
            d.callback(command)
        if not waiting and self.handler is not None:
            self.handler(command)

    def wait(self, name: str) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiting.setdefault(name, []).append(d)
        return d


_commands: list[Commands] = []


def commands(reactor: Any, handler: Callable[[dict[str, Any]], Any] | None = None) -> Commands:
    """This process's L{Commands} (made by L{run_main}); C{handler} replaces its handler."""
    if not _commands:
        _commands.append(Commands(reactor))
    if handler is not None:
        _commands[0].handler = handler
    return _commands[0]


def deadline(reactor: Any, seconds: float) -> None:
    """Exit hard after C{seconds}: a hung benchmark must never outlive the run."""

    def expire() -> None:
        emit("error", error=f"worker deadline of {seconds:.0f} s reached")
        os._exit(3)

    reactor.callLater(seconds, expire)


def run_main(reactor: Any, main: Callable[[], Any], limit: float) -> None:
    """Run C{main()} (a coroutine function) under C{reactor}; report its failure."""
    deadline(reactor, limit)
    outcome = {"failed": False}

    def start() -> None:
        commands(reactor)  # stdin EOF stops every worker, whatever it is doing
        d = defer.ensureDeferred(main())

        def failed(failure: Any) -> None:
            outcome["failed"] = True
            emit("error", error=failure.getTraceback())

        def done(_: Any) -> None:
            if reactor.running:
                reactor.stop()

        d.addErrback(failed).addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run()
    # Exit at once: thread pools (SQLite stores) would otherwise be joined, and nothing a
    # worker holds needs an orderly shutdown (its data is thrown away).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if outcome["failed"] else 0)


def quiet_logs() -> None:
    """
    Log warnings and errors to stderr (the worker's log file), drop the rest. Without an
    observer Twisted would keep the last 64k events in memory, which would be counted as
    per-session memory and is not what a deployed process (twistd logging to a file) does;
    writing every info line would measure the disk instead.
    """
    import sys

    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
