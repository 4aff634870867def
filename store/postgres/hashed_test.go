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
