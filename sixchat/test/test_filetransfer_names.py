"""
Tests for L{sixchat.filetransfer.names}: what a receiver makes of an offered file name.
"""

from __future__ import annotations

import itertools
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.filetransfer.names import FALLBACK_NAME, MAX_NAME_BYTES, candidate_names, sanitize_name

HYPOTHESIS = settings(max_examples=300, deadline=None)


class SanitizeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        for offered, stored in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("C:\\Users\\x\\evil.exe", "evil.exe"),
            ("dir/", FALLBACK_NAME),
            ("..", FALLBACK_NAME),
            (".", FALLBACK_NAME),
            ("", FALLBACK_NAME),
            (".bashrc", "bashrc"),
            ("...hidden", "hidden"),
            ("a\x00b\x1bc\x7fd\x85e.txt", "abcde.txt"),
            ("line\nbreak.txt", "linebreak.txt"),
            ("\u202etxt.exe", "txt.exe"),  # a right-to-left override hides the real suffix
            ("zero\u200bwidth.png", "zerowidth.png"),
            ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
            ("trailing. . ", "trailing"),
            ("  spaced  .txt", "spaced.txt"),
            ("ok.tar.gz", "ok.tar.gz"),
        ]:
            self.assertEqual(sanitize_name(offered), stored, repr(offered))

    def test_long_names_keep_their_extension(self) -> None:
        name = sanitize_name("x" * 1000 + ".jpeg")
        self.assertEqual(len(name.encode()), MAX_NAME_BYTES)
        self.assertTrue(name.endswith("x.jpeg"))
        name = sanitize_name("é" * 300)  # cut at a character boundary
        self.assertLessEqual(len(name.encode()), MAX_NAME_BYTES)
        self.assertEqual(set(name), {"é"})

    @HYPOTHESIS
    @given(st.text(max_size=400))
    def test_always_one_safe_plain_name(self, offered: str) -> None:
        name = sanitize_name(offered)
        self.assertTrue(name)
        self.assertNotIn("/", name)
        self.assertNotIn("\\", name)
        self.assertNotIn(name, (".", ".."))
        self.assertFalse(name.startswith("."))
        self.assertFalse(name.startswith(" "))
        self.assertLessEqual(len(name.encode("utf-8")), MAX_NAME_BYTES)
        self.assertFalse(
            any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name)
        )
        self.assertEqual(sanitize_name(name), name)  # stable

    def test_candidates(self) -> None:
        self.assertEqual(
            list(itertools.islice(candidate_names("a.txt"), 3)), ["a.txt", "a (1).txt", "a (2).txt"]
        )
        self.assertEqual(list(itertools.islice(candidate_names("file"), 2)), ["file", "file (1)"])
