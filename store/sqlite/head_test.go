package sqlite_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestAppendsInOneTransaction: several appends in one transaction
// (log_head read once), one of them large enough for the prefix goroutine,
// one failing validation in the middle (the transaction goes on), then
// later transactions: gapless, created_at never decreasing, the chain and
// log_head right, the payloads intact.
func TestAppendsInOneTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.SQLite(t)
	id := 0
	next := func(p []byte) store.Event {
		id++
		return store.Event{Type: store.TypePackageCreated, SubjectKind: store.SubjectKindPackage, SubjectID: storetest.PackageID(id),
			Actor: "a", Payload: p, PayloadDigest: store.DigestOf(p)}
	}
	var want []store.Event
	batch := func(n int) []store.Event {
		var b []store.Event
		for i := range n {
			b = append(b, next([]byte{byte(i), 0, byte(i >> 8)}))
		}
		return b
	}
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		for _, b := range [][]store.Event{batch(1), batch(300), batch(2)} {
			if _, err := tx.Append(ctx, b...); err != nil {
				return err
			}
			want = append(want, b...)
		}
		bad := batch(300)
		bad[299].Actor = ""
		if _, err := tx.Append(ctx, bad...); err == nil {
			t.Error("an invalid event was appended")
		}
		b := batch(3)
		if _, err := tx.Append(ctx, b...); err != nil {
			return err
		}
		want = append(want, b...)
		return nil
	}))
	for range 3 {
		b := batch(2)
		storetest.Append(t, db, b...)
		want = append(want, b...)
	}
	got, err := db.Fetch(ctx, 0, 10_000)
	require.NoError(t, err)
	require.Len(t, got, len(want))
	for i, e := range got {
		require.Equal(t, int64(i+1), e.Sequence)
		require.True(t, bytes.Equal(want[i].Payload, e.Payload))
		require.Equal(t, want[i].SubjectID, e.SubjectID)
		if i > 0 {
			require.False(t, e.CreatedAt.Before(got[i-1].CreatedAt))
		}
	}
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	h, err := db.ChainHead(ctx)
	require.NoError(t, err)
	require.Equal(t, store.ChainHead{Sequence: int64(len(want)), Digest: got[len(got)-1].ChainDigest}, h)
}
