-- +goose Up
-- The log's identity: a random id given once, on first migration, used in
-- JetStream message ids (<log_id>-<sequence>) so that a stream can tell
-- which log it belongs to.
CREATE TABLE log_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    log_id    text    NOT NULL
);
INSERT INTO log_meta (log_id) VALUES (replace(gen_random_uuid()::text, '-', ''));

-- The commit-order counter. Append updates this single row as its last step
-- before commit, which serialises sequence assignment in commit order (see
-- store/doc.go).
CREATE TABLE log_head (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    sequence   bigint      NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO log_head (sequence, created_at) VALUES (0, 'epoch');

-- The append-only log.
CREATE TABLE events (
    sequence       bigint      PRIMARY KEY CHECK (sequence > 0),
    event_type     text        NOT NULL CHECK (event_type <> ''),
    subject_kind   text        NOT NULL CHECK (subject_kind <> ''),
    subject_id     text        NOT NULL CHECK (subject_id <> ''),
    actor          text        NOT NULL CHECK (actor <> ''),
    payload        bytea       NOT NULL,
    payload_digest bytea       NOT NULL CHECK (length(payload_digest) = 32),
    created_at     timestamptz NOT NULL
);
CREATE INDEX events_subject_idx ON events (subject_kind, subject_id, sequence);

-- The database itself refuses to rewrite history.
-- +goose StatementBegin
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'artifactstore: events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Command side: idempotency records and the index decisions are made against.
CREATE TABLE commands (
    command_id text   PRIMARY KEY,
    sequence   bigint,
    reply      bytea
);
CREATE TABLE package_index (
    package_id text PRIMARY KEY,
    name       text NOT NULL,
    version    text NOT NULL,
    status     text NOT NULL CHECK (status IN ('open', 'finalized')),
    UNIQUE (name, version)
);

-- Registry views: rows hold only what events determine.
CREATE TABLE artifact_packages (
    package_id       text        PRIMARY KEY,
    name             text        NOT NULL,
    version          text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('open', 'finalized')),
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL,
    finalized_by     text,
    finalized_at     timestamptz,
    manifest_digest  bytea       CHECK (manifest_digest IS NULL OR length(manifest_digest) = 32),
    created_sequence bigint      NOT NULL,
    last_sequence    bigint      NOT NULL
);
CREATE INDEX artifact_packages_name_idx ON artifact_packages (name, package_id);
CREATE INDEX artifact_packages_status_idx ON artifact_packages (status, package_id);

CREATE TABLE retention_state (
    package_id    text        PRIMARY KEY,
    policy        text        NOT NULL CHECK (policy IN ('keep_forever', 'keep_days')),
    keep_days     integer     NOT NULL DEFAULT 0,
    expires_at    timestamptz,
    last_sequence bigint      NOT NULL
);

-- Each projection's (and partition's) last applied sequence, written in the
-- same transaction as the view change.
CREATE TABLE checkpoints (
    projection text    NOT NULL,
    partition  integer NOT NULL,
    sequence   bigint  NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE checkpoints, retention_state, artifact_packages, package_index, commands, events, log_head, log_meta;
DROP FUNCTION events_append_only();
