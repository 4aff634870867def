package sqlite

import (
	"context"
	"database/sql"

	"github.com/artifactstore/artifactstore/store"
)

var _ store.Versions = (*DB)(nil)

// ProjectionVersions implements store.Versions. SQLite keeps one version
// of each projection (the live one): rebuilding beside it needs
// PostgreSQL.
func (db *DB) ProjectionVersions(ctx context.Context) ([]store.ProjectionVersion, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT projection, version, state, coalesce(schema_name, ''),
		loaded_to IS NOT NULL, coalesce(loaded_to, 0), created_at, live_at FROM projection_versions ORDER BY projection, version`)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []store.ProjectionVersion
	for rows.Next() {
		var v store.ProjectionVersion
		var created int64
		var live sql.NullInt64
		if err := rows.Scan(&v.Projection, &v.Version, &v.State, &v.Schema, &v.Loaded, &v.LoadedTo, &created, &live); err != nil {
			return nil, translate(err)
		}
		v.CreatedAt = fromMicros(created)
		if live.Valid {
			t := fromMicros(live.Int64)
			v.LiveAt = &t
		}
		out = append(out, v)
	}
	return out, translate(rows.Err())
}
