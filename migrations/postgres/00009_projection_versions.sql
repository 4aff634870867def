-- +goose Up
-- The versions of each projection kept in the log's database. The live
-- version's tables are the ones in the log's schema (artifact_packages,
-- retention_state), which queries and SQL readers use; `projection
-- rebuild` builds a new version into a schema of its own (schema_name),
-- then switches by moving the tables in one transaction: the old version's
-- tables go to its own schema (retired) and are dropped after.
CREATE TABLE projection_versions (
    projection  text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    state       text        NOT NULL CHECK (state IN ('building', 'live', 'retired', 'dropped')),
    schema_name text,
    -- the log sequence the building version's bulk load reached (NULL
    -- while it loads: a rebuild that died then starts over)
    loaded_to   bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    live_at     timestamptz,
    PRIMARY KEY (projection, version),
    CHECK ((state = 'live') = (schema_name IS NULL))
);
CREATE UNIQUE INDEX projection_versions_one_live ON projection_versions (projection) WHERE state = 'live';
CREATE UNIQUE INDEX projection_versions_one_building ON projection_versions (projection) WHERE state = 'building';
INSERT INTO projection_versions (projection, version, state, live_at) VALUES ('registry', 1, 'live', now());

-- +goose Down
-- The schemas of versions being built or retired go with the catalog: left
-- behind, their names would be taken when a later rebuild needs them.
-- +goose StatementBegin
DO $$
DECLARE s text;
BEGIN
    FOR s IN SELECT schema_name FROM projection_versions WHERE state IN ('building', 'retired') LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s);
    END LOOP;
END $$;
-- +goose StatementEnd
DROP TABLE projection_versions;
