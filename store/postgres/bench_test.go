package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// baseline creates plain tables shaped like events and the views in their
// own schema and returns multi-row INSERT / upsert functions over a pool of
// 8 connections.
func baseline(b *testing.B) storetest.Baseline {
	ctx := context.Background()
	url, schema := testenv.Schema(b)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 8
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+schema+`;
		CREATE TABLE raw_events (sequence bigint PRIMARY KEY, event_type text, subject_kind text, subject_id text,
			actor text, payload bytea, payload_digest bytea, created_at timestamptz DEFAULT now());
		CREATE TABLE raw_packages (package_id text PRIMARY KEY, name text, version text, status text, created_by text,
			created_at timestamptz, finalized_by text, finalized_at timestamptz, manifest_digest bytea,
			created_sequence bigint, last_sequence bigint);
		CREATE INDEX ON raw_packages (name, package_id);
		CREATE INDEX ON raw_packages (status, package_id);
		CREATE TABLE raw_retention (package_id text PRIMARY KEY, policy text, keep_days int, expires_at timestamptz,
			last_sequence bigint)`); err != nil {
		b.Fatal(err)
	}
	var seq int64
	var mu = make(chan struct{}, 1)
	return storetest.Baseline{
		Insert: func(ctx context.Context, rows []store.Event) error {
			mu <- struct{}{}
			first := seq + 1
			seq += int64(len(rows))
			<-mu
			// One multi-row INSERT ... VALUES statement, as a hand-written
			// writer would send it.
			q := "INSERT INTO raw_events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest) VALUES "
			args := make([]any, 0, 7*len(rows))
			for i, e := range rows {
				if i > 0 {
					q += ","
				}
				n := len(args)
				q += "($" + itoa(n+1) + ",$" + itoa(n+2) + ",$" + itoa(n+3) + ",$" + itoa(n+4) + ",$" + itoa(n+5) + ",$" + itoa(n+6) + ",$" + itoa(n+7) + ")"
				args = append(args, first+int64(i), e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload, e.PayloadDigest[:])
			}
			_, err := pool.Exec(ctx, q, args...)
			return err
		},
		Upsert: func(ctx context.Context, ps []store.Package, rs []store.Retention) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				for i := 0; i < len(ps); i += 1000 {
					chunk := ps[i:min(i+1000, len(ps))]
					batch := &pgx.Batch{}
					for _, p := range chunk {
						var d []byte
						if p.ManifestDigest != nil {
							d = p.ManifestDigest[:]
						}
						batch.Queue(`INSERT INTO raw_packages VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
							ON CONFLICT (package_id) DO UPDATE SET status = excluded.status, finalized_at = excluded.finalized_at,
							manifest_digest = excluded.manifest_digest, last_sequence = excluded.last_sequence`,
							p.ID, p.Name, p.Version, p.Status, p.CreatedBy, p.CreatedAt, p.FinalizedBy, p.FinalizedAt, d,
							p.CreatedSequence, p.LastSequence)
					}
					for _, r := range rs[i:min(i+1000, len(rs))] {
						batch.Queue(`INSERT INTO raw_retention VALUES ($1,$2,$3,$4,$5)
							ON CONFLICT (package_id) DO UPDATE SET expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`,
							r.PackageID, r.Policy, r.KeepDays, r.ExpiresAt, r.LastSequence)
					}
					if err := tx.SendBatch(ctx, batch).Close(); err != nil {
						return err
					}
				}
				return nil
			})
		},
		Reset: func(ctx context.Context) error {
			// The view tables are emptied with DELETE, as the store's view reset does,
			// so both sides write into tables in the same state (dead rows included);
			// the log table starts fresh, as each append round's store does.
			_, err := pool.Exec(ctx, "TRUNCATE raw_events; DELETE FROM raw_packages; DELETE FROM raw_retention")
			return err
		},
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func BenchmarkAppend(b *testing.B) {
	base := baseline(b)
	storetest.BenchAppend(b, func(b *testing.B) store.DB { return testenv.Postgres(b) }, base,
		map[int]int{1: 2000, 100: 20000, 1000: 40000})
}

func BenchmarkReplay100k(b *testing.B) {
	storetest.BenchReplay(b, testenv.Postgres(b), baseline(b), 100_000)
}

func BenchmarkFetch100k(b *testing.B) {
	storetest.BenchFetch(b, testenv.Postgres(b), 100_000)
}

// BenchmarkChainCost measures what the hash chain costs appends: the same
// events appended with it (Append; and ClaimAll then AppendCommands, as
// ingest commits a batch of creates with its 2 committers) and without it
// (the statements an append needs when it has no digest to compute,
// export_test.go), in 21 interleaved rounds on one log; ratio = with /
// without (medians).
func BenchmarkChainCost(b *testing.B) {
	for i, c := range []struct {
		name                string
		perTx, writers, txs int
		commands            bool
	}{
		{"append/per_tx=1/writers=1", 1, 1, 300, false},
		{"append/per_tx=1/writers=8", 1, 8, 600, false},
		{"append/per_tx=100/writers=1", 100, 1, 40, false},
		{"append/per_tx=100/writers=8", 100, 8, 80, false},
		{"append/per_tx=1000/writers=1", 1000, 1, 6, false},
		{"commands/per_tx=20/writers=2", 20, 2, 150, true},
		{"commands/per_tx=100/writers=2", 100, 2, 60, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			db := testenv.Postgres(b)
			with, without := chainedAppend(db), unchainedAppend(db)
			if c.commands {
				with, without = chainedCommands(db), unchainedCommands(db)
			}
			storetest.BenchVersus(b, 21, c.writers, c.txs, c.perTx, i*10_000_000, with, without)
			hits, misses := db.HeadGuesses()
			b.ReportMetric(float64(misses)/float64(max(hits+misses, 1)), "guesses_missed")
		})
	}
}

func chainedAppend(db store.DB) storetest.AppendFunc {
	return func(ctx context.Context, rows []store.Event) error {
		return db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, rows...); return err })
	}
}

func unchainedAppend(db store.DB) storetest.AppendFunc {
	return func(ctx context.Context, rows []store.Event) error {
		return db.InTx(ctx, func(tx store.Tx) error { _, err := postgres.AppendUnchained(ctx, tx, rows); return err })
	}
}

// claim claims rows as creates with command ids, as ingest does before
// appending: with ClaimAll, or as without the chain (chained false).
func claim(ctx context.Context, tx store.Tx, rows []store.Event, chained bool) ([]string, error) {
	ids, fps, pkgs, versions := make([]string, len(rows)), make([][]byte, len(rows)), make([]string, len(rows)), make([]string, len(rows))
	for i, e := range rows {
		ids[i], fps[i], pkgs[i], versions[i] = "cmd-"+e.SubjectID, e.PayloadDigest[:], e.SubjectID, "1"
	}
	if !chained {
		return ids, postgres.ClaimAllUnlocked(ctx, tx, ids, fps, pkgs, pkgs, versions, nil)
	}
	_, _, _, _, err := tx.(store.CommandBatcher).ClaimAll(ctx, ids, fps, pkgs, pkgs, versions, nil)
	return ids, err
}

func chainedCommands(db store.DB) storetest.AppendFunc {
	return func(ctx context.Context, rows []store.Event) error {
		return db.InTx(ctx, func(stx store.Tx) error {
			ids, err := claim(ctx, stx, rows, true)
			if err != nil {
				return err
			}
			_, err = stx.(store.CommandBatcher).AppendCommands(ctx, nil, rows, ids, nil)
			return err
		})
	}
}

func unchainedCommands(db store.DB) storetest.AppendFunc {
	return func(ctx context.Context, rows []store.Event) error {
		return db.InTx(ctx, func(stx store.Tx) error {
			ids, err := claim(ctx, stx, rows, false)
			if err != nil {
				return err
			}
			_, err = postgres.AppendCommandsUnchained(ctx, stx, rows, ids)
			return err
		})
	}
}

func BenchmarkVerify100k(b *testing.B) {
	storetest.BenchVerify(b, testenv.Postgres(b), 100_000)
}

// TestUnchainedBaselineReturnsWhatItAppends keeps BenchmarkChainCost's
// baseline honest: it appends and returns the events as Append would
// (without chain digests).
func TestUnchainedBaselineReturnsWhatItAppends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	storetest.Append(t, db, storetest.Created(t, storetest.PackageID(0), "b", "0", "a"))
	events := []store.Event{storetest.Created(t, storetest.PackageID(1), "b", "1", "a"), storetest.Created(t, storetest.PackageID(2), "b", "2", "a")}
	var out []store.Event
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		var err error
		out, err = postgres.AppendUnchained(ctx, tx, events)
		return err
	}))
	got, err := db.Fetch(ctx, 1, 10)
	require.NoError(t, err)
	require.Equal(t, out, got)
	require.Equal(t, []int64{2, 3}, []int64{got[0].Sequence, got[1].Sequence})
}
