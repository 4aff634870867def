package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
)

// testCommandBatcher holds a dialect's store.CommandBatcher to its
// contract, where the dialect has one (PostgreSQL). Without it the suite
// says so: ingest then adapts the single-row methods that
// CommandSidePrimitives covers.
func testCommandBatcher(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	step := func(fn func(tx store.CommandBatcher)) bool {
		t.Helper()
		implemented := false
		require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
			b, ok := tx.(store.CommandBatcher)
			if implemented = ok; ok {
				fn(b)
			} else {
				t.Logf("%T does not implement store.CommandBatcher: ingest adapts its single-row methods, which CommandSidePrimitives covers", tx)
			}
			return nil
		}))
		return implemented
	}
	fp := func(s string) []byte { d := store.DigestOf([]byte(s)); return d[:] }
	replyOf := func(e store.Event) ([]byte, error) {
		return fmt.Appendf(nil, `{"sequence":%d,"subject":%q}`, e.Sequence, e.SubjectID), nil
	}

	if !step(func(tx store.CommandBatcher) {
		claimed, created, finalized, exists, err := tx.ClaimAll(ctx, []string{"a", "b", "c"}, [][]byte{fp("a"), fp("b"), fp("c")},
			[]string{"p1", "p2", "p3"}, []string{"n", "n", "m"}, []string{"1", "1", "1"}, []string{"p1", "p1", "p2", "p9"})
		require.NoError(t, err)
		require.Equal(t, []bool{true, true, true}, claimed)
		require.Equal(t, []bool{true, false, true}, created, "of a (name, version) given twice the first wins")
		require.Equal(t, []bool{true, false, false, false}, finalized, "the creates' packages are known to the finalizes; an id given twice finalizes once")
		require.Equal(t, []bool{true, true, false, false}, exists)
		out, err := tx.AppendCommands(ctx, []string{"c"},
			[]store.Event{Created(t, "p1", "n", "1", "x"), Created(t, "p3", "m", "1", "x"), Finalized(t, "p1", "x", store.DigestOf(nil))},
			[]string{"a", "", "b"}, replyOf)
		require.NoError(t, err)
		require.Len(t, out, 3)
		for i, e := range out {
			require.Equal(t, int64(i+1), e.Sequence)
		}
	}) {
		return
	}
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), head, "AppendCommands' events are committed")

	step(func(tx store.CommandBatcher) {
		claimed, created, finalized, exists, err := tx.ClaimAll(ctx, []string{"a", "c", "d"}, [][]byte{fp("other a"), fp("c"), fp("d")},
			[]string{"p4", "p5"}, []string{"n", "k"}, []string{"1", "2"}, []string{"p1", "p3", "p5"})
		require.NoError(t, err)
		require.Equal(t, []bool{false, true, true}, claimed, "a is complete; c was released")
		require.Equal(t, []bool{false, true}, created, "(n, 1) belongs to p1")
		require.Equal(t, []bool{false, true, true}, finalized, "p1 was finalized before")
		require.Equal(t, []bool{true, true, true}, exists)
		records, err := tx.CommandReplies(ctx, []string{"a", "b", "x"}, replyOf)
		require.NoError(t, err)
		require.Equal(t, map[string]store.CommandRecord{
			"a": {Reply: []byte(`{"sequence":1,"subject":"p1"}`), Fingerprint: fp("a")},
			"b": {Reply: []byte(`{"sequence":3,"subject":"p1"}`), Fingerprint: fp("b")},
		}, records, "completed commands keep their first fingerprint and reply; x is unknown")
		out, err := tx.AppendCommands(ctx, []string{"d"}, nil, nil, replyOf)
		require.NoError(t, err)
		require.Empty(t, out)
	})
	step(func(tx store.CommandBatcher) {
		claimed, _, _, _, err := tx.ClaimAll(ctx, []string{"c", "d"}, [][]byte{fp("c"), fp("d")}, nil, nil, nil, nil)
		require.NoError(t, err)
		require.Equal(t, []bool{false, true}, claimed, "c's claim was kept, d's released")
	})
	events, err := db.Fetch(context.Background(), 0, 10)
	require.NoError(t, err)
	require.Len(t, events, 3, "a batch without events appends nothing")
}
