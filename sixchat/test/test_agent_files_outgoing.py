"""
Outgoing files across own nodes (docs/protocol.md 8.6, "Files"): the file's outbox entry and
history line reach every node of ours by the feed (an C{out} item with C{file}); only a node
that holds the bytes delivers it. Real agents on 127.0.0.1: two nodes of alice, and bob.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from sixchat.agent import ownnodes
from sixchat.agent.files import receiving, spool
from sixchat.agent.store import files
from sixchat.agent.store.database import MessageDatabase
from sixchat.agent.store.files import TransferRecord
from sixchat.filetransfer import FileOffer
from sixchat.identity import same_identity
from sixchat.session import StanzaRefused
from sixchat.test import certs
from sixchat.test.test_agent_files import payload
from sixchat.test.test_agent_service import AgentCase

ALICE = "alice@example.com"
BOB = "bob@example.com"


class OutgoingFileCase(AgentCase):
    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        self.patch(ownnodes, "REDIAL_MIN", 0.1)
        self.alice_ids = {
            "laptop": self.identity(ALICE, key=certs.new_key("ed25519")),
            "home": self.identity(ALICE, key=certs.new_key("ed25519")),
            "phone": self.identity(ALICE, key=certs.new_key("ed25519")),
        }
        self.bob_id = self.identity(BOB)

    source_name = "report.pdf"

    @defer.inlineCallbacks
    def node(self, name: str, **kw: Any) -> Any:
        agent, events = yield self.agent(ALICE, name, identity=self.alice_ids[name], **kw)
        self.directory.publish(ALICE, name, agent)
        return agent, events

    @defer.inlineCallbacks
    def bob(self, publish: bool = True) -> Any:
        bob, _ = yield self.agent(BOB, identity=self.bob_id)
        if publish:
            self.directory.publish(BOB, "n1", bob)
        return bob

    @defer.inlineCallbacks
    def stop(self, agent: Any, node: str) -> Any:
        self.directory.withdraw(ALICE, node)
        yield agent.stopService()

    @defer.inlineCallbacks
    def out_file(self, agent: Any, file_id: str, state: str | None = None) -> Any:
        files = yield agent.files()
        got = [f for f in files if f["id"] == file_id and f["direction"] == "out"]
        if got and (state is None or got[0]["state"] == state):
            return got[0]
        return None

    @defer.inlineCallbacks
    def received(self, bob: Any, file_id: str) -> Any:
        files = yield bob.files()
        return [f for f in files if f["id"] == file_id and f["state"] == "received"]

    @defer.inlineCallbacks
    def can_deliver(self, agent: Any, file_id: str) -> Any:
        """Until C{agent} holds the file's bytes and its outbox entry (by the feed)."""
        yield self.until(lambda: file_id in agent.file_outbox.held, 30)
        yield self.until(lambda: agent.store.status(file_id), 30)

    @defer.inlineCallbacks
    def linked(self, *agents: Any) -> Any:
        yield self.until(lambda: all(a.own_nodes.file_links() for a in agents), 30)


class WithoutTheBytesTests(OutgoingFileCase):
    @defer.inlineCallbacks
    def test_a_node_without_the_bytes_shows_the_file_and_never_delivers_it(self) -> Any:
        bob = yield self.bob(publish=False)  # offline
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home", max_file_size=10)  # refuses any copy: never holds
        yield self.linked(laptop, home)
        data = payload(300_000)
        queued = yield laptop.sendFile(BOB, self.source(data))
        text = yield laptop.send(BOB, "and a text")
        # home shows the file (and its history line), queued, with no path
        got = yield self.until(lambda: self.out_file(home, queued["id"], "queued"), 30)
        self.assertEqual(
            (got["peer"], got["name"], got["size"], got["sha256"], got["path"]),
            (BOB, "report.pdf", len(data), hashlib.sha256(data).hexdigest(), None),
        )
        history = yield home.history(BOB, None, 10)
        self.assertIn(f"[file] report.pdf ({len(data)} bytes)", [h["body"] for h in history])
        self.assertIn(queued["id"], home.file_outbox.ids)
        self.assertNotIn(queued["id"], home.file_outbox.held)
        # the laptop goes; bob comes online; home delivers the text, never the file
        yield self.stop(laptop, "laptop")
        self.directory.publish(BOB, "n1", bob)
        yield self.until(
            lambda: bob.history(ALICE, None, 10).addCallback(
                lambda h: [m for m in h if m["id"] == text["id"]]
            ),
            30,
        )
        bob_history = yield bob.history(ALICE, None, 10)
        self.assertEqual([m["body"] for m in bob_history], ["and a text"])
        self.assertEqual((yield bob.files()), [])
        # the laptop, back, delivers it; home learns the receipt by the feed
        laptop, _ = yield self.node("laptop")
        [got] = yield self.until(lambda: self.received(bob, queued["id"]), 30)
        self.assertEqual(got["sha256"], hashlib.sha256(data).hexdigest())
        yield self.until(lambda: self.out_file(home, queued["id"], "delivered"), 30)
        bob_history = yield bob.history(ALICE, None, 10)
        self.assertEqual(
            sorted(m["body"] for m in bob_history),
            sorted(["and a text", f"[file] report.pdf ({len(data)} bytes)"]),
        )


def spool_files(agent: Any) -> list[str]:
    root = os.path.join(agent.data_dir, "spool")
    return sorted(n for n in os.listdir(root) if n != ".partial")


def out_held(agent: Any) -> defer.Deferred[list[tuple[str, str, str]]]:
    """The store's C{sync_out_files} rows: which own node holds which outgoing file."""
    return agent.store._run(
        lambda db: db._conn.execute(
            "SELECT node, peer, id FROM sync_out_files ORDER BY 1"
        ).fetchall()
    )


class HandOnTests(OutgoingFileCase):
    @defer.inlineCallbacks
    def test_another_node_delivers_what_the_laptop_queued(self) -> Any:
        """The brief's scenario in one process: laptop queues, hands on, leaves; home delivers."""
        bob = yield self.bob(publish=False)
        laptop, laptop_events = yield self.node("laptop")
        home, home_events = yield self.node("home")
        yield self.linked(laptop, home)
        data = payload(700_000)
        queued = yield laptop.sendFile(BOB, self.source(data))
        fid = queued["id"]
        # the bytes reach home's spool, checked; each node knows the other holds them
        yield self.can_deliver(home, fid)
        got = yield self.out_file(home, fid)
        spool = os.path.join(home.data_dir, "spool")
        self.assertEqual((got["state"], got["path"]), ("queued", os.path.join(spool, "report.pdf")))
        with open(got["path"], "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(home.files_dir.root), [".partial"])  # not the user's files
        self.assertEqual((yield out_held(laptop)), [("home", BOB, fid)])
        yield self.until(
            lambda: out_held(home).addCallback(lambda rows: rows == [("laptop", BOB, fid)]), 10
        )
        self.assertEqual(home.file_outbox.holders[fid], {"laptop"})
        # a copy is not a file we received nor one we send: no file events on home
        self.assertEqual(home_events.of("file"), [])
        self.assertEqual(
            [e["state"] for e in laptop_events.of("file") if e["id"] == fid], []
        )  # (nor a "delivered" on the laptop for the hand-on)
        # the laptop goes, bob comes; home delivers from its copy
        yield self.stop(laptop, "laptop")
        self.directory.publish(BOB, "n1", bob)
        [received] = yield self.until(lambda: self.received(bob, fid), 30)
        self.assertEqual(
            (received["peer"], received["name"], received["sha256"]),
            (ALICE, "report.pdf", hashlib.sha256(data).hexdigest()),
        )
        yield self.until(lambda: self.out_file(home, fid, "delivered"), 30)
        # final: the copy is gone from the spool; the row stays (no path) with its state
        yield self.until(lambda: spool_files(home) == [], 10)
        yield self.until(lambda: fid not in home.file_outbox.held, 10)  # (the row after)
        got = yield self.out_file(home, fid)
        self.assertEqual((got["state"], got["path"]), ("delivered", None))
        self.assertNotIn(fid, home.file_outbox.held)
        # the laptop, back, learns the receipt by the feed
        laptop, _ = yield self.node("laptop")
        yield self.until(lambda: self.out_file(laptop, fid, "delivered"), 30)
        bob_files = yield bob.files()
        self.assertEqual(len(bob_files), 1)

    @defer.inlineCallbacks
    def test_the_recipients_durable_prefix_lets_another_node_resume(self) -> Any:
        self.patch(receiving, "SYNC_EVERY", 64 * 1024)
        bob = yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        data = payload(3_000_000)
        queued = yield laptop.sendFile(BOB, self.source(data, "video.mp4"))
        fid = queued["id"]
        yield self.can_deliver(home, fid)

        class StopLaptopWhenBobHoldsSome:
            """The laptop goes the moment bob holds 256 KiB of the file durably."""

            stopped: defer.Deferred[Any] | None = None

            def agentEvent(self, event: dict[str, Any]) -> None:
                if self.stopped is not None or event["type"] != "file":
                    return
                if event.get("received", 0) >= 256 * 1024 and event["state"] == "receiving":
                    self.stopped = defer.ensureDeferred(stop_laptop())

        test = self

        async def stop_laptop() -> None:
            # Both ends cut in this reactor turn: bob would otherwise read on what the laptop
            # had already written (the whole file fits in the sockets and bob's held data).
            for session in list(laptop.sessions.live):
                if session.peer == BOB:
                    session._protocol.transport.abortConnection()
            for session in list(bob.sessions.live):
                if session.peer == ALICE:
                    session._protocol.transport.abortConnection()
            await test.stop(laptop, "laptop")

        stopper = StopLaptopWhenBobHoldsSome()
        bob.addObserver(stopper)
        self.directory.publish(BOB, "n1", bob)
        yield self.until(lambda: stopper.stopped is not None, 30)
        yield stopper.stopped
        [got] = yield self.until(lambda: self.received(bob, fid), 30)
        self.assertGreaterEqual(got["resumed_from"], 256 * 1024)  # home resumed there
        with open(got["path"], "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        self.assertEqual([f["id"] for f in (yield bob.files())], [fid])  # once
        yield self.until(lambda: self.out_file(home, fid, "delivered"), 30)

    @defer.inlineCallbacks
    def test_two_nodes_delivering_at_once_store_it_once(self) -> Any:
        """The race the rule avoids, forced: both nodes send it; bob stores it once."""
        bob = yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        data = payload(1_500_000)
        queued = yield laptop.sendFile(BOB, self.source(data))
        fid = queued["id"]
        yield self.can_deliver(home, fid)
        self.patch(home.own_nodes, "defers", lambda origin, holders=None: False)
        self.directory.publish(BOB, "n1", bob)
        [got] = yield self.until(lambda: self.received(bob, fid), 30)
        with open(got["path"], "rb") as f:
            self.assertEqual(f.read(), data)
        for node in (laptop, home):
            yield self.until(lambda node=node: self.out_file(node, fid, "delivered"), 30)
        self.assertEqual([f["id"] for f in (yield bob.files())], [fid])
        history = yield bob.history(ALICE, None, 10)
        self.assertEqual([m["id"] for m in history], [fid])
        self.assertEqual(sorted(os.listdir(bob.files_dir.root)), [".partial", "report.pdf"])

    @defer.inlineCallbacks
    def test_a_cut_hand_on_resumes_and_a_second_offer_moves_no_bytes(self) -> Any:
        self.patch(receiving, "SYNC_EVERY", 64 * 1024)
        yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        data = payload(2_000_000)
        queued = yield laptop.sendFile(BOB, self.source(data, "video.mp4"))
        fid = queued["id"]
        home, _ = yield self.agent(ALICE, "home", identity=self.alice_ids["home"])

        def partial() -> int:
            return home.store._run(
                lambda db: db._conn.execute(
                    "SELECT received FROM transfers WHERE direction = 'out' AND id = ?", (fid,)
                ).fetchone()
            ).addCallback(lambda row: row is not None and row[0] >= 256 * 1024)

        self.directory.publish(ALICE, "home", home)
        yield self.until(partial, 30)
        for session in list(home.sessions.live):
            session._protocol.transport.abortConnection()
        yield self.until(lambda: fid in home.file_outbox.held, 30)
        path = os.path.join(home.data_dir, "spool", "video.mp4")
        with open(path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        self.assertEqual(spool_files(home), ["video.mp4"])
        self.assertEqual(os.listdir(os.path.join(home.data_dir, "spool", ".partial")), [])
        copy = yield home.transfers.get("out", BOB, fid)
        self.assertGreaterEqual(copy.resumed_from, 256 * 1024)  # resumed, not sent again
        # offered again on a later link: a receipt at once, no second copy
        yield self.linked(laptop, home)
        [(old, _)] = laptop.own_nodes.file_links()[:1]
        old._protocol.transport.abortConnection()
        yield self.until(
            lambda: [s for s, _ in laptop.own_nodes.file_links() if s is not old], 30
        )
        [session] = [s for s, _ in laptop.own_nodes.file_links() if s is not old][:1]
        record = yield laptop.transfers.get("out", BOB, fid)
        receipt = yield laptop.file_outbox.offer(session, record, to=BOB)
        self.assertEqual(receipt.id, fid)
        self.assertEqual(spool_files(home), ["video.mp4"])

    @defer.inlineCallbacks
    def test_names_are_sanitised_and_nothing_lands_outside_the_spool(self) -> Any:
        yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        data = b"not where you think"
        now = laptop.now()
        record = TransferRecord(
            "out", BOB, BOB, "f-evil", "../../../escape.txt", len(data),
            hashlib.sha256(data).digest(), None, self.source(data, "x"), None, 0, 0,
            "offered", None, now, now,
        )  # fmt: skip
        [(session, _)] = laptop.own_nodes.file_links()[:1]
        yield laptop.file_outbox.offer(session, record, to=BOB)
        self.assertEqual(spool_files(home), ["escape.txt"])
        self.assertFalse(os.path.exists(os.path.join(self.base, "escape.txt")))
        got = yield home.transfers.get("out", BOB, "f-evil")
        self.assertEqual((got.state, got.path), ("spooled", os.path.join(
            home.data_dir, "spool", "escape.txt")))  # fmt: skip

    @defer.inlineCallbacks
    def test_to_errors_on_an_own_node_session(self) -> Any:
        yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        [(session, _)] = laptop.own_nodes.file_links()[:1]
        for n, (origin, to) in enumerate(
            [
                (None, "not an identity"),
                (None, ALICE),
                (None, "alice@EXAMPLE.com"),
                (BOB, BOB),  # both from and to
            ]
        ):
            offer = FileOffer(f"f{n}", "x.bin", 10, b"\x01" * 32, None, origin, to)
            with self.assertRaises(StanzaRefused) as caught:
                yield session.offerFile(offer)
            self.assertIn("bad_request", str(caught.exception))
        self.assertEqual((yield home.files()), [])
        self.assertEqual(spool_files(home), [])

    @defer.inlineCallbacks
    def test_to_from_another_identity_is_ignored(self) -> Any:
        bob = yield self.bob()
        laptop, _ = yield self.node("laptop")
        data = b"hello world"
        now = bob.now()
        record = TransferRecord(
            "out", ALICE, ALICE, "f-carol", "note.txt", len(data), hashlib.sha256(data).digest(),
            None, self.source(data, "note.txt"), None, 0, 0, "offered", None, now, now,
        )  # fmt: skip
        sent = yield bob.send(ALICE, "hi")
        yield bob.waitDelivered(sent["id"], 30)
        [session] = [s for s in bob.sessions.live if same_identity(s.peer, ALICE)]
        yield bob.file_outbox.offer(session, record, to="carol@example.com")
        [got] = yield laptop.files()
        self.assertEqual((got["peer"], got["direction"], got["state"]), (BOB, "in", "received"))
        self.assertEqual(spool_files(laptop), [])

    @defer.inlineCallbacks
    def test_a_copy_of_a_cancelled_file_is_removed(self) -> Any:
        yield self.bob(publish=False)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        queued = yield laptop.sendFile(BOB, self.source(payload(100_000)))
        fid = queued["id"]
        yield self.can_deliver(home, fid)
        self.assertEqual(spool_files(home), ["report.pdf"])
        yield laptop.cancel(fid)
        yield self.until(lambda: spool_files(home) == [], 30)
        yield self.until(lambda: fid not in home.file_outbox.held, 30)
        got = yield self.out_file(home, fid)
        self.assertEqual((got["state"], got["path"]), ("failed", None))  # as on the laptop
        mine = yield self.out_file(laptop, fid)
        self.assertEqual(mine["state"], "failed")

    @defer.inlineCallbacks
    def test_a_copy_of_a_file_that_failed_is_removed(self) -> Any:
        bob, _ = yield self.agent(BOB, identity=self.bob_id, max_file_size=10)
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.linked(laptop, home)
        queued = yield laptop.sendFile(BOB, self.source(payload(100_000)))
        fid = queued["id"]
        yield self.until(lambda: fid in home.file_outbox.held, 30)
        self.assertEqual(spool_files(home), ["report.pdf"])
        self.directory.publish(BOB, "n1", bob)  # the laptop delivers: bob refuses (too_large)
        status = yield laptop.waitDelivered(fid, 30)
        self.assertEqual(status["state"], "failed")
        yield self.until(lambda: spool_files(home) == [], 30)
        yield self.until(lambda: fid not in home.file_outbox.held, 30)  # (the row after)
        got = yield self.until(lambda: self.out_file(home, fid, "failed"), 30)
        self.assertIsNone(got["path"])
        # the laptop's own file (the user's) is never touched
        self.assertTrue(os.path.exists(os.path.join(self.base, "report.pdf")))


class EarlierVersionTests(OutgoingFileCase):
    @defer.inlineCallbacks
    def test_a_node_that_does_not_say_out_files_gets_neither_entry_nor_bytes(self) -> Any:
        """
        A node whose hello lacks C{out-files="1"} (a version before outgoing files) would
        take the file's C{out} item for a text message and the C{<file to>} copy for a file
        of its own: it gets neither, and the rest of sync goes on.
        """
        home, _ = yield self.node("home")
        sync = home.own_nodes

        def earlier(link: Any) -> None:
            link_hello = ownnodes.SyncHello(link.hello_id, sync.node, sync.store_id, sync.top)
            link.said_at = sync.clock.seconds()
            link.session.sendStanza(link_hello)

        self.patch(sync, "_hello", earlier)
        laptop, _ = yield self.node("laptop")
        yield self.linked(laptop, home)
        queued = yield laptop.sendFile(BOB, self.source(payload(50_000)))
        text = yield laptop.send(BOB, "after the file")
        yield self.until(
            lambda: home.history(BOB, None, 10).addCallback(
                lambda h: [m for m in h if m["id"] == text["id"]]
            ),
            30,
        )
        history = yield home.history(BOB, None, 10)
        self.assertEqual([m["id"] for m in history], [text["id"]])
        self.assertIsNone((yield self.out_file(home, queued["id"])))
        self.assertIsNone((yield home.store.status(queued["id"])))
        self.assertEqual(spool_files(home), [])
        self.assertEqual((yield out_held(laptop)), [])
        [link] = [link for link in laptop.own_nodes.links.values() if link.node == "home"]
        self.assertFalse(link.out_files)


class OutFilesStoreTests(SynchronousTestCase):
    """C{out_files_for_node}, C{out_node_holds}, C{spool_final}, and the spool's guard."""

    def setUp(self) -> None:
        self.db = MessageDatabase(self.mktemp())
        self.addCleanup(self.db.close)
        self.at = datetime(2026, 12, 7, tzinfo=UTC)

    def queue(self, file_id: str, state: str = "offered", path: str | None = "/src/a") -> None:
        record = TransferRecord(
            "out", BOB, BOB, file_id, "a.bin", 1, b"\x02" * 32, None, path, None, 0, 0,
            state, None, self.at, self.at,
        )  # fmt: skip
        files.queue_file(self.db, record, self.at)

    def test_what_an_own_node_is_handed(self) -> None:
        self.queue("f1")
        self.queue("f2", "spooled", "/spool/a")
        self.queue("f3", "synced", None)  # no bytes here: nothing to hand on
        self.queue("f4")
        self.db.add_targets("f4", ["n1"])
        self.db.mark_delivered("f4", "n1", self.at)  # final: not handed on
        self.assertEqual([r.id for r in files.out_files_for_node(self.db, "home")], ["f1", "f2"])
        files.out_node_holds(self.db, "home", "Bob@example.com", "f1")  # normalized
        files.out_node_holds(self.db, "home", BOB, "f1")
        self.assertEqual([r.id for r in files.out_files_for_node(self.db, "home")], ["f2"])
        self.assertEqual([r.id for r in files.out_files_for_node(self.db, "phone")], ["f1", "f2"])
        self.assertEqual(files.outgoing_files(self.db).holders, {"f1": {"home"}})

    def test_only_final_spooled_copies_are_removed(self) -> None:
        self.queue("f1", "spooled", "/spool/a")
        self.queue("f2", "spooled", "/spool/b")
        self.queue("f3")  # queued here: the user's file, never removed
        for fid in ("f1", "f2", "f3"):
            self.db.add_targets(fid, ["n1"])
        self.db.mark_delivered("f1", "n1", self.at)
        self.db.mark_delivered("f3", "n1", self.at)
        self.assertEqual([r.id for r in files.spool_final(self.db)], ["f1"])
        self.db.mark_failed("f2", None, "declined", self.at)
        self.assertEqual([r.id for r in files.spool_final(self.db)], ["f1", "f2"])
        files.spool_removed(self.db, BOB, "f1")
        self.assertEqual([r.id for r in files.spool_final(self.db)], ["f2"])
        got = files.get(self.db, "out", BOB, "f1")
        assert got is not None
        self.assertEqual((got.state, got.path), ("spooled", None))
        mine = files.get(self.db, "out", BOB, "f3")
        assert mine is not None
        self.assertEqual(mine.path, "/src/a")

    def test_the_spool_never_removes_a_path_outside_it(self) -> None:
        base = os.path.abspath(self.mktemp())
        root = os.path.join(base, "spool")
        os.makedirs(root)
        inside, outside = os.path.join(root, "a"), os.path.join(base, "b")
        link = os.path.join(root, "link")
        for path in (inside, outside):
            with open(path, "wb") as f:
                f.write(b"x")
        os.symlink(outside, link)
        spool._remove(root, [inside, outside, link, os.path.join(root, "..", "b"), root])
        self.assertFalse(os.path.exists(inside))
        self.assertTrue(os.path.exists(outside))
        self.assertTrue(os.path.isdir(root))
