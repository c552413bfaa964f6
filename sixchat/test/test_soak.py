"""
The soak and chaos script in its short mode (C{scripts/soak.py --short}): three agents and a
registry in real processes, alice, bob and the registry SIGKILLed and restarted at random
while messages flow; nothing accepted may be lost or stored twice. The long soak (C{--minutes
N}) is not run here; its figures are in docs/security.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from sixchat.test.processes import REPO, child_env


class ShortSoakTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_short_soak(self) -> Any:
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            [str(REPO / "scripts" / "soak.py"), "--short", "--json"],
            env=child_env(),
            path=str(REPO),
            reactor=reactor,
        )
        text = out.decode(errors="replace")
        self.assertIn(code, (0, 1), f"soak.py crashed:\n{text}\n{err.decode(errors='replace')}")
        figures = json.loads(text.strip().splitlines()[-1])
        self.assertGreater(figures["sent"], 50, figures)
        self.assertGreaterEqual(sum(figures["kills"].values()), 2, figures)
        self.assertEqual((figures["lost"], figures["duplicated"]), (0, 0), figures)
        self.assertEqual(figures["receipted"], figures["sent"], figures)
        self.assertEqual(figures["problems"], [], figures)
        self.assertEqual(code, 0)
