-- NeuroEdge appliance state (one SQLite file). Applied at every open: idempotent.
-- Bump user_version (and device.store.sqlite.SCHEMA_VERSION) with a migration when a
-- change is more than a new table (which older software ignores).

CREATE TABLE IF NOT EXISTS cases (
    id              TEXT PRIMARY KEY CHECK (length(id) = 32),
    created_at      TEXT NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('upload', 'api', 'camera')),
    image_name      TEXT NOT NULL UNIQUE,
    image_sha256    TEXT NOT NULL CHECK (length(image_sha256) = 64),
    width           INTEGER NOT NULL CHECK (width > 0),
    height          INTEGER NOT NULL CHECK (height > 0),
    probability     REAL NOT NULL CHECK (probability BETWEEN 0 AND 1),
    predicted_label INTEGER NOT NULL CHECK (predicted_label IN (0, 1)),
    threshold       REAL NOT NULL CHECK (threshold BETWEEN 0 AND 1),
    uncertain       INTEGER NOT NULL CHECK (uncertain IN (0, 1)),
    model_version   INTEGER NOT NULL CHECK (model_version >= 0),
    latency_ms      REAL NOT NULL CHECK (latency_ms >= 0),
    confirmed_label INTEGER CHECK (confirmed_label IN (0, 1)),
    confirmed_by    TEXT,
    confirmed_at    TEXT,
    heatmap_name    TEXT UNIQUE
);
-- list(status) pages by created_at; the status filters test confirmed_label.
CREATE INDEX IF NOT EXISTS cases_created ON cases (created_at);
CREATE INDEX IF NOT EXISTS cases_confirmed ON cases (confirmed_label, created_at);

-- One cached embedding per case; a newer backbone's vector replaces an older one.
CREATE TABLE IF NOT EXISTS embeddings (
    case_id     TEXT PRIMARY KEY REFERENCES cases (id) ON DELETE CASCADE,
    backbone_id TEXT NOT NULL,
    dim         INTEGER NOT NULL CHECK (dim > 0),
    vector      BLOB NOT NULL CHECK (length(vector) = 4 * dim)
);
CREATE INDEX IF NOT EXISTS embeddings_backbone ON embeddings (backbone_id);

-- Image and heat-map files whose fsync is pending: their bytes, committed with the row
-- that names them (one fsync per upload), dropped once the files are flushed
-- (device/store/journal.py). Names are never reused: a new heat map gets a new name.
CREATE TABLE IF NOT EXISTS pending_files (
    name    TEXT PRIMARY KEY,
    case_id TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    data    BLOB NOT NULL
);

-- Which model and colour scale draw heat maps, and since when: older maps are redrawn.
CREATE TABLE IF NOT EXISTS heatmap_author (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    drawn_by TEXT NOT NULL,
    since    REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('clinician', 'admin')),
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);

CREATE TABLE IF NOT EXISTS tokens (
    name         TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    user         TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);

CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at);

-- Web sessions: the cookie carries a random id, only its hash is kept here; sign-out
-- deletes the row, so a copied cookie ends with the session (issue 26, finding 5).
CREATE TABLE IF NOT EXISTS web_sessions (
    sid_hash   TEXT PRIMARY KEY CHECK (length(sid_hash) = 64),
    user       TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS web_sessions_user ON web_sessions (user);

-- Idempotency keys of the predictions API: the same key (per user) answers with the
-- case it created, committed with that case (issue 26, finding 12).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user           TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_sha256 TEXT NOT NULL CHECK (length(request_sha256) = 64),
    case_id        TEXT NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    created_at     REAL NOT NULL,
    PRIMARY KEY (user, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

PRAGMA user_version = 1;

-- What ties a case to the clinic's own records (device.store.base.CaseInfo): on this
-- appliance only, never sent to the coordinator, never logged, not exported.
CREATE TABLE IF NOT EXISTS case_info (
    case_id   TEXT PRIMARY KEY REFERENCES cases (id) ON DELETE CASCADE,
    reference TEXT NOT NULL DEFAULT '',
    note      TEXT NOT NULL DEFAULT '',
    file_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS case_info_reference ON case_info (reference);

-- Studies: the slices of one examination, grouped by a salted hash of their DICOM
-- StudyInstanceUID (the UID itself is never stored), or by the archive they came in.
-- A study label is the clinician's verdict on the whole study (device.store.studies).
CREATE TABLE IF NOT EXISTS studies (
    id          TEXT PRIMARY KEY CHECK (length(id) = 32),
    created_at  TEXT NOT NULL,
    grouped_by  TEXT NOT NULL CHECK (grouped_by IN ('study_uid', 'archive')),
    label       INTEGER CHECK (label IN (0, 1)),
    labelled_by TEXT,
    labelled_at TEXT
);
CREATE TABLE IF NOT EXISTS study_slices (
    case_id     TEXT PRIMARY KEY REFERENCES cases (id) ON DELETE CASCADE,
    study_id    TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    series_hash TEXT NOT NULL DEFAULT '',
    instance    INTEGER
);
CREATE INDEX IF NOT EXISTS study_slices_study ON study_slices (study_id);
-- A study whose last slice is deleted goes with it (and with it its label).
CREATE TRIGGER IF NOT EXISTS studies_emptied AFTER DELETE ON study_slices
WHEN NOT EXISTS (SELECT 1 FROM study_slices WHERE study_id = OLD.study_id)
BEGIN
    DELETE FROM studies WHERE id = OLD.study_id;
END;

-- A DICOM slice's stored values (before any LUT) as a 16-bit PNG, for window/level in
-- the viewer; ``offset`` added back restores a signed image's values.
CREATE TABLE IF NOT EXISTS case_values (
    case_id TEXT PRIMARY KEY REFERENCES cases (id) ON DELETE CASCADE,
    offset  INTEGER NOT NULL,
    png     BLOB NOT NULL
);

-- The clinic's own head (device.personal) that made a case's prediction, by its id; no
-- row: the bundle's head made it.
CREATE TABLE IF NOT EXISTS case_heads (
    case_id TEXT PRIMARY KEY REFERENCES cases (id) ON DELETE CASCADE,
    head    TEXT NOT NULL CHECK (length(head) = 12)
);
