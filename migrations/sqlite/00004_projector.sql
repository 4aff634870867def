-- +goose Up
-- SQLite mirror of migrations/postgres/00004_projector.sql (parked_at in
-- microseconds since the Unix epoch, UTC).
CREATE TABLE projector_parked (
    projection TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    sequence   INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    reason     TEXT    NOT NULL CHECK (reason IN ('poison', 'gap')),
    error      TEXT    NOT NULL,
    worker     TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    parked_at  INTEGER NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE projector_parked;
