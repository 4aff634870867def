package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
		ids, err := claim(ctx, stx, events, true)
		if err != nil {
			return err
		}
		out, err = stx.(store.CommandBatcher).AppendCommands(ctx, nil, events, ids, nil)
		return err
	})
	return out, err
}

// TestAppendCommandsChainsToLockedHead: another process is appending when
// a transaction's ClaimAll reads the head: the claims wait for its commit
// and the events chain to its event; the log verifies and the commands
// point at their events.
func TestAppendCommandsChainsToLockedHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	other := testenv.OpenPostgres(t, url, schema)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	_, err := appendCommands(ctx, db, ev(1), ev(2))
	require.NoError(t, err)

	holding, release, otherDone := make(chan int), make(chan struct{}), make(chan error, 1)
	go func() {
		otherDone <- other.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.Append(ctx, ev(5)); err != nil {
				return err
			}
			pid, err := postgres.BackendPID(ctx, tx)
			if err != nil {
				return err
			}
			holding <- pid
			<-release
			return nil
		})
	}()
	pid := <-holding
	var out []store.Event
	ours := make(chan error, 1)
	go func() {
		var err error
		out, err = appendCommands(ctx, db, ev(3), ev(4))
		ours <- err
	}()
	c := conn(t, url, schema)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid).Scan(&n))
		return n == 1
	}, 10*time.Second, 5*time.Millisecond, "ClaimAll waits for the other process's append")
	close(release)
	require.NoError(t, <-otherDone)
	require.NoError(t, <-ours)
	require.Equal(t, []int64{4, 5}, []int64{out[0].Sequence, out[1].Sequence})
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	got, err := db.Fetch(ctx, 3, 2)
	require.NoError(t, err)
	require.Equal(t, out, got)
	var seq int64
	require.NoError(t, c.QueryRow(ctx, "SELECT sequence FROM commands WHERE command_id = $1", "cmd-"+out[1].SubjectID).Scan(&seq))
	require.Equal(t, int64(5), seq)
}

// TestAppendBetweenClaimAllAndAppendCommands: a plain Append after
// ClaimAll moves the head ClaimAll read; AppendCommands chains after it.
func TestAppendBetweenClaimAllAndAppendCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	storetest.Append(t, db, ev(1))
	var out []store.Event
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		events := []store.Event{ev(2), ev(3)}
		ids, err := claim(ctx, tx, events, true)
		require.NoError(t, err)
		_, err = tx.Append(ctx, ev(4))
		require.NoError(t, err)
		out, err = tx.(store.CommandBatcher).AppendCommands(ctx, nil, events, ids, nil)
		return err
	}))
	require.Equal(t, []int64{3, 4}, []int64{out[0].Sequence, out[1].Sequence})
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(4), res.To)
}

// TestChainUnderConcurrentWriters: two processes, each with three
// committers (two ClaimAll + AppendCommands, one AppendCommands alone)
// and a plain Append writer, all at
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
					switch w {
					case 3:
						err = db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, events...); return err })
					case 2: // without ClaimAll: AppendCommands locks the head itself
						err = db.InTx(ctx, func(tx store.Tx) error {
							_, err := tx.(store.CommandBatcher).AppendCommands(ctx, nil, events, make([]string, len(events)), nil)
							return err
						})
					default:
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
