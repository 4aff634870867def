package ingest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestBulkMatchesRowByRow runs one script of command-side decisions through
// the dialect's own bulkTx and through the row-by-row adapter, on two fresh
// logs, and requires the same answers.
func TestBulkMatchesRowByRow(t *testing.T) {
	t.Parallel()
	for name, db := range map[string]store.DB{"postgres": testenv.Postgres(t), "sqlite": testenv.SQLite(t)} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			if name == "postgres" {
				require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
					_, ok := tx.(bulkTx)
					require.True(t, ok, "store/postgres implements bulkTx")
					return nil
				}))
			}
			own := script(t, db, bulk)
			adapted := script(t, otherLog(t, name), func(tx store.Tx) bulkTx { return rowByRow{tx} })
			require.Equal(t, adapted, own)
		})
	}
}

func otherLog(t *testing.T, name string) store.DB {
	if name == "postgres" {
		return testenv.Postgres(t)
	}
	return testenv.SQLite(t)
}

func script(t *testing.T, db store.DB, wrap func(store.Tx) bulkTx) []any {
	ctx := context.Background()
	var out []any
	step := func(fn func(tx bulkTx) []any) {
		require.NoError(t, db.InTx(ctx, func(stx store.Tx) error {
			out = append(out, fn(wrap(stx))...)
			return nil
		}))
	}
	must := func(v ...any) []any {
		if err, _ := v[len(v)-1].(error); err != nil {
			t.Fatal(err)
		}
		return v[:len(v)-1]
	}
	step(func(tx bulkTx) []any {
		var r []any
		r = append(r, must(tx.ClaimCommands(ctx, []string{"a", "b", "c"}))...)
		r = append(r, must(tx.ClaimPackages(ctx, []string{"p1", "p2", "p3"}, []string{"n", "n", "m"}, []string{"1", "1", "1"}))...)
		r = append(r, must(tx.FinalizePackages(ctx, []string{"p1", "p1", "p2", "p9"}))...)
		r = append(r, must(tx.ReleaseCommands(ctx, []string{"c"})))
		r = append(r, must(tx.CompleteCommands(ctx, []string{"a", "b"}, []int64{1, 2}, [][]byte{[]byte("ra"), []byte("rb")}))...)
		return r
	})
	step(func(tx bulkTx) []any {
		var r []any
		r = append(r, must(tx.ClaimCommands(ctx, []string{"a", "c", "d"}))...)
		r = append(r, must(tx.CommandReplies(ctx, []string{"a", "x"}))...)
		r = append(r, must(tx.ClaimPackages(ctx, []string{"p4", "p5"}, []string{"n", "k"}, []string{"1", "2"}))...)
		r = append(r, must(tx.FinalizePackages(ctx, []string{"p1", "p3", "p5"}))...)
		return r
	})
	return out
}
