"""
Replays every input in C{sixchat/test/fuzz_corpus/} through the fuzz target
(L{sixchat.test.fuzz_target.run}): the seeds, and every crash or hang a fuzzer ever found
(docs/security.md, "Fuzzing"). One test per file, each bounded in time, so a regression names
its input.
"""

from __future__ import annotations

import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from sixchat.test.fuzz_target import TARGETS, run

CORPUS = Path(__file__).parent / "fuzz_corpus"
#: A replay slower than this is a hang (the slowest target, the registry, takes ~5 ms).
HANG_SECONDS = 5.0


class CorpusTests(SynchronousTestCase):
    def test_corpus_is_there(self) -> None:
        files = sorted(CORPUS.glob("*.bin"))
        self.assertGreaterEqual(len(files), 20)
        targets = {TARGETS[p.read_bytes()[0] % len(TARGETS)] for p in files}
        self.assertEqual(targets, set(TARGETS))
        readme = (CORPUS / "README.md").read_text()
        for path in files:
            if not path.name.startswith("seed-"):
                self.assertIn(path.name, readme, "every finding is described in the README")


def _add(path: Path) -> None:
    def test(self: CorpusTests) -> None:
        started = time.monotonic()
        run(path.read_bytes())
        self.assertLess(time.monotonic() - started, HANG_SECONDS, f"{path.name} hangs")

    name = "test_" + path.stem.replace("-", "_").replace(".", "_")
    test.__doc__ = f"Replay {path.name}."
    setattr(CorpusTests, name, test)


for _path in sorted(CORPUS.glob("*.bin")):
    _add(_path)
