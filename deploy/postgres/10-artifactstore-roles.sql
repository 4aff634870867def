-- Login roles of the docker-compose deployment, created by the postgres
-- image on first start (/docker-entrypoint-initdb.d; an existing data
-- volume skips it: run this file once with psql as the owner).
--
-- Each service logs in as its own role, a member of one group role of
-- `artifactstore migrate roles` (store/postgres/roles.go), which grants the
-- groups their privileges after `migrate up`. The groups are created here
-- first, NOLOGIN exactly as `migrate roles` would, so that membership can
-- be given now; `migrate roles` then finds them and only grants. Only the
-- migrations run as the owner (POSTGRES_USER, a superuser): a superuser can
-- disable the append-only trigger on events, these roles cannot.
--
-- The passwords are examples, as in docker-compose.yml: replace both.
CREATE ROLE artifactstore_ingest NOLOGIN;
CREATE ROLE artifactstore_relay NOLOGIN;
CREATE ROLE artifactstore_projector NOLOGIN;
CREATE ROLE artifactstore_reader NOLOGIN;

CREATE ROLE ingest LOGIN PASSWORD 'ingest-db-example' IN ROLE artifactstore_ingest;
CREATE ROLE relay LOGIN PASSWORD 'relay-db-example' IN ROLE artifactstore_relay;
CREATE ROLE projector LOGIN PASSWORD 'projector-db-example' IN ROLE artifactstore_projector;
CREATE ROLE reader LOGIN PASSWORD 'reader-db-example' IN ROLE artifactstore_reader;
