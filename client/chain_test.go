package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/client"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// chainedLog returns n events chained as the log chains them.
func chainedLog(t *testing.T, n int) []store.Event {
	at := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	var log []store.Event
	for i := range n {
		e, err := store.NewEvent("v1.package.created", store.SubjectKindPackage, fmt.Sprintf("p%d", i%3), "ci", []byte(fmt.Sprintf(`{"i":%d}`, i)))
		require.NoError(t, err)
		e.Sequence, e.CreatedAt = int64(i+1), at
		log = append(log, e)
	}
	store.Chain(store.Digest{}, log)
	return log
}

// streamOf publishes events as the relay would, into a stream of a new
// server, and returns a client of it.
func streamOf(t *testing.T, events []store.Event) *client.Client {
	ns := testenv.NATS(t)
	js := ns.JetStream(t)
	ctx := context.Background()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: client.DefaultStream, Subjects: []string{wire.Subjects}})
	require.NoError(t, err)
	prev := map[int]int64{}
	for _, e := range events {
		p := wire.Partition(e.SubjectID, 16)
		_, err := js.PublishMsg(ctx, wire.Encode(wire.Message{Event: e, LogID: "log", Partition: p, Previous: prev[p]}, 0))
		require.NoError(t, err)
		prev[p] = e.Sequence
	}
	c, err := client.New(ns.Connect(t))
	require.NoError(t, err)
	return c
}

// read ranges over Events until it has n events or an error.
func read(t *testing.T, c *client.Client, opts client.EventsOptions, n int) ([]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seqs []int64
	for ev, err := range c.Events(ctx, opts) {
		if err != nil {
			return seqs, err
		}
		seqs = append(seqs, ev.Sequence)
		if len(seqs) == n {
			break
		}
	}
	return seqs, ctx.Err()
}

// TestEventsChecksChain: a stream whose event 4 was rewritten (payload and
// digest changed together, so the digest checks out) stops the reader at 4
// with a *ChainError; the intact stream reads through, also from the
// middle and through a subject filter.
func TestEventsChecksChain(t *testing.T) {
	t.Parallel()
	log := chainedLog(t, 8)
	seqs, err := read(t, streamOf(t, log), client.EventsOptions{Since: 2}, 6)
	require.NoError(t, err)
	require.Equal(t, []int64{3, 4, 5, 6, 7, 8}, seqs)

	forged := append([]store.Event(nil), log...)
	forged[3].Payload = []byte(`{"i":"forged"}`)
	forged[3].PayloadDigest = store.DigestOf(forged[3].Payload)
	c := streamOf(t, forged)
	seqs, err = read(t, c, client.EventsOptions{}, 8)
	require.ErrorIs(t, err, client.ErrChainBroken)
	var ce *client.ChainError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, int64(4), ce.Sequence)
	require.Equal(t, []int64{1, 2, 3}, seqs, "the events before it were yielded")

	// Through a filter of subject p0 (events 1, 4, 7), no two consecutive:
	// nothing to check, nothing refused.
	seqs, err = read(t, c, client.EventsOptions{Subject: "artifactstore.events.*.*.*.p0.*"}, 3)
	require.NoError(t, err)
	require.Equal(t, []int64{1, 4, 7}, seqs)
}
