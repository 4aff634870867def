package postgres_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func rawEvent(t *testing.T, i int, payload []byte) store.Event {
	t.Helper()
	// Not store.NewEvent: it holds payloads to store.DefaultMaxPayload.
	return store.Event{Type: store.TypePackageCreated, SubjectKind: store.SubjectKindPackage, SubjectID: storetest.PackageID(i),
		Actor: "a", Payload: payload, PayloadDigest: store.DigestOf(payload)}
}

// checkLog fetches the whole log and checks it against want (in order):
// gapless from 1, the payloads byte for byte, created_at never decreasing,
// the chain verified, and log_head at the last event.
func checkLog(t *testing.T, db store.DB, want []store.Event) {
	t.Helper()
	ctx := context.Background()
	var got []store.Event
	for {
		page, err := db.Fetch(ctx, int64(len(got)), 100)
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
	}
	require.Len(t, got, len(want))
	for i, e := range got {
		require.Equal(t, int64(i+1), e.Sequence)
		require.True(t, bytes.Equal(want[i].Payload, e.Payload), "payload of %d (%d bytes, got %d)", i+1, len(want[i].Payload), len(e.Payload))
		require.Equal(t, want[i].PayloadDigest, e.PayloadDigest)
		require.Equal(t, want[i].SubjectID, e.SubjectID)
		if i > 0 {
			require.False(t, e.CreatedAt.Before(got[i-1].CreatedAt), "created_at decreases at %d", e.Sequence)
		}
	}
	_, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	h, err := db.ChainHead(ctx)
	require.NoError(t, err)
	if len(got) > 0 {
		require.Equal(t, store.ChainHead{Sequence: got[len(got)-1].Sequence, Digest: got[len(got)-1].ChainDigest}, h)
	}
}

// TestBlobEncoding: payloads of many sizes (1 byte to the configured
// maximum), every byte value, in batches of one to 1000 events, through
// Append (several per transaction) and ClaimAll + AppendCommands (the
// single bytea parameters sliced server-side), read back byte for byte.
func TestBlobEncoding(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	const maxPayload = 4 << 20
	db := testenv.OpenPostgresConfig(t, postgres.Config{URL: url, Schema: schema, MaxPayload: maxPayload})
	rng := rand.New(rand.NewPCG(1, 2))
	payload := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	id := 0
	next := func(p []byte) store.Event { id++; return rawEvent(t, id, p) }
	var want []store.Event

	sizes := []int{1, 2, 31, 32, 33, 63, 64, 65, 255, 256, 257, 1000, 4095, 4096, 65535, 65536, 1 << 20, maxPayload - 1, maxPayload}
	var batch []store.Event
	for _, n := range sizes {
		batch = append(batch, next(payload(n)))
	}
	batch = append(batch, next([]byte{0}), next([]byte{0xff, 0, 0x5c, 0x78}), next([]byte(`\x00'"`)))
	// Several appends in one transaction, then ClaimAll + AppendCommands.
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		for _, part := range [][]store.Event{batch[:5], batch[5:6], batch[6:]} {
			if _, err := tx.Append(ctx, part...); err != nil {
				return err
			}
		}
		return nil
	}))
	want = append(want, batch...)

	// 1000 events of mixed sizes (the goroutine prefix path) in one
	// AppendCommands, the head locked by ClaimAll.
	batch = nil
	for i := range 1000 {
		batch = append(batch, next(payload(1+i*37%3000)))
	}
	out, err := appendCommands(ctx, db, batch...)
	require.NoError(t, err)
	require.Len(t, out, 1000)
	want = append(want, batch...)

	// The same through Append, 1000 events, twice in one transaction.
	batch = nil
	for i := range 2000 {
		batch = append(batch, next(payload(1+i*53%700)))
	}
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		if _, err := tx.Append(ctx, batch[:1000]...); err != nil {
			return err
		}
		_, err := tx.Append(ctx, batch[1000:]...)
		return err
	}))
	want = append(want, batch...)

	// A few events at the maximum in one AppendCommands.
	batch = nil
	for range 6 {
		batch = append(batch, next(payload(maxPayload)))
	}
	_, err = appendCommands(ctx, db, batch...)
	require.NoError(t, err)
	want = append(want, batch...)
	checkLog(t, db, want)
}

// TestPrepareChainOnErrorPaths: batches large enough for the prefix
// goroutine that fail (a validation error at the end, a context already
// done when the head is locked) return, and leave no goroutine behind
// (TestMain checks with goleak); the log is untouched.
func TestPrepareChainOnErrorPaths(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	var batch []store.Event
	for i := range 300 {
		batch = append(batch, rawEvent(t, i+1, []byte{byte(i)}))
	}
	bad := append([]store.Event(nil), batch...)
	bad[299].Actor = ""
	err := db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, bad...); return err })
	require.Error(t, err)
	err = db.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.(store.CommandBatcher).AppendCommands(ctx, nil, bad, make([]string, len(bad)), nil)
		return err
	})
	require.Error(t, err)
	done, cancel := context.WithCancel(ctx)
	err = db.InTx(ctx, func(tx store.Tx) error {
		cancel()
		_, err := tx.Append(done, batch...)
		return err
	})
	require.Error(t, err)
	checkLog(t, db, nil)
}
