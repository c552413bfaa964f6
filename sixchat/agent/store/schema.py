"""
The agent store's schema: one entry per version, run by the shared migration runner
(L{sixchat._sqlite.migrate}), and the column lists the queries share.
"""

from __future__ import annotations

from sixchat._sqlite import Step

# Each entry is one schema version, applied in order to reach it; a step is an SQL statement
# or a callable taking the connection (for data migrations). Never edit a released entry:
# append a new one. All pending steps run in one transaction, so an interrupted migration
# leaves the file at its old version.
MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # version 1
    (
        # One row per peer identity we have dealt with: contacts and conversations.
        """
        CREATE TABLE peers (
            peer TEXT PRIMARY KEY,                -- normalize_identity()
            display TEXT NOT NULL,                -- spelling for display
            first_seen_us INTEGER NOT NULL,
            last_seen_us INTEGER                  -- NULL: the peer never showed up itself
        ) WITHOUT ROWID
        """,
        # Both directions in one table so history has one order (seq breaks ties of at_us).
        # owed = 1 while the outbox has work for an outgoing message; kept in step with the
        # deliveries rows by MessageDatabase._settle in the same transaction.
        """
        CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            peer TEXT NOT NULL REFERENCES peers (peer),
            peer_display TEXT NOT NULL,
            id TEXT NOT NULL,
            ts TEXT NOT NULL,
            body TEXT NOT NULL,
            thread TEXT,
            reply_to TEXT,
            at_us INTEGER NOT NULL,               -- received (in) / queued (out), our clock
            is_read INTEGER NOT NULL CHECK (is_read IN (0, 1)),
            owed INTEGER NOT NULL DEFAULT 0 CHECK (owed IN (0, 1)),
            outcome TEXT CHECK (outcome IN ('expired', 'failed')),
            outcome_reason TEXT,
            outcome_at_us INTEGER,
            CHECK (direction = 'out' OR (owed = 0 AND outcome IS NULL))
        )
        """,
        # §8.2: exactly once per (sender, id); our own ids are unique across our messages.
        "CREATE UNIQUE INDEX messages_in_id ON messages (peer, id) WHERE direction = 'in'",
        "CREATE UNIQUE INDEX messages_out_id ON messages (id) WHERE direction = 'out'",
        "CREATE INDEX messages_by_peer ON messages (peer, at_us, seq)",
        "CREATE INDEX messages_by_time ON messages (at_us, seq)",
        "CREATE INDEX messages_unread ON messages (peer) WHERE direction = 'in' AND is_read = 0",
        "CREATE INDEX messages_owed ON messages (at_us, seq) WHERE owed = 1",
        # §11.16: one outbox entry per (message, node).
        """
        CREATE TABLE deliveries (
            msg INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
            node TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'sent', 'delivered', 'failed', 'expired')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_us INTEGER,
            next_attempt_us INTEGER,
            done_at_us INTEGER,
            reason TEXT,
            PRIMARY KEY (msg, node)
        ) WITHOUT ROWID
        """,
        # §11.15: pins are a set per identity. No foreign key to peers: keys learnt from the
        # registry may precede any dealing with the identity.
        """
        CREATE TABLE pins (
            peer TEXT NOT NULL,
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            PRIMARY KEY (peer, spki)
        ) WITHOUT ROWID
        """,
        # §9.3: key changes reported to the user and not yet decided.
        """
        CREATE TABLE key_changes (
            peer TEXT NOT NULL REFERENCES peers (peer),
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            first_noted_us INTEGER NOT NULL,
            last_noted_us INTEGER NOT NULL,
            times INTEGER NOT NULL,
            PRIMARY KEY (peer, spki)
        ) WITHOUT ROWID
        """,
    ),
    # version 2
    (
        # §9.3: what the user was told about keys, kept for the conversation view (like a
        # messenger's "safety number changed" line): a key change and how the pin policy met
        # it (warned, accepted, refused), and the user's decisions (trusted, forgotten). The
        # agent notes a change once, when it is first seen (a refused key presented at every
        # retry is one line).
        """
        CREATE TABLE key_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            peer TEXT NOT NULL,
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            what TEXT NOT NULL
                CHECK (what IN ('warned', 'accepted', 'refused', 'trusted', 'forgotten')),
            at_us INTEGER NOT NULL
        )
        """,
        "CREATE INDEX key_events_by_peer ON key_events (peer, at_us, seq)",
    ),
    # version 3: file transfers (§8.7). An outgoing file is also an outgoing message row
    # (its body names the file), so the outbox fans it out, retries, expires and reports it
    # like a message; this table holds what is particular to files, both directions.
    (
        """
        CREATE TABLE transfers (
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            peer TEXT NOT NULL,                   -- normalize_identity()
            peer_display TEXT NOT NULL,
            id TEXT NOT NULL,
            name TEXT NOT NULL,                   -- as offered (in) / the file's name (out)
            size INTEGER NOT NULL CHECK (size >= 0),
            sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
            mime TEXT,
            path TEXT,                            -- the source (out) / the stored file (in)
            partial TEXT,                         -- in: the partial file while receiving
            received INTEGER NOT NULL DEFAULT 0,  -- in: bytes durably held (fsynced)
            resumed_from INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,                  -- in: receiving, received, failed
            reason TEXT,
            at_us INTEGER NOT NULL,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (direction, peer, id)
        ) WITHOUT ROWID
        """,
    ),
    # version 4: own-device sync (docs/protocol.md, "Extension: own-device sync"). Every
    # change another node of ours should learn moves the changed thing to the end of a feed
    # (sync_feed: one row per thing, its seq renewed by each change — delete, insert: inside a
    # trigger, OR REPLACE would yield to the outer statement's conflict rule —, so the feed
    # never holds more rows than there are things); the triggers below are the one place that knows
    # which changes count, so no write path can forget one.
    (
        # The own node that queued an outgoing message; NULL: this node.
        "ALTER TABLE messages ADD COLUMN origin TEXT",
        # This store's id: a feed is read by (store, seq); a store made anew starts afresh.
        """
        CREATE TABLE sync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID
        """,
        "INSERT INTO sync_meta (key, value) VALUES ('store', lower(hex(randomblob(16))))",
        # kind: 'm' a message (ref: messages.seq), 'x' a cancelled outgoing message (ref: its
        # id), 'c' a contact (ref: peers.peer), 'p' a pin decision (ref: pin_decisions.rowid).
        # source: the own node whose batch made the change (not served back to it).
        """
        CREATE TABLE sync_feed (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('m', 'x', 'c', 'p')),
            ref TEXT NOT NULL,
            source TEXT,
            UNIQUE (kind, ref)
        )
        """,
        # Per own node: which of its stores we read, how far, and when.
        """
        CREATE TABLE sync_nodes (
            node TEXT PRIMARY KEY,
            store TEXT,
            after INTEGER NOT NULL DEFAULT 0,
            top INTEGER NOT NULL DEFAULT 0,
            seen_us INTEGER,
            synced_us INTEGER,
            items INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID
        """,
        # Outgoing messages cancelled here or on another node: never brought back by sync.
        "CREATE TABLE sync_cancelled (id TEXT PRIMARY KEY) WITHOUT ROWID",
        # The last decision on each pinned key, versioned: the higher version wins, and at
        # equal versions "not pinned" wins (merge rule, docs/protocol.md).
        """
        CREATE TABLE pin_decisions (
            peer TEXT NOT NULL,
            spki BLOB NOT NULL CHECK (length(spki) = 32),
            pinned INTEGER NOT NULL CHECK (pinned IN (0, 1)),
            version INTEGER NOT NULL,
            PRIMARY KEY (peer, spki)
        )
        """,
        "INSERT INTO pin_decisions (peer, spki, pinned, version) SELECT peer, spki, 1, 1 FROM pins",
        """
        CREATE TRIGGER sync_message_new AFTER INSERT ON messages BEGIN
            DELETE FROM sync_feed WHERE kind = 'm' AND ref = CAST(NEW.seq AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('m', CAST(NEW.seq AS TEXT));
        END
        """,
        """
        CREATE TRIGGER sync_message_changed AFTER UPDATE OF is_read, outcome ON messages
        WHEN NEW.is_read != OLD.is_read OR NEW.outcome IS NOT OLD.outcome BEGIN
            DELETE FROM sync_feed WHERE kind = 'm' AND ref = CAST(NEW.seq AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('m', CAST(NEW.seq AS TEXT));
        END
        """,
        """
        CREATE TRIGGER sync_message_cancelled AFTER DELETE ON messages
        WHEN OLD.direction = 'out' BEGIN
            DELETE FROM sync_feed WHERE kind = 'm' AND ref = CAST(OLD.seq AS TEXT);
            INSERT OR IGNORE INTO sync_cancelled (id) VALUES (OLD.id);
            DELETE FROM sync_feed WHERE kind = 'x' AND ref = OLD.id;
            INSERT INTO sync_feed (kind, ref) VALUES ('x', OLD.id);
        END
        """,
        """
        CREATE TRIGGER sync_delivery_new AFTER INSERT ON deliveries BEGIN
            DELETE FROM sync_feed WHERE kind = 'm' AND ref = CAST(NEW.msg AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('m', CAST(NEW.msg AS TEXT));
        END
        """,
        # Attempts (queued -> sent, retry times) stay local: only final states are news.
        """
        CREATE TRIGGER sync_delivery_changed AFTER UPDATE OF state ON deliveries
        WHEN NEW.state != OLD.state AND NEW.state NOT IN ('queued', 'sent') BEGIN
            DELETE FROM sync_feed WHERE kind = 'm' AND ref = CAST(NEW.msg AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('m', CAST(NEW.msg AS TEXT));
        END
        """,
        """
        CREATE TRIGGER sync_peer_new AFTER INSERT ON peers BEGIN
            DELETE FROM sync_feed WHERE kind = 'c' AND ref = NEW.peer;
            INSERT INTO sync_feed (kind, ref) VALUES ('c', NEW.peer);
        END
        """,
        """
        CREATE TRIGGER sync_peer_changed AFTER UPDATE ON peers
        WHEN NEW.display != OLD.display OR NEW.first_seen_us != OLD.first_seen_us
            OR NEW.last_seen_us IS NOT OLD.last_seen_us BEGIN
            DELETE FROM sync_feed WHERE kind = 'c' AND ref = NEW.peer;
            INSERT INTO sync_feed (kind, ref) VALUES ('c', NEW.peer);
        END
        """,
        # A pin added or removed here is a new decision (a higher version); one that only
        # follows a decision already recorded (sync applying another node's) is not.
        """
        CREATE TRIGGER sync_pin_added AFTER INSERT ON pins BEGIN
            INSERT INTO pin_decisions (peer, spki, pinned, version)
            VALUES (NEW.peer, NEW.spki, 1, 1)
            ON CONFLICT (peer, spki) DO UPDATE SET pinned = 1, version = version + 1
            WHERE pinned = 0;
        END
        """,
        """
        CREATE TRIGGER sync_pin_removed AFTER DELETE ON pins BEGIN
            UPDATE pin_decisions SET pinned = 0, version = version + 1
            WHERE peer = OLD.peer AND spki = OLD.spki AND pinned = 1;
        END
        """,
        """
        CREATE TRIGGER sync_pin_decision_new AFTER INSERT ON pin_decisions BEGIN
            DELETE FROM sync_feed WHERE kind = 'p' AND ref = CAST(NEW.rowid AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('p', CAST(NEW.rowid AS TEXT));
        END
        """,
        """
        CREATE TRIGGER sync_pin_decision_changed AFTER UPDATE ON pin_decisions
        WHEN NEW.pinned != OLD.pinned OR NEW.version != OLD.version BEGIN
            DELETE FROM sync_feed WHERE kind = 'p' AND ref = CAST(NEW.rowid AS TEXT);
            INSERT INTO sync_feed (kind, ref) VALUES ('p', CAST(NEW.rowid AS TEXT));
        END
        """,
        # What existed before the upgrade is news to the other nodes too.
        """
        INSERT INTO sync_feed (kind, ref)
        SELECT 'c', peer FROM peers ORDER BY first_seen_us
        """,
        """
        INSERT INTO sync_feed (kind, ref)
        SELECT 'm', CAST(seq AS TEXT) FROM messages ORDER BY seq
        """,
        """
        INSERT INTO sync_feed (kind, ref)
        SELECT 'p', CAST(rowid AS TEXT) FROM pin_decisions ORDER BY rowid
        """,
    ),
    # version 5: received files handed on between own nodes (docs/protocol.md 8.6, "Files").
    # One row per own node and received file (peer, id) that node holds: it gave us the file,
    # or receipted ours. A file is offered to an own node only while no row says it has it.
    (
        """
        CREATE TABLE sync_files (
            node TEXT NOT NULL,
            peer TEXT NOT NULL,                   -- normalize_identity()
            id TEXT NOT NULL,
            PRIMARY KEY (node, peer, id)
        ) WITHOUT ROWID
        """,
    ),
    # version 6: outgoing files across own nodes (docs/protocol.md 8.6, "Files"). One row per
    # own node and outgoing file (recipient, id) that node is known to hold the bytes of (it
    # receipted our hand-on, or handed the file to us): only those nodes count when choosing
    # which node delivers the file, and a file is handed on to a node only while no row says
    # it has it. Outgoing transfer rows now also come from the feed (state 'synced', no path)
    # and from a hand-on (state 'spooled', the copy in the data directory's spool).
    (
        """
        CREATE TABLE sync_out_files (
            node TEXT NOT NULL,
            peer TEXT NOT NULL,                   -- normalize_identity() of the recipient
            id TEXT NOT NULL,
            PRIMARY KEY (node, peer, id)
        ) WITHOUT ROWID
        """,
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

OUT_COLUMNS = (
    "seq, peer, peer_display, id, ts, body, thread, reply_to, at_us, "
    "outcome, outcome_reason, outcome_at_us, origin"
)
DELIVERY_COLUMNS = (
    "msg, node, state, attempts, last_attempt_us, next_attempt_us, done_at_us, reason"
)
