"""
Flow control of the Twisted adapter: our stanzas wait in an outbox while the transport's
buffer is full, answers still go out, and reading stops only when answers back up — over
iosim with a fake clock, and over real TCP on 127.0.0.1 where both peers send faster than
the other reads (the case that used to stall both sides for good).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from sixchat import flow
from sixchat.connection import INITIATOR
from sixchat.flow import MAX_ANSWER_BACKLOG
from sixchat.peers import PeerFactory, connectPeer
from sixchat.protocol import PeerProtocol
from sixchat.session import Session, SessionLost
from sixchat.stanzas import Receipt
from sixchat.test.test_protocol import pair_config
from sixchat.testing import PeerPair, RecordingObserver


def watch_reading(proto: PeerProtocol) -> list[str]:
    """Record the adapter's pause/resume calls on its transport (iosim ignores them)."""
    calls: list[str] = []
    transport: Any = proto.transport
    transport.pauseProducing = lambda: calls.append("pause")
    transport.resumeProducing = lambda: calls.append("resume")
    return calls


class OutboxTests(unittest.TestCase):
    def setUp(self) -> None:
        self.alice, self.bob = pair_config()
        self.pair = PeerPair(self.alice, self.bob)
        assert self.pair.initiator.session is not None and self.pair.responder.session is not None
        self.client: PeerProtocol = self.pair.initiator
        self.server: PeerProtocol = self.pair.responder
        self.alice_session: Session = self.client.session
        self.bob_session: Session = self.server.session

    def received_bodies(self) -> list[str]:
        return [m.body for m in self.pair.responder_observer.messages]

    def test_stanzas_wait_while_the_buffer_is_full_then_leave_in_order(self) -> None:
        self.client.pauseProducing()  # what the transport does when its buffer is full
        receipts = [self.alice_session.sendMessage(f"m{i}") for i in range(5)]
        self.pair.flush()
        self.assertEqual(self.received_bodies(), [])
        self.assertGreater(self.alice_session.queued, 5 * 60)
        self.client.resumeProducing()
        self.pair.flush()
        self.assertEqual(self.received_bodies(), [f"m{i}" for i in range(5)])
        self.assertEqual(self.alice_session.queued, 0)
        for d in receipts:
            self.assertIsInstance(self.successResultOf(d), Receipt)

    def test_batches_of_queued_stanzas_stop_when_the_buffer_fills_again(self) -> None:
        self.client.pauseProducing()
        for i in range(40):
            self.alice_session.sendMessage(f"{i:04d}" + "x" * 8_000)
        writes: list[int] = []
        transport: Any = self.client.transport
        real_write = transport.write

        def write(data: bytes) -> None:
            writes.append(len(data))
            real_write(data)
            self.client.pauseProducing()  # the buffer is full again after every write

        transport.write = write
        self.client.resumeProducing()
        self.assertEqual(len(writes), 1)  # one batch, then it waits again
        self.assertGreaterEqual(writes[0], flow.WRITE_BATCH)
        transport.write = real_write
        while self.alice_session.queued:
            self.client.resumeProducing()
            self.pair.flush()
        self.pair.flush()
        self.assertEqual([b[:4] for b in self.received_bodies()], [f"{i:04d}" for i in range(40)])

    def test_reading_and_answering_go_on_while_our_buffer_is_full(self) -> None:
        calls = watch_reading(self.client)
        self.client.pauseProducing()
        receipts = [self.bob_session.sendMessage(f"to alice {i}") for i in range(20)]
        self.pair.flush()
        self.assertEqual(len(self.pair.initiator_observer.messages), 20)
        for d in receipts:  # alice's receipts did not wait behind her full buffer
            self.assertIsInstance(self.successResultOf(d), Receipt)
        self.assertEqual(calls, [])

    def test_reading_stops_once_answers_back_up_and_resumes_when_drained(self) -> None:
        self.patch(flow, "MAX_ANSWER_BACKLOG", 2_000)
        calls = watch_reading(self.client)
        self.client.pauseProducing()
        for i in range(10):
            self.bob_session.sendMessage(f"{i}")
        self.pair.flush()
        self.assertEqual(calls, [])  # ten receipts: under 2,000 bytes
        for i in range(40):
            self.bob_session.sendMessage(f"{i}")
        self.pair.flush()
        self.assertEqual(calls, ["pause"])
        self.assertGreater(self.client._backlog, 2_000)
        self.client.resumeProducing()
        self.assertEqual(calls, ["pause", "resume"])
        self.assertEqual(self.client._backlog, 0)

    def test_the_real_limit_is_far_above_one_buffer_of_receipts(self) -> None:
        # A receipt record is about 100 bytes: thousands of answers fit before we stop.
        self.assertGreaterEqual(MAX_ANSWER_BACKLOG, 256 * 1024)

    def test_our_close_follows_everything_queued(self) -> None:
        self.client.pauseProducing()
        receipts = [self.alice_session.sendMessage(f"last words {i}") for i in range(3)]
        ended = self.alice_session.close()
        self.pair.flush()
        self.assertEqual(self.received_bodies(), [f"last words {i}" for i in range(3)])
        for d in receipts:
            self.assertIsInstance(self.successResultOf(d), Receipt)
        self.successResultOf(ended)
        self.assertIsNone(self.alice_session.end_reason)  # both closes: a clean end

    def test_the_peers_close_leaves_queued_stanzas_unsent_and_failed(self) -> None:
        self.client.pauseProducing()
        receipts = [self.alice_session.sendMessage(f"too late {i}") for i in range(3)]
        self.bob_session.close()
        self.pair.flush()
        self.assertEqual(self.received_bodies(), [])
        for d in receipts:
            self.failureResultOf(d, SessionLost)
        self.assertTrue(self.alice_session.ended)
        self.assertEqual(self.alice_session.queued, 0)

    def test_errors_reach_the_sender_at_once_while_queued(self) -> None:
        self.client.pauseProducing()
        bad = self.alice_session.sendMessage("nul \x00 is not an XML character")
        self.failureResultOf(bad, ValueError)
        self.assertEqual(self.alice_session.queued, 0)
        self.client.connection.close()  # after our close only receipts may be sent
        late = self.alice_session.sendMessage("after close")
        self.failureResultOf(late, SessionLost)

    def test_when_writable(self) -> None:
        self.successResultOf(self.alice_session.whenWritable())
        self.client.pauseProducing()
        waiting = self.alice_session.whenWritable()
        self.assertNoResult(waiting)
        sent = self.alice_session.sendMessage("queued")
        self.client.resumeProducing()
        self.successResultOf(waiting)
        self.client.pauseProducing()
        unsent = self.alice_session.sendMessage("queued again")
        lost = self.alice_session.whenWritable()
        self.client.transport.loseConnection()  # type: ignore[union-attr]
        self.pair.flush()
        self.failureResultOf(lost, SessionLost)
        self.failureResultOf(unsent, SessionLost)
        self.assertIsInstance(self.successResultOf(sent), Receipt)
        self.failureResultOf(self.alice_session.whenWritable(), SessionLost)

    def test_writable_says_whether_when_writable_would_fire_at_once(self) -> None:
        self.assertTrue(self.alice_session.writable)
        self.client.pauseProducing()  # the transport's buffer is full
        self.assertFalse(self.alice_session.writable)
        self.client.resumeProducing()
        self.assertTrue(self.alice_session.writable)
        self.client.pauseProducing()
        self.alice_session.sendMessage("queued")
        self.client.resumeProducing()  # drained: the outbox is empty again
        self.assertTrue(self.alice_session.writable)
        self.client.pauseProducing()
        self.alice_session.sendMessage("still queued")
        self.client._write_full = False  # room again, but our own stanza still waits
        self.assertFalse(self.alice_session.writable)
        self.client.resumeProducing()
        self.assertTrue(self.alice_session.writable)
        self.client.transport.loseConnection()  # type: ignore[union-attr]
        self.pair.flush()
        self.assertFalse(self.alice_session.writable)
        self.failureResultOf(self.alice_session.whenWritable(), SessionLost)

    def test_writes_pieces_as_a_sequence_or_joined(self) -> None:
        """
        A large message leaves as one writeSequence (header and ciphertext, not joined by
        us), many small records as one joined write; the peer gets them all either way.
        """
        calls: list[tuple[str, int]] = []
        transport: Any = self.client.transport
        write, write_sequence = transport.write, transport.writeSequence

        inside: list[bool] = []  # iosim's writeSequence calls write: not counted

        def counting_write(data: bytes) -> None:
            if not inside:
                calls.append(("write", 1))
            write(data)

        def counting_sequence(pieces: list[bytes]) -> None:
            calls.append(("sequence", len(pieces)))
            inside.append(True)
            write_sequence(pieces)
            inside.pop()

        transport.write, transport.writeSequence = counting_write, counting_sequence
        self.alice_session.sendMessage("x" * 20_000)
        self.assertEqual(calls, [("sequence", 2)])
        del calls[:]
        self.client._coalescing = True  # as while handling a read: one flush for all
        for i in range(flow._PIECES_AS_SEQUENCE + 1):
            self.alice_session.sendMessage(f"m{i}")
        self.client._coalescing = False
        self.client.flush()
        self.assertEqual(calls, [("write", 1)])
        self.pair.flush()
        self.assertEqual(
            self.received_bodies(),
            ["x" * 20_000, *(f"m{i}" for i in range(flow._PIECES_AS_SEQUENCE + 1))],
        )

    def test_explicit_receipts_are_answers(self) -> None:
        self.client.pauseProducing()
        self.alice_session.sendReceipt("0123456789abcdef")
        self.assertEqual(self.alice_session.queued, 0)
        self.pair.flush()
        self.assertEqual(
            [s.id for s in self.pair.responder_observer.stanzas if isinstance(s, Receipt)],
            ["0123456789abcdef"],
        )

    def test_held_input_fits_the_read_size_to_the_room_left(self) -> None:
        """
        While input is held (file chunks awaiting the disk), the transport reads at most the
        room left under the limit on data held for the disk (MAX_HELD), within
        READ_MIN..READ_MAX; the default once nothing is held. A transport without a read
        size is left alone.
        """
        transport: Any = self.server.transport
        transport.bufferSize = 65536  # as a TCP transport has (iosim's has none)
        calls = watch_reading(self.server)
        limit = flow.MAX_HELD
        session = self.bob_session
        session.holdInput(32768)
        self.assertEqual(transport.bufferSize, min(flow.READ_MAX, limit - 32768))
        session.holdInput(limit - 32768 - 1000)  # 1000 bytes of room: the smallest read
        self.assertEqual(transport.bufferSize, flow.READ_MIN)
        self.assertEqual(calls, [])  # not over the limit yet
        session.holdInput(2000)
        self.assertEqual(calls, ["pause"])
        session.releaseInput(limit - 32768 + 1000)  # 32,768 bytes still held
        self.assertEqual(
            (transport.bufferSize, calls),
            (min(flow.READ_MAX, limit - 32768), ["pause", "resume"]),
        )
        session.releaseInput(32768)
        self.assertEqual(transport.bufferSize, 65536)
        self.assertEqual(self.server.unstored, 0)
        del transport.bufferSize
        session.holdInput(100)
        session.releaseInput(100)
        self.assertFalse(hasattr(transport, "bufferSize"))

    def test_held_input_and_messages_awaiting_storage_have_their_own_limits(self) -> None:
        """
        Data held for the disk stops reading past MAX_HELD, not past the §9.2 limit;
        messages awaiting storage still stop it past MAX_UNPROCESSED, whatever is held.
        """
        calls = watch_reading(self.server)
        session = self.bob_session
        self.assertGreater(flow.MAX_HELD, flow.MAX_UNPROCESSED)
        session.holdInput(flow.MAX_UNPROCESSED + 1)
        self.assertEqual(calls, [])  # past 256 KiB, but held for the disk: still reading
        session.holdInput(flow.MAX_HELD - flow.MAX_UNPROCESSED - 1)
        self.assertEqual(calls, [])  # exactly MAX_HELD: still reading
        session.holdInput(1)
        self.assertEqual(calls, ["pause"])
        session.releaseInput(flow.MAX_HELD)
        self.assertEqual(calls, ["pause", "resume"])
        self.server.unstored += flow.MAX_UNPROCESSED + 1  # messages awaiting storage
        self.server._updateReading()
        self.assertEqual(calls, ["pause", "resume", "pause"])
        self.server.unstored -= flow.MAX_UNPROCESSED + 1
        self.server._updateReading()
        self.assertEqual(calls, ["pause", "resume", "pause", "resume"])
        session.releaseInput(1)
        self.assertEqual(self.server.unstored, 0)


class BothSidesFloodTests(unittest.TestCase):
    """
    Real TCP on 127.0.0.1: each peer queues 24 MB of 16 KB messages in one go, far more
    than the kernel's socket buffers, and neither waits for anything before sending all of
    it. Each must receive all of the other's, in order, and get every receipt. Before the
    outbox, each side stopped reading as soon as its own write buffer filled, and both
    stalled for good.
    """

    timeout = 120
    COUNT = 1_500
    BODY = 16_000

    async def test_both_directions_at_once(self) -> None:
        alice, bob = pair_config()
        bob_observer = RecordingObserver()
        alice_observer = RecordingObserver()
        factory = PeerFactory(bob, reactor, bob_observer)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        alice_session = await connectPeer(
            reactor, endpoint, None, to="bob@example.com", config=alice, observer=alice_observer
        )
        self.addCleanup(lambda: alice_session._protocol.transport.abortConnection())  # type: ignore[union-attr]
        while not bob_observer.started:
            await task.deferLater(reactor, 0.01)
        bob_session = bob_observer.started[0]
        self.assertEqual(alice_session._protocol.role, INITIATOR)

        def flood(session: Session, tag: str) -> list[defer.Deferred[Any]]:
            return [
                session.sendMessage(f"{tag}{i:05d}".ljust(self.BODY, "."))
                for i in range(self.COUNT)
            ]

        from_alice = flood(alice_session, "a")
        from_bob = flood(bob_session, "b")
        self.assertGreater(alice_session.queued, 10_000_000)  # most of it waits in the outbox
        self.assertGreater(bob_session.queued, 10_000_000)
        receipts = await defer.gatherResults(from_alice + from_bob)
        self.assertEqual(len(receipts), 2 * self.COUNT)
        self.assertTrue(all(isinstance(r, Receipt) for r in receipts))
        self.assertEqual(
            [m.body[:6] for m in bob_observer.messages], [f"a{i:05d}" for i in range(self.COUNT)]
        )
        self.assertEqual(
            [m.body[:6] for m in alice_observer.messages],
            [f"b{i:05d}" for i in range(self.COUNT)],
        )
        self.assertEqual(alice_session.queued, 0)
        await alice_session.close()
        self.assertIsNone(alice_session.end_reason)
