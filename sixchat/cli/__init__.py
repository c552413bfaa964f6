"""
The C{sixchat} command line.

Each subcommand lives in its own module, listed in L{SUBCOMMAND_MODULES}, which defines
C{register(subparsers)}: it adds its parser(s) to the C{argparse} subparsers object and sets a
C{handler} default, a callable taking the parsed arguments and returning an exit status (or
C{None} for 0). Modules are imported only when the parser is built, so heavy imports (Twisted's
reactor, for instance) belong inside handlers, keeping C{sixchat --help} fast.

Expected failures never show a traceback: a handler raises L{UsageError} (exit 2) or any
L{SixchatError} / L{CommandError} (exit 1), and L{main} prints one line,
C{sixchat: error: …}, to standard error.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from sixchat import __version__
from sixchat.errors import SixchatError

__all__ = [
    "SUBCOMMAND_MODULES",
    "ArgumentParser",
    "CommandError",
    "UsageError",
    "build_parser",
    "did_you_mean",
    "main",
    "positive_int",
    "warn",
]

PROG = "sixchat"

#: Modules contributing subcommands, in the order C{--help} lists them.
SUBCOMMAND_MODULES: list[str] = [
    "sixchat.cli.pki",
    "sixchat.cli.probe",
    "sixchat.cli.demo",
    "sixchat.cli.enroll",
    "sixchat.cli.agent",
    "sixchat.cli.store",
    "sixchat.cli.files",
    "sixchat.cli.web",
]


class UsageError(SixchatError):
    """The command line itself is wrong (exit status 2)."""


class CommandError(SixchatError):
    """The command was understood but could not be carried out (exit status 1)."""


#: argparse's wording for a value outside C{choices} (a command, C{--key-type}, ...); Python
#: 3.12 dropped the quotes around the listed choices.
_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>.*)' \(choose from (?P<choices>.*)\)$")


def did_you_mean(given: str, candidates: Iterable[str], quote: str = "") -> str:
    """
    C{"; did you mean X?"} with the candidate closest to a mistyped C{given}, or C{""} when
    none is close: the tail of a one-line error (commands, options, chat commands).
    """
    # Compared without their leading dashes or slash, which would make every option look
    # alike ("--cret" is not close to "--since").
    by_name = {candidate.lstrip("-/"): candidate for candidate in candidates}
    found = difflib.get_close_matches(given.lstrip("-/"), list(by_name), n=1, cutoff=0.6)
    return f"; did you mean {quote}{by_name[found[0]]}{quote}?" if found else ""


class ArgumentParser(argparse.ArgumentParser):
    """
    An C{argparse} parser whose errors are one line and never exit the process by itself,
    with a "did you mean" for a mistyped command, choice or option.

    A subcommand's parser reports the arguments it does not know itself, rather than leaving
    them to the top-level parser: the line then points at the subcommand's own C{--help},
    and a mistyped option can be matched against that subcommand's options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: What to say when one of these options is given but unknown here: an option of
        #: another program the user plainly had in mind (L{sixchat.cli.client}).
        self.option_hints: dict[str, str] = {}

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and " " in self.prog:  # a subcommand ("sixchat send"), not "sixchat"
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}{self._suggestion(message)} (see '{self.prog} --help')")

    def _suggestion(self, message: str) -> str:
        choice = _INVALID_CHOICE.search(message)
        if choice is not None:
            choices = [c.strip().strip("'") for c in choice["choices"].split(",")]
            return did_you_mean(choice["given"], choices, quote="'")
        if message.startswith("unrecognized arguments: "):
            words = message.removeprefix("unrecognized arguments: ").split()
            options = [word.partition("=")[0] for word in words if word.startswith("--")]
            for option in options:
                if option in self.option_hints:
                    return f": {self.option_hints[option]}"
            for option in options:
                guess = did_you_mean(option, self._option_string_actions)
                if guess:
                    return guess
        return ""


def positive_int(text: str) -> int:
    """An C{argparse} type for counts of days and the like."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def warn(message: str) -> None:
    """One warning line on standard error, in the same style as errors."""
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="SixChat End2End Direct: serverless, end-to-end encrypted messaging.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status instead of exiting."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version
            return e.code if isinstance(e.code, int) else 0
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return 2
        status = handler(args)
        return 0 if status is None else int(status)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SixchatError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `sixchat pki show x.p12 | head`: not an error
        # Python's documented recipe: point stdout at devnull so the exit flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
