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


class KeyHistoryMergeTests(unittest.TestCase):
    """L{with_key_events}: a contact's key history merged into a conversation by time."""

    @staticmethod
    def stamp(second: int) -> str:
        from datetime import UTC, datetime, timedelta

        when = datetime(2026, 11, 26, tzinfo=UTC) + timedelta(seconds=second)
        return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def test_merge_is_ordered_and_loses_nothing(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from sixchat.cli.terminal import with_key_events

        times = st.lists(st.integers(0, 10_000), max_size=12)

        others = st.sampled_from(["bob@example.com", "bob@EXAMPLE.com", "carol@example.com"])

        @settings(max_examples=200, deadline=None)
        @given(times, times, others)
        def check(message_times: list[int], event_times: list[int], other: str) -> None:
            messages = [
                {"id": f"m{i}", "peer": "bob@example.com", "at": self.stamp(t), "body": "x"}
                for i, t in enumerate(sorted(message_times))
            ]
            contacts = [
                {"identity": "bob@example.com", "key_events": [
                    {"what": "warned", "fingerprint": "aa" * 32, "at": self.stamp(t)}
                    for t in sorted(event_times)]},
                {"identity": other, "key_events": [
                    {"what": "refused", "fingerprint": "bb" * 32, "at": self.stamp(0)}]},
            ]  # fmt: skip
            merged = with_key_events(messages, contacts, "bob@example.com", None)
            self.assertEqual([m for m in merged if "key_event" not in m], messages)
            stamps = [m["at"] for m in merged]
            self.assertEqual(stamps, sorted(stamps))
            events = [m for m in merged if "key_event" in m]
            self.assertTrue(all(e["peer"].lower() == "bob@example.com" for e in events))
            start = min(message_times) if message_times else -1
            extra = other.lower() == "bob@example.com" and start <= 0  # its one event, at 0
            self.assertEqual(len(events), sum(t >= start for t in event_times) + extra)

        check()
