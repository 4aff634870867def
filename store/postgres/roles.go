package postgres

import (
	"context"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
)

// Roles are the NOLOGIN group roles CreateRoles makes; grant them to the
// login roles each service runs as.
type Roles struct {
	// Ingest may append events and keep the command-side tables; it reads
	// the views for queries. It cannot UPDATE, DELETE or TRUNCATE events.
	Ingest string
	// Relay may read the log and hold its leader lease.
	Relay string
	// Projector may read the log and write the views, checkpoints and
	// parked partitions.
	Projector string
	// Reader may only read.
	Reader string
}

var rolePrefixRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,40}$`)

// RoleNames returns the role names for prefix (artifactstore when empty).
func RoleNames(prefix string) Roles {
	if prefix == "" {
		prefix = "artifactstore"
	}
	return Roles{Ingest: prefix + "_ingest", Relay: prefix + "_relay", Projector: prefix + "_projector", Reader: prefix + "_reader"}
}

// CreateRoles creates (if missing) the group roles of RoleNames(prefix) and
// grants each exactly what its service needs on the store's tables, in the
// store's schema. It is idempotent; run it after Migrate, as a role
// allowed to create roles. The append-only trigger on events stays the
// backstop for roles (such as the owner) that hold more privileges.
func (db *DB) CreateRoles(ctx context.Context, prefix string) (Roles, error) {
	if prefix != "" && !rolePrefixRe.MatchString(prefix) {
		return Roles{}, fmt.Errorf("postgres: role prefix %q: use lower-case letters, digits and _", prefix)
	}
	r := RoleNames(prefix)
	schema := db.cfg.Schema
	if schema == "" {
		schema = "public"
	}
	q := func(name string) string { return pgx.Identifier{name}.Sanitize() }
	s := q(schema)
	t := func(table string) string { return s + "." + q(table) }
	stmts := []string{}
	for _, role := range []string{r.Ingest, r.Relay, r.Projector, r.Reader} {
		stmts = append(stmts, fmt.Sprintf(`DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s NOLOGIN; END IF;
		END $$`, quoteLiteral(role), q(role)),
			fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", s, q(role)),
			fmt.Sprintf("GRANT SELECT ON %s, %s, %s TO %s", t("log_meta"), t("log_head"), t("events"), q(role)))
	}
	stmts = append(stmts,
		// ingest: append, decide, answer queries.
		fmt.Sprintf("GRANT INSERT ON %s TO %s", t("events"), q(r.Ingest)),
		fmt.Sprintf("GRANT UPDATE ON %s TO %s", t("log_head"), q(r.Ingest)),
		fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s, %s TO %s", t("commands"), t("package_index"), q(r.Ingest)),
		fmt.Sprintf("GRANT SELECT ON %s, %s TO %s", t("artifact_packages"), t("retention_state"), q(r.Ingest)),
		// projector: the views and their bookkeeping.
		fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s, %s, %s, %s, %s, %s TO %s", t("artifact_packages"), t("retention_state"),
			t("checkpoints"), t("projector_parked"), t("projector_members"), t("projector_leases"), q(r.Projector)),
		// reader: everything but the command side's idempotency records.
		fmt.Sprintf("GRANT SELECT ON %s, %s, %s, %s, %s TO %s", t("artifact_packages"), t("retention_state"), t("checkpoints"),
			t("projector_parked"), t("projection_versions"), q(r.Reader)),
		fmt.Sprintf("GRANT SELECT ON %s, %s, %s TO %s", t("artifact_packages"), t("retention_state"), t("checkpoints"), q(r.Relay)),
		// relay: its leader lease (TryLock).
		fmt.Sprintf("GRANT SELECT, INSERT, UPDATE ON %s TO %s", t("leader_leases"), q(r.Relay)),
	)
	err := db.inTxRaw(ctx, func(tx pgx.Tx) error {
		// Serialise concurrent callers: role creation races otherwise.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockID("roles")); err != nil {
			return err
		}
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st); err != nil {
				return fmt.Errorf("%s: %w", st, err)
			}
		}
		return nil
	})
	if err != nil {
		return Roles{}, fmt.Errorf("postgres: creating roles: %w", translate(err))
	}
	return r, nil
}

// inTxRaw runs fn in a pgx transaction (for administration in this package).
func (db *DB) inTxRaw(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, db.pool, fn)
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
