"""
C{sixchat web [--open]}: print the link to the running agent's web UI (with this start's
token, from C{<data-dir>/web-url}, which only the user can read), and with C{--open} open it in
the default browser. The agent serves the UI only when started with C{--web ENDPOINT}
(docs/web.md).
"""

from __future__ import annotations

import argparse
import fcntl
import os
from typing import Any

from sixchat.cli import CommandError
from sixchat.cli.client import add_connection_options

__all__ = ["read_web_url", "register", "run_web"]


def _agent_running(data_dir: str) -> bool:
    """Whether an agent holds the data directory's lock (L{sixchat.agent.datadir})."""
    try:
        fd = os.open(os.path.join(data_dir, "agent.lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def read_web_url(data_dir: str) -> str:
    """
    The link the running agent wrote.

    @raise CommandError: no agent, or an agent without C{--web}, in one line.
    """
    from sixchat.web.server import URL_FILE

    path = os.path.join(data_dir, URL_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            url = f.readline().strip()
    except FileNotFoundError:
        if not _agent_running(data_dir):
            raise CommandError(f"no agent is running on {data_dir}") from None
        raise CommandError(
            f"the agent on {data_dir} serves no web UI: restart it with --web ENDPOINT "
            "(e.g. --web tcp:8605:interface=127.0.0.1)"
        ) from None
    if not _agent_running(data_dir):
        raise CommandError(f"no agent is running on {data_dir} ({path} is from an earlier run)")
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"{path} holds no link; restart the agent")
    return url


def run_web(args: argparse.Namespace) -> int:
    from sixchat.agent.datadir import resolve_data_dir

    url = read_web_url(resolve_data_dir(args.data_dir, args.identity))
    print(url)
    if args.open:
        import webbrowser

        if not webbrowser.open(url):
            raise CommandError("no browser could be started; open the link above yourself")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "web",
        help="print (or open) the link to the agent's web UI",
        description="Print the link to the running agent's web UI, with this start's token "
        "(the agent must run with --web ENDPOINT). Anyone with the link can use your agent "
        "until it stops: do not share it.",
    )
    p.add_argument("--open", action="store_true", help="also open it in the default browser")
    add_connection_options(p)
    p.set_defaults(handler=run_web)
