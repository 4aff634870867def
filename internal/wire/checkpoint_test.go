package wire_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

func TestCheckpointSignVerify(t *testing.T) {
	t.Parallel()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	head := store.ChainHead{Sequence: 1200, Digest: store.DigestOf([]byte("x"))}
	c := wire.SignCheckpoint(key, "log1", head, time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	require.Equal(t, "artifactstore checkpoint v1\nlog1\n1200\n"+head.Digest.String()+"\n", string(c.SignedBytes()))
	require.NoError(t, c.Verify(pub))

	got, err := wire.DecodeCheckpoint(wire.EncodeCheckpoint(c))
	require.NoError(t, err)
	require.Equal(t, c, got, "round trip")
	require.NoError(t, got.Verify(pub))

	other, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	require.ErrorIs(t, c.Verify(other), wire.ErrCheckpointSignature, "another key")
	for name, mutate := range map[string]func(c *wire.Checkpoint){
		"sequence": func(c *wire.Checkpoint) { c.Sequence-- },
		"log id":   func(c *wire.Checkpoint) { c.LogID = "log2" },
		"chain":    func(c *wire.Checkpoint) { c.ChainDigest[0] ^= 1 },
	} {
		bad := c
		mutate(&bad)
		require.ErrorIs(t, bad.Verify(pub), wire.ErrCheckpointSignature, name)
	}
	bad := c
	bad.SignedAt = bad.SignedAt.Add(time.Hour)
	require.NoError(t, bad.Verify(pub), "signed_at is informational")

	for _, s := range []string{`{}`, `{"log_id":"l","sequence":0}`, `not json`,
		strings.Replace(string(wire.EncodeCheckpoint(c)), `"log_id"`, `"extra":1,"log_id"`, 1),
		string(wire.EncodeCheckpoint(c)) + `{}`} {
		_, err := wire.DecodeCheckpoint([]byte(s))
		require.ErrorIs(t, err, wire.ErrInvalidCheckpoint, s)
	}
}

// FuzzDecodeCheckpoint: no input panics, and what decodes encodes back
// to an equal checkpoint.
func FuzzDecodeCheckpoint(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	f.Add(wire.EncodeCheckpoint(wire.SignCheckpoint(key, "l", store.ChainHead{Sequence: 3}, time.Unix(0, 0))))
	f.Add([]byte(`{"log_id":"x","sequence":1,"signature":"AAAA"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := wire.DecodeCheckpoint(data)
		if err != nil {
			require.ErrorIs(t, err, wire.ErrInvalidCheckpoint)
			return
		}
		again, err := wire.DecodeCheckpoint(wire.EncodeCheckpoint(c))
		require.NoError(t, err)
		require.Equal(t, c.SignedBytes(), again.SignedBytes())
		require.Equal(t, c.Signature, again.Signature)
	})
}
