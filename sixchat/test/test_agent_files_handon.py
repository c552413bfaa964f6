"""
Received files handed on between own nodes (docs/protocol.md 8.6, "Files";
L{sixchat.agent.files.handon}): real agents on 127.0.0.1, two nodes of alice and bob.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from sixchat.agent import ownnodes
from sixchat.agent.files import receiving
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


def held(agent: Any) -> defer.Deferred[list[tuple[str, str, str]]]:
    """The store's C{sync_files} rows: which own node holds which received file."""
    return agent.store._run(
        lambda db: db._conn.execute("SELECT node, peer, id FROM sync_files ORDER BY 1").fetchall()
    )


class HandOnTests(AgentCase):
    timeout = 60

    @defer.inlineCallbacks
    def node(self, name: str) -> Any:
        agent, events = yield self.agent(ALICE, name, identity=self.alice_ids[name])
        self.directory.publish(ALICE, name, agent)
        return agent, events

    @defer.inlineCallbacks
    def bob(self) -> Any:
        self.alice_ids = {
            "laptop": self.identity(ALICE, key=certs.new_key("ed25519")),
            "home": self.identity(ALICE, key=certs.new_key("ed25519")),
        }
        bob, _ = yield self.agent(BOB)
        self.directory.publish(BOB, "n1", bob)
        return bob

    @defer.inlineCallbacks
    def files_with_path(self, agent: Any) -> Any:
        files = yield agent.files()
        return [f for f in files if f.get("path")]

    @defer.inlineCallbacks
    def test_a_file_received_by_one_node_reaches_the_other(self) -> Any:
        bob = yield self.bob()
        laptop, _ = yield self.node("laptop")
        data = payload(700_000)
        queued = yield bob.sendFile(ALICE, self.source(data))
        yield bob.waitDelivered(queued["id"], 30)  # to the laptop: home is not there yet
        home, home_events = yield self.node("home")
        [got] = yield self.until(lambda: self.files_with_path(home), 30)
        self.assertEqual(
            {k: got[k] for k in ("id", "peer", "direction", "name", "size", "state", "received")},
            {
                "id": queued["id"],
                "peer": BOB,
                "direction": "in",
                "name": "photo.jpg",
                "size": len(data),
                "state": "received",
                "received": len(data),
            },
        )
        self.assertEqual(got["sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(got["path"], os.path.join(home.files_dir.root, "photo.jpg"))
        with open(got["path"], "rb") as f:
            self.assertEqual(f.read(), data)
        # never a file from our own identity, on either node
        for agent in (laptop, home):
            files = yield agent.files()
            self.assertEqual([f for f in files if same_identity(f["peer"], ALICE)], [])
        self.assertEqual(
            [e["peer"] for e in home_events.of("file") if e["state"] == "received"], [BOB]
        )
        history = yield home.history(BOB, None, 10)
        self.assertEqual([h["body"] for h in history], [f"[file] photo.jpg ({len(data)} bytes)"])
        # exactly once, no loop: each node knows the other holds it; home offers nothing back
        yield self.until(lambda: held(laptop), 10)
        self.assertEqual((yield held(laptop)), [("home", BOB, queued["id"])])
        self.assertEqual((yield held(home)), [("laptop", BOB, queued["id"])])
        laptop_files = yield laptop.files()
        self.assertEqual(len(laptop_files), 1)
        self.assertEqual(home.files_dir and os.listdir(home.files_dir.partial_dir), [])

    @defer.inlineCallbacks
    def test_a_cut_hand_on_resumes_from_the_durable_prefix(self) -> Any:
        self.patch(receiving, "SYNC_EVERY", 64 * 1024)
        self.patch(ownnodes, "REDIAL_MIN", 0.1)
        bob = yield self.bob()
        laptop, _ = yield self.node("laptop")
        data = payload(2_000_000)
        queued = yield bob.sendFile(ALICE, self.source(data, "video.mp4"))
        yield bob.waitDelivered(queued["id"], 30)
        home, _ = yield self.agent(ALICE, "home", identity=self.alice_ids["home"])

        class CutWhenPartlyHeld:
            """Cut the link the moment home holds 256 KiB durably (in that reactor turn)."""

            cut = False

            def agentEvent(self, event: dict[str, Any]) -> None:
                if self.cut or event["type"] != "file" or event.get("received", 0) < 256 * 1024:
                    return
                self.cut = True
                for session in list(home.sessions.live):
                    session._protocol.transport.abortConnection()

        cutter = CutWhenPartlyHeld()
        home.addObserver(cutter)
        self.directory.publish(ALICE, "home", home)
        yield self.until(lambda: cutter.cut, 30)
        [got] = yield self.until(lambda: self.files_with_path(home), 30)
        self.assertEqual((got["peer"], got["state"], got["size"]), (BOB, "received", len(data)))
        self.assertGreater(got["resumed_from"], 0)
        with open(got["path"], "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())

    @defer.inlineCallbacks
    def test_a_file_both_nodes_got_from_the_peer_moves_no_bytes_between_them(self) -> Any:
        bob = yield self.bob()
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.until(
            lambda: laptop.own_nodes.linked("home") and home.own_nodes.linked("laptop")
        )
        queued = yield bob.sendFile(ALICE, self.source(payload(100_000)))
        status = yield bob.waitDelivered(queued["id"], 30)
        self.assertEqual(status["state"], "delivered")
        # both receipt each other's hand-on offer (already stored, §11.9): one record each
        yield self.until(lambda: held(laptop), 10)
        yield self.until(lambda: held(home), 10)
        self.assertEqual((yield held(laptop)), [("home", BOB, queued["id"])])
        self.assertEqual((yield held(home)), [("laptop", BOB, queued["id"])])
        for agent in (laptop, home):
            files = yield agent.files()
            self.assertEqual([(f["peer"], f["state"]) for f in files], [(BOB, "received")])
            self.assertEqual(sorted(os.listdir(agent.files_dir.root)), [".partial", "photo.jpg"])

    def own_session(self, agent: Any) -> Any:
        [(session, _)] = agent.own_nodes.file_links()
        return session

    @defer.inlineCallbacks
    def test_an_own_node_cannot_hand_on_a_file_as_ours_or_from_no_one(self) -> Any:
        yield self.bob()
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.until(lambda: laptop.own_nodes.file_links() and home.own_nodes.file_links())
        session = self.own_session(laptop)
        for n, origin in enumerate(("not an identity", "alice@EXAMPLE.com", ALICE)):
            offer = FileOffer(f"f{n}", "x.bin", 10, b"\x01" * 32, None, origin)
            try:
                yield session.offerFile(offer)
            except StanzaRefused as e:
                self.assertIn("bad_request", str(e))
            else:
                self.fail(f"from={origin!r} was taken")
        files = yield home.files()
        self.assertEqual(files, [])

    @defer.inlineCallbacks
    def test_a_copy_never_replaces_the_peers_transfer_in_progress(self) -> Any:
        yield self.bob()
        laptop, _ = yield self.node("laptop")
        home, _ = yield self.node("home")
        yield self.until(lambda: laptop.own_nodes.file_links() and home.own_nodes.file_links())
        home.file_inbox._writing[(BOB, "fz")] = "bob is sending it"  # a transfer in progress
        try:
            now = laptop.now()
            record = TransferRecord(
                "in", BOB, BOB, "fz", "x.bin", 10, b"\x01" * 32, None,
                self.source(b"0123456789"), None, 10, 0, "received", None, now, now,
            )  # fmt: skip
            with self.assertRaises(StanzaRefused) as caught:
                yield laptop.file_outbox.offer(self.own_session(laptop), record, origin=BOB)
            self.assertIn("busy", str(caught.exception))
            self.assertEqual(home.file_inbox._writing[(BOB, "fz")], "bob is sending it")
        finally:
            del home.file_inbox._writing[(BOB, "fz")]

    @defer.inlineCallbacks
    def test_from_on_a_session_with_another_identity_is_ignored(self) -> Any:
        bob = yield self.bob()
        laptop, _ = yield self.node("laptop")
        path = self.source(b"hello world", "note.txt")
        now = bob.now()
        record = TransferRecord(
            "out", ALICE, ALICE, "f-carol", "note.txt", 11, hashlib.sha256(b"hello world").digest(),
            None, path, None, 0, 0, "offered", None, now, now,
        )  # fmt: skip
        sent = yield bob.send(ALICE, "hi")
        yield bob.waitDelivered(sent["id"], 30)
        [session] = [s for s in bob.sessions.live if same_identity(s.peer, ALICE)]
        yield bob.file_outbox.offer(session, record, origin="carol@example.com")
        [got] = yield laptop.files()
        self.assertEqual((got["peer"], got["state"]), (BOB, "received"))


class SyncFilesStoreTests(SynchronousTestCase):
    """C{files_for_node}, C{node_holds}: which received files an own node still lacks."""

    def record(self, peer: str, file_id: str, state: str = "received") -> TransferRecord:
        at = datetime(2026, 12, 7, tzinfo=UTC)
        path = None if state != "received" else f"/files/{file_id}"
        return TransferRecord(
            "in", peer, peer, file_id, "a.bin", 1, b"\x02" * 32, None, path, None, 1, 0,
            state, None, at, at,
        )  # fmt: skip

    def test_only_received_files_the_node_does_not_hold(self) -> None:
        db = MessageDatabase(self.mktemp())
        self.addCleanup(db.close)
        files.put(db, self.record(BOB, "f1"))
        files.put(db, self.record("bob@EXAMPLE.com", "f2"))
        files.put(db, self.record(BOB, "f3", "receiving"))
        files.put(db, self.record(BOB, "f4", "failed"))
        self.assertEqual([r.id for r in files.files_for_node(db, "home")], ["f1", "f2"])
        files.node_holds(db, "home", BOB, "f2")  # keyed by the normalized peer
        files.node_holds(db, "home", BOB, "f2")  # twice: one row
        self.assertEqual([r.id for r in files.files_for_node(db, "home")], ["f1"])
        self.assertEqual([r.id for r in files.files_for_node(db, "phone")], ["f1", "f2"])
        files.node_holds(db, "home", "carol@example.com", "f1")  # another peer's f1
        self.assertEqual([r.id for r in files.files_for_node(db, "home")], ["f1"])
