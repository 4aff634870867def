package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

type outcome int

const (
	committed outcome = iota
	notCommitted
	unknown
)

// attempt is one transaction of the history: the subjects of the events
// it tried to append, the command ids it claimed for them, what it
// returned and what the store reported.
type attempt struct {
	what     string
	subjects []string
	// claimed are the subjects whose commands and packages ClaimAll
	// claimed: committed only with their events.
	claimed []string
	out     []store.Event
	outcome outcome
	err     error
}

// TestGuessesUnderKillsAndCancels is a Jepsen-style history: three handles
// on one log (one with a two-connection pool, one whose sessions have a
// 30 ms lock_timeout) run ingest-style batches (some reading replies
// between ClaimAll and AppendCommands, some rejecting every command, some
// with an Append between), batches whose context is cancelled at a random
// point, and Append transactions (some that claimed a command first, a
// quarter rolled back), while a killer terminates random backends of the
// test mid-transaction. Every transaction reported committed must be in
// the log as returned, none reported not committed may be, an unknown one
// is all or nothing; the log is gapless, chained, with created_at never
// going back, every command points at its event and no claim is left
// without its event; no one waits until the test's deadline.
func TestGuessesUnderKillsAndCancels(t *testing.T) {
	t.Parallel()
	base, schema := testenv.Schema(t)
	app := "atk_" + schema
	withParams := func(params map[string]string) string {
		u, err := url.Parse(base)
		require.NoError(t, err)
		q := u.Query()
		for k, v := range params {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	dbs := []*postgres.DB{
		testenv.OpenPostgresConfig(t, postgres.Config{URL: base, Schema: schema, ApplicationName: app}),
		testenv.OpenPostgresConfig(t, postgres.Config{URL: base, Schema: schema, ApplicationName: app, MaxConns: 2}),
		testenv.OpenPostgresConfig(t, postgres.Config{URL: withParams(map[string]string{"lock_timeout": "30ms"}), Schema: schema, ApplicationName: app}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var mu sync.Mutex
	var history []*attempt
	record := func(a *attempt, err error) {
		a.err = err
		switch {
		case err == nil:
			a.outcome = committed
		case errors.Is(err, store.ErrOutcomeUnknown):
			a.outcome = unknown
		default:
			a.outcome = notCommitted
		}
		mu.Lock()
		history = append(history, a)
		mu.Unlock()
	}
	stuck := make(chan error, 64)
	const rounds = 40
	killer := conn(t, base, schema)
	killed := 0
	// Phase 0 commits ingest batches through one handle, whose guesses
	// mostly hit; phase 1 adds the other kinds of transactions; phase 2
	// writes through all three handles, whose guesses mostly miss.
	for phase, handles := range [][]*postgres.DB{dbs[:1], dbs[:1], dbs} {
		var wg, writers sync.WaitGroup
		for h, db := range handles {
			for w := range 4 {
				writers.Add(1)
				go func() {
					defer writers.Done()
					rng := rand.New(rand.NewPCG(uint64(10*phase+h), uint64(w)))
					kind := w
					if phase == 0 {
						kind = w % 2
					}
					for i := range rounds {
						n := 1 + rng.IntN(3)
						first := 10_000_000*phase + 1_000_000*h + 10_000*w + 10*i
						events := make([]store.Event, n)
						a := &attempt{subjects: make([]string, n)}
						for j := range n {
							events[j] = storetest.Created(t, storetest.PackageID(first+j), storetest.PackageID(first+j), "1", "a")
							a.subjects[j] = events[j].SubjectID
						}
						var err error
						switch {
						case kind == 0 && i%5 == 4: // every command rejected: claims released, nothing appended
							a.what, a.subjects = "rejected", nil
							err = db.InTx(ctx, func(stx store.Tx) error {
								tx := stx.(store.CommandBatcher)
								ids := []string{fmt.Sprintf("rej-%d", first)}
								if _, _, _, _, err := tx.ClaimAll(ctx, ids, [][]byte{{1}}, nil, nil, nil, nil); err != nil {
									return err
								}
								_, err := tx.AppendCommands(ctx, ids, nil, nil, nil)
								return err
							})
						case kind == 0 || kind == 1:
							a.what, a.claimed = "ingest", a.subjects
							tctx, stop := context.WithCancel(ctx)
							if kind == 1 && rng.IntN(2) == 0 {
								a.what = "ingest, cancelled"
								stop()
								tctx, stop = context.WithTimeout(ctx, time.Duration(rng.IntN(4000))*time.Microsecond)
							}
							replies := i%3 == 0
							err = db.InTx(tctx, func(stx store.Tx) error {
								ids, err := claim(tctx, stx, events, true)
								if err != nil {
									return err
								}
								tx := stx.(store.CommandBatcher)
								if replies {
									if _, err := tx.CommandReplies(tctx, ids, func(store.Event) ([]byte, error) { return nil, nil }); err != nil {
										return err
									}
								}
								a.out, err = tx.AppendCommands(tctx, nil, events, ids, nil)
								return err
							})
							stop()
						case kind == 2:
							a.what = "append"
							claimFirst, abort := rng.IntN(3) == 0, rng.IntN(4) == 0
							split := rng.IntN(n + 1)
							err = db.InTx(ctx, func(tx store.Tx) error {
								if claimFirst { // the transaction has begun: it guesses only in a free turn
									if _, err := tx.ClaimCommand(ctx, "cmd-"+a.subjects[0], []byte{1}); err != nil {
										return err
									}
								}
								out1, err := tx.Append(ctx, events[:split]...)
								if err != nil {
									return err
								}
								out2, err := tx.Append(ctx, events[split:]...)
								if err != nil {
									return err
								}
								a.out = append(out1, out2...)
								if claimFirst {
									if err := tx.CompleteCommand(ctx, "cmd-"+a.subjects[0], a.out[0].Sequence, []byte("r")); err != nil {
										return err
									}
								}
								if abort {
									return errAbort
								}
								return nil
							})
						default: // ClaimAll marks the transaction in flight, then an Append, then AppendCommands
							a.what, a.claimed = "claim, append, commands", a.subjects[1:]
							err = db.InTx(ctx, func(stx store.Tx) error {
								ids, err := claim(ctx, stx, events[1:], true)
								if err != nil {
									return err
								}
								first, err := stx.Append(ctx, events[0])
								if err != nil {
									return err
								}
								rest, err := stx.(store.CommandBatcher).AppendCommands(ctx, nil, events[1:], ids, nil)
								a.out = append(first, rest...)
								return err
							})
						}
						if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
							stuck <- fmt.Errorf("%s: %w", a.what, err)
							return
						}
						record(a, err)
					}
				}()
			}
		}
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(7, uint64(phase)))
			for budget := killed + 20; killed < budget; {
				select {
				case <-done:
					return
				case <-time.After(time.Duration(1+rng.IntN(30)) * time.Millisecond):
				}
				var n int
				err := killer.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM (
				SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle' AND pid <> pg_backend_pid()
				ORDER BY random() LIMIT 1) s`, app).Scan(&n)
				if err != nil {
					return
				}
				killed += n
			}
		}()
		writers.Wait()
		close(done)
		wg.Wait()
	}
	close(stuck)
	for err := range stuck {
		require.NoError(t, err, "a transaction waited until the test's deadline")
	}

	check := context.Background()
	log, err := dbs[0].Fetch(check, 0, 1_000_000)
	require.NoError(t, err)
	bySubject := map[string]store.Event{}
	for i, e := range log {
		require.Equal(t, int64(i+1), e.Sequence, "gapless")
		if i > 0 {
			require.False(t, e.CreatedAt.Before(log[i-1].CreatedAt), "created_at of %d goes back", e.Sequence)
		}
		_, dup := bySubject[e.SubjectID]
		require.False(t, dup, "%s appended twice", e.SubjectID)
		bySubject[e.SubjectID] = e
	}
	res, err := store.VerifyLog(check, dbs[0], store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(len(log)), res.To)

	counts := map[string]int{}
	ingested := map[string]bool{}
	for _, a := range history {
		present := 0
		for _, s := range a.subjects {
			if _, ok := bySubject[s]; ok {
				present++
			}
		}
		outcomes := [...]string{"committed", "not committed", "unknown"}
		counts[a.what+": "+outcomes[a.outcome]]++
		switch a.outcome {
		case committed:
			require.Equal(t, len(a.subjects), present, "%s reported committed (%v)", a.what, a.subjects)
			for _, e := range a.out {
				require.Equal(t, bySubject[e.SubjectID], e, "%s returned its events as written", a.what)
			}
		case notCommitted:
			require.Zero(t, present, "%s reported not committed (%v) but is in the log: %v", a.what, a.subjects, a.err)
		case unknown:
			require.Contains(t, []int{0, len(a.subjects)}, present, "%s: all or nothing", a.what)
		}
		if present > 0 {
			for _, s := range a.claimed {
				ingested[s] = true
			}
		}
	}
	var guesses [2]int64
	for _, db := range dbs {
		h, m := db.HeadGuesses()
		guesses[0], guesses[1] = guesses[0]+h, guesses[1]+m
	}
	t.Logf("killed %d backends; guesses right and wrong %v; %v", killed, guesses, counts)
	require.Positive(t, guesses[0], "some guesses were right")
	require.Positive(t, guesses[1], "some guesses were wrong")

	c := conn(t, base, schema)
	rows, err := c.Query(check, "SELECT command_id, sequence FROM commands")
	require.NoError(t, err)
	for rows.Next() {
		var id string
		var seq *int64
		require.NoError(t, rows.Scan(&id, &seq))
		require.NotNil(t, seq, "command %s claimed without its event", id)
		require.True(t, *seq >= 1 && *seq <= int64(len(log)), "command %s points outside the log", id)
		require.Equal(t, strings.TrimPrefix(id, "cmd-"), log[*seq-1].SubjectID, "command %s points at its event", id)
	}
	require.NoError(t, rows.Err())
	var packages []string
	rows, err = c.Query(check, "SELECT package_id FROM package_index")
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		packages = append(packages, id)
		require.True(t, ingested[id], "package %s claimed without its event", id)
	}
	require.NoError(t, rows.Err())
	require.Len(t, packages, len(ingested), "every ingested event's package claimed")
}
