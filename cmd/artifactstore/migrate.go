package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/artifactstore/artifactstore/store/postgres"
)

type migrateCmd struct {
	Up     migrateUpCmd     `cmd:"" help:"Apply pending migrations (safe to run from several processes at once)."`
	Fresh  migrateFreshCmd  `cmd:"" help:"Drop every table, the log included, and migrate again (a new log id)."`
	Status migrateStatusCmd `cmd:"" help:"List migrations and whether each is applied."`
	Roles  migrateRolesCmd  `cmd:"" help:"Create the least-privilege PostgreSQL roles (ingest, relay, projector, reader)."`
}

type migrateUpCmd struct{}

func (migrateUpCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-migrate", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	applied, err := db.Migrate(ctx)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Println("schema is up to date")
	}
	for _, v := range applied {
		fmt.Printf("applied %05d\n", v)
	}
	return nil
}

type migrateFreshCmd struct {
	Yes bool `help:"Confirm dropping all data." env:"ARTIFACTSTORE_MIGRATE_FRESH_YES"`
}

func (c migrateFreshCmd) Run(ctx context.Context, g *globals) error {
	if !c.Yes {
		return fmt.Errorf("migrate fresh drops the log and every view: pass --yes to confirm")
	}
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-migrate", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Fresh(ctx); err != nil {
		return err
	}
	id, err := db.LogID(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("schema recreated; new log id %s\n", id)
	return nil
}

type migrateStatusCmd struct {
	JSON bool `env:"ARTIFACTSTORE_JSON" help:"Print JSON."`
}

func (c migrateStatusCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-migrate", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := db.MigrationStatus(ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(os.Stdout).Encode(st)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VERSION\tNAME\tAPPLIED")
	for _, s := range st {
		fmt.Fprintf(w, "%05d\t%s\t%v\n", s.Version, s.Name, s.Applied)
	}
	return w.Flush()
}

type migrateRolesCmd struct {
	Prefix string `default:"artifactstore" env:"ARTIFACTSTORE_ROLE_PREFIX" help:"Role name prefix: creates <prefix>_ingest, _relay, _projector, _reader."`
}

func (c migrateRolesCmd) Run(ctx context.Context, g *globals) error {
	db, err := openDB(ctx, g.databaseURL(), "artifactstore-migrate", g.log)
	if err != nil {
		return err
	}
	defer db.Close()
	pg, ok := db.(*postgres.DB)
	if !ok {
		return fmt.Errorf("migrate roles needs PostgreSQL (--database-url postgres://...)")
	}
	r, err := pg.CreateRoles(ctx, c.Prefix)
	if err != nil {
		return err
	}
	fmt.Printf("roles ready: %s (append, decide, query), %s (read the log), %s (write the views), %s (read only)\n",
		r.Ingest, r.Relay, r.Projector, r.Reader)
	fmt.Println("grant them to the login roles the services use, e.g. GRANT " + r.Ingest + " TO ingest_svc;")
	return nil
}
