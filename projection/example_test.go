package projection_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc/pool"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/sqlite"
)

// A downstream projection counting finalized packages per actor, run
// against an artifactstore whose events stream it reads (here everything
// runs in-process: NATS, a SQLite log and its relay; the team's tables are
// in a PostgreSQL schema of their own).
func ExampleRunner() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, teamDB, publish, stop := startWorld(ctx)
	defer stop()

	p := projection.Projection{
		Name:       "finalized_by_actor",
		Migrations: []string{`CREATE TABLE finalized_by_actor (actor text PRIMARY KEY, count bigint NOT NULL)`},
		Tables:     []string{"finalized_by_actor"},
		Handlers: map[string]projection.Handler{
			store.TypePackageFinalized: func(ctx context.Context, tx pgx.Tx, e projection.Event) error {
				_, err := tx.Exec(ctx, `INSERT INTO finalized_by_actor VALUES ($1, 1)
					ON CONFLICT (actor) DO UPDATE SET count = finalized_by_actor.count + 1`, e.Actor)
				return err
			},
		},
		Serialize: true, // one row counts many packages
	}
	js, _ := jetstream.New(nc)
	r, err := projection.New(teamDB, js, p, projection.Config{Partitions: 16})
	if err != nil {
		panic(err)
	}
	runners := pool.New().WithContext(ctx)
	runners.Go(r.Run)

	publish("alice", "bob", "alice") // six events: created and finalized each
	for {
		st, err := projection.Inspect(ctx, teamDB, js, "", p.Name)
		if err == nil && st.StreamLast == 6 && st.Lag == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rows, _ := teamDB.Query(ctx, `SELECT actor, count FROM finalized_by_actor ORDER BY actor`)
	for rows.Next() {
		var actor string
		var n int
		_ = rows.Scan(&actor, &n)
		fmt.Println(actor, n)
	}
	cancel()
	_ = runners.Wait()
	// Output:
	// alice 2
	// bob 1
}

// startWorld starts an in-process NATS server, a SQLite log and its relay,
// and a PostgreSQL schema for the team. publish appends a package created
// and finalized per actor given.
func startWorld(ctx context.Context) (nc *nats.Conn, team *pgxpool.Pool, publish func(actors ...string), stop func()) {
	dir, _ := os.MkdirTemp("", "projection-example-")
	ns, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		panic("nats-server did not start")
	}
	log, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "log.db")})
	if err != nil {
		panic(err)
	}
	if _, err := log.Migrate(ctx); err != nil {
		panic(err)
	}
	nc, _ = nats.Connect(ns.ClientURL())
	js, _ := jetstream.New(nc)
	rl, _ := relay.New(log, js, relay.Config{})
	rctx, stopRelay := context.WithCancel(ctx)
	relays := pool.New().WithContext(rctx)
	relays.Go(rl.Run)

	url := os.Getenv(testenv.EnvDatabaseURL)
	if url == "" {
		url = testenv.DefaultDatabaseURL
	}
	schema := testenv.Name("example")
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		panic(err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		panic(err)
	}
	cfg, _ := pgxpool.ParseConfig(url)
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	team, _ = pgxpool.NewWithConfig(ctx, cfg)

	n := 0
	publish = func(actors ...string) {
		for _, actor := range actors {
			n++
			id := fmt.Sprintf("pkg-%d", n)
			created, _ := json.Marshal(store.PackageCreated{PackageID: id, Name: "web", Version: fmt.Sprintf("1.%d", n)})
			finalized, _ := json.Marshal(store.PackageFinalized{PackageID: id})
			c, _ := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "ci", created)
			f, _ := store.NewEvent(store.TypePackageFinalized, store.SubjectKindPackage, id, actor, finalized)
			if err := log.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, c, f); return err }); err != nil {
				panic(err)
			}
		}
	}
	stop = func() {
		team.Close()
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close(context.Background())
		stopRelay()
		_ = relays.Wait()
		nc.Close()
		log.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
		os.RemoveAll(dir)
	}
	return nc, team, publish, stop
}
