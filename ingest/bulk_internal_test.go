package ingest

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestBulkMatchesRowByRow runs one script of command-side decisions through
// the dialect's own store.CommandBatcher and through the row-by-row adapter, on two fresh
// logs, and requires the same answers.
func TestBulkMatchesRowByRow(t *testing.T) {
	t.Parallel()
	for name, db := range map[string]store.DB{"postgres": testenv.Postgres(t), "sqlite": testenv.SQLite(t)} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			if name == "postgres" {
				require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
					_, ok := tx.(store.CommandBatcher)
					require.True(t, ok, "store/postgres implements store.CommandBatcher")
					return nil
				}))
			}
			own := script(t, db, bulk)
			adapted := script(t, otherLog(t, name), func(tx store.Tx) store.CommandBatcher { return rowByRow{tx} })
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

func script(t *testing.T, db store.DB, wrap func(store.Tx) store.CommandBatcher) []any {
	ctx := context.Background()
	var out []any
	fps := func(ids ...string) [][]byte {
		out := make([][]byte, len(ids))
		for i, id := range ids {
			d := store.DigestOf([]byte(id))
			out[i] = d[:]
		}
		return out
	}
	step := func(fn func(tx store.CommandBatcher) []any) {
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
	event := func(id string) store.Event {
		e, err := store.NewEvent(store.TypePackageFinalized, store.SubjectKindPackage, id, "tester", []byte(`{}`))
		require.NoError(t, err)
		return e
	}
	sequences := func(events []store.Event, err error) []any {
		require.NoError(t, err)
		var r []any
		for _, e := range events {
			r = append(r, e.Sequence, e.SubjectID)
		}
		return r
	}
	step(func(tx store.CommandBatcher) []any {
		r := must(tx.ClaimAll(ctx, []string{"a", "b", "c"}, fps("a", "b", "c"), []string{"p1", "p2", "p3"}, []string{"n", "n", "m"}, []string{"1", "1", "1"},
			[]string{"p1", "p1", "p2", "p9"}))
		return append(r, sequences(tx.AppendCommands(ctx, []string{"c"}, []store.Event{event("p1"), event("p3"), event("p1")}, []string{"a", "", "b"}, replyOf))...)
	})
	step(func(tx store.CommandBatcher) []any {
		r := must(tx.ClaimAll(ctx, []string{"a", "c", "d"}, fps("other a", "c2", "d"), []string{"p4", "p5"}, []string{"n", "k"}, []string{"1", "2"}, []string{"p1", "p3", "p5"}))
		records := must(tx.CommandReplies(ctx, []string{"a", "b", "x"}, replyOf))[0].(map[string]store.CommandRecord)
		require.Len(t, records, 2, "a and b are complete; x is unknown")
		for _, id := range slices.Sorted(maps.Keys(records)) {
			var reply CommandReply
			require.NoError(t, json.Unmarshal(records[id].Reply, &reply))
			require.Equal(t, fps(id)[0], records[id].Fingerprint, "%s keeps the fingerprint of its first claim", id)
			r = append(r, id, reply.Sequence, reply.PackageID, reply.EventType)
		}
		return append(r, sequences(tx.AppendCommands(ctx, []string{"d"}, nil, nil, replyOf))...)
	})
	step(func(tx store.CommandBatcher) []any {
		// c was released by the first step and claimed again (and kept)
		// by the second; d was released by the second.
		return must(tx.ClaimAll(ctx, []string{"c", "d"}, fps("c", "d"), nil, nil, nil, nil))
	})
	return out
}
