package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
)

// describeTables renders what defines the registry's tables in schema:
// columns in order, constraints, indexes, persistence and grants, with the
// schema's name taken out.
func describeTables(t *testing.T, conn *pgx.Conn, schema string) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
		SELECT c.relname || ' persistence ' || c.relpersistence::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind = 'r'
		UNION ALL
		SELECT c.relname || ' column ' || a.attnum || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
			' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
			FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT c.relname || ' constraint ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
			JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
		UNION ALL
		SELECT i.tablename || ' index ' || i.indexname || ' ' || i.indexdef FROM pg_indexes i WHERE i.schemaname = $1
		UNION ALL
		SELECT g.table_name || ' grant ' || g.grantee || ' ' || g.privilege_type || ' grantable=' || g.is_grantable FROM information_schema.role_table_grants g
			WHERE g.table_schema = $1 AND g.grantee <> current_user
		ORDER BY 1`, schema)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	var keep []string
	for _, l := range lines {
		if strings.HasPrefix(l, "artifact_packages ") || strings.HasPrefix(l, "retention_state ") {
			keep = append(keep, strings.ReplaceAll(l, schema+".", "S."))
		}
	}
	return strings.Join(keep, "\n")
}

// TestVersionTablesMatchLive: a version's tables, once loaded, are defined
// exactly as the live ones the migrations made (columns in order, so dumps
// compare; constraints; indexes; logged) and carry the same grants.
func TestVersionTablesMatchLive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	roles, err := db.CreateRoles(ctx, testenv.Name("r"))
	require.NoError(t, err)
	dropRoles(t, url, roles)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	// Grants an operator added: to everyone, and one the grantee may pass on.
	_, err = conn.Exec(ctx, "GRANT SELECT ON "+pgx.Identifier{schema, "retention_state"}.Sanitize()+" TO PUBLIC; "+
		"GRANT SELECT ON "+pgx.Identifier{schema, "artifact_packages"}.Sanitize()+" TO "+roles.Relay+" WITH GRANT OPTION")
	require.NoError(t, err)

	v, err := db.BeginVersion(ctx, "registry")
	require.NoError(t, err)
	require.Equal(t, 2, v.Version)
	building := describeTables(t, conn, v.Schema)
	require.Contains(t, building, "persistence u", "a building version loads into unlogged tables")
	require.NotContains(t, building, "_name_idx", "secondary indexes come after the load")
	_, err = db.BeginVersion(ctx, "registry")
	require.ErrorIs(t, err, postgres.ErrVersionBuilding)

	require.NoError(t, db.FinishLoad(ctx, v, 0))
	require.Equal(t, describeTables(t, conn, schema), describeTables(t, conn, v.Schema))
	require.Contains(t, describeTables(t, conn, schema), "grant "+roles.Reader+" SELECT")
	require.Contains(t, describeTables(t, conn, schema), "retention_state grant PUBLIC SELECT")
	require.Contains(t, describeTables(t, conn, schema), "artifact_packages grant "+roles.Relay+" SELECT grantable=YES")
}

// TestVersionDBNeverWritesTheLiveTables: a version store whose schema lost
// a table would resolve it to the live one; it is refused.
func TestVersionDBNeverWritesTheLiveTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	v, err := db.BeginVersion(ctx, "registry")
	require.NoError(t, err)
	vdb, err := db.VersionDB(ctx, v)
	require.NoError(t, err)
	require.NoError(t, vdb.InTx(ctx, func(tx store.Tx) error {
		return tx.PutPackage(ctx, store.Package{ID: "p", Name: "n", Version: "1", Status: "open", CreatedBy: "a"})
	}))
	vdb.Close()
	_, err = db.Package(ctx, "p")
	require.ErrorIs(t, err, store.ErrNotFound, "the write went to the version's table")

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP TABLE "+pgx.Identifier{v.Schema, "retention_state"}.Sanitize())
	require.NoError(t, err)
	_, err = db.VersionDB(ctx, v)
	require.ErrorIs(t, err, postgres.ErrVersionState)
	require.ErrorContains(t, err, "retention_state")

	// Only building or retired versions are dropped; dropping twice is a no-op.
	live := store.ProjectionVersion{Projection: "registry", Version: 1}
	require.ErrorIs(t, db.DropVersion(ctx, live), postgres.ErrVersionState)
	require.NoError(t, db.DropVersion(ctx, v))
	require.NoError(t, db.DropVersion(ctx, v))
	vs, err := db.ProjectionVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, store.VersionDropped, vs[1].State)
}

// versionSchemas returns the version schemas of the log's schema.
func versionSchemas(t *testing.T, conn *pgx.Conn, schema string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1`,
		schema+`\_registry\_v%`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// switchTo switches to v, catching it up with a replay of the log.
func switchTo(t *testing.T, db *postgres.DB, v store.ProjectionVersion) store.ProjectionVersion {
	t.Helper()
	ctx := context.Background()
	retired, err := db.SwitchVersion(ctx, v, store.SwitchOptions{Partitions: 4, CatchUp: func(ctx context.Context, tx store.Tx) (int64, error) {
		return store.ReplayTx(ctx, db, tx, store.RegistryViews{}, store.ReplayOptions{Projection: v.Checkpoints(), Partitions: 4})
	}})
	require.NoError(t, err)
	return retired
}

// TestFreshDropsVersionSchemas: migrate fresh after a rebuild that died
// between its switch and its drop (a retired version's schema left) and
// during another's load (a building one) leaves no version schema behind;
// the next rebuild's switch would otherwise find the retired version's
// schema name taken.
func TestFreshDropsVersionSchemas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)

	v, err := db.BeginVersion(ctx, "registry")
	require.NoError(t, err)
	require.NoError(t, db.FinishLoad(ctx, v, 0))
	switchTo(t, db, v) // and died before dropping version 1
	_, err = db.BeginVersion(ctx, "registry")
	require.NoError(t, err) // and died during its load
	require.Len(t, versionSchemas(t, conn, schema), 2)

	require.NoError(t, db.Fresh(ctx))
	require.Empty(t, versionSchemas(t, conn, schema))
	v, err = db.BeginVersion(ctx, "registry")
	require.NoError(t, err)
	require.Equal(t, 2, v.Version)
	require.NoError(t, db.FinishLoad(ctx, v, 0))
	retired := switchTo(t, db, v)
	require.NoError(t, db.DropVersion(ctx, retired))
	require.Empty(t, versionSchemas(t, conn, schema))
}

// TestBeginVersionRefusesASchemaNameTooLong: PostgreSQL would truncate a
// version schema's name past 63 bytes (two versions could then share a
// schema); BeginVersion refuses with a clear error and records nothing.
func TestBeginVersionRefusesASchemaNameTooLong(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.PostgresURL(t)
	schema := testenv.Name(strings.Repeat("l", 39)) // 52 bytes: its versions' schemas would need 64
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			c.Close(context.Background())
		}
	})
	db := testenv.OpenPostgres(t, url, schema)
	_, err := db.BeginVersion(ctx, "registry")
	require.ErrorContains(t, err, "longer than 63 bytes")
	vs, err := db.ProjectionVersions(ctx)
	require.NoError(t, err)
	require.Len(t, vs, 1)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", schema[:40]+"%").Scan(&n))
	require.Equal(t, 1, n, "only the log's schema")
}

// TestSwitchRefusedWhenTheLiveTablesChanged: a migration that changed the
// live tables while a version was built (a column added) is not undone by
// the switch: it is refused, changing nothing.
func TestSwitchRefusedWhenTheLiveTablesChanged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	v, err := db.BeginVersion(ctx, "registry")
	require.NoError(t, err)
	require.NoError(t, db.FinishLoad(ctx, v, 0))
	_, err = conn.Exec(ctx, "ALTER TABLE "+pgx.Identifier{schema, "artifact_packages"}.Sanitize()+" ADD COLUMN note text")
	require.NoError(t, err)

	_, err = db.SwitchVersion(ctx, v, store.SwitchOptions{Partitions: 4, CatchUp: func(ctx context.Context, tx store.Tx) (int64, error) {
		return store.ReplayTx(ctx, db, tx, store.RegistryViews{}, store.ReplayOptions{Projection: v.Checkpoints(), Partitions: 4})
	}})
	require.ErrorIs(t, err, store.ErrVersionObsolete)
	require.ErrorContains(t, err, "note text")
	vs, err := db.ProjectionVersions(ctx)
	require.NoError(t, err)
	require.Equal(t, store.VersionLive, vs[0].State)
	require.Equal(t, store.VersionBuilding, vs[1].State)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = $1 AND table_name = 'artifact_packages' AND column_name = 'note'`, schema).Scan(&n))
	require.Equal(t, 1, n, "the live table keeps its migrated column")

	// A new version would not match either: refused before it is built.
	_, err = db.BeginVersion(ctx, "registry")
	require.ErrorIs(t, err, postgres.ErrVersionBuilding)
	require.NoError(t, db.DropVersion(ctx, v))
	_, err = db.BeginVersion(ctx, "registry")
	require.ErrorIs(t, err, store.ErrVersionObsolete)
	vs, err = db.ProjectionVersions(ctx)
	require.NoError(t, err)
	require.Len(t, vs, 2, "nothing recorded")
}
