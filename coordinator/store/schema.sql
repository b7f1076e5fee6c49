-- NeuroEdge coordinator state (one SQLite file). Applied at every open: idempotent.
-- Bump user_version (and coordinator.store.db.SCHEMA_VERSION) with a migration when
-- anything here changes. Timestamps are ISO-8601 UTC text; dict columns are JSON text.

CREATE TABLE IF NOT EXISTS devices (
    id            TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    token_hash    TEXT NOT NULL UNIQUE,
    enrolled_at   TEXT NOT NULL,
    revoked_at    TEXT,
    last_seen_at  TEXT,
    model_version INTEGER CHECK (model_version >= 0)
);

-- AUTOINCREMENT: a round id is never reused, even after the newest round is deleted.
CREATE TABLE IF NOT EXISTS rounds (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    opened_at         TEXT NOT NULL,
    closed_at         TEXT,
    status            TEXT NOT NULL CHECK (status IN ('open', 'closed', 'expired')),
    base_version      INTEGER NOT NULL CHECK (base_version >= 0),
    n_updates         INTEGER NOT NULL DEFAULT 0 CHECK (n_updates >= 0),
    bytes_received    INTEGER NOT NULL DEFAULT 0 CHECK (bytes_received >= 0),
    published_version INTEGER,
    reason            TEXT,
    metrics           TEXT NOT NULL DEFAULT '{}',
    epsilon           REAL CHECK (epsilon >= 0)
);
-- At most one open round, enforced by the database even against another process.
CREATE UNIQUE INDEX IF NOT EXISTS rounds_one_open ON rounds (status) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS updates (
    id              TEXT PRIMARY KEY CHECK (length(id) = 32),
    round_id        INTEGER NOT NULL REFERENCES rounds (id),
    device_id       TEXT NOT NULL REFERENCES devices (id),
    base_version    INTEGER NOT NULL CHECK (base_version >= 0),
    examples        INTEGER NOT NULL CHECK (examples >= 0),
    norm            REAL NOT NULL CHECK (norm >= 0),
    metrics         TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    bytes           INTEGER NOT NULL CHECK (bytes > 0),
    sha256          TEXT NOT NULL CHECK (length(sha256) = 64),
    meta            TEXT NOT NULL,
    -- 1 once delete_payloads() removed the file: the row stays as history.
    payload_deleted INTEGER NOT NULL DEFAULT 0 CHECK (payload_deleted IN (0, 1)),
    UNIQUE (round_id, device_id)
);

CREATE TABLE IF NOT EXISTS bundles (
    version        INTEGER PRIMARY KEY CHECK (version >= 0),
    parent_version INTEGER,
    created_at     TEXT NOT NULL,
    path           TEXT NOT NULL,
    metrics        TEXT NOT NULL,
    published      INTEGER NOT NULL CHECK (published IN (0, 1)),
    reason         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bundles_published ON bundles (published, version);

CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    kind      TEXT NOT NULL,
    device_id TEXT,
    detail    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_kind ON audit (kind, id);

CREATE TABLE IF NOT EXISTS admins (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

-- Dashboard sessions: the cookie carries a random id, only its hash is kept here; sign-out
-- deletes the row, so a copied cookie ends with the session (issue 26, finding 5).
CREATE TABLE IF NOT EXISTS web_sessions (
    sid_hash   TEXT PRIMARY KEY CHECK (length(sid_hash) = 64),
    admin      TEXT NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
    expires_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);

PRAGMA user_version = 1;
