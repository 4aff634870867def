-- +goose Up
-- Leader leases (store.DB.TryLock). A session advisory lock cannot be
-- taken over while its session lives, and the server keeps the session of
-- a holder cut off by a silent partition (a proxy or middlebox that keeps
-- the TCP connection open) indefinitely. A lease expires by itself: the
-- holder renews it well before expires_at and gives up when it cannot;
-- anyone may take an expired one. Times are the server's (now()).
CREATE TABLE leader_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE leader_leases;
