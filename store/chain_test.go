package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/store"
)

func chainEvent(t testing.TB, id, actor string, payload []byte) store.Event {
	e, err := store.NewEvent("v1.package.created", store.SubjectKindPackage, id, actor, payload)
	require.NoError(t, err)
	e.Sequence = 42
	e.CreatedAt = time.Date(2026, 11, 27, 12, 0, 0, 123456000, time.UTC)
	return e
}

// TestChainDigestIsBLAKE3OfItsEncoding: the block-wise computation equals
// BLAKE3-256 of the documented encoding, for prefixes of every length
// modulo the block size and up to the longest valid fields.
func TestChainDigestIsBLAKE3OfItsEncoding(t *testing.T) {
	t.Parallel()
	prev := store.DigestOf([]byte("previous"))
	for n := 1; n <= 256; n++ {
		e := chainEvent(t, "p-"+strings.Repeat("x", n%120), strings.Repeat("a", n), []byte(`{}`))
		want := store.Digest(blake3.Sum256(store.ChainInput(prev, e)))
		require.Equal(t, want, store.ChainDigest(prev, e), "actor of %d bytes", n)
		require.Zero(t, len(store.ChainInput(prev, e))%8, "whole words")
	}
	long := chainEvent(t, strings.Repeat("i", 128), "a", []byte(`{}`))
	long.Actor = strings.Repeat("a", 2000) // beyond validation: the ordinary BLAKE3 path
	require.Greater(t, len(store.ChainInput(prev, long)), 1024, "more than one chunk")
	require.Equal(t, store.Digest(blake3.Sum256(store.ChainInput(prev, long))), store.ChainDigest(prev, long))
}

// TestChainEncoding pins the encoding byte for byte.
func TestChainEncoding(t *testing.T) {
	t.Parallel()
	e := chainEvent(t, "p1", "al", []byte(`{}`))
	e.Type, e.SubjectKind = "v1.a.b", "k"
	var prev store.Digest
	prev[0], prev[31] = 0xaa, 0xbb
	in := store.ChainInput(prev, e)
	require.Len(t, in, 64+48)
	head := []byte{0, 0, 0, 6, 'v', '1', '.', 'a', '.', 'b', 0, 0, 0, 1, 'k',
		0, 0, 0, 2, 'p', '1', 0, 0, 0, 2, 'a', 'l'}
	require.Equal(t, head, in[:len(head)])
	require.Equal(t, e.PayloadDigest[:], in[len(head):len(head)+32])
	require.Equal(t, make([]byte, 64-len(head)-32), in[len(head)+32:64], "zero padding to the block")
	require.Equal(t, []byte{0, 0, 0, 0, 0, 0, 0, 42}, in[64:72])
	require.Equal(t, uint64(e.CreatedAt.UnixNano()), uint64(in[72])<<56|uint64(in[73])<<48|uint64(in[74])<<40|uint64(in[75])<<32|
		uint64(in[76])<<24|uint64(in[77])<<16|uint64(in[78])<<8|uint64(in[79]))
	require.Equal(t, prev[:], in[80:])
}

// TestChainIsAFold: chaining a batch equals chaining its events one by
// one, however the batch is cut.
func TestChainIsAFold(t *testing.T) {
	t.Parallel()
	var events []store.Event
	for i := range 10 {
		e := chainEvent(t, "p", "a", []byte{'0' + byte(i)})
		e.Sequence = int64(i + 1)
		events = append(events, e)
	}
	whole := append([]store.Event(nil), events...)
	last := store.Chain(store.Digest{}, whole)
	var prev store.Digest
	for _, cut := range [][2]int{{0, 3}, {3, 4}, {4, 10}} {
		part := append([]store.Event(nil), events[cut[0]:cut[1]]...)
		prev = store.Chain(prev, part)
		for i, e := range part {
			require.Equal(t, whole[cut[0]+i].ChainDigest, e.ChainDigest)
		}
	}
	require.Equal(t, last, prev)
	for i, e := range whole {
		var p store.Digest
		if i > 0 {
			p = whole[i-1].ChainDigest
		}
		require.Equal(t, store.ChainDigest(p, e), e.ChainDigest)
	}
}

// TestStartPrepareChain: prepared inline (small batches) or on another
// goroutine (large ones), the prefixes chain to ChainDigest's digests.
func TestStartPrepareChain(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 255, 256, 600} {
		var events []store.Event
		for i := range n {
			e := chainEvent(t, fmt.Sprintf("p%d", i), "a", []byte(fmt.Sprint(i)))
			e.Sequence = int64(i + 1)
			events = append(events, e)
		}
		wait := store.StartPrepareChain(events)
		store.StartPrepareChain(events)() // a second one may run alongside
		prev := store.Digest{1}
		last := wait().Chain(prev, events)
		for _, e := range events {
			require.Equal(t, store.ChainDigest(prev, e), e.ChainDigest, "n=%d", n)
			prev = e.ChainDigest
		}
		require.Equal(t, prev, last)
		require.Equal(t, wait(), wait(), "waiting twice returns the same prefixes")
	}
}

func BenchmarkChainDigest(b *testing.B) {
	e := chainEvent(b, "0193f1c2-aaaa-bbbb-cccc-0123456789ab", "bench@example.com", make([]byte, 300))
	b.ReportAllocs()
	for b.Loop() {
		store.ChainDigest(store.Digest{}, e)
	}
}
