package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// appendOne appends the i-th test event through db and returns it.
func appendOne(t *testing.T, db store.DB, i int) store.Event {
	t.Helper()
	return storetest.Append(t, db, storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a"))[0]
}

// requireGuesses asserts db's guess counters moved by hits and misses
// since before.
func requireGuesses(t *testing.T, db *postgres.DB, before [2]int64, hits, misses int64, what string) [2]int64 {
	t.Helper()
	h, m := db.HeadGuesses()
	require.Equal(t, [2]int64{before[0] + hits, before[1] + misses}, [2]int64{h, m}, "guesses right and wrong: %s", what)
	return [2]int64{h, m}
}

// TestGuessedHeadIsChecked appends on guessed heads that are right, and on
// ones wrong in each of the ways the database checks: another handle
// appended, a chain digest that was rolled back, a head behind, a clock
// ahead of the database's. Each wrong guess appends at the real head.
func TestGuessedHeadIsChecked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db, other := testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)
	var n [2]int64
	first := appendOne(t, db, 1)
	n = requireGuesses(t, db, n, 0, 0, "nothing to guess from before the first append")
	second := appendOne(t, db, 2)
	n = requireGuesses(t, db, n, 1, 0, "the handle's own last append")
	require.False(t, second.CreatedAt.Before(first.CreatedAt), "created_at never goes back")

	appendOne(t, other, 3)
	appendOne(t, db, 4)
	n = requireGuesses(t, db, n, 0, 1, "another handle appended")
	dbNow := appendOne(t, db, 5).CreatedAt
	n = requireGuesses(t, db, n, 1, 0, "the head read after the miss")
	for _, open := range []bool{false, true} {
		for _, c := range []struct {
			what string
			// wrong turns the log's head into the guessed one.
			wrong func(h *store.ChainHead)
			// late is how far the guessed head's created_at is behind the
			// log's; offset, the guessed clock from this host's.
			late, offset time.Duration
		}{
			{"the right sequence with a chain digest rolled back", func(h *store.ChainHead) { h.Digest[0] ^= 1 }, 0, 0},
			{"a head behind the log's", func(h *store.ChainHead) { h.Sequence-- }, 0, 0},
			{"a clock an hour ahead of the database's", func(*store.ChainHead) {}, 0, time.Hour},
			{"a created_at before the last event's", func(*store.ChainHead) {}, time.Second, -time.Hour},
		} {
			what := fmt.Sprintf("%s (left by a transaction that may be open: %v)", c.what, open)
			head, err := db.ChainHead(ctx)
			require.NoError(t, err)
			guessed := head
			c.wrong(&guessed)
			postgres.PlantGuess(db, guessed.Sequence, guessed.Digest, dbNow.Add(-c.late), open, c.offset)
			e := appendOne(t, db, int(head.Sequence)+10)
			n = requireGuesses(t, db, n, 0, 1, what)
			require.Equal(t, head.Sequence+1, e.Sequence, what)
			require.Less(t, e.CreatedAt, time.Now().Add(time.Minute), "%s: created_at from the database's clock", what)
			require.False(t, e.CreatedAt.Before(dbNow), "%s: created_at never goes back", what)
			dbNow = e.CreatedAt
		}
	}
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(13), res.To, "every append once, chained")
}

var errAbort = errors.New("the test aborts this transaction")

// TestGuessesUnderAbortsAndHandles appends from two handles on one log, each
// with writers whose transactions append once or twice and a quarter of
// which roll back after appending (their successors guessed a head that
// never commits), beside writers that append as ingest does. The log must
// hold every committed event once, no rolled back one, gapless and
// chained, and the guesses must have been both right and wrong.
func TestGuessesUnderAbortsAndHandles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	dbs := []*postgres.DB{testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)}
	var mu sync.Mutex
	committed := map[string]bool{}
	// Phase 0 appends from one handle, phase 1 from both and as ingest too.
	for phase := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for p, db := range dbs[:phase+1] {
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(phase), uint64(10*p+w)))
					for i := range 30 {
						base := 1_000_000*phase + 100_000*p + 1000*w + 10*i
						events := []store.Event{}
						for j := range 1 + rng.IntN(4) {
							events = append(events, storetest.Created(t, storetest.PackageID(base+j), "g", fmt.Sprint(base+j), "a"))
						}
						err := appendOrAbort(ctx, db, events, phase == 1 && w == 3, rng)
						if errors.Is(err, errAbort) {
							continue
						}
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						for _, e := range events {
							committed[e.SubjectID] = true
						}
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		if phase == 0 {
			hits, misses := dbs[0].HeadGuesses()
			require.Positive(t, hits, "some guesses were right")
			require.Positive(t, misses, "some guesses were wrong (after a rollback)")
		}
	}
	got, err := dbs[0].Fetch(ctx, 0, 10_000)
	require.NoError(t, err)
	require.Len(t, got, len(committed), "the log holds the committed events, and only them")
	for i, e := range got {
		require.Equal(t, int64(i+1), e.Sequence, "gapless")
		require.True(t, committed[e.SubjectID], "event %d (%s) was committed", e.Sequence, e.SubjectID)
	}
	res, err := store.VerifyLog(ctx, dbs[0], store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(len(got)), res.To)
}

// appendOrAbort appends events as ingest does (commands), or in a
// transaction that appends them in two calls and, one time in four, rolls
// back (errAbort).
func appendOrAbort(ctx context.Context, db store.DB, events []store.Event, commands bool, rng *rand.Rand) error {
	if commands {
		_, err := appendCommands(ctx, db, events...)
		return err
	}
	return db.InTx(ctx, func(tx store.Tx) error {
		split := 1 + rng.IntN(len(events))
		if _, err := tx.Append(ctx, events[:split]...); err != nil {
			return err
		}
		if _, err := tx.Append(ctx, events[split:]...); err != nil {
			return err
		}
		if rng.IntN(4) == 0 {
			return errAbort
		}
		return nil
	})
}

// TestCommandsGuessChainsInFlight commits batches as ingest does, from
// committers that each chain to the head the one before it will leave,
// before it committed: each waits for the one before (its in-flight mark),
// so every guess is right. Then another handle appends: the next guess is
// wrong, and the batch is appended at the real head with its command
// pointing at its event.
func TestCommandsGuessChainsInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db, other := testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)
	_, err := appendCommands(ctx, db, storetest.Created(t, storetest.PackageID(0), "g", "0", "a"))
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				base := 1000 + 100*w + 2*i
				_, err := appendCommands(ctx, db, storetest.Created(t, storetest.PackageID(base), "g", fmt.Sprint(base), "a"),
					storetest.Created(t, storetest.PackageID(base+1), "g", fmt.Sprint(base+1), "a"))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	hits, misses := db.HeadGuesses()
	require.Equal(t, [2]int64{3 * 40, 0}, [2]int64{hits, misses}, "every batch guessed right")

	appendOne(t, other, 1)
	ev := storetest.Created(t, storetest.PackageID(2), "g", "2", "a")
	out, err := appendCommands(ctx, db, ev)
	require.NoError(t, err)
	hits, misses = db.HeadGuesses()
	require.Equal(t, [2]int64{3 * 40, 1}, [2]int64{hits, misses}, "another handle appended: a wrong guess")
	require.Equal(t, int64(1+3*40*2+1+1), out[0].Sequence)
	require.NoError(t, db.InTx(ctx, func(stx store.Tx) error {
		recs, err := stx.(store.CommandBatcher).CommandReplies(ctx, []string{"cmd-" + ev.SubjectID}, func(e store.Event) ([]byte, error) {
			return []byte(fmt.Sprint(e.Sequence)), nil
		})
		require.Equal(t, fmt.Sprint(out[0].Sequence), string(recs["cmd-"+ev.SubjectID].Reply), "the command points at its event")
		return err
	}))
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, out[0].Sequence, res.To)
}

// TestGuessedAppendsRefreshTheClock starts a handle with its estimate of
// the database's clock an hour behind (as a host clock stepped back would
// leave it): the first guessed append then has the previous event's
// created_at, but reads the database's clock, and the next one is stamped
// with it again.
func TestGuessedAppendsRefreshTheClock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	first := appendOne(t, db, 1)
	head, err := db.ChainHead(ctx)
	require.NoError(t, err)
	postgres.PlantGuess(db, head.Sequence, head.Digest, first.CreatedAt, false, -time.Hour)
	stale := appendOne(t, db, 2)
	require.Equal(t, first.CreatedAt, stale.CreatedAt, "an estimate behind the last event's time is raised to it")
	before := time.Now()
	fresh := appendOne(t, db, 3)
	require.True(t, fresh.CreatedAt.After(stale.CreatedAt), "the estimate was refreshed by the append before: %v", fresh.CreatedAt)
	require.WithinDuration(t, before, fresh.CreatedAt, time.Minute)

	// The same through ingest's path.
	head, err = db.ChainHead(ctx)
	require.NoError(t, err)
	postgres.PlantGuess(db, head.Sequence, head.Digest, fresh.CreatedAt, false, -time.Hour)
	batch := func(i int) store.Event {
		out, err := appendCommands(ctx, db, storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a"))
		require.NoError(t, err)
		return out[0]
	}
	stale = batch(4)
	require.Equal(t, fresh.CreatedAt, stale.CreatedAt)
	require.True(t, batch(5).CreatedAt.After(stale.CreatedAt), "the estimate was refreshed by the batch before")
	hits, misses := db.HeadGuesses()
	require.Equal(t, [2]int64{4, 0}, [2]int64{hits, misses})
}
