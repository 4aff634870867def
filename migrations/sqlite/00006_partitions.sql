-- +goose Up
-- SQLite mirror of migrations/postgres/00006_partitions.sql (expires_at in
-- microseconds since the Unix epoch, UTC).
ALTER TABLE log_meta ADD COLUMN partitions INTEGER NOT NULL DEFAULT 16
    CHECK (partitions BETWEEN 1 AND 1024);

CREATE TABLE projector_members (
    projection TEXT    NOT NULL,
    worker     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (projection, worker)
);

CREATE TABLE projector_leases (
    projection TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    worker     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE projector_leases;
DROP TABLE projector_members;
ALTER TABLE log_meta DROP COLUMN partitions;
