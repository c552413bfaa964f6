"""
The one-shot commands of L{sixchat.cli.agent} (C{send}, C{inbox}, C{contacts}, C{status},
C{trust}) as a user runs them: real subprocesses against a fake agent on a real socket.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sixchat.test.control_support import AgentCLIMixin, run, short_tempdir
from sixchat.testing.agent import ALICE, BOB, FakeAgent


class CLITests(AgentCLIMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_send_queued(self) -> Any:
        out, err, code = yield run(["send", BOB, "hello there", *self.dd])
        self.assertEqual((out, err, code), (f"queued m1 to {BOB}\n", "", 0))
        self.assertEqual(self.agent.sends(), [("send", BOB, "hello there", None, None)])

    @defer.inlineCallbacks
    def test_send_options_and_json(self) -> Any:
        out, err, code = yield run(
            ["send", BOB, "x", "--thread", "t9", "--reply-to", "h1", "--json", *self.dd]
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"id": "m1", "peer": BOB, "state": "queued"})
        self.assertEqual(self.agent.sends(), [("send", BOB, "x", "t9", "h1")])

    @defer.inlineCallbacks
    def test_send_from_stdin(self) -> Any:
        text = "line one\nline two ✓ " + "z" * 70_000
        out, err, code = yield run(["send", BOB, "-", *self.dd], stdin=text.encode() + b"\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.agent.sends()[0][2], text)
        self.assertEqual(out, f"queued 3 parts to {BOB}: m1 m2 m3\n")

    @defer.inlineCallbacks
    def test_send_wait_delivered(self) -> Any:
        out, err, code = yield run(["send", "multi@example.com", "hi", "--wait", "5", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "delivered m1 to multi@example.com (2/2 devices)\n")
        self.assertIn(("waitDelivered", "m1", 5.0), self.agent.calls)

    @defer.inlineCallbacks
    def test_send_wait_still_pending_exits_3(self) -> Any:
        out, err, code = yield run(["send", "slow@example.com", "hi", "--wait", "0.3", *self.dd])
        self.assertEqual(code, 3, err)
        self.assertEqual(out, "not delivered after 0.3 s: m1 to slow@example.com is sent\n")

    @defer.inlineCallbacks
    def test_send_wait_failed_exits_1_json(self) -> Any:
        out, err, code = yield run(
            ["send", "fail@example.com", "hi", "--wait", "2", "--json", *self.dd]
        )
        self.assertEqual(code, 1, err)
        report = json.loads(out)
        self.assertEqual(report["outcome"], "failed")
        self.assertEqual(report["statuses"][0]["state"], "expired")
        out, err, code = yield run(["send", "fail@example.com", "hi", "--wait", "2", *self.dd])
        self.assertEqual(out, "FAILED m2 to fail@example.com: expired: no receipt within 7 days\n")

    @defer.inlineCallbacks
    def test_queue_unknown_then_cancel(self) -> Any:
        """Issue 17 item 3 from the command line: --queue-unknown, then sixchat cancel."""
        out, err, code = yield run(
            ["send", "nobody@example.com", "hi", "--queue-unknown", "--wait", "0.3", *self.dd]
        )
        self.assertEqual(code, 3, err)
        self.assertEqual(
            out,
            "not delivered after 0.3 s: m1 to nobody@example.com is queued; nobody@example.com "
            "is not known to the registry yet (sixchat cancel m1 drops it)\n",
        )
        self.assertEqual(self.agent.sends()[-1][-1], "queue_unknown")
        out, err, code = yield run(["cancel", "m1", *self.dd])
        self.assertEqual((out, err, code), ("cancelled m1 to nobody@example.com\n", "", 0))
        out, err, code = yield run(["cancel", "m1", *self.dd])
        self.assertEqual(code, 1)
        self.assertEqual(err, "sixchat: error: no outgoing message m1\n")
        yield run(["send", BOB, "x", "--wait", "1", *self.dd])
        out, err, code = yield run(["cancel", "m2", "--json", *self.dd])
        self.assertEqual(code, 1)
        self.assertEqual(
            err, "sixchat: error: message m2 is already delivered; nothing to cancel\n"
        )
        out, err, code = yield run(["cancel", *self.dd])
        self.assertEqual(code, 2)
        self.assertIn("ID", err)

    @defer.inlineCallbacks
    def test_send_errors_are_one_line(self) -> Any:
        out, err, code = yield run(["send", "nobody@example.com", "hi", *self.dd])
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "sixchat: error: nobody@example.com is not known to registry irp.example.com "
            "(never registered there); nothing was queued: check the address, or use "
            "--queue-unknown to queue it until it registers\n",
        )
        self.assertEqual(out, "")
        out, err, code = yield run(["send", BOB, "hi", "--wait", "0", *self.dd])
        self.assertEqual(code, 2)
        self.assertIn("--wait", err)
        out, err, code = yield run(["send", BOB, "-", *self.dd], stdin=b"\n")
        self.assertEqual((code, err), (2, "sixchat: error: empty message\n"))

    @defer.inlineCallbacks
    def test_no_agent_running(self) -> Any:
        empty = os.path.join(self.base, "nobody-here")
        out, err, code = yield run(["status", "--data-dir", empty])
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            f"sixchat: error: no sixchat agent is running for {empty} "
            "(start one with twistd -n sixchat …)\n",
        )

    @defer.inlineCallbacks
    def test_inbox(self) -> Any:
        out, err, code = yield run(["inbox", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.splitlines(),
            [
                # our clock (received / queued), the order the history is in
                f"2026-11-26 08:00:01  <- {BOB}  Hello, Alice",
                f"2026-11-26 08:01:00  -> {BOB}  Hi Bob",
                "                                         second line  [delivered]",
                # carol's refused key change, among the messages by time
                "2026-11-26 08:02:00  !! carol@example.com has a NEW KEY " + "bb" * 32
                + ", REFUSED (pin policy refuse): nothing is exchanged with it until you check "
                "it with them and run 'sixchat trust carol@example.com --accept-new-key'",
                "2026-11-26 09:00:02  <- carol@example.com  evil \\x1b[2J\\u202egnp.exe",
            ],
        )
        self.assertNotIn("\x1b", out)
        self.assertEqual(self.agent.calls[-1], ("history", None, None, 50))

    @defer.inlineCallbacks
    def test_inbox_is_in_our_order_and_shows_a_skewed_sender_clock(self) -> Any:
        """The sender's clock does not order the inbox: a message whose sender's clock is
        an hour ahead is shown at our time, with theirs beside it."""
        self.agent.messages = [
            {"id": "x1", "peer": BOB, "direction": "in", "body": "first here",
             "ts": "2026-11-26T09:00:00.000Z", "at": "2026-11-26T08:00:00.000Z"},
            {"id": "x2", "peer": BOB, "direction": "in", "body": "second here",
             "ts": "2026-11-26T08:00:30.000Z", "at": "2026-11-26T08:00:31.000Z"},
        ]  # fmt: skip
        out, err, code = yield run(["inbox", "--peer", BOB, *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.splitlines(),
            [
                f"2026-11-26 08:00:00  <- {BOB}  first here  (sent 2026-11-26 09:00:00 by "
                "their clock)",
                f"2026-11-26 08:00:31  <- {BOB}  second here",
            ],
        )

    @defer.inlineCallbacks
    def test_inbox_filters_and_json(self) -> Any:
        out, err, code = yield run(
            ["inbox", "--peer", BOB, "--since", "2026-11-26T08:00:30Z", "--limit", "7", "--json",
             *self.dd]
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual(self.agent.calls[-1], ("history", BOB, "2026-11-26T08:00:30.000Z", 7))
        self.assertEqual(json.loads(out), [self.agent.messages[1]])
        out, err, code = yield run(["inbox", "--since", "2h", *self.dd])
        self.assertEqual(code, 0, err)
        since = self.agent.calls[-1][2]
        self.assertRegex(since, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        out, err, code = yield run(["inbox", "--since", "whenever", *self.dd])
        self.assertEqual(code, 2)
        self.assertIn("--since 'whenever'", err)

    @defer.inlineCallbacks
    def test_contacts(self) -> Any:
        out, err, code = yield run(["contacts", *self.dd])
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["IDENTITY", "LAST", "SEEN", "KEYS"])
        self.assertEqual(lines[1].split(), [BOB, "2026-11-26", "08:00", "1"])
        self.assertIn("carol@example.com", lines[2])
        self.assertIn("KEY CHANGE PENDING: sixchat trust carol@example.com --accept-new-key",
                      lines[2])  # fmt: skip
        out, err, code = yield run(["contacts", "--json", *self.dd])
        self.assertEqual(json.loads(out), self.agent.contact_list)

    @defer.inlineCallbacks
    def test_status(self) -> Any:
        out, err, code = yield run(["status", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.splitlines(),
            [
                f"identity:    {ALICE}",
                "node:        n-01",
                "listening:   tcp6:4605",
                "registry:    registered with irp.example.com, expires 2026-11-26 10:00:00",
                "advertised:  [2001:db8::1]:4605, 192.0.2.1:4605",
                "sessions:    1",
                f"  {BOB}  node n-b  chacha20-poly1305  x25519-mlkem768, since 2026-11-26 07:00:00",
                "outbox:      2 queued, 1 sent, awaiting the receipt",
            ],
        )
        out, err, code = yield run(["status", "--json", *self.dd])
        self.assertEqual(json.loads(out)["advertised"][1], "192.0.2.1:4605")

    def test_status_one_line_per_peer_and_an_empty_outbox(self) -> None:
        """Issue 17 item 6: a peer with our session and its own is one line; an outbox
        with nothing owed says so instead of "0 queued, 0 sent, 0 delivered"."""
        from sixchat.cli.status import format_status

        session = {"peer": BOB, "suite": "aes-256-gcm", "group": "x25519"}
        lines = format_status(
            {
                "identity": ALICE,
                "listening": "127.0.0.1:4605",
                "sessions": [
                    {**session, "node": "laptop", "direction": "outgoing"},
                    {**session, "node": None, "direction": "incoming"},
                    {**session, "peer": "carol@example.com", "node": None,
                     "direction": "incoming"},
                ],  # fmt: skip
                "outbox": {"queued": 0, "sent": 0, "delivered": 0},
            }
        )
        self.assertEqual(
            lines[2:],
            [
                "advertised:  -",
                "sessions:    2",
                f"  {BOB}  node laptop  aes-256-gcm  x25519  (2 sessions: incoming and outgoing)",
                "  carol@example.com  aes-256-gcm  x25519",
                "outbox:      empty (every message delivered)",
            ],
        )

    def test_devices_lines(self) -> None:
        from sixchat.cli.status import format_devices

        nodes = [
            {"node": "laptop", "registered": True, "linked": True, "sync": "idle",
             "their_top": 40, "pulled_to": 40, "last_sync": "2026-12-07T06:10:03.000Z",
             "items_merged": 12},
            {"node": "phone", "registered": True, "linked": True, "sync": "pulling",
             "their_top": 90, "pulled_to": 40, "last_sync": None, "items_merged": 0},
            {"node": "old", "registered": True, "linked": True, "sync": "unsupported",
             "their_top": None, "pulled_to": None, "last_sync": None, "items_merged": 0},
            {"node": "tablet", "registered": True, "linked": False, "sync": None,
             "their_top": None, "pulled_to": None, "last_sync": None, "items_merged": 0},
            {"node": "lost", "registered": False, "linked": False, "sync": None,
             "their_top": 7, "pulled_to": 7, "last_sync": None, "items_merged": 3},
        ]  # fmt: skip
        lines = format_devices({"node": "home", "sync": True, "own_nodes": nodes})
        self.assertEqual(lines[0], "own nodes:   5 besides this one (home)")
        self.assertRegex(
            lines[1], r"^  laptop  linked; last merged .*, 12 changes in all; up to date$"
        )
        self.assertEqual(lines[2], "  phone  linked, syncing; 50 of its changes to go")
        self.assertEqual(lines[3], "  old  linked, but it does not sync (older sixchat)")
        self.assertEqual(lines[4], "  tablet  registered, not linked yet")
        self.assertEqual(lines[5], "  lost  offline; up to date")
        self.assertEqual(
            format_devices({"sync": False}),
            ["own nodes:   not synced (this agent runs without own-device sync)"],
        )

    @defer.inlineCallbacks
    def test_devices_of_an_agent_without_sync(self) -> Any:
        out, err, code = yield run(["devices", *self.dd])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "own nodes:   not synced (this agent runs without own-device sync)\n")
        out, err, code = yield run(["devices", "--json", *self.dd])
        self.assertEqual(json.loads(out), {"sync": False, "own_nodes": []})

    @defer.inlineCallbacks
    def test_trust(self) -> Any:
        out, err, code = yield run(["trust", "carol@example.com", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertIn("a key change is pending", out)
        self.assertIn(f"  new key {'bb' * 32}  (refused, pending)", out)
        self.assertIn(f"!! carol@example.com has a NEW KEY {'bb' * 32}, REFUSED", out)
        self.assertNotIn(("trust", "carol@example.com", True, False), self.agent.calls)
        out, err, code = yield run(["trust", "carol@example.com", "--accept-new-key", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out,
            f"accepted the new key of carol@example.com\n  key {'aa' * 32}\n"
            f"  key {'bb' * 32}  (new)\n",
        )
        self.assertIn(("trust", "carol@example.com", True, False), self.agent.calls)
        out, err, code = yield run(["trust", "carol@example.com", "--forget-old", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertEqual(
            out,
            f"forgot 1 old key(s) of carol@example.com:\n  forgotten {'aa' * 32}\n"
            f"  key {'bb' * 32}\n",
        )
        self.assertIn(("trust", "carol@example.com", False, True), self.agent.calls)
        out, err, code = yield run(["trust", "carol@example.com", "--accept-new-key", *self.dd])
        self.assertEqual(code, 0, err)
        self.assertIn("no pending key change for carol@example.com", out)
        out, err, code = yield run(["trust", "zed@example.com", "--accept-new-key", *self.dd])
        self.assertEqual((code, err), (1, "sixchat: error: zed@example.com is not a contact\n"))

    @defer.inlineCallbacks
    def test_data_dir_discovery(self) -> Any:
        xdg = short_tempdir(self)
        env = {"XDG_DATA_HOME": xdg}
        alice_dir = os.path.join(xdg, "sixchat", ALICE)
        yield self.serve(alice_dir, agent=FakeAgent(reactor))
        out, err, code = yield run(["status", "--json"], env=env)
        self.assertEqual((code, json.loads(out)["identity"]), (0, ALICE), err)
        bob_agent = FakeAgent(reactor)
        yield self.serve(os.path.join(xdg, "sixchat", BOB), agent=bob_agent)
        out, err, code = yield run(["status"], env=env)
        self.assertEqual(code, 1)
        self.assertIn(f"several agents under {xdg}/sixchat ({ALICE}, {BOB})", err)
        out, err, code = yield run(["contacts", "--as", BOB], env=env)
        self.assertEqual(code, 0, err)
        self.assertEqual(bob_agent.calls, [("contacts",)])
