-- +goose Up
-- Projector partitions that stopped on an event they could not apply (a
-- poison event whose handler keeps failing, or a gap in the stream). One row
-- per parked partition; the projector deletes it in the same transaction
-- that finally applies the event. status reads it.
CREATE TABLE projector_parked (
    projection text        NOT NULL,
    partition  integer     NOT NULL,
    sequence   bigint      NOT NULL,
    event_type text        NOT NULL,
    reason     text        NOT NULL CHECK (reason IN ('poison', 'gap')),
    error      text        NOT NULL,
    worker     text        NOT NULL,
    attempts   integer     NOT NULL,
    parked_at  timestamptz NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- +goose Down
DROP TABLE projector_parked;
