"""
C{sixchat chat} (L{sixchat.cli.chat}) as a user runs it against a fake agent, through pipes
and on a pseudo-terminal.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sixchat.test.control_support import AgentCLIMixin, run, spawn_cli, wait_for
from sixchat.testing.agent import BOB


class ChatCLITests(AgentCLIMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_chat_through_pipes(self) -> Any:
        proc = spawn_cli(["chat", BOB, "--typing-idle", "0.3", *self.dd])
        yield wait_for(lambda: b"second line" in proc.out, what="history")
        self.assertEqual(
            proc.text.splitlines(),
            [
                f"--- chat with {BOB} (/quit or end of input to leave) ---",
                f"[08:00] {BOB}: Hello, Alice",
                "[08:01] me: Hi Bob",
                "            second line",
            ],
        )
        self.assertIn(("history", BOB, None, 20), self.agent.calls)
        yield wait_for(lambda: self.agent.observers, what="subscription")
        # incoming message, typing indicator
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})
        self.agent.emit({"type": "typing", "peer": BOB, "state": "composing"})  # shown once
        self.agent.emit({"type": "message", "peer": BOB, "id": "i1", "body": "news",
                         "ts": "2026-11-26T10:30:00.000Z"})  # fmt: skip
        self.agent.emit({"type": "message", "peer": "carol@example.com", "id": "i2",
                         "body": "not for this chat"})  # fmt: skip
        yield wait_for(lambda: b"news" in proc.out, what="incoming message")
        # typing: a partial line is "composing", silence turns it into "paused"
        proc.transport.write("héllo".encode()[:3])  # even half a UTF-8 character counts
        yield wait_for(lambda: self.agent.typings(), what="composing")
        self.assertEqual(self.agent.typings(), [("typing", BOB, "composing")])
        yield wait_for(lambda: len(self.agent.typings()) == 2, what="paused")
        self.assertEqual(self.agent.typings()[1], ("typing", BOB, "paused"))
        proc.transport.write(b"llo\n")
        yield wait_for(lambda: self.agent.sends(), what="send")
        self.assertEqual(self.agent.sends(), [("send", BOB, "héllo", None, None)])
        self.agent.emit({"type": "delivery", "peer": BOB, "id": "m1", "state": "delivered"})
        yield wait_for(lambda: "delivered" in proc.text.splitlines()[-1], what="tick")
        proc.transport.write(b"/help\n//slash\n/nonsense\n/fiel notes.txt\n/quit\nnot sent\n")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.err)
        lines = proc.text.splitlines()[4:]
        self.assertEqual(lines[0], f"{BOB} is typing…")
        self.assertEqual(lines[1], f"[10:30] {BOB}: news")
        self.assertRegex(lines[2], r"^\[\d\d:\d\d\] me: héllo$")
        self.assertEqual(lines[3], "  ✓✓ delivered: héllo")
        self.assertIn("/quit leaves", lines[4])
        self.assertRegex(lines[5], r"^\[\d\d:\d\d\] me: /slash$")
        self.assertEqual(lines[6], "unknown command /nonsense (/help lists them)")
        self.assertEqual(lines[7], "unknown command /fiel; did you mean /file? (/help lists them)")
        self.assertEqual(len(lines), 8)
        self.assertNotIn("not for this chat", proc.text)
        self.assertEqual([s[2] for s in self.agent.sends()], ["héllo", "/slash"])

    @defer.inlineCallbacks
    def test_chat_shows_key_changes_and_presence(self) -> Any:
        """Issue 17 items 5 and 6: a pending key change after the history, live key
        changes, and the peer going offline and coming back."""
        carol = "carol@example.com"
        proc = spawn_cli(["chat", carol, *self.dd])
        yield wait_for(lambda: b"REFUSED" in proc.out, what="history")
        yield wait_for(lambda: self.agent.observers, what="subscription")
        lines = proc.text.splitlines()
        self.assertRegex(lines[1], r"^\[09:00\] carol@example\.com: evil")
        self.assertEqual(lines[2], f"!! {carol} has a NEW KEY {'bb' * 32}, REFUSED (pin policy "
                         f"refuse): nothing is exchanged with it until you check it with them "
                         f"and run 'sixchat trust {carol} --accept-new-key'")  # fmt: skip
        self.agent.emit({"type": "session", "peer": carol, "state": "open"})
        self.agent.emit({"type": "presence", "peer": carol, "nodes": []})
        self.agent.emit({"type": "presence", "peer": carol, "nodes": []})  # once
        self.agent.emit({"type": "presence", "peer": carol, "nodes": ["phone"]})
        self.agent.emit({"type": "key_change", "peer": carol, "fingerprint": "cc" * 32,
                         "policy": "warn", "action": "warned"})  # fmt: skip
        self.agent.emit({"type": "presence", "peer": BOB, "nodes": []})  # another peer
        yield wait_for(lambda: b"NEW KEY " + b"c" * 64 in proc.out, what="key change")
        proc.transport.closeStdin()
        code = yield proc.ended
        self.assertEqual(code, 0, proc.err)
        self.assertEqual(
            proc.text.splitlines()[3:],
            [
                f"--- {carol} is offline: messages wait in the outbox until they are back ---",
                f"--- {carol} is online again (1 device(s)) ---",
                f"!! {carol} has a NEW KEY {'cc' * 32} (pin policy warn: messages still flow); "
                f"check it with them, then 'sixchat trust {carol} --forget-old' retires the "
                "old one",
            ],
        )

    @defer.inlineCallbacks
    def test_chat_end_of_input_sends_last_line(self) -> Any:
        out, err, code = yield run(["chat", BOB, *self.dd], stdin=b"first\nlast without newline")
        self.assertEqual(code, 0, err)
        self.assertEqual([s[2] for s in self.agent.sends()], ["first", "last without newline"])

    @defer.inlineCallbacks
    def test_chat_send_failure_is_shown(self) -> Any:
        out, err, code = yield run(["chat", "nobody@example.com", *self.dd], stdin=b"hi\n")
        self.assertEqual(code, 0, err)
        self.assertIn(
            "  ✗ not sent: nobody@example.com is not known to registry irp.example.com "
            "(never registered there)\n",
            out,
        )

    @defer.inlineCallbacks
    def test_chat_shows_unknown_recipient(self) -> Any:
        """Messages queued for a peer the registry does not know are shown in its chat."""
        nobody = "nobody@example.com"
        proc = spawn_cli(["chat", nobody, *self.dd])
        yield wait_for(lambda: b"--- chat with" in proc.out, what="history")
        yield wait_for(lambda: self.agent.observers, what="subscription")
        reason = f"{nobody} is not known to registry irp.example.com"
        self.agent.emit({"type": "unknown_recipient", "peer": nobody, "reason": reason,
                         "ids": ["q1"], "action": "queued"})  # fmt: skip
        self.agent.emit({"type": "unknown_recipient", "peer": BOB, "reason": "not this chat",
                         "ids": ["q2"], "action": "queued"})  # fmt: skip
        yield wait_for(lambda: b"queued until" in proc.out, what="unknown recipient")
        proc.transport.write(b"/quit\n")
        code = yield proc.ended
        self.assertEqual(code, 0, proc.err)
        self.assertIn(
            f"  ✗ {reason}; queued until it registers (sixchat cancel q1)\n", proc.text
        )
        self.assertNotIn("not this chat", proc.text)

    @defer.inlineCallbacks
    def test_chat_on_a_terminal(self) -> Any:
        """With a pty as stdin the line is edited locally: keystrokes are echoed and count."""
        proc = spawn_cli(["chat", BOB, "--typing-idle", "30", *self.dd], pty=True)
        yield wait_for(lambda: b"second line" in proc.out, what="history")
        yield wait_for(lambda: self.agent.observers, what="subscription")
        proc.transport.write(b"hx\x7fi")  # h, x, backspace, i
        yield wait_for(lambda: self.agent.typings(), what="composing")
        yield wait_for(lambda: b"\b \b" in proc.out, what="backspace echo")
        self.agent.emit({"type": "message", "peer": BOB, "id": "i9", "body": "meanwhile",
                         "ts": "2026-11-26T10:30:00.000Z"})  # fmt: skip
        # the incoming line is printed above the redrawn, still unfinished input
        yield wait_for(lambda: b"meanwhile" in proc.out and proc.out.endswith(b"> hi"),
                       what="redraw")  # fmt: skip
        proc.transport.write(b"\r")
        yield wait_for(lambda: self.agent.sends(), what="send")
        self.assertEqual(self.agent.sends(), [("send", BOB, "hi", None, None)])
        # issue 17 item 6: typing a command tells the peer nothing
        before = len(self.agent.typings())
        proc.transport.write(b"/help")
        proc.transport.write(b"\r")
        yield wait_for(lambda: b"/quit leaves" in proc.out, what="help")
        proc.transport.write(b"\x04")  # Ctrl-D on an empty line
        code = yield proc.ended
        self.assertEqual(code, 0, proc.text)
        self.assertEqual(self.agent.typings()[before:], [])
