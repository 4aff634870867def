package projector

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestStoreSupport covers what the projector added to both dialects: log
// keys, parked records and replay over partition checkpoints.
func TestStoreSupport(t *testing.T) {
	t.Parallel()
	for name, open := range map[string]func(testing.TB) store.DB{
		"postgres": func(t testing.TB) store.DB { return testenv.Postgres(t) },
		"sqlite":   func(t testing.TB) store.DB { return testenv.SQLite(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := open(t)
			appendPackages(t, db, 0, 20) // 30 events
			all, err := db.Fetch(ctx, 0, 100)
			require.NoError(t, err)

			keys, err := db.FetchKeys(ctx, 5, 12, 100)
			require.NoError(t, err)
			require.Len(t, keys, 7)
			for i, k := range keys {
				e := all[5+i]
				require.Equal(t, store.EventKey{Sequence: e.Sequence, SubjectID: e.SubjectID, PayloadDigest: e.PayloadDigest}, k)
			}
			keys, err = db.FetchKeys(ctx, 0, 30, 4)
			require.NoError(t, err)
			require.Len(t, keys, 4)

			rec := store.Parked{Projection: "registry", Partition: 2, Sequence: 9, EventType: store.TypePackageFinalized,
				Reason: store.ParkedPoison, Error: "boom", Worker: "w", Attempts: 3, ParkedAt: time.Now().UTC().Truncate(time.Microsecond)}
			require.NoError(t, db.InTx(ctx, func(tx store.Tx) error { return tx.Park(ctx, rec) }))
			rec.Attempts, rec.Reason = 4, store.ParkedGap
			require.NoError(t, db.InTx(ctx, func(tx store.Tx) error { return tx.Park(ctx, rec) }))
			parked, err := db.Parked(ctx)
			require.NoError(t, err)
			require.Equal(t, []store.Parked{rec}, parked)
			require.NoError(t, db.InTx(ctx, func(tx store.Tx) error { return tx.Unpark(ctx, "registry", 2) }))
			parked, err = db.Parked(ctx)
			require.NoError(t, err)
			require.Empty(t, parked)

			// Replay writes every partition's checkpoint.
			const n = 3
			h1, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: n})
			require.NoError(t, err)
			cps, err := db.Checkpoints(ctx)
			require.NoError(t, err)
			require.Len(t, cps, n)
			for _, c := range cps {
				require.Equal(t, h1, c.Sequence)
			}
			// Partition 1 runs ahead (as a projector would), then a replay
			// without reset applies the other partitions only.
			appendPackages(t, db, 20, 40)
			more, err := db.Fetch(ctx, h1, 100)
			require.NoError(t, err)
			h2 := more[len(more)-1].Sequence
			require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
				for _, e := range more {
					if Partition(e.SubjectID, n) == 1 {
						if err := (store.RegistryViews{}).Apply(ctx, tx, e); err != nil {
							return err
						}
					}
				}
				return tx.AdvanceCheckpoint(ctx, "registry", 1, h1, h2)
			}))
			_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{})
			require.Error(t, err, "differing partition checkpoints need PartitionOf")
			got, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{PartitionOf: Partitioner(n)})
			require.NoError(t, err)
			require.Equal(t, h2, got)
			incremental, err := db.DumpViews(ctx)
			require.NoError(t, err)
			_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true})
			require.NoError(t, err)
			full, err := db.DumpViews(ctx)
			require.NoError(t, err)
			require.Equal(t, full, incremental)
			cps, err = db.Checkpoints(ctx)
			require.NoError(t, err)
			require.Len(t, cps, n, "a replay keeps the projection's partition count")
		})
	}
}
