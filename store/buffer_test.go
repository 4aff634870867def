package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

func TestBufferedViewsReadsThroughAfterFlush(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.SQLite(t)
	err := db.InTx(ctx, func(tx store.Tx) error {
		require.NoError(t, tx.ResetViews(ctx))
		b := store.NewBufferedViews(tx, true)
		_, err := b.GetPackage(ctx, "p1")
		require.ErrorIs(t, err, store.ErrNotFound, "after a reset, a miss needs no read")
		require.NoError(t, b.PutPackage(ctx, store.Package{ID: "p1", Name: "n", Version: "1", Status: store.StatusOpen, CreatedBy: "a"}))
		require.NoError(t, b.PutRetention(ctx, store.Retention{PackageID: "p1", Policy: store.RetentionKeepForever}))
		require.Equal(t, 2, b.Pending())
		_, err = tx.GetPackage(ctx, "p1")
		require.ErrorIs(t, err, store.ErrNotFound, "nothing written before Flush")
		require.NoError(t, b.Flush(ctx))
		require.Zero(t, b.Pending())
		p, err := tx.GetPackage(ctx, "p1")
		require.NoError(t, err)
		require.Equal(t, "n", p.Name)
		p, err = b.GetPackage(ctx, "p1")
		require.NoError(t, err, "a flushed row is read back from the transaction")
		require.Equal(t, "n", p.Name)
		r, err := b.GetRetention(ctx, "p1")
		require.NoError(t, err)
		require.Equal(t, store.RetentionKeepForever, r.Policy)
		_, err = b.GetPackage(ctx, "p2")
		require.ErrorIs(t, err, store.ErrNotFound)
		return nil
	})
	require.NoError(t, err)
}
