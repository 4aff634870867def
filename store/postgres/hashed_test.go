package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestFetchHashedMatchesFetch: what verify reads from the wire's bytes is
// what Fetch decodes — sequences, created_at and digests, whether each
// payload matches its digest, the chain prefixes — across pages, for
// multi-byte actors and payloads of many sizes, and a payload rewritten
// behind the log's back is seen as not matching.
func TestFetchHashedMatchesFetch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	for i := range 30 {
		var events []store.Event
		for j := range 100 {
			k := 100*i + j
			events = append(events, storetest.Created(t, storetest.PackageID(k), strings.Repeat("n", 1+k%300),
				fmt.Sprint(k), "actör-"+strings.Repeat("ü", k%7)))
		}
		storetest.Append(t, db, events...)
	}
	c := conn(t, url, schema)
	_, err := c.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER USER;
		UPDATE events SET payload = convert_to('{"tampered":true}', 'UTF8') WHERE sequence = 1234;
		ALTER TABLE events ENABLE TRIGGER USER`)
	require.NoError(t, err)
	for _, after := range []int64{0, 999, 2950} {
		want, err := db.Fetch(ctx, after, 1000)
		require.NoError(t, err)
		got, err := db.FetchHashed(ctx, after, 1000)
		require.NoError(t, err)
		require.Len(t, got.Events, len(want))
		for i, w := range want {
			g := got.Events[i]
			require.Equal(t, w.Sequence, g.Sequence)
			require.True(t, w.CreatedAt.Equal(g.CreatedAt), "created_at of %d: %v, %v", w.Sequence, w.CreatedAt, g.CreatedAt)
			require.Equal(t, w.PayloadDigest, g.PayloadDigest)
			require.Equal(t, w.ChainDigest, g.ChainDigest)
			require.Equal(t, w.Sequence != 1234, got.PayloadOK[i], "payload of %d", w.Sequence)
			require.Equal(t, store.PrepareChain(want[i:i+1]), got.Prep[i:i+1], "chain prefix of %d", w.Sequence)
		}
	}
}

// TestVerifyPathsAgreeOnOversizeFields: an event rewritten with an actor
// longer than validation allows, its chain recomputed consistently (a
// privileged rewrite the chain alone cannot catch): its chain input spans
// more than one BLAKE3 chunk, and verifying from the wire's bytes must
// reach the same verdict as verifying whole events.
func TestVerifyPathsAgreeOnOversizeFields(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	var evs []store.Event
	for i := range 3 {
		evs = append(evs, storetest.Created(t, storetest.PackageID(i), "n", fmt.Sprint(i), "a"))
	}
	log := storetest.Append(t, db, evs...)
	long := log[1]
	long.Actor = strings.Repeat("a", 1000)
	c2 := store.ChainDigest(log[0].ChainDigest, long)
	log[2].ChainDigest = store.ChainDigest(c2, log[2])
	testenv.Privileged(t, db,
		fmt.Sprintf("UPDATE events SET actor = '%s', chain_digest = %s WHERE sequence = 2", long.Actor, testenv.Blob(db, c2[:])),
		fmt.Sprintf("UPDATE events SET chain_digest = %s WHERE sequence = 3", testenv.Blob(db, log[2].ChainDigest[:])),
		fmt.Sprintf("UPDATE log_head SET chain_digest = %s", testenv.Blob(db, log[2].ChainDigest[:])))
	whole, wholeErr := store.VerifyLog(ctx, db, store.VerifyOptions{Each: func(store.Event) error { return nil }})
	hashed, hashedErr := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, wholeErr, "the chain is consistent")
	require.NoError(t, hashedErr, "the chain is consistent")
	require.Equal(t, whole, hashed)
}
