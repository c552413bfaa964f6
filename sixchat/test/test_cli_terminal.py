"""
The command line's presentation helpers (L{sixchat.cli.terminal}), in process.
"""

from __future__ import annotations

from twisted.trial import unittest

from sixchat.cli.terminal import clean, parse_since


class TerminalTests(unittest.TestCase):
    def test_parse_since(self) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
        p = parse_since
        self.assertEqual(p("2h", now), "2026-11-26T10:00:00.000Z")
        self.assertEqual(p("3d", now), "2026-11-23T12:00:00.000Z")
        self.assertEqual(p("1d12h", now), "2026-11-25T00:00:00.000Z")
        self.assertEqual(p("90s", now), "2026-11-26T11:58:30.000Z")
        self.assertEqual(p("2026-11-26T08:00:00+01:00", now), "2026-11-26T07:00:00.000Z")
        self.assertEqual(p("2026-11-26T08:00:00Z", now), "2026-11-26T08:00:00.000Z")
        from sixchat.cli import UsageError

        for bad in ("2x", "yesterday", "h2", ""):
            self.assertRaises(UsageError, p, bad, now)

    def test_clean(self) -> None:
        self.assertEqual(clean("a\x1b[2Jb"), "a\\x1b[2Jb")
        self.assertEqual(clean("\u202eabc"), "\\u202eabc")
        self.assertEqual(clean("a\r\nb", oneline=True), "a ⏎ b")
        self.assertEqual(clean("x\x9by"), "x\\x9by")
        self.assertEqual(clean("ünïcode ✓ 😀"), "ünïcode ✓ 😀")
