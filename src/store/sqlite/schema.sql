-- Inlet's SQLite schema. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS messages (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    contact         TEXT,
    received_at     INTEGER NOT NULL,
    doc             TEXT NOT NULL,      -- the normalized message, raw payload included
    intent          TEXT,               -- JSON {label, confidence, by} once classified
    intent_label    TEXT,
    conversation_id TEXT
    -- Added by `add_missing_columns` (mod.rs), to old and new files alike:
    -- inline_classified_at INTEGER: set when the rules classified the
    -- message as it was stored; its `classify` job and attempt are implied
    -- by it rather than written as rows.
);
CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source, id);
-- No index on received_at: ids are time-ordered, retention prunes by id.
DROP INDEX IF EXISTS messages_by_received;

-- The dedup keys, as a log: one row each time a (source, provider key)
-- was taken as new, in journal order, so rowid order is `seen_at` order
-- (to the millisecond). Dedup is decided in memory (dedup.rs); this is
-- what the memory is rebuilt from at start, and so has no index over the
-- keys: every insert appends (an index over random provider ids took one
-- random page write per message). Pruned from the front. Files of older
-- builds had `dedup` (source, key PRIMARY KEY, message_id, seen_at); its
-- rows move here at open (`migrate_dedup`, mod.rs).
CREATE TABLE IF NOT EXISTS dedup_keys (
    id      INTEGER PRIMARY KEY,
    source  TEXT NOT NULL,
    key     TEXT NOT NULL,
    seen_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    source      TEXT NOT NULL,
    action      TEXT NOT NULL,
    status      TEXT NOT NULL,          -- pending | done | dead (running: older files)
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_at      INTEGER NOT NULL,
    lease_until INTEGER,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL
);
-- Claims go lane by lane (source, action), earliest first, over pending
-- jobs only: a job leaves the index when it is done, so finished work costs
-- the index nothing. Leases live in the process (leases.rs); `running` and
-- `lease_until` are no longer written, and are kept for older files.
DROP INDEX IF EXISTS jobs_due;
DROP INDEX IF EXISTS jobs_lane;
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (source, action, run_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS jobs_by_message ON jobs (message_id);

CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    destination TEXT,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    duration_ms INTEGER NOT NULL,
    error       TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_message ON attempts (message_id);

CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    external_id TEXT,
    at          INTEGER NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_external ON events (source, external_id);
CREATE INDEX IF NOT EXISTS events_by_at ON events (at);

CREATE TABLE IF NOT EXISTS rejections (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    source  TEXT NOT NULL,
    status  INTEGER NOT NULL,
    code    TEXT NOT NULL,
    headers TEXT NOT NULL,
    body    TEXT NOT NULL
);

-- Replies: intent-to-send is committed before the provider is called, so a
-- crash between the send and its record never sends twice.
CREATE TABLE IF NOT EXISTS reply_sends (
    message_id TEXT NOT NULL,
    action     TEXT NOT NULL,
    state      TEXT NOT NULL,          -- sending | sent | failed | unknown
    detail     TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, action)
) WITHOUT ROWID;

-- The opt-out registry: the latest opt_out/opt_in per contact, by arrival
-- (message ids are time-ordered). Outlives message retention.
CREATE TABLE IF NOT EXISTS opt_outs (
    source     TEXT NOT NULL,
    contact    TEXT NOT NULL,
    opted_out  INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (source, contact)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS messages_by_contact ON messages (source, contact, id);

-- How far the ingest journal (inlet.journal/) is stored here: records up
-- to this byte position are applied. Moved in the same transaction as the
-- rows it covers, so each record is applied exactly once.
CREATE TABLE IF NOT EXISTS journal_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    applied INTEGER NOT NULL
);
INSERT OR IGNORE INTO journal_state (id, applied) VALUES (1, 0);
