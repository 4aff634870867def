package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
)

func testPartitions(t *testing.T, db store.DB) {
	n, err := db.Partitions(ctxT(t))
	require.NoError(t, err)
	require.Equal(t, 16, n, "a new log has the default partition count")
}

// testLeases checks that a partition is leased to one worker at a time,
// that only the holder renews it and that anybody takes it once expired.
func testLeases(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	const long, short = time.Minute, 300 * time.Millisecond

	members, err := db.Heartbeat(ctx, "p1", "a", long)
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, members)
	members, err = db.Heartbeat(ctx, "p1", "b", short)
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, members)
	other, err := db.Heartbeat(ctx, "p2", "c", long)
	require.NoError(t, err)
	require.Equal(t, []string{"c"}, other, "members are per projection")

	got, err := db.ClaimLeases(ctx, "p1", "a", []int{0, 1, 2}, long)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, got)
	got, err = db.ClaimLeases(ctx, "p1", "b", []int{2, 3}, short)
	require.NoError(t, err)
	require.Equal(t, []int{3}, got, "a held, unexpired lease is not taken")
	got, err = db.ClaimLeases(ctx, "p1", "a", []int{0, 1, 2}, long)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2}, got, "the holder renews")

	require.NoError(t, db.ReleaseLeases(ctx, "p1", "a", []int{2}))
	got, err = db.ClaimLeases(ctx, "p1", "b", []int{2, 3}, short)
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, got, "a released lease is free")
	holders, err := db.LeaseHolders(ctx, "p1")
	require.NoError(t, err)
	require.Equal(t, map[int]string{0: "a", 1: "a", 2: "b", 3: "b"}, holders)

	// b stops renewing: its member row and leases expire and a takes them.
	require.Eventually(t, func() bool {
		got, err = db.ClaimLeases(ctx, "p1", "a", []int{0, 1, 2, 3}, long)
		return err == nil && len(got) == 4
	}, 10*time.Second, 50*time.Millisecond, "expired leases are taken")
	members, err = db.Heartbeat(ctx, "p1", "a", long)
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, members, "an expired member is not listed")

	require.NoError(t, db.Leave(ctx, "p1", "a"))
	holders, err = db.LeaseHolders(ctx, "p1")
	require.NoError(t, err)
	require.Empty(t, holders)
	got, err = db.ClaimLeases(ctx, "p1", "b", []int{0}, long)
	require.NoError(t, err)
	require.Equal(t, []int{0}, got, "leaving frees every lease")
}
