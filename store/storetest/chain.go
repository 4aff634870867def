package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// chainCases are the suite's cases of the hash chain (DESIGN.md, "The
// event": chain_digest) and of store.VerifyLog. The tampering ones rewrite
// the log with testenv.Privileged, bypassing its append-only triggers.
var chainCases = []struct {
	name string
	fn   func(t *testing.T, db store.DB)
}{
	{"ChainLinksEveryEvent", testChainLinks},
	{"ChainIndependentOfBatching", testChainBatching},
	{"VerifyNamesRewrittenEvent", testVerifyRewritten},
	{"VerifyNamesDroppedEvents", testVerifyDropped},
}

func testChainLinks(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	h, err := db.ChainHead(ctx)
	require.NoError(t, err)
	require.Equal(t, store.ChainHead{}, h, "an empty log's head is sequence 0 and the zero digest")
	var written []store.Event
	for i, n := range []int{1, 3, 1, 5} {
		var batch []store.Event
		for j := range n {
			batch = append(batch, Created(t, PackageID(10*i+j), "c", fmt.Sprint(10*i+j), "alice"))
		}
		written = append(written, Append(t, db, batch...)...)
	}
	var prev store.Digest
	for _, e := range written {
		require.NotEqual(t, store.Digest{}, e.ChainDigest)
		require.Equal(t, store.ChainDigest(prev, e), e.ChainDigest, "event %d chains to event %d", e.Sequence, e.Sequence-1)
		prev = e.ChainDigest
	}
	got, err := db.Fetch(ctx, 0, 100)
	require.NoError(t, err)
	require.Equal(t, written, got, "the log holds the chain digests Append returned")
	h, err = db.ChainHead(ctx)
	require.NoError(t, err)
	require.Equal(t, store.ChainHead{Sequence: 10, Digest: prev}, h)
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, store.VerifyResult{From: 1, To: 10, Head: h}, res)
}

// testChainBatching appends one log in single-event transactions, one
// large transaction, and concurrent writers with transactions of 1-5
// events (a tenth rolled back): every stored digest is the one the chain
// over the committed order gives, whichever transaction wrote it.
func testChainBatching(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	id := 0
	next := func() store.Event {
		id++
		return Created(t, PackageID(id), "b", fmt.Sprint(id), "w")
	}
	for range 10 {
		Append(t, db, next())
	}
	bulk := make([]store.Event, 200)
	for i := range bulk {
		bulk[i] = next()
	}
	Append(t, db, bulk...)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 17))
			for range 10 {
				mu.Lock()
				batch := make([]store.Event, 1+rng.IntN(5))
				for i := range batch {
					batch[i] = next()
				}
				mu.Unlock()
				rollback := rng.IntN(10) == 0
				err := db.InTx(ctx, func(tx store.Tx) error {
					if _, err := tx.Append(ctx, batch...); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				if err != nil && !errors.Is(err, errRollback) {
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
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, head, res.To)
	require.Greater(t, head, int64(210))
}

var errRollback = errors.New("rollback")

// tamperLog appends 10 events and returns them.
func tamperLog(t *testing.T, db store.DB) []store.Event {
	var events []store.Event
	for i := range 10 {
		events = append(events, Created(t, PackageID(i), "t", fmt.Sprint(i), "alice"))
	}
	return Append(t, db, events...)
}

func requireBreak(t *testing.T, err error, seq int64) {
	t.Helper()
	var be *store.BreakError
	require.ErrorAs(t, err, &be)
	require.ErrorIs(t, err, store.ErrHistoryBroken)
	require.Equal(t, seq, be.Sequence, "the first sequence that breaks: %v", err)
}

func testVerifyRewritten(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	log := tamperLog(t, db)
	blob := func(b []byte) string { return testenv.Blob(db, b) }
	forged := []byte(`{"package_id":"pkg-000003","name":"t","version":"3","retention":{"policy":"keep_forever"}}`)
	digest := store.DigestOf(forged)
	// The payload and its digest rewritten together: the digest checks
	// out, the chain does not.
	testenv.Privileged(t, db, fmt.Sprintf("UPDATE events SET payload = %s, payload_digest = %s WHERE sequence = 4", blob(forged), blob(digest[:])))
	_, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	requireBreak(t, err, 4)
	require.Contains(t, err.Error(), "chain_digest")
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{From: 5})
	require.NoError(t, err, "from 5 on, the chain digest the log holds for event 4 is trusted")
	require.Equal(t, int64(5), res.From)

	// The rewritten event's chain digest recomputed too: the next event
	// no longer follows.
	e := log[3]
	e.Payload, e.PayloadDigest = forged, digest
	chain := store.ChainDigest(log[2].ChainDigest, e)
	testenv.Privileged(t, db, fmt.Sprintf("UPDATE events SET chain_digest = %s WHERE sequence = 4", blob(chain[:])))
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	requireBreak(t, err, 5)

	// Only the payload: its digest no longer matches.
	testenv.Privileged(t, db, fmt.Sprintf("UPDATE events SET payload = %s WHERE sequence = 2", blob([]byte(`{}`))))
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	requireBreak(t, err, 2)
	require.Contains(t, err.Error(), "payload_digest")
}

func testVerifyDropped(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	log := tamperLog(t, db)
	blob := func(b []byte) string { return testenv.Blob(db, b) }
	testenv.Privileged(t, db, "DELETE FROM events WHERE sequence = 5")
	_, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	requireBreak(t, err, 5)
	require.Contains(t, err.Error(), "missing")

	// A dropped tail: the head row still names event 10.
	testenv.Privileged(t, db, "DELETE FROM events WHERE sequence > 7")
	_, err = store.VerifyLog(ctx, db, store.VerifyOptions{From: 7})
	requireBreak(t, err, 8)

	// The head row moved back with it: a chain alone cannot tell (a
	// signed checkpoint can, see verify --checkpoint).
	testenv.Privileged(t, db, fmt.Sprintf("UPDATE log_head SET sequence = 7, chain_digest = %s", blob(log[6].ChainDigest[:])))
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{From: 7})
	require.NoError(t, err)
	require.Equal(t, int64(7), res.To)
}
