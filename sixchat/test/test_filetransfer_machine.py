"""
Tests for L{sixchat.filetransfer.machine}: the §8.7 transfer state machines of both roles,
driven against each other (property tests) and with hostile input (offset gaps, size lies,
SHA-256 mismatches, offers beyond the limits, stanzas in the wrong state).
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sixchat.errors import StanzaError
from sixchat.filetransfer.machine import (
    Check,
    FileLimits,
    FileReceiver,
    FileSender,
    IncomingFile,
    Verified,
)
from sixchat.filetransfer.stanzas import MAX_CHUNK, Accept, Chunk, Done, FileOffer, Reject
from sixchat.stanzas import Receipt

HYPOTHESIS = settings(max_examples=150, deadline=None)
SESSION = object()


def offer_for(data: bytes, fid: str = "f1", size: int | None = None) -> FileOffer:
    return FileOffer(
        fid, "a.bin", len(data) if size is None else size, hashlib.sha256(data).digest()
    )


def prefix_hasher(data: bytes) -> hashlib._Hash:
    """What the agent rebuilds from the durable prefix on disk."""
    hasher = hashlib.sha256()
    hasher.update(data)
    return hasher


def accept(receiver: FileReceiver, offer: FileOffer, held: bytes = b"") -> Accept:
    incoming = receiver.reserve(offer, SESSION)
    assert isinstance(incoming, IncomingFile), incoming
    answer = receiver.accept(offer.id, len(held), prefix_hasher(held))
    assert isinstance(answer, Accept), answer
    return answer


def refused(test: SynchronousTestCase, call, *args) -> StanzaError:  # type: ignore[no-untyped-def]
    error = test.assertRaises(StanzaError, call, *args)
    return error


def transfer(data: bytes, sizes: list[int], held: int = 0) -> tuple[bytes, Receipt, int]:
    """Send C{data} to a receiver that holds C{held} bytes, in chunks of C{sizes}."""
    sender, receiver = FileSender(), FileReceiver()
    offer = offer_for(data)
    outgoing = sender.offer(offer)
    disk = bytearray(data[:held])
    outgoing_accept = accept(receiver, offer, bytes(disk))
    sender.accept(outgoing_accept)
    i = 0
    while outgoing.want():
        n = min(outgoing.want(), max(1, sizes[i % len(sizes)] if sizes else MAX_CHUNK))
        i += 1
        chunk = outgoing.next_chunk(data[outgoing.sent : outgoing.sent + n])
        incoming, keep = receiver.chunk(chunk, SESSION)
        assert len(disk) == incoming.held - len(keep)
        disk += keep
    outcome = receiver.done(outgoing.finish(), SESSION)
    assert isinstance(outcome, Verified), outcome
    receipt = receiver.stored(offer.id)
    assert sender.receipt(receipt) is outgoing and outgoing.state == "delivered"
    return bytes(disk), receipt, outgoing.resumed_from


class PropertyTests(SynchronousTestCase):
    @HYPOTHESIS
    @given(
        st.binary(max_size=5 * MAX_CHUNK // 2),
        st.lists(st.integers(1, MAX_CHUNK), max_size=8),
        st.data(),
    )
    def test_any_split_and_any_resume_point_gives_the_file(
        self, data: bytes, sizes: list[int], draw: st.DataObject
    ) -> None:
        held = draw.draw(st.integers(0, len(data)))
        stored, receipt, resumed_from = transfer(data, sizes, held)
        self.assertEqual(stored, data)
        self.assertEqual(receipt, Receipt("f1"))
        self.assertEqual(resumed_from, held)

    @HYPOTHESIS
    @given(
        st.binary(min_size=1, max_size=3 * MAX_CHUNK),
        st.lists(
            st.tuples(
                st.integers(0, 4 * MAX_CHUNK),
                st.binary(max_size=MAX_CHUNK) | st.integers(0, MAX_CHUNK).map(bytes),
            ),
            max_size=12,
        ),
        st.booleans(),
    )
    def test_hostile_chunks_never_overrun_and_never_verify_wrong_data(
        self, data: bytes, chunks: list[tuple[int, bytes]], done: bool
    ) -> None:
        """Whatever a peer sends, the receiver holds at most size bytes, contiguous from 0,
        and verifies only the offered content."""
        receiver = FileReceiver()
        offer = offer_for(data)
        accept(receiver, offer)
        disk = bytearray()
        for offset, payload in chunks:
            if receiver.get("f1") is None:
                break
            before = receiver.get("f1").received  # type: ignore[union-attr]
            try:
                incoming, keep = receiver.chunk(Chunk("f1", offset, payload), SESSION)
            except StanzaError as e:
                self.assertEqual((e.reason, e.ref), ("bad_request", "f1"))
                self.assertNotEqual(offset, before)
                self.assertIsNone(receiver.get("f1"))  # the sender takes the error as final
                break
            self.assertEqual(offset, before)
            disk += keep
            self.assertEqual(incoming.held, len(disk))
            self.assertLessEqual(len(disk), offer.size)
        incoming = receiver.get("f1")
        if done and incoming is not None:
            outcome = receiver.done(Done("f1"), SESSION)
            if isinstance(outcome, Verified):
                self.assertEqual(bytes(disk), data)
            else:
                self.assertIn(outcome.reason, ("size_mismatch", "sha256_mismatch"))
                self.assertIsNone(receiver.get("f1"))


def run_receiver(
    data: bytes, held: bytes, chunks: list[tuple[int, bytes]], done: bool, ours: bool
) -> list[object]:
    """
    Feed C{chunks} (and C{done}) to a receiver that took the offer of C{data} at the
    prefix C{held}: with the machine hashing, or (C{ours}) with the caller hashing what
    C{chunk} returns and settling C{done} with C{verify}. Every answer, in order.
    """
    receiver = FileReceiver()
    offer = offer_for(data)
    receiver.reserve(offer, SESSION)
    caller = prefix_hasher(held)
    receiver.accept("f1", len(held), None if ours else prefix_hasher(held))
    answers: list[object] = []
    for offset, payload in chunks:
        try:
            incoming, keep = receiver.chunk(Chunk("f1", offset, payload), SESSION)
        except StanzaError as e:
            answers.append((e.reason, e.ref))
            continue
        caller.update(keep)
        answers.append((incoming.received, incoming.held, keep))
    if done:
        try:
            outcome = receiver.done(Done("f1"), SESSION)
        except StanzaError as e:
            answers.append((e.reason, e.ref))
        else:
            if isinstance(outcome, Check):
                assert ours and outcome.file.state == "checking"
                outcome = receiver.verify(outcome.file, caller.digest())
            answers.append(outcome if isinstance(outcome, Reject) else "verified")
    answers.append(sorted(f.id for f in receiver))
    return answers


class CallerHashTests(SynchronousTestCase):
    """C{accept(hasher=None)}: the caller hashes (the agent, in its disk thread)."""

    @HYPOTHESIS
    @given(
        st.binary(max_size=3 * MAX_CHUNK),
        st.lists(
            st.tuples(
                st.integers(0, 4 * MAX_CHUNK),
                st.binary(max_size=MAX_CHUNK) | st.integers(0, MAX_CHUNK).map(bytes),
            ),
            max_size=10,
        ),
        st.booleans(),
        st.booleans(),
        st.data(),
    )
    def test_same_answers_as_the_machine_hashing(
        self,
        data: bytes,
        chunks: list[tuple[int, bytes]],
        done: bool,
        good_prefix: bool,
        draw: st.DataObject,
    ) -> None:
        """Hostile or not, every answer and verdict is the same whoever hashes."""
        cut = draw.draw(st.integers(0, len(data)))
        held = data[:cut] if good_prefix else bytes(cut)
        # Make the honest continuation likely: the rest of the file in chunks, then junk.
        if draw.draw(st.booleans()):
            chunks = [(cut + i, data[cut + i : cut + i + MAX_CHUNK])
                      for i in range(0, len(data) - cut, MAX_CHUNK)] + chunks  # fmt: skip
        self.assertEqual(
            run_receiver(data, held, chunks, done, ours=True),
            run_receiver(data, held, chunks, done, ours=False),
        )

    def test_the_whole_file_checks_and_is_stored(self) -> None:
        data = bytes(range(256)) * 300
        receiver = FileReceiver()
        receiver.reserve(offer_for(data), SESSION)
        self.assertEqual(receiver.accept("f1", 0, None), Accept("f1", 0))
        for offset in range(0, len(data), MAX_CHUNK):
            receiver.chunk(Chunk("f1", offset, data[offset : offset + MAX_CHUNK]), SESSION)
        check = receiver.done(Done("f1"), SESSION)
        assert isinstance(check, Check)
        self.assertEqual(check.file.state, "checking")
        # Nothing more is taken while the caller hashes.
        self.assertEqual(refused(self, receiver.done, Done("f1"), SESSION).reason, "bad_request")

    def test_verify(self) -> None:
        data = b"abc"
        for digest, expected in (
            (hashlib.sha256(data).digest(), "verified"),
            (hashlib.sha256(b"abd").digest(), Reject("f1", "sha256_mismatch")),
        ):
            receiver = FileReceiver()
            receiver.reserve(offer_for(data), SESSION)
            receiver.accept("f1", 0, None)
            receiver.chunk(Chunk("f1", 0, data), SESSION)
            check = receiver.done(Done("f1"), SESSION)
            assert isinstance(check, Check)
            outcome = receiver.verify(check.file, digest)
            if expected == "verified":
                self.assertIsInstance(outcome, Verified)
                self.assertEqual(receiver.stored("f1"), Receipt("f1"))
            else:
                self.assertEqual(outcome, expected)
                self.assertIsNone(receiver.get("f1"))
            self.assertEqual(len(receiver), 0)
            # Only a transfer being checked can be verified, and only once.
            self.assertRaises(ValueError, receiver.verify, check.file, digest)

    def test_a_size_lie_needs_no_hash(self) -> None:
        receiver = FileReceiver()
        receiver.reserve(offer_for(b"abcdef"), SESSION)
        receiver.accept("f1", 0, None)
        receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        self.assertEqual(receiver.done(Done("f1"), SESSION), Reject("f1", "size_mismatch"))

    def test_verify_after_the_session_ended(self) -> None:
        """The session went while the caller hashed: the verdict is the same, nothing leaks."""
        receiver = FileReceiver()
        receiver.reserve(offer_for(b"abc"), SESSION)
        receiver.accept("f1", 0, None)
        receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        check = receiver.done(Done("f1"), SESSION)
        assert isinstance(check, Check)
        self.assertEqual(receiver.detach(SESSION), [check.file])
        outcome = receiver.verify(check.file, hashlib.sha256(b"abc").digest())
        self.assertIsInstance(outcome, Verified)
        self.assertEqual(len(receiver), 0)


class ReceiverTests(SynchronousTestCase):
    data = bytes(range(256)) * 300  # 76,800 bytes: three chunks

    def setUp(self) -> None:
        self.receiver = FileReceiver()
        self.offer = offer_for(self.data)

    def test_accept_carries_the_durable_prefix(self) -> None:
        self.assertEqual(accept(self.receiver, self.offer, self.data[:1000]), Accept("f1", 1000))
        incoming, keep = self.receiver.chunk(Chunk("f1", 1000, self.data[1000:2000]), SESSION)
        self.assertEqual(
            (keep, incoming.held, incoming.resumed_from), (self.data[1000:2000], 2000, 1000)
        )

    def test_offset_gaps_and_repeats_are_bad_request(self) -> None:
        for offset in (1, 100, MAX_CHUNK):
            accept(self.receiver, self.offer)
            error = refused(self, self.receiver.chunk, Chunk("f1", offset, b"x"), SESSION)
            self.assertEqual((error.reason, error.ref), ("bad_request", "f1"))
        accept(self.receiver, self.offer)
        self.receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        error = refused(self, self.receiver.chunk, Chunk("f1", 0, b"abc"), SESSION)  # a repeat
        self.assertEqual(error.reason, "bad_request")

    def test_a_bad_chunk_ends_the_transfer_and_a_reoffer_resumes(self) -> None:
        accept(self.receiver, self.offer)
        self.receiver.chunk(Chunk("f1", 0, self.data[:10]), SESSION)
        refused(self, self.receiver.chunk, Chunk("f1", 99, b"x"), SESSION)
        self.assertEqual(len(self.receiver), 0)
        self.assertEqual(accept(self.receiver, self.offer, self.data[:10]), Accept("f1", 10))

    def test_unknown_ids_are_bad_request(self) -> None:
        for call, stanza in (
            (self.receiver.chunk, Chunk("zz", 0, b"x")),
            (self.receiver.done, Done("zz")),
        ):
            error = refused(self, call, stanza, SESSION)
            self.assertEqual((error.reason, error.ref), ("bad_request", "zz"))

    def test_chunks_before_the_accept_or_on_another_session_are_bad_request(self) -> None:
        self.receiver.reserve(self.offer, SESSION)
        self.assertEqual(
            refused(self, self.receiver.chunk, Chunk("f1", 0, b"x"), SESSION).reason, "bad_request"
        )
        accept(self.receiver, self.offer)
        self.assertEqual(
            refused(self, self.receiver.chunk, Chunk("f1", 0, b"x"), object()).reason, "bad_request"
        )
        self.assertEqual(
            refused(self, self.receiver.done, Done("f1"), object()).reason, "bad_request"
        )

    def test_size_lies(self) -> None:
        """Fewer bytes than offered, or more (dropped), is reject size_mismatch at done."""
        accept(self.receiver, self.offer)
        self.receiver.chunk(Chunk("f1", 0, self.data[:100]), SESSION)
        self.assertEqual(self.receiver.done(Done("f1"), SESSION), Reject("f1", "size_mismatch"))

        small = offer_for(b"abc")
        accept(self.receiver, small)
        incoming, keep = self.receiver.chunk(Chunk("f1", 0, b"abcdef"), SESSION)
        self.assertEqual((keep, incoming.held, incoming.received), (b"abc", 3, 6))
        incoming, keep = self.receiver.chunk(Chunk("f1", 6, b"more"), SESSION)  # offsets count all
        self.assertEqual((keep, incoming.held), (b"", 3))
        self.assertEqual(self.receiver.done(Done("f1"), SESSION), Reject("f1", "size_mismatch"))
        self.assertIsNone(self.receiver.get("f1"))

    def test_sha256_mismatch(self) -> None:
        lie = FileOffer("f1", "a", len(self.data), hashlib.sha256(b"other").digest())
        accept(self.receiver, lie)
        for offset in range(0, len(self.data), MAX_CHUNK):
            self.receiver.chunk(
                Chunk("f1", offset, self.data[offset : offset + MAX_CHUNK]), SESSION
            )
        self.assertEqual(self.receiver.done(Done("f1"), SESSION), Reject("f1", "sha256_mismatch"))
        self.assertEqual(len(self.receiver), 0)

    def test_a_wrong_prefix_hash_is_caught(self) -> None:
        """The hash of a resumed prefix is rebuilt from disk: a corrupt prefix fails the check."""
        self.receiver.reserve(self.offer, SESSION)
        self.receiver.accept("f1", 10, prefix_hasher(b"X" * 10))
        for offset in range(10, len(self.data), MAX_CHUNK):
            self.receiver.chunk(
                Chunk("f1", offset, self.data[offset : offset + MAX_CHUNK]), SESSION
            )
        self.assertEqual(self.receiver.done(Done("f1"), SESSION), Reject("f1", "sha256_mismatch"))

    def test_nothing_after_done(self) -> None:
        accept(self.receiver, offer_for(b""))
        self.assertIsInstance(self.receiver.done(Done("f1"), SESSION), Verified)
        self.assertEqual(
            refused(self, self.receiver.chunk, Chunk("f1", 0, b"x"), SESSION).reason, "bad_request"
        )
        self.assertIsNone(self.receiver.get("f1"))  # the bad chunk ended it

    def test_oversize_chunks_built_by_hand(self) -> None:
        accept(self.receiver, self.offer)
        error = refused(self, self.receiver.chunk, Chunk("f1", 0, b"x" * (MAX_CHUNK + 1)), SESSION)
        self.assertEqual((error.reason, error.ref), ("too_large", "f1"))

    def test_done_twice(self) -> None:
        accept(self.receiver, offer_for(b""))
        self.receiver.done(Done("f1"), SESSION)
        self.assertEqual(
            refused(self, self.receiver.done, Done("f1"), SESSION).reason, "bad_request"
        )

    def test_receipt_only_once_stored(self) -> None:
        accept(self.receiver, offer_for(b"abc"))
        self.assertRaises(ValueError, self.receiver.stored, "f1")
        self.receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        self.assertIsInstance(self.receiver.done(Done("f1"), SESSION), Verified)
        self.assertEqual(self.receiver.stored("f1"), Receipt("f1"))
        self.assertEqual(len(self.receiver), 0)

    def test_already_stored_is_answered_with_a_receipt(self) -> None:
        """§11.9."""
        self.receiver.reserve(self.offer, SESSION)
        self.assertEqual(self.receiver.already_stored("f1"), Receipt("f1"))
        self.assertEqual(len(self.receiver), 0)

    def test_offers_over_the_size_limit(self) -> None:
        receiver = FileReceiver(FileLimits(max_size=100))
        self.assertEqual(
            receiver.reserve(offer_for(b"", size=101), SESSION), Reject("f1", "too_large")
        )
        self.assertIsInstance(receiver.reserve(offer_for(b"", size=100), SESSION), IncomingFile)

    def test_offers_over_the_free_space(self) -> None:
        self.receiver.reserve(self.offer, SESSION)
        self.assertEqual(
            self.receiver.accept("f1", 0, prefix_hasher(b""), free=100), Reject("f1", "no_space")
        )
        self.assertEqual(len(self.receiver), 0)
        self.receiver.reserve(self.offer, SESSION)  # what is held already does not count again
        held = len(self.data) - 100
        self.assertEqual(
            self.receiver.accept("f1", held, prefix_hasher(self.data[:held]), free=100),
            Accept("f1", held),
        )

    def test_thousands_of_offers_hold_a_bounded_number(self) -> None:
        receiver = FileReceiver(FileLimits(max_concurrent=3))
        answers = [receiver.reserve(offer_for(b"x", f"f{i}"), SESSION) for i in range(5000)]
        self.assertEqual(len(receiver), 3)
        self.assertEqual(sum(isinstance(a, IncomingFile) for a in answers), 3)
        self.assertEqual({a.reason for a in answers if isinstance(a, Reject)}, {"busy"})
        receiver.decline("f0", "declined")
        self.assertIsInstance(receiver.reserve(offer_for(b"x", "f9"), SESSION), IncomingFile)

    def test_a_reoffer_replaces_the_transfer_without_a_second_slot(self) -> None:
        receiver = FileReceiver(FileLimits(max_concurrent=1))
        accept(receiver, self.offer)
        receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        self.assertIsInstance(receiver.reserve(self.offer, SESSION), IncomingFile)
        self.assertEqual(receiver.accept("f1", 3, prefix_hasher(self.data[:3])), Accept("f1", 3))

    def test_a_session_that_ends_takes_its_transfers(self) -> None:
        other = object()
        accept(self.receiver, self.offer)
        self.receiver.reserve(offer_for(b"", "f2"), other)
        self.assertEqual([f.id for f in self.receiver.detach(SESSION)], ["f1"])
        self.assertEqual([f.id for f in self.receiver], ["f2"])

    def test_decisions_need_an_offer(self) -> None:
        self.assertRaises(ValueError, self.receiver.accept, "f1", 0, prefix_hasher(b""))
        self.assertRaises(ValueError, self.receiver.already_stored, "f1")
        self.receiver.reserve(self.offer, SESSION)
        self.assertRaises(
            ValueError, self.receiver.accept, "f1", len(self.data) + 1, prefix_hasher(b"")
        )


class SenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sender = FileSender()
        self.outgoing = self.sender.offer(offer_for(b"abcdef"))

    def test_flow(self) -> None:
        self.assertEqual((self.outgoing.state, self.outgoing.want()), ("offered", 0))
        self.sender.accept(Accept("f1", 2))
        self.assertEqual(
            (self.outgoing.state, self.outgoing.want(), self.outgoing.resumed_from),
            ("sending", 4, 2),
        )
        self.assertRaises(ValueError, self.outgoing.finish)
        self.assertRaises(ValueError, self.outgoing.next_chunk, b"")
        self.assertRaises(ValueError, self.outgoing.next_chunk, b"12345")
        self.assertEqual(self.outgoing.next_chunk(b"cdef"), Chunk("f1", 2, b"cdef"))
        self.assertEqual(self.outgoing.finish(), Done("f1"))
        self.assertIs(self.sender.receipt(Receipt("f1")), self.outgoing)
        self.assertEqual(self.outgoing.state, "delivered")
        self.assertIsNone(self.sender.receipt(Receipt("f1")))  # unknown: ignored (§8.2)

    def test_a_receipt_for_the_offer_means_already_stored(self) -> None:
        self.assertIs(self.sender.receipt(Receipt("f1")), self.outgoing)
        self.assertTrue(self.outgoing.finished)

    def test_reject_is_final(self) -> None:
        self.sender.accept(Accept("f1", 0))
        self.assertIs(self.sender.reject(Reject("f1", "no_space")), self.outgoing)
        self.assertEqual((self.outgoing.state, self.outgoing.reason), ("failed", "no_space"))
        self.assertEqual(len(self.sender), 0)

    def test_error_is_final(self) -> None:
        self.assertIsNone(self.sender.error("other", "unsupported"))
        self.assertIsNone(self.sender.error(None, "unsupported"))
        self.assertIs(self.sender.error("f1", "unsupported"), self.outgoing)
        self.assertEqual(self.outgoing.reason, "unsupported")

    def test_bad_accepts_and_rejects(self) -> None:
        for call, stanza in (
            (self.sender.accept, Accept("zz", 0)),
            (self.sender.reject, Reject("zz", "busy")),
        ):
            error = self.assertRaises(StanzaError, call, stanza)
            self.assertEqual((error.reason, error.ref), ("bad_request", "zz"))
        error = self.assertRaises(StanzaError, self.sender.accept, Accept("f1", 7))  # past the end
        self.assertEqual(error.reason, "bad_request")
        self.sender.accept(Accept("f1", 6))  # all held: done at once
        self.assertEqual(self.outgoing.want(), 0)
        self.assertEqual(self.outgoing.finish(), Done("f1"))
        error = self.assertRaises(StanzaError, self.sender.accept, Accept("f1", 0))  # twice
        self.assertEqual(error.reason, "bad_request")

    def test_cut_short(self) -> None:
        """The source changed: done early, and the receiver rejects the file."""
        self.assertRaises(ValueError, self.outgoing.cut_short)
        self.sender.accept(Accept("f1", 0))
        self.outgoing.next_chunk(b"abc")
        self.assertEqual(self.outgoing.cut_short(), Done("f1"))
        self.assertEqual(self.outgoing.state, "sent")
        receiver = FileReceiver()
        accept(receiver, offer_for(b"abcdef"))
        receiver.chunk(Chunk("f1", 0, b"abc"), SESSION)
        self.assertEqual(receiver.done(Done("f1"), SESSION), Reject("f1", "size_mismatch"))

    def test_one_offer_per_id_and_session(self) -> None:
        self.assertRaises(ValueError, self.sender.offer, offer_for(b"abcdef"))

    def test_abandon(self) -> None:
        self.assertEqual(self.sender.abandon(), [self.outgoing])
        self.assertEqual(len(self.sender), 0)
