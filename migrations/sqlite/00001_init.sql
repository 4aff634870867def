-- +goose Up
-- SQLite mirror of migrations/postgres/00001_init.sql. Times are INTEGER
-- microseconds since the Unix epoch (UTC); digests and payloads are BLOBs.
CREATE TABLE log_meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    log_id    TEXT    NOT NULL
);
INSERT INTO log_meta (singleton, log_id) VALUES (1, lower(hex(randomblob(16))));

CREATE TABLE log_head (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    sequence   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO log_head (singleton, sequence, created_at) VALUES (1, 0, 0);

CREATE TABLE events (
    sequence       INTEGER PRIMARY KEY CHECK (sequence > 0),
    event_type     TEXT    NOT NULL CHECK (event_type <> ''),
    subject_kind   TEXT    NOT NULL CHECK (subject_kind <> ''),
    subject_id     TEXT    NOT NULL CHECK (subject_id <> ''),
    actor          TEXT    NOT NULL CHECK (actor <> ''),
    payload        BLOB    NOT NULL,
    payload_digest BLOB    NOT NULL CHECK (length(payload_digest) = 32),
    created_at     INTEGER NOT NULL
);
CREATE INDEX events_subject_idx ON events (subject_kind, subject_id, sequence);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'artifactstore: events is append-only (UPDATE refused)'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'artifactstore: events is append-only (DELETE refused)'); END;

CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    sequence   INTEGER,
    reply      BLOB
);
CREATE TABLE package_index (
    package_id TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('open', 'finalized')),
    UNIQUE (name, version)
);

CREATE TABLE artifact_packages (
    package_id       TEXT    PRIMARY KEY,
    name             TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('open', 'finalized')),
    created_by       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    finalized_by     TEXT,
    finalized_at     INTEGER,
    manifest_digest  BLOB    CHECK (manifest_digest IS NULL OR length(manifest_digest) = 32),
    created_sequence INTEGER NOT NULL,
    last_sequence    INTEGER NOT NULL
);
CREATE INDEX artifact_packages_name_idx ON artifact_packages (name, package_id);
CREATE INDEX artifact_packages_status_idx ON artifact_packages (status, package_id);

CREATE TABLE retention_state (
    package_id    TEXT    PRIMARY KEY,
    policy        TEXT    NOT NULL CHECK (policy IN ('keep_forever', 'keep_days')),
    keep_days     INTEGER NOT NULL DEFAULT 0,
    expires_at    INTEGER,
    last_sequence INTEGER NOT NULL
);

CREATE TABLE checkpoints (
    projection TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    sequence   INTEGER NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE checkpoints;
DROP TABLE retention_state;
DROP TABLE artifact_packages;
DROP TABLE package_index;
DROP TABLE commands;
DROP TABLE events;
DROP TABLE log_head;
DROP TABLE log_meta;
