"""
The command line as a client of the running agent: the options that choose the agent
(C{--data-dir}, C{--as}), running a command's body against it under C{task.react} with errors
brought back to L{sixchat.cli.main} as one line, and the timeout on every call. Twisted is
imported only inside the functions that run, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from sixchat.cli import ArgumentParser, CommandError

__all__ = [
    "CALL_TIMEOUT",
    "add_connection_options",
    "add_json_option",
    "message_limit",
    "positive_float",
    "timed",
    "with_agent",
]

#: How long a one-shot command waits for the agent's answer.
CALL_TIMEOUT = 60.0


#: Options of C{twistd sixchat}, given by mistake to a command that talks to the agent.
_AGENT_OPTIONS = ("--cert", "--trust", "--registry", "--listen", "--password-file", "--crl")


def add_connection_options(p: argparse.ArgumentParser) -> None:
    if isinstance(p, ArgumentParser):
        for option in _AGENT_OPTIONS:
            p.option_hints[option] = (
                f"{option} is an option of the agent (twistd -n sixchat {option} …); this "
                "command talks to the running agent, chosen with --as IDENTITY or --data-dir DIR"
            )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the agent's data directory (default: the only agent under "
        "$XDG_DATA_HOME/sixchat/, or the one chosen with --as)",
    )
    p.add_argument(
        "--as",
        dest="identity",
        metavar="IDENTITY",
        help="use the agent of this identity ($XDG_DATA_HOME/sixchat/IDENTITY/)",
    )


def add_json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def with_agent(
    args: argparse.Namespace,
    body: Callable[[Any, Any], Awaitable[int | None]],
    interrupted: int = 130,
) -> int:
    """
    Connect to the agent, run C{body(reactor, client)} under C{task.react}, and return its
    status. Errors raised inside the reactor are re-raised here, so L{sixchat.cli.main} prints
    them as one line. C{interrupted} is the status when Ctrl-C stops the reactor first.
    """
    from twisted.internet import defer, task

    from sixchat.agent.control.client import connect_control
    from sixchat.agent.datadir import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir, args.identity)
    outcome: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        # Ctrl-C stops the reactor, which closes the connection to the agent: that is the
        # user leaving, not the agent going away, so an error raised after it is not shown.
        stopping: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        try:
            client = await connect_control(reactor, data_dir)
            try:
                status = await body(reactor, client)
                outcome["status"] = 0 if status is None else status
            finally:
                if client.transport is not None:
                    client.transport.loseConnection()
        except Exception as e:
            if not stopping:
                outcome["error"] = e

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome.get("status", interrupted))


def timed(reactor: Any, d: Any, seconds: float) -> Any:
    """Give up on the agent after C{seconds}, with a clear message."""
    from twisted.internet import defer

    def timed_out(failure: Any) -> None:
        failure.trap(defer.TimeoutError)
        raise CommandError(f"the agent did not answer within {seconds:.0f} s")

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def message_limit(text: str) -> int:
    from sixchat.cli import positive_int

    value = positive_int(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError("at most 10000")
    return value
