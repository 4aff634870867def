-- +goose Up
-- The log's partition count P, fixed here for the log's life: stream
-- subjects end with FNV-1a-32(subject_id) mod P and every projection has P
-- partitions (DESIGN.md, "The events stream"). Changing it means a new
-- stream built from the log, never an in-place change.
ALTER TABLE log_meta ADD COLUMN partitions integer NOT NULL DEFAULT 16
    CHECK (partitions BETWEEN 1 AND 1024);

-- Projector workers alive per projection: each renews its row every
-- heartbeat; a row past expires_at is a dead worker. Partitions are spread
-- over the live rows.
CREATE TABLE projector_members (
    projection text        NOT NULL,
    worker     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (projection, worker)
);

-- Which worker applies a projection's partition, until expires_at. Only
-- the holder renews it; anybody may take it once it has expired. Database
-- time decides, so worker clocks do not matter.
CREATE TABLE projector_leases (
    projection text        NOT NULL,
    partition  integer     NOT NULL,
    worker     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE projector_leases, projector_members;
ALTER TABLE log_meta DROP COLUMN partitions;
