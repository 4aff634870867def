package postgres

// tableSet is what a projection kept in the log's database owns: its
// tables' definitions (in column order: dumps compare rows as records)
// and the secondary indexes built after a bulk load.
type tableSet struct {
	names   []string
	create  []string
	indexes []string
}

// projectionTables holds the projections whose versions BeginVersion can
// build. The registry's definitions are those of the live tables that
// migrations/postgres created (TestVersionTablesMatchLive checks it): a
// version built by new code with other definitions brings them here.
var projectionTables = map[string]tableSet{
	"registry": {
		names: []string{"artifact_packages", "retention_state"},
		create: []string{
			`CREATE TABLE artifact_packages (
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
)`,
			`CREATE TABLE retention_state (
    package_id    text        PRIMARY KEY,
    policy        text        NOT NULL CHECK (policy IN ('keep_forever', 'keep_days')),
    keep_days     integer     NOT NULL DEFAULT 0,
    expires_at    timestamptz,
    last_sequence bigint      NOT NULL
)`,
		},
		indexes: []string{
			"CREATE INDEX artifact_packages_name_idx ON artifact_packages (name, package_id)",
			"CREATE INDEX artifact_packages_status_idx ON artifact_packages (status, package_id)",
		},
	},
}
