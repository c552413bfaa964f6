"""
An atheris (libFuzzer) harness for the record layer + XML codec + handshake entry point, and
the registry's framing: the target is L{sixchat.test.fuzz_target.run} (its docstring gives
the input format and the invariants it checks).

Not run by CI. To fuzz::

    pip install -e '.[test,fuzz]' --config-settings editable_mode=compat
    python fuzz/atheris_harness.py sixchat/test/fuzz_corpus/ -max_total_time=600 \\
        -artifact_prefix=fuzz/findings/ -max_len=70000

libFuzzer adds every input that reaches new code to the first directory given (the corpus);
a crash or timeout is written under C{-artifact_prefix}. Add each one found to
C{sixchat/test/fuzz_corpus/} as C{crash-<what>.bin} or C{hang-<what>.bin}, with a line in
that directory's README: C{test_fuzz_corpus} replays every file there on every test run.
Without atheris installed this file still imports (so tools can collect it) and exits with
a message when run.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sixchat.test.fuzz_target import run  # noqa: E402


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer calls
    run(data)


def main(argv: list[str]) -> int:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        sys.stderr.write("atheris is not installed: pip install -e '.[fuzz]'\n")
        return 2
    atheris.instrument_all()
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
