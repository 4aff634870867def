package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// ErrVersionBuilding is returned by BeginVersion when the projection
// already has a building version: resume it or abandon it first.
var ErrVersionBuilding = errors.New("postgres: the projection already has a version being built")

// ErrVersionState is returned when a version is not in the state an
// operation needs (switching a version that is not building, say).
var ErrVersionState = errors.New("postgres: projection version in the wrong state")

// ErrDependents is returned by BeginVersion and SwitchVersion while objects
// other than the projection's own indexes and constraints (views, foreign
// keys of other tables, triggers, publications, policies) depend on its live
// tables: a switch would leave them on the old version's tables, and
// dropping those would drop them.
var ErrDependents = errors.New("postgres: other objects depend on the projection's live tables")

var _ store.Rebuilder = (*DB)(nil)

const versionColumns = "projection, version, state, coalesce(schema_name, ''), loaded_to IS NOT NULL, coalesce(loaded_to, 0), created_at, live_at"

// ProjectionVersions implements store.Versions.
func (db *DB) ProjectionVersions(ctx context.Context) ([]store.ProjectionVersion, error) {
	rows, err := db.pool.Query(ctx, "SELECT "+versionColumns+" FROM projection_versions ORDER BY projection, version")
	if err != nil {
		return nil, translate(err)
	}
	out, err := pgx.CollectRows(rows, scanVersion)
	return out, translate(err)
}

func scanVersion(r pgx.CollectableRow) (store.ProjectionVersion, error) {
	var v store.ProjectionVersion
	err := r.Scan(&v.Projection, &v.Version, &v.State, &v.Schema, &v.Loaded, &v.LoadedTo, &v.CreatedAt, &v.LiveAt)
	v.CreatedAt = v.CreatedAt.UTC()
	v.LiveAt = utcPtr(v.LiveAt)
	return v, err
}

// versionTx runs fn in a transaction that holds the projection's catalog
// rows (FOR UPDATE), so that rebuilds, switches and drops of one projection
// never interleave. fn gets the projection's versions and the log's schema.
func (db *DB) versionTx(ctx context.Context, projection string, fn func(t *tx, vs []store.ProjectionVersion, schema string) error) error {
	return db.InTx(ctx, func(stx store.Tx) error {
		t := stx.(*tx)
		rows, err := t.tx.Query(ctx, "SELECT "+versionColumns+` FROM projection_versions
			WHERE projection = $1 ORDER BY version FOR UPDATE`, projection)
		if err != nil {
			return err
		}
		vs, err := pgx.CollectRows(rows, scanVersion)
		if err != nil {
			return err
		}
		if len(vs) == 0 {
			return fmt.Errorf("%w: projection %q has no versions", store.ErrNotFound, projection)
		}
		var schema string
		if err := t.tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return err
		}
		return fn(t, vs, schema)
	})
}

// BeginVersion creates the projection's next version beside the live one:
// a schema of its own holding the projection's tables, unlogged and
// without secondary indexes so that the bulk load is fast (FinishLoad
// builds them), with the live tables' grants. The catalog records it as
// building. It returns ErrVersionBuilding when one is being built already.
func (db *DB) BeginVersion(ctx context.Context, projection string) (store.ProjectionVersion, error) {
	tables, ok := projectionTables[projection]
	if !ok {
		return store.ProjectionVersion{}, fmt.Errorf("%w: no projection %q kept in this database", store.ErrNotFound, projection)
	}
	var v store.ProjectionVersion
	err := db.versionTx(ctx, projection, func(t *tx, vs []store.ProjectionVersion, schema string) error {
		next := 1
		for _, old := range vs {
			if old.State == store.VersionBuilding {
				return fmt.Errorf("%w: %s version %d (schema %s)", ErrVersionBuilding, projection, old.Version, old.Schema)
			}
			next = max(next, old.Version+1)
		}
		v = store.ProjectionVersion{Projection: projection, Version: next, State: store.VersionBuilding,
			Schema: versionSchema(schema, projection, next)}
		if len(v.Schema) > 63 {
			return fmt.Errorf("postgres: schema name %q is longer than 63 bytes", v.Schema)
		}
		if err := refuseDependents(ctx, t, schema, tables.names); err != nil {
			return err
		}
		sch := pgx.Identifier{v.Schema}.Sanitize()
		stmts := []string{"DROP SCHEMA IF EXISTS " + sch + " CASCADE", "CREATE SCHEMA " + sch,
			"SET LOCAL search_path TO " + sch}
		for _, ddl := range tables.create {
			stmts = append(stmts, strings.Replace(ddl, "CREATE TABLE", "CREATE UNLOGGED TABLE", 1))
		}
		stmts = append(stmts, "SET LOCAL search_path TO "+pgx.Identifier{schema}.Sanitize())
		for _, s := range stmts {
			if _, err := t.tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("creating version %d of %s: %w", next, projection, err)
			}
		}
		if err := sameColumns(ctx, t, tables.names, schema, v.Schema); err != nil {
			return fmt.Errorf("%w: %w (migrate the database, or use the binary that matches it)", store.ErrVersionObsolete, err)
		}
		if err := copyGrants(ctx, t, schema, v.Schema, tables.names); err != nil {
			return err
		}
		return t.tx.QueryRow(ctx, `INSERT INTO projection_versions (projection, version, state, schema_name)
			VALUES ($1, $2, 'building', $3) RETURNING created_at`, projection, next, v.Schema).Scan(&v.CreatedAt)
	})
	v.CreatedAt = v.CreatedAt.UTC()
	return v, translate(err)
}

// versionSchema names the schema of a version that is not live.
func versionSchema(logSchema, projection string, version int) string {
	return fmt.Sprintf("%s_%s_v%d", logSchema, strings.ToLower(projection), version)
}

// copyGrants gives each table of to the privileges the same table of from
// grants (the roles of a least-privilege deployment, PUBLIC, grant
// options), and every grantee usage of the schema to.
func copyGrants(ctx context.Context, t *tx, from, to string, names []string) error {
	grantees := map[string]bool{}
	for _, name := range names {
		rows, err := t.tx.Query(ctx, `SELECT a.privilege_type, coalesce(quote_ident(r.rolname), 'PUBLIC'), a.is_grantable
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
			     aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
			WHERE n.nspname = $1 AND c.relname = $2 AND a.grantee <> c.relowner`, from, name)
		if err != nil {
			return err
		}
		type grant struct {
			privilege, grantee string
			grantable          bool
		}
		grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (grant, error) {
			var g grant
			return g, r.Scan(&g.privilege, &g.grantee, &g.grantable)
		})
		if err != nil {
			return err
		}
		for _, g := range grants {
			grantees[g.grantee] = true
			stmt := fmt.Sprintf("GRANT %s ON %s TO %s", g.privilege, pgx.Identifier{to, name}.Sanitize(), g.grantee)
			if g.grantable {
				stmt += " WITH GRANT OPTION"
			}
			if _, err := t.tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("copying grants: %w", err)
			}
		}
	}
	for role := range grantees {
		stmt := fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", pgx.Identifier{to}.Sanitize(), role)
		if _, err := t.tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("copying grants: %w", err)
		}
	}
	return nil
}

// VersionDB opens a store on the same database whose view tables are the
// building version v's (its schema comes first in search_path) and whose
// log, checkpoints and leases are the log's. It refuses when a table of
// the projection would resolve anywhere else, so that a write meant for the
// new version can never reach the live one. Close it after use.
func (db *DB) VersionDB(ctx context.Context, v store.ProjectionVersion) (store.DB, error) {
	if v.State != store.VersionBuilding || v.Schema == "" || projectionTables[v.Projection].names == nil {
		return nil, fmt.Errorf("%w: %s version %d is %s", ErrVersionState, v.Projection, v.Version, v.State)
	}
	cfg := db.cfg
	if cfg.Schema == "" {
		if err := db.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&cfg.Schema); err != nil {
			return nil, translate(err)
		}
	}
	cfg.ViewSchema = v.Schema
	cfg.MaxConns = 0
	vdb, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	for _, name := range projectionTables[v.Projection].names {
		var got string
		err := vdb.pool.QueryRow(ctx, `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = to_regclass($1)`, name).Scan(&got)
		if err != nil || got != v.Schema {
			vdb.Close()
			return nil, fmt.Errorf("%w: table %s of %s version %d is not in schema %s (found %q, %v)",
				ErrVersionState, name, v.Projection, v.Version, v.Schema, got, translate(err))
		}
	}
	return vdb, nil
}

// FinishLoad records that v's bulk load reached loadedTo, after building
// its secondary indexes, making its tables logged (crash-safe) and
// analysing them.
func (db *DB) FinishLoad(ctx context.Context, v store.ProjectionVersion, loadedTo int64) error {
	tables := projectionTables[v.Projection]
	return translate(db.versionTx(ctx, v.Projection, func(t *tx, vs []store.ProjectionVersion, _ string) error {
		if err := wantState(vs, v, store.VersionBuilding); err != nil {
			return err
		}
		sch := pgx.Identifier{v.Schema}.Sanitize()
		stmts := []string{"SET LOCAL search_path TO " + sch}
		stmts = append(stmts, tables.indexes...)
		for _, name := range tables.names {
			id := pgx.Identifier{v.Schema, name}.Sanitize()
			stmts = append(stmts, "ALTER TABLE "+id+" SET LOGGED", "ANALYZE "+id)
		}
		for _, s := range stmts {
			if _, err := t.tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("finishing the load of %s version %d: %w", v.Projection, v.Version, err)
			}
		}
		_, err := t.tx.Exec(ctx, "SET LOCAL search_path TO DEFAULT")
		if err != nil {
			return err
		}
		_, err = t.tx.Exec(ctx, `UPDATE projection_versions SET loaded_to = $3 WHERE projection = $1 AND version = $2`,
			v.Projection, v.Version, loadedTo)
		return err
	}))
}

// wantState checks that v is in the catalog in state.
func wantState(vs []store.ProjectionVersion, v store.ProjectionVersion, state string) error {
	for _, cur := range vs {
		if cur.Version == v.Version {
			if cur.State != state {
				return fmt.Errorf("%w: %s version %d is %s, not %s", ErrVersionState, v.Projection, v.Version, cur.State, state)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %s version %d is not in the catalog", ErrVersionState, v.Projection, v.Version)
}

// DropVersion drops the tables of a building or retired version (its
// schema) and records it as dropped. Dropping the live version is refused.
func (db *DB) DropVersion(ctx context.Context, v store.ProjectionVersion) error {
	return translate(db.versionTx(ctx, v.Projection, func(t *tx, vs []store.ProjectionVersion, _ string) error {
		var cur store.ProjectionVersion
		for _, c := range vs {
			if c.Version == v.Version {
				cur = c
			}
		}
		switch cur.State {
		case store.VersionBuilding, store.VersionRetired:
		case store.VersionDropped:
			return nil
		default:
			return fmt.Errorf("%w: %s version %d is %q: only building or retired versions are dropped", ErrVersionState, v.Projection, v.Version, cur.State)
		}
		if _, err := t.tx.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{cur.Schema}.Sanitize()+" CASCADE"); err != nil {
			return err
		}
		name := store.VersionCheckpoints(v.Projection, v.Version)
		for _, s := range []string{"DELETE FROM checkpoints WHERE projection = $1", "DELETE FROM projector_parked WHERE projection = $1",
			"DELETE FROM projector_leases WHERE projection = $1", "DELETE FROM projector_members WHERE projection = $1"} {
			if _, err := t.tx.Exec(ctx, s, name); err != nil {
				return err
			}
		}
		_, err := t.tx.Exec(ctx, `UPDATE projection_versions SET state = 'dropped' WHERE projection = $1 AND version = $2`,
			v.Projection, v.Version)
		return err
	}))
}

// SwitchVersion makes the building version v live in one transaction: it
// locks the live version's checkpoints (projector batches wait), lets
// opts.CatchUp bring v up to the log head, moves the live tables into a
// schema of their own (the old version, now retired) and v's tables into
// the log's schema, sets the live checkpoints to where v is and clears the
// old version's parked partitions. Queries and SQL readers see the old
// tables up to the commit and the new ones after it; projector workers'
// compare-and-set fails once, and they resume from the new checkpoints. It
// returns the retired version (DropVersion drops its tables).
func (db *DB) SwitchVersion(ctx context.Context, v store.ProjectionVersion, opts store.SwitchOptions) (store.ProjectionVersion, error) {
	tables := projectionTables[v.Projection]
	var retired store.ProjectionVersion
	err := db.versionTx(ctx, v.Projection, func(t *tx, vs []store.ProjectionVersion, schema string) error {
		if err := wantState(vs, v, store.VersionBuilding); err != nil {
			return err
		}
		for _, c := range vs {
			if c.State == store.VersionLive {
				retired = c
			}
		}
		if retired.Version == 0 {
			return fmt.Errorf("%w: %s has no live version", ErrVersionState, v.Projection)
		}
		if err := setLockTimeout(ctx, t, opts.LockTimeout); err != nil {
			return err
		}
		live, err := t.LockCheckpoints(ctx, v.Projection, opts.Partitions)
		if err != nil {
			return err
		}
		at, err := catchUpVersion(ctx, t, v, schema, opts.CatchUp)
		if err != nil {
			return err
		}
		retired.State, retired.Schema = store.VersionRetired, versionSchema(schema, v.Projection, retired.Version)
		if opts.TableLockTimeout > 0 {
			if err := setLockTimeout(ctx, t, opts.TableLockTimeout); err != nil {
				return err
			}
		}
		if err := swapTables(ctx, t, tables.names, schema, v.Schema, retired.Schema); err != nil {
			return err
		}
		if err := setLockTimeout(ctx, t, opts.LockTimeout); err != nil {
			return err
		}
		// Checked once the old tables are locked (moved): no dependent
		// can be added, no migration can change them since.
		if err := refuseDependents(ctx, t, retired.Schema, tables.names); err != nil {
			return err
		}
		if err := sameColumns(ctx, t, tables.names, retired.Schema, schema); err != nil {
			return fmt.Errorf("%w: %w (a migration changed the live tables while version %d was built)", store.ErrVersionObsolete, err, v.Version)
		}
		return recordSwitch(ctx, t, v, retired, live, at)
	})
	return retired, translate(err)
}

// setLockTimeout bounds the transaction's waits for locks from now on (d,
// or the session's setting when d is 0).
func setLockTimeout(ctx context.Context, t *tx, d time.Duration) error {
	stmt := "SET LOCAL lock_timeout TO DEFAULT"
	if d > 0 {
		stmt = fmt.Sprintf("SET LOCAL lock_timeout = %d", max(d.Milliseconds(), 1))
	}
	_, err := t.tx.Exec(ctx, stmt)
	return err
}

// catchUpVersion runs catchUp with v's tables first in search_path.
func catchUpVersion(ctx context.Context, t *tx, v store.ProjectionVersion, schema string, catchUp func(context.Context, store.Tx) (int64, error)) (int64, error) {
	if _, err := t.tx.Exec(ctx, "SET LOCAL search_path TO "+pgx.Identifier{v.Schema}.Sanitize()+", "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return 0, err
	}
	at, err := catchUp(ctx, t)
	if err != nil {
		return 0, fmt.Errorf("catching up %s version %d: %w", v.Projection, v.Version, err)
	}
	if err := t.tx.settle(ctx); err != nil {
		return 0, err
	}
	_, err = t.tx.Exec(ctx, "SET LOCAL search_path TO "+pgx.Identifier{schema}.Sanitize())
	return at, err
}

// swapTables moves the live tables (in schema) to retiredSchema and the new
// version's (in newSchema) to schema.
func swapTables(ctx context.Context, t *tx, names []string, schema, newSchema, retiredSchema string) error {
	stmts := []string{"CREATE SCHEMA " + pgx.Identifier{retiredSchema}.Sanitize()}
	for _, name := range names {
		stmts = append(stmts, "ALTER TABLE "+pgx.Identifier{schema, name}.Sanitize()+" SET SCHEMA "+pgx.Identifier{retiredSchema}.Sanitize())
	}
	for _, name := range names {
		stmts = append(stmts, "ALTER TABLE "+pgx.Identifier{newSchema, name}.Sanitize()+" SET SCHEMA "+pgx.Identifier{schema}.Sanitize())
	}
	stmts = append(stmts, "DROP SCHEMA "+pgx.Identifier{newSchema}.Sanitize())
	for _, s := range stmts {
		if _, err := t.tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("switching tables: %w", err)
		}
	}
	return nil
}

// refuseDependents returns ErrDependents, naming them, when objects other
// than the tables' own (indexes, constraints, defaults, row and toast
// types) depend on the tables names of schema.
func refuseDependents(ctx context.Context, t *tx, schema string, names []string) error {
	rows, err := t.tx.Query(ctx, `WITH tables AS (
			SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = ANY($2))
		SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass -- a view's rule: name the view
			THEN (SELECT pg_describe_object('pg_class'::regclass, r.ev_class, 0) FROM pg_rewrite r WHERE r.oid = d.objid)
			ELSE pg_describe_object(d.classid, d.objid, 0) END FROM pg_depend d
		WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM tables) AND d.deptype <> 'i'
			AND d.classid NOT IN ('pg_class'::regclass, 'pg_attrdef'::regclass)
			AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN (SELECT k.oid FROM pg_constraint k WHERE k.conrelid IN (SELECT oid FROM tables)))
		ORDER BY 1`, schema, names)
	if err != nil {
		return err
	}
	objs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(objs) == 0 {
		return err
	}
	return fmt.Errorf("%w: %s (drop them, rebuild, and create them again)", ErrDependents, strings.Join(objs, "; "))
}

// sameColumns returns an error naming the columns by which a table of
// names differs between schemas a and b (name, type, nullability and
// default, in order).
func sameColumns(ctx context.Context, t *tx, names []string, a, b string) error {
	columns := func(schema, name string) ([]string, error) {
		rows, err := t.tx.Query(ctx, `SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
				CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
			FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
			pgx.Identifier{schema, name}.Sanitize())
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	for _, name := range names {
		was, err := columns(a, name)
		if err != nil {
			return err
		}
		now, err := columns(b, name)
		if err != nil {
			return err
		}
		if !slices.Equal(was, now) {
			return fmt.Errorf("%s had columns (%s), the new version's has (%s)", name, strings.Join(was, ", "), strings.Join(now, ", "))
		}
	}
	return nil
}

// recordSwitch moves the live checkpoints forward to at, drops the new
// version's own checkpoints, leases and parked rows and the old version's
// parked rows, and updates the catalog.
func recordSwitch(ctx context.Context, t *tx, v, retired store.ProjectionVersion, live []store.Checkpoint, at int64) error {
	for _, c := range live {
		if c.Sequence > at {
			return fmt.Errorf("postgres: switching %s: live partition %d is at %d, beyond the new version's %d", v.Projection, c.Partition, c.Sequence, at)
		}
		if c.Sequence == at {
			continue
		}
		if err := t.AdvanceCheckpoint(ctx, v.Projection, c.Partition, c.Sequence, at); err != nil {
			return err
		}
	}
	name := store.VersionCheckpoints(v.Projection, v.Version)
	stmts := [][]any{
		{"DELETE FROM checkpoints WHERE projection = $1", name},
		{"DELETE FROM projector_parked WHERE projection = $1 OR projection = $2", name, v.Projection},
		{"DELETE FROM projector_leases WHERE projection = $1", name},
		{"DELETE FROM projector_members WHERE projection = $1", name},
		{"UPDATE projection_versions SET state = 'retired', schema_name = $3 WHERE projection = $1 AND version = $2",
			v.Projection, retired.Version, retired.Schema},
		{"UPDATE projection_versions SET state = 'live', schema_name = NULL, live_at = now() WHERE projection = $1 AND version = $2",
			v.Projection, v.Version},
	}
	for _, s := range stmts {
		if _, err := t.tx.Exec(ctx, s[0].(string), s[1:]...); err != nil {
			return err
		}
	}
	return nil
}
