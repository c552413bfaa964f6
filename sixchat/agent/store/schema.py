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
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)

OUT_COLUMNS = (
    "seq, peer, peer_display, id, ts, body, thread, reply_to, at_us, "
    "outcome, outcome_reason, outcome_at_us"
)
DELIVERY_COLUMNS = (
    "msg, node, state, attempts, last_attempt_us, next_attempt_us, done_at_us, reason"
)
