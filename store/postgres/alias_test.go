package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestReturnedEventsOwnedByCaller: Append's writes travel with the
// transaction's next round trip; what the caller does with the events it
// returned (they are the caller's) must not change what is written.
func TestReturnedEventsOwnedByCaller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	want := []store.Event{ev(1), ev(2), ev(3)}
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		out, err := tx.Append(ctx, want[0], want[1])
		if err != nil {
			return err
		}
		// The caller reuses the slice it was given.
		for i := range out {
			out[i] = store.Event{}
		}
		return nil
	}))
	storetest.Append(t, db, want[2])
	checkLog(t, db, want)
}
