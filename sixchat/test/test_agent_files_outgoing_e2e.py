"""
An outgoing file delivered by another node of the sender (docs/protocol.md 8.6, "Files" and
"Delivery by any node"), with real processes: a registry, C{twistd -n sixchat} agents for two
nodes of alice (each with its own key) and one of bob, and the C{sixchat} command line
(C{send-file}, C{files}, C{devices}).

The scenario: alice's laptop runs C{sixchat send-file bob F} while bob is offline; the laptop
hands the bytes to alice's home node, then stops; bob comes online; the home node delivers
(bob's C{sixchat files} shows the file received with the right SHA-256); the laptop, restarted,
shows it C{delivered}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from sixchat.test.processes import eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, DELIVERY_TIMEOUT, AgentProcess, E2ECase
from sixchat.test.test_agent_files_e2e import sha256_of, write_file
from sixchat.test.test_agent_sync_e2e import linked


def listed(agent: AgentProcess, file_id: str, **want: Any) -> Any:
    """Fires with C{agent}'s C{sixchat files --json} entry for C{file_id} once it matches."""

    def probe() -> Any:
        def find(files: list[dict[str, Any]]) -> Any:
            for f in files:
                if f["id"] == file_id and all(
                    (f.get(k) is not None) if v is ... else f.get(k) == v for k, v in want.items()
                ):
                    return f
            return None

        return agent.cli_json("files").addCallback(find)

    return eventually(probe, DELIVERY_TIMEOUT, f"{agent.name} lists {file_id} {want}")


class OutgoingFileTests(E2ECase):
    timeout = 400

    @defer.inlineCallbacks
    def test_the_home_node_delivers_the_file_the_laptop_queued(self) -> Any:
        yield self.startRegistry()
        bob = self.agent("bob", BOB)
        # bob registered once (so alice's nodes find him), then went offline
        yield bob.start()
        yield bob.stop()

        laptop = self.agent("alice-laptop", ALICE, node="laptop")
        home = self.agent("alice-home", ALICE, node="home")
        yield defer.gatherResults([laptop.start(), home.start()])
        yield linked(laptop, "home")
        yield linked(home, "laptop")

        path = os.path.join(self.base, "holiday.mp4")
        size = 3 * 1024 * 1024 + 7
        digest = write_file(path, size)
        queued = yield laptop.cli_json("send-file", BOB, path)
        fid = queued["id"]
        try:
            # the home node holds the bytes (in its spool) and the outbox entry
            entry = yield listed(home, fid, state="queued", path=...)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.dump(laptop, home)}") from None
        self.assertEqual(
            {k: entry[k] for k in ("peer", "direction", "name", "size", "sha256")},
            {"peer": BOB, "direction": "out", "name": "holiday.mp4", "size": size,
             "sha256": digest},
        )  # fmt: skip
        self.assertEqual(entry["path"], os.path.join(home.data_dir, "spool", "holiday.mp4"))
        self.assertEqual(sha256_of(entry["path"]), digest)
        self.assertEqual(os.listdir(os.path.join(home.data_dir, "files")), [".partial"])
        out, err, code = yield home.cli("files")
        self.assertEqual(code, 0, err)
        self.assertIn("-> bob@example.com  holiday.mp4", out)
        yield laptop.stop()

        yield bob.start()
        try:
            got = yield listed(bob, fid, state="received")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.dump(home, bob)}") from None
        self.assertEqual(
            {k: got[k] for k in ("peer", "direction", "name", "size", "sha256")},
            {"peer": ALICE, "direction": "in", "name": "holiday.mp4", "size": size,
             "sha256": digest},
        )  # fmt: skip
        self.assertEqual(sha256_of(got["path"]), digest)
        # delivered by home, whose copy is then removed from its spool
        yield listed(home, fid, state="delivered", path=None)
        self.assertEqual(os.listdir(os.path.join(home.data_dir, "spool")), [".partial"])

        yield laptop.start()
        mine = yield listed(laptop, fid, state="delivered")
        self.assertEqual(mine["path"], path)  # the user's file, untouched
        self.assertEqual(sha256_of(path), digest)
        # bob holds it once
        files = yield bob.cli_json("files")
        self.assertEqual([f["id"] for f in files], [fid])
        history = yield bob.inbox(ALICE)
        self.assertExactlyOnce(history, ALICE, [f"[file] holiday.mp4 ({size} bytes)"])
