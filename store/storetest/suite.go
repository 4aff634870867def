package storetest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
)

// Run runs every case of the suite against the dialect open returns.
func Run(t *testing.T, open Opener) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, open(t))
		})
	}
}

var cases = []struct {
	name string
	fn   func(t *testing.T, db store.DB)
}{
	{"AppendAssignsSequences", testAppendAssignsSequences},
}

func testAppendAssignsSequences(t *testing.T, db store.DB) {
	ctx := context.Background()
	out := Append(t, db, Created(t, PackageID(1), "a", "1.0.0", "alice"), Created(t, PackageID(2), "a", "2.0.0", "alice"))
	require.Len(t, out, 2)
	require.Equal(t, int64(1), out[0].Sequence)
	require.Equal(t, int64(2), out[1].Sequence)
	got, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Equal(t, out, got)
}
