package projector

import (
	"context"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// BenchmarkRebuild measures `projection rebuild` of the registry over a
// log of ARTIFACTSTORE_BENCH_REBUILD_EVENTS events (1,000,000: two thirds
// created, one third finalized), in events per second from start to the
// switch, against the raw baseline measured in the same run and
// interleaved with it: each event's resulting rows upserted into tables
// like the live ones (indexed, logged), 1,000 events per transaction,
// every statement of a transaction sent in one pgx batch. Medians of
// storetest.Rounds rounds; x_raw is the ratio.
func BenchmarkRebuild(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("ARTIFACTSTORE_BENCH_REBUILD_EVENTS")); err == nil && v > 0 {
		n = v
	}
	e := setup(b)
	ctx := context.Background()
	packages := (n*2 + 2) / 3
	start := time.Now()
	for from := 0; from < packages; from += 20_000 {
		appendPackages(b, e.db, from, min(from+20_000, packages))
	}
	head, err := e.db.Head(ctx)
	require.NoError(b, err)
	b.Logf("log of %d events appended in %s", head, time.Since(start).Round(time.Second))
	rows := eventRows(b, e.db)
	raw := rawUpserter(b, e)

	var got, base []float64
	for b.Loop() {
		for range storetest.Rounds {
			start := time.Now()
			_, err := Rebuild(ctx, e.db, e.js, RebuildConfig{})
			require.NoError(b, err)
			got = append(got, float64(head)/time.Since(start).Seconds())
			start = time.Now()
			require.NoError(b, raw(ctx, rows))
			base = append(base, float64(head)/time.Since(start).Seconds())
			b.Logf("round: rebuild %.0f events/s, raw %.0f events/s", got[len(got)-1], base[len(base)-1])
		}
	}
	b.ReportMetric(median(got), "events/s")
	b.ReportMetric(median(base), "raw_events/s")
	b.ReportMetric(median(got)/median(base), "x_raw")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// viewRows are the rows one event leaves behind.
type viewRows struct {
	p store.Package
	r store.Retention
}

// eventRows applies the log through the registry handlers in memory and
// returns each event's resulting rows.
func eventRows(b *testing.B, db store.DB) []viewRows {
	ctx := context.Background()
	var out []viewRows
	err := db.InTx(ctx, func(tx store.Tx) error {
		buf := store.NewBufferedViews(tx, true)
		for ev, err := range store.All(ctx, db, 0, 0) {
			if err != nil {
				return err
			}
			if err := (store.RegistryViews{}).Apply(ctx, buf, ev); err != nil {
				return err
			}
			p, _ := buf.GetPackage(ctx, ev.SubjectID)
			r, _ := buf.GetRetention(ctx, ev.SubjectID)
			out = append(out, viewRows{p, r})
		}
		return rollback{}
	})
	require.ErrorIs(b, err, rollback{})
	return out
}

// rawUpserter creates tables like the live views (LIKE ... INCLUDING ALL:
// the same columns, constraints and indexes) and returns the baseline:
// emptied, then each event's rows upserted, 1,000 events per transaction
// in one batch.
func rawUpserter(b *testing.B, e *env) func(context.Context, []viewRows) error {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, e.pg.URL)
	require.NoError(b, err)
	b.Cleanup(pool.Close)
	t := func(name string) string { return pgx.Identifier{e.pg.Schema, name}.Sanitize() }
	_, err = pool.Exec(ctx, `CREATE TABLE `+t("raw_packages")+` (LIKE `+t("artifact_packages")+` INCLUDING ALL);
		CREATE TABLE `+t("raw_retention")+` (LIKE `+t("retention_state")+` INCLUDING ALL)`)
	require.NoError(b, err)
	upsertP := `INSERT INTO ` + t("raw_packages") + ` VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
		ON CONFLICT (package_id) DO UPDATE SET status = excluded.status, finalized_by = excluded.finalized_by,
		finalized_at = excluded.finalized_at, manifest_digest = excluded.manifest_digest, last_sequence = excluded.last_sequence`
	upsertR := `INSERT INTO ` + t("raw_retention") + ` VALUES ($1,$2,$3,$4,$5)
		ON CONFLICT (package_id) DO UPDATE SET expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`
	return func(ctx context.Context, rows []viewRows) error {
		if _, err := pool.Exec(ctx, "TRUNCATE "+t("raw_packages")+", "+t("raw_retention")); err != nil {
			return err
		}
		for chunk := range slices.Chunk(rows, 1000) {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				batch := &pgx.Batch{}
				for _, w := range chunk {
					p, r := w.p, w.r
					var d []byte
					if p.ManifestDigest != nil {
						d = p.ManifestDigest[:]
					}
					var by *string
					if p.FinalizedBy != "" {
						by = &p.FinalizedBy
					}
					batch.Queue(upsertP, p.ID, p.Name, p.Version, p.Status, p.CreatedBy, p.CreatedAt, by, p.FinalizedAt, d,
						p.CreatedSequence, p.LastSequence)
					batch.Queue(upsertR, r.PackageID, r.Policy, int32(r.KeepDays), r.ExpiresAt, r.LastSequence)
				}
				return tx.SendBatch(ctx, batch).Close()
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
}
