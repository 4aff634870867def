-- +goose Up
-- SQLite mirror of migrations/postgres/00009_projection_versions.sql (times
-- in microseconds since the Unix epoch, UTC). SQLite keeps one version per
-- projection: rebuilding beside the live one needs PostgreSQL.
CREATE TABLE projection_versions (
    projection  TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    state       TEXT    NOT NULL CHECK (state IN ('building', 'live', 'retired', 'dropped')),
    schema_name TEXT,
    loaded_to   INTEGER,
    created_at  INTEGER NOT NULL,
    live_at     INTEGER,
    PRIMARY KEY (projection, version),
    CHECK ((state = 'live') = (schema_name IS NULL))
);
INSERT INTO projection_versions (projection, version, state, created_at, live_at)
    VALUES ('registry', 1, 'live', CAST(unixepoch('subsec') * 1000000 AS INTEGER), CAST(unixepoch('subsec') * 1000000 AS INTEGER));

-- +goose Down
DROP TABLE projection_versions;
