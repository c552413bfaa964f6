"""
C{sixchat send-file} and C{sixchat files}: files through the running agent (spec §8.7;
docs/files.md). Exit statuses as C{send}: 0 queued (or delivered with C{--wait}), 1 failed or
an error, 2 a usage error, 3 still on its way after C{--wait S}, 130 interrupted.

With C{--wait} on a terminal (standard error a TTY, no C{--json}) a progress bar (tqdm:
percent, rate, ETA) follows the agent's C{file} events for the transfer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sixchat.cli import UsageError
from sixchat.cli.client import (
    CALL_TIMEOUT,
    add_connection_options,
    add_json_option,
    positive_float,
    timed,
    with_agent,
)
from sixchat.cli.terminal import clean, out, print_json

__all__ = ["format_size", "format_transfer", "register", "run_files", "run_send_file"]


def format_size(size: Any) -> str:
    """C{1536} → C{1.5 KiB}: binary units, one decimal."""
    if not isinstance(size, int):
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def format_transfer(t: dict[str, Any]) -> str:
    """One line of C{sixchat files}; everything the peer controls is L{clean}ed."""
    arrow = "<-" if t.get("direction") == "in" else "->"
    size = t.get("size")
    received = t.get("received")
    progress = ""
    if isinstance(size, int) and isinstance(received, int) and received < size and size:
        progress = f" {100 * received // size}%"
    resumed = f", resumed at {format_size(t['resumed_from'])}" if t.get("resumed_from") else ""
    where = f"  {clean(t.get('path'), oneline=True)}" if t.get("path") else ""
    return (
        f"{clean(t.get('id'), oneline=True)}  {arrow} {clean(t.get('peer'), oneline=True)}  "
        f"{clean(t.get('name'), oneline=True)}  {format_size(size)}  "
        f"{clean(t.get('state'), oneline=True)}{progress}{resumed}{where}"
    )


class _Progress:
    """The agent's C{file} events of one transfer, shown as a tqdm bar on standard error."""

    def __init__(self, total: int, name: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=clean(name, oneline=True)[:40],
            file=sys.stderr,
            leave=True,
        )
        self.file_id: str | None = None

    def agentEvent(self, event: dict[str, Any]) -> None:
        if event.get("type") != "file" or event.get("id") != self.file_id:
            return
        done = event.get("sent", event.get("received"))
        if event.get("state") == "delivered":
            done = self.bar.total
        if isinstance(done, int) and done >= self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self, delivered: bool) -> None:
        if delivered:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def run_send_file(args: argparse.Namespace) -> int:
    path = os.path.abspath(os.path.expanduser(args.path))
    if not os.path.isfile(path):
        raise UsageError(f"{args.path}: no such file")
    show_bar = args.wait is not None and not args.json and sys.stderr.isatty()

    async def body(reactor: Any, client: Any) -> int:
        from zope.interface import directlyProvides

        from sixchat.agent.interfaces import IAgentEvents

        bar = None
        if show_bar:
            bar = _Progress(os.path.getsize(path), os.path.basename(path))
            directlyProvides(bar, IAgentEvents)
            client.addObserver(bar)
            await timed(reactor, client.subscribe(["file"], args.to), CALL_TIMEOUT)
        result = await timed(reactor, client.sendFile(args.to, path), CALL_TIMEOUT)
        fid = result.get("id")
        peer = clean(result.get("peer", args.to), oneline=True)
        if args.wait is None:
            if args.json:
                print_json(result)
            else:
                out(f"queued file {clean(fid)} ({format_size(result.get('size'))}) to {peer}")
            return 0
        if bar is not None:
            bar.file_id = fid
        try:
            status = await timed(reactor, client.waitDelivered(fid, args.wait), args.wait + 60)
        finally:
            if bar is not None:
                bar.close(False)
        state = status.get("state")
        if state == "delivered":
            outcome, code = "delivered", 0
        elif state in ("failed", "expired"):
            outcome, code = "failed", 1
        else:
            outcome, code = "pending", 3
        if args.json:
            print_json({"file": result, "status": status, "outcome": outcome})
        elif outcome == "delivered":
            out(f"delivered file {clean(fid)} to {peer}")
        elif outcome == "failed":
            reason = status.get("reason")
            why = f": {clean(reason, oneline=True)}" if reason else ""
            out(f"FAILED file {clean(fid)} to {peer}: {clean(state)}{why}")
        else:
            out(f"not delivered after {args.wait:g} s: file {clean(fid)} to {peer} is {state}")
        return code

    return with_agent(args, body)


def run_files(args: argparse.Namespace) -> int:
    async def body(reactor: Any, client: Any) -> int:
        transfers = await timed(reactor, client.files(), CALL_TIMEOUT)
        if args.json:
            print_json(transfers)
        elif not transfers:
            print("no files", file=sys.stderr)
        else:
            for transfer in transfers:
                out(format_transfer(transfer))
        return 0

    return with_agent(args, body)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "send-file",
        help="send a file through the running agent",
        description="Queue a file in the running agent, which sends it straight to the peer "
        "(resuming after lost connections) until the peer's receipt arrives. The file is read "
        "when it is sent: leave it unchanged until then. Exit statuses as 'send'.",
    )
    p.add_argument("to", metavar="IDENTITY", help="the recipient, e.g. bob@example.com")
    p.add_argument("path", metavar="PATH", help="the file to send")
    p.add_argument(
        "--wait",
        type=positive_float,
        metavar="S",
        help="wait up to S seconds for the receipt (with a progress bar on a terminal)",
    )
    add_json_option(p, "print the agent's answer as JSON")
    add_connection_options(p)
    p.set_defaults(handler=run_send_file)

    p = subparsers.add_parser(
        "files",
        help="list file transfers (both directions)",
        description="Every file transfer the agent knows, oldest first: '<-' received (with "
        "where it was stored), '->' sent (with its delivery state).",
    )
    add_json_option(p, "print the transfers as JSON (docs/files.md lists the fields)")
    add_connection_options(p)
    p.set_defaults(handler=run_files)
