package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// appendCommands commits events as ingest does: ClaimAll, then
// AppendCommands.
func appendCommands(ctx context.Context, db store.DB, events ...store.Event) ([]store.Event, error) {
	var out []store.Event
	err := db.InTx(ctx, func(stx store.Tx) error {
		ids, err := claim(ctx, stx.(store.CommandBatcher), events)
		if err != nil {
			return err
		}
		out, err = stx.(store.CommandBatcher).AppendCommands(ctx, nil, events, ids, nil)
		return err
	})
	return out, err
}

// TestAppendCommandsChainsToLockedHead: another process appends between a
// transaction's ClaimAll and its AppendCommands, which chains to the head
// it locks: the log verifies and the commands point at their events.
func TestAppendCommandsChainsToLockedHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	other := testenv.OpenPostgres(t, url, schema)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	_, err := appendCommands(ctx, db, ev(1), ev(2))
	require.NoError(t, err)

	var out []store.Event
	require.NoError(t, db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		events := []store.Event{ev(3), ev(4)}
		ids, err := claim(ctx, tx, events)
		require.NoError(t, err)
		_, err = appendCommands(ctx, other, ev(5))
		require.NoError(t, err, "the other process appends meanwhile")
		out, err = tx.AppendCommands(ctx, nil, events, ids, nil)
		return err
	}))
	require.Equal(t, []int64{4, 5}, []int64{out[0].Sequence, out[1].Sequence})
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	got, err := db.Fetch(ctx, 3, 2)
	require.NoError(t, err)
	require.Equal(t, out, got)
	c := conn(t, url, schema)
	var seq int64
	require.NoError(t, c.QueryRow(ctx, "SELECT sequence FROM commands WHERE command_id = $1", "cmd-"+out[1].SubjectID).Scan(&seq))
	require.Equal(t, int64(5), seq)
}

// TestChainUnderConcurrentWriters: two processes, each with three
// committers (ClaimAll + AppendCommands) and a plain Append writer, all at
// once: the log is gapless and its chain verifies.
func TestChainUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	dbs := []*postgres.DB{testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for p, db := range dbs {
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 25 {
					base := 1_000_000*p + 10_000*w + 10*i
					events := []store.Event{}
					for j := range 1 + i%4 {
						events = append(events, storetest.Created(t, storetest.PackageID(base+j), "c", fmt.Sprint(base+j), "a"))
					}
					var err error
					if w == 3 {
						err = db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, events...); return err })
					} else {
						_, err = appendCommands(ctx, db, events...)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	res, err := store.VerifyLog(ctx, dbs[0], store.VerifyOptions{})
	require.NoError(t, err)
	perWriter := 0
	for i := range 25 {
		perWriter += 1 + i%4
	}
	require.Equal(t, int64(2*4*perWriter), res.To, "every event committed, gapless")
}
