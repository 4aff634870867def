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

// TestBufferedViewsPreload: preloaded rows and known-absent ids are
// answered from memory (the database holds something else for both here,
// so a read falling through would show), rows written through the buffer
// win over a later preload, and ids not preloaded still read through.
func TestBufferedViewsPreload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.SQLite(t)
	err := db.InTx(ctx, func(tx store.Tx) error {
		for _, id := range []string{"p1", "p2", "p3"} {
			require.NoError(t, tx.PutPackage(ctx, store.Package{ID: id, Name: "in-db", Version: "1", Status: store.StatusOpen, CreatedBy: "a"}))
		}
		b := store.NewBufferedViews(tx, false)
		b.Preload([]string{"p1", "p2"},
			map[string]store.Package{"p1": {ID: "p1", Name: "preloaded", Version: "1", Status: store.StatusOpen, CreatedBy: "a"}},
			map[string]store.Retention{"p1": {PackageID: "p1", Policy: store.RetentionKeepForever}})
		p, err := b.GetPackage(ctx, "p1")
		require.NoError(t, err)
		require.Equal(t, "preloaded", p.Name, "a preloaded row needs no read")
		r, err := b.GetRetention(ctx, "p1")
		require.NoError(t, err)
		require.Equal(t, store.RetentionKeepForever, r.Policy)
		_, err = b.GetPackage(ctx, "p2")
		require.ErrorIs(t, err, store.ErrNotFound, "an id preloaded without a row is known absent")
		_, err = b.GetRetention(ctx, "p2")
		require.ErrorIs(t, err, store.ErrNotFound)
		p, err = b.GetPackage(ctx, "p3")
		require.NoError(t, err)
		require.Equal(t, "in-db", p.Name, "ids not preloaded read through")

		require.NoError(t, b.PutPackage(ctx, store.Package{ID: "p2", Name: "written", Version: "1", Status: store.StatusOpen, CreatedBy: "a"}))
		b.Preload([]string{"p2"}, nil, nil)
		p, err = b.GetPackage(ctx, "p2")
		require.NoError(t, err)
		require.Equal(t, "written", p.Name, "a write through the buffer wins over a later preload")
		require.NoError(t, b.Flush(ctx))
		p, err = tx.GetPackage(ctx, "p2")
		require.NoError(t, err)
		require.Equal(t, "written", p.Name)
		return nil
	})
	require.NoError(t, err)
}
