"""
Dead-peer detection (L{sixchat.keepalive}): a peer that stops answering is found dead within
the keep-alive bound; a live idle peer is never cut; no pings while data flows; the idle
timeout still closes an idle session. On a C{task.Clock} through C{twisted.test.iosim}.
"""

from __future__ import annotations

import signal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.python import usage
from twisted.trial import unittest

from sixchat.agent import tap as agent_tap
from sixchat.keepalive import KEEPALIVE, KeepAlive, PeerUnresponsive
from sixchat.protocol import IDLE_TIMEOUT
from sixchat.session import SessionLost
from sixchat.test.processes import eventually
from sixchat.test.test_agent_e2e import ALICE, BOB, E2ECase
from sixchat.testing.peers import PeerPair


def black_hole(pair: PeerPair) -> None:
    """The responder vanishes: whatever reaches it is dropped, nothing comes back."""
    pair.responder.dataReceived = lambda data: None  # type: ignore[method-assign]


def run_until_ended(pair: PeerPair, limit: float, step: float = 0.5) -> float:
    """Advance C{step} at a time until the initiator's session ended; the time it took."""
    session = pair.initiator_session
    start = pair.clock.seconds()
    while not session.ended and pair.clock.seconds() - start < limit:
        pair.advance(step)
    return pair.clock.seconds() - start


class DeadPeerTests(unittest.TestCase):
    def test_vanished_peer_detected_within_bound(self) -> None:
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        black_hole(pair)
        d = session.sendMessage("are you there?")
        took = run_until_ended(pair, 120)
        self.assertTrue(session.ended)
        self.assertLessEqual(took, 30)
        self.assertGreaterEqual(took, 20)  # 2 bound / 3 of silence at least: not trigger-happy
        self.assertIsInstance(session.end_reason, PeerUnresponsive)
        self.assertIn("no keep-alive ping within 30 s", str(session.end_reason))
        failure = self.failureResultOf(d, SessionLost)
        self.assertIn("session ended before the receipt", failure.getErrorMessage())

    def test_configurable_bound(self) -> None:
        pair = PeerPair.throwaway(keepalive=6)
        black_hole(pair)
        took = run_until_ended(pair, 120, step=0.1)
        self.assertTrue(pair.initiator_session.ended)
        self.assertLessEqual(took, 6.05)

    def test_vanishing_after_a_long_quiet_spell(self) -> None:
        """Pings pause on an idle session, but a send on it brings them back at once."""
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        for _ in range(100):
            pair.advance(4)  # 400 s with no application traffic: pings have paused
        self.assertFalse(session.ended)
        black_hole(pair)
        d = session.sendMessage("late")
        took = run_until_ended(pair, 120)
        self.assertLessEqual(took, 30)
        self.assertIsInstance(session.end_reason, PeerUnresponsive)
        self.failureResultOf(d, SessionLost)

    def test_off_by_default_in_the_library(self) -> None:
        pair = PeerPair.throwaway()
        black_hole(pair)
        run_until_ended(pair, 250, step=5)
        self.assertFalse(pair.initiator_session.ended)
        self.assertIsNone(pair.initiator._keepalive)


class LivePeerTests(unittest.TestCase):
    def test_idle_live_peer_not_cut(self) -> None:
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        for _ in range(280):
            pair.advance(1)
        self.assertFalse(session.ended)
        keepalive = pair.initiator._keepalive
        assert keepalive is not None
        # one ping per look at most (every 10 s), and some pings, answered
        self.assertGreater(keepalive.pings, 5)
        self.assertLessEqual(keepalive.pings, 28)

    def test_no_pings_while_data_flows(self) -> None:
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        for i in range(40):
            d = session.sendMessage(f"m{i}")
            pair.advance(5)
            self.successResultOf(d)
        keepalive = pair.initiator._keepalive
        assert keepalive is not None
        self.assertEqual(keepalive.pings, 0)
        self.assertEqual(len(pair.responder_observer.messages), 40)

    def test_idle_timeout_still_closes_an_idle_session(self) -> None:
        """Pings stop after the idle period without application stanzas; §9.2 then applies."""
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        took = run_until_ended(pair, 3 * IDLE_TIMEOUT, step=2)
        self.assertTrue(session.ended)
        self.assertIsNone(session.end_reason)  # a clean close, not a dead peer
        self.assertLessEqual(took, 2 * IDLE_TIMEOUT + 30)

    def test_slow_pong_within_bound_is_fine(self) -> None:
        """A pong that takes (just under) a third of the bound still counts."""
        pair = PeerPair.throwaway(keepalive=30)
        session = pair.initiator_session
        for _ in range(60):
            pair.clock.advance(9)  # nothing moves for 9 s, then everything does
            pair.flush()
        self.assertFalse(session.ended)


class KeepAliveUnitTests(unittest.TestCase):
    def make(self, clock: task.Clock, **kw: Any) -> tuple[KeepAlive, dict[str, Any]]:
        state: dict[str, Any] = {"records": 0, "activity": 0, "pings": 0, "dead": None}
        options: dict[str, Any] = {
            "records": lambda: state["records"],
            "activity": lambda: state["activity"],
            "waiting": lambda: False,
            "ping": lambda: state.__setitem__("pings", state["pings"] + 1),
            "dead": lambda: state.__setitem__("dead", clock.seconds()),
        }
        options.update(kw)
        return KeepAlive(clock, 30, 300, **options), state

    def test_bound_must_be_positive(self) -> None:
        for bad in (0, -1):
            with self.assertRaises(ValueError):
                KeepAlive(task.Clock(), bad, 300, records=int, activity=int, waiting=bool,
                          ping=lambda: None, dead=lambda: None)  # fmt: skip

    def test_stop_cancels(self) -> None:
        clock = task.Clock()
        keepalive, state = self.make(clock)
        keepalive.start()
        keepalive.stop()
        keepalive.stop()  # twice is fine
        clock.advance(100)
        self.assertEqual(state["pings"], 0)
        self.assertIsNone(state["dead"])
        self.assertEqual(clock.getDelayedCalls(), [])

    @settings(max_examples=200, deadline=None)
    @given(
        arrivals=st.lists(st.floats(min_value=0.0, max_value=200.0), max_size=30),
        answer=st.booleans(),
    )
    def test_property_bound(self, arrivals: list[float], answer: bool) -> None:
        """
        Records arrive at random times (and, if C{answer}, right after each ping): the peer
        is declared dead iff it stayed silent, never before 2/3 of the bound of silence and
        never after the whole bound of silence.
        """
        clock = task.Clock()
        state: dict[str, Any] = {"records": 0, "dead": None, "last": 0.0}

        def ping() -> None:
            if answer:
                state["records"] += 1
                state["last"] = clock.seconds()

        def arrive() -> None:
            if state["dead"] is None:
                state["records"] += 1
                state["last"] = clock.seconds()

        def dead() -> None:
            state["dead"] = clock.seconds()

        keepalive = KeepAlive(
            clock, KEEPALIVE, IDLE_TIMEOUT, records=lambda: state["records"],
            activity=lambda: state["records"], waiting=lambda: True, ping=ping, dead=dead,
        )  # fmt: skip
        keepalive.start()
        for at in arrivals:
            clock.callLater(at, arrive)
        while clock.seconds() < 300 and state["dead"] is None:
            clock.advance(0.25)
            if state["dead"] is None:
                self.assertLessEqual(clock.seconds() - state["last"], KEEPALIVE + 1e-6)
        if answer:
            self.assertIsNone(state["dead"])
        else:
            self.assertIsNotNone(state["dead"])
            silence = state["dead"] - state["last"]
            self.assertGreaterEqual(silence, 2 * KEEPALIVE / 3 - 1e-6)
            self.assertLessEqual(silence, KEEPALIVE + 1e-6)


class OptionTests(unittest.TestCase):
    def parse(self, value: str) -> None:
        agent_tap.Options().parseOptions(
            ["--cert", "x.p12", "--trust", "x.pem", "--keepalive", value]
        )

    def test_bad_values(self) -> None:
        for value, message in (
            ("soon", "--keepalive must be a number of seconds"),
            ("-1", "--keepalive must be 0 (off) or a number of seconds"),
            ("inf", "--keepalive must be 0 (off) or a number of seconds"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(value)
            self.assertEqual(str(caught.exception), message)

    def test_default(self) -> None:
        options = agent_tap.Options()
        self.assertEqual(options["keepalive"], "30")
        self.assertEqual(float(options["keepalive"]), KEEPALIVE)


class FrozenPeerProcessTests(E2ECase):
    """
    C{twistd sixchat --keepalive} as a user runs it (real processes on 127.0.0.1, no root):
    bob's agent is frozen (SIGSTOP; his kernel still acknowledges TCP, so only pings can tell),
    alice's session to him is found dead within the bound and her message waits; once bob
    runs again it is delivered, once. The network version, a cut link, is in test_netlab.
    """

    timeout = 180

    @defer.inlineCallbacks
    def test_frozen_peer_detected_then_delivered(self) -> Any:
        bound = 4
        yield self.startRegistry()
        options = ("--keepalive", str(bound), "--handshake-timeout", "5")
        alice = yield self.agent("alice", ALICE, *options).start()
        bob = yield self.agent("bob", BOB, *options).start()
        out, err, code = yield alice.cli("send", BOB, "before", "--wait", "60")
        self.assertEqual(code, 0, out + err + self.dump(alice, bob))

        assert alice.proc is not None and bob.proc is not None
        bob_proc = bob.proc

        def resume() -> None:
            # by number: Twisted's signalProcess knows only a few names, not CONT
            if bob_proc.running:
                bob_proc.transport.signalProcess(signal.SIGCONT)

        self.addCleanup(resume)
        dead = alice.proc.wait(r"answered no ping in \S+ s: session ended as dead", timeout=60)
        frozen_at = reactor.seconds()  # type: ignore[attr-defined]
        bob_proc.signal("STOP")
        out, err, code = yield alice.cli("send", BOB, "while frozen", "--wait", "1")
        self.assertEqual(code, 3, out + err)  # queued
        yield dead
        detected = reactor.seconds() - frozen_at  # type: ignore[attr-defined]
        self.assertLessEqual(detected, bound + 6, self.dump(alice, bob))
        print(f"\nkeepalive: frozen peer detected {detected:.1f} s after SIGSTOP (bound {bound} s)")

        resume()

        def delivered() -> Any:
            return alice.inbox(BOB).addCallback(
                lambda h: [
                    m for m in h if m["body"] == "while frozen" and m["state"] == "delivered"
                ]
            )

        try:
            yield eventually(delivered, 90, "the queued message delivered after SIGCONT")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{alice.log}\n{bob.log}") from None
        inbox = yield bob.inbox()
        self.assertExactlyOnce(inbox, ALICE, ["before", "while frozen"])
